"""The relay: the live streams one instance follows on another, batched on one connection.

General layout::

    Relays                    the owner's sessions, by the id their follower chose
      RelaySession            one follower instance: the streams it follows here (a tap on
                              each LiveStream), written as one byte stream in batches
    RecordReader              the follower's side of that byte stream: records, in order

A subscriber on instance B of a message generating on A reads B's mirror of A's stream
(turnlog.follow). B's mirrors of A's streams all arrive on ONE response from A
(``GET /internal/v1/relay/{session}``): each followed message is added to the session by a
small request that answers the snapshot the frames start after, and from then on every
frame A appends to that stream is appended to the session's buffer, synchronously (a tap,
streams.py), and written with whatever else came within ``BATCH_S``. So a frame crosses
instances for a few bytes in a shared write and read, not one HTTP chunk, one socket read
and one parse of its own (docs/performance.md, "Workers").

The wire format is binary records, each ``HEADER`` (message id, seq, frame length) then the
SSE frame exactly as A made it (B's subscribers get those bytes unchanged):

* ``seq >= 1``: the frame of that seq;
* ``seq == 0``, no frame: the stream ended here without ``done`` (handed over to another
  process): B drops its mirror and its readers reconnect;
* an all-zero message id: a ping (the session is idle), so that B notices a dead owner.

A session is over when its response is: the follower closed it, a write failed, or the
follower stopped reading and ``MAX_BUFFER`` bytes piled up. Its taps are removed then; the
follower reconnects each mirror (turnlog.follow).
"""

from __future__ import annotations

import asyncio
import struct
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Final

import msgspec
import structlog
from turnlog_reducer import encode_blocks

from turnlog.streams import GENERATING, LiveStream, Tap

log = structlog.get_logger("turnlog.relay")

__all__ = [
    "BATCH_S",
    "HEADER",
    "MAX_BUFFER",
    "RecordReader",
    "RelaySession",
    "Relays",
    "Snapshot",
    "frame_data",
]

# Message id (16 bytes), seq, frame length.
HEADER: Final = struct.Struct("!16sQI")
# How long a session gathers frames before it writes them: the latency a cross-instance
# subscriber pays for sharing one write (and one read on the follower) with every other
# frame of the moment.
BATCH_S: Final = 0.005
# A follower that stops reading is cut off once this much is waiting for it.
MAX_BUFFER: Final = 16 * 1024 * 1024
_PING: Final = HEADER.pack(bytes(16), 0, 0)
_NO_ID: Final = bytes(16)


class Snapshot(msgspec.Struct, frozen=True):
    """What a follow request answers: the stream's state the relayed frames start after
    (``recovering``: the stream continues a row whose process died)."""

    seq: int
    status: str
    blocks: msgspec.Raw
    recovering: int | None = None


class RelaySession:
    """The streams one follower follows on this instance, and the bytes waiting for it."""

    def __init__(self, session_id: uuid.UUID, *, max_buffer: int = MAX_BUFFER) -> None:
        self.session_id = session_id
        self._buffer = bytearray()
        self._max_buffer = max_buffer
        self._taps: dict[uuid.UUID, tuple[LiveStream, Tap]] = {}
        self._wakeup: asyncio.Future[None] | None = None
        self.closed = False

    def __len__(self) -> int:
        return len(self._taps)

    def follow(self, stream: LiveStream) -> bytes:
        """Add ``stream``: its frames from now on go to the follower. The snapshot they
        start after (``Snapshot``, JSON). Raises ``StreamFinished`` if the stream was
        handed over, and ``LookupError`` if the session is closed."""
        if self.closed:
            raise LookupError(f"relay session {self.session_id} is closed")
        mid = stream.message_id
        previous = self._taps.pop(mid, None)
        if previous is not None:
            previous[0].untap(previous[1])
        tap = partial(self._on_frame, mid, mid.bytes)
        seq, blocks = stream.tap(tap)
        if not stream.finished:
            self._taps[mid] = (stream, tap)
        status = GENERATING  # the mirror's status until the done frame comes
        return msgspec.json.encode(
            Snapshot(seq, status, msgspec.Raw(encode_blocks(blocks)), stream.recovering)
        )

    def unfollow(self, mid: uuid.UUID) -> None:
        """Stop sending ``mid``'s frames (the follower dropped its mirror)."""
        entry = self._taps.pop(mid, None)
        if entry is not None:
            entry[0].untap(entry[1])

    def close(self) -> None:
        """End the session: no more frames are taken; its response ends after the frames
        already taken."""
        if self.closed:
            return
        self.closed = True
        taps, self._taps = self._taps, {}
        for stream, tap in taps.values():
            stream.untap(tap)
        self._wake()

    def _on_frame(self, mid: uuid.UUID, key: bytes, seq: int, frame: bytes) -> None:
        # Called by LiveStream.publish for every frame: keep it to two appends (``key``
        # is ``mid.bytes``, bound once per tap).
        if seq < 0:
            entry = self._taps.pop(mid, None)
            if entry is not None and entry[0].abandoned:
                self._buffer += HEADER.pack(key, 0, 0)
                self._wake()
            return
        buffer = self._buffer
        buffer += HEADER.pack(key, seq, len(frame))
        buffer += frame
        if self._wakeup is not None:
            self._wake()
        if len(buffer) > self._max_buffer and not self.closed:
            log.warning("relay follower stopped reading", session=str(self.session_id))
            buffer.clear()  # it gets nothing more: its mirrors follow again
            # Not from inside the stream's tap loop: a tap must not untap while it runs.
            asyncio.get_running_loop().call_soon(self.close)

    def _wake(self) -> None:
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def body(self, heartbeat_s: float) -> AsyncIterator[bytes]:
        """The session's response: batches of records, a ping after ``heartbeat_s`` idle
        seconds; ends, after what is buffered, once the session is closed (and closes it
        when the response ends)."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._buffer:
                    if self.closed:
                        return
                    wakeup = self._wakeup = loop.create_future()
                    timer = loop.call_later(heartbeat_s, self._wake)
                    try:
                        await wakeup
                    finally:
                        timer.cancel()
                    if not self._buffer:
                        if not self.closed:
                            yield _PING
                        continue
                    if not self.closed:
                        # Let the frames of the next few milliseconds join this write.
                        await asyncio.sleep(BATCH_S)
                batch = bytes(self._buffer)
                self._buffer.clear()
                yield batch
        finally:
            self.close()


class Relays:
    """This instance's relay sessions (the owner's side), by session id."""

    def __init__(self) -> None:
        self._sessions: dict[uuid.UUID, RelaySession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, session_id: uuid.UUID) -> RelaySession:
        """A new session under the follower's id; a session already open under it is
        closed first (its follower reconnected)."""
        old = self._sessions.pop(session_id, None)
        if old is not None:
            old.close()
        session = self._sessions[session_id] = RelaySession(session_id)
        return session

    def get(self, session_id: uuid.UUID) -> RelaySession | None:
        session = self._sessions.get(session_id)
        return None if session is None or session.closed else session

    async def serve(self, session: RelaySession, heartbeat_s: float) -> AsyncIterator[bytes]:
        """``session``'s response body; the session is forgotten when it ends."""
        try:
            async for batch in session.body(heartbeat_s):
                yield batch
        finally:
            if self._sessions.get(session.session_id) is session:
                del self._sessions[session.session_id]

    def streams(self) -> int:
        """Streams relayed to other instances, over every session (for metrics)."""
        return sum(len(session) for session in self._sessions.values())

    def close_all(self) -> None:
        for session in list(self._sessions.values()):
            session.close()
        self._sessions.clear()


class RecordReader:
    """The follower's side: records out of the bytes of a session's response."""

    def __init__(self) -> None:
        self._rest = b""  # the start of a record the next chunk completes

    def feed(self, chunk: bytes) -> list[tuple[bytes, int, bytes]]:
        """The records ``chunk`` completes, in order, as (message id bytes, seq, frame);
        pings are skipped. Each frame is one slice of the bytes received (one copy)."""
        data = self._rest + chunk if self._rest else chunk
        size = HEADER.size
        unpack = HEADER.unpack_from
        end = len(data)
        pos = 0
        records = []
        while end - pos >= size:
            mid, seq, length = unpack(data, pos)
            stop = pos + size + length
            if stop > end:
                break
            if mid != _NO_ID:
                records.append((mid, seq, data[pos + size : stop]))
            pos = stop
        self._rest = data[pos:]
        return records


def frame_data(frame: bytes) -> bytes:
    """The JSON of an SSE frame made by streams.sse_frame (its one ``data:`` line)."""
    return frame[frame.index(b"\ndata: ") + 7 : -2]
