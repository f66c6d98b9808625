"""Benchmark of the event store: appends and ``replay rebuild``, each beside a floor.

Run: ``python bench/store.py [--events N] [--seconds S] [--no-fsync]``.

Everything runs against one fresh database on one server: a private ``EmbeddedPostgres``
in a temp dir (fsync on, as ``turnlog serve`` runs it), or the server of
``TURNLOG_DATABASE_URL`` if set (a scratch database is created there and dropped after).

- *append*: ``Store.append`` for S seconds, with 1 and 16 concurrent writers, each on its own
  conversation, playing whole turns (user message + turn start, checkpoints of text,
  completion: 50 events a turn), either one event per append (one transaction each) or a
  whole turn of 50 events per append. Beside it the *COPY floor*: the same event rows
  COPYed from Python into a scratch copy of the ``events`` table, in one transaction -- the
  fastest way to get those rows into that table, without projections.
- *rebuild*: N events (default 1,000,000) of realistic conversations, generated in Python
  and COPYed straight into ``events``; then ``turnlog.replay.rebuild`` folds them all into
  fresh projection tables and swaps them in. Beside it the *scan floor*: a plain
  ``SELECT conversation_id, version, data FROM events`` fetched to the last row through a
  server-side cursor, which any replay must at least do. ``verify`` over the same log is
  shown for reference.

Targets: rebuild >= 50,000 events/s; 16 batched writers >= 40% of the COPY floor's rows/s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import msgspec
import psycopg
from psycopg import sql
from turnlog_reducer import TextDelta, ToolCallDelta, ToolCallReady, ToolCallStarted

from turnlog import replay
from turnlog.db.embedded import EmbeddedPostgres
from turnlog.db.schema import apply_schema
from turnlog.log import events as ev
from turnlog.log.pool import open_pool
from turnlog.log.rows import configure_connection
from turnlog.log.store import Store

TURN = 50  # events per turn: user message, turn start, 47 checkpoints, completion
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
WORDS = [
    "the",
    "log",
    "is",
    "the",
    "truth",
    "and",
    "every",
    "row",
    "is",
    "its",
    "fold",
    "so",
    "a",
    "crash",
    "loses",
    "at",
    "most",
    "one",
    "checkpoint",
    "of",
    "text",
    "while",
    "the",
    "stream",
    "goes",
    "on",
    "for",
    "every",
    "subscriber",
]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- servers and databases -----------------------------------------------------------------


@contextlib.contextmanager
def server(fsync: bool) -> Iterator[tuple[str, str]]:
    """(URL of a server where we may create databases, its description)."""
    external = os.environ.get("TURNLOG_DATABASE_URL")
    if external:
        yield external, "TURNLOG_DATABASE_URL"
        return
    with tempfile.TemporaryDirectory(prefix="turnlog-bench-") as tmp:
        pg = EmbeddedPostgres(Path(tmp), fsync=fsync)
        say(f"starting embedded PostgreSQL in {tmp} ...")
        url = pg.ensure_running()
        try:
            yield url, f"embedded, fsync {'on' if fsync else 'off'}"
        finally:
            pg.stop()


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    name = f"turnlog_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = psycopg.conninfo.make_conninfo(server_url, dbname=name)
    try:
        apply_schema(url)
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


# -- event generation ----------------------------------------------------------------------


def text(i: int, words: int = 8) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(words)) + " "


class Clock:
    def __init__(self) -> None:
        self.t = EPOCH

    def __call__(self) -> datetime:
        self.t += timedelta(milliseconds=7)
        return self.t


def created(cid: uuid.UUID, at: datetime, n: int) -> ev.ConversationCreated:
    return ev.ConversationCreated(
        at=at,
        conversation_id=cid,
        owner=f"user-{n % 97}",
        title=f"Conversation {n}",
        model="demo:default",
        options={"tokens_per_second": 40, "length": 60},
        system_prompt="You are terse.",
    )


def turn(seq: int, clock: Clock, n: int, *, tools: bool = False) -> list[ev.DomainEvent]:
    """One turn of TURN events: a user message, its assistant turn, checkpoints, completion.

    With ``tools`` the turn streams a tool call too (and the completion leaves it open)."""
    user, mid, attempt = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    out: list[ev.DomainEvent] = [
        ev.UserMessageSent(at=clock(), message_id=user, seq=seq, content=text(n, 12)),
        ev.AssistantTurnStarted(
            at=clock(),
            message_id=mid,
            seq=seq + 1,
            attempt=attempt,
            model="demo:default",
            reply_to=user,
        ),
    ]
    stream_seq = 0
    for k in range(TURN - 3):
        chunk: tuple[Any, ...] = (TextDelta(text(n + k)),)
        if tools and k == 0:
            chunk = (ToolCallStarted("call_1", "clock"), ToolCallDelta("call_1", '{"tz": '))
        elif tools and k == 1:
            chunk = (ToolCallDelta("call_1", '"UTC"}'), ToolCallReady("call_1", {"tz": "UTC"}))
        stream_seq += len(chunk)
        out.append(
            ev.TurnCheckpointed(
                at=clock(), message_id=mid, attempt=attempt, events=chunk, stream_seq=stream_seq
            )
        )
    out.append(
        ev.StepCompleted(
            at=clock(),
            message_id=mid,
            attempt=attempt,
            stream_seq=stream_seq,
            finish_reason="stop",
            usage={"input_tokens": 120, "output_tokens": 380},
        )
    )
    return out


def conversation_log(n: int, turns: int) -> list[ev.DomainEvent]:
    """A conversation: created, ``turns`` turns (the second with a tool call answered), a
    rename; every 20th is deleted at the end."""
    cid = uuid.uuid4()
    clock = Clock()
    out: list[ev.DomainEvent] = [created(cid, clock(), n)]
    seq = 1
    for t in range(turns):
        out += turn(seq, clock, n + t, tools=t == 1)
        seq += 2
        if t == 1:
            step = out[-1]
            assert isinstance(step, ev.StepCompleted)
            out.append(
                ev.ToolResultRecorded(
                    at=clock(),
                    message_id=uuid.uuid4(),
                    seq=seq,
                    reply_to=step.message_id,
                    tool_call_id="call_1",
                    tool_name="clock",
                    content="12:00 UTC",
                )
            )
            seq += 1
    out.append(ev.ConversationUpdated(at=clock(), title=f"Renamed {n}"))
    if n % 20 == 0:
        out.append(ev.ConversationDeleted(at=clock()))
    return out


def fill_log(url: str, target: int) -> int:
    """COPY at least ``target`` events of generated conversations into ``events``."""
    started = time.perf_counter()
    written = 0
    n = 0
    with psycopg.connect(url, autocommit=True) as conn:
        while written < target:
            lines: list[str] = []
            while len(lines) < 50_000 and written + len(lines) < target:
                events = conversation_log(n, turns=1 + n % 6)
                cid = events[0].conversation_id  # type: ignore[union-attr]
                for version, event in enumerate(events, 1):
                    data = ev.encode(event).decode()
                    # COPY text format: msgspec escapes control characters inside JSON
                    # strings, so only backslashes need doubling.
                    data = data.replace("\\", "\\\\")
                    lines.append(f"{cid}\t{version}\t{ev.event_type(event)}\t{data}\n")
                n += 1
            with conn.cursor().copy(
                "COPY events (conversation_id, version, type, data) FROM STDIN"
            ) as copy:
                copy.write("".join(lines))
            written += len(lines)
            rate = written / (time.perf_counter() - started)
            say(f"  generated {written:,} events ({rate:,.0f}/s)")
        conn.execute("VACUUM ANALYZE events")
    return written


# -- append --------------------------------------------------------------------------------


class AppendResult(msgspec.Struct):
    writers: int
    batch: int
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds


async def run_appends(url: str, writers: int, batch: int, seconds: float) -> AppendResult:
    pool = open_pool(url, min_size=writers, max_size=writers)
    await pool.open(wait=True)
    store = Store(pool)
    counts = [0] * writers
    deadline = time.perf_counter() + seconds

    async def writer(w: int) -> None:
        cid = uuid.uuid4()
        clock = Clock()
        await store.append(cid, [created(cid, clock(), w)])
        seq, n = 1, 0
        while time.perf_counter() < deadline:
            events = turn(seq, clock, n)
            seq, n = seq + 2, n + 1
            for i in range(0, len(events), batch):
                await store.append(cid, events[i : i + batch])
                counts[w] += len(events[i : i + batch])

    try:
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for w in range(writers):
                tg.start_soon(writer, w)
        elapsed = time.perf_counter() - started
    finally:
        await pool.close()
    return AppendResult(writers, batch, sum(counts), elapsed)


def copy_floor(url: str) -> tuple[int, float]:
    """COPY the event rows the appends wrote into a scratch copy of ``events``: rows/s."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT conversation_id, version, type, data::text, metadata::text FROM events"
        ).fetchall()
        conn.execute("DROP TABLE IF EXISTS events_copy_floor")
        conn.execute("CREATE TABLE events_copy_floor (LIKE events INCLUDING ALL)")
        started = time.perf_counter()
        with (
            conn.transaction(),
            conn.cursor().copy(
                "COPY events_copy_floor (conversation_id, version, type, data, metadata) FROM STDIN"
            ) as copy,
        ):
            for row in rows:
                copy.write_row(row)
        elapsed = time.perf_counter() - started
        conn.execute("DROP TABLE events_copy_floor")
    return len(rows), elapsed


# -- rebuild -------------------------------------------------------------------------------


def scan_floor(url: str) -> tuple[int, float]:
    """Fetch every event row through a server-side cursor, doing nothing with them."""
    with psycopg.connect(url) as conn:
        configure_connection(conn)
        started = time.perf_counter()
        n = 0
        with conn.cursor(name="scan_floor") as cur:
            cur.execute("SELECT conversation_id, version, data FROM events")
            while rows := cur.fetchmany(10_000):
                n += len(rows)
        return n, time.perf_counter() - started


# -- report --------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000, help="events to rebuild")
    p.add_argument("--seconds", type=float, default=4.0, help="duration of each append run")
    p.add_argument("--no-fsync", action="store_true", help="embedded server without fsync")
    args = p.parse_args()

    lines: list[tuple[str, str, str, str, str]] = []
    with server(fsync=not args.no_fsync) as (server_url, where):
        with fresh_database(server_url) as url:
            with psycopg.connect(url) as conn:
                version = conn.execute("SHOW server_version").fetchone()
            appends = []
            for writers in (1, 16):
                for batch in (1, TURN):
                    say(f"append: {writers} writers, {batch} events per append ...")
                    appends.append(anyio.run(run_appends, url, writers, batch, args.seconds))
            say("COPY floor ...")
            copied, copy_s = copy_floor(url)
        copy_rate = copied / copy_s
        for r in appends:
            label = (
                f"append, {r.writers:>2} writer{'s' if r.writers > 1 else ' '}, "
                f"{r.batch:>2} event{'s' if r.batch > 1 else ' '}/append"
            )
            target = ""
            if r.writers == 16 and r.batch > 1:
                target = ">= 40%: " + ("met" if r.rate / copy_rate >= 0.40 else "NOT MET")
            lines.append(
                (
                    label,
                    f"{r.rate:,.0f} ev/s",
                    f"COPY {copy_rate:,.0f} rows/s",
                    f"{r.rate / copy_rate:.0%}",
                    target,
                )
            )

        with fresh_database(server_url) as url:
            say(f"rebuild: generating {args.events:,} events ...")
            total = fill_log(url, args.events)
            say("scan floor ...")
            scanned, scan_s = scan_floor(url)
            say("rebuild ...")
            report = replay.rebuild(url)
            say("verify ...")
            started = time.perf_counter()
            checked = replay.verify(url)
            verify_s = time.perf_counter() - started
            assert checked.ok, checked.drift[:5]
            assert report.events == total == scanned, (report.events, total, scanned)
        scan_rate = scanned / scan_s
        rebuild_rate = report.events / report.seconds
        lines.append(
            (
                f"rebuild, {total:,} events",
                f"{rebuild_rate:,.0f} ev/s",
                f"scan {scan_rate:,.0f} rows/s",
                f"{rebuild_rate / scan_rate:.0%}",
                ">= 50,000 ev/s: " + ("met" if rebuild_rate >= 50_000 else "NOT MET"),
            )
        )
        lines.append(
            (
                f"verify,  {total:,} events",
                f"{total / verify_s:,.0f} ev/s",
                f"scan {scan_rate:,.0f} rows/s",
                f"{total / verify_s / scan_rate:.0%}",
                "",
            )
        )

    cpus = os.cpu_count()
    print(
        f"turnlog store benchmark: PostgreSQL {version[0] if version else '?'} ({where}), "
        f"{cpus} CPUs, {args.seconds:g} s per append run"
    )
    print(
        f"rebuild: {report.conversations:,} conversations, {report.messages:,} messages; "
        f"appends paused {report.locked_seconds * 1000:.0f} ms for the swap"
    )
    header = ("measure", "rate", "floor (same run, same server)", "vs floor", "target")
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(5)]
    for row in [header, tuple("-" * w for w in widths), *lines]:
        print(
            "  ".join(
                cell.ljust(w) if i in (0, 2, 4) else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
