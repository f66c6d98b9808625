"""Live conversation feeds: every committed change of a conversation, to its subscribers.

The store calls :meth:`FeedHub.publish` after each commit. Frames are encoded once per
change, not per subscriber. A subscriber that falls ``QUEUE_FRAMES`` behind is closed (its
client reconnects and gets a fresh snapshot), so nobody ever waits for a slow reader.
"""

from __future__ import annotations

import uuid
from collections import deque
from typing import Literal

import anyio
import anyio.lowlevel
import msgspec

from turnlog.log.projection import Conversation, Message
from turnlog.log.store import Appended
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
    """One subscriber's queue of (version, frame); ``None`` marks the end."""

    def __init__(self) -> None:
        self._frames: deque[tuple[int, bytes] | None] = deque()
        self._wakeup = anyio.Event()
        self.closed = False

    def push(self, item: tuple[int, bytes] | None) -> None:
        if self.closed:
            return
        if item is not None and len(self._frames) >= QUEUE_FRAMES:
            item = None  # fell behind: end it; the client resumes from a snapshot
        self._frames.append(item)
        if item is None:
            self.closed = True
        self._wakeup.set()

    async def next(self, timeout: float) -> tuple[int, bytes] | Literal[False] | None:  # noqa: ASYNC109
        """The next (version, frame); ``None`` at the end; ``False`` after ``timeout``
        seconds with nothing to send (time for a heartbeat)."""
        if self._frames:
            # Queued already: still yield to the loop once per frame, so a reader catching
            # up on a backlog cannot starve the server.
            await anyio.lowlevel.checkpoint()
        else:
            self._wakeup = anyio.Event()
            with anyio.move_on_after(timeout):
                await self._wakeup.wait()
            if not self._frames:
                return False
        return self._frames.popleft()


class FeedHub:
    def __init__(self) -> None:
        self._feeds: dict[uuid.UUID, set[Feed]] = {}

    def subscribe(self, cid: uuid.UUID) -> Feed:
        feed = Feed()
        self._feeds.setdefault(cid, set()).add(feed)
        return feed

    def unsubscribe(self, cid: uuid.UUID, feed: Feed) -> None:
        feeds = self._feeds.get(cid)
        if feeds is not None:
            feeds.discard(feed)
            if not feeds:
                del self._feeds[cid]

    def publish(self, appended: Appended) -> None:
        feeds = self._feeds.get(appended.conversation_id)
        if not feeds:
            return
        conv = appended.conversation
        frames: list[tuple[int, bytes]] = []
        for change in appended.changes:
            v = change.version
            frames += [
                (v, sse_frame(b"message", v, _encoder.encode(_MessageChange(m, v))))
                for m in change.messages
            ]
        last = appended.version
        if conv is None or any(c.conversation_changed for c in appended.changes):
            change_ = _ConversationChange(
                None if conv is None else conv.conversation, last, deleted=conv is None
            )
            frames.append((last, sse_frame(b"conversation", last, _encoder.encode(change_))))
        for feed in list(feeds):
            for item in frames:
                feed.push(item)
            if conv is None:
                feed.push(None)

    def close_all(self) -> None:
        """End every feed (at shutdown)."""
        for feeds in self._feeds.values():
            for feed in feeds:
                feed.push(None)

    def __len__(self) -> int:
        return sum(len(f) for f in self._feeds.values())
