"""Automatic titles in process (turnlog.product.titles), with a model driven by a function."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import anyio
import pytest
import structlog
from turnlog_reducer import StreamEvent, TextDelta

from tests.generation.fake_provider import FunctionProvider
from tests.providers import gemini_wire as gw
from tests.providers.fakeserver import FakeServer
from turnlog.config import Settings
from turnlog.log import events as ev
from turnlog.log.store import Store
from turnlog.metrics import Metrics
from turnlog.product.titles import INSTRUCTION, Titler, clean
from turnlog.providers.base import ModelRequest, ProviderError, StepEnd

pytestmark = pytest.mark.anyio

AT = datetime(2026, 1, 1, tzinfo=UTC)


async def _answered(
    store: Store, title: str | None = None, model: str = "demo:default"
) -> tuple[uuid.UUID, uuid.UUID]:
    """A conversation with one user message and its completed answer: (cid, answer id)."""
    cid, user, mid, attempt = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    created = ev.ConversationCreated(
        at=AT, conversation_id=cid, owner="u", title=title, model=model,
        options={}, system_prompt=None,
    )  # fmt: skip
    await store.append(cid, [created])
    await store.append(
        cid,
        [
            ev.UserMessageSent(at=AT, message_id=user, seq=1, content="Plan a trip to Kraków"),
            ev.AssistantTurnStarted(
                at=AT, message_id=mid, seq=2, attempt=attempt, model=model, reply_to=user
            ),
            ev.StepCompleted(
                at=AT, message_id=mid, attempt=attempt, events=(TextDelta("Sure."),),
                stream_seq=1, finish_reason="stop",
            ),
        ],
    )  # fmt: skip
    return cid, mid


def _titler(store: Store, provider: FunctionProvider) -> Titler:
    return Titler(store, Settings(), Metrics(), now=lambda: AT, provider_for=provider.provider_for)


async def _says(text: str) -> AsyncIterator[StreamEvent | StepEnd]:
    yield TextDelta(text)
    yield StepEnd("stop")


async def test_a_first_answer_gets_the_models_title(store: Store) -> None:
    """The model is sent the first user message; its answer, cleaned, is the title."""

    async def step(request: ModelRequest) -> AsyncIterator[StreamEvent | StepEnd]:
        assert request.messages[0].content == "Plan a trip to Kraków"
        async for item in _says('Title: "Trip to Kraków".\nmore'):
            yield item

    provider = FunctionProvider(step)
    cid, mid = await _answered(store)
    assert await _titler(store, provider).title(cid, mid) == "written"
    conv = await store.get_conversation(cid)
    assert conv is not None
    assert conv.conversation.title == "Trip to Kraków"


async def test_a_title_set_while_titling_runs_wins(store: Store) -> None:
    """A user's title that lands while the model is still writing is kept."""
    asked, release = anyio.Event(), anyio.Event()

    async def step(request: ModelRequest) -> AsyncIterator[StreamEvent | StepEnd]:
        asked.set()
        await release.wait()
        async for item in _says("Model's title"):
            yield item

    cid, mid = await _answered(store)
    outcome: list[str] = []
    titler = _titler(store, FunctionProvider(step))

    async def title() -> None:
        outcome.append(await titler.title(cid, mid))

    async with anyio.create_task_group() as tg:
        tg.start_soon(title)
        await asked.wait()
        await store.append(cid, [ev.ConversationUpdated(at=AT, title="Mine")])
        release.set()
    assert outcome == ["skipped"]
    conv = await store.get_conversation(cid)
    assert conv is not None
    assert conv.conversation.title == "Mine"


async def test_failures_leave_it_untitled_and_are_logged(store: Store) -> None:
    """A provider error or an empty answer: no title, a warning in the log."""

    async def fails(request: ModelRequest) -> AsyncIterator[StreamEvent | StepEnd]:
        raise ProviderError("model down", retryable=False)
        yield StepEnd("stop")  # pragma: no cover -- makes this an async generator

    async def empty(request: ModelRequest) -> AsyncIterator[StreamEvent | StepEnd]:
        async for item in _says('  "" '):
            yield item

    for step in (fails, empty):
        cid, mid = await _answered(store)
        with structlog.testing.capture_logs() as logs:
            assert await _titler(store, FunctionProvider(step)).title(cid, mid) == "failed"
        assert [e["event"] for e in logs] == ["title failed; left untitled"]
        conv = await store.get_conversation(cid)
        assert conv is not None
        assert conv.conversation.title is None


async def test_a_gemini_conversation_is_titled_through_the_gemini_adapter(store: Store) -> None:
    """The real gemini adapter against the fake Gemini API: the instruction goes as the
    system instruction with the first message and no tools, the answer is the title; a
    request the fake has no reply for (its 500) leaves the next one untitled, the adapter's
    error logged."""
    with FakeServer() as fake:
        settings = Settings.from_env({"GEMINI_API_KEY": "AIza-k", "GEMINI_BASE_URL": fake.url})
        titler = Titler(store, settings, Metrics(), now=lambda: AT)
        fake.queue(
            gw.reply(gw.chunk(gw.text("Trip to ")), gw.chunk(gw.text("Kraków"), finish="STOP"))
        )
        cid, mid = await _answered(store, model=f"gemini:{gw.MODEL}")
        assert await titler.title(cid, mid) == "written"
        conv = await store.get_conversation(cid)
        assert conv is not None
        assert conv.conversation.title == "Trip to Kraków"
        body = fake.requests[0].json()
        assert body["systemInstruction"]["parts"] == [{"text": INSTRUCTION}]
        assert body["contents"] == [{"role": "user", "parts": [{"text": "Plan a trip to Kraków"}]}]
        assert "tools" not in body

        cid, mid = await _answered(store, model=f"gemini:{gw.MODEL}")
        with structlog.testing.capture_logs() as logs:
            assert await titler.title(cid, mid) == "failed"
        [failed] = [e for e in logs if e["event"] == "title failed; left untitled"]
        assert failed["error"].startswith("gemini: 500"), failed["error"]


async def test_only_the_first_answer_of_an_untitled_conversation(store: Store) -> None:
    """A titled conversation, or an answer that is not the first, is left alone."""
    provider = FunctionProvider(lambda request: _says("never"))
    cid, mid = await _answered(store, title="Given")
    assert await _titler(store, provider).title(cid, mid) == "skipped"
    cid, _ = await _answered(store)
    assert await _titler(store, provider).title(cid, uuid.uuid4()) == "skipped"
    assert provider.requests == []


def test_clean_makes_one_short_line() -> None:
    """Labels, quotes, a final period and extra lines go; long titles are cut at a word."""
    assert clean("Title: 'Hello there.'\nsecond") == "Hello there"
    assert clean("\n\n  **Bold**  ") == "Bold"
    long = clean("word " * 40)
    assert len(long) <= 81
    assert long.endswith("word…")
