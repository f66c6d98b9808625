"""Fixtures of the chat product's in-process tests: a store on a fresh PostgreSQL database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from turnlog.db.schema import apply_schema
from turnlog.log.pool import open_pool
from turnlog.log.store import Store


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def store(fresh_db: str) -> AsyncIterator[Store]:
    """A store on a fresh database with the schema applied."""
    apply_schema(fresh_db)
    pool = open_pool(fresh_db, min_size=1, max_size=4)
    await pool.open()
    try:
        yield Store(pool)
    finally:
        await pool.close()
