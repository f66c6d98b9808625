"""Benchmark of the blocks reducer: throughput, linearity, and two references.

Run: ``python bench/reducer.py`` (``make bench`` installs the optional peer first).

For N = 25k, 50k, 100k events it folds
- a *text* stream: N text deltas of 4 characters onto one open text block (the hot path);
- a *mixed* stream: reasoning, then text, then two tool calls whose argument deltas
  interleave, then their ``tool_call_ready``; repeated until N events;
and prints events/s and the linearity ratio time(100k)/time(50k), next to
- the *floor*: ``list.append`` of the same delta strings, then one ``''.join`` -- the least
  work any accumulator can do;
- the *peer*: the official ``anthropic`` SDK's stream accumulator
  (``anthropic.lib.streaming._messages.accumulate_event``) folding the equivalent Anthropic
  events (message_start, content_block_start/delta/stop), pre-parsed as the SDK parses them.
  Optional: ``pip install -e '.[bench]'``; skipped with a note when it is not installed.

Each figure is the best of a few runs (wall clock), materializing the final blocks.
Targets: >= 1,000,000 text deltas/s at N = 100k, ratio <= 2.3, faster than the peer.
"""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import Callable
from typing import Any

from turnlog_reducer import (
    EMPTY,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallReady,
    ToolCallStarted,
    apply_stream_event,
)

SIZES = (25_000, 50_000, 100_000)
REPEAT = 5
PEER_REPEAT = 3
TARGET_RATE = 1_000_000
TARGET_RATIO = 2.3


# --- the streams ---------------------------------------------------------------------------


def text_stream(n: int) -> list[StreamEvent]:
    """N text deltas of 4 characters (distinct string objects, as a provider would give)."""
    return [TextDelta(f"{i % 10_000:04d}") for i in range(n)]


def mixed_stream(n: int) -> list[StreamEvent]:
    """A step pattern repeated to N events: reasoning, text, two interleaved tool calls."""
    out: list[StreamEvent] = []
    step = 0
    while len(out) < n:
        out += [ReasoningDelta(f"r{i:03d}") for i in range(100)]
        out += [TextDelta(f"t{i:03d}") for i in range(200)]
        a, b = f"call_{step}_a", f"call_{step}_b"
        out += [ToolCallStarted(a, "search"), ToolCallStarted(b, "calc")]
        out += [ToolCallDelta(a, '{"q":"'), ToolCallDelta(b, '{"x":"')]
        for i in range(48):
            out += [ToolCallDelta(a, f"a{i:03d}"), ToolCallDelta(b, f"b{i:03d}")]
        out += [ToolCallDelta(a, '"}'), ToolCallDelta(b, '"}')]
        out += [ToolCallReady(a, {"q": "..."}), ToolCallReady(b, {"x": "..."})]
        step += 1
    return out[:n]


# --- the three accumulators ----------------------------------------------------------------


def run_reducer(events: list[StreamEvent]) -> Callable[[], object]:
    def run() -> object:
        state = EMPTY
        apply = apply_stream_event
        for event in events:
            state = apply(state, event)
        return list(state)  # materialize: the joined text is part of the cost

    return run


def run_floor(events: list[StreamEvent]) -> Callable[[], object]:
    strings = [_delta_text(e) for e in events]

    def run() -> object:
        parts: list[str] = []
        append = parts.append
        for s in strings:
            append(s)
        return "".join(parts)

    return run


def _delta_text(event: StreamEvent) -> str:
    match event:
        case TextDelta(text=t) | ReasoningDelta(text=t):
            return t
        case ToolCallDelta(arguments_delta=d):
            return d
    return ""


def load_peer() -> tuple[Callable[[list[StreamEvent]], Callable[[], object]] | None, str]:
    """The anthropic SDK's accumulator, or None and the reason it is unavailable."""
    try:
        import anthropic
        from anthropic._models import construct_type
        from anthropic.lib.streaming._messages import accumulate_event
        from anthropic.types import RawMessageStreamEvent
    except ImportError as exc:
        return None, f"anthropic SDK not installed ({exc}); pip install -e '.[bench]'"

    takes_json_bufs = "json_bufs" in inspect.signature(accumulate_event).parameters

    def parse(raw: dict[str, Any]) -> Any:
        return construct_type(type_=RawMessageStreamEvent, value=raw)

    def make(events: list[StreamEvent]) -> Callable[[], object]:
        peer_events = [parse(raw) for raw in to_anthropic(events)]

        def run() -> object:
            snapshot = None
            bufs: dict[int, bytes] = {}
            for event in peer_events:
                if takes_json_bufs:
                    snapshot = accumulate_event(
                        event=event, current_snapshot=snapshot, json_bufs=bufs
                    )
                else:  # older SDKs keep the JSON buffer on the block itself
                    snapshot = accumulate_event(event=event, current_snapshot=snapshot)
            return snapshot

        return run

    return make, f"anthropic {anthropic.__version__} accumulate_event"


def to_anthropic(events: list[StreamEvent]) -> list[dict[str, Any]]:
    """The Anthropic Messages stream carrying the same content as ``events``."""
    out: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_bench",
                "type": "message",
                "role": "assistant",
                "model": "claude-bench",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 1, "output_tokens": 0},
            },
        }
    ]
    kinds: list[str] = []
    tool_index: dict[str, int] = {}

    def open_run(kind: str, start: dict[str, Any]) -> int:
        if not kinds or kinds[-1] != kind:
            kinds.append(kind)
            out.append({"type": "content_block_start", "index": len(kinds) - 1, **start})
        return len(kinds) - 1

    for event in events:
        match event:
            case TextDelta(text=t):
                i = open_run("text", {"content_block": {"type": "text", "text": ""}})
                delta: dict[str, Any] = {"type": "text_delta", "text": t}
                out.append({"type": "content_block_delta", "index": i, "delta": delta})
            case ReasoningDelta(text=t):
                block = {"type": "thinking", "thinking": "", "signature": ""}
                i = open_run("thinking", {"content_block": block})
                delta = {"type": "thinking_delta", "thinking": t}
                out.append({"type": "content_block_delta", "index": i, "delta": delta})
            case ToolCallStarted(id=tool_id, name=name):
                kinds.append("tool_use")
                tool_index[tool_id] = i = len(kinds) - 1
                block = {"type": "tool_use", "id": tool_id, "name": name, "input": {}}
                out.append({"type": "content_block_start", "index": i, "content_block": block})
            case ToolCallDelta(id=tool_id, arguments_delta=d):
                delta = {"type": "input_json_delta", "partial_json": d}
                out.append(
                    {"type": "content_block_delta", "index": tool_index[tool_id], "delta": delta}
                )
            case ToolCallReady(id=tool_id):
                out.append({"type": "content_block_stop", "index": tool_index[tool_id]})
    return out


# --- measuring and printing ----------------------------------------------------------------


def best_time(run: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    peer, peer_note = load_peer()
    streams = {"text": text_stream, "mixed": mixed_stream}
    print(f"turnlog_reducer benchmark, Python {sys.version.split()[0]}, best of {REPEAT} runs")
    print(f"peer: {peer_note}\n")
    header = f"{'stream':<7}{'N':>9}{'reducer ev/s':>15}{'floor ev/s':>15}{'peer ev/s':>15}"
    print(header + f"{'reducer/peer':>14}")
    times: dict[tuple[str, str, int], float] = {}
    for name, make_stream in streams.items():
        for n in SIZES:
            events = make_stream(n)
            row = {
                "reducer": best_time(run_reducer(events), REPEAT),
                "floor": best_time(run_floor(events), REPEAT),
            }
            if peer is not None:
                row["peer"] = best_time(peer(events), PEER_REPEAT)
            for who, seconds in row.items():
                times[name, who, n] = seconds
            rates = {who: n / seconds for who, seconds in row.items()}
            peer_cells = (
                f"{rates['peer']:>15,.0f}{rates['reducer'] / rates['peer']:>13.1f}x"
                if "peer" in rates
                else f"{'-':>15}{'-':>14}"
            )
            print(f"{name:<7}{n:>9,}{rates['reducer']:>15,.0f}{rates['floor']:>15,.0f}{peer_cells}")
    print("\nlinearity: time(100k) / time(50k)  (linear = 2.0)")
    for name in streams:
        cells = []
        for who in ("reducer", "floor", "peer"):
            if (name, who, 100_000) in times:
                ratio = times[name, who, 100_000] / times[name, who, 50_000]
                cells.append(f"{who} {ratio:.2f}")
        print(f"  {name:<7}" + "   ".join(cells))

    rate = 100_000 / times["text", "reducer", 100_000]
    ratio = times["text", "reducer", 100_000] / times["text", "reducer", 50_000]
    checks = [
        (f"text deltas/s at N=100k >= {TARGET_RATE:,}", rate >= TARGET_RATE),
        (f"linearity ratio <= {TARGET_RATIO}", ratio <= TARGET_RATIO),
    ]
    if peer is not None:
        faster = all(
            times[name, "reducer", n] < times[name, "peer", n] for name in streams for n in SIZES
        )
        checks.append(("faster than the peer on every stream and N", faster))
    print("\ntargets:")
    for label, ok in checks:
        print(f"  [{'ok' if ok else 'MISSED'}] {label}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
