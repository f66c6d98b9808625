"""One provider step's rules as pure functions (generation/step.py): how long to wait before
a retry, what to mask in an error text, and NUL characters from a model never reaching
PostgreSQL (which cannot store them)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from turnlog_reducer import (
    EMPTY,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    ToolCallReady,
    ToolCallStarted,
    encode_event,
    fold,
)

from turnlog.config import Settings
from turnlog.generation.step import MAX_RETRY_PAUSE_S, retry_pause, scrub, without_nul
from turnlog.providers.base import ProviderError


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    """A provider's Retry-After is the pause; one beyond the cap means give up (None)."""
    settings = Settings()
    assert retry_pause(ProviderError("x", retryable=True, retry_after=2.5), 0, settings) == 2.5
    too_long = ProviderError("x", retryable=True, retry_after=MAX_RETRY_PAUSE_S + 1)
    assert retry_pause(too_long, 0, settings) is None


@pytest.mark.parametrize("attempt", [0, 1, 2, 3])
def test_backoff_is_exponential_with_jitter(attempt: int) -> None:
    """Without Retry-After: backoff * 2^attempt, jittered into [0.5, 1.5) of that."""
    settings = Settings(provider_backoff_s=0.5)
    base = 0.5 * 2**attempt
    pauses = {retry_pause(ProviderError("x", retryable=True), attempt, settings) for _ in range(50)}
    assert all(p is not None and 0.5 * base <= p < 1.5 * base for p in pauses)
    assert len(pauses) > 1, "jitter: the pauses differ"


def test_scrub_masks_configured_keys_and_key_shaped_text() -> None:
    """Configured keys, sk-/AIza-style keys and bearer tokens never survive in error text."""
    key = "my-very-secret-key-123"
    text = (
        f"401: bad key {key}; also sk-proj-abcdefghijklmnopqrstuvwx and "
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload and AIzaSyA1234567890abcdefghijkl"
    )
    out = scrub(text, [key])
    for secret in (key, "sk-proj-abcdefghijklmnopqrstuvwx", "eyJhbGciOiJIUzI1NiJ9", "AIzaSyA12"):
        assert secret not in out
    assert out.startswith("401: bad key [redacted]")
    assert scrub("plain words stay", [key]) == "plain words stay"


@given(st.text())
def test_text_without_nul_is_unchanged_and_nul_becomes_replacement(text: str) -> None:
    """Text deltas lose every U+0000 (as U+FFFD) and keep everything else."""
    for kind in (TextDelta, ReasoningDelta):
        out = without_nul(kind(text=text))
        assert isinstance(out, kind)
        assert out.text == text.replace("\x00", "\ufffd")
        if "\x00" not in text:
            assert out == kind(text=text)


def test_tool_call_events_are_cleaned_everywhere() -> None:
    """Tool call ids, names, argument deltas and parsed arguments are cleaned too."""
    events = [
        without_nul(ToolCallStarted(id="c\x001", name="clo\x00ck")),
        without_nul(ToolCallDelta(id="c\ufffd1", arguments_delta='{"q":"a\x00"}')),
        without_nul(ToolCallReady(id="c\ufffd1", arguments={"q": ["a\x00", {"k\x00": 1}]})),
    ]
    for event in events:
        assert b"\\u0000" not in encode_event(event)
    blocks = fold(EMPTY, events)
    assert msgspec.json.encode(blocks[0].arguments) == '{"q":["a\ufffd",{"k\ufffd":1}]}'.encode()
