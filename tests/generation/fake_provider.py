"""A provider whose stream is a plain async generator function, for in-process tests.

As pydantic-ai's ``FunctionModel``: the test writes the model's step as a function of the
request (yield stream events, then one ``StepEnd``; raise ``ProviderError`` to fail), and
the engine runs it like any provider, through the ``provider_for=`` seam.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import anyio
from turnlog_reducer import StreamEvent, TextDelta

from turnlog.config import Settings
from turnlog.providers.base import ModelRequest, Provider, StepEnd

StepFunction = Callable[[ModelRequest], AsyncIterator[StreamEvent | StepEnd]]


class FunctionProvider:
    """Runs ``function`` for every step, and remembers each request it was asked."""

    def __init__(self, function: StepFunction) -> None:
        self.function = function
        self.requests: list[ModelRequest] = []

    def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent | StepEnd]:
        self.requests.append(request)
        return self.function(request)

    def provider_for(self, model: str, settings: Settings) -> tuple[Provider, str]:
        """The engine's ``provider_for``: this provider for every model."""
        return self, model.partition(":")[2]


def stalls_after(text: str) -> StepFunction:
    """A step that publishes ``text`` and then waits until it is cancelled (a user's
    cancel, a delete, a drain): a model that is still answering."""

    async def step(request: ModelRequest) -> AsyncIterator[StreamEvent | StepEnd]:
        yield TextDelta(text=text)
        await anyio.sleep_forever()
        yield StepEnd(finish_reason="stop")  # pragma: no cover - never gets here

    return step
