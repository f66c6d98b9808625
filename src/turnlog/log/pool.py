"""The store's connection pool, bounded in time: a lost database is a quick, clear error.

psycopg's pool waits 30 s for a connection by default, and a query on a connection to a
paused server (SIGSTOP, a frozen VM, a network partition) waits forever. A request must not:
:meth:`BoundedPool.connection` gives one unit of work (acquiring the connection and every
statement run on it) ``timeout_s`` seconds, and turns every way of not reaching the database
into one error, :class:`DatabaseUnavailable`, which the HTTP layer answers with 503 and
``Retry-After``. A connection whose statement was cut off is closed (psycopg cancels or
closes it), and the pool replaces it.

Errors the database itself reports (a unique key, a check) pass through unchanged: they are
answers, not unavailability.

For a connection held open on purpose (LISTEN, the liveness lock), use a dedicated
``psycopg.AsyncConnection``, not this pool.

Durability comes before new work: RESERVED connections of a large pool are kept for units
of work run :func:`urgently` (the engine's checkpoints and step ends), so a burst of sends
queued for connections cannot hold back the writes that keep the crash-loss promise.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import Any

import anyio
import psycopg
from psycopg_pool import AsyncConnectionPool

from turnlog import aio
from turnlog.log.rows import configure_connection

# Seconds a client should wait before trying again (the Retry-After of a 503).
RETRY_AFTER_S = 2
# Connections only urgent units of work may take, in pools of at least RESERVE_FROM.
RESERVED = 2
RESERVE_FROM = 8

_urgent: ContextVar[bool] = ContextVar("turnlog_pool_urgent", default=False)


@contextmanager
def urgently() -> Iterator[None]:
    """Units of work begun inside (in this task) may take the reserved connections."""
    token = _urgent.set(True)
    try:
        yield
    finally:
        _urgent.reset(token)


class DatabaseUnavailable(psycopg.OperationalError):
    """The database could not be reached, or did not answer in time; nothing was changed
    unless the message says the outcome is unknown."""


class BoundedPool:
    """A psycopg pool whose every unit of work ends within ``timeout_s`` seconds, and
    within ``down_timeout_s`` while the database is known to be down (``mark_down``)."""

    def __init__(
        self,
        raw: AsyncConnectionPool[Any],
        *,
        timeout_s: float = 5.0,
        down_timeout_s: float = 1.0,
    ) -> None:
        self.raw = raw
        self.timeout_s = timeout_s
        self.down_timeout_s = down_timeout_s
        # Set by whoever watches the database (the liveness keeper): while it is known to
        # be down, a unit of work gets only down_timeout_s, and the ones waiting when it
        # went down are cut off at once, so a lost database is a quick 503, while a merely
        # slow one (a loaded machine) still gets timeout_s.
        self.down = False
        self._running: set[anyio.CancelScope] = set()
        # Set when a connection failed: the pool's idle connections may all be broken (the
        # server restarted), so whoever watches (the liveness keeper) checks them at once
        # instead of letting each fail one request.
        self.trouble = anyio.Event()
        # How many units of work that are not urgent may wait for or hold a connection at
        # once (None: no limit; the pool is too small to reserve any). Made on first use.
        size = int(getattr(raw, "max_size", 0))
        self._ordinary_limit = size - RESERVED if size >= RESERVE_FROM else None
        self._ordinary: anyio.Semaphore | None = None

    def ordinary_waiting(self) -> int:
        """Units of work that are not urgent waiting for the pool to let them in."""
        return 0 if self._ordinary is None else self._ordinary.statistics().tasks_waiting

    def mark_down(self) -> None:
        """The database is unreachable: cut off every unit of work waiting on it."""
        self.down = True
        for scope in list(self._running):
            scope.cancel()

    def mark_up(self) -> None:
        self.down = False

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection for one short unit of work (see the class)."""
        bound = self.down_timeout_s if self.down else self.timeout_s
        scope = aio.cancel_scope(deadline=aio.current_time() + bound)
        ordinary = None
        if self._ordinary_limit is not None and not _urgent.get():
            if self._ordinary is None:
                # fast_acquire: a free slot is taken without yielding a loop round (what
                # anyio does by default, under a shielded scope); a cancel still stops it.
                self._ordinary = anyio.Semaphore(self._ordinary_limit, fast_acquire=True)
            ordinary = self._ordinary
        try:
            with scope:
                self._running.add(scope)
                try:
                    if ordinary is not None:
                        await ordinary.acquire()  # bounded by the scope, like the pool's wait
                    try:
                        async with self.raw.connection(timeout=bound) as conn:
                            yield conn
                    finally:
                        if ordinary is not None:
                            ordinary.release()
                finally:
                    self._running.discard(scope)
        except DatabaseUnavailable:
            raise
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            # OperationalError covers the pool's own PoolTimeout and a dropped connection;
            # IntegrityError and the like are not caught: they are the database's answers.
            self.trouble.set()
            raise DatabaseUnavailable(f"the database is unreachable: {exc}") from exc
        if scope.cancelled_caught:
            self.trouble.set()
            raise DatabaseUnavailable(
                "the database is unreachable"
                if self.down
                else f"the database did not answer within {bound:g} s"
            )

    async def check(self) -> None:
        """Replace the broken idle connections now (bounded like a unit of work)."""
        self.trouble = anyio.Event()
        with anyio.move_on_after(self.timeout_s * 2):
            await self.raw.check()

    def get_stats(self) -> dict[str, int]:
        return self.raw.get_stats()

    async def open(self, wait: bool = False) -> None:
        await self.raw.open(wait=wait)

    async def close(self) -> None:
        await self.raw.close(timeout=self.timeout_s)


def open_pool(conninfo: str, *, min_size: int = 2, max_size: int = 20) -> AsyncConnectionPool[Any]:
    """An (unopened) pool of autocommit connections configured for the store."""

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        configure_connection(conn)

    return AsyncConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        # connect_timeout: a paused server accepts the socket and never answers.
        kwargs={"autocommit": True, "connect_timeout": 2},
        configure=configure,
        # A connection that cannot be made again is given up after 2 s rather than retried
        # with a backoff growing to minutes: the next request that needs one makes a new
        # attempt at once, so the pool is back as soon as the database is.
        reconnect_timeout=2.0,
        open=False,
    )
