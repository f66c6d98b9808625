"""The engine in process: real PostgreSQL, a provider driven by a local function.

Each test scripts the model's step as an async generator (``fake_provider.py``), sends
through ``Chat`` and checks what the engine stored and published.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from datetime import datetime

import anyio
import pytest
from turnlog_reducer import Block, StreamEvent, TextBlock, TextDelta, ToolCallReady, ToolCallStarted

from tests.generation.fake_provider import stalls_after
from tests.generation.support import OWNER, in_process, wait_until
from turnlog.commands import ToolResultIn
from turnlog.config import Settings
from turnlog.errors import (
    Unavailable,
)
from turnlog.log.store import Store
from turnlog.providers.base import ModelRequest, ProviderError, StepEnd

pytestmark = pytest.mark.anyio

Step = AsyncIterator[StreamEvent | StepEnd]


def text_of(blocks: Iterable[Block]) -> str:
    return "".join(b.text for b in blocks if isinstance(b, TextBlock))


async def test_a_completed_step_stores_its_text_usage_and_finish_reason(store: Store) -> None:
    """The step's deltas, finish reason and usage land on the row; the conversation is idle."""

    async def step(request: ModelRequest) -> Step:
        yield TextDelta(text="Hel")
        yield TextDelta(text="lo")
        yield StepEnd(finish_reason="stop", usage={"input_tokens": 3, "output_tokens": 2})

    async with in_process(store, step) as run:
        cid = await run.conversation()
        sent, gen = await run.send(cid, "hi there")
        with anyio.fail_after(20):
            await gen.finished.wait()
        row = await store.get_message(sent.assistant_message.id)
        conv = await store.get_conversation(cid)
    assert row is not None
    assert conv is not None
    assert row.message.status == "completed"
    assert text_of(row.message.blocks) == "Hello"
    assert row.message.finish_reason == "stop"
    assert row.message.usage == {"input_tokens": 3, "output_tokens": 2}
    assert conv.conversation.state == "idle"
    assert gen.stream.status == "completed"
    # The model was asked the user's message.
    assert [m.content for m in run.provider.requests[0].messages] == ["hi there"]


async def test_a_server_tool_call_stores_its_result_and_starts_the_next_step(
    store: Store,
) -> None:
    """A ``clock`` call is run at once: its result row and the next step's row are stored
    with the step's end, and the next step sees the result in its history."""

    async def step(request: ModelRequest) -> Step:
        if request.messages[-1].role == "user":
            yield ToolCallStarted(id="c1", name="clock")
            yield ToolCallReady(id="c1", arguments={"timezone": "UTC"})
            yield StepEnd(finish_reason="tool_calls")
        else:
            yield TextDelta(text=f"it is {request.messages[-1].content}")
            yield StepEnd(finish_reason="stop")

    async with in_process(store, step) as run:
        cid = await run.conversation()
        sent, first = await run.send(cid)
        await wait_until(lambda: len(run.provider.requests) == 2 and not run.engine.running_ids())
        rows = [r.message for r in await store.list_messages(cid)]
        conv = await store.get_conversation(cid)
    now = run.now()
    assert [(m.role, m.status) for m in rows] == [
        ("user", "completed"),
        ("assistant", "completed"),
        ("tool", "completed"),
        ("assistant", "completed"),
    ]
    user, step1, tool, step2 = rows
    assert step1.id == sent.assistant_message.id == first.turn.message_id
    assert step1.finish_reason == "tool_calls"
    assert tool.reply_to == step1.id
    assert tool.tool_call_id == "c1"
    assert datetime.fromisoformat(tool.content) == now  # run at the engine's clock
    assert step2.reply_to == user.id  # the same question
    assert text_of(step2.blocks) == f"it is {now.isoformat()}"
    assert conv is not None
    assert conv.conversation.state == "idle"


async def test_an_interactive_call_waits_for_the_user_and_their_answer_starts_the_next_step(
    store: Store,
) -> None:
    """An ``ask_user`` call ends the step awaiting input (no next step); the answer does."""

    async def step(request: ModelRequest) -> Step:
        if request.messages[-1].role == "user":
            yield ToolCallStarted(id="q1", name="ask_user")
            yield ToolCallReady(id="q1", arguments={"question": "which?"})
            yield StepEnd(finish_reason="tool_calls")
        else:
            yield TextDelta(text=f"you said {request.messages[-1].content}")
            yield StepEnd(finish_reason="stop")

    async with in_process(store, step) as run:
        cid = await run.conversation()
        sent, gen = await run.send(cid)
        with anyio.fail_after(20):
            await gen.finished.wait()
        waiting = await store.get_conversation(cid)
        assert waiting is not None
        assert waiting.conversation.state == "awaiting_input"
        assert len(run.provider.requests) == 1
        _, nxt = await run.chat.tool_result(
            OWNER, sent.assistant_message.id, ToolResultIn(tool_call_id="q1", content="that")
        )
        assert nxt is not None
        await wait_until(lambda: not run.engine.running_ids())
        answer = await store.get_message(nxt.id)
    assert answer is not None
    assert answer.message.status == "completed"
    assert text_of(answer.message.blocks) == "you said that"


async def test_cancel_stores_the_row_aborted_with_what_was_published(store: Store) -> None:
    """``Chat.cancel`` of a running step: the row is aborted, keeping the text so far."""

    async with in_process(store, stalls_after("partial")) as run:
        cid, sent, gen = await run.answering()
        after = await run.chat.cancel(OWNER, sent.assistant_message.id)
        conv = await store.get_conversation(cid)
    assert after.status == "aborted"
    assert text_of(after.blocks) == "partial"
    assert text_of(gen.stream.blocks) == "partial"
    assert gen.stream.status == "aborted"
    assert conv is not None
    assert conv.conversation.state == "idle"


async def test_deleting_a_conversation_cancels_its_generation(store: Store) -> None:
    """A delete stops the conversation's running generation here (cancel_conversation)."""

    async with in_process(store, stalls_after("x")) as run:
        cid = await run.conversation()
        _, gen = await run.send(cid)
        await wait_until(lambda: gen.stream.seq >= 1)
        await run.chat.delete_conversation(OWNER, cid)
        with anyio.fail_after(20):
            await gen.finished.wait()
        assert run.engine.running_ids() == []
    assert gen.end_reason == "aborted"
    assert gen.stream.finished


async def test_drain_lets_a_running_step_finish_within_the_grace(store: Store) -> None:
    """A step that ends within the drain's grace completes; new sends are refused (503)."""
    go_on = anyio.Event()

    async def step(request: ModelRequest) -> Step:
        yield TextDelta(text="almost")
        await go_on.wait()
        yield TextDelta(text=" done")
        yield StepEnd(finish_reason="stop")

    async with in_process(store, step) as run:
        _cid, sent, _gen = await run.answering()
        async with anyio.create_task_group() as tg:
            tg.start_soon(run.engine.drain, 30.0)
            await wait_until(lambda: run.engine.draining)
            with pytest.raises(Unavailable, match="shutting down"):
                await run.send(await run.conversation())
            go_on.set()
        row = await store.get_message(sent.assistant_message.id)
    assert row is not None
    assert row.message.status == "completed"
    assert text_of(row.message.blocks) == "almost done"


async def test_drain_interrupts_a_step_still_running_after_the_grace(store: Store) -> None:
    """With recovery off, after the grace the step is stored interrupted with its text, and
    its stream ends."""

    settings = Settings(provider_backoff_s=0.01, recovery="interrupt")
    async with in_process(store, stalls_after("cut"), settings) as run:
        _cid, sent, gen = await run.answering()
        with anyio.fail_after(20):
            await run.engine.drain(0.0)
        row = await store.get_message(sent.assistant_message.id)
    assert row is not None
    assert row.message.status == "interrupted"
    assert text_of(row.message.blocks) == "cut"
    assert gen.stream.status == "interrupted"


async def test_a_stale_attempt_is_fenced_off_and_never_overwrites_the_row(store: Store) -> None:
    """Once someone else ended the row (here recovery marks it interrupted), the running
    attempt's end is refused: the row stays as they left it, and its stream says so."""
    go_on = anyio.Event()

    async def step(request: ModelRequest) -> Step:
        yield TextDelta(text="before")
        await go_on.wait()
        yield TextDelta(text=" after")
        yield StepEnd(finish_reason="stop")

    async with in_process(store, step) as run:
        _cid, sent, gen = await run.answering()
        row = await store.get_message(sent.assistant_message.id)
        assert row is not None
        await run.chat.interrupt(row, "taken over in a test")
        go_on.set()
        with anyio.fail_after(20):
            await gen.finished.wait()
        after = await store.get_message(sent.assistant_message.id)
    assert after is not None
    assert after.message.status == "interrupted"
    assert "after" not in text_of(after.message.blocks)
    assert gen.stream.status == "interrupted"  # its done tells what the store says


async def test_a_failure_before_output_is_retried_and_one_after_output_is_final(
    store: Store,
) -> None:
    """A retryable error before the first event is retried; after output, it fails the row."""
    calls = 0

    async def step(request: ModelRequest) -> Step:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ProviderError("busy", retryable=True)
        yield TextDelta(text="some")
        raise ProviderError("lost the connection", retryable=True)

    async with in_process(store, step, Settings(provider_backoff_s=0.01)) as run:
        cid = await run.conversation()
        sent, gen = await run.send(cid)
        with anyio.fail_after(20):
            await gen.finished.wait()
        row = await store.get_message(sent.assistant_message.id)
    assert calls == 2
    assert row is not None
    assert row.message.status == "error"
    assert row.message.error == "lost the connection"
    assert text_of(row.message.blocks) == "some"
    assert gen.stream.status == "error"
