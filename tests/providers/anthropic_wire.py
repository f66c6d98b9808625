"""Anthropic Messages streaming transcripts, shaped like the API's (SSE with ``event:`` names).

Each helper returns the frames of one part of a reply; ``message`` wraps content frames in
``message_start`` ... ``message_stop`` the way the API sends them (a ``ping`` after the
first block starts, usage on ``message_start`` and, cumulative, on ``message_delta``).
"""

from __future__ import annotations

from typing import Any

from .fakeserver import Chunk, Reply, json_reply, sse

MODEL = "claude-fake-1"  # a name the SDK has no deprecation warning for


def message_start(input_tokens: int = 21, cache_read: int = 0) -> bytes:
    return sse(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
                "type": "message",
                "role": "assistant",
                "model": MODEL,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": input_tokens,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": cache_read,
                    "output_tokens": 1,
                },
            },
        },
    )


def ping() -> bytes:
    return sse("ping", {"type": "ping"})


def block_start(index: int, block: dict[str, Any]) -> bytes:
    return sse(
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": block},
    )


def delta(index: int, d: dict[str, Any]) -> bytes:
    return sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})


def block_stop(index: int) -> bytes:
    return sse("content_block_stop", {"type": "content_block_stop", "index": index})


def text(index: int, *pieces: str) -> list[Chunk]:
    return [
        block_start(index, {"type": "text", "text": ""}),
        *(delta(index, {"type": "text_delta", "text": p}) for p in pieces),
        block_stop(index),
    ]


def thinking(index: int, signature: str, *pieces: str) -> list[Chunk]:
    return [
        block_start(index, {"type": "thinking", "thinking": "", "signature": ""}),
        *(delta(index, {"type": "thinking_delta", "thinking": p}) for p in pieces),
        delta(index, {"type": "signature_delta", "signature": signature}),
        block_stop(index),
    ]


def redacted(index: int, data: str) -> list[Chunk]:
    return [block_start(index, {"type": "redacted_thinking", "data": data}), block_stop(index)]


def tool_use(index: int, call_id: str, name: str, *json_pieces: str) -> list[Chunk]:
    return [
        block_start(index, {"type": "tool_use", "id": call_id, "name": name, "input": {}}),
        *(delta(index, {"type": "input_json_delta", "partial_json": p}) for p in json_pieces),
        block_stop(index),
    ]


def message_end(stop_reason: str = "end_turn", output_tokens: int = 15) -> list[Chunk]:
    return [
        sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        ),
        sse("message_stop", {"type": "message_stop"}),
    ]


def error_event(kind: str = "overloaded_error", message: str = "Overloaded") -> bytes:
    return sse("error", {"type": "error", "error": {"type": kind, "message": message}})


def message(
    *content: list[Chunk], stop_reason: str = "end_turn", input_tokens: int = 21, out: int = 15
) -> Reply:
    """A whole streamed reply holding ``content`` (each a block's frames)."""
    body: list[Chunk] = [message_start(input_tokens)]
    for i, frames in enumerate(content):
        body += frames
        if i == 0:
            body.append(ping())
    body += message_end(stop_reason, out)
    return Reply(body=body)


def http_error(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> Reply:
    return json_reply(
        status,
        {"type": "error", "error": {"type": kind, "message": message}},
        {"request-id": "req_011CSHoEeqs5C35K2UUqR7Fy", **(headers or {})},
    )
