"""Server-sent events from raw response bytes, for the SDK-backed adapters.

The official SDKs make a model object per streamed chunk (pydantic, plus a JSON parse and,
for google-genai, a second dump and parse), which cost 5-30x what the bytes themselves
take to read. The adapters keep each SDK for the request, authentication, base URLs and
error types, take the raw response it opened, and read it here: a line split that knows
the SSE framing (``event:``, ``data:``, a blank line ends a frame; ``\\r\\n`` and ``\\n``;
comments and ``id:``/``retry:`` ignored), then one ``msgspec`` decode per frame into a
Struct holding exactly the fields the adapter reads.

``Skipper`` is the one rule for a frame that is JSON but not the shape the Structs expect
(a field of another type, an unknown event or block type): it is logged once per step and
skipped; it never fails the turn.
"""

from __future__ import annotations

from typing import Any

import structlog

__all__ = ["SSEDecoder", "Skipper"]


class SSEDecoder:
    """Feed it the body's byte chunks; it returns the complete frames as ``(event, data)``
    (``event`` ``""`` when the frame named none; ``data`` the ``data:`` lines joined by
    ``\\n``). A frame without data is not returned. ``flush()`` ends the body: a last frame
    the server did not end with a blank line still counts, as the SDKs count it."""

    __slots__ = ("_data", "_event", "_rest", "other")

    def __init__(self, *, keep_other: bool = False) -> None:
        self._rest = b""
        self._event = ""
        self._data: list[bytes] = []
        # Lines that are no SSE field (google-genai reads an error sent as bare JSON lines
        # this way), kept only when asked for.
        self.other: list[bytes] | None = [] if keep_other else None

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        if self._rest:
            chunk = self._rest + chunk
        lines = chunk.split(b"\n")
        self._rest = lines.pop()  # an unfinished line waits for the next chunk
        out: list[tuple[str, bytes]] = []
        data = self._data
        for line in lines:
            if line[:5] == b"data:":
                # The common case first: one data line, then a blank one.
                value = line[6:] if line[5:6] == b" " else line[5:]
                data.append(value[:-1] if value[-1:] == b"\r" else value)
            elif line == b"" or line == b"\r":
                if data:
                    out.append((self._event, data[0] if len(data) == 1 else b"\n".join(data)))
                    data.clear()
                self._event = ""
            elif line[:6] == b"event:":
                value = line[6:].strip()
                self._event = value.decode("utf-8", "replace")
            elif (
                self.other is not None
                and line.strip()
                and line[:1] != b":"
                and line[:3] != b"id:"
                and line[:6] != b"retry:"
            ):
                self.other.append(line)
        return out

    def flush(self) -> list[tuple[str, bytes]]:
        out = self.feed(b"\n\n") if self._rest or self._data else []
        self._rest = b""
        return out


class Skipper:
    """Logs the first frame of a step the Structs did not expect, then only counts them."""

    __slots__ = ("_log", "_provider", "skipped")

    def __init__(self, log: Any, provider: str) -> None:
        self._log: structlog.stdlib.BoundLogger = log
        self._provider = provider
        self.skipped = 0

    def skip(self, data: bytes, error: Exception) -> None:
        self.skipped += 1
        if self.skipped == 1:
            self._log.warning(
                f"{self._provider} stream chunk of an unexpected shape skipped",
                error=str(error),
                chunk=data[:500].decode("utf-8", "replace"),
            )
