"""Gemini ``streamGenerateContent?alt=sse`` transcripts, shaped like the API's.

Each SSE event is one ``data:`` line holding a ``GenerateContentResponse`` in the REST
(camelCase) JSON: ``candidates[0].content.parts``, ``finishReason`` on the last chunk and
``usageMetadata`` (running totals) on every chunk; ``thoughtSignature`` is base64.
"""

from __future__ import annotations

import base64
from typing import Any

from .fakeserver import Chunk, Reply, json_reply, sse

MODEL = "gemini-2.5-flash"
PATH = rf"/v1(beta)?/models/{MODEL}:streamGenerateContent"  # a pattern


def sig(text: str) -> str:
    """A thought signature as the API sends it: opaque bytes, base64."""
    return base64.b64encode(text.encode()).decode()


def text(t: str, *, thought: bool = False, signature: str | None = None) -> dict[str, Any]:
    part: dict[str, Any] = {"text": t}
    if thought:
        part["thought"] = True
    if signature is not None:
        part["thoughtSignature"] = signature
    return part


def call(name: str, args: dict[str, Any], *, signature: str | None = None) -> dict[str, Any]:
    part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
    if signature is not None:
        part["thoughtSignature"] = signature
    return part


def chunk(
    *parts: dict[str, Any],
    finish: str | None = None,
    prompt: int = 12,
    out: int = 4,
    thoughts: int | None = None,
    cached: int | None = None,
) -> bytes:
    candidate: dict[str, Any] = {"content": {"parts": list(parts), "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    usage: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": out,
        "totalTokenCount": prompt + out + (thoughts or 0),
    }
    if thoughts is not None:
        usage["thoughtsTokenCount"] = thoughts
    if cached is not None:
        usage["cachedContentTokenCount"] = cached
    return sse(
        None,
        {
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": MODEL,
            "responseId": "mLZ4aJ3xKpLz7M8Pl9u5uQg",
        },
    )


def reply(*chunks: Chunk) -> Reply:
    return Reply(body=list(chunks))


def error_chunk(code: int, status: str, message: str) -> bytes:
    return sse(None, {"error": {"code": code, "message": message, "status": status}})


def http_error(
    code: int, status: str, message: str, headers: dict[str, str] | None = None, retry: str = ""
) -> Reply:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if retry:
        error["details"] = [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry}
        ]
    return json_reply(code, {"error": error}, headers)
