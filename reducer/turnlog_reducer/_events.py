"""Stream events: what a provider emits, what subscribers receive, what the reducer folds.

One msgspec tagged union (tag field ``type``) is the wire JSON, the SSE payload and the
reducer input alike, so there is exactly one shape per event.
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

import msgspec

__all__ = [
    "Done",
    "ReasoningDelta",
    "ReasoningRedacted",
    "Signature",
    "StreamEvent",
    "TextDelta",
    "ToolCallDelta",
    "ToolCallReady",
    "ToolCallStarted",
    "decode_event",
    "encode_event",
]


class _Event(msgspec.Struct, frozen=True, tag_field="type", omit_defaults=True):
    """Base of the stream events; ``None`` optionals are left out of the JSON."""


class TextDelta(_Event, frozen=True, tag="text_delta"):
    """Append ``text`` to the last block if it is a text block, else start one."""

    text: str


class ReasoningDelta(_Event, frozen=True, tag="reasoning_delta"):
    """Append ``text`` to the last block if it is a reasoning block, else start one."""

    text: str


class ToolCallStarted(_Event, frozen=True, tag="tool_call_started"):
    """Append a tool-call block; ``id`` must be new within the stream."""

    id: str
    name: str


class ToolCallDelta(_Event, frozen=True, tag="tool_call_delta"):
    """Append to the ``arguments_text`` of the tool-call block with this ``id``."""

    id: str
    arguments_delta: str


class ToolCallReady(_Event, frozen=True, tag="tool_call_ready"):
    """Set the parsed ``arguments`` of the tool-call block with this ``id`` and mark it ready."""

    id: str
    arguments: Any


class Signature(_Event, frozen=True, tag="signature"):
    """Set ``signature`` on the last block: a provider's opaque proof for reasoning, a tool
    call or text, sent back with the history. It seals a text or reasoning block."""

    signature: str


class ReasoningRedacted(_Event, frozen=True, tag="reasoning_redacted"):
    """Append a sealed reasoning block with ``text`` "", ``redacted`` true and ``signature``
    ``data`` (a provider's encrypted reasoning)."""

    data: str


class Done(_Event, frozen=True, tag="done"):
    """Terminal marker of a stream; it leaves the blocks as they are."""

    status: Literal["completed", "interrupted", "error", "aborted"]
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: str | None = None
    # How many times the generation was continued after its process died (absent if never).
    recovered: int | None = None


StreamEvent: TypeAlias = (
    TextDelta
    | ReasoningDelta
    | ToolCallStarted
    | ToolCallDelta
    | ToolCallReady
    | Signature
    | ReasoningRedacted
    | Done
)

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[StreamEvent] = msgspec.json.Decoder(StreamEvent)


def encode_event(event: StreamEvent) -> bytes:
    """Encode one stream event as compact JSON (``None`` optionals omitted)."""
    return _encoder.encode(event)


def decode_event(data: bytes | str) -> StreamEvent:
    """Decode one stream event from JSON.

    Raises ``msgspec.ValidationError`` for an unknown ``type`` or a field of the wrong type,
    and ``msgspec.DecodeError`` (its base class) for text that is not JSON at all.
    """
    return _decoder.decode(data)
