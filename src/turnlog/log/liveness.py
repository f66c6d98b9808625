"""This process's proof of life: its liveness lock, held for as long as the process lives.

An instance proves it is alive by holding a session advisory lock on one dedicated
connection (schema.sql, table ``instances``); its leases name it. The lock goes when the
connection goes: when the process dies (the point), but also when PostgreSQL restarts or
drops the session. :class:`Liveness` keeps it:

* every ``check_s`` it asks the lock connection a trivial question (bounded in time);
* when that fails it says so (``held`` is False: ``/readyz`` answers 503), then connects
  again as soon as the database lets it and takes the same lock key again (another one if
  someone took that key meanwhile, with this instance's row updated), well within
  ``LIVENESS_GRACE_S`` after a restart, the time during which nobody treats a free lock as
  a death (turnlog.log.instances);
* whenever the pool saw a connection fail, it has the pool check its idle connections at
  once, so broken ones are replaced before they fail a request each.

Its own running generations are never orphans in this process's eyes, held lock or not
(``Store.is_orphan(mine=True)``): only another process has to trust the lock.
"""

from __future__ import annotations

import uuid
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

import anyio
import psycopg
import structlog

from turnlog.log.pool import BoundedPool
from turnlog.log.store import Store

log = structlog.get_logger("turnlog.liveness")

# How long the lock connection may take to answer its check before the database counts as
# unreachable (a paused server answers never; a loaded one within a second or so).
CHECK_TIMEOUT_S = 3.0


class Liveness:
    """Holds and re-takes the instance's liveness lock; run :meth:`run` in the app's task
    group between :meth:`start` and :meth:`close`."""

    def __init__(
        self,
        url: str,
        store: Store,
        instance_id: uuid.UUID,
        *,
        check_s: float = 0.5,
    ) -> None:
        self.url = url
        self.store = store
        self.instance_id = instance_id
        self.check_s = check_s
        self.key: int | None = None
        self.held = False
        self._conn: psycopg.AsyncConnection[Any] | None = None

    @property
    def _pool(self) -> BoundedPool:
        return self.store.pool

    async def start(self, now: datetime) -> None:
        """Register the instance and take its lock (at startup: errors propagate)."""
        conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        try:
            self.key = await self.store.register_instance(conn, self.instance_id, now)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        self.held = True

    async def run(self) -> None:
        """Check the lock forever; take it again whenever it was lost."""
        while True:
            with anyio.move_on_after(self.check_s):
                await self._pool.trouble.wait()
            if not await self._still_held():
                self.held = False
                self._pool.mark_down()
                log.warning("liveness lock lost (database restarted or unreachable)")
                await self._retake()
                # Replace the pool's broken connections before saying so (readyz turns 200
                # on `held`): a request right after must not get one of them.
                await self._pool.check()
                log.info("liveness lock taken again", lock_key=self.key)
                self.held = True
                self._pool.mark_up()
            elif self._pool.trouble.is_set():
                await self._pool.check()

    async def _still_held(self) -> bool:
        conn = self._conn
        if conn is None or conn.closed:
            return False
        try:
            with anyio.fail_after(CHECK_TIMEOUT_S):
                await conn.execute("SELECT 1")
        except (TimeoutError, psycopg.Error):
            return False
        return True

    async def _retake(self) -> None:
        """Connect again and take the lock again, trying every ``check_s`` until it works."""
        await self._close_conn()
        while True:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                with anyio.fail_after(CHECK_TIMEOUT_S * 2):
                    conn = await psycopg.AsyncConnection.connect(
                        self.url, autocommit=True, connect_timeout=2
                    )
                    self.key = await self.store.register_instance(
                        conn, self.instance_id, datetime.now(UTC), key=self.key
                    )
                self._conn = conn
                return
            except (TimeoutError, psycopg.Error) as exc:
                log.debug("liveness lock not taken yet", error=str(exc))
                if conn is not None:
                    await _close_quietly(conn)
            await anyio.sleep(self.check_s)

    async def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await _close_quietly(conn)

    async def close(self) -> None:
        """Let the lock go (closing its connection): at shutdown, after the last write."""
        self.held = False
        await self._close_conn()


async def _close_quietly(conn: psycopg.AsyncConnection[Any]) -> None:
    with anyio.CancelScope(shield=True), anyio.move_on_after(1), suppress(psycopg.Error):
        await conn.close()
