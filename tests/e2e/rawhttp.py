"""HTTP/1.1 over a raw socket: requests made of exactly the bytes a test chooses.

httpx (rightly) refuses to send a header value with a 0xFF byte or a path with a lone
percent sign; a hostile client does not ask. ``request`` writes the bytes as given (plus
``Connection: close``), and reads the answer's status, headers and body (stopping after the
head of an event stream, which would not end by itself).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""
    seconds: float = 0.0

    @property
    def content_type(self) -> bytes:
        return self.headers.get(b"content-type", b"")


def request(
    port: int,
    method: bytes,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
    body: bytes | None = None,
    *,
    timeout: float = 15.0,
) -> Answer:
    """Send one request to 127.0.0.1:``port`` and read its answer (``timeout`` in all)."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
    lines += [name + b": " + value for name, value in headers]
    if body is not None:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    lines.append(b"Connection: close")
    raw = b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # The server may answer (413, say) and close before reading a long body whole:
        # its answer is still there to read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(raw)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)  # ConnectionResetError propagates: no answer
            if not chunk:
                raise AssertionError(f"connection closed before an answer head: {buf!r}")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        status_line, *header_lines = head.split(b"\r\n")
        answer = Answer(int(status_line.split(b" ", 2)[1]))
        answer.seconds = time.monotonic() - started
        for line in header_lines:
            name, _, value = line.partition(b":")
            answer.headers[name.strip().lower()] = value.strip()
        if answer.content_type.startswith(b"text/event-stream"):
            return answer  # a stream: its head is the answer
        if method == b"HEAD" or answer.status in (204, 304):
            return answer
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            rest += chunk
    answer.body = _dechunk(rest) if answer.headers.get(b"transfer-encoding") == b"chunked" else rest
    return answer


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out
