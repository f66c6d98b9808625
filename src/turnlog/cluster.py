"""Many instances on one PostgreSQL: what an instance tells the others, and what it hears.

General layout::

    Cluster                  one per instance, running in the app's task group; the
                             PostgreSQL backend of the feeds (turnlog.feeds)
      _notifier              sends this process's commits (FeedHub.committed) as NOTIFY
                             wake-ups, coalesced, on a pool connection
      _listener              ONE dedicated LISTEN connection: feed wake-ups, cancel requests
      _catcher               reads a conversation that moved elsewhere (FeedHub.stale),
                             hands it to FeedHub.caught_up
      _poller                the fallback that keeps feeds and cancels correct without NOTIFY
      owner / request_cancel who runs a generating row (and is it alive); cancel it anywhere

Why it is shaped this way (docs/deployment.md, "The design"):

* NOTIFY carries no data, only "conversation C reached version V" (or "cancel message M").
  The changes themselves are read from the store, so a lost or coalesced notification costs
  latency, never correctness: the poller compares every followed conversation's version
  with what its feeds were shown, once a second.
* NOTIFY is never sent inside an append's transaction. A transaction that has sent NOTIFY
  takes a database-wide lock at commit (to order the notification queue), so doing it in
  the append would serialise every writer of every conversation behind one lock. Here it is
  a separate, tiny autocommit statement after the commit, batched across the appends that
  committed meanwhile.
* A cancel through another instance is a stored request (``leases.cancel_requested``)
  plus a wake-up. The owner ends the row itself, with every event it published, so what
  its subscribers were shown equals the stored blocks. It acts on the wake-up at once, or
  on its next poll (within a second) if the wake-up was lost.
* Liveness is the instance's advisory lock (schema.sql, table ``instances``): a follower
  asks PostgreSQL whether the owner's lock is held, never a clock or a heartbeat row.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Awaitable, Callable

import anyio
import psycopg
import structlog

from turnlog.feeds import FeedHub
from turnlog.generation.engine import Engine
from turnlog.log.instances import Owner
from turnlog.log.projection import MessageRecord
from turnlog.log.store import Store
from turnlog.log.tree import active as tree_active

log = structlog.get_logger("turnlog.cluster")

FEED_CHANNEL = "turnlog_feed"
CANCEL_CHANNEL = "turnlog_cancel"
# How often the poller looks for lost wake-ups (cancel requests, moved conversations).
POLL_S = 1.0
# How long a cancel through another instance waits for the owner to end the row before it
# ends the row itself (fencing the owner off).
CANCEL_WAIT_S = 10.0
INTERNAL_HEADER = "x-turnlog-internal"


def internal_token(secret: str) -> str:
    """The credential instances present to each other's internal routes: derived from the
    JWT secret, which every instance of one deployment shares anyway."""
    return hmac.new(secret.encode(), b"turnlog internal routes v1", hashlib.sha256).hexdigest()


class Cluster:
    """This instance's link to the others, through PostgreSQL only."""

    def __init__(
        self,
        conninfo: str,
        store: Store,
        hub: FeedHub,
        engine: Engine,
        instance_id: uuid.UUID,
    ) -> None:
        self.conninfo = conninfo
        self.store = store
        self.hub = hub
        self.engine = engine
        self.instance_id = instance_id
        self.listening = False

    async def register(self, internal_url: str | None) -> None:
        """Publish where this instance serves its live streams to the others."""
        await self.store.instances.set_internal_url(self.instance_id, internal_url)

    # -- running ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Send and receive wake-ups, and poll, until cancelled. Each loop logs a failure
        (the database gone, a pool timeout) and carries on: they only ever delay a wake-up,
        which the poll makes good, and must never take the server down with them."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._notifier)
            tg.start_soon(self._listener)
            tg.start_soon(self._catcher)
            tg.start_soon(self._poller)

    async def _notifier(self) -> None:
        while True:
            # This process's commits since the last round (FeedHub.publish puts them).
            batch, deleted = await self.hub.committed.take()
            payloads = [
                f"{self.instance_id} {cid} {v}" + (" deleted" if cid in deleted else "")
                for cid, v in batch.items()
            ]
            try:
                async with self.store.pool.connection() as conn:
                    # Its own autocommit transaction, after the append's commit (module doc).
                    await conn.execute(
                        "SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p",
                        (FEED_CHANNEL, payloads),
                    )
            except Exception as exc:
                # A lost wake-up only delays the other instances' feeds until their poll.
                log.warning("could not send feed wake-ups", error=str(exc))

    async def _listener(self) -> None:
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {FEED_CHANNEL}")
                    await conn.execute(f"LISTEN {CANCEL_CHANNEL}")
                    self.listening = True
                    # Whatever moved while nobody listened: the poller's check, now.
                    for cid in self.hub.followed():
                        self._moved(cid)
                    async for note in conn.notifies():
                        self._heard(note.channel, note.payload)
            except Exception as exc:
                log.warning("listening connection lost; reconnecting", error=str(exc))
            finally:
                self.listening = False
            await anyio.sleep(1.0)

    def _heard(self, channel: str, payload: str) -> None:
        if channel == CANCEL_CHANNEL:
            self._cancel_here(payload)
            return
        try:
            instance, cid_text, version_text, *deleted = payload.split(" ")
            cid, version = uuid.UUID(cid_text), int(version_text)
        except ValueError:
            log.warning("ignoring a malformed feed wake-up", payload=payload[:200])
            return
        if instance == str(self.instance_id):
            return  # our own commit: the feeds here already have it
        if deleted:
            # Deleted through another instance: a generation of it here stops now.
            self._stop_generations_of(cid)
        seen = self.hub.shown(cid)
        if seen is not None and version > seen:
            self._moved(cid)

    def _cancel_here(self, payload: str) -> None:
        try:
            mid = uuid.UUID(payload)
        except ValueError:
            return
        gen = self.engine.running(mid)
        if gen is not None:
            log.info("cancel requested through another instance", message_id=str(mid))
            gen.cancel("aborted")

    def _moved(self, cid: uuid.UUID) -> None:
        self.hub.stale.put(cid)

    async def _catcher(self) -> None:
        while True:
            # Gaps the hub found, and wake-ups and polls that found a conversation moved.
            stale, _ = await self.hub.stale.take()
            for cid in stale:
                try:
                    await self._catch_up(cid)
                except Exception as exc:
                    log.warning("feed catch-up failed; the poll retries", error=str(exc))

    async def _catch_up(self, cid: uuid.UUID) -> None:
        read = await self.store.snapshot(cid)
        if read is None:
            return
        version, record, rows = read
        if record is None:
            self._stop_generations_of(cid)
            self.hub.caught_up(cid, version, None, [])
            return
        # The feeds show the active path only (turnlog.log.tree).
        active = [r.message for r in tree_active(record, rows)]
        self.hub.caught_up(cid, version, record.conversation, active)

    def _stop_generations_of(self, cid: uuid.UUID) -> None:
        for mid in self.engine.cancel_conversation(cid):
            log.info("conversation deleted elsewhere; stopping", message_id=str(mid))

    async def _poller(self) -> None:
        while True:
            await anyio.sleep(POLL_S)
            try:
                await self._poll()
            except Exception as exc:
                log.warning("cluster poll failed", error=str(exc))

    async def _poll(self) -> None:
        running = self.engine.running_ids()
        followed = self.hub.followed()
        if not running and not followed:
            return
        if running:
            # A generation runs here only while its lease names this instance (the write
            # that starts a turn takes it; the one that ends the row drops it). A lease
            # asking for a cancel, or gone (the row was ended elsewhere, or its
            # conversation deleted, and the wake-up was lost): stop it now.
            leased = await self.store.instances.leases_of(self.instance_id, running)
            for mid in running:
                if leased.get(mid, True) and self.engine.running(mid) is not None:
                    self._cancel_here(str(mid))
        if followed:
            versions = await self.store.versions(followed)
            for cid, seen in followed.items():
                if versions.get(cid, seen + 1) > seen:  # moved on, or deleted
                    self._moved(cid)

    # -- who runs what --------------------------------------------------------------------

    async def owner(self, mid: uuid.UUID) -> Owner | None:
        """The row's status and the instance leasing it (alive: its liveness lock is
        held); None if there is no such row."""
        return await self.store.instances.owner(mid)

    async def request_cancel(self, row: MessageRecord) -> bool:
        """Ask the living instance that runs ``row`` to abort it and wait until it has.
        False when the caller has to end the row itself: nobody runs it, its owner is
        dead, or the owner did not act within CANCEL_WAIT_S."""
        mid = row.message.id
        owner = await self.owner(mid)
        if owner is None or owner.status != "generating":
            return True  # it ended meanwhile: the caller reads the outcome
        if not owner.alive or owner.instance_id in (None, self.instance_id):
            return False
        await self.store.instances.request_cancel(mid, channel=CANCEL_CHANNEL)
        log.info("cancel requested from the owner", owner=str(owner.instance_id))
        return await _until(lambda: self._ended_or_dead(mid), within_s=CANCEL_WAIT_S, interval=0.05)

    async def _ended_or_dead(self, mid: uuid.UUID) -> bool | None:
        """True once the row stopped generating, False if its owner died, else None."""
        owner = await self.owner(mid)
        if owner is None or owner.status != "generating":
            return True
        if not owner.alive:
            return False
        return None


async def _until(
    probe: Callable[[], Awaitable[bool | None]], *, within_s: float, interval: float
) -> bool:
    """The first non-None answer of ``probe``, polled; False after ``within_s`` seconds."""
    with anyio.move_on_after(within_s):
        while True:
            answer = await probe()
            if answer is not None:
                return answer
            await anyio.sleep(interval)
    return False


__all__ = ["Cluster", "Owner", "internal_token"]
