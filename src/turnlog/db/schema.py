"""Apply ``schema.sql`` and the numbered migrations, idempotently, at startup."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import psycopg

# Any constant works; it only has to be the same in every turnlog process. Taking it inside
# the transaction makes concurrent starters apply the schema one after the other.
_SCHEMA_LOCK = 0x7475726E6C6F67  # "turnlog"

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def schema_sql() -> str:
    """The text of schema.sql: packaged beside the module, or at the repository root."""
    packaged = resources.files("turnlog").joinpath("schema.sql")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parents[3] / "schema.sql").read_text(encoding="utf-8")


def migrations() -> list[tuple[int, str, str]]:
    """(number, file name, SQL) of every migration, in order."""
    found = []
    for entry in resources.files("turnlog.db.migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def apply_schema(conninfo: str) -> int:
    """Bring the database at ``conninfo`` to the newest schema; return its version."""
    with psycopg.connect(conninfo, autocommit=True) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        conn.execute(schema_sql().encode())
        # Each migration not yet recorded runs, in number order. Checking the set rather than
        # the highest number applied means a migration numbered below one already applied (two
        # branches that landed in the other order) still runs.
        applied = {int(r[0]) for r in conn.execute("SELECT version FROM schema_version")}
        for number, _name, sql in migrations():
            if number in applied:
                continue
            conn.execute(sql.encode())
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))
            applied.add(number)
        return max(applied, default=0)
