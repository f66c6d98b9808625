"""Small pieces the SDK-backed adapters (anthropic, gemini, openai) share."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import time
import weakref
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import httpx

from turnlog.config import Settings

__all__ = [
    "TIMEOUT_ERRORS",
    "TRANSPORT_ERRORS",
    "PerLoop",
    "host_of",
    "pool_limits",
    "read_backstop_s",
    "redact",
    "response_type",
    "retry_after",
    "retry_after_value",
    "sdk_http_client",
]

# The SDKs' HTTP library: httpx2 in recent releases, httpx before.
try:
    import httpx2

    _HTTPX2: type | None = httpx2.AsyncClient

    TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx2.TransportError, httpx.TransportError)
    TIMEOUT_ERRORS: tuple[type[Exception], ...] = (
        httpx2.TimeoutException,
        httpx.TimeoutException,
    )
except ImportError:  # pragma: no cover - an older SDK on httpx
    _HTTPX2 = None
    TRANSPORT_ERRORS = (httpx.TransportError,)
    TIMEOUT_ERRORS = (httpx.TimeoutException,)


T = TypeVar("T")


def sdk_http_client(sdk_client: Any, timeout: Any) -> Any:
    """The HTTP client to hand an SDK (``sdk_client``: its ``DefaultAsyncHttpxClient``):
    on httpx2, aiohttp underneath (``_http.py``); an older SDK on httpx gets httpx's own
    transport. Either way with the one shared TLS context (``_tls.py``)."""
    from turnlog.providers._tls import tls_context

    make: Any = sdk_client  # (not narrowed to a bare ``type`` by the check below)
    if _HTTPX2 is not None and issubclass(sdk_client, _HTTPX2):
        from turnlog.providers._http import AiohttpTransport

        return make(transport=AiohttpTransport(ssl_context=tls_context()), timeout=timeout)
    return sdk_client(  # pragma: no cover - an older SDK on httpx
        verify=tls_context(),
        timeout=timeout,
        limits=pool_limits(sdk_client),
    )


def pool_limits(sdk_client: type) -> Any:
    """A shared SDK client's pool: no cap on concurrent streams (500 generations are 500
    open responses; the SDKs' defaults cap at 100 or 1000 and queue the rest), a few idle
    connections kept for the next steps. In the SDK's own HTTP library's type."""
    if _HTTPX2 is not None and issubclass(sdk_client, _HTTPX2):
        return httpx2.Limits(max_connections=None, max_keepalive_connections=64)
    return httpx.Limits(max_connections=None, max_keepalive_connections=64)


class PerLoop(Generic[T]):
    """One long-lived value per key and event loop (an SDK client holds connections of
    the loop that opened them); a loop's values go with it."""

    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, T]] = (
            weakref.WeakKeyDictionary()
        )

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        values = self._by_loop.setdefault(asyncio.get_running_loop(), {})
        value = values.get(key)
        if value is None:
            value = values[key] = make()
        return value


def response_type(sdk_client: type) -> type[Any]:
    """The response class an SDK's HTTP client makes (``httpx2.Response`` for releases on
    httpx2, ``httpx.Response`` before): given as ``cast_to``, the SDK's ``post`` returns
    the response unread, its documented way to a raw response."""
    if _HTTPX2 is not None and issubclass(sdk_client, _HTTPX2):
        return httpx2.Response
    return httpx.Response


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
