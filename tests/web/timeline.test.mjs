// deriveTimeline is a pure function of the rows and the overlays: tested here without a browser.
import assert from "node:assert/strict";
import { test } from "node:test";

import { EMPTY, fold } from "../../src/turnlog/web/static/reducer.js";
import { deriveTimeline, stoppableRow } from "../../src/turnlog/web/static/timeline.js";

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
  assert.deepEqual(item, { key: "u", kind: "user", row: "u", text: "first", edited: true });
});

test("the static copy of the reducer is reducer/js/reducer.js, byte for byte (make web)", async () => {
  const { readFileSync } = await import("node:fs");
  const url = (p) => new URL(p, import.meta.url);
  assert.equal(
    readFileSync(url("../../src/turnlog/web/static/reducer.js"), "utf8"),
    readFileSync(url("../../reducer/js/reducer.js"), "utf8"),
  );
});
