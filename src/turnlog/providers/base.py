"""The provider seam: what the generation engine hands a model and what it gets back.

A provider turns a ``ModelRequest`` (history, system prompt, options, tools) into one step
of output: reducer stream events (``text_delta``, ``reasoning_delta``, ``tool_call_*``;
never ``done``) followed by exactly one ``StepEnd``. The engine owns everything else:
numbering, publishing, checkpoints, running server tools, retries and the final status.

Errors: a provider raises ``ProviderError``; ``retryable`` says whether trying the same
request again may succeed (the engine only retries a failure before any output), and
``retry_after`` what the provider asked to wait (its ``Retry-After``).

A provider module exports ``ADAPTER`` (an ``Adapter``): how to build its ``Provider`` from a
configured ``ProviderSpec``, the Struct its ``options`` must convert to (unknown keys refused)
and what ``GET /v1/models`` says it can do. ``turnlog.providers`` imports it lazily, so a
missing SDK is a 400 naming the extra to install, never an ImportError at startup.

Usage, for every provider in one shape (``usage()``): ``input_tokens``, ``output_tokens`` and,
where the provider reports them, ``cached_tokens`` and ``reasoning_tokens``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import msgspec
from turnlog_reducer import Block, StreamEvent, TextBlock

from turnlog.models import ModelForbidden, ProviderSpec, UnknownModel

if TYPE_CHECKING:
    from turnlog.config import Settings

__all__ = [
    "ASK_USER_TOOL",
    "CLOCK_TOOL",
    "CONTINUE_PROMPT",
    "Adapter",
    "ChatMessage",
    "Continuation",
    "ModelForbidden",
    "ModelRequest",
    "Provider",
    "ProviderError",
    "StepEnd",
    "ToolSpec",
    "UnknownModel",
    "continued_history",
    "usage",
]


class ChatMessage(msgspec.Struct, frozen=True):
    """One history entry, built by the engine from stored rows in seq order."""

    role: Literal["user", "assistant", "tool"]
    content: str = ""  # user text / tool result text
    blocks: tuple[Block, ...] = ()  # assistant content: text, reasoning, tool calls
    tool_call_id: str | None = None
    tool_name: str | None = None


class ToolSpec(msgspec.Struct, frozen=True):
    """A tool offered to the model; ``interactive`` tools are answered by the user."""

    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema of the arguments object
    interactive: bool = False


class Continuation(msgspec.Struct, frozen=True):
    """A step continued after its process died: what its row had stored (``blocks``, folded
    from ``stream_seq`` stream events). The adapter asks its model to go on from
    ``settled`` (the blocks that can be sent back: text, signed reasoning, finished calls);
    docs/providers.md says how each provider is asked."""

    blocks: tuple[Block, ...]
    stream_seq: int
    settled: tuple[Block, ...]

    @property
    def text(self) -> str:
        """The settled text blocks joined: the answer so far, as a model would go on from it."""
        return "".join(b.text for b in self.settled if isinstance(b, TextBlock))


# The turn that asks a model to go on with an answer cut by a crash ("instruct").
CONTINUE_PROMPT: Final = (
    "Your previous answer was cut off because the server handling it stopped. Continue it "
    "exactly where it stopped: do not repeat any of it, and do not mention the interruption."
)


def continued_history(request: ModelRequest, *, prefill: bool) -> tuple[ChatMessage, ...]:
    """The history of a step, continuing its cut answer if it is one: the settled partial
    answer as the last assistant turn, then (unless ``prefill``: the model extends that turn
    itself) a user turn asking to go on. A step cut before any settled output simply starts
    again. Reasoning is left out: a model continues the answer, not its thoughts."""
    c = request.continuation
    if c is None:
        return request.messages
    kept = tuple(b for b in c.settled if isinstance(b, TextBlock))
    if not kept:
        return request.messages
    partial = ChatMessage(role="assistant", blocks=kept)
    if prefill:
        return (*request.messages, partial)
    return (*request.messages, partial, ChatMessage(role="user", content=CONTINUE_PROMPT))


class ModelRequest(msgspec.Struct, frozen=True):
    """Everything a provider needs for one step."""

    model: str  # the name part of "provider:name"
    system_prompt: str | None
    messages: tuple[ChatMessage, ...]
    options: dict[str, Any]
    tools: tuple[ToolSpec, ...]
    # Set when the step continues a row whose process died (recovery); the adapter then
    # asks for the rest of the answer, not a new one.
    continuation: Continuation | None = None


class StepEnd(msgspec.Struct, frozen=True):
    """The last item of a step: why it ended ("stop", "length", "tool_calls") and usage."""

    finish_reason: str
    usage: dict[str, Any] | None = None


class ProviderError(Exception):
    """A provider failed; the message says what failed.

    ``retryable`` is true when the same request may succeed later (rate limit, timeout,
    connection reset); false for errors that will repeat (bad request, failure after output).
    """

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


def usage(
    input_tokens: int | None,
    output_tokens: int | None,
    *,
    cached_tokens: int | None = None,
    reasoning_tokens: int | None = None,
) -> dict[str, int]:
    """The one usage shape of a row; counts a provider did not report are left out."""
    out = {"input_tokens": input_tokens or 0, "output_tokens": output_tokens or 0}
    if cached_tokens is not None:
        out["cached_tokens"] = cached_tokens
    if reasoning_tokens is not None:
        out["reasoning_tokens"] = reasoning_tokens
    return out


class Provider(Protocol):
    """A model backend. Implementations are stateless between calls to ``stream``."""

    def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent | StepEnd]:
        """Yield the step's stream events (never ``Done``), then exactly one ``StepEnd``."""
        ...


@dataclass(frozen=True)
class Adapter:
    """What a provider module exports as ``ADAPTER``."""

    # Builds the provider of one configured spec; called per step, so it must be cheap.
    make: Callable[[ProviderSpec, Settings], Provider]
    # The options Struct (``forbid_unknown_fields=True``): ``options`` must convert to it.
    options: type[msgspec.Struct]
    capabilities: Mapping[str, Any] = field(default_factory=dict)


# Tools the server knows. The engine runs `clock` itself; `ask_user` is answered by the user
# through POST /v1/messages/{mid}/tool-results.

CLOCK_TOOL = ToolSpec(
    name="clock",
    description="The current date and time, as an ISO 8601 timestamp.",
    parameters={
        "type": "object",
        "properties": {
            "timezone": {
                "type": "string",
                "description": "An IANA time zone name such as 'UTC' or 'Europe/Warsaw'.",
            }
        },
        "additionalProperties": False,
    },
)

ASK_USER_TOOL = ToolSpec(
    name="ask_user",
    description="Ask the user a question and wait for the answer.",
    parameters={
        "type": "object",
        "properties": {"question": {"type": "string", "description": "The question to ask."}},
        "required": ["question"],
        "additionalProperties": False,
    },
    interactive=True,
)
