"""The checkpointer against real PostgreSQL, its clock driven by the test.

When a running row's unstored events are due (the interval, less its stagger, less how
early writes must start), what a checkpoint stores and acknowledges, fencing, and the
overload judgement that refuses new generations.
"""

from __future__ import annotations

import uuid

import anyio
import pytest
from turnlog_reducer import StreamEvent, TextBlock, TextDelta

from tests.generation.fake_provider import stalls_after
from tests.generation.support import OWNER, WallClock, in_process, wait_until
from turnlog.commands import MessageIn
from turnlog.config import Settings
from turnlog.errors import Overloaded
from turnlog.generation.checkpoints import (
    CHECKPOINT_SLACK_S,
    OVERLOAD_HOLD_S,
    STAGGER,
    Checkpointer,
)
from turnlog.generation.turn import Generation, Turn
from turnlog.log import events as ev
from turnlog.log.store import Store
from turnlog.metrics import Metrics
from turnlog.streams import StreamRegistry

pytestmark = pytest.mark.anyio

INTERVAL = 2.0  # TURNLOG_CHECKPOINT_S of these tests


class Clock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Rows:
    """Generating rows in a real store, and a checkpointer over them."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.clock = Clock()
        self.now = WallClock()
        self.registry = StreamRegistry()
        self.running: dict[uuid.UUID, Generation] = {}
        self.checkpointer = Checkpointer(
            store,
            Settings(checkpoint_s=INTERVAL),
            self.running,
            now=self.now,
            metrics=Metrics(),
            clock=self.clock,
        )

    async def generating(self, text: str = "", *, stagger: bool = False) -> Generation:
        """A new conversation with a generating row; ``text`` published (not stored) at
        the clock's time."""
        cid = uuid.uuid4()
        user = uuid.uuid4()
        turn = Turn.new(cid, 2, "demo:default", reply_to=user)
        await self.store.append(
            cid,
            [
                ev.ConversationCreated(
                    at=self.now(),
                    conversation_id=cid,
                    owner=OWNER,
                    title=None,
                    model="demo:default",
                    options={},
                    system_prompt=None,
                )
            ],
        )
        await self.store.append(
            cid,
            [
                ev.UserMessageSent(at=self.now(), message_id=user, seq=1, content="hi"),
                turn.started(self.now()),
            ],
        )
        gen = Generation(turn, self.registry.open(turn.message_id))
        if stagger:
            self.checkpointer.join(gen)
        self.running[turn.message_id] = gen
        if text:
            self.publish(gen, TextDelta(text=text))
        return gen

    def publish(self, gen: Generation, event: StreamEvent) -> None:
        """What a step does with each event from its provider."""
        gen.stream.publish(event)
        gen.pending.append(event)
        if gen.pending_since is None:
            gen.pending_since = self.clock()


@pytest.fixture
async def rows(store: Store) -> Rows:
    return Rows(store)


async def test_a_row_is_due_one_interval_after_its_oldest_unstored_event(rows: Rows) -> None:
    """Due once its deadline (published + interval) falls before the next tick, not sooner."""
    gen = await rows.generating("a")
    tick = rows.checkpointer.tick_s
    published = rows.clock()
    assert rows.checkpointer.due(published + INTERVAL - tick - 0.01) == []
    assert rows.checkpointer.due(published + INTERVAL - tick) == [gen]


async def test_a_row_with_nothing_unstored_is_never_due(rows: Rows) -> None:
    """No new events, no write, however long the row runs."""
    await rows.generating()
    assert rows.checkpointer.due(rows.clock() + 100 * INTERVAL) == []


async def test_the_first_checkpoint_comes_early_by_the_rows_stagger(rows: Rows) -> None:
    """``join`` draws a stagger of up to STAGGER of an interval from the message id; the
    first checkpoint is due that much earlier."""
    gen = await rows.generating("a", stagger=True)
    assert 0 <= gen.stagger < INTERVAL * STAGGER
    due_at = rows.clock() + INTERVAL - gen.stagger - rows.checkpointer.tick_s
    assert rows.checkpointer.due(due_at - 0.01) == []
    assert rows.checkpointer.due(due_at) == [gen]


async def test_rows_due_come_most_urgent_first(rows: Rows) -> None:
    """The row whose oldest unstored event is oldest is written first."""
    later = await rows.generating()
    earlier = await rows.generating("first")
    rows.clock.t += 0.5
    rows.publish(later, TextDelta(text="second"))
    assert rows.checkpointer.due(rows.clock() + INTERVAL) == [earlier, later]


async def test_a_tick_stores_the_due_rows_events_and_acknowledges_them(rows: Rows) -> None:
    """One tick writes each due row's coalesced events; the row then holds them, and
    nothing is pending or unacknowledged."""
    gen = await rows.generating("Hel")
    rows.publish(gen, TextDelta(text="lo"))
    rows.clock.t += INTERVAL
    async with anyio.create_task_group() as tg:
        rows.checkpointer.bind(tg)
        rows.checkpointer.tick()
        assert gen.checkpoint_queued
    stored = await rows.store.get_message(gen.turn.message_id)
    assert stored is not None
    assert stored.message.status == "generating"
    assert stored.message.blocks == (TextBlock(text="Hello"),)
    assert stored.stream_seq == gen.stream.seq == gen.stored_seq == 2
    assert gen.pending == []
    assert gen.unacked is None
    assert gen.unstored_since() is None
    assert not gen.checkpoint_queued
    assert rows.checkpointer.writes == 0


async def test_a_checkpoint_of_a_row_ended_elsewhere_fences_its_generation(rows: Rows) -> None:
    """The store refuses the write of an attempt whose row someone else ended: the
    generation is marked fenced and its scope cancelled."""
    gen = await rows.generating("late")
    await rows.store.append(
        gen.turn.conversation_id,
        [
            ev.TurnInterrupted(
                at=rows.now(),
                message_id=gen.turn.message_id,
                attempt=None,
                events=(),
                stream_seq=0,
                from_seq=0,
                reason="taken over in a test",
            )
        ],
    )
    rows.clock.t += INTERVAL
    async with anyio.create_task_group() as tg:
        rows.checkpointer.bind(tg)
        rows.checkpointer.tick()
    assert gen.fenced
    assert gen.scope.cancel_called


async def test_late_rows_make_the_server_refuse_new_generations_for_a_while(
    rows: Rows,
) -> None:
    """Two rows holding events older than the interval plus the slack: overloaded for
    OVERLOAD_HOLD_S intervals; judged again (and over) once that has passed."""
    for _ in range(2):
        await rows.generating("stuck")
    assert rows.checkpointer.overloaded() is None
    rows.clock.t += INTERVAL + CHECKPOINT_SLACK_S + 0.01
    rows.checkpointer.due(rows.clock())
    wait = rows.checkpointer.overloaded()
    assert wait == pytest.approx(OVERLOAD_HOLD_S * INTERVAL)
    for gen in rows.running.values():
        gen.pending, gen.pending_since = [], None  # stored meanwhile
    rows.clock.t += wait - 0.01
    rows.checkpointer.due(rows.clock())
    assert rows.checkpointer.overloaded() is not None  # still held
    rows.clock.t += 0.01
    rows.checkpointer.due(rows.clock())
    assert rows.checkpointer.overloaded() is None


async def test_one_late_row_among_many_is_not_overload(rows: Rows) -> None:
    """Fewer than OVERLOAD_SHARE of the running rows late (one stuck conversation) does
    not refuse anyone."""
    stuck = [await rows.generating("stuck") for _ in range(2)]
    rows.clock.t += INTERVAL + CHECKPOINT_SLACK_S + 0.01
    for _ in range(30):
        await rows.generating("fresh")
    rows.checkpointer.due(rows.clock())
    assert len(stuck) / len(rows.running) < 0.1
    assert rows.checkpointer.overloaded() is None


async def test_an_overloaded_engine_refuses_a_send_with_retry_after(store: Store) -> None:
    """In process: rows whose events look late to the checkpointer's clock make the next
    ``Chat.send`` fail with Overloaded (a 503 with Retry-After), not start a generation."""
    async with in_process(store, stalls_after("slow"), Settings(checkpoint_s=5.0)) as run:
        gens = []
        for _ in range(2):
            _, gen = await run.send(await run.conversation())
            gens.append(gen)
        await wait_until(lambda: all(g.stream.seq >= 1 for g in gens))
        run.clock.ahead = 60.0  # every unstored event now looks a minute old
        await wait_until(lambda: run.engine.overloaded() is not None)
        cid = await run.conversation()
        with pytest.raises(Overloaded) as refused:
            await run.chat.send(OWNER, cid, MessageIn(content="one more"))
        assert len(run.engine) == 2
    assert 1 <= refused.value.retry_after <= OVERLOAD_HOLD_S * 5.0


async def test_a_running_rows_text_is_stored_once_its_checkpoint_is_due(store: Store) -> None:
    """In process: nothing is stored before the interval; moving the clock past it makes
    the checkpointer store the row's text while it still generates."""

    async with in_process(store, stalls_after("kept"), Settings(checkpoint_s=3600.0)) as run:
        sent, gen = await run.send(await run.conversation())
        await wait_until(lambda: gen.stream.seq >= 1)
        for _ in range(3):  # some ticks go by: an hour's interval is not due
            await anyio.sleep(run.engine.checkpoints.tick_s)
        assert gen.stored_seq == 0
        run.clock.ahead = 3600.0
        await wait_until(lambda: gen.stored_seq == 1)
        row = await store.get_message(sent.assistant_message.id)
    assert row is not None
    assert row.message.blocks == (TextBlock(text="kept"),)
