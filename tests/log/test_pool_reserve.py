"""The pool keeps connections for durability: with every ordinary connection
taken and more ordinary work queued behind them, a unit of work run ``urgently`` (the
engine's checkpoints and step ends) still gets a connection at once, and the queued
ordinary work goes on once the holders let go.

Real PostgreSQL, a real psycopg pool; no timing: the urgent unit must finish while the
ordinary holders are still held, which cannot happen if it waits behind them.
"""

from __future__ import annotations

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from turnlog.log.pool import RESERVE_FROM, RESERVED, BoundedPool, open_pool, urgently


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_urgent_work_gets_a_reserved_connection_while_ordinary_work_queues(
    fresh_db: str,
) -> None:
    size = RESERVE_FROM
    raw = open_pool(fresh_db, min_size=1, max_size=size)
    await raw.open()
    pool = BoundedPool(raw, timeout_s=60.0)
    release = anyio.Event()
    all_held = anyio.Event()
    holding = 0

    async def hold() -> None:
        nonlocal holding
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
            holding += 1
            if holding == size - RESERVED:
                all_held.set()
            await release.wait()

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(size - RESERVED):
                tg.start_soon(hold)
            await all_held.wait()
            # More ordinary work than the pool has connections left: it queues (without
            # the reserve it would take them, and the urgent work below would wait).
            for _ in range(RESERVED):
                tg.start_soon(hold)
            await wait_all_tasks_blocked()
            assert pool.ordinary_waiting() == RESERVED
            with urgently():
                async with pool.connection() as a, pool.connection() as b:
                    for conn in (a, b)[:RESERVED]:
                        cur = await conn.execute("SELECT 42")
                        assert await cur.fetchone() == (42,)
            assert holding == size - RESERVED  # the urgent work did not wait for them
            release.set()
        assert holding == size  # and the queued ordinary work ran once they let go
    finally:
        await raw.close()


@pytest.mark.anyio
async def test_a_small_pool_reserves_nothing(fresh_db: str) -> None:
    raw = open_pool(fresh_db, min_size=1, max_size=2)
    await raw.open()
    pool = BoundedPool(raw, timeout_s=60.0)
    try:
        async with pool.connection() as a, pool.connection() as b:
            await a.execute("SELECT 1")
            await b.execute("SELECT 1")
    finally:
        await raw.close()
