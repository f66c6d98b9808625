"""Migration 0004: conversations stored before versions become one path, unchanged to read."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import anyio
import psycopg
from turnlog_reducer import TextDelta, ToolCallReady, ToolCallStarted

from turnlog import replay
from turnlog.db.schema import apply_schema
from turnlog.log import events as ev
from turnlog.log import tree
from turnlog.log.pool import open_pool
from turnlog.log.store import Store

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


async def _conversation(url: str) -> tuple[uuid.UUID, list[tuple[object, ...]]]:
    """A conversation with a plain turn and a tool turn, written through the store with
    events that name no parent (as every event before versions); its API rows."""
    pool = open_pool(url, min_size=1, max_size=2)
    await pool.open()
    try:
        store = Store(pool)
        cid, clock = uuid.uuid4(), iter(range(1000))

        def at() -> datetime:
            return EPOCH + timedelta(seconds=next(clock))

        await store.append(
            cid,
            [
                ev.ConversationCreated(
                    at=at(),
                    conversation_id=cid,
                    owner="alice",
                    title=None,
                    model="demo:default",
                    options={},
                    system_prompt=None,
                )
            ],
        )
        seq = 0
        for content, tool in (("hello", False), ("time?", True)):
            user, answer, attempt = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
            await store.append(
                cid,
                [
                    ev.UserMessageSent(at=at(), message_id=user, seq=seq + 1, content=content),
                    ev.AssistantTurnStarted(
                        at=at(),
                        message_id=answer,
                        seq=seq + 2,
                        attempt=attempt,
                        model="demo:default",
                        reply_to=user,
                    ),
                ],
            )
            seq += 2
            if not tool:
                await store.append(
                    cid,
                    [
                        ev.StepCompleted(
                            at=at(),
                            message_id=answer,
                            attempt=attempt,
                            events=(TextDelta("hi"),),
                            stream_seq=1,
                        )
                    ],
                )
                continue
            calls = (ToolCallStarted("t1", "clock"), ToolCallReady("t1", {}))
            nxt, attempt2 = uuid.uuid4(), uuid.uuid4()
            await store.append(
                cid,
                [
                    ev.StepCompleted(
                        at=at(), message_id=answer, attempt=attempt, events=calls, stream_seq=2
                    ),
                    ev.ToolResultRecorded(
                        at=at(),
                        message_id=uuid.uuid4(),
                        seq=seq + 1,
                        reply_to=answer,
                        tool_call_id="t1",
                        tool_name="clock",
                        content="noon",
                    ),
                    ev.AssistantTurnStarted(
                        at=at(),
                        message_id=nxt,
                        seq=seq + 2,
                        attempt=attempt2,
                        model="demo:default",
                        reply_to=user,
                    ),
                    ev.StepCompleted(
                        at=at(),
                        message_id=nxt,
                        attempt=attempt2,
                        events=(TextDelta("noon"),),
                        stream_seq=1,
                    ),
                ],
            )
            seq += 2
        rows = await store.list_messages(cid)
        conv = await store.get_conversation(cid)
        assert conv is not None
        assert tree.active(conv, rows) == rows
        return cid, [(r.message.id, r.message.parent_id) for r in rows]
    finally:
        await pool.close()


def test_migration_makes_each_row_follow_the_one_before(fresh_db: str) -> None:
    """Rows stored before versions (no parent, no tree) get each the row before as parent
    and the last row as active leaf: the same rows as before, equal to the fold of their
    log (replay verify), and the API shows all of them as it did."""
    apply_schema(fresh_db)
    cid, rows = anyio.run(_conversation, fresh_db)
    assert [p for _, p in rows] == [None] + [m for m, _ in rows[:-1]]
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        # Back to what a database from before versions holds, and 0004 unapplied.
        conn.execute("UPDATE messages SET parent_id = NULL")
        conn.execute(
            "UPDATE conversations SET active_leaf_id = NULL, leaf_seq = 0, last_id = NULL,"
            " tree = '{}'"
        )
        conn.execute("DELETE FROM schema_version WHERE version = 4")
        assert not replay.verify(fresh_db).ok
    apply_schema(fresh_db)
    report = replay.verify(fresh_db)
    assert report.ok, "\n".join(report.drift)
    with psycopg.connect(fresh_db) as conn:
        found = conn.execute(
            "SELECT id, parent_id FROM messages WHERE conversation_id = %s ORDER BY seq", (cid,)
        ).fetchall()
        leaf = conn.execute(
            "SELECT active_leaf_id FROM conversations WHERE id = %s", (cid,)
        ).fetchone()
    assert [tuple(r) for r in found] == rows
    assert leaf == (rows[-1][0],)
