// Benchmark of the JavaScript reducer (reducer/js), the twin of bench/reducer.py: the same
// streams, sizes and figures, so the two can be read side by side.
//
// Run: `node bench/reducer.mjs` (`make bench` runs both). For N = 25k, 50k, 100k events it
// folds a *text* stream (N text deltas of 4 characters onto one open block) and a *mixed*
// stream (reasoning, text, two tool calls whose argument deltas interleave, repeated), and
// prints events/s and the linearity ratio time(100k)/time(50k) next to the *floor*: pushing
// the same strings onto an array and one `join`. Each figure is the best of a few runs and
// includes materializing the final blocks as JSON (which flattens the text).
// Targets: >= 1,000,000 text deltas/s at N = 100k, ratio <= 2.3.
import { EMPTY, applyStreamEvent } from "../reducer/js/reducer.js";

const SIZES = [25_000, 50_000, 100_000];
const REPEAT = 15; // runs take milliseconds: more of them, so one GC pause or a busy core weighs less
const TARGET_RATE = 1_000_000;
const TARGET_RATIO = 2.3;

/** @param {number} n */
function textStream(n) {
  return Array.from({ length: n }, (_, i) => ({
    type: "text_delta",
    text: String(i % 10_000).padStart(4, "0"),
  }));
}

/** @param {number} n */
function mixedStream(n) {
  /** @type {any[]} */
  const out = [];
  const p3 = (/** @type {number} */ i) => String(i).padStart(3, "0");
  for (let step = 0; out.length < n; step++) {
    for (let i = 0; i < 100; i++) out.push({ type: "reasoning_delta", text: `r${p3(i)}` });
    for (let i = 0; i < 200; i++) out.push({ type: "text_delta", text: `t${p3(i)}` });
    const a = `call_${step}_a`;
    const b = `call_${step}_b`;
    out.push({ type: "tool_call_started", id: a, name: "search" });
    out.push({ type: "tool_call_started", id: b, name: "calc" });
    out.push({ type: "tool_call_delta", id: a, arguments_delta: '{"q":"' });
    out.push({ type: "tool_call_delta", id: b, arguments_delta: '{"x":"' });
    for (let i = 0; i < 48; i++) {
      out.push({ type: "tool_call_delta", id: a, arguments_delta: `a${p3(i)}` });
      out.push({ type: "tool_call_delta", id: b, arguments_delta: `b${p3(i)}` });
    }
    out.push({ type: "tool_call_delta", id: a, arguments_delta: '"}' });
    out.push({ type: "tool_call_delta", id: b, arguments_delta: '"}' });
    out.push({ type: "tool_call_ready", id: a, arguments: { q: "..." } });
    out.push({ type: "tool_call_ready", id: b, arguments: { x: "..." } });
  }
  return out.slice(0, n);
}

/** @param {any[]} events */
const runReducer = (events) => () => {
  let state = EMPTY;
  for (const event of events) state = applyStreamEvent(state, event);
  return JSON.stringify(state); // materialize: flattening the text is part of the cost
};

/** @param {any[]} events */
const runFloor = (events) => {
  const strings = events.map((e) => e.text ?? e.arguments_delta ?? "");
  return () => {
    const parts = [];
    for (const s of strings) parts.push(s);
    return parts.join("");
  };
};

/** @param {() => unknown} run */
function bestTime(run) {
  let best = Infinity;
  for (let i = 0; i < REPEAT; i++) {
    const start = process.hrtime.bigint();
    run();
    best = Math.min(best, Number(process.hrtime.bigint() - start) / 1e9);
  }
  return best;
}

const fmt = (/** @type {number} */ x) => Math.round(x).toLocaleString("en-US");
const streams = { text: textStream, mixed: mixedStream };
/** @type {Record<string, number>} */
const times = {};
console.log(`turnlog-reducer (JS) benchmark, Node ${process.version}, best of ${REPEAT} runs\n`);
console.log(`${"stream".padEnd(7)}${"N".padStart(9)}${"reducer ev/s".padStart(15)}${"floor ev/s".padStart(15)}`);
for (const [name, make] of Object.entries(streams)) {
  for (const n of SIZES) {
    const events = make(n);
    bestTime(runReducer(events)); // warm up the JIT on this shape
    const r = (times[`${name} reducer ${n}`] = bestTime(runReducer(events)));
    const f = (times[`${name} floor ${n}`] = bestTime(runFloor(events)));
    console.log(`${name.padEnd(7)}${fmt(n).padStart(9)}${fmt(n / r).padStart(15)}${fmt(n / f).padStart(15)}`);
  }
}
console.log("\nlinearity: time(100k) / time(50k)  (linear = 2.0)");
for (const name of Object.keys(streams)) {
  const cells = ["reducer", "floor"].map(
    (who) => `${who} ${(times[`${name} ${who} 100000`] / times[`${name} ${who} 50000`]).toFixed(2)}`,
  );
  console.log(`  ${name.padEnd(7)}${cells.join("   ")}`);
}
const rate = 100_000 / times["text reducer 100000"];
const ratio = times["text reducer 100000"] / times["text reducer 50000"];
const checks = [
  [`text deltas/s at N=100k >= ${fmt(TARGET_RATE)}`, rate >= TARGET_RATE],
  [`linearity ratio <= ${TARGET_RATIO}`, ratio <= TARGET_RATIO],
];
console.log("\ntargets:");
for (const [label, ok] of checks) console.log(`  [${ok ? "ok" : "MISSED"}] ${label}`);
process.exitCode = checks.every(([, ok]) => ok) ? 0 : 1;
