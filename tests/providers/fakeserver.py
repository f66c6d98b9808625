"""A scripted HTTP server on loopback that plays a model provider's API to its real SDK.

It speaks plain HTTP/1.1 over a real socket (an asyncio server in a daemon thread), so the
SDK's own HTTP client, SSE parser and error handling run unchanged; nothing is patched.
Each request takes the next scripted ``Reply`` (or asks ``handler``); every request and
every client disconnect mid-response is recorded::

    with FakeServer() as srv:
        srv.script(Reply.sse([chunk1, chunk2], done="[DONE]"), Reply.json(429, {...}))
        client = SDK(base_url=srv.url + "/v1")
        ...
        srv.requests[0].json      # what the SDK sent
        srv.wait_for_disconnects(1)

A streamed reply is a list of parts: ``bytes`` written as they come, ``Pause(s)`` between
them, ``Hang()`` to stall until the client goes away. Every response closes its connection
(``Connection: close``), so one request is one connection and a disconnect is unambiguous.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Pause:
    """Wait this long before the next part."""

    seconds: float


@dataclass(frozen=True)
class Hang:
    """Send nothing more, until the client disconnects."""


Part = bytes | Pause | Hang


@dataclass
class Reply:
    """One scripted response."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    parts: list[Part] = field(default_factory=list)
    # Send the whole body with a Content-Length (a plain JSON answer) instead of streaming.
    whole: bool = False

    @classmethod
    def json(cls, status: int, body: Any, headers: Mapping[str, str] | None = None) -> Reply:
        return cls(
            status,
            {"Content-Type": "application/json", **(headers or {})},
            [json.dumps(body).encode()],
            whole=True,
        )

    @classmethod
    def sse(
        cls,
        events: Iterable[Any | Part],
        *,
        done: str | None = None,
        event_names: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """A ``text/event-stream`` of ``data: <json>`` frames; ``Pause``/``Hang`` pass
        through. ``event_names``: each event is ``(name, body)`` and gets an ``event:`` line
        (Anthropic's format). ``done``: a last ``data:`` line (OpenAI's ``[DONE]``)."""
        parts: list[Part] = []
        for item in events:
            if isinstance(item, Pause | Hang | bytes):
                parts.append(item)
            elif event_names:
                name, body = item
                parts.append(f"event: {name}\ndata: {json.dumps(body)}\n\n".encode())
            else:
                parts.append(f"data: {json.dumps(item)}\n\n".encode())
        if done is not None:
            parts.append(f"data: {done}\n\n".encode())
        return cls(200, {"Content-Type": "text/event-stream", **(headers or {})}, parts)


@dataclass(frozen=True)
class Recorded:
    """A request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    at: float  # time.monotonic() when it arrived

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class FakeServer:
    """See the module docstring. ``handler``, if set, answers requests the script does not."""

    def __init__(self, handler: Callable[[Recorded], Reply] | None = None) -> None:
        self.handler = handler
        self.requests: list[Recorded] = []
        self.disconnects: list[Recorded] = []  # requests whose client left mid-response
        self.completed: list[Recorded] = []  # requests whose response was sent in full
        self._script: list[Reply] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> FakeServer:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        fut.result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- scripting and waiting -------------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next requests, in order."""
        with self._lock:
            self._script.extend(replies)

    def wait_for(self, probe: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not probe():
            if time.monotonic() > deadline:
                raise AssertionError(f"fake server: timed out waiting for {what or probe}")
            time.sleep(0.02)

    def wait_for_disconnects(self, n: int, timeout: float = 30.0) -> None:
        self.wait_for(lambda: len(self.disconnects) >= n, timeout, f"{n} disconnects")

    # -- the server ------------------------------------------------------------------------

    def _next_reply(self, request: Recorded) -> Reply:
        with self._lock:
            if self._script:
                return self._script.pop(0)
        if self.handler is not None:
            return self.handler(request)
        return Reply.json(500, {"error": {"message": "fake server: nothing scripted"}})

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await _read_request(reader)
            if request is None:
                return
            self.requests.append(request)
            reply = self._next_reply(request)
            if await _send(reply, reader, writer):
                self.completed.append(request)
            else:
                self.disconnects.append(request)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> Recorded | None:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    return Recorded(method, path, headers, body, time.monotonic())


async def _send(reply: Reply, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Write ``reply``; False if the client went away before it was all sent."""
    reason = {200: "OK", 429: "Too Many Requests", 500: "Internal Server Error"}.get(
        reply.status, "Status"
    )
    headers = {"Connection": "close", **reply.headers}
    body = b"".join(p for p in reply.parts if isinstance(p, bytes))
    if reply.whole:
        headers["Content-Length"] = str(len(body))
    head = f"HTTP/1.1 {reply.status} {reason}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    writer.write(head.encode("latin-1"))
    # The client sends nothing more on this connection: end of input means it hung up.
    gone = asyncio.ensure_future(reader.read(1))
    parts = [body] if reply.whole else reply.parts
    try:
        for part in parts:
            if isinstance(part, Pause):
                await asyncio.wait([gone], timeout=part.seconds)
            elif isinstance(part, Hang):
                await gone
            else:
                writer.write(part)
                await writer.drain()
            if gone.done():
                return False
        return True
    except ConnectionError:
        return False
    finally:
        gone.cancel()
