"""A step cut by a crash, continued: what each adapter sends its model (docs/providers.md).

Each adapter runs against its fake wire server and the test reads the request the official
SDK sent: the partial answer goes back as the last assistant turn, then (where the API or
the configuration does not continue a prefilled turn) a user turn asking to go on.
Unsigned reasoning and unfinished calls never go back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from turnlog_reducer import Block, ReasoningBlock, StreamEvent, TextBlock, TextDelta, ToolCallBlock

from turnlog.config import Settings
from turnlog.models import ProviderSpec
from turnlog.providers.anthropic import AnthropicProvider
from turnlog.providers.base import (
    CONTINUE_PROMPT,
    ChatMessage,
    Continuation,
    ModelRequest,
    Provider,
    StepEnd,
)
from turnlog.providers.gemini import GeminiProvider
from turnlog.providers.openai import OpenAIProvider

from . import anthropic_wire as aw
from . import gemini_wire as gw
from .fakeserver import FakeServer
from .openai_wire import chunk, stream

pytestmark = pytest.mark.anyio

QUESTION = ChatMessage(role="user", content="Tell me a story")
# What the row had stored when its process died: reasoning cut mid-thought (unsigned), the
# answer so far, and a tool call whose arguments never finished.
STORED: tuple[Block, ...] = (
    ReasoningBlock("Let me thi"),
    TextBlock("Once upon a time "),
    ToolCallBlock(id="c1", name="clock", arguments_text='{"tim', arguments=None, ready=False),
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


def continued(model: str, **options: Any) -> ModelRequest:
    settled = tuple(b for b in STORED if isinstance(b, TextBlock))
    return ModelRequest(
        model=model,
        system_prompt=None,
        messages=(QUESTION,),
        options=options,
        tools=(),
        continuation=Continuation(blocks=STORED, stream_seq=9, settled=settled),
    )


async def events_of(p: Provider, req: ModelRequest) -> list[StreamEvent]:
    out: list[StreamEvent] = []
    async for item in p.stream(req):
        if isinstance(item, StepEnd):
            return out
        out.append(item)
    raise AssertionError("no StepEnd")


def openai(fake: FakeServer, continuation: str) -> OpenAIProvider:
    spec = ProviderSpec(
        name="openai",
        kind="openai",
        base_url=fake.url + "/v1",
        api_key="sk-test",
        continuation=continuation,  # type: ignore[arg-type]
    )
    return OpenAIProvider(spec, Settings())


async def test_openai_is_asked_to_go_on_after_its_partial_answer(fake: FakeServer) -> None:
    """OpenAI-compatible (default "instruct"): the partial text as the last assistant
    message, then a user message asking to continue without repeating."""
    fake.queue(stream(chunk({"content": "there was"}), chunk({}, "stop")))
    events = await events_of(openai(fake, "instruct"), continued("m"))
    assert events == [TextDelta("there was")]
    assert fake.requests[0].json()["messages"] == [
        {"role": "user", "content": "Tell me a story"},
        {"role": "assistant", "content": "Once upon a time "},
        {"role": "user", "content": CONTINUE_PROMPT},
    ]


async def test_openai_prefill_leaves_the_partial_answer_last(fake: FakeServer) -> None:
    """``continuation = "prefill"`` (llama.cpp's server extends a final assistant message)."""
    fake.queue(stream(chunk({"content": "there was"}), chunk({}, "stop")))
    await events_of(openai(fake, "prefill"), continued("m"))
    assert fake.requests[0].json()["messages"] == [
        {"role": "user", "content": "Tell me a story"},
        {"role": "assistant", "content": "Once upon a time "},
    ]


async def test_anthropic_continues_a_prefilled_turn_without_doubling_the_space(
    fake: FakeServer,
) -> None:
    """Anthropic: the partial as a prefilled assistant turn (its trailing whitespace trimmed,
    which the API requires); the space the model then starts with is dropped, so the stored
    "time " and the new "there" join as one space."""
    fake.queue(aw.message(aw.text(0, " ", " there", " was")))
    p = AnthropicProvider(api_key="sk-ant-test", base_url=fake.url)
    events = await events_of(p, continued(aw.MODEL))
    assert events == [TextDelta("there"), TextDelta(" was")]
    assert fake.requests[0].json()["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Tell me a story"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Once upon a time"}]},
    ]


async def test_anthropic_with_thinking_is_asked_in_a_user_turn(fake: FakeServer) -> None:
    """Extended thinking forbids a prefill: the partial answer, then a user turn asking to
    go on; the model's leading space is its own then."""
    fake.queue(aw.message(aw.text(0, " there")))
    p = AnthropicProvider(api_key="sk-ant-test", base_url=fake.url)
    events = await events_of(p, continued(aw.MODEL, thinking_budget=2048, max_tokens=4096))
    assert events == [TextDelta(" there")]
    assert fake.requests[0].json()["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Tell me a story"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Once upon a time "}]},
        {"role": "user", "content": [{"type": "text", "text": CONTINUE_PROMPT}]},
    ]


async def test_gemini_is_asked_to_go_on_in_a_user_turn(fake: FakeServer) -> None:
    """Gemini: the partial as the model's turn, then a user turn asking to go on."""
    fake.queue(gw.reply(gw.chunk(gw.text("there was"), finish="STOP")))
    p = GeminiProvider(api_key="gm-test", base_url=fake.url)
    events = await events_of(p, continued(gw.MODEL))
    assert events == [TextDelta("there was")]
    contents = fake.requests[0].json()["contents"]
    assert [(c["role"], [p["text"] for p in c["parts"]]) for c in contents] == [
        ("user", ["Tell me a story"]),
        ("model", ["Once upon a time "]),
        ("user", [CONTINUE_PROMPT]),
    ]


async def test_a_step_cut_before_any_text_simply_starts_again(fake: FakeServer) -> None:
    """Nothing settled to go on from: the request is the plain one."""
    fake.queue(stream(chunk({"content": "hi"}), chunk({}, "stop")))
    req = ModelRequest(
        model="m",
        system_prompt=None,
        messages=(QUESTION,),
        options={},
        tools=(),
        continuation=Continuation(blocks=(ReasoningBlock("hm"),), stream_seq=1, settled=()),
    )
    await events_of(openai(fake, "instruct"), req)
    assert fake.requests[0].json()["messages"] == [{"role": "user", "content": "Tell me a story"}]
