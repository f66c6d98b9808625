"""The ``openai`` adapter driven through the real SDK against a scripted server on loopback.

Each transcript is shaped like what OpenAI, vLLM, llama.cpp, Ollama or DeepSeek send
(``data: {chunk}`` frames, then ``data: [DONE]``); the quirks of the module docstring each
have one. Retries and timeouts are the engine's (tests/e2e/test_openai_e2e.py); here the
adapter only has to translate.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from turnlog_reducer import (
    EMPTY,
    ReasoningDelta,
    StreamEvent,
    TextBlock,
    TextDelta,
    ToolCallBlock,
    ToolCallReady,
    ToolCallStarted,
    fold,
)

from turnlog.config import Settings
from turnlog.models import ProviderSpec
from turnlog.providers.base import CLOCK_TOOL, ChatMessage, ModelRequest, ProviderError, StepEnd
from turnlog.providers.openai import OpenAIProvider

from .fakeserver import FakeServer, Hold, Pause, Reply, json_reply, sse
from .openai_wire import call, chunk, stream, usage_chunk

KEY = "sk-test-0123456789abcdefghijklmnop"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def srv() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


def provider(srv: FakeServer, **settings: Any) -> OpenAIProvider:
    spec = ProviderSpec(name="openai", kind="openai", base_url=srv.url + "/v1", api_key=KEY)
    return OpenAIProvider(spec, Settings(**settings))


def request(*history: ChatMessage, system: str | None = None, **options: Any) -> ModelRequest:
    return ModelRequest(
        model="test-model",
        system_prompt=system,
        messages=history or (ChatMessage(role="user", content="hi"),),
        options=options,
        tools=(CLOCK_TOOL,),
    )


async def run(p: OpenAIProvider, req: ModelRequest) -> tuple[list[StreamEvent], StepEnd]:
    events: list[StreamEvent] = []
    async for item in p.stream(req):
        if isinstance(item, StepEnd):
            return events, item
        events.append(item)
    raise AssertionError("no StepEnd")


@pytest.mark.anyio
async def test_plain_text_and_the_request_sent(srv: FakeServer) -> None:
    """Text deltas fold to one text block; the request streams with usage, tools and key."""
    srv.queue(
        stream(
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo!"}),
            chunk({}, "stop"),
            usage_chunk(9, 2),
        )
    )
    events, end = await run(provider(srv), request(system="Be brief.", temperature=0.5))
    assert fold(EMPTY, events) == [TextBlock("Hello!")]
    assert end == StepEnd("stop", usage={"input_tokens": 9, "output_tokens": 2})
    sent = srv.requests[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    body = sent.json()
    assert body["model"] == "test-model"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.5
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    assert body["tools"][0]["function"]["name"] == "clock"


@pytest.mark.anyio
@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
async def test_reasoning_from_either_field(srv: FakeServer, field: str) -> None:
    """vLLM/OpenRouter send delta.reasoning, DeepSeek/llama.cpp delta.reasoning_content."""
    srv.queue(
        stream(
            chunk({"role": "assistant", field: "Let me "}),
            chunk({field: "think."}),
            chunk({"content": "42"}),
            chunk({}, "stop"),
            usage_chunk(5, 7, completion_tokens_details={"reasoning_tokens": 4}),
        )
    )
    events, end = await run(provider(srv), request())
    assert events[:2] == [ReasoningDelta("Let me "), ReasoningDelta("think.")]
    assert [type(b).__name__ for b in fold(EMPTY, events)] == ["ReasoningBlock", "TextBlock"]
    assert end.usage == {"input_tokens": 5, "output_tokens": 7, "reasoning_tokens": 4}


@pytest.mark.anyio
async def test_tool_call_arguments_in_pieces(srv: FakeServer) -> None:
    """Argument fragments keyed by index join into one call; ready carries the parsed JSON."""
    srv.queue(
        stream(
            chunk({"role": "assistant", "tool_calls": [call(0, "call_a", "clock", "")]}),
            chunk({"tool_calls": [call(0, args='{"time')]}),
            chunk({"tool_calls": [call(0, args='zone": "UTC"}')]}),
            chunk({}, "tool_calls"),
        )
    )
    events, end = await run(provider(srv), request())
    assert events[0] == ToolCallStarted("call_a", "clock")
    assert events[-1] == ToolCallReady("call_a", {"timezone": "UTC"})
    (block,) = fold(EMPTY, events)
    assert block == ToolCallBlock(
        "call_a", "clock", '{"timezone": "UTC"}', {"timezone": "UTC"}, True
    )
    # Usage absent (no usage chunk although asked): the row's usage stays null.
    assert end == StepEnd("tool_calls", usage=None)


@pytest.mark.anyio
async def test_two_parallel_tool_calls_interleaved(srv: FakeServer) -> None:
    """Two calls whose fragments interleave by index become two ready calls in order."""
    srv.queue(
        stream(
            chunk({"tool_calls": [call(0, "c0", "clock", '{"timezone":')]}),
            chunk({"tool_calls": [call(1, "c1", "clock", '{"timezone":')]}),
            chunk({"tool_calls": [call(0, args='"UTC"}')]}),
            chunk({"tool_calls": [call(1, args='"Europe/Warsaw"}')]}),
            chunk({}, "tool_calls"),
            usage_chunk(20, 30, prompt_tokens_details={"cached_tokens": 16}),
        )
    )
    events, end = await run(provider(srv), request())
    blocks = fold(EMPTY, events)
    assert [(b.id, b.arguments) for b in blocks if isinstance(b, ToolCallBlock)] == [
        ("c0", {"timezone": "UTC"}),
        ("c1", {"timezone": "Europe/Warsaw"}),
    ]
    assert end.usage == {"input_tokens": 20, "output_tokens": 30, "cached_tokens": 16}


@pytest.mark.anyio
async def test_quirk_finish_reason_stop_after_tool_calls(srv: FakeServer) -> None:
    """llama.cpp and some vLLM parsers end a tool-calling step with "stop"."""
    srv.queue(stream(chunk({"tool_calls": [call(0, "c0", "clock", "{}")]}), chunk({}, "stop")))
    _, end = await run(provider(srv), request())
    assert end.finish_reason == "tool_calls"


@pytest.mark.anyio
async def test_quirk_missing_index_and_id_only_on_the_first_fragment(srv: FakeServer) -> None:
    """Fragments without index continue the last call; a new id starts the next one."""
    srv.queue(
        stream(
            chunk({"tool_calls": [call(None, "c0", "clock", '{"timezone"')]}),
            chunk({"tool_calls": [call(None, args=': "UTC"}')]}),
            chunk({"tool_calls": [call(None, "c1", "clock", "{}")]}),
            chunk({}, "tool_calls"),
        )
    )
    events, _ = await run(provider(srv), request())
    calls = [b for b in fold(EMPTY, events) if isinstance(b, ToolCallBlock)]
    assert [(c.id, c.arguments) for c in calls] == [("c0", {"timezone": "UTC"}), ("c1", {})]


@pytest.mark.anyio
async def test_quirk_every_parallel_call_under_index_zero(srv: FakeServer) -> None:
    """A repeated index with a new id is a new call, not more arguments for the old one."""
    srv.queue(
        stream(
            chunk({"tool_calls": [call(0, "c0", "clock", '{"timezone": "UTC"}')]}),
            chunk({"tool_calls": [call(0, "c1", "clock", '{"timezone": "Asia/Tokyo"}')]}),
            chunk({}, "tool_calls"),
        )
    )
    events, _ = await run(provider(srv), request())
    calls = [b for b in fold(EMPTY, events) if isinstance(b, ToolCallBlock)]
    assert [(c.id, c.arguments) for c in calls] == [
        ("c0", {"timezone": "UTC"}),
        ("c1", {"timezone": "Asia/Tokyo"}),
    ]


@pytest.mark.anyio
async def test_quirk_arguments_as_an_object(srv: FakeServer) -> None:
    """Some Ollama versions send arguments as a JSON object instead of a string."""
    srv.queue(
        stream(
            chunk({"tool_calls": [call(0, "c0", "clock", {"timezone": "UTC"})]}),
            chunk({}, "tool_calls"),
        )
    )
    events, _ = await run(provider(srv), request())
    (block,) = fold(EMPTY, events)
    assert isinstance(block, ToolCallBlock)
    assert block.arguments == {"timezone": "UTC"}
    assert block.arguments_text == '{"timezone": "UTC"}'


@pytest.mark.anyio
async def test_error_mid_stream_after_output(srv: FakeServer) -> None:
    """An error object inside the stream raises ProviderError after the text so far."""
    srv.queue(
        stream(
            chunk({"content": "partial "}),
            {"error": {"message": "model crashed", "type": "server_error", "code": None}},
            done=False,
        )
    )
    seen: list[StreamEvent | StepEnd] = []

    async def consume() -> None:
        async for item in provider(srv).stream(request()):
            seen.append(item)

    with pytest.raises(ProviderError, match="model crashed") as info:
        await consume()
    assert seen == [TextDelta("partial ")]
    assert info.value.retryable  # a server error; the engine won't retry after output


@pytest.mark.anyio
async def test_429_is_retryable_with_retry_after(srv: FakeServer) -> None:
    """A 429 becomes a retryable ProviderError carrying the Retry-After seconds."""
    srv.queue(
        json_reply(
            429,
            {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate"}},
            {"Retry-After": "2"},
        )
    )
    with pytest.raises(ProviderError, match=r"429.*Rate limit reached") as info:
        await run(provider(srv), request())
    assert info.value.retryable
    assert info.value.retry_after == 2.0
    assert len(srv.requests) == 1  # the SDK's own retries are off


@pytest.mark.anyio
async def test_bad_request_is_final_and_never_shows_the_key(srv: FakeServer) -> None:
    """A 401 is not retryable; the adapter's message does not repeat the request's key."""
    srv.queue(json_reply(401, {"error": {"message": "Incorrect API key provided"}}))
    with pytest.raises(ProviderError, match="401") as info:
        await run(provider(srv), request())
    assert not info.value.retryable
    assert KEY not in str(info.value)


@pytest.mark.anyio
async def test_connection_refused_is_retryable_and_names_the_host() -> None:
    """Nobody listening: a retryable connection error naming the host it tried."""
    with FakeServer() as gone:
        url = gone.url
    spec = ProviderSpec(name="openai", kind="openai", base_url=url + "/v1", api_key=KEY)
    with pytest.raises(ProviderError, match="connection") as info:
        await run(OpenAIProvider(spec, Settings()), request())
    assert info.value.retryable
    assert url.removeprefix("http://") in str(info.value)


@pytest.mark.anyio
async def test_cancel_closes_the_request_at_once(srv: FakeServer) -> None:
    """Cancelling the consumer mid-answer closes the HTTP request: the server sees it go."""
    srv.queue(stream(chunk({"content": "thinking"}), Pause(0.05), Hold(60), done=False))
    got_first = anyio.Event()

    async def consume() -> None:
        async for _ in provider(srv).stream(request()):
            got_first.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await got_first.wait()
        tg.cancel_scope.cancel()
    (sent,) = srv.requests
    assert await anyio.to_thread.run_sync(sent.disconnected.wait, 30)


@pytest.mark.anyio
async def test_history_carries_tool_ids_and_results(srv: FakeServer) -> None:
    """An earlier step's tool call and its result go back with the call's id."""
    srv.queue(stream(chunk({"content": "done"}), chunk({}, "stop")))
    call_block = ToolCallBlock("call_9", "clock", '{"timezone":"UTC"}', {"timezone": "UTC"}, True)
    history = (
        ChatMessage(role="user", content="time?"),
        ChatMessage(role="assistant", blocks=(TextBlock("Checking."), call_block)),
        ChatMessage(role="tool", content="2026-01-01T00:00:00Z", tool_call_id="call_9"),
    )
    await run(provider(srv), request(*history))
    messages = srv.requests[0].json()["messages"]
    assert messages[1] == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "call_9",
                "type": "function",
                "function": {"name": "clock", "arguments": '{"timezone": "UTC"}'},
            }
        ],
    }
    assert messages[2] == {
        "role": "tool",
        "tool_call_id": "call_9",
        "content": "2026-01-01T00:00:00Z",
    }


@pytest.mark.anyio
async def test_a_malformed_frame_is_a_final_provider_error(srv: FakeServer) -> None:
    """A data line that is not JSON fails the step with a ProviderError, not a crash."""
    srv.queue(Reply(body=[sse(None, chunk({"content": "ok"})), b"data: {not json\n\n"]))
    with pytest.raises(ProviderError, match="malformed") as info:
        await run(provider(srv), request())
    assert not info.value.retryable


@pytest.mark.anyio
async def test_connect_timeout_is_a_final_provider_error() -> None:
    """A server that never completes the connection: the connect timeout ends the step."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # never accepted: once the backlog is full, connects hang
        host, port = listener.getsockname()
        fillers = []
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((host, port))
            fillers.append(s)
        spec = ProviderSpec(
            name="openai", kind="openai", base_url=f"http://{host}:{port}/v1", api_key=KEY
        )
        try:
            with pytest.raises(ProviderError, match="timed out connecting") as info:
                await run(OpenAIProvider(spec, Settings(provider_connect_timeout_s=0.5)), request())
        finally:
            for s in fillers:
                s.close()
    assert not info.value.retryable
