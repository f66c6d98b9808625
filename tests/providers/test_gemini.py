"""The gemini adapter through the real ``google-genai`` SDK against a fake Gemini API on
loopback speaking ``streamGenerateContent?alt=sse`` (no SDK patching, no transport mocks)."""

from __future__ import annotations

import base64
import re
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
    ToolCallReady,
    ToolCallStarted,
    fold,
)

from turnlog.providers.base import CLOCK_TOOL, ChatMessage, ModelRequest, ProviderError, StepEnd
from turnlog.providers.gemini import SYNTHETIC_ID, GeminiProvider

from . import gemini_wire as w
from .fakeserver import FakeServer, Hold, Pause, Reply, json_reply

pytestmark = pytest.mark.anyio

KEY = "AIza-test-0123456789"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


def provider(fake: FakeServer, **kw: Any) -> GeminiProvider:
    return GeminiProvider(api_key=KEY, base_url=fake.url, **kw)


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


async def run(p: GeminiProvider, req: ModelRequest) -> tuple[list[StreamEvent], StepEnd]:
    events: list[StreamEvent] = []
    async for item in p.stream(req):
        if isinstance(item, StepEnd):
            return events, item
        events.append(item)
    raise AssertionError("no StepEnd")


async def run_to_error(
    p: GeminiProvider, req: ModelRequest
) -> tuple[list[StreamEvent | StepEnd], ProviderError]:
    items: list[StreamEvent | StepEnd] = []
    try:
        async for item in p.stream(req):
            items.append(item)
    except ProviderError as e:
        return items, e
    raise AssertionError(f"no ProviderError; streamed {items}")


async def test_plain_text_streams_and_sends_the_documented_request(fake: FakeServer) -> None:
    """Text parts become text_delta; the request has system_instruction, user role, tools."""
    fake.queue(
        w.reply(
            w.chunk(w.text("Hello")),
            w.chunk(w.text(", world")),
            w.chunk(w.text("!"), finish="STOP"),
        )
    )
    events, end = await run(provider(fake), request())
    assert events == [TextDelta("Hello"), TextDelta(", world"), TextDelta("!")]
    assert end.finish_reason == "stop"
    sent = fake.requests[0]
    # The API version in the path (v1beta, v1) is the SDK release's choice.
    assert sent.method == "POST"
    assert re.fullmatch(w.PATH, sent.path), sent.path
    assert sent.query["alt"] == ["sse"]
    assert sent.headers["x-goog-api-key"] == KEY
    body = sent.json()
    assert body["contents"] == [{"role": "user", "parts": [{"text": "Hi"}]}]
    assert body["systemInstruction"]["parts"] == [{"text": "Be brief."}]
    declaration = body["tools"][0]["functionDeclarations"][0]
    assert declaration["name"] == "clock"
    schema = declaration.get("parametersJsonSchema") or declaration["parameters_json_schema"]
    assert schema == CLOCK_TOOL.parameters


async def test_thoughts_and_signatures_on_any_part(fake: FakeServer) -> None:
    """Thought parts are reasoning; a signature lands on the block its part made (bytes in
    the SDK, base64 in the block), including one on an empty closing part."""
    fake.queue(
        w.reply(
            w.chunk(w.text("Thinking ", thought=True)),
            w.chunk(w.text("hard.", thought=True, signature=w.sig("thought-sig"))),
            w.chunk(w.text("The answer")),
            w.chunk(w.text(" is 4.")),
            w.chunk(w.text("", signature=w.sig("text-sig")), finish="STOP", thoughts=7),
        )
    )
    events, end = await run(provider(fake), request(thinking_budget=1024))
    assert fold(EMPTY, events) == (
        ReasoningBlock("Thinking hard.", signature=w.sig("thought-sig")),
        TextBlock("The answer is 4.", signature=w.sig("text-sig")),
    )
    config = fake.requests[0].json()["generationConfig"]
    # The API reads proto JSON: camelCase or snake_case keys, as the SDK release writes them.
    thinking = config.get("thinkingConfig") or config["thinking_config"]
    assert sorted(thinking.values()) == [True, 1024]
    assert end.usage == {"input_tokens": 12, "output_tokens": 11, "reasoning_tokens": 7}


async def test_a_whole_function_call_with_a_signature(fake: FakeServer) -> None:
    """A function call arrives whole: started, one delta of its JSON, ready; a synthetic
    stable id; its signature on the tool call block; finish is tool_calls."""
    fake.queue(
        w.reply(
            w.chunk(w.call("clock", {"timezone": "Europe/Warsaw"}, signature=w.sig("fc-sig"))),
            w.chunk(finish="STOP"),
        )
    )
    events, end = await run(provider(fake), request())
    call_id = events[0].id  # type: ignore[union-attr]
    assert call_id.startswith(SYNTHETIC_ID)
    assert events[:3] == [
        ToolCallStarted(call_id, "clock"),
        ToolCallDelta(call_id, '{"timezone": "Europe/Warsaw"}'),
        ToolCallReady(call_id, {"timezone": "Europe/Warsaw"}),
    ]
    (block,) = fold(EMPTY, events)
    assert isinstance(block, ToolCallBlock)
    assert block.signature == w.sig("fc-sig")
    assert end.finish_reason == "tool_calls"


async def test_two_parallel_calls_keep_their_own_ids(fake: FakeServer) -> None:
    """Two calls in one chunk are two ready tool calls with distinct ids (the API's, if given)."""
    second = w.call("clock", {"timezone": "UTC"})
    second["functionCall"]["id"] = "fc-api-2"
    fake.queue(
        w.reply(
            w.chunk(w.call("clock", {}, signature=w.sig("s1")), second, finish="STOP"),
        )
    )
    events, _ = await run(provider(fake), request())
    calls = [b for b in fold(EMPTY, events) if isinstance(b, ToolCallBlock)]
    assert [(c.name, c.arguments, c.ready) for c in calls] == [
        ("clock", {}, True),
        ("clock", {"timezone": "UTC"}, True),
    ]
    assert calls[0].id.startswith(SYNTHETIC_ID)
    assert calls[1].id == "fc-api-2"


async def test_usage_in_one_shape(fake: FakeServer) -> None:
    """usage_metadata's last totals: prompt, candidates plus thoughts, cached."""
    fake.queue(
        w.reply(
            w.chunk(w.text("a"), out=1),
            w.chunk(w.text("b"), finish="STOP", prompt=100, out=2, thoughts=3, cached=60),
        )
    )
    _, end = await run(provider(fake), request())
    assert end.usage == {
        "input_tokens": 100,
        "output_tokens": 5,
        "cached_tokens": 60,
        "reasoning_tokens": 3,
    }


async def test_error_chunk_mid_stream(fake: FakeServer) -> None:
    """An error object in the stream after output ends the step with a ProviderError."""
    fake.queue(w.reply(w.chunk(w.text("Partial")), w.error_chunk(503, "UNAVAILABLE", "overloaded")))
    items, error = await run_to_error(provider(fake), request())
    assert items == [TextDelta("Partial")]
    assert "overloaded" in str(error)
    assert error.retryable


async def test_429_then_success_with_retry_delay(fake: FakeServer) -> None:
    """429 is retryable with the wait from Retry-After or RetryInfo; the next call works;
    the SDK never retried by itself; the key is not in the error."""
    fake.queue(
        w.http_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded", {"retry-after": "3"}),
        w.http_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded", retry="7s"),
        w.http_error(500, "INTERNAL", "boom"),
        w.reply(w.chunk(w.text("ok"), finish="STOP")),
    )
    p = provider(fake)
    for wait in (3.0, 7.0, None):
        _, error = await run_to_error(p, request())
        assert error.retryable
        assert error.retry_after == wait
        assert KEY not in str(error)
    events, _ = await run(p, request())
    assert events == [TextDelta("ok")]
    assert len(fake.requests) == 4


async def test_bad_request_is_final(fake: FakeServer) -> None:
    """A 400 is not retryable and keeps the API's message."""
    fake.queue(w.http_error(400, "INVALID_ARGUMENT", "Invalid JSON payload"))
    _, error = await run_to_error(provider(fake), request())
    assert not error.retryable
    assert "Invalid JSON payload" in str(error)


@pytest.mark.parametrize(
    "body",
    [
        {"error": "upstream unavailable"},  # a gateway's, and this fake's unscripted answer
        {"error": {"code": 503, "message": "upstream unavailable", "details": 7}},
        [{"error": {"code": 503, "message": "upstream unavailable", "details": "none"}}],
        "upstream unavailable",
    ],
    ids=["error-string", "details-not-a-list", "array", "json-string"],
)
async def test_an_error_body_not_shaped_like_googles_is_still_a_provider_error(
    fake: FakeServer, body: Any
) -> None:
    """The API's errors are google.rpc.Status objects; a gateway in front of it may send
    another shape, which is a ProviderError by its status all the same (no wait read)."""
    fake.queue(json_reply(503, body))
    _, error = await run_to_error(provider(fake), request())
    assert error.retryable
    assert error.retry_after is None
    assert "503" in str(error)


async def test_stall_times_out_and_hangs_up(fake: FakeServer) -> None:
    """No bytes for the stall timeout: a retryable ProviderError, the connection closed."""
    fake.queue(Reply(body=[w.chunk(w.text("slow")), Hold(30)]))
    items, error = await run_to_error(provider(fake, read_timeout_s=0.5), request())
    assert items == [TextDelta("slow")]
    assert error.retryable
    assert fake.requests[0].disconnected.wait(10)


async def test_cancel_closes_the_http_request(fake: FakeServer) -> None:
    """Cancelling the step closes the connection at once: the server sees the disconnect."""
    body: list[Any] = []
    for i in range(200):
        body += [w.chunk(w.text(f"{i} ")), Pause(0.05)]
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


async def test_history_roles_function_responses_and_signatures(fake: FakeServer) -> None:
    """model/user roles; calls go back with their signature (bytes) and the API's id only;
    results are function responses named after their call; same-role turns merge;
    unsigned and redacted reasoning stay home."""
    fake.queue(w.reply(w.chunk(w.text("fine"), finish="STOP")))
    synthetic = SYNTHETIC_ID + "0123456789abcdef"
    assistant = ChatMessage(
        role="assistant",
        blocks=(
            ReasoningBlock("Need the time.", signature=w.sig("t-sig")),
            ReasoningBlock("", signature="REDACTED", redacted=True),
            ReasoningBlock("unsigned"),
            TextBlock("Let me check."),
            ToolCallBlock(synthetic, "clock", "{}", {}, True, signature=w.sig("fc-sig")),
            ToolCallBlock("fc-api", "clock", '{"timezone":"UTC"}', {"timezone": "UTC"}, True),
        ),
    )
    req = request(
        ChatMessage(role="user", content="What time is it?"),
        assistant,
        ChatMessage(role="tool", content="12:00", tool_call_id=synthetic, tool_name="clock"),
        ChatMessage(role="tool", content="10:00", tool_call_id="fc-api", tool_name="clock"),
        ChatMessage(role="user", content="Thanks"),
    )
    await run(provider(fake), req)
    assert fake.requests[0].json()["contents"] == [
        {"role": "user", "parts": [{"text": "What time is it?"}]},
        {
            "role": "model",
            "parts": [
                {"text": "Need the time.", "thought": True, "thoughtSignature": w.sig("t-sig")},
                {"text": "Let me check."},
                {
                    "functionCall": {"name": "clock", "args": {}},
                    "thoughtSignature": w.sig("fc-sig"),
                },
                {"functionCall": {"id": "fc-api", "name": "clock", "args": {"timezone": "UTC"}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "clock", "response": {"result": "12:00"}}},
                {
                    "functionResponse": {
                        "id": "fc-api",
                        "name": "clock",
                        "response": {"result": "10:00"},
                    }
                },
                {"text": "Thanks"},
            ],
        },
    ]


async def test_signature_round_trips_byte_for_byte(fake: FakeServer) -> None:
    """A signature of arbitrary bytes comes back to the API exactly as it was sent."""
    raw = bytes(range(256))
    wire = base64.b64encode(raw).decode()
    fake.queue(w.reply(w.chunk(w.call("clock", {}, signature=wire), finish="STOP")))
    events, _ = await run(provider(fake), request())
    blocks = fold(EMPTY, events)
    fake.queue(w.reply(w.chunk(w.text("ok"), finish="STOP")))
    await run(
        provider(fake),
        request(
            ChatMessage(role="user", content="Hi"), ChatMessage(role="assistant", blocks=blocks)
        ),
    )
    part = fake.requests[1].json()["contents"][1]["parts"][0]
    assert base64.urlsafe_b64decode(part["thoughtSignature"]) == raw


async def test_bad_options_are_a_final_error(fake: FakeServer) -> None:
    """Unknown options fail before any request."""
    _, error = await run_to_error(provider(fake), request(reasoning_effort="high"))
    assert "reasoning_effort" in str(error)
    assert not error.retryable
    assert fake.requests == []


# The SDK warns about a value its enum does not know, and goes on.
@pytest.mark.filterwarnings("ignore:SOMETHING_NEW is not a valid:UserWarning")
async def test_an_unknown_finish_reason_passes_through(fake: FakeServer) -> None:
    """A finish reason newer than the SDK release still ends the step, lowercased."""
    fake.queue(w.reply(w.chunk(w.text("x"), finish="SOMETHING_NEW")))
    _, end = await run(provider(fake), request())
    assert end.finish_reason == "something_new"


async def test_connection_refused_is_retryable_and_names_the_host() -> None:
    """Nobody listening: a retryable connection error naming the host it tried."""
    with FakeServer() as gone:
        url = gone.url
    _, error = await run_to_error(GeminiProvider(api_key=KEY, base_url=url), request())
    assert error.retryable
    assert url.removeprefix("http://") in str(error)
