"""`turnlog replay`: verify, rebuild and show, against real PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.to_thread
import msgspec
import psycopg
import pytest
from turnlog_reducer import TextDelta, ToolCallReady, ToolCallStarted

from turnlog import replay
from turnlog.db.schema import apply_schema
from turnlog.log import events as ev
from turnlog.log.pool import open_pool
from turnlog.log.projection import ConversationRecord
from turnlog.log.store import Store

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class Filled(msgspec.Struct):
    """What :func:`fill` wrote: ids to poke at, and the conversation after each version."""

    talk: uuid.UUID
    generating: uuid.UUID  # an assistant row still generating in ``talk``
    completed: uuid.UUID  # a completed assistant row in ``talk``
    gone: uuid.UUID  # a deleted conversation
    history: dict[int, ConversationRecord]  # talk's row after each version


async def _fill(url: str) -> Filled:
    pool = open_pool(url, min_size=1, max_size=2)
    await pool.open()
    tick = 0

    def at() -> datetime:
        nonlocal tick
        tick += 1
        return EPOCH + timedelta(seconds=tick)

    try:
        store = Store(pool)
        talk, gone = uuid.uuid4(), uuid.uuid4()
        history: dict[int, ConversationRecord] = {}

        async def append(cid: uuid.UUID, events: Sequence[ev.DomainEvent]) -> None:
            done = await store.append(cid, events)
            if cid == talk and done.conversation is not None:
                history[done.version] = done.conversation

        for cid in (talk, gone):
            created = ev.ConversationCreated(
                at=at(),
                conversation_id=cid,
                owner="alice",
                title="Weather",
                model="demo:default",
                options={"length": 5},
                system_prompt=None,
            )
            await append(cid, [created])
        user1, first, attempt1 = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        await append(
            talk,
            [
                ev.UserMessageSent(at=at(), message_id=user1, seq=1, content="What time is it?"),
                ev.AssistantTurnStarted(
                    at=at(),
                    message_id=first,
                    seq=2,
                    attempt=attempt1,
                    model="demo:default",
                    reply_to=user1,
                ),
            ],
        )
        stream = (TextDelta("Let me check. "), ToolCallStarted("c1", "clock"))
        await append(
            talk,
            [
                ev.TurnCheckpointed(
                    at=at(), message_id=first, attempt=attempt1, events=stream, stream_seq=2
                )
            ],
        )
        await append(
            talk,
            [
                ev.StepCompleted(
                    at=at(),
                    message_id=first,
                    attempt=attempt1,
                    events=(ToolCallReady("c1", {}),),
                    stream_seq=3,
                    finish_reason="tool_calls",
                    usage={"input": 12, "output": 3},
                )
            ],
        )
        second, attempt2 = uuid.uuid4(), uuid.uuid4()
        await append(
            talk,
            [
                ev.ToolResultRecorded(
                    at=at(),
                    message_id=uuid.uuid4(),
                    seq=3,
                    reply_to=first,
                    tool_call_id="c1",
                    tool_name="clock",
                    content="12:00",
                ),
                ev.AssistantTurnStarted(
                    at=at(),
                    message_id=second,
                    seq=4,
                    attempt=attempt2,
                    model="demo:default",
                    reply_to=first,
                ),
            ],
        )
        await append(
            talk,
            [
                ev.TurnCheckpointed(
                    at=at(),
                    message_id=second,
                    attempt=attempt2,
                    events=(TextDelta("It is noon."),),
                    stream_seq=1,
                )
            ],
        )
        await append(talk, [ev.UserMessageEdited(at=at(), message_id=user1, content="Time?")])
        await append(gone, [ev.ConversationDeleted(at=at())])
        return Filled(talk, second, first, gone, history)
    finally:
        await pool.close()


def fill(url: str) -> Filled:
    """Apply the schema and append a small but varied log through the store."""
    apply_schema(url)
    return anyio.run(_fill, url)


def sql(url: str, query: str, params: Sequence[Any] = ()) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(query.encode(), params)


def rows(url: str) -> tuple[list[Any], list[Any]]:
    with psycopg.connect(url) as conn:
        convs = conn.execute("SELECT * FROM conversations ORDER BY id").fetchall()
        msgs = conn.execute("SELECT * FROM messages ORDER BY id").fetchall()
    return convs, msgs


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TURNLOG_DATABASE_URL=url)
    return subprocess.run(
        [sys.executable, "-m", "turnlog.cli", "replay", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_verify_passes_on_a_filled_database(fresh_db: str) -> None:
    """verify finds no drift in rows the store wrote, and counts what it folded."""
    fill(fresh_db)
    report = replay.verify(fresh_db)
    assert report.ok, report.drift
    assert (report.conversations, report.messages, report.events) == (1, 4, 11)
    assert report.summary().startswith("verify: projections match the log")


def test_verify_names_each_altered_field(fresh_db: str) -> None:
    """A row changed by hand is reported by id, field, projection value and log value."""
    filled = fill(fresh_db)
    sql(fresh_db, "UPDATE messages SET status = 'completed' WHERE id = %s", [filled.generating])
    sql(fresh_db, "UPDATE conversations SET title = 'Hacked' WHERE id = %s", [filled.talk])
    report = replay.verify(fresh_db)
    assert not report.ok
    assert report.drift == (
        f"conversation {filled.talk}: title: projection 'Hacked', log 'Weather'",
        f"message {filled.generating} (conversation {filled.talk}, seq 4): "
        "status: projection 'completed', log 'generating'",
    )


def test_verify_reports_missing_and_extra_rows(fresh_db: str) -> None:
    """Rows missing from the projection, rows of deleted conversations and rows with no
    events at all are each reported."""
    filled = fill(fresh_db)
    stray = uuid.uuid4()
    sql(fresh_db, "DELETE FROM messages WHERE id = %s", [filled.completed])
    sql(
        fresh_db,
        "INSERT INTO conversations SELECT %s, owner, title, model, options, system_prompt, "
        "state, version, last_seq, created_at, updated_at FROM conversations WHERE id = %s",
        [stray, filled.talk],
    )
    sql(
        fresh_db,
        "INSERT INTO conversations SELECT %s, owner, title, model, options, system_prompt, "
        "state, 3, last_seq, created_at, updated_at FROM conversations WHERE id = %s",
        [filled.gone, filled.talk],
    )
    drift = "\n".join(replay.verify(fresh_db).drift)
    assert f"message {filled.completed} (conversation {filled.talk}, seq 2): missing" in drift
    assert f"conversation {stray}: in the projection but not in the log" in drift
    assert f"conversation {filled.gone}: in the projection but deleted in the log" in drift


def test_verify_reports_a_gap_in_versions(fresh_db: str) -> None:
    """A log whose versions skip one is reported, not folded past the gap."""
    filled = fill(fresh_db)
    sql(
        fresh_db,
        "INSERT INTO events (conversation_id, version, type, data) "
        "SELECT conversation_id, 20, type, data FROM events "
        "WHERE conversation_id = %s AND version = 9",
        [filled.talk],
    )
    drift = replay.verify(fresh_db).drift
    assert drift == (
        f"conversation {filled.talk}: log versions of conversation {filled.talk} jump from 9 to 20",
    )
    with pytest.raises(replay.ReplayError, match="jump from 9 to 20"):
        replay.rebuild(fresh_db)


def test_rebuild_restores_altered_rows(fresh_db: str) -> None:
    """rebuild writes exactly the rows the store wrote, whatever was done to them since."""
    filled = fill(fresh_db)
    before = rows(fresh_db)
    sql(fresh_db, "UPDATE messages SET blocks = '[]' WHERE id = %s", [filled.completed])
    sql(fresh_db, "DELETE FROM conversations")
    report = replay.rebuild(fresh_db)
    assert (report.conversations, report.messages, report.events) == (1, 4, 11)
    assert rows(fresh_db) == before
    assert replay.verify(fresh_db).ok


def test_rebuild_keeps_leases_and_canonical_names(fresh_db: str) -> None:
    """rebuild replaces only the projections; schema.sql applies again afterwards."""
    filled = fill(fresh_db)
    sql(
        fresh_db,
        "INSERT INTO leases (message_id, attempt, instance_id) VALUES (%s, %s, %s)",
        [filled.generating, uuid.uuid4(), uuid.uuid4()],
    )
    replay.rebuild(fresh_db)
    replay.rebuild(fresh_db)
    apply_schema(fresh_db)
    with psycopg.connect(fresh_db) as conn:
        count = conn.execute("SELECT count(*) FROM leases").fetchone()
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE '%%_rebuild'"
        ).fetchone()
    assert count == (1,)
    assert tables == (0,)
    assert replay.verify(fresh_db).ok


def test_rebuild_while_the_store_appends(fresh_db: str) -> None:
    """Appends running through a rebuild (creations included) neither deadlock nor get
    lost: the swap catches up on them under its lock."""
    fill(fresh_db)

    async def main() -> None:
        pool = open_pool(fresh_db, min_size=4, max_size=4)
        await pool.open()
        store = Store(pool)
        stop = anyio.Event()

        async def writer() -> None:
            while not stop.is_set():
                cid = uuid.uuid4()
                created = ev.ConversationCreated(
                    at=EPOCH,
                    conversation_id=cid,
                    owner="bob",
                    title=None,
                    model="demo:default",
                    options={},
                    system_prompt=None,
                )
                await store.append(cid, [created])
                for i in range(3):
                    await store.append(cid, [ev.ConversationUpdated(at=EPOCH, title=str(i))])

        async def rebuild() -> None:
            try:
                for _ in range(3):
                    await anyio.to_thread.run_sync(replay.rebuild, fresh_db)
            finally:
                stop.set()

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(writer)
                tg.start_soon(rebuild)
        finally:
            await pool.close()

    anyio.run(main)
    report = replay.verify(fresh_db)
    assert report.ok, report.drift
    assert report.conversations > 1


def test_show_folds_up_to_a_version(fresh_db: str) -> None:
    """show --at V gives the conversation exactly as the store left it at version V."""
    filled = fill(fresh_db)
    for version, record in filled.history.items():
        folded = replay.show(fresh_db, filled.talk, version)
        assert folded.version == version
        assert folded.conversation == record
    last = replay.show(fresh_db, filled.talk)
    assert last.version == 9
    assert [m.message.seq for m in last.messages.values()] == [1, 2, 3, 4]
    gone = replay.show(fresh_db, filled.gone)
    assert (gone.deleted, gone.conversation, gone.messages) == (True, None, {})


def test_show_refuses_unknown_ids_and_versions(fresh_db: str) -> None:
    """An id with no events, or a version past the end, is an error naming it."""
    filled = fill(fresh_db)
    nobody = uuid.uuid4()
    with pytest.raises(replay.ReplayError, match=f"conversation {nobody} has no events"):
        replay.show(fresh_db, nobody)
    with pytest.raises(replay.ReplayError, match="has 9 events; --at 10 is beyond the end"):
        replay.show(fresh_db, filled.talk, 10)


def test_cli_verify_rebuild_verify(fresh_db: str) -> None:
    """The CLI exits 1 naming a hand-altered row, rebuild repairs it, verify exits 0."""
    filled = fill(fresh_db)
    ok = cli(fresh_db, "verify")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("verify: projections match the log")
    sql(fresh_db, "UPDATE messages SET status = 'completed' WHERE id = %s", [filled.generating])
    drifted = cli(fresh_db, "verify")
    assert drifted.returncode == 1
    assert (
        f"message {filled.generating} (conversation {filled.talk}, seq 4): "
        "status: projection 'completed', log 'generating'"
    ) in drifted.stdout.splitlines()
    rebuilt = cli(fresh_db, "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert rebuilt.stdout.startswith("rebuild: 1 conversations, 4 messages from 11 events")
    again = cli(fresh_db, "verify")
    assert again.returncode == 0, again.stdout


def test_cli_show(fresh_db: str) -> None:
    """show prints pretty JSON of the rows at a version; bad ids and versions exit 2."""
    filled = fill(fresh_db)
    shown = cli(fresh_db, "show", str(filled.talk), "--at", "3")
    assert shown.returncode == 0, shown.stderr
    doc = msgspec.json.decode(shown.stdout)
    assert doc["version"] == 3
    assert doc["conversation"]["state"] == "generating"
    assert [(m["seq"], m["role"]) for m in doc["messages"]] == [(1, "user"), (2, "assistant")]
    assert doc["messages"][1]["blocks"] == []
    assert shown.stdout.startswith('{\n  "conversation_id"')
    beyond = cli(fresh_db, "show", str(filled.talk), "--at", "99")
    assert beyond.returncode == 2
    assert "--at 99 is beyond the end" in beyond.stderr
    unknown = cli(fresh_db, "show", str(uuid.uuid4()))
    assert (unknown.returncode, unknown.stdout) == (2, "")
    assert "has no events" in unknown.stderr
    garbage = cli(fresh_db, "show", "not-a-uuid")
    assert garbage.returncode == 2
    assert "expected a conversation id" in garbage.stderr


def test_fold_events_in_memory() -> None:
    """fold_events folds JSON events without a database and stops at a gap."""
    cid = uuid.uuid4()
    created = ev.ConversationCreated(
        at=EPOCH,
        conversation_id=cid,
        owner="a",
        title=None,
        model="demo:default",
        options={},
        system_prompt=None,
    )
    renamed = ev.ConversationUpdated(at=EPOCH, title="x")
    folded = replay.fold_events(cid, [(1, ev.encode(created)), (2, ev.encode(renamed).decode())])
    assert folded.conversation is not None
    assert (folded.version, folded.conversation.conversation.title) == (2, "x")
    gap = replay.fold_events(cid, [(1, ev.encode(created)), (3, ev.encode(renamed))])
    assert (gap.version, gap.problem) == (1, f"log versions of conversation {cid} jump from 1 to 3")
