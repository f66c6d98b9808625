"""Small pieces the SDK-backed adapters (anthropic, gemini, openai) share."""

from __future__ import annotations

import contextlib
import email.utils
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

import httpx

from turnlog.config import Settings

__all__ = [
    "TIMEOUT_ERRORS",
    "TRANSPORT_ERRORS",
    "host_of",
    "read_backstop_s",
    "redact",
    "retry_after",
    "retry_after_value",
]

# The SDKs' HTTP library: httpx2 in recent releases, httpx before.
try:
    import httpx2

    TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx2.TransportError, httpx.TransportError)
    TIMEOUT_ERRORS: tuple[type[Exception], ...] = (
        httpx2.TimeoutException,
        httpx.TimeoutException,
    )
except ImportError:  # pragma: no cover - an older SDK on httpx
    TRANSPORT_ERRORS = (httpx.TransportError,)
    TIMEOUT_ERRORS = (httpx.TimeoutException,)


def read_backstop_s(settings: Settings) -> float:
    """The SDK read timeout: the engine times the first token and stalls itself, so this is
    only a backstop behind both and never fires first."""
    return max(settings.provider_first_token_timeout_s, settings.provider_stall_timeout_s) + 5.0


def retry_after_value(raw: str | None) -> float | None:
    """Seconds from a ``Retry-After`` value (seconds or an HTTP date); ``None`` if unusable."""
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    return retry_after_value(headers.get("retry-after"))


def redact(text: str, secret: str | None) -> str:
    """``text`` without ``secret`` (an API key must never reach a stored error)."""
    return text.replace(secret, "[redacted]") if secret else text


def host_of(error: BaseException, base_url: str | None, default: str) -> str:
    """The ``host:port`` a connection error was about: its request's URL, else the
    provider's base URL, else the SDK's ``default`` one (so a refused or unreachable server
    is named in the error the user reads)."""
    request = None
    # httpx's errors raise RuntimeError for a request they were not given.
    with contextlib.suppress(RuntimeError, AttributeError):
        request = error.request  # type: ignore[attr-defined]
    url = str(request.url) if request is not None else (base_url or default)
    return urlsplit(url).netloc.rpartition("@")[2] or url
