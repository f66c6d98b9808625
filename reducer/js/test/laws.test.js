// The reducer's laws (docs/protocol.md, "Laws") as fast-check properties: the same laws the Python package's
// tests/reducer/test_reducer_laws.py states with Hypothesis.
import assert from "node:assert/strict";
import { test } from "node:test";

import fc from "fast-check";

import {
  EMPTY,
  StreamProtocolError,
  ValidationError,
  applyStreamEvent,
  decodeBlocks,
  decodeEvent,
  encodeBlocks,
  encodeEvent,
  fold,
} from "../reducer.js";

/** @typedef {import("../reducer.js").StreamEvent} StreamEvent */
/** @typedef {import("../reducer.js").Block} Block */

const RUNS = { numRuns: 300 };

// Short texts, some non-ASCII (astral too), the occasional empty string: deltas are small.
const texts = fc.string({ unit: "grapheme", maxLength: 6 });
const toolIds = fc.stringMatching(/^[a-z0-9_]{1,4}$/);
const toolNames = fc.constantFrom("get_time", "search", "ask_user", "calc");
const jsonValues = fc.jsonValue({ maxDepth: 2 }).map((v) => JSON.parse(JSON.stringify(v)));
const dones = fc.record(
  {
    type: fc.constant("done"),
    status: fc.constantFrom("completed", "interrupted", "error", "aborted"),
    finish_reason: fc.constantFrom("stop", "length", "tool_calls"),
    usage: fc.dictionary(fc.constantFrom("input", "output"), fc.nat()),
    error: texts,
  },
  { requiredKeys: ["type", "status"] },
).map((d) => JSON.parse(JSON.stringify(d))); // plain objects, as JSON.parse gives them

/** A valid stream: every tool id started once before its deltas and ready; signatures only
 * after a block. Built from a list of choices so fast-check can shrink it.
 * @type {fc.Arbitrary<StreamEvent[]>} */
const streams = fc
  .tuple(
    fc.array(
      fc.tuple(
        fc.constantFrom(
          "text", "text", "reasoning", "start", "delta", "delta", "ready", "signature", "redacted",
        ),
        texts,
        toolIds,
        toolNames,
        jsonValues,
        fc.nat(),
      ),
      { maxLength: 40 },
    ),
    fc.option(dones, { nil: undefined }),
  )
  .map(([choices, done]) => {
    /** @type {StreamEvent[]} */
    const out = [];
    /** @type {string[]} */
    const started = [];
    let blocks = 0;
    for (const [kind, text, id, name, args, pick] of choices) {
      if (kind === "text") out.push({ type: "text_delta", text });
      else if (kind === "reasoning") out.push({ type: "reasoning_delta", text });
      else if (kind === "redacted") out.push({ type: "reasoning_redacted", data: text });
      else if (kind === "signature" && blocks > 0) out.push({ type: "signature", signature: text });
      else if (kind === "start" || (started.length === 0 && kind !== "signature")) {
        // Unique even when a suffixed id was drawn itself ("__3" and then "_" made "__3").
        let fresh = id;
        for (let n = started.length; started.includes(fresh); n += 1) fresh = `${id}_${n}`;
        started.push(fresh);
        out.push({ type: "tool_call_started", id: fresh, name });
      } else if (kind === "delta") {
        out.push({ type: "tool_call_delta", id: started[pick % started.length], arguments_delta: text });
      } else if (kind === "ready") {
        out.push({ type: "tool_call_ready", id: started[pick % started.length], arguments: args });
      }
      blocks = fold(EMPTY, out).length; // cheap enough at these sizes; keeps `signature` valid
    }
    if (done) out.push(done);
    return out;
  });

const splitStreams = streams.chain((evs) => fc.tuple(fc.constant(evs), fc.nat({ max: evs.length })));

/** The contract's effect table, the obvious (quadratic, mutable) way: the test oracle.
 * @param {StreamEvent[]} evs
 * @returns {Block[]} */
function referenceFold(evs) {
  /** @type {any[]} */
  const blocks = [];
  const sealed = (/** @type {any} */ b) => b.signature !== undefined || b.redacted === true;
  for (const e of evs) {
    const last = blocks[blocks.length - 1];
    if (e.type === "text_delta" || e.type === "reasoning_delta") {
      const kind = e.type === "text_delta" ? "text" : "reasoning";
      if (!e.text) continue;
      if (last && last.type === kind && !sealed(last)) last.text += e.text;
      else blocks.push({ type: kind, text: e.text });
    } else if (e.type === "tool_call_started") {
      blocks.push({ type: "tool_call", id: e.id, name: e.name, arguments_text: "", arguments: null, ready: false });
    } else if (e.type === "tool_call_delta") {
      blocks.find((b) => b.type === "tool_call" && b.id === e.id).arguments_text += e.arguments_delta;
    } else if (e.type === "tool_call_ready") {
      const b = blocks.find((b) => b.type === "tool_call" && b.id === e.id);
      b.arguments = e.arguments;
      b.ready = true;
    } else if (e.type === "signature") {
      last.signature = e.signature;
    } else if (e.type === "reasoning_redacted") {
      blocks.push({ type: "reasoning", text: "", signature: e.data, redacted: true });
    }
  }
  return blocks;
}

/** @param {unknown} v */
const plain = (v) => JSON.parse(JSON.stringify(v));

test("folding a valid stream gives what the contract's table says, block for block", () => {
  fc.assert(fc.property(streams, (evs) => {
    assert.deepStrictEqual(plain(fold(EMPTY, evs)), referenceFold(evs));
  }), RUNS);
});

test("snapshot at K through JSON plus replay of the rest equals the full fold, for every K", () => {
  fc.assert(fc.property(streams, (evs) => {
    const full = plain(fold(EMPTY, evs));
    for (let k = 0; k <= evs.length; k++) {
      const snapshot = decodeBlocks(encodeBlocks(fold(EMPTY, evs.slice(0, k))));
      assert.deepStrictEqual(plain(fold(snapshot, evs.slice(k))), full, `K = ${k}`);
    }
  }), RUNS);
});

test("applyStreamEvent never changes its input, and equal inputs give equal outputs", () => {
  fc.assert(fc.property(splitStreams, ([evs, k]) => {
    let state = fold(EMPTY, evs.slice(0, k));
    for (const event of evs.slice(k)) {
      const before = encodeBlocks(state);
      const asPlain = plain(state); // a state as it comes off the wire: unfrozen objects
      const first = applyStreamEvent(state, event);
      const again = applyStreamEvent(state, event);
      const fromPlain = applyStreamEvent(asPlain, event);
      assert.deepStrictEqual(plain(first), plain(again));
      assert.deepStrictEqual(plain(fromPlain), plain(first));
      assert.equal(encodeBlocks(state), before);
      assert.deepStrictEqual(asPlain, JSON.parse(before));
      state = first;
    }
  }), RUNS);
});

test("forks from one state never disturb each other", () => {
  fc.assert(fc.property(splitStreams, streams, ([evs, k], other) => {
    const prefix = evs.slice(0, k);
    const taken = new Set(prefix.flatMap((e) => (e.type === "tool_call_started" ? [e.id] : [])));
    const right = other.map((e) =>
      "id" in e && taken.has(e.id) ? { ...e, id: `fork-${e.id}` } : e,
    );
    const left = evs.slice(k);
    const base = fold(EMPTY, prefix);
    let a = base;
    let b = base;
    for (let i = 0; i < Math.max(left.length, right.length); i++) {
      if (i < left.length) a = applyStreamEvent(a, left[i]);
      if (i < right.length) b = applyStreamEvent(b, right[i]);
      applyStreamEvent(base, { type: "text_delta", text: "x" });
    }
    assert.deepStrictEqual(plain(base), referenceFold(prefix));
    assert.deepStrictEqual(plain(a), referenceFold(evs));
    assert.deepStrictEqual(plain(b), referenceFold([...prefix, ...right]));
  }), RUNS);
});

test("append-only: a block keeps its index and kind; only the open block and tool args grow", () => {
  fc.assert(fc.property(streams, (evs) => {
    let prev = EMPTY;
    for (const event of evs) {
      const next = applyStreamEvent(prev, event);
      assert.ok(prev.length <= next.length && next.length <= prev.length + 1);
      prev.toArray().forEach((old, i) => {
        const now = /** @type {Block} */ (next.at(i));
        assert.equal(now.type, old.type);
        if (old.type === "tool_call" && now.type === "tool_call") {
          assert.equal(now.id, old.id);
          assert.ok(now.arguments_text.startsWith(old.arguments_text));
          assert.ok(now.ready || !old.ready);
        } else if (i < prev.length - 1) {
          assert.strictEqual(now, old, "a text/reasoning block before the last must not change");
        } else if (old.type !== "tool_call" && now.type !== "tool_call") {
          assert.ok(now.text.startsWith(old.text));
        }
      });
      prev = next;
    }
  }), RUNS);
});

test("an empty delta leaves the state equal (the very same array)", () => {
  fc.assert(fc.property(streams, fc.nat(), (evs, pick) => {
    const state = fold(EMPTY, evs);
    const ids = state.toArray().flatMap((b) => (b.type === "tool_call" ? [b.id] : []));
    /** @type {StreamEvent[]} */
    const empties = [
      { type: "text_delta", text: "" },
      { type: "reasoning_delta", text: "" },
      ...ids.map((id) => /** @type {StreamEvent} */ ({ type: "tool_call_delta", id, arguments_delta: "" })),
    ];
    assert.strictEqual(applyStreamEvent(state, empties[pick % empties.length]), state);
  }), RUNS);
});

test("decodeEvent(encodeEvent(e)) equals e, and encoding is canonical", () => {
  const events = streams.filter((s) => s.length > 0).map((s) => s[s.length - 1]);
  fc.assert(fc.property(events, (event) => {
    const raw = encodeEvent(event);
    assert.deepStrictEqual(decodeEvent(raw), event);
    assert.equal(encodeEvent(decodeEvent(raw)), raw);
  }), RUNS);
});

test("decodeBlocks(encodeBlocks(b)) equals b, and re-encoding gives the same text", () => {
  fc.assert(fc.property(streams, (evs) => {
    const raw = encodeBlocks(fold(EMPTY, evs));
    assert.deepStrictEqual(plain(decodeBlocks(raw)), JSON.parse(raw));
    assert.equal(encodeBlocks(decodeBlocks(raw)), raw);
  }), RUNS);
});

test("encoding matches the Python package byte for byte on known cases", () => {
  assert.equal(encodeEvent({ type: "done", status: "completed", finish_reason: null }),
    '{"type":"done","status":"completed"}');
  assert.equal(encodeEvent(decodeEvent('{"text":"hi","type":"text_delta","extra":1}')),
    '{"type":"text_delta","text":"hi"}');
  assert.equal(
    encodeBlocks(fold(EMPTY, [
      { type: "text_delta", text: "It is " },
      { type: "text_delta", text: "noon." },
      { type: "tool_call_started", id: "c1", name: "get_time" },
      { type: "tool_call_ready", id: "c1", arguments: { tz: "UTC" } },
    ])),
    '[{"type":"text","text":"It is noon."},{"type":"tool_call","id":"c1","name":"get_time",' +
      '"arguments_text":"","arguments":{"tz":"UTC"},"ready":true}]',
  );
});

const WRONG = {
  text_delta: { text: [1, null, ["a"], { a: 1 }, true] },
  reasoning_delta: { text: [2.5, null, false] },
  tool_call_started: { id: [1, null, []], name: [0, {}, null] },
  tool_call_delta: { id: [7, null], arguments_delta: [3, null, ["x"]] },
  tool_call_ready: { id: [null, 1.5, {}] },
  signature: { signature: [1, null, {}] },
  reasoning_redacted: { data: [false, null, [1]] },
  done: { status: ["finished", 1, null, ""], finish_reason: [1, ["stop"]], usage: ["many", 3, [1]], error: [404, { message: "x" }] },
};
const VALID = {
  text_delta: { text: "hi" },
  reasoning_delta: { text: "hm" },
  tool_call_started: { id: "t1", name: "calc" },
  tool_call_delta: { id: "t1", arguments_delta: "{" },
  tool_call_ready: { id: "t1", arguments: {} },
  signature: { signature: "sig" },
  reasoning_redacted: { data: "opaque" },
  done: { status: "completed" },
};

test("an unknown type or a field of the wrong type is a ValidationError", () => {
  const wrong = fc.constantFrom(...Object.keys(WRONG)).chain((type) => {
    const fields = /** @type {Record<string, unknown[]>} */ (WRONG[/** @type {keyof typeof WRONG} */ (type)]);
    return fc.constantFrom(...Object.keys(fields)).chain((field) =>
      fc.constantFrom(...fields[field]).map((bad) => ({
        type, ...VALID[/** @type {keyof typeof VALID} */ (type)], [field]: bad,
      })),
    );
  });
  const unknown = fc.string({ maxLength: 12 }).filter((t) => !(t in VALID)).map((type) => ({ type, text: "x" }));
  fc.assert(fc.property(fc.oneof(wrong, unknown), (obj) => {
    assert.throws(() => decodeEvent(JSON.stringify(obj)), ValidationError);
  }), RUNS);
  assert.throws(() => decodeEvent("{not json"), SyntaxError);
});

test("unknown-id delta/ready, a reused started id and a signature with no block raise StreamProtocolError", () => {
  fc.assert(fc.property(streams, toolIds, fc.nat(), (evs, id, pick) => {
    const prefix = evs.filter((e) => e.type !== "done");
    const state = fold(EMPTY, prefix);
    const before = encodeBlocks(state);
    const started = state.toArray().flatMap((b) => (b.type === "tool_call" ? [b.id] : []));
    const fresh = started.includes(id) ? `${id}-new` : id;
    /** @type {StreamEvent[]} */
    const bad = [
      { type: "tool_call_delta", id: fresh, arguments_delta: "" },
      { type: "tool_call_ready", id: fresh, arguments: null },
    ];
    if (started.length) bad.push({ type: "tool_call_started", id: started[pick % started.length], name: "f" });
    const event = bad[pick % bad.length];
    assert.throws(() => applyStreamEvent(state, event), (err) =>
      err instanceof StreamProtocolError && err.message.includes(JSON.stringify(event.id)));
    assert.equal(encodeBlocks(state), before);
  }), RUNS);
  assert.throws(() => applyStreamEvent(EMPTY, { type: "signature", signature: "s" }), StreamProtocolError);
});

test("a signed or redacted block is sealed: the next delta of its kind starts a new block", () => {
  const blocks = fold(EMPTY, [
    { type: "reasoning_delta", text: "a" },
    { type: "signature", signature: "s1" },
    { type: "reasoning_delta", text: "b" },
    { type: "signature", signature: "s2" },
    { type: "reasoning_redacted", data: "enc" },
    { type: "reasoning_delta", text: "c" },
  ]);
  assert.deepStrictEqual(plain(blocks), [
    { type: "reasoning", text: "a", signature: "s1" },
    { type: "reasoning", text: "b", signature: "s2" },
    { type: "reasoning", text: "", signature: "enc", redacted: true },
    { type: "reasoning", text: "c" },
  ]);
});
