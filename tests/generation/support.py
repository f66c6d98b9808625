"""In-process running: an ``Engine`` and a ``Chat`` on a real database, with a
function-driven provider (``fake_provider.py``) and clocks the test moves."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import anyio

from tests.generation.fake_provider import FunctionProvider, StepFunction
from turnlog.commands import Chat, ConversationIn, MessageIn, Sent
from turnlog.config import Settings
from turnlog.generation.engine import Engine
from turnlog.generation.tools.registry import ToolRegistry
from turnlog.generation.turn import Generation
from turnlog.log.store import Store
from turnlog.streams import StreamRegistry

OWNER = "alice"


class WallClock:
    """The time stamped on events: fixed until the test moves it."""

    def __init__(self) -> None:
        self.t = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.t


class MonotonicClock:
    """The checkpointer's clock: the real monotonic clock plus what the test added, so
    moving it on makes every event not yet stored look that much older."""

    def __init__(self, real: Callable[[], float]) -> None:
        self.real = real
        self.ahead = 0.0

    def __call__(self) -> float:
        return self.real() + self.ahead


class InProcess:
    """An engine and its commands, running in a task group of the test."""

    def __init__(
        self,
        store: Store,
        step: StepFunction,
        settings: Settings,
        tools: ToolRegistry | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.provider = FunctionProvider(step)
        self.registry = StreamRegistry()
        self.now = WallClock()
        self.clock = MonotonicClock(time.monotonic)
        self.engine = Engine(
            store,
            self.registry,
            settings,
            instance_id=uuid.uuid4(),
            now=self.now,
            provider_for=self.provider.provider_for,
            clock=self.clock,
            tools=tools,
        )
        self.chat = Chat(store, self.engine, settings)

    async def conversation(self) -> uuid.UUID:
        return (await self.chat.create_conversation(OWNER, ConversationIn())).id

    async def answering(self, content: str = "hello") -> tuple[uuid.UUID, Sent, Generation]:
        """A new conversation whose answer to ``content`` has published its first event."""
        cid = await self.conversation()
        sent, gen = await self.send(cid, content)
        await wait_until(lambda: gen.stream.seq >= 1)
        return cid, sent, gen

    async def send(self, cid: uuid.UUID, content: str = "hello") -> tuple[Sent, Generation]:
        """Send ``content``; the sent rows and the generation it started."""
        sent = await self.chat.send(OWNER, cid, MessageIn(content=content))
        gen = self.engine.running(sent.assistant_message.id)
        assert gen is not None
        return sent, gen


@contextlib.asynccontextmanager
async def in_process(
    store: Store,
    step: StepFunction,
    settings: Settings | None = None,
    *,
    tools: ToolRegistry | None = None,
) -> AsyncIterator[InProcess]:
    """Run an engine with ``step`` as every model (and ``tools``, default: the built-ins);
    at the end, drain it (handing over or interrupting what still runs) and stop its tasks."""
    running = InProcess(store, step, settings or Settings(provider_backoff_s=0.01), tools)
    async with anyio.create_task_group() as tg:
        running.engine.bind(tg)
        try:
            yield running
        finally:
            with anyio.CancelScope(shield=True), anyio.fail_after(30):
                await running.engine.drain(0)
            tg.cancel_scope.cancel()


async def wait_until(what: Callable[[], bool], within: float = 20.0) -> None:
    """Poll ``what`` until it holds; fail after ``within`` seconds (a loaded machine is
    slow, never this slow). Polled: what the tests wait for (a seq, a flag) has no event."""
    with anyio.fail_after(within):
        while not what():  # noqa: ASYNC110 - no event to wait on (see the docstring)
            await anyio.sleep(0.01)
