"""Instances, leases and liveness: who runs which generation, and whether it is alive.

Operational state, never replayed (schema.sql, tables ``instances`` and ``leases``):

- an instance proves it is alive by holding a session advisory lock (LIVENESS_JOIN finds
  it in ``pg_locks``); :meth:`Instances.register` takes it, :mod:`turnlog.log.liveness`
  keeps it;
- a generating row's lease names the instance that runs its current attempt; the write that
  starts a turn takes it and the one that ends the row drops it (``turnlog.log.statements``);
- an orphan is a generating row whose generation is gone (:meth:`Instances.orphans`);
- a cancel through another instance is a stored request on the lease plus a wake-up
  (:meth:`Instances.request_cancel`).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import msgspec
import psycopg
from psycopg_pool import AsyncConnectionPool

from turnlog.log.pool import BoundedPool
from turnlog.log.projection import MessageRecord
from turnlog.log.rows import MESSAGE_FIELDS, message_from_row

# The advisory lock space of instance liveness locks (see schema.sql, table instances).
INSTANCE_LOCK_SPACE = 0x746C  # "tl"

# A restart of PostgreSQL drops every session, so every instance's liveness lock is free
# for a moment, living instances' too: each takes its lock again as soon as it can reach
# the database (turnlog.log.liveness, within about a second). Until the database has been
# up this long, a free lock therefore proves nothing, and its rows are left alone (a send
# to their conversation is 409, a sweep waits); only a real death orphans a row.
LIVENESS_GRACE_S = 3.0
# "The database has been up longer than the grace" (one parameter: the grace, seconds).
SETTLED = "(pg_postmaster_start_time() < now() - make_interval(secs => %s))"

# instances i and the granted advisory lock pl that proves it alive; pl.pid is NULL when
# the lease, the instance or its lock is missing. Two-key advisory locks show in pg_locks
# as (classid, objid, objsubid = 2).
LIVENESS_JOIN = (
    "LEFT JOIN instances i ON i.id = l.instance_id "
    "LEFT JOIN pg_locks pl ON pl.locktype = 'advisory' AND pl.granted "
    "AND pl.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    f"AND pl.classid = {INSTANCE_LOCK_SPACE} AND pl.objid = i.lock_key::oid "
    "AND pl.objsubid = 2"
)
# A message row's current lease (the one of its attempt), for LIVENESS_JOIN to follow.
_LEASE_JOIN = "LEFT JOIN leases l ON l.message_id = m.id AND l.attempt = m.attempt"


class Owner(msgspec.Struct, frozen=True):
    """Who runs a message's generation, as the store and PostgreSQL's locks say."""

    status: str
    instance_id: uuid.UUID | None
    internal_url: str | None
    alive: bool


class Instances:
    """The SQL of instances and leases, over the store's pool."""

    def __init__(self, pool: AsyncConnectionPool[Any] | BoundedPool) -> None:
        self.pool = pool

    @staticmethod
    async def register(
        conn: psycopg.AsyncConnection[Any],
        instance_id: uuid.UUID,
        now: datetime,
        *,
        key: int | None = None,
    ) -> int:
        """Record this process and take its liveness lock on ``conn``, which the caller
        keeps open (outside the pool); return the lock's key. ``key``: the key to take
        again after the connection was lost (see turnlog.log.liveness); if another
        instance took it meanwhile, a new one is chosen and this instance's row follows."""
        for attempt in range(10):
            if key is None or attempt > 0:
                key = secrets.randbelow(2**31 - 2) + 1
            cur = await conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (INSTANCE_LOCK_SPACE, key)
            )
            row = await cur.fetchone()
            if row is None or not row[0]:
                continue
            # Rows of dead instances with this key would confuse the liveness join. The
            # upsert keeps this instance's id (its leases name it) with the key it holds.
            await conn.execute(
                "DELETE FROM instances WHERE lock_key = %s AND id <> %s", (key, instance_id)
            )
            await conn.execute(
                "INSERT INTO instances (id, lock_key, started_at) VALUES (%s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET lock_key = EXCLUDED.lock_key",
                (instance_id, key, now),
            )
            return key
        raise RuntimeError("could not take an instance lock after 10 tries")

    async def unregister(self, instance_id: uuid.UUID) -> None:
        async with self.pool.connection() as conn:
            await conn.execute("DELETE FROM instances WHERE id = %s", (instance_id,))

    async def set_internal_url(self, instance_id: uuid.UUID, internal_url: str | None) -> None:
        """Where this instance serves its live streams to the others."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE instances SET internal_url = %s WHERE id = %s",
                (internal_url, instance_id),
            )

    async def orphans(
        self, *, me: uuid.UUID, mine: Iterable[uuid.UUID] = ()
    ) -> list[MessageRecord]:
        """Generating rows whose generation is gone: no lease or no instance, a lease of
        an instance whose liveness lock is free (its process died; see LIVENESS_GRACE_S),
        or a lease of this instance (``me``) for a row it does not run. A row this process
        runs (in ``mine``) is never an orphan, whatever its lock looks like."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {', '.join('m.' + c for c in MESSAGE_FIELDS)} FROM messages m "
                f"{_LEASE_JOIN} {LIVENESS_JOIN} "
                "WHERE m.status = 'generating' AND NOT (m.id = ANY(%s)) AND ("
                f"  i.id IS NULL OR i.id = %s OR (pl.pid IS NULL AND {SETTLED}))",
                (list(mine), me, LIVENESS_GRACE_S),
            )
            return [message_from_row(r) for r in await cur.fetchall()]

    async def is_orphan(self, mid: uuid.UUID, *, me: uuid.UUID, mine: bool) -> bool:
        """Whether one generating row's generation is gone (see :meth:`orphans`)."""
        if mine:
            return False
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT i.id, pl.pid, {SETTLED} FROM messages m "
                f"{_LEASE_JOIN} {LIVENESS_JOIN} "
                "WHERE m.id = %s AND m.status = 'generating'",
                (LIVENESS_GRACE_S, mid),
            )
            row = await cur.fetchone()
        if row is None:
            return False
        instance, holder, settled = row
        if instance is None or instance == me:
            return True
        return bool(holder is None and settled)

    async def liveness_unsettled_s(self) -> float:
        """Seconds until a free liveness lock proves its instance dead again: 0 unless the
        database (re)started less than LIVENESS_GRACE_S ago and generating rows exist."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT greatest(0, %s - extract(epoch FROM now() - pg_postmaster_start_time()))"
                "::float8, EXISTS (SELECT FROM messages WHERE status = 'generating')",
                (LIVENESS_GRACE_S,),
            )
            row = await cur.fetchone()
        assert row is not None
        return float(row[0]) if row[1] else 0.0

    async def owner(self, mid: uuid.UUID) -> Owner | None:
        """The row's status and the instance leasing it (alive: its liveness lock is
        held); None if there is no such row."""
        async with self.pool.connection() as conn:
            # Alive: its lock is held, or it may be (a database restarted less than
            # LIVENESS_GRACE_S ago freed every lock; the living take theirs again).
            cur = await conn.execute(
                "SELECT m.status, i.id, i.internal_url, "
                f"pl.pid IS NOT NULL OR (i.id IS NOT NULL AND NOT {SETTLED}) FROM messages m "
                f"{_LEASE_JOIN} {LIVENESS_JOIN} WHERE m.id = %s",
                (LIVENESS_GRACE_S, mid),
            )
            row = await cur.fetchone()
        if row is None:
            return None
        return Owner(status=row[0], instance_id=row[1], internal_url=row[2], alive=bool(row[3]))

    async def leases_of(
        self, instance_id: uuid.UUID, mids: list[uuid.UUID]
    ) -> dict[uuid.UUID, bool]:
        """Of the rows ``mids``, those whose lease names ``instance_id``, each with whether
        a cancel was requested (a row missing here lost its lease)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT message_id, cancel_requested FROM leases "
                "WHERE instance_id = %s AND message_id = ANY(%s)",
                (instance_id, mids),
            )
            return dict(await cur.fetchall())

    async def request_cancel(self, mid: uuid.UUID, *, channel: str) -> None:
        """Store a cancel request on the row's lease, then wake its owner up on ``channel``
        (payload: the message id)."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE leases SET cancel_requested = true WHERE message_id = %s", (mid,)
            )
            # The wake-up, after the request committed (autocommit): the owner that hears it
            # finds the request stored; one that does not finds it at its next poll.
            await conn.execute("SELECT pg_notify(%s, %s)", (channel, str(mid)))
