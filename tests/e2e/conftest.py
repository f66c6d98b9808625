"""Fixtures of the end-to-end suite: fresh databases and ``turnlog serve`` processes.

``server`` is one process per test module (tests that do not kill it share it);
``spawn`` starts processes owned by one test (crash and shutdown tests), each on its own
database unless told otherwise. On a failure the output of every server touched by the test
is printed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from .support import Server

# The local cluster used when tests/conftest.py does not provide ``pg_server``.
FALLBACK_PG = os.environ.get(
    "TURNLOG_TEST_PG", "postgresql://postgres@/postgres?host=/tmp/pgt/sock"
)

# Every server started in this session, so a failing test can print what they logged.
_started: list[Server] = []


def _admin_url(request: pytest.FixtureRequest) -> str:
    try:
        url = request.getfixturevalue("pg_server")
    except pytest.FixtureLookupError:
        return FALLBACK_PG
    return str(url)


def _with_dbname(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


class Databases:
    """Creates empty databases on one cluster and drops them at the end."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.names: list[str] = []

    def create(self) -> str:
        name = f"e2e_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.names.append(name)
        return _with_dbname(self.admin_url, name)

    def drop_all(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for name in self.names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.names.clear()


@pytest.fixture(scope="module")
def databases(request: pytest.FixtureRequest) -> Iterator[Databases]:
    dbs = Databases(_admin_url(request))
    yield dbs
    dbs.drop_all()


def _make_server(
    databases: Databases, tmp: Path, env: dict[str, str], database_url: str | None
) -> Server:
    data_dir = tmp / f"data-{uuid.uuid4().hex[:6]}"
    data_dir.mkdir()
    server = Server(
        database_url=database_url or databases.create(),
        data_dir=data_dir,
        log_path=data_dir / "server.log",
        env_overrides=env,
    )
    _started.append(server)
    return server


@pytest.fixture(scope="module")
def server(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One running server for the module, on its own fresh database."""
    tmp = tmp_path_factory.mktemp("server")
    srv = _make_server(databases, tmp, {}, None).start()
    yield srv
    srv.terminate(timeout=15)


@pytest.fixture
def spawn(databases: Databases, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """``spawn(env={...}, database_url=None)``: a not yet started server owned by the test."""
    mine: list[Server] = []

    def make(env: dict[str, str] | None = None, database_url: str | None = None) -> Server:
        srv = _make_server(databases, tmp_path, env or {}, database_url)
        mine.append(srv)
        return srv

    yield make
    for srv in mine:
        srv.kill()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(autouse=True)
def _server_logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print what every server wrote during a failed test."""
    marks = {id(s): s.log_size() for s in _started}
    yield
    failed = any(
        getattr(request.node, f"rep_{when}", None) is not None
        and getattr(request.node, f"rep_{when}").failed
        for when in ("setup", "call")
    )
    if not failed:
        return
    for srv in _started:
        start = marks.get(id(srv), 0)
        text = srv.log(start)
        if text:
            print(f"----- server {srv.url} ({srv.data_dir}) -----\n{text[-20000:]}")
