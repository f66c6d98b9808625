"""A PostgreSQL server for the test suite, and a fresh empty database per test.

``tests/conftest.py`` wraps these as fixtures. The server is external when
``TURNLOG_TEST_DATABASE_URL`` names a database on a server where we may CREATE DATABASE (CI
runs the storage tests a second time against a system PostgreSQL that way); otherwise it is
an ``EmbeddedPostgres`` in a session temp dir, with fsync off for speed.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from turnlog.db.embedded import EmbeddedPostgres

EXTERNAL_URL_ENV = "TURNLOG_TEST_DATABASE_URL"


def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Yield a URL of a server where we may create databases; stop it afterwards if ours."""
    external = os.environ.get(EXTERNAL_URL_ENV)
    if external:
        yield external
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("postgres"), fsync=False)
    try:
        yield server.ensure_running()
    finally:
        server.stop()


def with_database(url: str, database: str) -> str:
    """``url`` with its database replaced; URLs stay URLs, ``key=value`` strings stay so."""
    if url.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(url)
        return urlunsplit(parts._replace(path=f"/{database}"))
    return make_conninfo(url, dbname=database)


@contextlib.contextmanager
def fresh_database(server: str) -> Iterator[str]:
    """Create a uniquely named empty database on ``server``, yield its URL, then drop it.

    ``TEMPLATE template0`` with UTF8 and the C locale gives the same empty database on any
    server, whatever its defaults or what ``template1`` has accumulated.
    """
    name = f"turnlog_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
            ).format(sql.Identifier(name))
        )
    try:
        yield with_database(server, name)
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            # FORCE (PostgreSQL 13+) ends sessions a failed test left open.
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
