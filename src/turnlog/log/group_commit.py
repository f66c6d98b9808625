"""Group commit: the guarded writes of many conversations, one statement and one commit.

A guarded write (:class:`turnlog.log.rows.Write`) is written only if its conversation is
still at the version it was folded onto. :meth:`GroupCommit.write` sends it together with
the guarded writes of other conversations that arrive while earlier ones are in flight
(``WRITE_MANY``):

- while fewer than GROUP_WRITERS group writes are in flight, the caller leads one at once
  (no added latency when idle): it takes what waits in the queue, its own write included,
  up to GROUP_MAX;
- otherwise it waits; a finished group write wakes the next waiter to lead;
- at most one write per conversation goes in one group (a second waits for the next, where
  its guard fails if the first moved the conversation);
- a group write that fails as a whole for a reason other than the database being out of
  reach (perhaps one write's fault, such as a client_message_id sent twice) sends each of
  its writes again by itself (:meth:`GroupCommit.write_alone`).
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any

import anyio
import msgspec
import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from turnlog import aio
from turnlog.log.pool import BoundedPool
from turnlog.log.rows import Write
from turnlog.log.statements import write, write_many

# How many group writes may be in flight at once (the first appends go at once; the ones
# arriving meanwhile wait and go together in the next), and how many appends one group
# write takes at most.
GROUP_WRITERS = 2
GROUP_MAX = 64


class _Waiting(msgspec.Struct):
    """A guarded write in the queue. ``written`` and ``error`` are its outcome once a group
    write took it; ``alone`` asks its caller to write it by itself (the group write failed
    as a whole)."""

    write: Write
    wake: anyio.Event | None = None
    taken: bool = False
    done: bool = False
    written: bool = False
    alone: bool = False
    error: Exception | None = None


class GroupCommit:
    """The queue of guarded writes, and the group writes that carry them."""

    def __init__(self, pool: AsyncConnectionPool[Any] | BoundedPool) -> None:
        self.pool = pool
        self._queue: deque[_Waiting] = deque()
        self._in_flight = 0
        self.writes = 0  # group writes run, and the guarded writes they carried
        self.items = 0

    async def write(self, w: Write) -> bool:
        """Write ``w`` with the others waiting (module doc); False when its guard found the
        conversation moved and nothing of it was written. Raises what the database raised
        when it is out of reach."""
        item = _Waiting(w)
        self._queue.append(item)
        try:
            while not item.done:
                if self._in_flight < GROUP_WRITERS:
                    await self._lead()
                    continue
                item.wake = aio.event()
                await item.wake.wait()
        finally:
            if not item.taken:
                self._queue.remove(item)
                self._wake_next()
        if item.error is not None:
            raise item.error
        if item.alone:
            return await self.write_alone(w)
        return item.written

    async def write_alone(self, w: Write) -> bool:
        """Write ``w`` by itself (autocommit: its own transaction, one round trip)."""
        async with self.pool.connection() as conn:
            try:
                return await write(conn, w)
            except psycopg.errors.UniqueViolation:
                return False  # raced a writer of the locked way, or a key: let it judge

    def _wake_next(self) -> None:
        if self._queue and self._in_flight < GROUP_WRITERS:
            wake = self._queue[0].wake
            if wake is not None:
                wake.set()

    async def _lead(self) -> None:
        batch: list[_Waiting] = []
        cids: set[uuid.UUID] = set()
        for g in self._queue:
            if len(batch) == GROUP_MAX:
                break
            if g.write.cid not in cids:
                cids.add(g.write.cid)
                batch.append(g)
        for g in batch:
            g.taken = True
            self._queue.remove(g)
        self._in_flight += 1
        self.writes += 1
        self.items += len(batch)
        self._wake_next()  # a write slot is still free: the rest need not wait
        try:
            # Shielded: the batch is the other callers' too, and a cancelled caller must not
            # cut their writes off (the pool still bounds it in time).
            with aio.cancel_scope(shield=True):
                await self._write_batch(batch)
        finally:
            self._in_flight -= 1
            for g in batch:
                g.done = True
                if g.wake is not None:
                    g.wake.set()
            self._wake_next()

    async def _write_batch(self, batch: Sequence[_Waiting]) -> None:
        """Run one group write and record each item's outcome (never raises)."""
        try:
            async with self.pool.connection() as conn:
                written = await write_many(conn, [g.write for g in batch])
        except psycopg.OperationalError as exc:
            # The database is out of reach (or the pool exhausted): so it would be for each
            # alone. Nothing committed, or (an answer to COMMIT lost) all of it did: each
            # caller gets the error, as from its own write.
            for g in batch:
                g.error = exc
            return
        except Exception:
            # Perhaps one item's fault (a client_message_id sent twice is a unique key):
            # each goes again by itself, where the single write and the locked way judge.
            if len(batch) > 1:
                structlog.get_logger("turnlog.store").info(
                    "group write failed; writing its appends one by one", exc_info=True
                )
            for g in batch:
                g.alone = True
            return
        for g in batch:
            g.written = g.write.cid in written
