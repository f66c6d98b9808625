"""The adapters read the raw response bytes (``providers/_sse.py``): the SSE framing at its
edges, and a chunk of a shape the Structs do not expect logged once and skipped, never a
failed turn, for each adapter through its real SDK against the scripted server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs
from turnlog_reducer import StreamEvent, TextDelta

from turnlog.config import Settings
from turnlog.models import ProviderSpec
from turnlog.providers._sse import SSEDecoder
from turnlog.providers.anthropic import AnthropicProvider
from turnlog.providers.base import CLOCK_TOOL, ChatMessage, ModelRequest, Provider, StepEnd
from turnlog.providers.gemini import GeminiProvider
from turnlog.providers.openai import OpenAIProvider

from . import anthropic_wire as aw
from . import gemini_wire as gw
from . import openai_wire as ow
from .fakeserver import FakeServer, Reply, sse


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


def test_frames_split_anywhere_crlf_comments_and_multiline_data() -> None:
    """A frame split at any byte, CRLF line ends, comments and two data lines decode alike."""
    body = b': hi\r\nevent: a\r\ndata: {"x":\r\ndata: 1}\r\n\r\ndata:[DONE]\n\nid: 7\ndata: z'
    for cut in range(len(body) + 1):
        decoder = SSEDecoder()
        frames = decoder.feed(body[:cut]) + decoder.feed(body[cut:]) + decoder.flush()
        assert frames == [("a", b'{"x":\n1}'), ("", b"[DONE]"), ("", b"z")], cut


def request(model: str) -> ModelRequest:
    return ModelRequest(
        model=model,
        system_prompt=None,
        messages=(ChatMessage(role="user", content="hi"),),
        options={},
        tools=(CLOCK_TOOL,),
    )


async def run(p: Provider, req: ModelRequest) -> tuple[list[StreamEvent], StepEnd]:
    events: list[StreamEvent] = []
    async for item in p.stream(req):
        if isinstance(item, StepEnd):
            return events, item
        events.append(item)
    raise AssertionError("no StepEnd")


def skipped(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if "unexpected shape skipped" in e["event"]]


@pytest.mark.anyio
async def test_openai_chunk_of_another_shape_is_logged_once_and_skipped(fake: FakeServer) -> None:
    """Two chunks whose `choices` is not a list: one log line, the rest of the answer kept."""
    fake.queue(
        ow.stream(
            ow.chunk({"content": "a"}),
            {"choices": "surprise"},
            {"choices": 7},
            ow.chunk({"content": "b"}, "stop"),
        )
    )
    spec = ProviderSpec(name="openai", kind="openai", base_url=fake.url + "/v1", api_key="k")
    with capture_logs() as logs:
        events, end = await run(OpenAIProvider(spec, Settings()), request("m"))
    assert events == [TextDelta("a"), TextDelta("b")]
    assert end.finish_reason == "stop"
    assert len(skipped(logs)) == 1


@pytest.mark.anyio
async def test_anthropic_event_of_another_shape_is_logged_once_and_skipped(
    fake: FakeServer,
) -> None:
    """A delta whose index is not a number is skipped and logged; the stream goes on."""
    odd = sse("content_block_delta", {"type": "content_block_delta", "index": "zero"})
    reply = aw.message(aw.text(0, "a", "b"))
    body = list(reply.body)
    body.insert(3, odd)
    body.insert(3, odd)
    fake.queue(Reply(body=body))
    with capture_logs() as logs:
        events, end = await run(
            AnthropicProvider(api_key="k", base_url=fake.url), request(aw.MODEL)
        )
    assert events == [TextDelta("a"), TextDelta("b")]
    assert end.finish_reason == "stop"
    assert len(skipped(logs)) == 1


@pytest.mark.anyio
async def test_gemini_chunk_of_another_shape_is_logged_once_and_skipped(fake: FakeServer) -> None:
    """A chunk whose `candidates` is not a list is skipped and logged; the stream goes on."""
    fake.queue(
        gw.reply(
            gw.chunk(gw.text("a")),
            sse(None, {"candidates": "surprise"}),
            sse(None, {"candidates": 3}),
            gw.chunk(gw.text("b"), finish="STOP"),
        )
    )
    with capture_logs() as logs:
        events, end = await run(GeminiProvider(api_key="k", base_url=fake.url), request(gw.MODEL))
    assert events == [TextDelta("a"), TextDelta("b")]
    assert end.finish_reason == "stop"
    assert len(skipped(logs)) == 1
