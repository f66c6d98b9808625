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
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import psycopg
from psycopg_pool import AsyncConnectionPool

# Seconds a client should wait before trying again (the Retry-After of a 503).
RETRY_AFTER_S = 2


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
        scope = anyio.CancelScope(deadline=anyio.current_time() + bound)
        try:
            with scope:
                self._running.add(scope)
                try:
                    async with self.raw.connection(timeout=bound) as conn:
                        yield conn
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
