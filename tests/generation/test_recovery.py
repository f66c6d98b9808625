"""Recovery in process: a row left generating by a process that went away is taken over by
another engine and continued from its stored blocks, once, within its budgets.

The first engine hands its row over with a drain past its grace (what SIGTERM does; a
SIGKILL leaves the same row behind, minus the last second: tests/e2e/test_recovery.py).
Its instance is not registered, so its lease names no living instance: an orphan.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import timedelta

import anyio
import msgspec
import pytest
from turnlog_reducer import (
    Block,
    StreamEvent,
    TextBlock,
    TextDelta,
    ToolCallReady,
    ToolCallStarted,
)

import turnlog
from tests.generation.support import in_process, wait_until
from turnlog.config import Settings
from turnlog.generation.engine import INTERRUPTED_CALL
from turnlog.generation.tools.python import make_tool
from turnlog.generation.tools.registry import ToolRegistry
from turnlog.log.store import Store
from turnlog.models import ToolsConfig
from turnlog.providers.base import ModelRequest, StepEnd

pytestmark = pytest.mark.anyio

Step = AsyncIterator[StreamEvent | StepEnd]
SETTINGS = Settings(provider_backoff_s=0.01)


def text_of(blocks: Iterable[Block]) -> str:
    return "".join(b.text for b in blocks if isinstance(b, TextBlock))


async def cut_short(request: ModelRequest) -> Step:
    """A step that writes "Hello " and then never ends (until its process goes)."""
    yield TextDelta(text="Hel")
    yield TextDelta(text="lo ")
    await anyio.sleep_forever()
    yield StepEnd(finish_reason="stop")  # pragma: no cover - handed over above


async def go_on(request: ModelRequest) -> Step:
    """A step that goes on after what its row holds."""
    assert request.continuation is not None
    yield TextDelta(text=f"world ({len(request.continuation.text)} chars kept)")
    yield StepEnd(finish_reason="stop", usage={"input_tokens": 1, "output_tokens": 1})


async def handed_over(store: Store) -> tuple[uuid.UUID, uuid.UUID]:
    """A conversation whose answer "Hello " was handed over by a drained engine: (cid, mid)."""
    async with in_process(store, cut_short, SETTINGS) as first:
        cid = await first.conversation()
        sent, gen = await first.send(cid)
        await wait_until(lambda: gen.stream.seq >= 2)
        with anyio.fail_after(20):
            await first.engine.drain(0.0)
    assert gen.stream.finished  # abandoned: its readers end without done
    assert gen.stream.status is None
    row = await store.get_message(sent.assistant_message.id)
    assert row is not None
    assert row.message.status == "generating"
    assert text_of(row.message.blocks) == "Hello "
    return cid, sent.assistant_message.id


async def test_a_handed_over_row_is_continued_from_its_stored_blocks(store: Store) -> None:
    """Another engine's sweep takes the row over: the model is asked to go on from the stored
    text, readers get init at the checkpoint then ``recovering``, and the row completes."""
    cid, mid = await handed_over(store)
    async with in_process(store, go_on, SETTINGS) as second:
        assert await second.chat.sweep() == 1
        gen = second.engine.running(mid)
        assert gen is not None
        sub = gen.stream.subscribe()
        with anyio.fail_after(20):
            await gen.finished.wait()
        frames = [frame async for frame in sub]
        row = await store.get_message(mid)
        conv = await store.get_conversation(cid)
    request = second.provider.requests[0]
    assert request.continuation is not None
    assert request.continuation.stream_seq == 2
    assert request.continuation.text == "Hello "
    assert [m.content for m in request.messages] == ["hello"]  # the same question
    assert frames[0].startswith(b"event: init\nid: 2\n")
    assert b'"Hello "' in frames[0]
    assert frames[0].endswith(b'event: recovering\ndata: {"attempt":1}\n\n')
    done = msgspec.json.decode(frames[-1].split(b"data: ")[1])
    assert done["status"] == "completed"
    assert done["recovered"] == 1
    assert row is not None
    assert row.message.status == "completed"
    assert text_of(row.message.blocks) == "Hello world (6 chars kept)"
    assert conv is not None
    assert conv.conversation.state == "idle"


async def test_two_instances_finding_one_orphan_continue_it_once(store: Store) -> None:
    """The takeover is written on top of the dead attempt: of two that find the row at the
    same moment, one continues it and the other is fenced off and leaves it alone."""
    _, mid = await handed_over(store)
    async with (
        in_process(store, go_on, SETTINGS) as a,
        in_process(store, go_on, SETTINGS) as b,
    ):
        row = await store.get_message(mid)
        assert row is not None
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.chat.recovery.take_over, row, "watch")
            tg.start_soon(b.chat.recovery.take_over, row, "watch")
        await wait_until(lambda: not a.engine.running_ids() and not b.engine.running_ids())
        after = await store.get_message(mid)
    assert len(a.provider.requests) + len(b.provider.requests) == 1
    assert after is not None
    assert after.message.status == "completed"
    assert text_of(after.message.blocks) == "Hello world (6 chars kept)"


async def test_a_row_continued_as_often_as_allowed_is_interrupted(store: Store) -> None:
    """TURNLOG_RECOVERY_MAX_ATTEMPTS: a row that keeps losing its process is not taken over
    again past the limit; it reads interrupted with the text it had."""
    _, mid = await handed_over(store)
    once = Settings(provider_backoff_s=0.01, recovery_max_attempts=1)
    async with in_process(store, cut_short, once) as second:
        assert await second.chat.sweep() == 1  # continued (1 of 1), then handed over again
        gen = second.engine.running(mid)
        assert gen is not None
        await wait_until(lambda: gen.stream.seq >= 4)
    async with in_process(store, go_on, once) as third:
        assert await third.chat.sweep() == 1
        row = await store.get_message(mid)
    assert not third.provider.requests
    assert row is not None
    assert row.message.status == "interrupted"
    assert text_of(row.message.blocks) == "Hello Hello "


async def test_an_orphan_older_than_the_max_age_is_interrupted(store: Store) -> None:
    """TURNLOG_RECOVERY_MAX_AGE_S: a row whose last write is older is not continued."""
    _, mid = await handed_over(store)
    async with in_process(store, go_on, SETTINGS) as second:
        second.now.t += timedelta(seconds=SETTINGS.recovery_max_age_s + 1)
        assert await second.chat.sweep() == 1
        row = await store.get_message(mid)
    assert not second.provider.requests
    assert row is not None
    assert row.message.status == "interrupted"


async def test_with_recovery_off_an_orphan_is_interrupted(store: Store) -> None:
    """TURNLOG_RECOVERY=interrupt: the row reads interrupted, as before recovery existed."""
    _, mid = await handed_over(store)
    off = Settings(provider_backoff_s=0.01, recovery="interrupt")
    async with in_process(store, go_on, off) as second:
        assert await second.chat.sweep() == 1
        row = await store.get_message(mid)
    assert not second.provider.requests
    assert row is not None
    assert row.message.status == "interrupted"
    assert text_of(row.message.blocks) == "Hello "


# -- tool calls at most once ---------------------------------------------------------------

RAN: list[tuple[str, str]] = []  # (tool, idempotency key) of every run, in order
HOLD = {"lookup": True}  # while set, lookup never returns (its process goes first)


@turnlog.tool(effect="side_effect")
async def charge(amount: int, ctx: turnlog.ToolContext) -> str:
    """Charge the user's card (a side effect: never run twice)."""
    RAN.append(("charge", ctx.idempotency_key))
    await anyio.sleep_forever()
    return "charged"  # pragma: no cover - its process goes first


@turnlog.tool(effect="read_only")
async def lookup(query: str, ctx: turnlog.ToolContext) -> str:
    """Look something up (read-only: safe to run again)."""
    RAN.append(("lookup", ctx.idempotency_key))
    if HOLD["lookup"]:
        await anyio.sleep_forever()
    return f"found {query}"


def money_tools() -> ToolRegistry:
    config = ToolsConfig(default=("charge", "lookup"))
    return ToolRegistry(config, python=[make_tool(charge, config), make_tool(lookup, config)])


async def pay_then_answer(request: ModelRequest) -> Step:
    """The model calls both tools, then answers with what they returned."""
    if request.messages[-1].role == "user":
        yield ToolCallStarted(id="c1", name="charge")
        yield ToolCallReady(id="c1", arguments={"amount": 5})
        yield ToolCallStarted(id="c2", name="lookup")
        yield ToolCallReady(id="c2", arguments={"query": "receipt"})
        yield StepEnd(finish_reason="tool_calls")
    else:
        results = [m.content for m in request.messages if m.role == "tool"]
        yield TextDelta(text=" | ".join(results))
        yield StepEnd(finish_reason="stop")


async def test_a_started_side_effect_is_never_run_again_and_a_read_only_call_is(
    store: Store,
) -> None:
    """The process goes while both calls run (their start is stored): the successor does
    not ask the model again, does not run the side effect again (its result says it may or
    may not have happened), runs the read-only call again with the same idempotency key,
    and the turn completes."""
    RAN.clear()
    HOLD["lookup"] = True
    async with in_process(store, pay_then_answer, SETTINGS, tools=money_tools()) as first:
        cid = await first.conversation()
        sent, _ = await first.send(cid)
        await wait_until(lambda: len(RAN) == 2)
        with anyio.fail_after(20):
            await first.engine.drain(0.0)
    mid = sent.assistant_message.id
    row = await store.get_message(mid)
    assert row is not None
    assert row.message.status == "generating"  # handed over with its calls started
    HOLD["lookup"] = False
    async with in_process(store, pay_then_answer, SETTINGS, tools=money_tools()) as second:
        assert await second.chat.sweep() == 1
        await wait_until(lambda: not second.engine.running_ids())
        rows = [r.message for r in await store.list_messages(cid)]
    keys = dict(RAN[:2])
    assert [
        ("charge", keys["charge"]),
        ("lookup", keys["lookup"]),
        ("lookup", keys["lookup"]),  # run again, under the same key
    ] == RAN
    assert [(m.role, m.status) for m in rows] == [
        ("user", "completed"),
        ("assistant", "completed"),
        ("tool", "completed"),
        ("tool", "completed"),
        ("assistant", "completed"),
    ]
    tools = {m.tool_name: m.content for m in rows if m.role == "tool"}
    assert tools["charge"] == INTERRUPTED_CALL
    assert tools["lookup"] == "found receipt"
    # The successor asked the model only for the step after the tools.
    assert len(second.provider.requests) == 1
    assert text_of(rows[-1].blocks) == f"{INTERRUPTED_CALL} | found receipt"


async def test_a_row_this_process_runs_is_never_taken_over(store: Store) -> None:
    """A sweep that found a row while this process was starting it (its ids read before the
    send's append committed, its query after) hands it to ``take_over``: the row is left to
    its generation, which completes it; nothing is resumed or fenced."""
    release = anyio.Event()

    async def held(request: ModelRequest) -> Step:
        yield TextDelta(text="Hel")
        await release.wait()
        yield TextDelta(text="lo")
        yield StepEnd(finish_reason="stop")

    async with in_process(store, held, SETTINGS) as here:
        cid, sent, gen = await here.answering()
        mid = sent.assistant_message.id
        # What the racing sweep saw: the row as an orphan of this instance.
        assert mid in {r.message.id for r in await store.orphans(me=here.engine.instance_id)}
        row = await store.get_message(mid)
        assert row is not None
        after = await here.chat.recovery.take_over(row, "watch")
        assert after.attempt == row.attempt
        assert here.engine.running(mid) is gen
        release.set()
        with anyio.fail_after(20):
            await gen.finished.wait()
        stored = await store.get_message(mid)
        resumptions = await store.resumptions(cid, mid)
    assert gen.stream.status == "completed"
    assert stored is not None
    assert stored.message.status == "completed"
    assert text_of(stored.message.blocks) == "Hello"
    assert resumptions == 0
