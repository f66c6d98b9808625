// deriveTimeline is a pure function of the rows and the overlays: tested here without a browser.
import assert from "node:assert/strict";
import { test } from "node:test";

import { EMPTY, fold } from "../../src/turnlog/web/static/reducer.js";
import {
  activePath, dateGroup, deriveTimeline as derive, siblings, stoppableRow,
} from "../../src/turnlog/web/static/timeline.js";

/** The timeline without its meta items (tested on their own below). */
const deriveTimeline = (rows, overlays) => derive(rows, overlays).filter((i) => i.kind !== "meta");

const row = (fields) => ({
  role: "assistant", content: null, blocks: [], status: "completed", error: null,
  tool_call_id: null, tool_name: null, edited_content: null, ...fields,
});
const user = (id, seq, content, edited = null) => row({ id, seq, role: "user", content, edited_content: edited });
const events = [
  { type: "reasoning_delta", text: "Think" },
  { type: "text_delta", text: "Hello " },
  { type: "text_delta", text: "world" },
];

test("rows are shown in seq order whatever order they come in", () => {
  const items = deriveTimeline(
    [row({ id: "a", seq: 2, blocks: [{ type: "text", text: "hi" }] }), user("u", 1, "hello")],
    new Map(),
  );
  assert.deepEqual(items.map((i) => i.key), ["u", "a:0"]);
});

test("a generating row shows its overlay; the stored row wins once it is no longer generating", () => {
  const overlay = { blocks: fold(EMPTY, events) };
  const generating = row({ id: "a", seq: 2, status: "generating", blocks: [{ type: "reasoning", text: "Th" }] });
  const live = deriveTimeline([user("u", 1, "q"), generating], new Map([["a", overlay]]));
  assert.deepEqual(live.map((i) => [i.key, i.kind, i.text, i.streaming]), [
    ["u", "user", "q", undefined],
    ["a:0", "reasoning", "Think", false],
    ["a:1", "text", "Hello world", true],
  ]);
  // The stored final blocks (here shorter than the overlay: an aborted turn's checkpoint)
  // replace the overlay under the same keys: no re-mount when a stream ends.
  const ended = row({ id: "a", seq: 2, status: "aborted", blocks: [{ type: "reasoning", text: "Think" }, { type: "text", text: "Hello" }] });
  const after = deriveTimeline([user("u", 1, "q"), ended], new Map([["a", overlay]]));
  assert.deepEqual(after.map((i) => [i.key, i.kind, i.text ?? i.status]), [
    ["u", "user", "q"], ["a:0", "reasoning", "Think"], ["a:1", "text", "Hello"], ["a:status", "status", "aborted"],
  ]);
  assert.equal(after.find((i) => i.kind === "status").retry, true);
});

test("a generating row with nothing yet holds the caret under its first block's key", () => {
  const items = deriveTimeline([row({ id: "a", seq: 1, status: "generating" })], new Map());
  assert.deepEqual(items, [{ key: "a:0", kind: "text", row: "a", text: "", streaming: true, redacted: false }]);
  assert.equal(stoppableRow(items), "a");
});

test("tool results are shown in their call; an unanswered ask_user on the last row awaits", () => {
  const call = { type: "tool_call", id: "c1", name: "ask_user", arguments_text: "{}", arguments: { question: "Why?" }, ready: true };
  const asked = row({ id: "a", seq: 2, blocks: [call], finish_reason: "tool_calls" });
  const waiting = deriveTimeline([user("u", 1, "q"), asked], new Map());
  const tool = waiting.find((i) => i.kind === "tool_call");
  assert.equal(tool.awaiting, true);
  assert.equal(tool.result, null);
  assert.equal(stoppableRow(waiting), "a");
  const answered = deriveTimeline(
    [user("u", 1, "q"), asked, row({ id: "t", seq: 3, role: "tool", content: "Because", tool_call_id: "c1" })],
    new Map(),
  );
  const done = answered.find((i) => i.kind === "tool_call");
  assert.equal(done.awaiting, false);
  assert.equal(done.result, "Because");
  assert.equal(stoppableRow(answered), null);
});

test("interrupted and error rows carry Retry only while they are the last row", () => {
  const failed = row({ id: "a", seq: 2, status: "error", error: "boom", blocks: [{ type: "text", text: "par" }] });
  const items = deriveTimeline([user("u", 1, "q"), failed], new Map());
  assert.deepEqual(items.at(-1), { key: "a:status", kind: "status", row: "a", status: "error", error: "boom", retry: true });
  const later = deriveTimeline([user("u", 1, "q"), failed, row({ id: "b", seq: 3, status: "interrupted" })], new Map());
  assert.deepEqual(later.filter((i) => i.kind === "status").map((i) => [i.row, i.retry]), [["a", false], ["b", true]]);
});

test("an edited user message shows its edited text", () => {
  const [item] = deriveTimeline([user("u", 1, "frist", "first")], new Map());
  assert.deepEqual(item, {
    key: "u", kind: "user", row: "u", text: "first", edited: true, created_at: null, version: 1, versions: 1,
  });
});

test("a finished turn ends with one meta item: its text, model, usage summed over its rows", () => {
  const call = { type: "tool_call", id: "c1", name: "clock", arguments_text: "{}", arguments: {}, ready: true };
  const rows = [
    user("u", 1, "q"),
    row({ id: "a", seq: 2, blocks: [{ type: "text", text: "Let me look." }, call], usage: { input_tokens: 5, output_tokens: 3 } }),
    row({ id: "t", seq: 3, role: "tool", content: "noon", tool_call_id: "c1" }),
    row({ id: "b", seq: 4, blocks: [{ type: "text", text: "It is noon." }], model: "demo:default",
      created_at: "2026-12-04T10:00:00Z", usage: { input_tokens: 9, output_tokens: 4, cache_hit: true },
      feedback: { rating: "up" }, version: 1, versions: 1 }),
  ];
  const metas = derive(rows, new Map()).filter((i) => i.kind === "meta");
  assert.deepEqual(metas, [{
    key: "b:meta", kind: "meta", row: "b", text: "Let me look.\n\nIt is noon.", model: "demo:default",
    created_at: "2026-12-04T10:00:00Z", feedback: "up", version: 1, versions: 1, first: "a",
    usage: { input_tokens: 14, output_tokens: 7, cache_hit: true, cache_read_input_tokens: 0 },
  }]);
  // A generating turn has none yet.
  const live = derive([user("u", 1, "q"), row({ id: "a", seq: 2, status: "generating" })], new Map());
  assert.equal(live.filter((i) => i.kind === "meta").length, 0);
});

test("the static copy of the reducer is reducer/js/reducer.js, byte for byte (make web)", async () => {
  const { readFileSync } = await import("node:fs");
  const url = (p) => new URL(p, import.meta.url);
  assert.equal(
    readFileSync(url("../../src/turnlog/web/static/reducer.js"), "utf8"),
    readFileSync(url("../../reducer/js/reducer.js"), "utf8"),
  );
});

test("the active path runs from the root to the leaf, then down the newest child", () => {
  const r = (id, seq, parent_id) => row({ id, seq, parent_id, role: seq % 2 ? "user" : "assistant" });
  // u1 - a2 (first answer) and a3 (regenerated, a sibling of a2); u4 answers under a3.
  const rows = [r("u1", 1, null), r("a2", 2, "u1"), r("a3", 3, "u1"), r("u4", 4, "a3"), r("a5", 5, "u4")];
  assert.deepEqual(activePath(rows, "a2").map((x) => x.id), ["u1", "a2"]);
  assert.deepEqual(activePath(rows, "u4").map((x) => x.id), ["u1", "a3", "u4", "a5"]);
  assert.deepEqual(siblings(rows, "a3").map((x) => x.id), ["a2", "a3"]);
  // A server without versions (no parent_id): every row.
  const flat = [row({ id: "x", seq: 1 }), row({ id: "y", seq: 2 })];
  assert.equal(activePath(flat, "x").length, 2);
});

test("conversations are grouped by day: Today, Yesterday, Previous 7 and 30 days, then by month", () => {
  const now = new Date(2026, 11, 4, 12);
  const at = (days) => new Date(2026, 11, 4 - days, 9).toISOString();
  assert.deepEqual([0, 1, 5, 20].map((d) => dateGroup(at(d), now)), ["Today", "Yesterday", "Previous 7 days", "Previous 30 days"]);
  assert.match(dateGroup(at(90), now), /2026/);
});
