"""A fake model API on loopback: a real HTTP/1.1 server that replays scripted replies.

Generic on purpose (any provider, any SDK): the tests give it ``Reply`` objects (a status,
headers and a body of byte chunks with ``Pause`` and ``Hold`` steps between them), either
queued in order or made by a function of the request, and read back what the SDK sent
(``requests``: method, path, query, headers, JSON body) and whether the client hung up
while a reply was still streaming (``Recorded.disconnected``).

It runs in a thread of the test process (``with FakeServer() as fake: fake.url``), so it
serves an SDK in the test itself and a ``turnlog serve`` subprocess alike.

    fake.queue(Reply(429, headers={"retry-after": "1"}, body=[b'{"error": ...}']))
    fake.queue(Reply(200, headers=SSE, body=[sse("message_start", {...}), Pause(0.1), ...]))
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

SSE_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache"}
JSON_HEADERS = {"content-type": "application/json"}


@dataclass(frozen=True)
class Pause:
    """Wait this long before the next chunk (the body so far is flushed)."""

    seconds: float


@dataclass(frozen=True)
class Hold:
    """Send nothing more until the client disconnects (or ``seconds`` pass): a stall."""

    seconds: float = 60.0


Chunk = bytes | Pause | Hold


@dataclass
class Reply:
    """One scripted answer: status, headers and the body's chunks, sent chunk by chunk."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: dict(SSE_HEADERS))
    body: Sequence[Chunk] = ()


@dataclass
class Recorded:
    """One request the server received, and what happened to its reply."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    disconnected: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    at: float = field(default_factory=time.monotonic)  # when it arrived

    def json(self) -> Any:
        return json.loads(self.body)


def sse(event: str | None, data: Any) -> bytes:
    """One SSE frame: ``event: NAME`` (if named) and one ``data:`` line of JSON."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def json_reply(status: int, body: Any, headers: dict[str, str] | None = None) -> Reply:
    """A plain JSON answer (an HTTP error, say)."""
    return Reply(status, {**JSON_HEADERS, **(headers or {})}, [json.dumps(body).encode()])


class FakeServer:
    """The server; see the module docstring. ``handler(recorded) -> Reply`` answers when
    the queue is empty (default: 500)."""

    def __init__(self, handler: Callable[[Recorded], Reply] | None = None) -> None:
        self.handler = handler
        self.requests: list[Recorded] = []
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def queue(self, *replies: Reply) -> None:
        with self._lock:
            self._queue.extend(replies)

    def clear(self) -> None:
        """Drop the replies still queued (a test that failed midway left them)."""
        with self._lock:
            self._queue.clear()

    def wait_requests(self, n: int, timeout: float = 30.0) -> list[Recorded]:
        """Wait until ``n`` requests have arrived; the requests so far."""
        deadline = time.monotonic() + timeout
        while len(self.requests) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {n} requests, got {len(self.requests)}")
            time.sleep(0.01)
        return list(self.requests)

    def _next_reply(self, recorded: Recorded) -> Reply:
        with self._lock:
            self.requests.append(recorded)
            if self._queue:
                return self._queue.popleft()
        if self.handler is not None:
            return self.handler(recorded)
        return json_reply(500, {"error": "the fake server has no reply queued"})

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the client closed its end (readable, and a peek reads end-of-file)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _make_handler(server: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the tests read `requests`

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            recorded = Recorded(
                method=self.command,
                path=parts.path,
                query=parse_qs(parts.query),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
            )
            reply = server._next_reply(recorded)
            try:
                self._send(reply, recorded)
            except OSError:  # BrokenPipe, ConnectionReset: the client hung up
                recorded.disconnected.set()
                self.close_connection = True
            finally:
                recorded.finished.set()

        def _send(self, reply: Reply, recorded: Recorded) -> None:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            for chunk in reply.body:
                if isinstance(chunk, bytes):
                    if chunk:
                        self.wfile.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                    continue
                if self._wait(chunk.seconds):
                    recorded.disconnected.set()
                    self.close_connection = True
                    return
                if isinstance(chunk, Hold):
                    break  # held long enough: end the reply
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def _wait(self, seconds: float) -> bool:
            """Wait ``seconds``; True as soon as the client hangs up."""
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    if _peer_closed(self.connection):
                        return True
                time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
            return False

    return Handler


@contextlib.contextmanager
def running(handler: Callable[[Recorded], Reply] | None = None) -> Iterator[FakeServer]:
    """``with running() as fake:`` a started server, shut down afterwards."""
    with FakeServer(handler) as fake:
        yield fake
