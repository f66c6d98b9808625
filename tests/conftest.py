"""Shared pytest setup: Hypothesis profiles (`dev` locally, `ci` under CI=true) and the
PostgreSQL fixtures every storage and end-to-end test uses (see tests/pg.py)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests import pg
from turnlog.db.schema import apply_schema
from turnlog.log.pool import open_pool
from turnlog.log.store import Store

settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
# The long fuzz (tests/e2e/test_fuzz_http.py): HYPOTHESIS_PROFILE=fuzz.
settings.register_profile(
    "fuzz",
    max_examples=10_000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server for the whole session (embedded, or TURNLOG_TEST_DATABASE_URL)."""
    yield from pg.server_url(tmp_path_factory)


@pytest.fixture
def fresh_db(pg_server: str) -> Iterator[str]:
    """The URL of a new, empty database (no schema), dropped after the test."""
    with pg.fresh_database(pg_server) as url:
        yield url


@pytest.fixture
async def store(fresh_db: str) -> AsyncIterator[Store]:
    """A store on a fresh database with the schema applied (the in-process tests)."""
    apply_schema(fresh_db)
    pool = open_pool(fresh_db, min_size=1, max_size=4)
    await pool.open()
    try:
        yield Store(pool)
    finally:
        await pool.close()
