"""Group commit: concurrent guarded appends of different conversations go to
PostgreSQL together, in one statement, each conversation under its own version guard; and
the rows a store remembers for the send path (its idle conversations, their exact history).

Real PostgreSQL; two stores with their own pools stand for two server processes.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import psycopg
import pytest
from turnlog_reducer import TextDelta

from tests.log.test_store_ways import Clock, checkpoint, started_turn, versions
from turnlog import replay
from turnlog.db.schema import apply_schema
from turnlog.errors import Fenced, InvalidEvent
from turnlog.log import events as ev
from turnlog.log.pool import open_pool
from turnlog.log.store import Store

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def two(fresh_db: str) -> AsyncIterator[tuple[Store, Store, str]]:
    apply_schema(fresh_db)
    pa = open_pool(fresh_db, min_size=1, max_size=6)
    pb = open_pool(fresh_db, min_size=1, max_size=6)
    await pa.open()
    await pb.open()
    try:
        yield Store(pa), Store(pb), fresh_db
    finally:
        await pa.close()
        await pb.close()


def completed(clock: Clock, mid: uuid.UUID, attempt: uuid.UUID) -> ev.StepCompleted:
    return ev.StepCompleted(at=clock(), message_id=mid, attempt=attempt, stream_seq=0)


async def gather(*calls: object) -> list[object]:
    """Run the awaitables ``calls`` concurrently; each result or the exception it raised."""
    out: list[object] = [None] * len(calls)

    async def one(i: int, call: object) -> None:
        try:
            out[i] = await call  # type: ignore[misc]
        except Exception as exc:
            out[i] = exc

    async with anyio.create_task_group() as tg:
        for i, call in enumerate(calls):
            tg.start_soon(one, i, call)
    return out


async def test_concurrent_appends_go_together_and_a_failed_guard_goes_alone(
    two: tuple[Store, Store, str],
) -> None:
    """Thirty appends at once to thirty conversations: a few group writes carry them all.
    The conversations B moved meanwhile fail A's guard, write nothing in the group, and go
    the locked way after B's work; the others commit in the group."""
    a, b, url = two
    clock = Clock()
    turns = [await started_turn(a, clock) for _ in range(30)]
    moved = turns[::7]
    for cid, mid, attempt in moved:
        await b.append(cid, [checkpoint(clock, mid, attempt, 1, TextDelta("b "))])
    writes, items = a.group_writes, a.group_items
    results = await gather(
        *(
            a.append(cid, [checkpoint(clock, mid, attempt, 2, TextDelta("a "))])
            for cid, mid, attempt in turns
        )
    )
    assert all(not isinstance(r, Exception) for r in results), results
    assert a.group_items - items == 30
    assert a.group_writes - writes <= 10, "the appends were not grouped"
    for turn in turns:
        row = await a.get_message(turn[1])
        assert row is not None
        text = "".join(getattr(x, "text", "") for x in row.message.blocks)
        if turn in moved:  # after B's work, not over it
            assert (text, versions(url, turn[0])) == ("b a ", [1, 2, 3, 4, 5])
        else:
            assert (text, versions(url, turn[0])) == ("a ", [1, 2, 3, 4])
    assert replay.verify(url).ok


async def test_one_bad_append_in_a_group_fails_alone(two: tuple[Store, Store, str]) -> None:
    """A group write whose one item breaks a key the fold cannot see (a client_message_id
    sent twice) fails as a whole; each item goes again by itself: that one gets the unique
    violation (no trace of it), the others commit."""
    a, _, url = two
    clock = Clock()
    turns = [await started_turn(a, clock) for _ in range(12)]
    for cid, mid, attempt in turns:
        await a.append(cid, [completed(clock, mid, attempt)])
    bad = turns[5][0]
    await a.append(
        bad,
        [
            ev.UserMessageSent(
                at=clock(), message_id=uuid.uuid4(), seq=3, content="x", client_message_id="k"
            )
        ],
    )

    def send(cid: uuid.UUID) -> ev.UserMessageSent:
        seq = 4 if cid == bad else 3
        return ev.UserMessageSent(
            at=clock(), message_id=uuid.uuid4(), seq=seq, content="x", client_message_id="k"
        )

    results = await gather(*(a.append(cid, [send(cid)]) for cid, _, _ in turns))
    for (cid, _, _), r in zip(turns, results, strict=True):
        if cid == bad:
            assert isinstance(r, psycopg.errors.UniqueViolation), r
            assert versions(url, cid) == [1, 2, 3, 4, 5]
        else:
            assert not isinstance(r, Exception), r
            assert versions(url, cid) == [1, 2, 3, 4, 5]
    assert replay.verify(url).ok


async def test_two_stores_interleaving_on_the_same_conversations(
    two: tuple[Store, Store, str],
) -> None:
    """Two processes append to the same twenty conversations at once, round after round,
    each in groups (locking many conversation rows per statement): no deadlock, no lost or
    doubled event, and the projection is the fold of the log."""
    a, b, url = two
    clock = Clock()
    turns = [await started_turn(a, clock) for _ in range(20)]
    for cid, mid, attempt in turns[::2]:  # B knows half of them first-hand
        await b.append(cid, [checkpoint(clock, mid, attempt, 1, TextDelta("."))])
    seqs = {mid: 1 for _, mid, _ in turns}

    async def one(store: Store, cid: uuid.UUID, mid: uuid.UUID, attempt: uuid.UUID) -> None:
        for _ in range(5):
            try:
                # No from_seq: an append at whatever the stream seq is (both may win).
                seqs[mid] += 1
                await store.append(
                    cid, [checkpoint(clock, mid, attempt, seqs[mid], TextDelta("x"))]
                )
                return
            except InvalidEvent:  # a stream seq the other store passed: a new one
                continue
        raise AssertionError("five tries failed")

    for _ in range(4):
        calls = [one(s, cid, mid, att) for cid, mid, att in turns for s in (a, b)]
        results = await gather(*calls)
        assert not [r for r in results if isinstance(r, Exception)], results
    for cid, mid, _ in turns:
        vs = versions(url, cid)
        assert vs == list(range(1, len(vs) + 1))
        row = await a.get_message(mid)
        assert row is not None
        text = "".join(getattr(x, "text", "") for x in row.message.blocks)
        assert text.count("x") == 8  # 4 rounds x 2 stores, each landed once
    assert replay.verify(url).ok


async def test_batched_checkpoints_lock_in_one_order_across_stores(
    two: tuple[Store, Store, str],
) -> None:
    """append_checkpoints of two processes over the same conversations, in opposite item
    orders, at once: one statement each, row locks in id order, so no deadlock; a row
    ended by the other first answers Fenced."""
    a, b, url = two
    clock = Clock()
    turns = [await started_turn(a, clock) for _ in range(40)]
    for cid, mid, attempt in turns:  # B remembers them too
        await b.append(cid, [checkpoint(clock, mid, attempt, 1, TextDelta("b"))])
    for r in range(3):
        ka = [(cid, checkpoint(clock, mid, att, 10 + r, TextDelta("a"))) for cid, mid, att in turns]
        kb = [(cid, checkpoint(clock, mid, att, 20 + r, TextDelta("b"))) for cid, mid, att in turns]
        results = await gather(a.append_checkpoints(ka), b.append_checkpoints(kb[::-1]))
        for res in results:
            assert isinstance(res, list), res
            assert all(x is None or isinstance(x, Exception) for x in res)
            assert not [x for x in res if isinstance(x, psycopg.Error)], res
    assert replay.verify(url).ok
    _, mid, attempt = turns[3]
    await b.append(
        turns[3][0],
        [ev.TurnInterrupted(at=clock(), message_id=mid, attempt=None, stream_seq=30, reason="x")],
    )
    (res,) = await a.append_checkpoints([(turns[3][0], checkpoint(clock, mid, attempt, 99))])
    assert isinstance(res, Fenced)


async def test_the_store_serves_only_exact_history_and_idle_conversations(
    two: tuple[Store, Store, str],
) -> None:
    """What a store remembers for the send path: a conversation it left idle, and every row
    of it at exactly the version it wrote; once another process writes, neither is
    trusted (the conversation's version guard fails, the history's version differs)."""
    a, b, _ = two
    clock = Clock()
    cid, mid, attempt = await started_turn(a, clock)
    assert a.known_idle(cid) is None  # generating
    done = await a.append(cid, [completed(clock, mid, attempt)])
    remembered = a.known_idle(cid)
    assert remembered is not None
    assert remembered.conversation.version == done.version
    history = a.history(cid, done.version)
    assert history == await a.list_messages(cid)
    assert a.history(cid, done.version - 1) is None
    # B edits the conversation: A's memories are now stale, and its next append proves it.
    other = await b.append(cid, [ev.ConversationUpdated(at=clock(), title="b")])
    assert a.history(cid, other.version) is None
    after = await a.append(cid, [ev.ConversationUpdated(at=clock(), title="a")])
    assert after.version == other.version + 1
    assert a.history(cid, after.version) is None  # folded onto rows it did not know
    stale = a.known_idle(cid)
    assert stale is not None
    assert stale.conversation.title == "a"
