"""``apply_stream_event``: the one pure function every view of a message is folded with."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec

from ._blocks import (
    Block,
    Blocks,
    ReasoningBlock,
    TextBlock,
    _append,
    _new,
    _Run,
    _Sealed,
    _Tool,
)
from ._events import (
    Done,
    ReasoningDelta,
    ReasoningRedacted,
    Signature,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallReady,
    ToolCallStarted,
)

__all__ = ["StreamProtocolError", "apply_stream_event", "fold"]


class StreamProtocolError(ValueError):
    """An event that is invalid where it stands: it names a tool call that is not there,
    starts a tool call whose id is already taken, or signs a block that is not there."""


def _as_blocks(blocks: Sequence[Block]) -> Blocks:
    if isinstance(blocks, Blocks):
        return blocks
    return Blocks(blocks)


def apply_stream_event(blocks: Sequence[Block], event: StreamEvent) -> Blocks:
    """Return the blocks after ``event``; ``blocks`` itself is never changed.

    ``blocks`` may be ``EMPTY``, any ``Blocks`` or a list/tuple of block Structs. Raises
    ``StreamProtocolError`` for a tool-call event naming an unknown id, a
    ``tool_call_started`` reusing one, or a ``signature`` with no block to sign. Cost: O(1)
    amortized for a delta to the last block; for an argument delta to another tool call,
    O(TAIL) among the last few blocks, else O(number of blocks).
    """
    if type(blocks) is not Blocks:
        blocks = _as_blocks(blocks)
    # The hot path first: a text delta growing the open text block.
    if type(event) is TextDelta:
        kind: type[TextBlock] | type[ReasoningBlock] = TextBlock
    elif type(event) is ReasoningDelta:
        kind = ReasoningBlock
    else:
        return _apply_other(blocks, event)
    # _grow, inlined: this line runs once per token of every stream.
    text = event.text
    if not text:
        return blocks
    last = blocks._last
    if type(last) is _Run and last.kind is kind:
        m = last.m
        new = _new(Blocks)
        new._prefix = blocks._prefix
        new._last = _Run(kind, _append(last.chunks, m, text), m + 1)
        return new
    return blocks._pushed(_Run(kind, [text], 1))


def _grow(blocks: Blocks, kind: type[TextBlock] | type[ReasoningBlock], text: str) -> Blocks:
    """Append ``text`` to the last block if it is a ``kind`` block, else start one."""
    if not text:
        return blocks
    last = blocks._last
    if type(last) is _Run and last.kind is kind:
        m = last.m
        new = _new(Blocks)
        new._prefix = blocks._prefix
        new._last = _Run(kind, _append(last.chunks, m, text), m + 1)
        return new
    return blocks._pushed(_Run(kind, [text], 1))


def _apply_other(blocks: Blocks, event: StreamEvent) -> Blocks:
    match event:
        case ToolCallDelta(id=tool_id, arguments_delta=delta):
            index = _known(blocks, tool_id, "tool_call_delta")
            if not delta:
                return blocks
            return blocks._replaced(index, _tool_at(blocks, index).extended(delta))
        case ToolCallStarted(id=tool_id, name=name):
            taken = blocks._tool_index(tool_id)
            if taken is not None:
                raise StreamProtocolError(
                    f"tool_call_started with id {tool_id!r}: expected a new id, "
                    f"but block {taken} is already the tool call {tool_id!r}"
                )
            return blocks._pushed(_Tool(tool_id, name, [], 0, None, False))
        case ToolCallReady(id=tool_id, arguments=arguments):
            index = _known(blocks, tool_id, "tool_call_ready")
            return blocks._replaced(index, _tool_at(blocks, index).made_ready(arguments))
        case Signature(signature=signature):
            return _signed(blocks, signature)
        case ReasoningRedacted(data=data):
            return blocks._pushed(_Sealed(ReasoningBlock("", signature=data, redacted=True)))
        case Done():
            return blocks
        # Only subclasses of the delta events get here; the exact types take the fast path.
        case TextDelta(text=text):
            return _grow(blocks, TextBlock, text)
        case ReasoningDelta(text=text):
            return _grow(blocks, ReasoningBlock, text)
    raise TypeError(f"expected a stream event, got {type(event).__name__}")


def _signed(blocks: Blocks, signature: str) -> Blocks:
    """The blocks with ``signature`` set on the last one (a text or reasoning block is sealed)."""
    last = blocks._last
    if last is None:
        raise StreamProtocolError(
            "signature with no block to sign: expected it after the block it signs"
        )
    if isinstance(last, _Tool):
        entry: _Tool | _Sealed = last.signed(signature)
    else:
        # Joins the block's text once; the sealed block is never extended again.
        entry = _Sealed(msgspec.structs.replace(last.materialize(), signature=signature))
    return blocks._replaced(len(blocks) - 1, entry)


def _known(blocks: Blocks, tool_id: str, event_type: str) -> int:
    index = blocks._tool_index(tool_id)
    if index is None:
        known = blocks._tool_ids()
        raise StreamProtocolError(
            f"{event_type} for unknown tool call id {tool_id!r}: expected the id of an "
            f"earlier tool_call_started (known ids: {', '.join(map(repr, known)) or 'none'})"
        )
    return index


def _tool_at(blocks: Blocks, index: int) -> _Tool:
    tool = blocks._entry_at(index)
    assert type(tool) is _Tool, "the tool registry points at a tool-call block"
    return tool


def fold(blocks: Sequence[Block], events: Iterable[StreamEvent]) -> Blocks:
    """Apply ``events`` in order, starting from ``blocks``; ``fold(EMPTY, events)`` is the state."""
    state = _as_blocks(blocks)
    for event in events:
        state = apply_stream_event(state, event)
    return state
