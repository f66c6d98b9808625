"""The demo provider (docs/providers.md) and the model-string seam in front of it."""

from __future__ import annotations

import json
from typing import Any

import anyio
import msgspec
import pytest
from turnlog_reducer import (
    EMPTY,
    Done,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCallBlock,
    ToolCallDelta,
    ToolCallReady,
    ToolCallStarted,
    fold,
)

from turnlog.config import Settings
from turnlog.providers import (
    ASK_USER_TOOL,
    CLOCK_TOOL,
    ChatMessage,
    DemoProvider,
    ModelRequest,
    ProviderError,
    StepEnd,
    UnknownModel,
    get_provider,
    validate_model,
    validate_options,
)
from turnlog.providers.demo import validate_demo_options

FAST = {"tokens_per_second": 100_000}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def request(
    prompt: str = "Tell me about streams",
    *,
    history: tuple[ChatMessage, ...] = (),
    system_prompt: str | None = None,
    **options: Any,
) -> ModelRequest:
    return ModelRequest(
        model="default",
        system_prompt=system_prompt,
        messages=(*history, ChatMessage("user", prompt)) if prompt else history,
        options={**FAST, **options},
        tools=(CLOCK_TOOL, ASK_USER_TOOL),
    )


async def step(req: ModelRequest) -> tuple[list[StreamEvent], StepEnd]:
    """Run one step; check the seam's shape: events, then exactly one StepEnd, no Done."""
    items = [item async for item in DemoProvider().stream(req)]
    events = [e for e in items[:-1] if not isinstance(e, StepEnd)]
    end = items[-1]
    assert isinstance(end, StepEnd)
    assert len(events) == len(items) - 1, "a StepEnd before the last item"
    assert not any(isinstance(e, Done) for e in events)
    fold(EMPTY, events)  # the events are valid in sequence for the shared reducer
    return events, end


async def until_error(req: ModelRequest) -> tuple[list[object], ProviderError]:
    """The items a step yields before it raises ProviderError, and the error."""
    seen: list[object] = []
    try:
        async for item in DemoProvider().stream(req):
            seen.append(item)
    except ProviderError as e:
        return seen, e
    raise AssertionError("the step did not fail")


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


@pytest.mark.anyio
async def test_same_prompt_and_options_give_the_same_events() -> None:
    """The output is a pure function of the prompt and options."""
    first = await step(request(reasoning=True))
    assert await step(request(reasoning=True)) == first
    other, _ = await step(request("Something else entirely", reasoning=True))
    assert text_of(other) != text_of(first[0])


@pytest.mark.anyio
async def test_history_and_system_prompt_change_the_text() -> None:
    """The text depends on the whole prompt, not only on the last user message."""
    base, _ = await step(request())
    with_system, _ = await step(request(system_prompt="Be brief."))
    earlier = (ChatMessage("user", "hi"),)
    with_history, _ = await step(request(history=earlier))
    assert len({text_of(base), text_of(with_system), text_of(with_history)}) == 3


@pytest.mark.anyio
@pytest.mark.parametrize("length", [0, 1, 7, 60, 500])
async def test_length_is_the_number_of_text_tokens(length: int) -> None:
    """length text_delta events, each a word plus its following space (the last without)."""
    events, end = await step(request(length=length))
    tokens = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(tokens) == length
    assert all(t.endswith(" ") and " " not in t[:-1] and t.strip() for t in tokens[:-1])
    assert not tokens or (" " not in tokens[-1] and tokens[-1])
    assert end == StepEnd("stop", usage={"input_tokens": 4, "output_tokens": length})


@pytest.mark.anyio
async def test_default_length_is_60() -> None:
    """Without a length option the answer has 60 tokens."""
    events, _ = await step(request())
    assert len(events) == 60


@pytest.mark.anyio
async def test_shorter_length_is_a_prefix() -> None:
    """Options select how much is said, not what: a shorter answer starts the longer one."""
    short, _ = await step(request(length=10))
    long, _ = await step(request(length=40))
    assert text_of(long).startswith(text_of(short))


@pytest.mark.anyio
async def test_pacing_follows_tokens_per_second() -> None:
    """21 tokens at 100 per second take about 0.2 s (loose bounds)."""
    start = anyio.current_time()
    await step(request(length=21, tokens_per_second=100))
    elapsed = anyio.current_time() - start
    assert 0.15 <= elapsed < 2.0


async def tool_flow(tool: str, result: str) -> tuple[list[StreamEvent], StepEnd, ToolCallBlock]:
    """Step 1 calls ``tool``; step 2, with its result in the history, answers in text."""
    events, end = await step(request(tool=tool))
    assert end.finish_reason == "tool_calls"
    started, *deltas, ready = events
    assert isinstance(started, ToolCallStarted)
    assert started.name == tool
    assert deltas
    assert all(isinstance(d, ToolCallDelta) and d.id == started.id for d in deltas)
    assert isinstance(ready, ToolCallReady)
    assert ready.id == started.id
    text = "".join(d.arguments_delta for d in deltas if isinstance(d, ToolCallDelta))
    assert json.loads(text) == ready.arguments
    (call,) = fold(EMPTY, events)
    assert isinstance(call, ToolCallBlock)
    assert call.ready

    history = (
        ChatMessage("user", "Tell me about streams"),
        ChatMessage("assistant", blocks=(call,)),
        ChatMessage("tool", content=result, tool_call_id=call.id, tool_name=tool),
    )
    answer, end = await step(request("", history=history, tool=tool))
    assert end.finish_reason == "stop"
    assert all(isinstance(e, TextDelta) for e in answer)
    assert len(answer) == 60
    return answer, end, call


@pytest.mark.anyio
async def test_clock_tool_flow() -> None:
    """tool=clock: a streamed clock call first, then text that mentions the clock's result."""
    answer, _, call = await tool_flow("clock", "2030-01-02T03:04:05+00:00")
    assert call.arguments in ({}, {"timezone": "UTC"})
    assert "2030-01-02T03:04:05+00:00" in text_of(answer)


@pytest.mark.anyio
async def test_ask_user_tool_flow() -> None:
    """tool=ask_user: a question call first, then text that mentions the user's answer."""
    answer, _, call = await tool_flow("ask_user", "the ring buffer")
    assert isinstance(call.arguments, dict)
    assert isinstance(call.arguments["question"], str)
    assert call.arguments["question"].strip()
    assert "the ring buffer" in text_of(answer)


@pytest.mark.anyio
async def test_a_new_user_message_calls_the_tool_again() -> None:
    """A tool result before the last user message does not count for the new question."""
    history = (
        ChatMessage("user", "What time is it?"),
        ChatMessage("tool", content="noon", tool_call_id="c", tool_name="clock"),
        ChatMessage("assistant", blocks=()),
    )
    _, end = await step(request("And now?", history=history, tool="clock"))
    assert end.finish_reason == "tool_calls"


@pytest.mark.anyio
async def test_fail_after_zero_fails_before_output_and_is_retryable() -> None:
    """fail_after=0 raises a retryable ProviderError before any event."""
    seen, error = await until_error(request(fail_after=0))
    assert seen == []
    assert error.retryable
    assert "fail_after=0" in str(error)


@pytest.mark.anyio
async def test_fail_after_output_is_final() -> None:
    """fail_after=n emits n tokens, the same as the full answer's, then a final error."""
    full, _ = await step(request())
    seen, error = await until_error(request(fail_after=5))
    assert seen == full[:5]
    assert not error.retryable
    assert "fail_after=5" in str(error)


@pytest.mark.anyio
async def test_fail_after_beyond_the_step_completes() -> None:
    """A step with no more than fail_after tokens completes normally."""
    events, end = await step(request(length=10, fail_after=10))
    assert len(events) == 10
    assert end.finish_reason == "stop"


@pytest.mark.anyio
async def test_reasoning_comes_first_and_leaves_the_text_alone() -> None:
    """reasoning=true streams reasoning deltas before the same text as without it."""
    plain, _ = await step(request())
    events, end = await step(request(reasoning=True))
    kinds = [type(e) for e in events]
    first_text = kinds.index(TextDelta)
    assert first_text > 0
    assert set(kinds[:first_text]) == {ReasoningDelta}
    assert set(kinds[first_text:]) == {TextDelta}
    assert text_of(events) == text_of(plain)
    assert end.usage is not None
    assert end.usage["output_tokens"] == len(events)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"tokens_per_second": 0}, "tokens_per_second"),
        ({"tokens_per_second": "fast"}, "tokens_per_second"),
        ({"length": -1}, "length"),
        ({"length": 2.5}, "length"),
        ({"length": True}, "length"),
        ({"tool": "no spaces"}, "tool"),
        ({"tool_arguments": [1]}, "tool_arguments"),
        ({"fail_after": -3}, "fail_after"),
        ({"reasoning": "yes"}, "reasoning"),
        ({"temperature": 0.2}, "temperature"),
    ],
)
def test_bad_options_are_refused_with_a_readable_message(
    options: dict[str, Any], field: str
) -> None:
    """Each bad option raises ValueError naming the option."""
    with pytest.raises(ValueError, match=field):
        validate_demo_options(options)
    with pytest.raises(ValueError, match=field):
        validate_options("demo:default", options)


def test_good_options_pass() -> None:
    """The contract's options with valid values are accepted."""
    validate_demo_options({})
    validate_demo_options(
        {"tokens_per_second": 10_000, "length": 0, "tool": "clock", "fail_after": None}
    )
    validate_demo_options({"tokens_per_second": 2.5, "tool": "ask_user", "reasoning": True})


@pytest.mark.anyio
async def test_bad_options_at_stream_time_are_a_final_provider_error() -> None:
    """Options that slipped past validation fail the step without a retry."""
    with pytest.raises(ProviderError, match="length") as info:
        await step(request(length="long"))
    assert not info.value.retryable


def test_get_provider_returns_demo_and_the_model_name() -> None:
    """'demo:name' maps to the demo provider and the name after the colon."""
    provider, name = get_provider("demo:default", Settings())
    assert isinstance(provider, DemoProvider)
    assert name == "default"
    validate_model("demo:anything")


@pytest.mark.parametrize("model", ["openai:gpt-4o", "anthropic:claude", "gemini:flash"])
def test_real_providers_need_configuring(model: str) -> None:
    """The contract's real providers are refused until their variables configure them."""
    with pytest.raises(UnknownModel, match=r"no provider .* is configured"):
        get_provider(model, Settings())
    with pytest.raises(UnknownModel, match=r"set [A-Z]+_API_KEY"):
        validate_model(model)


@pytest.mark.parametrize("model", ["demo", "", ":x", "demo:", " demo:default", "nope:x"])
def test_malformed_or_unknown_models_are_refused(model: str) -> None:
    """Malformed strings and unknown providers raise UnknownModel, a ValueError."""
    with pytest.raises(UnknownModel, match="provider") as info:
        validate_model(model)
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnknownModel):
        get_provider(model, Settings())


def test_tool_specs_round_trip_as_json() -> None:
    """The tool specs are plain JSON; ask_user is the interactive one."""
    for spec in (CLOCK_TOOL, ASK_USER_TOOL):
        decoded = msgspec.json.decode(msgspec.json.encode(spec), type=type(spec))
        assert decoded == spec
    assert ASK_USER_TOOL.interactive
    assert not CLOCK_TOOL.interactive
