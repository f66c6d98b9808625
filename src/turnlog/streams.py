"""The in-memory stream registry: one live stream per generating assistant message.

General layout::

    StreamRegistry            message id -> LiveStream; drops finished streams after a linger
      LiveStream              folded blocks + seq + a ring of SSE frames, each encoded once
        Subscription          one reader's cursor into that ring; yields SSE frames (bytes)

Why it is shaped this way (500 subscribers on one stream cost no more per event than one):

* ``publish`` folds the event with the shared reducer, numbers it, encodes its SSE frame
  exactly once and stores it in a ring indexed by seq. It then sets one broadcast event.
  It never awaits and never touches a subscriber: its cost does not depend on how many
  subscribers there are (beyond the event loop waking the ones that wait).
* A subscription is only a cursor (the last seq it handed out) into that shared ring. The
  stream keeps no list of subscribers, so a subscriber that stops reading holds no buffer of
  its own and cannot slow anyone down. When it reads again and its cursor has fallen out of
  the ring, it gets a fresh ``init`` at the current seq (resynchronised) and carries on.
* ``subscribe`` reads the blocks and their seq and places the cursor in one synchronous call.
  asyncio runs one task at a time and nothing in between awaits, so no ``publish`` can slip
  between the snapshot and the cursor: no delta is duplicated or missed, and no lock is
  needed.
* A subscriber always gets a snapshot and the suffix after it at one offset, never a suffix
  alone (docs/protocol.md, "Reconnecting"); ``Last-Event-ID`` therefore only
  tells us the client reconnects — it is answered with init at the current seq.

Numbering: the first event after the stored checkpoint ``seq`` gets ``seq + 1``. ``finish``
publishes the ``done`` event under the next seq D; the blocks are final at D - 1, so a
subscriber to a finished stream gets ``init`` at D - 1 with the final status, then ``done``.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Final
from uuid import UUID

import anyio
import msgspec
from turnlog_reducer import (
    EMPTY,
    Block,
    Blocks,
    Done,
    StreamEvent,
    ToolCallBlock,
    ToolCallReady,
    apply_stream_event,
    encode_blocks,
    encode_event,
)

from turnlog import aio
from turnlog.log.projection import MessageRecord

__all__ = [
    "PING",
    "LiveStream",
    "StreamAlreadyOpen",
    "StreamError",
    "StreamFinished",
    "StreamRegistry",
    "Subscription",
    "Tap",
    "closing_events",
    "done_for",
    "event_frame",
    "init_frame",
    "interrupt_events",
    "recovering_frame",
]

GENERATING: Final = "generating"
# A stream's tap: called with (seq, frame) for every frame appended, then (-1, b"") at the end.
Tap = Callable[[int, bytes], None]
# An SSE comment: keeps an idle connection (and every proxy on its way) open.
PING: Final = b": ping\n\n"


class StreamError(Exception):
    """Base of the registry's errors.

    StreamError
      ├── StreamAlreadyOpen   open() for a message whose stream is still live
      └── StreamFinished      publish()/finish() on a stream that already finished
    """


class StreamAlreadyOpen(StreamError):
    """A live, unfinished stream already exists for this message."""


class StreamFinished(StreamError):
    """The stream already published its ``done`` event; nothing may follow it."""


# --------------------------------------------------------------------------- SSE frames

_EVENT_NAMES: dict[type, bytes] = {}


def _event_name(event: StreamEvent) -> bytes:
    """The SSE event name of ``event``: its msgspec tag (``text_delta``, …, ``done``)."""
    cls = type(event)
    name = _EVENT_NAMES.get(cls)
    if name is None:
        tag = cls.__struct_config__.tag
        if not isinstance(tag, str):  # pragma: no cover - the reducer tags every event
            raise TypeError(f"{cls.__name__} has no string tag")
        name = _EVENT_NAMES[cls] = tag.encode()
    return name


def sse_frame(name: bytes, frame_id: int, data: bytes) -> bytes:
    """One SSE event: ``event: <name>``, ``id: <frame_id>``, ``data: <data>`` (one line)."""
    return b"event: %b\nid: %d\ndata: %b\n\n" % (name, frame_id, data)


def event_frame(seq: int, event: StreamEvent) -> bytes:
    """The SSE frame of one stream event: ``event: <type>``, ``id: <seq>``, its JSON."""
    return sse_frame(_event_name(event), seq, encode_event(event))


def init_frame(message_id: UUID, seq: int, status: str, blocks: Sequence[Block]) -> bytes:
    """The SSE ``init`` frame: the blocks after the first ``seq`` events, and the status.

    Public so that the HTTP layer answers a stored (finished or repaired) row the same way.
    """
    data = b'{"message_id":"%b","seq":%d,"status":%b,"blocks":%b}' % (
        str(message_id).encode(),
        seq,
        msgspec.json.encode(status),
        encode_blocks(blocks),
    )
    return sse_frame(b"init", seq, data)


# --------------------------------------------------------------------------- the stream


def recovering_frame(attempt: int) -> bytes:
    """The ``recovering`` frame that follows the ``init`` of a continued generation."""
    return b'event: recovering\ndata: {"attempt":%d}\n\n' % attempt


def done_for(row: MessageRecord | None) -> Done:
    """The ``done`` event for a row that is no longer generating (None: the row could not
    be read; it reads interrupted once repaired)."""
    if row is None:
        return Done(status="interrupted")
    m = row.message
    status = "interrupted" if m.status == "generating" else m.status
    return Done(status=status, finish_reason=m.finish_reason, usage=m.usage, error=m.error)


def closing_events(blocks: Sequence[Block]) -> tuple[ToolCallReady, ...]:
    """Events that close the unfinished tool calls among ``blocks``, null arguments (pure)."""
    return tuple(
        ToolCallReady(id=b.id, arguments=None)
        for b in blocks
        if isinstance(b, ToolCallBlock) and not b.ready
    )


def interrupt_events(row: MessageRecord) -> tuple[StreamEvent, ...]:
    """Events that close a dead generation's unfinished tool calls (pure)."""
    return closing_events(row.message.blocks)


class LiveStream:
    """The live state of one generating message, and the frames subscribers read."""

    __slots__ = (
        "__weakref__",  # lets tests prove a dropped stream is freed
        "_abandoned",
        "_base",
        "_blocks",
        "_done",
        "_init_cache",
        "_on_finish",
        "_ring",
        "_ring_size",
        "_seq",
        "_subscribers",
        "_taps",
        "_waiters",
        "message_id",
        "recovering",
    )

    def __init__(
        self,
        message_id: UUID,
        *,
        blocks: Sequence[Block] = EMPTY,
        seq: int = 0,
        ring_size: int = 4096,
        on_finish: Callable[[LiveStream], None] | None = None,
        recovering: int | None = None,
    ) -> None:
        if seq < 0:
            raise ValueError(f"seq must be >= 0, got {seq}")
        if ring_size < 1:
            raise ValueError(f"ring_size must be >= 1, got {ring_size}")
        self.message_id: Final = message_id
        self._blocks = blocks if isinstance(blocks, Blocks) else Blocks(blocks)
        self._seq = seq
        # The frame of seq s lives at _ring[(s - _base) % _ring_size]. The list grows up to
        # _ring_size and then wraps, so a short answer costs only the frames it produced.
        self._base = seq + 1
        self._ring: list[bytes] = []
        self._ring_size = ring_size
        self._done: Done | None = None
        self._init_cache: tuple[int, bytes] | None = None
        # The futures of the subscribers waiting for the next frame; publish resolves them
        # all and starts a new list. Plain asyncio futures, one per wait: an anyio Event (or
        # an asyncio one, whose waiters are removed one by one from a deque) costs several
        # times more per frame, and at 500 subscribers that is the server's main cost.
        self._waiters: list[asyncio.Future[bool]] = []
        self._on_finish = on_finish
        self._subscribers = 0
        # Set when this stream continues a generation whose process died (the recovery's
        # number): every init while it generates is followed by a `recovering` frame.
        self.recovering = recovering
        # Set when the generation was handed over to another process (a drain): readers end
        # without `done` and reconnect to wherever it goes on.
        self._abandoned = False
        # Callbacks given every frame as it is appended (turnlog.relay: another instance
        # follows this stream), then (-1, b"") when no frame can follow.
        self._taps: list[Tap] = []

    def __repr__(self) -> str:
        return f"<LiveStream {self.message_id} seq={self._seq} status={self.status}>"

    @property
    def blocks(self) -> Blocks:
        """The blocks folded from the checkpoint and every event published since."""
        return self._blocks

    @property
    def seq(self) -> int:
        """The seq of the last published event (``done`` included); the checkpoint's if none."""
        return self._seq

    @property
    def finished(self) -> bool:
        """Whether ``finish`` has published the ``done`` event (or the stream was abandoned:
        no event follows either way)."""
        return self._done is not None or self._abandoned

    @property
    def status(self) -> str | None:
        """The final status from ``done``; ``None`` while generating."""
        return None if self._done is None else self._done.status

    @property
    def abandoned(self) -> bool:
        """Whether the stream ended without ``done`` (``abandon``)."""
        return self._abandoned

    @property
    def subscriber_count(self) -> int:
        """Subscriptions neither closed nor ended (for metrics)."""
        return self._subscribers

    def publish(self, event: StreamEvent) -> int:
        """Fold ``event``, give it the next seq, encode its frame once, wake subscribers.

        Synchronous: it never awaits and never waits for a subscriber. An event invalid in
        context raises ``StreamProtocolError`` and leaves the stream unchanged. A ``Done``
        is handed to ``finish``. Returns the event's seq.
        """
        return self._publish(event, None)

    def publish_encoded(self, event: StreamEvent, frame: bytes) -> int:
        """``publish``, with the frame already made by the stream this one mirrors (the
        bytes ``publish`` would make for the same event at the same seq: a mirror passes
        its owner's frames on unchanged rather than encode each again)."""
        return self._publish(event, frame)

    def _publish(self, event: StreamEvent, frame: bytes | None) -> int:
        if isinstance(event, Done):
            self._finish(event, frame)
            return self._seq
        if self._done is not None or self._abandoned:
            raise StreamFinished(f"stream of message {self.message_id} already finished")
        blocks = apply_stream_event(self._blocks, event)  # may raise: nothing changed yet
        seq = self._seq + 1
        if frame is None:
            frame = event_frame(seq, event)
        self._append(seq, frame)
        self._blocks = blocks
        self._seq = seq
        if self._taps:
            for tap in self._taps:
                tap(seq, frame)
        self._wake()
        return seq

    def finish(self, done: Done) -> None:
        """Publish the ``done`` event and mark the stream finished; later publishes raise."""
        self._finish(done, None)

    def _finish(self, done: Done, frame: bytes | None) -> None:
        if self._done is not None or self._abandoned:
            raise StreamFinished(f"stream of message {self.message_id} already finished")
        if frame is None and self.recovering is not None:
            done = msgspec.structs.replace(done, recovered=self.recovering)
        seq = self._seq + 1
        if frame is None:
            frame = event_frame(seq, done)
        self._append(seq, frame)
        self._seq = seq
        self._done = done
        for tap in self._taps:
            tap(seq, frame)
        self._end_taps()
        self._wake()
        if self._on_finish is not None:
            self._on_finish(self)

    def tap(self, tap: Tap) -> tuple[int, Blocks]:
        """Hand ``tap`` every frame from now on, synchronously as it is appended, then
        ``(-1, b"")`` once no frame can follow; the seq and blocks it starts after.

        A tap never falls behind (unlike a subscription, it holds no cursor): the caller
        owns the buffering. A finished stream gives the blocks before its ``done`` and
        hands the ``done`` frame over at once; an abandoned one raises ``StreamFinished``.
        A tap runs inside ``publish``: it must not raise, nor tap or untap (defer that).
        """
        if self._abandoned:
            raise StreamFinished(f"stream of message {self.message_id} was handed over")
        if self._done is not None:
            seq = self._seq
            tap(seq, self._ring[(seq - self._base) % self._ring_size])
            tap(-1, b"")
            return seq - 1, self._blocks
        self._taps.append(tap)
        return self._seq, self._blocks

    def untap(self, tap: Tap) -> None:
        """Stop handing frames to ``tap`` (no end call); no-op if it is not tapped."""
        if tap in self._taps:
            self._taps.remove(tap)

    def _end_taps(self) -> None:
        taps, self._taps = self._taps, []
        for tap in taps:
            tap(-1, b"")

    def mark_recovering(self, attempt: int) -> None:
        """This stream continues a row whose process died (a mirror learns it from its
        upstream): later inits carry the ``recovering`` frame, and ``done`` says so."""
        self.recovering = attempt
        self._init_cache = None

    def abandon(self) -> None:
        """End every reader after the frames it has, without ``done``: the generation was
        handed over and goes on elsewhere (a reader's client reconnects and gets a fresh
        ``init`` there). Later publishes raise."""
        if self._done is not None or self._abandoned:
            return
        self._abandoned = True
        self._end_taps()
        self._wake()
        if self._on_finish is not None:
            self._on_finish(self)

    def subscribe(self, after: int | None = None) -> Subscription:
        """A reader starting with ``init`` at the current seq, then every later frame.

        ``after`` is the client's ``Last-Event-ID``. It is accepted and deliberately not used
        to skip the snapshot: the answer is always init at the current K (>= after) plus the
        suffix, never a suffix alone, so a client can rebuild its state from this one answer.
        Any value is accepted (a garbled or future id too): none can change that answer.
        """
        del after  # see above: the answer is the same for every Last-Event-ID
        return Subscription(self)

    async def frames(
        self, heartbeat_s: float, ping: bytes, after: int | None = None
    ) -> AsyncIterator[bytes]:
        """One subscriber's SSE frames (what ``subscribe(after)`` reads), and ``ping`` after
        each ``heartbeat_s`` idle seconds; the subscription is taken at the first frame and
        closed when the iteration ends or is closed (the client went away).

        ``Subscription.next_frame`` in one generator: the HTTP stream reads this, and a
        coroutine layer per frame costs what 500 subscribers multiply (docs/performance.md).
        """
        sub = self.subscribe(after)
        loop = sub._loop = asyncio.get_running_loop()
        try:
            while True:
                frame = sub._poll()
                if frame is not None:
                    # A backlog: yield to the loop once per frame (see Subscription._next).
                    await asyncio.sleep(0)
                    yield frame
                    continue
                sub._deadline = loop.time() + heartbeat_s
                while frame is None:
                    if sub._ended:
                        return
                    # Woken by a publish (a frame, or the end), or idle until the deadline.
                    frame = sub._poll() if await sub._arm(loop, True) else ping
                yield frame
        finally:
            sub.close()

    # -- internals shared with Subscription ---------------------------------------------

    def _append(self, seq: int, frame: bytes) -> None:
        if len(self._ring) < self._ring_size:
            self._ring.append(frame)
        else:
            self._ring[(seq - self._base) % self._ring_size] = frame

    def _wake(self) -> None:
        waiters = self._waiters
        if waiters:
            self._waiters = []
            for waiter in waiters:
                if not waiter.done():  # a cancelled reader's future is done already
                    waiter.set_result(True)

    def _snapshot(self) -> tuple[int, Blocks, bytes]:
        """The current init: (K, blocks after K events, its frame), cached per K.

        Many subscribers join or resynchronise at the same K (a burst of reconnects, a
        broadcast that outran them all): the blocks are encoded once per K, not per reader.
        """
        # Keyed by the last seq, done included: finishing bumps it, so the live init at
        # K and the final init at K (= D - 1, another status) never share a cache entry.
        k = self._seq if self._done is None else self._seq - 1
        cached = self._init_cache
        if cached is None or cached[0] != self._seq:
            status = GENERATING if self._done is None else self._done.status
            frame = init_frame(self.message_id, k, status, self._blocks)
            if self.recovering is not None and self._done is None:
                frame += recovering_frame(self.recovering)
            cached = self._init_cache = (self._seq, frame)
        return k, self._blocks, cached[1]


class Subscription:
    """One reader of a live stream: an async iterator of SSE frames (bytes).

    The first frame is ``init``; then every frame with seq > its K, in order; the iteration
    ends after the ``done`` frame. A reader whose cursor fell out of the ring gets a fresh
    ``init`` at the current seq instead of the frames it missed (and ``init_seq`` /
    ``init_blocks`` then describe that latest init).

    Use it from one task; ``close`` it when the client goes away.
    """

    __slots__ = (
        "_cursor",
        "_deadline",
        "_ended",
        "_init",
        "_loop",
        "_stream",
        "_timer",
        "_waiter",
        "init_blocks",
        "init_seq",
    )

    def __init__(self, stream: LiveStream) -> None:
        # No await between reading the snapshot and placing the cursor: see module doc.
        k, blocks, frame = stream._snapshot()
        self._stream = stream
        self.init_seq = k
        self.init_blocks = blocks
        self._cursor = k  # the last seq this reader was given (its init's K, at first)
        self._init: bytes | None = frame  # pending init frame, sent first
        self._ended = False
        # Waiting (see _arm): the pending future, the idle deadline of next_frame and the
        # one timer that enforces it, armed lazily and re-armed only when it fires early.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[bool] | None = None
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        stream._subscribers += 1

    @property
    def stream(self) -> LiveStream:
        """The stream read."""
        return self._stream

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> bytes:
        """The next frame, waiting for it if none is ready."""
        frame = await self._next()
        assert frame is not None  # no timeout, so never idle
        return frame

    # ASYNC109: a cancel scope around __anext__ cannot tell "idle, send a ping" from "ended";
    # returning None on idle keeps the HTTP layer's heartbeat loop one line.
    async def next_frame(self, timeout: float) -> bytes | None:  # noqa: ASYNC109
        """Like ``__anext__``, but ``None`` after ``timeout`` idle seconds (time to ping)."""
        return await self._next(timeout)

    async def _next(self, timeout: float | None = None) -> bytes | None:  # noqa: ASYNC109
        frame = self._poll()
        if frame is not None:
            # A reader catching up on a backlog would never suspend; yield to the loop once
            # per frame so a client loop that writes without suspending cannot starve it.
            # (asyncio.sleep(0) is a bare yield: anyio's checkpoint costs a cancel-scope
            # check and a get_running_loop, whose getpid() is a system call on 3.11.)
            await asyncio.sleep(0)
            return frame
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        self._deadline = math.inf if timeout is None else loop.time() + timeout
        while True:
            if self._ended:
                raise StopAsyncIteration
            if not await self._arm(loop, timeout is not None):
                return None  # idle until the deadline: time to ping
            frame = self._poll()
            if frame is not None:
                return frame

    def _arm(self, loop: asyncio.AbstractEventLoop, timed: bool) -> asyncio.Future[bool]:
        """The future a wait awaits: resolved True by the next publish or, if ``timed``,
        False at the idle deadline.

        Heartbeats are rare and frames are many, so no timer is armed or cancelled per
        frame: one timer per subscription, armed at the first timed wait, checks the
        deadline when it fires and re-arms itself if a frame came meanwhile. (A woken
        future stays in ``_waiter``; the timer sees it done and leaves it alone.)
        """
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiter = waiter
        self._stream._waiters.append(waiter)
        if timed:
            timer = self._timer
            if timer is None or timer.when() > self._deadline:
                if timer is not None:
                    timer.cancel()
                self._timer = loop.call_at(self._deadline, self._on_timer)
        return waiter

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # not waiting (or woken already): the next timed wait arms it again
        loop = self._loop
        assert loop is not None
        if self._deadline == math.inf:
            return  # an untimed wait (__anext__)
        if loop.time() >= self._deadline:
            waiter.set_result(False)
        else:
            self._timer = loop.call_at(self._deadline, self._on_timer)

    def close(self) -> None:
        """Stop reading: later reads end the iteration. Idempotent."""
        self._end()
        self._init = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._stream._subscribers -= 1

    def _poll(self) -> bytes | None:
        """The next frame if one is ready, else ``None`` (and ``_ended`` says whether to stop)."""
        if self._ended:
            return None
        stream = self._stream
        if self._init is not None:
            frame, self._init = self._init, None
            return frame
        wanted = self._cursor + 1
        seq = stream._seq
        if wanted > seq:
            if stream._abandoned:
                self._end()
            return None
        # Runs once per frame per subscriber: _oldest() and _frame() inlined. (A cursor is
        # never below the ring's base, so only the ring's wrap-around can leave it behind.)
        size = stream._ring_size
        if wanted <= seq - size:
            # Fell out of the ring: resynchronise at the current seq rather than hold the
            # publisher or keep a private backlog. (If the stream finished meanwhile, this
            # init is at D - 1 and the done frame follows.)
            k, blocks, frame = stream._snapshot()
            self._cursor, self.init_seq, self.init_blocks = k, k, blocks
            return frame
        self._cursor = wanted
        if wanted == seq and stream._done is not None:
            self._end()
        return stream._ring[(wanted - stream._base) % size]


# --------------------------------------------------------------------------- the registry


class StreamRegistry:
    """Live streams by message id; finished ones linger ``linger_s`` for late subscribers."""

    def __init__(self, *, linger_s: float = 5.0, ring_size: int = 4096) -> None:
        if linger_s < 0:
            raise ValueError(f"linger_s must be >= 0, got {linger_s}")
        if ring_size < 1:
            raise ValueError(f"ring_size must be >= 1, got {ring_size}")
        self._linger_s = linger_s
        self._ring_size = ring_size
        self._streams: dict[UUID, LiveStream] = {}
        # Finished streams in finish order. The linger is the same for all, so their drop
        # deadlines are in this order too: the janitor only ever looks at the head.
        self._expiring: deque[tuple[float, LiveStream]] = deque()
        self._janitor_wakeup: anyio.Event | None = None

    def __len__(self) -> int:
        return len(self._streams)

    def subscriber_count(self) -> int:
        """Readers of every stream held (for metrics)."""
        return sum(s.subscriber_count for s in self._streams.values())

    def open(
        self,
        message_id: UUID,
        *,
        blocks: Sequence[Block] = EMPTY,
        seq: int = 0,
        recovering: int | None = None,
    ) -> LiveStream:
        """Start the stream of ``message_id``, from a stored checkpoint if one is given
        (``recovering``: the number of the recovery that continues it from there).

        A finished stream still lingering under that id is replaced; a live one raises
        ``StreamAlreadyOpen``.
        """
        self._purge()
        existing = self._streams.get(message_id)
        if existing is not None and not existing.finished:
            raise StreamAlreadyOpen(f"message {message_id} already has a live stream")
        stream = LiveStream(
            message_id,
            blocks=blocks,
            seq=seq,
            ring_size=self._ring_size,
            on_finish=self._finished,
            recovering=recovering,
        )
        self._streams[message_id] = stream
        return stream

    def get(self, message_id: UUID) -> LiveStream | None:
        """The stream of ``message_id``; ``None`` if there is none or it was dropped."""
        self._purge()
        return self._streams.get(message_id)

    async def run(self) -> None:
        """Drop finished streams ``linger_s`` after they finished, until cancelled.

        Run it in the app's task group. ``get`` and ``open`` also drop expired streams when
        they look, so correctness never depends on when this loop last ran; it is what
        returns the memory when nobody looks.
        """
        while True:
            self._purge()
            if self._expiring:
                await anyio.sleep(max(0.0, self._expiring[0][0] - anyio.current_time()))
            else:
                self._janitor_wakeup = anyio.Event()
                await self._janitor_wakeup.wait()

    def _finished(self, stream: LiveStream) -> None:
        now = aio.current_time()
        self._expiring.append((now + self._linger_s, stream))
        wakeup = self._janitor_wakeup
        if wakeup is not None:
            self._janitor_wakeup = None
            wakeup.set()

    def _purge(self) -> None:
        if not self._expiring:
            return
        now = aio.current_time()
        while self._expiring and self._expiring[0][0] <= now:
            _, stream = self._expiring.popleft()
            # Only if it was not replaced by a newer stream for the same message.
            if self._streams.get(stream.message_id) is stream:
                del self._streams[stream.message_id]
