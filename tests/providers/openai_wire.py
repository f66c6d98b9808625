"""OpenAI Chat Completions streaming transcripts, shaped like the API's: ``data: {chunk}``
frames, then ``data: [DONE]``; a usage chunk (empty ``choices``) when usage was asked for."""

from __future__ import annotations

from typing import Any

from .fakeserver import Hold, Pause, Reply, sse

MODEL = "test-model"


def stream(*events: Any, done: bool = True) -> Reply:
    """An OpenAI SSE reply: ``data: {chunk}`` frames (Pause/Hold pass through), then
    ``data: [DONE]``."""
    body = [e if isinstance(e, Pause | Hold) else sse(None, e) for e in events]
    return Reply(body=[*body, b"data: [DONE]\n\n"] if done else body)


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> Any:
    """One Chat Completions chunk, as OpenAI's API sends it."""
    choice = {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1760000000,
        "model": "test-model",
        "choices": [choice],
        **extra,
    }


def usage_chunk(prompt: int, completion: int, **details: Any) -> Any:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1760000000,
        "model": "test-model",
        "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, **details},
    }


def call(
    index: int | None, id: str | None = None, name: str | None = None, args: Any = None
) -> Any:
    fragment: dict[str, Any] = {"function": {}}
    if index is not None:
        fragment["index"] = index
    if id is not None:
        fragment["id"] = id
        fragment["type"] = "function"
    if name is not None:
        fragment["function"]["name"] = name
    if args is not None:
        fragment["function"]["arguments"] = args
    return fragment
