"""Per-user limits: concurrent generations and sends per minute, counted in PostgreSQL.

Both hold across every server process on one database because the count and the write it
admits happen under one lock that all of them take: a transaction-scoped advisory lock
keyed by the user (``pg_advisory_xact_lock(LIMITS_LOCK_SPACE, hashtext(owner))``), held on
a connection of a small pool of its own while the caller appends its events on the store's
pool, and released by the commit after that append. So a second send of the same user, in
any process, counts only after the first one's ``generating`` state (and its row in
``sends``) is committed: no two can both see "one slot left".

Why a pool of its own: the lock holder waits for the store's pool (to append). If it
borrowed from that same pool, enough concurrent sends could hold every connection while
each waits for one more, and nothing would move until the pool's timeout.

Concurrent generations are the user's conversations whose state is ``generating`` (at most
one generating row each); an ``awaiting_input`` conversation does not count. Sends are rows
of ``sends`` in the last 60 seconds, inserted only when the send itself was stored (a
refused send rolls back with the lock transaction and does not count).

Limits of 0 (the default) mean unlimited, and then no lock is taken at all.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

from psycopg_pool import AsyncConnectionPool

from turnlog.config import Settings
from turnlog.errors import TooMany

# Any constant works as long as it differs from the other advisory lock spaces in use
# (instances.INSTANCE_LOCK_SPACE is 0x746C).
LIMITS_LOCK_SPACE = 0x6C6D  # "lm"
WINDOW = timedelta(seconds=60)
# Nobody can tell when a running generation ends; this is a polite first guess.
GENERATION_RETRY_AFTER_S = 2


class Limits:
    """Admits sends and generations of one user at a time, across processes."""

    def __init__(self, settings: Settings) -> None:
        self.max_generations = settings.max_concurrent_generations
        self.max_sends = settings.max_sends_per_minute
        self.db_timeout_s = settings.db_timeout_s
        self.pool: AsyncConnectionPool[Any] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.max_generations or self.max_sends)

    async def open(self, conninfo: str) -> None:
        if self.enabled:
            # Bounded like the store's pool (log/pool.py): a lost database is a 503 within
            # TURNLOG_DB_TIMEOUT_S, not a 30 s wait for a connection.
            self.pool = AsyncConnectionPool(
                conninfo,
                min_size=1,
                max_size=4,
                kwargs={"autocommit": True, "connect_timeout": 2},
                timeout=self.db_timeout_s,
                reconnect_timeout=2.0,
                open=False,
            )
            await self.pool.open(wait=True)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    @asynccontextmanager
    async def admit(self, owner: str, *, send: bool) -> AsyncIterator[None]:
        """Raise :class:`TooMany` if ``owner`` may not start one more generation (and, for a
        ``send``, one more send this minute); else run the body, which stores the start,
        under the user's lock. A send is counted only if the body returns."""
        if self.pool is None:
            yield
            return
        async with self.pool.connection() as conn, conn.transaction():
            # Held until this transaction ends, i.e. after the body's append committed.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LIMITS_LOCK_SPACE, owner)
            )
            if self.max_generations:
                cur = await conn.execute(
                    "SELECT count(*) FROM conversations WHERE owner = %s AND state = 'generating'",
                    (owner,),
                )
                row = await cur.fetchone()
                running = int(row[0]) if row else 0
                if running >= self.max_generations:
                    raise TooMany(
                        f"{running} generations are running for this user; the limit is "
                        f"{self.max_generations} at a time (TURNLOG_MAX_CONCURRENT_GENERATIONS)",
                        GENERATION_RETRY_AFTER_S,
                    )
            now: datetime | None = None
            if send and self.max_sends:
                # The database's clock, the same for every process.
                cur = await conn.execute("SELECT now()")
                row = await cur.fetchone()
                assert row is not None
                now = row[0]
                await conn.execute(
                    "DELETE FROM sends WHERE owner = %s AND at <= %s", (owner, now - WINDOW)
                )
                cur = await conn.execute(
                    "SELECT count(*), min(at) FROM sends WHERE owner = %s", (owner,)
                )
                row = await cur.fetchone()
                assert row is not None
                sent, oldest = int(row[0]), row[1]
                if sent >= self.max_sends:
                    wait = (oldest + WINDOW - now).total_seconds() if oldest else 1.0
                    raise TooMany(
                        f"{sent} messages sent by this user in the last minute; the limit "
                        f"is {self.max_sends} (TURNLOG_MAX_SENDS_PER_MINUTE)",
                        math.ceil(wait),
                    )
            yield
            if now is not None:
                await conn.execute("INSERT INTO sends (owner, at) VALUES (%s, %s)", (owner, now))
