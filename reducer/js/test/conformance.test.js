// The shared conformance cases in reducer/conformance/*.json, unchanged: the same files the
// Python package runs (tests/reducer/test_reducer_conformance.py).
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import {
  EMPTY,
  StreamProtocolError,
  decodeBlocks,
  decodeEvent,
  encodeBlocks,
  fold,
} from "../reducer.js";

const DIR = fileURLToPath(new URL("../../conformance/", import.meta.url));
const FILES = readdirSync(DIR).filter((f) => f.endsWith(".json")).sort();

test("the cases use every event type, and each kind of invalid event", () => {
  assert.ok(FILES.length >= 12, `only ${FILES.length} cases in ${DIR}`);
  const cases = FILES.map((f) => JSON.parse(readFileSync(DIR + f, "utf8")));
  const used = new Set(cases.flatMap((c) => c.events.map((/** @type {any} */ e) => e.type)));
  assert.deepEqual([...used].sort(), [
    "done", "reasoning_delta", "reasoning_redacted", "signature", "text_delta",
    "tool_call_delta", "tool_call_ready", "tool_call_started",
  ]);
  const failing = new Set(cases.filter((c) => "error" in c).map((c) => c.events.at(-1).type));
  assert.deepEqual([...failing].sort(), ["signature", "tool_call_delta", "tool_call_ready", "tool_call_started"]);
});

for (const file of FILES) {
  const c = JSON.parse(readFileSync(DIR + file, "utf8"));
  test(`conformance: ${file.replace(/\.json$/, "")}`, () => {
    assert.notEqual("blocks" in c, "error" in c, "a case has either blocks or error");
    // Through the wire, as a client gets them: each event as JSON text.
    const events = c.events.map((/** @type {unknown} */ e) => decodeEvent(JSON.stringify(e)));
    if ("error" in c) {
      assert.equal(c.error, "StreamProtocolError");
      assert.throws(() => fold(EMPTY, events), StreamProtocolError);
      // The invalid event is the last one: everything before it folds.
      fold(EMPTY, events.slice(0, -1));
      return;
    }
    const blocks = fold(EMPTY, events);
    assert.deepStrictEqual(JSON.parse(encodeBlocks(blocks)), c.blocks);
    assert.deepStrictEqual(decodeBlocks(JSON.stringify(c.blocks)).toArray(), blocks.toArray());
  });
}
