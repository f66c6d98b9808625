"""The engine's failure rules as pure functions: how long to wait, and what to mask."""

from __future__ import annotations

import pytest

from turnlog.config import Settings
from turnlog.generation.step import MAX_RETRY_PAUSE_S, retry_pause, scrub
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
