"""The provider seam: what the generation engine hands a model and what it gets back.

A provider turns a ``ModelRequest`` (history, system prompt, options, tools) into one step
of output: reducer stream events (``text_delta``, ``reasoning_delta``, ``tool_call_*``;
never ``done``) followed by exactly one ``StepEnd``. The engine owns everything else:
numbering, publishing, checkpoints, running server tools, retries and the final status.

Errors: a provider raises ``ProviderError``; ``retryable`` says whether trying the same
request again may succeed (the engine only retries a failure before any output).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol

import msgspec
from turnlog_reducer import Block, StreamEvent

__all__ = [
    "ASK_USER_TOOL",
    "CLOCK_TOOL",
    "ChatMessage",
    "ModelRequest",
    "Provider",
    "ProviderError",
    "StepEnd",
    "ToolSpec",
    "UnknownModel",
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


class ModelRequest(msgspec.Struct, frozen=True):
    """Everything a provider needs for one step."""

    model: str  # the name part of "provider:name"
    system_prompt: str | None
    messages: tuple[ChatMessage, ...]
    options: dict[str, Any]
    tools: tuple[ToolSpec, ...]


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
        # Seconds the provider asked to wait before trying again (its Retry-After), if any.
        self.retry_after = retry_after


class UnknownModel(ValueError):
    """A ``model`` string is malformed or names a provider this server cannot use."""


class Provider(Protocol):
    """A model backend. Implementations are stateless between calls to ``stream``."""

    def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent | StepEnd]:
        """Yield the step's stream events (never ``Done``), then exactly one ``StepEnd``."""
        ...


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
