"""The two ways of ``Store.append`` (guarded and locked) against real PostgreSQL.

Two stores on one database stand for two server processes: each remembers the rows it wrote
last and appends onto them with one guarded statement, so whatever the other one writes
makes it stale. A stale store must never write over the other's work nor judge a batch on
stale rows: the guard misses, and the locked way decides on what is committed.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from turnlog_reducer import TextDelta, ToolCallDelta, ToolCallStarted

from turnlog import replay
from turnlog.db.schema import apply_schema
from turnlog.errors import AlreadyStored, ConversationBusy, Fenced, InvalidEvent, VersionConflict
from turnlog.log import events as ev
from turnlog.log.pool import open_pool
from turnlog.log.store import Store

pytestmark = pytest.mark.anyio

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self) -> None:
        self.t = EPOCH

    def __call__(self) -> datetime:
        self.t += timedelta(seconds=1)
        return self.t


@pytest.fixture
async def stores(fresh_db: str) -> AsyncIterator[tuple[Store, Store, str]]:
    apply_schema(fresh_db)
    pool = open_pool(fresh_db, min_size=1, max_size=4)
    await pool.open()
    try:
        yield Store(pool), Store(pool), fresh_db
    finally:
        await pool.close()


async def started_turn(store: Store, clock: Clock) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """A conversation with a user message and a generating assistant row, written by
    ``store`` (which now remembers them): (conversation, assistant row, its attempt)."""
    cid, user, mid, attempt = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    created = ev.ConversationCreated(
        at=clock(),
        conversation_id=cid,
        owner="alice",
        title="t",
        model="demo:default",
        options={},
        system_prompt=None,
    )
    await store.append(cid, [created])
    await store.append(
        cid,
        [
            ev.UserMessageSent(at=clock(), message_id=user, seq=1, content="hi"),
            ev.AssistantTurnStarted(
                at=clock(), message_id=mid, seq=2, attempt=attempt, model="demo:default"
            ),
        ],
    )
    return cid, mid, attempt


def checkpoint(
    clock: Clock,
    mid: uuid.UUID,
    attempt: uuid.UUID,
    seq: int,
    *events: ev.StreamEvent,
    from_seq: int | ev.UnsetType = ev.UNSET,
) -> ev.TurnCheckpointed:
    return ev.TurnCheckpointed(
        at=clock(),
        message_id=mid,
        attempt=attempt,
        events=events,
        stream_seq=seq,
        from_seq=from_seq,
    )


def versions(url: str, cid: uuid.UUID) -> list[int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT version FROM events WHERE conversation_id = %s ORDER BY position", (cid,)
        ).fetchall()
    return [v for (v,) in rows]


async def test_a_stale_store_is_fenced_by_what_the_other_committed(
    stores: tuple[Store, Store, str],
) -> None:
    """B (another process) interrupts A's row. A's late checkpoint, folded onto A's stale
    rows, would pass; it must be fenced and leave no trace."""
    a, b, url = stores
    clock = Clock()
    cid, mid, attempt = await started_turn(a, clock)
    await a.append(cid, [checkpoint(clock, mid, attempt, 1, TextDelta("one "))])
    await b.append(
        cid,
        [
            ev.TurnInterrupted(
                at=clock(), message_id=mid, attempt=None, stream_seq=1, reason="shutdown"
            )
        ],
    )
    with pytest.raises(Fenced):
        await a.append(cid, [checkpoint(clock, mid, attempt, 2, TextDelta("two "))])
    assert versions(url, cid) == [1, 2, 3, 4, 5]
    row = await a.get_message(mid)
    assert row is not None
    assert row.message.status == "interrupted"
    assert [getattr(x, "text", None) for x in row.message.blocks] == ["one "]
    assert replay.verify(url).ok


async def test_a_stale_store_does_not_refuse_what_is_now_allowed(
    stores: tuple[Store, Store, str],
) -> None:
    """A still remembers the conversation generating; B finished the turn. A send judged
    on A's rows would be ConversationBusy; judged on the committed rows it is fine."""
    a, b, url = stores
    clock = Clock()
    cid, mid, attempt = await started_turn(a, clock)
    await b.append(
        cid, [ev.StepCompleted(at=clock(), message_id=mid, attempt=attempt, stream_seq=0)]
    )
    sent = await a.append(
        cid, [ev.UserMessageSent(at=clock(), message_id=uuid.uuid4(), seq=3, content="again")]
    )
    assert sent.version == 5
    assert versions(url, cid) == [1, 2, 3, 4, 5]
    # And the other way round: now B is the stale one and a busy conversation is refused.
    await a.append(
        cid,
        [
            ev.AssistantTurnStarted(
                at=clock(), message_id=uuid.uuid4(), seq=4, attempt=uuid.uuid4(), model="m"
            )
        ],
    )
    with pytest.raises(ConversationBusy):
        await b.append(
            cid, [ev.UserMessageSent(at=clock(), message_id=uuid.uuid4(), seq=5, content="x")]
        )
    assert replay.verify(url).ok


async def test_a_stale_store_folds_onto_the_committed_blocks(
    stores: tuple[Store, Store, str],
) -> None:
    """B checkpoints a tool call A never saw; A's next checkpoint names it. On A's stale
    blocks that is a protocol error; on the committed ones it is valid and lands after B's."""
    a, b, url = stores
    clock = Clock()
    cid, mid, attempt = await started_turn(a, clock)
    await a.append(cid, [checkpoint(clock, mid, attempt, 1, TextDelta("look: "))])
    await b.append(cid, [checkpoint(clock, mid, attempt, 2, ToolCallStarted("c1", "clock"))])
    await a.append(cid, [checkpoint(clock, mid, attempt, 3, ToolCallDelta("c1", "{}"))])
    row = await b.get_message(mid)
    assert row is not None
    assert row.stream_seq == 3
    assert [type(x).__name__ for x in row.message.blocks] == ["TextBlock", "ToolCallBlock"]
    assert versions(url, cid) == [1, 2, 3, 4, 5, 6]
    assert replay.verify(url).ok


async def test_expected_version_is_checked_against_the_committed_version(
    stores: tuple[Store, Store, str],
) -> None:
    a, b, url = stores
    clock = Clock()
    cid, _, _ = await started_turn(a, clock)  # version 3, remembered by A
    await b.append(cid, [ev.ConversationUpdated(at=clock(), title="by b")], expected_version=3)
    with pytest.raises(VersionConflict):
        await a.append(cid, [ev.ConversationUpdated(at=clock(), title="by a")], expected_version=3)
    done = await a.append(
        cid, [ev.ConversationUpdated(at=clock(), title="by a")], expected_version=4
    )
    assert done.conversation is not None
    assert done.conversation.conversation.title == "by a"
    assert versions(url, cid) == [1, 2, 3, 4, 5]


async def test_a_run_of_checkpoints_is_checked_event_by_event(
    stores: tuple[Store, Store, str],
) -> None:
    """A batch of checkpoints folds as one, but each is still checked: a stream seq going
    back in the middle of the run refuses the whole batch."""
    a, _, url = stores
    clock = Clock()
    cid, mid, attempt = await started_turn(a, clock)
    bad = [
        checkpoint(clock, mid, attempt, 2, TextDelta("a"), TextDelta("b")),
        checkpoint(clock, mid, attempt, 1, TextDelta("c")),
    ]
    with pytest.raises(InvalidEvent):
        await a.append(cid, bad)
    good = [
        checkpoint(clock, mid, attempt, 1, TextDelta("a")),
        checkpoint(clock, mid, attempt, 1),
        checkpoint(clock, mid, attempt, 3, TextDelta("b"), ToolCallStarted("c1", "clock")),
    ]
    done = await a.append(cid, good)
    assert [v for v, _ in done.events] == [4, 5, 6]
    (row,) = done.messages
    assert row.stream_seq == 3
    assert versions(url, cid) == [1, 2, 3, 4, 5, 6]
    assert replay.verify(url).ok


async def test_nul_is_refused_before_any_sql(stores: tuple[Store, Store, str]) -> None:
    a, _, url = stores
    clock = Clock()
    cid, _, _ = await started_turn(a, clock)
    with pytest.raises(InvalidEvent, match="NUL"):
        await a.append(cid, [ev.ConversationUpdated(at=clock(), title="a\x00b")])
    # An escaped backslash before "u0000" is text, not NUL.
    done = await a.append(cid, [ev.ConversationUpdated(at=clock(), title="a\\u0000b")])
    assert done.conversation is not None
    assert done.conversation.conversation.title == "a\\u0000b"
    assert versions(url, cid) == [1, 2, 3, 4]


@pytest.mark.parametrize("repeater", ["same store", "other store"])
async def test_a_checkpoint_sent_again_is_recognised(
    stores: tuple[Store, Store, str], repeater: str
) -> None:
    """A worker whose write failed cannot tell whether it committed, so it sends the very
    same checkpoint again. The store knows the repeat by its from_seq and refuses it with
    AlreadyStored, leaving the text stored once; any other overlap or gap is refused."""
    a, b, url = stores
    clock = Clock()
    cid, mid, attempt = await started_turn(a, clock)
    first = checkpoint(clock, mid, attempt, 2, TextDelta("Hel"), TextDelta("lo"), from_seq=0)
    await a.append(cid, [first])
    again = a if repeater == "same store" else b
    with pytest.raises(AlreadyStored):
        await again.append(cid, [first])
    for wrong in (
        checkpoint(clock, mid, attempt, 3, TextDelta("Hello!"), from_seq=0),  # overlaps
        checkpoint(clock, mid, attempt, 4, TextDelta("!"), from_seq=3),  # leaves a gap
    ):
        with pytest.raises(InvalidEvent):
            await again.append(cid, [wrong])
    await again.append(cid, [checkpoint(clock, mid, attempt, 3, TextDelta("!"), from_seq=2)])
    row = await a.get_message(mid)
    assert row is not None
    assert [getattr(x, "text", None) for x in row.message.blocks] == ["Hello!"]
    assert versions(url, cid) == [1, 2, 3, 4, 5]
    assert replay.verify(url).ok


@pytest.mark.parametrize("writer", ["remembering store", "other store"])
async def test_a_client_message_id_sent_twice_is_the_callers_to_judge(
    stores: tuple[Store, Store, str], writer: str
) -> None:
    """The unique client_message_id key surfaces as itself (the send command answers the
    first send again), whichever way the append went, not as a version conflict."""
    a, b, url = stores
    clock = Clock()
    cid, mid, attempt = await started_turn(a, clock)
    await a.append(
        cid, [ev.StepCompleted(at=clock(), message_id=mid, attempt=attempt, stream_seq=0)]
    )
    first = ev.UserMessageSent(
        at=clock(), message_id=uuid.uuid4(), seq=3, content="once", client_message_id="k"
    )
    await a.append(cid, [first])
    again = ev.UserMessageSent(
        at=clock(), message_id=uuid.uuid4(), seq=4, content="once", client_message_id="k"
    )
    with pytest.raises(psycopg.errors.UniqueViolation):
        await (a if writer == "remembering store" else b).append(cid, [again])
    assert versions(url, cid) == [1, 2, 3, 4, 5]


async def test_batched_checkpoints_land_together_and_alone_with_appends_outcomes(
    stores: tuple[Store, Store, str],
) -> None:
    """append_checkpoints stores many rows' checkpoints in one transaction, with
    the outcome append would give each: a row another writer moved goes the locked way and
    lands after its work, a fenced row gets Fenced and no trace, a re-sent batch (its
    answer lost) answers AlreadyStored."""
    a, b, url = stores
    clock = Clock()
    turns = [await started_turn(a, clock) for _ in range(4)]
    moved, fenced = turns[1], turns[2]
    # B moves one conversation (A's memory of it is now stale) and ends another's row.
    await b.append(moved[0], [checkpoint(clock, moved[1], moved[2], 1, TextDelta("b "))])
    await b.append(
        fenced[0],
        [
            ev.TurnInterrupted(
                at=clock(), message_id=fenced[1], attempt=None, stream_seq=0, reason="gone"
            )
        ],
    )
    # Each names the stream seq it continues (from_seq), as the engine's do.
    batch = [
        (cid, checkpoint(clock, mid, attempt, 1, TextDelta("a "), from_seq=0))
        for cid, mid, attempt in turns
    ]
    batch[1] = (moved[0], checkpoint(clock, moved[1], moved[2], 2, TextDelta("a "), from_seq=1))
    results = await a.append_checkpoints(batch)
    assert [type(r).__name__ for r in results] == ["NoneType", "NoneType", "Fenced", "NoneType"]
    for cid, mid, _ in turns:
        row = await a.get_message(mid)
        assert row is not None
        text = "".join(getattr(x, "text", "") for x in row.message.blocks)
        if cid == moved[0]:
            assert text == "b a "  # after B's, not over it
        elif cid == fenced[0]:
            assert text == ""
            assert row.message.status == "interrupted"
        else:
            assert text == "a "
            assert versions(url, cid) == [1, 2, 3, 4]
    again = await a.append_checkpoints([batch[0], batch[3]])
    assert all(isinstance(r, AlreadyStored) for r in again)
    assert versions(url, turns[0][0]) == [1, 2, 3, 4]
