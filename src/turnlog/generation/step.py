"""One streamed provider step: what the engine adds around a provider's stream.

:func:`stream_with_retries` publishes a provider's step into the row's live stream and
retries a failure that came before any output (bounded, exponential backoff with jitter, or
the provider's Retry-After); after output a failure is final. :func:`_stream_once` is one
try: a watchdog fails it when nothing comes within the first-token timeout, or nothing for
the stall timeout after that; every event has U+0000 replaced (:func:`without_nul`) before
it is published. :func:`scrub` masks API keys in the error texts stored on rows and logged.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections.abc import Callable, Sequence

import anyio
import msgspec
import structlog
from turnlog_reducer import (
    ReasoningDelta,
    StreamEvent,
    StreamProtocolError,
    TextDelta,
    ToolCallDelta,
    ToolCallReady,
    ToolCallStarted,
)

from turnlog import aio
from turnlog.config import Settings
from turnlog.generation.turn import Generation
from turnlog.metrics import Metrics, provider_and_model
from turnlog.providers.base import ModelRequest, Provider, ProviderError, StepEnd

__all__ = ["MAX_RETRY_PAUSE_S", "retry_pause", "scrub", "stream_with_retries", "without_nul"]

log = structlog.get_logger("turnlog.generation")

# A retry waits at most this long, whatever the provider's Retry-After asks; a longer ask
# ends the row as failed rather than holding the conversation for minutes.
MAX_RETRY_PAUSE_S = 60.0


async def stream_with_retries(
    gen: Generation,
    provider: Provider,
    request: ModelRequest,
    settings: Settings,
    metrics: Metrics,
) -> StepEnd:
    """Publish the provider's step into ``gen``'s stream. A failure before any output is
    retried (bounded, exponential backoff with jitter, or the provider's Retry-After); after
    output it is final. No first event within the first-token timeout, or none for the
    stall timeout after that, fails the step."""
    for attempt in range(settings.provider_retries + 1):
        # Whether this try published anything: publish moves the stream's seq only when
        # it took the event.
        before = gen.stream.seq
        try:
            return await _stream_once(gen, provider, request, settings, metrics)
        except ProviderError as exc:
            produced = gen.stream.seq != before
            pause = None if produced else retry_pause(exc, attempt, settings)
            which = provider_and_model(gen.turn.model)[0]
            kind = "retryable" if exc.retryable and not produced else "fatal"
            metrics.child(metrics.provider_errors, which, kind).inc()
            if produced or not exc.retryable or pause is None:
                raise
            if attempt == settings.provider_retries:
                raise ProviderError(
                    f"{exc} (gave up after {attempt + 1} attempts)", retryable=False
                ) from exc
            metrics.child(metrics.provider_retries, which).inc()
            log.warning(
                "provider failed before output; retrying",
                attempt=attempt + 1,
                error=scrub(str(exc), settings.models.secrets()),
                pause_s=round(pause, 3),
            )
            await anyio.sleep(pause)
    raise AssertionError("unreachable")


async def _stream_once(
    gen: Generation,
    provider: Provider,
    request: ModelRequest,
    settings: Settings,
    metrics: Metrics,
) -> StepEnd:
    """One try of a step, under the watchdog."""
    stream = provider.stream(request)
    produced = False
    # One cancel scope for the whole try and one timer that fires only when a timeout
    # may have passed, not a scope armed and disarmed per token (docs/performance.md).
    watchdog = _Watchdog(settings.provider_first_token_timeout_s)
    try:
        with aio.cancel_scope() as scope:
            watchdog.start(scope)
            while True:
                try:
                    item = await anext(stream)
                except StopAsyncIteration:
                    raise ProviderError(
                        "provider ended the step without a result", retryable=False
                    ) from None
                if isinstance(item, StepEnd):
                    return item
                item = without_nul(item)
                try:
                    gen.stream.publish(item)
                except StreamProtocolError as exc:
                    raise ProviderError(
                        f"provider broke the stream: {exc}", retryable=False
                    ) from exc
                gen.pending.append(item)
                if gen.pending_since is None:
                    gen.pending_since = time.monotonic()
                    if gen.first_at is None:
                        gen.first_at = gen.pending_since
                        metrics.child(
                            metrics.time_to_first_token,
                            *provider_and_model(gen.turn.model),
                        ).observe(gen.first_at - gen.started_at)
                produced = True
                watchdog.fed(settings.provider_stall_timeout_s)
        # Only the watchdog cancels this scope (any other cancel propagates past it).
        what = "for the first token" if not produced else "(the stream stalled)"
        raise ProviderError(
            f"provider timed out: nothing for {watchdog.waited:g} s {what}", retryable=False
        )
    finally:
        watchdog.stop()
        # Close the provider's request now (cancel, timeout, error): its server sees the
        # disconnect at once. Shielded, so a cancelled step still gets to close it.
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            with aio.cancel_scope(shield=True):
                await aclose()


class _Watchdog:
    """Cancels a scope once nothing came for ``waited`` seconds (the provider timeouts).

    ``fed`` after each item only moves the deadline; the one timer re-arms itself when it
    fires before the deadline, so there is no timer or cancel scope per token.
    """

    def __init__(self, waited: float) -> None:
        self.waited = waited
        self._deadline = 0.0
        self._armed = math.inf  # when the timer fires (inf: not armed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clock: Callable[[], float] = time.monotonic  # the loop's clock, once started
        self._scope: anyio.CancelScope | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self, scope: anyio.CancelScope) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._clock = loop.time
        self._scope = scope
        self._deadline = loop.time() + self.waited
        self._arm(self._deadline)

    def _arm(self, when: float) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._armed = when
        self._timer = self._loop.call_at(when, self._fire)

    def fed(self, waited: float) -> None:
        """Something came: nothing for ``waited`` seconds from now times out. Once per item,
        so as lean as it can be: a clock read and a comparison."""
        self.waited = waited
        deadline = self._deadline = self._clock() + waited
        if deadline < self._armed:  # a shorter timeout than the one armed
            self._arm(deadline)

    def _fire(self) -> None:
        assert self._loop is not None
        assert self._scope is not None
        self._timer = None
        if self._loop.time() >= self._deadline:
            self._armed = math.inf
            self._scope.cancel()
        else:
            self._arm(self._deadline)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed = math.inf


def without_nul(event: StreamEvent) -> StreamEvent:
    """The event with U+0000 replaced by U+FFFD: PostgreSQL text and jsonb cannot store
    NUL, and a model that emits one must not cost the answer its checkpoints. Replaced
    before publishing, so subscribers and the store see the same text."""
    # Nearly every event is a text delta without NUL: one check, not the match below.
    if isinstance(event, TextDelta) and "\x00" not in event.text:
        return event
    match event:
        case TextDelta(text=t) | ReasoningDelta(text=t) if "\x00" in t:
            return type(event)(text=t.replace("\x00", "\ufffd"))
        case ToolCallDelta(arguments_delta=t) if "\x00" in t:
            return ToolCallDelta(id=event.id, arguments_delta=t.replace("\x00", "\ufffd"))
        case ToolCallStarted(name=t) if "\x00" in t or "\x00" in event.id:
            return ToolCallStarted(
                id=event.id.replace("\x00", "\ufffd"), name=t.replace("\x00", "\ufffd")
            )
        case ToolCallReady() if "\\u0000" in msgspec.json.encode(event.arguments).decode():
            return ToolCallReady(
                id=event.id,
                arguments=msgspec.json.decode(
                    msgspec.json.encode(event.arguments).decode().replace("\\u0000", "\\ufffd")
                ),
            )
        case _:
            return event


def retry_pause(exc: ProviderError, attempt: int, settings: Settings) -> float | None:
    """Seconds to wait before retry number ``attempt + 1``, or None to give up: the
    provider's Retry-After if it sent one (up to MAX_RETRY_PAUSE_S), else exponential
    backoff from ``provider_backoff_s`` with full jitter in [0.5, 1.5)."""
    asked: float | None = exc.retry_after
    if asked is not None:
        return asked if asked <= MAX_RETRY_PAUSE_S else None
    pause = settings.provider_backoff_s * 2.0**attempt * random.uniform(0.5, 1.5)
    return min(pause, MAX_RETRY_PAUSE_S)


def scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every API key in ``secrets`` (and anything shaped like a bearer token
    or an ``sk-`` key) masked: provider error texts are stored on rows and logged."""
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    text = _BEARER.sub(r"\1[redacted]", text)
    return _KEYLIKE.sub("[redacted]", text)


_BEARER = re.compile(r"((?:Bearer|x-api-key:?|key=)\s*)[A-Za-z0-9._\-]{8,}", re.IGNORECASE)
_KEYLIKE = re.compile(r"\b(?:sk|sk-ant|AIza)[-_A-Za-z0-9]{16,}")
