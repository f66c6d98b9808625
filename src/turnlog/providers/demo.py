"""The ``demo`` provider: a local, deterministic stand-in for a model (docs/providers.md).

No network. The output is a pure function of the request (system prompt, history, options);
only its pacing reads the clock. Options:

``tokens_per_second`` (float > 0, default 40)
    Pace of the output. Token i (counted over the whole step) is emitted at start + i / tps,
    an absolute schedule, so slow consumers or sleeps that overshoot do not accumulate drift.
``length`` (int >= 0, default 60)
    Text tokens in an answer. A token is one word plus the space after it (the last word has
    none); each is one ``text_delta``.
``tool`` (a tool name: "clock", "ask_user", or any tool the conversation offers; or null)
    While the history after the last user message holds no result for that tool, the step
    is one tool call whose JSON arguments stream in small chunks (``tool_call_started``,
    ``tool_call_delta`` × n, ``tool_call_ready``) and ends with ``StepEnd("tool_calls")``.
    Once the result is there, the step answers with text that starts by quoting it.
``tool_arguments`` (object or null)
    The arguments of that call (default: ``{"timezone": "UTC"}`` for clock, a question for
    ask_user, ``{}`` for any other tool).
``fail_after`` (int >= 0 or null)
    The step raises ``ProviderError`` instead of emitting its token number fail_after + 1
    (a step with at most fail_after tokens completes). Every event of the step counts as a
    token: reasoning and text deltas, and each ``tool_call_*`` event. With no output yet
    (fail_after = 0) the error is retryable, as a real connection failure would be; after
    output it is final.
``reasoning`` (bool, default false)
    Stream a fixed sentence of ``reasoning_delta`` tokens first. The text is the same either way.
``title`` (bool, default false)
    Answer with a title instead: the first six words of the last user message (what
    automatic titles get from the demo model, ``turnlog.product.titles``).

A continued step (``request.continuation``, after its process died) emits the events after
the ``stream_seq`` its row stored, so the continued answer equals the never-interrupted one.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from itertools import islice
from typing import Annotated, Any, Final

import msgspec
from turnlog_reducer import (
    ReasoningBlock,
    ReasoningDelta,
    StreamEvent,
    TextBlock,
    TextDelta,
    ToolCallBlock,
    ToolCallDelta,
    ToolCallReady,
    ToolCallStarted,
)

from turnlog.config import Settings
from turnlog.models import ProviderSpec
from turnlog.providers.base import Adapter, ModelRequest, ProviderError, StepEnd

__all__ = [
    "ADAPTER",
    "DemoOptions",
    "DemoProvider",
    "parse_demo_options",
    "validate_demo_options",
]


class DemoOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The demo provider's options, validated."""

    tokens_per_second: Annotated[float, msgspec.Meta(gt=0, le=1_000_000)] = 40.0
    length: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 60
    tool: Annotated[str, msgspec.Meta(pattern=r"^[a-zA-Z_][a-zA-Z0-9_-]{0,63}$")] | None = None
    tool_arguments: dict[str, Any] | None = None
    fail_after: Annotated[int, msgspec.Meta(ge=0)] | None = None
    reasoning: bool = False
    title: bool = False


def parse_demo_options(options: Mapping[str, Any]) -> DemoOptions:
    """``options`` as ``DemoOptions``; a readable ``ValueError`` if they are not valid."""
    try:
        return msgspec.convert(dict(options), DemoOptions)
    except (msgspec.ValidationError, TypeError, ValueError) as e:
        raise ValueError(f"invalid options for the demo provider: {e}") from None


def validate_demo_options(options: Mapping[str, Any]) -> None:
    """Raise a readable ``ValueError`` unless ``options`` are valid demo options."""
    parse_demo_options(options)


# Prose reads better than a list literal of 70 quoted words.
_WORDS: Final = (  # noqa: SIM905
    "the stream keeps every token in order while the log holds the truth and a reader "
    "may join late yet sees the same blocks as everyone else because one reducer folds "
    "each delta into text so a crash loses at most a second of work and replay never "
    "calls a model again which makes answers durable simple calm exact and easy to test "
    "with snapshots checkpoints subscribers cursors frames seq numbers leases fences steps"
).split()
_REASONING: Final = (  # noqa: SIM905
    "Let me think about what was asked and which parts matter most before writing a short "
    "clear answer that stays on topic."
).split()
_ARGUMENT_CHUNK: Final = 4  # characters of tool-call JSON per tool_call_delta
_QUOTE_LIMIT: Final = 200  # characters of a tool result or prompt quoted in the text
_TITLE_WORDS: Final = 6  # words of a title (option ``title``)


class DemoProvider:
    """The demo model. Stateless: the same request always yields the same events."""

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent | StepEnd]:
        """One step for ``request``; see the module docstring for the options."""
        try:
            options = parse_demo_options(request.options)
        except ValueError as e:
            raise ProviderError(str(e), retryable=False) from None
        pending = _tool_call_pending(request, options.tool)
        events: list[StreamEvent] = []
        if options.reasoning:
            events += (ReasoningDelta(t) for t in _tokens(_REASONING))
        if options.title:
            prompt, _ = _since_last_user(request)
            events += (TextDelta(t) for t in _tokens(prompt.split()[:_TITLE_WORDS]))
            finish_reason = "stop"
        elif options.tool is not None and pending:
            events += _tool_call(_seed(request), options.tool, request, options.tool_arguments)
            finish_reason = "tool_calls"
        else:
            answer = _answer_words(request, options.tool)
            events += (TextDelta(t) for t in _tokens(islice(answer, options.length)))
            finish_reason = "stop"

        # asyncio's own clock and sleep, not anyio's: the server runs on asyncio only, and
        # anyio looks its backend up on every call (sniffio, current_task), which was a
        # tenth of the server's CPU at 500 generations, one sleep per token.
        loop = asyncio.get_running_loop()
        start = loop.time()
        interval = 1.0 / options.tokens_per_second
        # A continued step (recovery) goes on after the events its row stored: the same
        # request gives the same events, so the continued answer is the uncut one exactly.
        done = 0 if request.continuation is None else request.continuation.stream_seq
        for i, event in enumerate(events):
            if i < done:
                continue
            # Sleep even when already late: each event then reaches a real await.
            await asyncio.sleep(max(0.0, start + (i - done) * interval - loop.time()))
            if options.fail_after is not None and i == options.fail_after:
                raise ProviderError(
                    f"demo provider failed after {i} tokens as asked (fail_after={i})",
                    retryable=i == 0,
                )
            yield event
        yield StepEnd(
            finish_reason,
            usage={"input_tokens": _input_tokens(request), "output_tokens": len(events)},
        )


def _make(spec: ProviderSpec, settings: Settings) -> DemoProvider:
    return DemoProvider()


ADAPTER = Adapter(
    make=_make,
    options=DemoOptions,
    capabilities={"tools": True, "reasoning": True, "local": True},
)


def _seed(request: ModelRequest) -> int:
    """A seed from the prompt: system prompt and history (options only select and pace)."""
    digest = hashlib.sha256(msgspec.json.encode([request.system_prompt, request.messages])).digest()
    return int.from_bytes(digest[:8], "big")


def _since_last_user(request: ModelRequest) -> tuple[str, list[tuple[str, str]]]:
    """The last user message's text and the (tool name, result) pairs after it."""
    messages = request.messages
    # From the end: the last user message is near it (a long history is not scanned).
    last_user = next(
        (i for i in range(len(messages) - 1, -1, -1) if messages[i].role == "user"), -1
    )
    prompt = messages[last_user].content if last_user >= 0 else ""
    results = [
        (m.tool_name or "", m.content) for m in messages[last_user + 1 :] if m.role == "tool"
    ]
    return prompt, results


def _tool_call_pending(request: ModelRequest, tool: str | None) -> bool:
    """Whether ``tool`` still has to be called: no result for it since the last user message."""
    if tool is None:
        return False
    _, results = _since_last_user(request)
    return all(name != tool for name, _ in results)


def _tool_call(
    seed: int, tool: str, request: ModelRequest, given: dict[str, Any] | None = None
) -> Iterator[StreamEvent]:
    """One tool call with its JSON arguments streamed in small chunks."""
    call_id = "call_" + hashlib.sha256(b"%d:%b" % (seed, tool.encode())).hexdigest()[:16]
    arguments: dict[str, Any]
    if given is not None:
        arguments = given
    elif tool == "clock":
        arguments = {"timezone": "UTC"}
    elif tool == "ask_user":
        prompt, _ = _since_last_user(request)
        topic = " ".join(prompt.split()[:6]) or "this"
        arguments = {"question": f"What should I focus on about “{topic}”?"}
    else:
        arguments = {}
    text = msgspec.json.encode(arguments).decode()
    yield ToolCallStarted(call_id, tool)
    for at in range(0, len(text), _ARGUMENT_CHUNK):
        yield ToolCallDelta(call_id, text[at : at + _ARGUMENT_CHUNK])
    yield ToolCallReady(call_id, arguments)


def _answer_words(request: ModelRequest, tool: str | None) -> Iterator[str]:
    """The words of the answer, without end: an intro, then deterministic sentences (seeded
    by the request, hashed only once the intro is used up: a short answer never hashes the
    whole history)."""
    prompt, results = _since_last_user(request)
    answered = [content for name, content in results if name == tool] if tool else []
    if answered:
        quoted = _quote(answered[-1])
        intro = {"clock": "The clock says", "ask_user": "You answered:"}.get(
            tool or "", f"{tool} said"
        )
        yield from f"{intro} {quoted}.".split()
    else:
        topic = _quote(" ".join(prompt.split()[:6])) or "nothing"
        yield from f"Demo answer to “{topic}”.".split()
    rng = random.Random(_seed(request))
    while True:
        sentence = [rng.choice(_WORDS) for _ in range(rng.randint(6, 14))]
        sentence[0] = sentence[0].capitalize()
        sentence[-1] += "."
        yield from sentence


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _QUOTE_LIMIT else text[: _QUOTE_LIMIT - 1] + "…"


def _tokens(words: Iterable[str]) -> list[str]:
    """Words as tokens: each word with the space after it, the last one without."""
    listed = list(words)
    return [w + " " for w in listed[:-1]] + listed[-1:]


def _input_tokens(request: ModelRequest) -> int:
    """A rough count of the prompt's tokens: its words."""
    # The texts joined by a space count the same words as each counted alone (a space
    # never joins two words), in one split instead of one per message and block.
    texts = [request.system_prompt or ""]
    for m in request.messages:
        texts.append(m.content)
        for block in m.blocks:  # isinstance, not match: this runs over the whole history
            if isinstance(block, (TextBlock, ReasoningBlock)):
                texts.append(block.text)
            elif isinstance(block, ToolCallBlock):
                texts.append(block.arguments_text)
    return len(" ".join(texts).split())
