"""The floor for ``bench/load.py``: a bare litestar SSE broadcaster, no database, no reducer.

It answers the few routes the load clients use with the same shapes turnlog gives, and does
the same work in between: a send starts a generation paced like the demo provider (token i
at start + i / tokens_per_second, an absolute schedule), each token is encoded once as an
SSE frame and broadcast to every subscriber of the message; a late subscriber gets an
``init`` with the text so far, then every later frame. Everything lives in memory.

Run: ``python bench/baseline_server.py PORT`` (uvicorn with the settings ``turnlog serve``
uses: one process, the default event loop and HTTP implementation, no access log).
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import uvicorn
from litestar import Litestar, Request, Response, get, post
from litestar.response import Stream

_json = msgspec.json.Encoder()
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# Heartbeats like turnlog's (`: ping` after this many idle seconds), only when asked for
# (bench/idle.py): load.py's baseline waits without a timeout, as it always did.
HEARTBEAT_S = float(os.environ.get("BASELINE_HEARTBEAT_S", "0")) or None
PING = b": ping\n\n"


class _Stream:
    """One generating message: its frames (frame of seq s at index s - 1) and its text."""

    __slots__ = ("cid", "done", "frames", "mid", "text", "wakeup")

    def __init__(self, cid: str, mid: str) -> None:
        self.cid = cid
        self.mid = mid
        self.frames: list[bytes] = []
        self.text: list[str] = []
        self.done = False
        self.wakeup = asyncio.Event()

    def publish(self, name: bytes, data: bytes) -> None:
        seq = len(self.frames) + 1
        self.frames.append(b"event: %b\nid: %d\ndata: %b\n\n" % (name, seq, data))
        wakeup, self.wakeup = self.wakeup, asyncio.Event()
        wakeup.set()


CONVERSATIONS: dict[str, dict[str, Any]] = {}
STREAMS: dict[str, _Stream] = {}
TASKS: set[asyncio.Task[None]] = set()


def _json_response(value: Any, status: int = 200) -> Response[bytes]:
    return Response(_json.encode(value), status_code=status, media_type="application/json")


def _message(s: _Stream) -> dict[str, Any]:
    status = "completed" if s.done else "generating"
    text = "".join(s.text)
    return {
        "id": s.mid,
        "conversation_id": s.cid,
        "role": "assistant",
        "status": status,
        "blocks": [{"type": "text", "text": text}] if text else [],
    }


async def _generate(s: _Stream, tps: float, length: int) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(length):
        await asyncio.sleep(max(0.0, start + i / tps - loop.time()))
        word = f"w{i % 97}" + (" " if i < length - 1 else "")
        s.text.append(word)
        s.publish(b"text_delta", _json.encode({"type": "text_delta", "text": word}))
    s.done = True
    s.publish(b"done", b'{"type":"done","status":"completed","finish_reason":"stop"}')


@post("/v1/conversations", status_code=201)
async def create(request: Request[Any, Any, Any]) -> Response[bytes]:
    body = msgspec.json.decode(await request.body())
    cid = str(uuid.uuid4())
    CONVERSATIONS[cid] = {"options": body.get("options") or {}, "busy": None}
    return _json_response({"id": cid}, 201)


@post("/v1/conversations/{cid:str}/messages", status_code=201)
async def send(request: Request[Any, Any, Any], cid: str) -> Response[bytes]:
    msgspec.json.decode(await request.body())
    conv = CONVERSATIONS[cid]
    busy: _Stream | None = conv["busy"]
    if busy is not None and not busy.done:
        return _json_response({"detail": "busy"}, 409)
    opts = conv["options"]
    mid = str(uuid.uuid4())
    s = STREAMS[mid] = conv["busy"] = _Stream(cid, mid)
    task = asyncio.create_task(
        _generate(s, float(opts.get("tokens_per_second", 40)), int(opts.get("length", 60)))
    )
    TASKS.add(task)
    task.add_done_callback(TASKS.discard)
    user = {"id": str(uuid.uuid4()), "conversation_id": cid, "role": "user"}
    return _json_response({"user_message": user, "assistant_message": _message(s)}, 201)


@get("/v1/conversations/{cid:str}/messages")
async def messages(cid: str) -> Response[bytes]:
    busy: _Stream | None = CONVERSATIONS[cid]["busy"]
    return _json_response({"items": [] if busy is None else [_message(busy)]})


@get("/v1/messages/{mid:str}/stream")
async def stream(mid: str) -> Stream:
    return Stream(_frames(STREAMS[mid]), media_type="text/event-stream", headers=SSE_HEADERS)


async def _frames(s: _Stream) -> AsyncIterator[bytes]:
    k = len(s.frames) - (1 if s.done else 0)
    text = "".join(s.text[:k])
    init = {
        "message_id": s.mid,
        "seq": k,
        "status": "generating",
        "blocks": [{"type": "text", "text": text}] if text else [],
    }
    yield b"event: init\nid: %d\ndata: %b\n\n" % (k, _json.encode(init))
    sent = k
    while True:
        while sent < len(s.frames):
            sent += 1
            yield s.frames[sent - 1]
        if s.done and sent == len(s.frames):
            return
        if HEARTBEAT_S is None:
            await s.wakeup.wait()
            continue
        try:
            await asyncio.wait_for(s.wakeup.wait(), HEARTBEAT_S)
        except TimeoutError:
            yield PING


@get("/v1/conversations/{cid:str}/live")
async def live(cid: str) -> Stream:
    """A conversation's feed as a browser tab holds it: a snapshot, then (idle) heartbeats."""
    return Stream(_live_frames(cid), media_type="text/event-stream", headers=SSE_HEADERS)


async def _live_frames(cid: str) -> AsyncIterator[bytes]:
    conv = CONVERSATIONS[cid]
    busy: _Stream | None = conv["busy"]
    snapshot = {"conversation": {"id": cid}, "messages": [] if busy is None else [_message(busy)]}
    yield b"event: snapshot\nid: 0\ndata: %b\n\n" % _json.encode(snapshot)
    while True:
        await asyncio.sleep(HEARTBEAT_S or 15.0)
        yield PING


app = Litestar(
    route_handlers=[create, send, messages, stream, live], logging_config=None, debug=False
)


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
    )
