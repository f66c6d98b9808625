"""uvicorn's HTTP protocol with a deadline for the request head.

uvicorn closes a keep-alive connection idle between requests, but a connection that sends
nothing, or only part of a request line and headers, is kept open for as long as the client
likes: a few thousand of them hold a few thousand sockets (and file descriptors) for good.
This protocol gives every request head ``head_timeout_s`` seconds from its first byte (or
from the connection's opening) to be complete; then it answers 408 and closes the
connection. Request bodies and responses (SSE streams included) are not affected.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: application/json\r\n"
    b"connection: close\r\n"
    b"content-length: 77\r\n"
    b"\r\n"
    b'{"status_code":408,"detail":"the request head did not arrive in time (408)"}\n'
)
assert len(_TIMEOUT_408.split(b"\r\n\r\n", 1)[1]) == 77


class HeadTimeoutProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` whose request heads must arrive within ``head_timeout_s``."""

    head_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_started = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_started = True
        if self._head_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        self._head_started = False
        super().on_headers_complete()

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        # Between requests (no byte of the next head yet) a keep-alive timeout is at work;
        # a connection that never sent anything, or part of a head, is ours to end.
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a response is being written; not a head we wait for
        if self._head_started:
            self.transport.write(_TIMEOUT_408)
        self.transport.close()


def with_head_timeout(seconds: float) -> type[HeadTimeoutProtocol]:
    """The protocol class to hand uvicorn (``Config(http=...)``) for this deadline."""
    return type("HeadTimeoutProtocol", (HeadTimeoutProtocol,), {"head_timeout_s": seconds})
