"""``Chat`` (the commands) in process, on real PostgreSQL, with an engine whose model is a
local function (tests/generation/fake_provider.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import pytest
from turnlog_reducer import StreamEvent, TextDelta, ToolCallReady, ToolCallStarted

from tests.generation.support import OWNER, InProcess, in_process, wait_until
from turnlog.commands import MessageIn, RetryIn, ToolResultIn
from turnlog.config import Settings
from turnlog.errors import (
    NotGenerating,
    Overloaded,
    Unavailable,
)
from turnlog.log.store import Store
from turnlog.providers.base import ModelRequest, ProviderError, StepEnd

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def model(request: ModelRequest) -> AsyncIterator[StreamEvent | StepEnd]:
    """What each test's user asks decides the step: "fail", "ask", "stuck" or an answer."""
    asked = request.messages[-1].content
    if asked == "fail":
        raise ProviderError("refused", retryable=False)
    if asked == "ask":
        yield ToolCallStarted(id="q1", name="ask_user")
        yield ToolCallReady(id="q1", arguments={"question": "which?"})
        yield StepEnd(finish_reason="tool_calls")
        return
    if asked == "stuck":
        yield TextDelta(text="...")
        await anyio.sleep_forever()
    yield TextDelta(text="ok")
    yield StepEnd(finish_reason="stop")


async def ended(run: InProcess, content: str) -> tuple[uuid.UUID, uuid.UUID]:
    """Send ``content`` in a new conversation and wait for its step to end: (the
    conversation, the assistant row)."""
    cid = await run.conversation()
    sent, gen = await run.send(cid, content)
    with anyio.fail_after(20):
        await gen.finished.wait()
    return cid, sent.assistant_message.id


@pytest.mark.parametrize("why", ["draining", "overloaded"])
async def test_every_command_that_starts_a_generation_is_refused_first(
    store: Store, why: str
) -> None:
    """send, retry and tool_result all refuse (503) while the server drains or is
    overloaded, before anything is written."""
    async with in_process(store, model, Settings(checkpoint_s=5.0)) as run:
        _, failed = await ended(run, "fail")
        _, asking = await ended(run, "ask")
        idle = await run.conversation()
        refused: type[Exception] = Unavailable
        if why == "draining":
            await run.engine.drain(0)
        else:
            stuck = [(await run.send(await run.conversation(), "stuck"))[1] for _ in range(2)]
            await wait_until(lambda: all(g.stream.seq >= 1 for g in stuck))
            run.clock.ahead = 60.0  # their unstored events look a minute old
            await wait_until(lambda: run.engine.overloaded() is not None)
            refused = Overloaded
        before = len(await store.list_messages(idle))
        with pytest.raises(refused):
            await run.chat.send(OWNER, idle, MessageIn(content="hello"))
        with pytest.raises(refused):
            await run.chat.retry(OWNER, failed)
        with pytest.raises(refused):
            await run.chat.tool_result(
                OWNER, asking, ToolResultIn(tool_call_id="q1", content="that")
            )
        assert len(await store.list_messages(idle)) == before


async def test_a_retry_runs_with_its_own_options_or_else_the_failed_turns(
    store: Store,
) -> None:
    """Options precedence: conversation < message < retry. A plain retry keeps the failed
    turn's options (its message's); a retry with options replaces them."""
    async with in_process(store, model) as run:
        cid = await run.conversation()
        sent = await run.chat.send(OWNER, cid, MessageIn(content="fail", options={"length": 5}))
        await wait_until(lambda: not run.engine.running_ids())
        plain = await run.chat.retry(OWNER, sent.assistant_message.id)
        await wait_until(lambda: not run.engine.running_ids())
        replaced = await run.chat.retry(OWNER, plain.id, RetryIn(options={"length": 9}))
        await wait_until(lambda: not run.engine.running_ids())
    assert [r.options for r in run.provider.requests] == [
        {"length": 5},
        {"length": 5},
        {"length": 9},
    ]
    assert replaced.reply_to == sent.user_message.id  # the same question


async def test_cancel_of_a_row_that_is_not_generating_is_refused(store: Store) -> None:
    """A completed answer cannot be cancelled (409 NotGenerating), and stays completed."""
    async with in_process(store, model) as run:
        _, mid = await ended(run, "hello")
        with pytest.raises(NotGenerating):
            await run.chat.cancel(OWNER, mid)
        row = await store.get_message(mid)
    assert row is not None
    assert row.message.status == "completed"
