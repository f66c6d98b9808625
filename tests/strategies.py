"""Hypothesis strategies for turnlog's stream events, blocks and wire JSON.

Valid streams come from ``event_sequences()``: text and reasoning deltas (empty ones
included) interleaved with several tool calls whose arguments stream in while other blocks
grow, signatures on whatever block is last, redacted reasoning, then an optional ``done``.
Invalid cases (``invalid_streams()``, ``wrong_type_event_json()``) are built from the same
pieces.
"""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import strategies as st
from turnlog_reducer import (
    Block,
    Done,
    ReasoningBlock,
    ReasoningDelta,
    ReasoningRedacted,
    Signature,
    StreamEvent,
    TextBlock,
    TextDelta,
    ToolCallBlock,
    ToolCallDelta,
    ToolCallReady,
    ToolCallStarted,
)

EVENT_TYPES = (
    "text_delta",
    "reasoning_delta",
    "tool_call_started",
    "tool_call_delta",
    "tool_call_ready",
    "signature",
    "reasoning_redacted",
    "done",
)
STATUSES = ("completed", "interrupted", "error", "aborted")

# Short texts with some non-ASCII and the occasional empty string: deltas are small.
texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=6)
tool_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=4)
tool_names = st.sampled_from(["get_time", "search", "ask_user", "calc"])

# Whatever JSON can carry and bring back equal (lists, not tuples; 64-bit ints; finite floats).
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)

dones = st.builds(
    Done,
    status=st.sampled_from(STATUSES),
    finish_reason=st.none() | st.sampled_from(["stop", "length", "tool_calls"]),
    usage=st.none() | st.dictionaries(st.sampled_from(["input", "output"]), st.integers(0, 10**6)),
    error=st.none() | texts,
)

# Any single event, context-free: for the codec round-trip.
events: st.SearchStrategy[StreamEvent] = st.one_of(
    st.builds(TextDelta, texts),
    st.builds(ReasoningDelta, texts),
    st.builds(ToolCallStarted, tool_ids, tool_names),
    st.builds(ToolCallDelta, tool_ids, texts),
    st.builds(ToolCallReady, tool_ids, json_values),
    st.builds(Signature, texts),
    st.builds(ReasoningRedacted, texts),
    dones,
)


@st.composite
def event_sequences(draw: st.DrawFn, max_size: int = 40) -> list[StreamEvent]:
    """A valid stream: every tool id started once before its deltas and ready."""
    started: list[str] = []
    out: list[StreamEvent] = []
    for _ in range(draw(st.integers(0, max_size))):
        kinds = ["text", "reasoning", "start", "redacted"]
        kinds += ["delta", "delta", "ready"] if started else []
        # A signature needs a block to sign: any non-empty delta, start or redaction made one.
        kinds += ["sign"] if any(_makes_block(e) for e in out) else []
        kind = draw(st.sampled_from(kinds))
        if kind == "sign":
            out.append(Signature(draw(texts)))
        elif kind == "redacted":
            out.append(ReasoningRedacted(draw(texts)))
        elif kind == "text":
            out.append(TextDelta(draw(texts)))
        elif kind == "reasoning":
            out.append(ReasoningDelta(draw(texts)))
        elif kind == "start":
            tool_id = draw(tool_ids.filter(lambda i: i not in started))
            started.append(tool_id)
            out.append(ToolCallStarted(tool_id, draw(tool_names)))
        elif kind == "delta":
            out.append(ToolCallDelta(draw(st.sampled_from(started)), draw(texts)))
        else:
            out.append(ToolCallReady(draw(st.sampled_from(started)), draw(json_values)))
    if draw(st.booleans()):
        out.append(draw(dones))
    return out


def _makes_block(event: StreamEvent) -> bool:
    if isinstance(event, TextDelta | ReasoningDelta):
        return bool(event.text)
    return isinstance(event, ToolCallStarted | ReasoningRedacted)


@st.composite
def wide_event_sequences(draw: st.DrawFn) -> list[StreamEvent]:
    """A valid stream with many parallel tool calls (more than the reducer's cheap tail),
    whose argument deltas and readies then arrive in any order, text in between."""
    n_tools = draw(st.integers(9, 20))
    ids = [f"t{i}" for i in range(n_tools)]
    out: list[StreamEvent] = []
    for tool_id in ids:
        if draw(st.booleans()):
            out.append(TextDelta(draw(texts)))
        out.append(ToolCallStarted(tool_id, draw(tool_names)))
    for _ in range(draw(st.integers(0, 40))):
        tool_id = draw(st.sampled_from(ids))
        kind = draw(st.sampled_from(["delta", "delta", "ready", "text", "sign"]))
        if kind == "sign":
            out.append(Signature(draw(texts)))
        elif kind == "delta":
            out.append(ToolCallDelta(tool_id, draw(texts)))
        elif kind == "ready":
            out.append(ToolCallReady(tool_id, draw(json_values)))
        else:
            out.append(TextDelta(draw(texts)))
    return out


# Every valid-stream property runs on both shapes.
streams = event_sequences() | wide_event_sequences()


@st.composite
def split_sequences(draw: st.DrawFn) -> tuple[list[StreamEvent], int]:
    """A valid stream and a cut point ``0 <= K <= len``."""
    evs = draw(streams)
    return evs, draw(st.integers(0, len(evs)))


@st.composite
def invalid_streams(draw: st.DrawFn) -> tuple[list[StreamEvent], StreamEvent, str]:
    """A valid prefix, then an event invalid after it, and the id the error must name.

    The three invalid cases of the contract: ``tool_call_delta`` or ``tool_call_ready`` for
    an id never started, and ``tool_call_started`` with an id already started.
    """
    prefix = draw(event_sequences(max_size=20).map(_without_done))
    started = [e.id for e in prefix if isinstance(e, ToolCallStarted)]
    cases = ["unknown_delta", "unknown_ready"] + (["duplicate_start"] if started else [])
    case = draw(st.sampled_from(cases))
    if case == "duplicate_start":
        tool_id = draw(st.sampled_from(started))
        return prefix, ToolCallStarted(tool_id, draw(tool_names)), tool_id
    tool_id = draw(tool_ids.filter(lambda i: i not in started))
    if case == "unknown_delta":
        # An empty delta is still checked: validity comes before the no-op shortcut.
        return prefix, ToolCallDelta(tool_id, draw(texts)), tool_id
    return prefix, ToolCallReady(tool_id, draw(json_values)), tool_id


def _without_done(evs: list[StreamEvent]) -> list[StreamEvent]:
    return [e for e in evs if not isinstance(e, Done)]


# JSON objects that must fail validation: unknown tags and fields of the wrong type.
_WRONG_FIELDS: dict[str, dict[str, list[Any]]] = {
    "text_delta": {"text": [1, None, ["a"], {"a": 1}, True]},
    "reasoning_delta": {"text": [2.5, None, False]},
    "tool_call_started": {"id": [1, None, []], "name": [0, {}, None]},
    "tool_call_delta": {"id": [7, None], "arguments_delta": [3, None, ["x"]]},
    "tool_call_ready": {"id": [None, 1.5, {}]},
    "done": {
        "status": ["finished", 1, None, ""],
        "finish_reason": [1, ["stop"]],
        "usage": ["many", 3, [1]],
        "error": [404, {"message": "x"}],
    },
    "signature": {"signature": [1, None, ["s"]]},
    "reasoning_redacted": {"data": [2, None, {}]},
}
_VALID_FIELDS: dict[str, dict[str, Any]] = {
    "text_delta": {"text": "hi"},
    "reasoning_delta": {"text": "hm"},
    "tool_call_started": {"id": "t1", "name": "calc"},
    "tool_call_delta": {"id": "t1", "arguments_delta": "{"},
    "tool_call_ready": {"id": "t1", "arguments": {}},
    "signature": {"signature": "s"},
    "reasoning_redacted": {"data": "enc"},
    "done": {"status": "completed"},
}


@st.composite
def wrong_type_event_json(draw: st.DrawFn) -> dict[str, Any]:
    """An event object with one field replaced by a value of the wrong type."""
    type_ = draw(st.sampled_from(sorted(_WRONG_FIELDS)))
    field = draw(st.sampled_from(sorted(_WRONG_FIELDS[type_])))
    bad = draw(st.sampled_from(_WRONG_FIELDS[type_][field]))
    return {"type": type_, **_VALID_FIELDS[type_], field: bad}


@st.composite
def unknown_type_event_json(draw: st.DrawFn) -> dict[str, Any]:
    """An otherwise plausible event object whose ``type`` is not one of the eight."""
    type_ = draw(st.text(max_size=12).filter(lambda t: t not in EVENT_TYPES))
    return {"type": type_, "text": draw(texts)}


def reference_fold(evs: list[StreamEvent]) -> list[Block]:
    """The contract's effect table, written the obvious (quadratic) way: the test oracle."""
    blocks: list[Block] = []
    for e in evs:
        match e:
            case TextDelta(text=t) | ReasoningDelta(text=t):
                kind = TextBlock if isinstance(e, TextDelta) else ReasoningBlock
                if not t:
                    continue
                if blocks and type(blocks[-1]) is kind and not is_sealed(blocks[-1]):
                    blocks[-1] = kind(blocks[-1].text + t)  # type: ignore[union-attr]
                else:
                    blocks.append(kind(t))
            case Signature(signature=sig):
                blocks[-1] = msgspec.structs.replace(blocks[-1], signature=sig)
            case ReasoningRedacted(data=data):
                blocks.append(ReasoningBlock("", signature=data, redacted=True))
            case ToolCallStarted(id=i, name=n):
                blocks.append(ToolCallBlock(i, n, "", None, False))
            case ToolCallDelta(id=i, arguments_delta=d):
                k = _tool_index(blocks, i)
                b = blocks[k]
                assert isinstance(b, ToolCallBlock)
                blocks[k] = msgspec.structs.replace(b, arguments_text=b.arguments_text + d)
            case ToolCallReady(id=i, arguments=a):
                k = _tool_index(blocks, i)
                b = blocks[k]
                assert isinstance(b, ToolCallBlock)
                blocks[k] = msgspec.structs.replace(b, arguments=a, ready=True)
            case Done():
                pass
    return blocks


def is_sealed(block: Block) -> bool:
    """A signed or redacted text/reasoning block: no delta extends it."""
    if isinstance(block, ToolCallBlock):
        return False
    return block.signature is not msgspec.UNSET or getattr(block, "redacted", False) is True


def _tool_index(blocks: list[Block], tool_id: str) -> int:
    return next(k for k, b in enumerate(blocks) if isinstance(b, ToolCallBlock) and b.id == tool_id)


# -- what a chat product keeps around the answers -----------------------------------------

# No NUL: PostgreSQL text and jsonb cannot hold it (the commands refuse it with a 400).
product_texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)


def metadata_maps() -> st.SearchStrategy[dict[str, str]]:
    """Conversation metadata within the limits: at most 16 keys of 1-64 characters."""
    keys = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=8)
    return st.dictionaries(keys, product_texts, max_size=16)


def prompt_commands() -> st.SearchStrategy[tuple[str, str]]:
    """(name, input) of a `/NAME input` prompt command."""
    return st.tuples(st.from_regex(r"[a-z0-9_-]{1,32}", fullmatch=True), product_texts)
