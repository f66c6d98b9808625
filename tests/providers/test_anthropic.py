"""The anthropic adapter through the real ``anthropic`` SDK against a fake Messages API on
loopback that streams the documented SSE wire format (no SDK patching, no transport mocks)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from turnlog_reducer import (
    EMPTY,
    ReasoningBlock,
    StreamEvent,
    TextBlock,
    TextDelta,
    ToolCallBlock,
    ToolCallDelta,
    encode_blocks,
    fold,
)

from turnlog.providers.anthropic import AnthropicProvider, history_messages
from turnlog.providers.base import (
    CLOCK_TOOL,
    ChatMessage,
    ModelRequest,
    ProviderError,
    StepEnd,
)

from . import anthropic_wire as w
from .fakeserver import FakeServer, Hold, Pause, Reply

pytestmark = pytest.mark.anyio

KEY = "sk-ant-test-0123456789"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


def provider(fake: FakeServer, **kw: Any) -> AnthropicProvider:
    return AnthropicProvider(api_key=KEY, base_url=fake.url, **kw)


def request(
    *messages: ChatMessage, system: str | None = "Be brief.", **options: Any
) -> ModelRequest:
    return ModelRequest(
        model=w.MODEL,
        system_prompt=system,
        messages=messages or (ChatMessage(role="user", content="Hi"),),
        options=options,
        tools=(CLOCK_TOOL,),
    )


async def run(p: AnthropicProvider, req: ModelRequest) -> tuple[list[StreamEvent], StepEnd]:
    events: list[StreamEvent] = []
    async for item in p.stream(req):
        if isinstance(item, StepEnd):
            return events, item
        events.append(item)
    raise AssertionError("no StepEnd")


async def run_to_error(
    p: AnthropicProvider, req: ModelRequest
) -> tuple[list[StreamEvent | StepEnd], ProviderError]:
    """The items streamed before the step failed, and its ProviderError."""
    items: list[StreamEvent | StepEnd] = []
    try:
        async for item in p.stream(req):
            items.append(item)
    except ProviderError as e:
        return items, e
    raise AssertionError(f"no ProviderError; streamed {items}")


async def test_plain_text_streams_and_sends_the_documented_request(fake: FakeServer) -> None:
    """Text deltas become text_delta events; the request carries model, system, tools, key."""
    fake.queue(w.message(w.text(0, "Hello", ", world", "!")))
    events, end = await run(provider(fake), request())
    assert events == [TextDelta("Hello"), TextDelta(", world"), TextDelta("!")]
    assert end.finish_reason == "stop"
    sent = fake.requests[0]
    assert (sent.method, sent.path) == ("POST", "/v1/messages")
    # The SDK sends the key as x-api-key or as a bearer token, depending on its version.
    assert KEY in (sent.headers.get("x-api-key"), sent.headers.get("authorization", "")[7:])
    body = sent.json()
    assert body["model"] == w.MODEL
    assert body["stream"] is True
    assert body["system"] == "Be brief."
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    assert body["tools"][0]["name"] == "clock"
    assert body["tools"][0]["input_schema"] == CLOCK_TOOL.parameters
    assert body["max_tokens"] == 8192


async def test_thinking_signatures_and_redacted_thinking(fake: FakeServer) -> None:
    """Each thinking block keeps its own signature; redacted thinking keeps its data; the
    thinking option asks for a budget."""
    fake.queue(
        w.message(
            w.thinking(0, "sig-A", "Let me ", "think."),
            w.redacted(1, "EmwKAhgBEgy3va3pzix/LafPsn4a"),
            w.thinking(2, "sig-B", "More."),
            w.text(3, "Answer."),
        )
    )
    events, _ = await run(provider(fake), request(thinking_budget=2048))
    assert fold(EMPTY, events) == (
        ReasoningBlock("Let me think.", signature="sig-A"),
        ReasoningBlock("", signature="EmwKAhgBEgy3va3pzix/LafPsn4a", redacted=True),
        ReasoningBlock("More.", signature="sig-B"),
        TextBlock("Answer."),
    )
    assert fake.requests[0].json()["thinking"] == {"type": "enabled", "budget_tokens": 2048}


async def test_adaptive_thinking_and_its_display(fake: FakeServer) -> None:
    """adaptive_thinking asks for adaptive thinking, thinking_display for how it shows."""
    fake.queue(w.message(w.text(0, "ok")))
    await run(provider(fake), request(adaptive_thinking=True, thinking_display="summarized"))
    assert fake.requests[0].json()["thinking"] == {"type": "adaptive", "display": "summarized"}


async def test_omitted_thinking_keeps_its_signature_and_goes_back_empty(fake: FakeServer) -> None:
    """A thinking block with no text (display "omitted") still keeps its signature, and the
    history sends it back as the empty signed thinking block it was."""
    fake.queue(w.message(w.thinking(0, "sig-omitted"), w.text(1, "Hi.")))
    events, _ = await run(provider(fake), request())
    blocks = fold(EMPTY, events)
    history = history_messages(
        [ChatMessage(role="user", content="Hi"), ChatMessage(role="assistant", blocks=blocks)]
    )
    assert history[1]["content"] == [
        {"type": "thinking", "thinking": "", "signature": "sig-omitted"},
        {"type": "text", "text": "Hi."},
    ]


async def test_tool_call_arguments_in_pieces(fake: FakeServer) -> None:
    """input_json_delta fragments stream as tool_call_delta; the block's stop makes it ready."""
    fake.queue(
        w.message(
            w.text(0, "Checking."),
            w.tool_use(1, "toolu_01A", "clock", '{"time', 'zone": "Eu', 'rope/Warsaw"}'),
            stop_reason="tool_use",
        )
    )
    events, end = await run(provider(fake), request())
    assert end.finish_reason == "tool_calls"
    deltas = [e.arguments_delta for e in events if isinstance(e, ToolCallDelta)]
    assert deltas == ['{"time', 'zone": "Eu', 'rope/Warsaw"}']
    assert fold(EMPTY, events)[1] == ToolCallBlock(
        "toolu_01A",
        "clock",
        '{"timezone": "Europe/Warsaw"}',
        {"timezone": "Europe/Warsaw"},
        True,
    )


async def test_two_parallel_tool_calls(fake: FakeServer) -> None:
    """Two tool_use blocks in one message are two ready tool calls with their own ids."""
    fake.queue(
        w.message(
            w.tool_use(0, "toolu_A", "clock", '{"timezone":', ' "UTC"}'),
            w.tool_use(1, "toolu_B", "clock", ""),
            stop_reason="tool_use",
        )
    )
    events, _ = await run(provider(fake), request())
    blocks = fold(EMPTY, events)
    assert [(b.id, b.arguments, b.ready) for b in blocks if isinstance(b, ToolCallBlock)] == [
        ("toolu_A", {"timezone": "UTC"}, True),
        ("toolu_B", {}, True),
    ]


async def test_usage_in_one_shape(fake: FakeServer) -> None:
    """message_start's input and message_delta's cumulative output, cache reads counted."""
    reply = w.message(w.text(0, "x"), out=42)
    reply.body = [w.message_start(input_tokens=100, cache_read=900), *list(reply.body)[1:]]
    fake.queue(reply)
    _, end = await run(provider(fake), request())
    assert end.usage == {"input_tokens": 1000, "output_tokens": 42, "cached_tokens": 900}


async def test_error_event_mid_stream(fake: FakeServer) -> None:
    """An `error` event after output ends the step with a ProviderError naming it."""
    fake.queue(
        Reply(
            body=[
                w.message_start(),
                w.block_start(0, {"type": "text", "text": ""}),
                w.delta(0, {"type": "text_delta", "text": "Partial"}),
                w.error_event("overloaded_error", "Overloaded"),
            ]
        )
    )
    events, error = await run_to_error(provider(fake), request())
    assert events == [TextDelta("Partial")]
    assert str(error) == "anthropic: mid-stream overloaded_error: Overloaded"
    assert error.retryable  # the engine retries only before output


async def test_overloaded_and_429_are_retryable_with_retry_after(fake: FakeServer) -> None:
    """529 overloaded and 429 are retryable; Retry-After is passed on; then it succeeds."""
    fake.queue(
        w.http_error(529, "overloaded_error", "Overloaded"),
        w.http_error(429, "rate_limit_error", "Slow down", {"retry-after": "2"}),
        w.message(w.text(0, "ok")),
    )
    p = provider(fake)
    with pytest.raises(ProviderError) as overloaded:
        await run(p, request())
    assert overloaded.value.retryable
    with pytest.raises(ProviderError) as limited:
        await run(p, request())
    assert limited.value.retryable
    assert limited.value.retry_after == 2.0
    assert KEY not in str(limited.value)
    events, _ = await run(p, request())
    assert events == [TextDelta("ok")]
    assert len(fake.requests) == 3  # the SDK itself never retried


async def test_bad_request_is_final(fake: FakeServer) -> None:
    """A 400 is not retryable and its message is kept."""
    fake.queue(w.http_error(400, "invalid_request_error", "messages: field required"))
    with pytest.raises(ProviderError) as e:
        await run(provider(fake), request())
    assert not e.value.retryable
    assert str(e.value) == "anthropic: HTTP 400 invalid_request_error: messages: field required"


async def test_stall_times_out_and_hangs_up(fake: FakeServer) -> None:
    """No bytes for the stall timeout: a retryable ProviderError, and the connection closes."""
    fake.queue(Reply(body=[w.message_start(), *w.text(0, "slow")[:2], Hold(30)]))
    events, error = await run_to_error(provider(fake, read_timeout_s=0.5), request())
    assert events == [TextDelta("slow")]
    assert error.retryable
    assert fake.requests[0].disconnected.wait(10)


async def test_cancel_closes_the_http_request(fake: FakeServer) -> None:
    """Cancelling the step closes the connection at once: the server sees the disconnect."""
    body = [w.message_start(), w.block_start(0, {"type": "text", "text": ""})]
    body += [
        x
        for i in range(200)
        for x in (w.delta(0, {"type": "text_delta", "text": f"{i} "}), Pause(0.05))
    ]
    fake.queue(Reply(body=body))
    seen: list[Any] = []
    with anyio.move_on_after(30) as outer:
        async with anyio.create_task_group() as tg:

            async def consume() -> None:
                async for item in provider(fake).stream(request()):
                    seen.append(item)
                    if len(seen) == 3:
                        tg.cancel_scope.cancel()

            tg.start_soon(consume)
    assert not outer.cancelled_caught
    assert len(seen) == 3
    assert fake.requests[0].disconnected.wait(5), "the fake server saw no disconnect"


async def test_history_sends_back_signatures_tool_ids_and_merges_roles(fake: FakeServer) -> None:
    """Thinking goes back signed, redacted thinking with its data, tool_use/tool_result with
    their ids; consecutive user turns merge; unsigned reasoning is left out."""
    fake.queue(w.message(w.text(0, "fine")))
    assistant = ChatMessage(
        role="assistant",
        blocks=(
            ReasoningBlock("Need the time.", signature="sig-1"),
            ReasoningBlock("", signature="REDACTED==", redacted=True),
            TextBlock("Let me check."),
            ToolCallBlock("toolu_9", "clock", '{"timezone":"UTC"}', {"timezone": "UTC"}, True),
        ),
    )
    req = request(
        ChatMessage(role="user", content="What time is it?"),
        assistant,
        ChatMessage(role="tool", content="2026-01-01T00:00:00Z", tool_call_id="toolu_9"),
        ChatMessage(role="user", content="And now?"),
        ChatMessage(role="assistant", blocks=(ReasoningBlock("unsigned"), TextBlock(""))),
        ChatMessage(role="user", content="Again?"),
    )
    await run(provider(fake), req)
    assert fake.requests[0].json()["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "What time is it?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Need the time.", "signature": "sig-1"},
                {"type": "redacted_thinking", "data": "REDACTED=="},
                {"type": "text", "text": "Let me check."},
                {
                    "type": "tool_use",
                    "id": "toolu_9",
                    "name": "clock",
                    "input": {"timezone": "UTC"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_9",
                    "content": "2026-01-01T00:00:00Z",
                },
                {"type": "text", "text": "And now?"},
                {"type": "text", "text": "Again?"},
            ],
        },
    ]


async def test_bad_options_are_a_final_error(fake: FakeServer) -> None:
    """Unknown options fail before any request."""
    with pytest.raises(ProviderError) as e:
        await run(provider(fake), request(tokens_per_second=3))
    assert "tokens_per_second" in str(e.value)
    assert not e.value.retryable
    assert fake.requests == []


def test_blocks_without_signatures_encode_as_before() -> None:
    """A plain text answer's blocks carry no signature keys."""
    assert encode_blocks((TextBlock("x"),)) == b'[{"type":"text","text":"x"}]'


async def test_connection_refused_is_retryable_and_names_the_host() -> None:
    """Nobody listening: a retryable connection error naming the host it tried."""
    with FakeServer() as gone:
        url = gone.url
    _, error = await run_to_error(AnthropicProvider(api_key=KEY, base_url=url), request())
    assert error.retryable
    assert url.removeprefix("http://") in str(error)
