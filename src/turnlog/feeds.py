"""Live conversation feeds: every committed change of a conversation, to its subscribers.

The twin of :mod:`turnlog.streams` (one message's stream events): here, one conversation's
committed changes. Nothing in it is HTTP; ``http/live.py`` serves a :class:`Feed` as SSE.

Publish/subscribe, with the cross-instance part beside it (litestar's channels plugin and
its backends are the model)::

    FeedHub                     this process's feeds, by conversation
      subscribe / unsubscribe     a subscriber's Feed (a bounded queue of SSE frames)
      publish(appended)           after each commit of this process (the store's on_append)
      caught_up(...)              a conversation as the store holds it, after another
                                  instance committed
      committed                   Pending: this process's commits, for the other instances
      stale                       Pending: conversations to read again (a gap, a wake-up)

:class:`turnlog.cluster.Cluster` is the PostgreSQL backend: it sends ``committed`` as NOTIFY
wake-ups, and for each ``stale`` conversation reads the store and calls ``caught_up``.
The hub holds no callback: the backend takes from its two ``Pending`` queues, so each
part is built once, in order (hub, store, engine, cluster), with all it needs.

Frames are encoded once per change, not per subscriber. A subscriber that falls
``QUEUE_FRAMES`` behind is closed (its client reconnects and gets a fresh snapshot), so
nobody ever waits for a slow reader.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from typing import Literal

import anyio
import anyio.lowlevel
import msgspec

from turnlog.log.events import VersionSelected
from turnlog.log.projection import Conversation, Message
from turnlog.log.store import Appended
from turnlog.log.tree import on_active_path
from turnlog.streams import sse_frame

QUEUE_FRAMES = 1024

_encoder = msgspec.json.Encoder()


class _MessageChange(msgspec.Struct):
    message: Message
    version: int


class _ConversationChange(msgspec.Struct):
    conversation: Conversation | None
    version: int
    deleted: bool = False


class Feed:
    """One subscriber's queue of (version, frame); ``None`` marks the end.

    Idle, a feed waits on a bare asyncio future with a timer for its heartbeat (as
    ``LiveStream.frames`` does), not an anyio event under a cancel scope: an open browser
    tab costs one such wait per heartbeat, and at 10,000 tabs the anyio objects were most
    of the server's idle CPU and a third of its memory per feed (bench/idle.py).
    """

    __slots__ = ("_frames", "_waiter", "closed")

    def __init__(self) -> None:
        self._frames: deque[tuple[int, bytes] | None] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False

    def push(self, item: tuple[int, bytes] | None) -> None:
        if self.closed:
            return
        if item is not None and len(self._frames) >= QUEUE_FRAMES:
            item = None  # fell behind: end it; the client resumes from a snapshot
        self._frames.append(item)
        if item is None:
            self.closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self, timeout: float) -> tuple[int, bytes] | Literal[False] | None:  # noqa: ASYNC109
        """The next (version, frame); ``None`` at the end; ``False`` after ``timeout``
        seconds with nothing to send (time for a heartbeat)."""
        if self._frames:
            # Queued already: still yield to the loop once per frame, so a reader catching
            # up on a backlog cannot starve the server.
            await anyio.lowlevel.checkpoint()
        else:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout, _expire, waiter)
            try:
                await waiter  # a cancel (the client went away) raises here, as it should
            finally:
                timer.cancel()
                self._waiter = None
            if not self._frames:
                return False
        return self._frames.popleft()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Topic:
    """The feeds of one conversation, and what they were last shown (for catch-ups)."""

    __slots__ = ("conversation", "feeds", "rows", "version")

    def __init__(self) -> None:
        self.feeds: set[Feed] = set()
        # The newest version whose changes were pushed (0: none yet), each message row's
        # last pushed encoding and the conversation's public fields: a catch-up from the
        # store pushes only what differs from them.
        self.version = 0
        self.rows: dict[uuid.UUID, bytes] = {}
        self.conversation: tuple[object, ...] | None = None


def _public(c: Conversation) -> tuple[object, ...]:
    return (c.title, c.model, c.options, c.system_prompt, c.state, c.active_leaf_id)


class Pending:
    """Conversations waiting for the backend, coalesced: each with the newest version put
    (and whether it was deleted there). :meth:`take` waits for some and takes them all."""

    def __init__(self) -> None:
        self._versions: dict[uuid.UUID, int] = {}
        self._deleted: set[uuid.UUID] = set()
        self._wakeup = anyio.Event()

    def put(self, cid: uuid.UUID, version: int = 0, *, deleted: bool = False) -> None:
        self._versions[cid] = max(self._versions.get(cid, 0), version)
        if deleted:
            self._deleted.add(cid)
        self._wakeup.set()

    def pending(self) -> dict[uuid.UUID, int]:
        """What waits now, without taking it."""
        return dict(self._versions)

    async def take(self) -> tuple[dict[uuid.UUID, int], set[uuid.UUID]]:
        """Wait until something is put, then take everything: (version by conversation,
        the conversations deleted)."""
        await self._wakeup.wait()
        self._wakeup = anyio.Event()
        versions, self._versions = self._versions, {}
        deleted, self._deleted = self._deleted, set()
        return versions, deleted


class FeedHub:
    """Feeds by conversation. Two sources push into it, in version order: this process's
    commits (``publish``, exact per-version frames) and catch-ups from the store after
    another instance committed (``caught_up``, the rows as of the version read; see
    turnlog.cluster). A commit of this process that arrives after a catch-up already
    covered it is skipped; one that finds versions missing before it (another instance
    wrote them) is left to a catch-up (it puts the conversation in ``stale``), so ids never
    decrease."""

    def __init__(self) -> None:
        self._topics: dict[uuid.UUID, _Topic] = {}
        # Every commit of this process, for the other instances' feeds (the backend's).
        self.committed = Pending()
        # Conversations whose feeds here miss versions: the backend reads them again.
        self.stale = Pending()

    def subscribe(self, cid: uuid.UUID) -> Feed:
        feed = Feed()
        self._topics.setdefault(cid, _Topic()).feeds.add(feed)
        return feed

    def unsubscribe(self, cid: uuid.UUID, feed: Feed) -> None:
        topic = self._topics.get(cid)
        if topic is not None:
            topic.feeds.discard(feed)
            if not topic.feeds:
                del self._topics[cid]

    def seed(self, cid: uuid.UUID, version: int) -> None:
        """A subscriber read its snapshot at ``version``: when it is the conversation's
        only subscriber so far, changes up to there need not be shown (see ``publish``)."""
        topic = self._topics.get(cid)
        if topic is not None and topic.version == 0:
            topic.version = version

    def shown(self, cid: uuid.UUID) -> int | None:
        """The last version pushed to the conversation's feeds; None if it has none."""
        topic = self._topics.get(cid)
        return None if topic is None else topic.version

    def followed(self) -> dict[uuid.UUID, int]:
        """The conversations with subscribers here, each with the last version pushed."""
        return {cid: t.version for cid, t in self._topics.items()}

    def publish(self, appended: Appended) -> None:
        """A commit of this process (the store's after-commit hook): to the feeds here, and
        to ``committed`` for the other instances."""
        cid = appended.conversation_id
        self.committed.put(cid, appended.version, deleted=appended.conversation is None)
        topic = self._topics.get(cid)
        if topic is None:
            return
        first, last = appended.events[0][0], appended.version
        if last <= topic.version:
            return  # a catch-up from the store already showed it
        if topic.version == 0 or first > topic.version + 1:
            # Another instance may have written versions before this one (or wrote them:
            # a gap): the catch-up shows them and this change together, in order.
            self.stale.put(cid)
            return
        conv = appended.conversation
        if conv is not None and any(isinstance(e, VersionSelected) for _, e in appended.events):
            # Another path became active: its rows are shown again (a subscriber may never
            # have seen them), read from the store by the catch-up, under this version.
            topic.rows.clear()
            self.stale.put(cid)
            return
        frames: list[tuple[int, bytes]] = []
        for change in appended.changes:
            v = change.version
            for m in change.messages:
                if conv is not None and not on_active_path(conv, m.seq):
                    continue  # another version's row (one generating while not shown)
                data = _encoder.encode(_MessageChange(m, v))
                topic.rows[m.id] = _encoder.encode(m)
                frames.append((v, sse_frame(b"message", v, data)))
        if conv is None or any(c.conversation_changed for c in appended.changes):
            change_ = _ConversationChange(
                None if conv is None else conv.conversation, last, deleted=conv is None
            )
            frames.append((last, sse_frame(b"conversation", last, _encoder.encode(change_))))
        if conv is not None:
            topic.conversation = _public(conv.conversation)
        topic.version = last
        self._push(appended.conversation_id, topic, frames, end=conv is None)

    def caught_up(
        self, cid: uuid.UUID, version: int, conv: Conversation | None, messages: list[Message]
    ) -> None:
        """The conversation as the store holds it at ``version`` (``conv`` None: deleted
        at ``version``): push, under that id, every row and the conversation if they differ
        from what the feeds were last shown."""
        topic = self._topics.get(cid)
        if topic is None or version <= topic.version:
            return
        frames: list[tuple[int, bytes]] = []
        for m in messages:
            encoded = _encoder.encode(m)
            if topic.rows.get(m.id) != encoded:
                topic.rows[m.id] = encoded
                data = _encoder.encode(_MessageChange(m, version))
                frames.append((version, sse_frame(b"message", version, data)))
        if conv is None or _public(conv) != topic.conversation:
            change_ = _ConversationChange(conv, version, deleted=conv is None)
            frames.append((version, sse_frame(b"conversation", version, _encoder.encode(change_))))
            topic.conversation = None if conv is None else _public(conv)
        topic.version = version
        self._push(cid, topic, frames, end=conv is None)

    def _push(
        self, cid: uuid.UUID, topic: _Topic, frames: list[tuple[int, bytes]], *, end: bool
    ) -> None:
        for feed in list(topic.feeds):
            for item in frames:
                feed.push(item)
            if end:
                feed.push(None)

    def close_all(self) -> None:
        """End every feed (at shutdown)."""
        for topic in self._topics.values():
            for feed in topic.feeds:
                feed.push(None)

    def __len__(self) -> int:
        return sum(len(t.feeds) for t in self._topics.values())
