"""The HTTP under the SDKs' clients: ``aiohttp``, as an ``httpx2`` transport.

The ``openai`` and ``anthropic`` SDKs send through an ``httpx2.AsyncClient`` (their request
building, authentication, base URL, status errors); that client's transport is what opens
connections and reads bytes. Their default one (``httpcore2`` over ``h11``) parses each
received chunk in pure Python through half a dozen async generators, and at 50 chunks a
second every chunk of a stream arrives alone: 500 streams spent a sixth of the server's
CPU there. ``aiohttp`` parses HTTP/1.1 in C (``llhttp``) as the bytes arrive, keeps
connections alive, verifies TLS with the context given and speaks to proxies, so this
module only carries a request across (with the proxy the environment names for it) and an
error back:

- the request goes out as httpx built it (method, URL, headers, body); redirects,
  authentication and retries stay the SDK's and httpx's (turnlog sets the SDK's retries to
  0: the engine retries);
- ``aiohttp``'s errors come back as the ``httpx2`` errors the SDKs translate (a refused
  connection ``ConnectError``, so ``APIConnectionError``; a slow one ``ConnectTimeout``; a
  stalled body ``ReadTimeout``; a body cut short ``ReadError``);
- the body is read as it arrives (``readany``). :func:`body_chunks` gives it to the
  adapters straight from ``aiohttp`` when nothing needs decoding, one await per chunk,
  instead of through httpx's four layers of iterators;
- closing a response before its end closes its connection, so the server sees the
  disconnect (a cancelled step stops the model); a body read to its end leaves the
  connection in the pool for the next step.

The SDKs also ship an ``aiohttp`` client of their own (``DefaultAioHttpClient``), but it
caps connections at 100 when told "no cap" (``max_connections=None``: 500 concurrent
streams would queue) and reports a refused connection as a connect *timeout* (so a
retryable failure would read as a final one); this transport is the same idea without
those two.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import urllib.request
from collections.abc import AsyncIterator
from urllib.parse import unquote, urlsplit

import aiohttp
import httpx2

__all__ = ["AiohttpTransport", "body_chunks"]

# The response extension that carries the undecoded body (see body_chunks).
_BODY = "turnlog.body"


class AiohttpTransport(httpx2.AsyncBaseTransport):
    """An ``httpx2`` transport that sends with one ``aiohttp.ClientSession`` (made on the
    first request, in the event loop that sends: a session belongs to its loop). No cap on
    concurrent connections; idle ones kept ``keepalive_s``."""

    def __init__(self, *, ssl_context: ssl.SSLContext, keepalive_s: float = 15.0) -> None:
        self._ssl = ssl_context
        self._keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None
        self._closer: AsyncIterator[None] | None = None
        self._timeouts: dict[float | None, aiohttp.ClientTimeout] = {}
        self._env_proxies = urllib.request.getproxies()
        self._proxies: dict[tuple[str, str], tuple[str | None, aiohttp.BasicAuth | None]] = {}

    def _open_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            ssl=self._ssl, limit=0, limit_per_host=0, keepalive_timeout=self._keepalive_s
        )
        # Not trust_env: aiohttp would then read ~/.netrc and the proxy variables in a
        # thread on every request (two thread hops per step); the proxies are read once
        # (_proxy_for). No cookie jar: httpx keeps the cookies, as it does on its own.
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,  # httpx decodes what needs it (see body_chunks)
        )

    def _proxy_for(self, url: httpx2.URL) -> tuple[str | None, aiohttp.BasicAuth | None]:
        """The proxy for ``url`` from the environment (``HTTP_PROXY``, ``HTTPS_PROXY``,
        ``ALL_PROXY``, ``NO_PROXY``, read when the transport was made, as httpx reads them
        when a client is made), and its credentials."""
        key = (url.scheme, url.host)
        found = self._proxies.get(key)
        if found is None:
            proxy = self._env_proxies.get(url.scheme) or self._env_proxies.get("all")
            if proxy and urllib.request.proxy_bypass(url.host):
                proxy = None
            auth = None
            if proxy:
                parsed = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
                if parsed.username is not None:
                    user, password = unquote(parsed.username), unquote(parsed.password or "")
                    auth = aiohttp.BasicAuth(user, password)
                proxy = parsed._replace(netloc=parsed.netloc.rpartition("@")[2]).geturl()
            found = self._proxies[key] = (proxy or None, auth)
        return found

    def _timeout(self, connect: float | None) -> aiohttp.ClientTimeout:
        # httpx's connect timeout. Its read timeout is timed here, not by aiohttp, whose
        # sock_read re-arms a timer on every chunk received (see _Body); its pool timeout
        # has nothing to wait for (no cap on connections).
        timeout = self._timeouts.get(connect)
        if timeout is None:
            timeout = self._timeouts[connect] = aiohttp.ClientTimeout(
                total=None, sock_connect=connect, sock_read=None
            )
        return timeout

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        session = self._session
        if session is None or session.closed:
            session = self._session = self._open_session()
            # Closed when its event loop ends (asyncio.run and uvicorn close every live
            # async generator then), else aiohttp would warn of an unclosed session.
            self._closer = _closing(session)
            await anext(self._closer)
        await request.aread()  # the SDKs' bodies are bytes already: this costs nothing
        headers = [(k, v) for k, v in request.headers.multi_items() if k != "transfer-encoding"]
        proxy, proxy_auth = self._proxy_for(request.url)
        timeouts = request.extensions.get("timeout") or {}
        read: float | None = timeouts.get("read")
        try:
            # The read timeout, until the response's head: one timer per request.
            async with asyncio.timeout(read):
                response = await session.request(
                    request.method,
                    str(request.url),
                    headers=headers,
                    data=request.content or None,
                    allow_redirects=False,  # httpx follows them, if told to
                    compress=None,
                    timeout=self._timeout(timeouts.get("connect")),
                    server_hostname=request.extensions.get("sni_hostname"),
                    proxy=proxy,
                    proxy_auth=proxy_auth,
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _mapped(exc, request, sending=True) from exc
        body = _Body(response, request, read)
        return httpx2.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=body,
            request=request,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("ascii", "replace"),
                _BODY: body,
            },
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _closing(session: aiohttp.ClientSession) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await session.close()


class _Body(httpx2.AsyncByteStream):
    """A response's body as ``aiohttp`` reads it: each chunk as it arrives, errors mapped,
    and the read timeout: nothing for ``read`` seconds while the reader waits fails the
    read with ``ReadTimeout``. One timer per body that re-arms itself when it fires early
    (each chunk only moves the deadline), not one timer per chunk as aiohttp's sock_read."""

    __slots__ = ("_deadline", "_loop", "_read", "_request", "_response", "_timer", "_waiting")

    def __init__(
        self, response: aiohttp.ClientResponse, request: httpx2.Request, read: float | None
    ) -> None:
        self._response = response
        self._request = request
        self._read = read
        self._waiting = False
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = math.inf
        if read is not None:
            self._deadline = self._loop.time() + read
            self._timer = self._loop.call_at(self._deadline, self._check)

    def _check(self) -> None:
        now = self._loop.time()
        if not self._waiting:  # the reader is busy, not the server slow: wait again
            self._deadline = now + (self._read or 0.0)
        if now < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._check)
            return
        self._timer = None
        self._response.content.set_exception(TimeoutError(f"nothing read for {self._read:g} s"))

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        self._waiting = True
        try:
            data = await self._response.content.readany()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._stop()
            raise _mapped(exc, self._request, sending=False) from exc
        finally:
            self._waiting = False
        if not data:
            self._stop()
            raise StopAsyncIteration
        if self._read is not None:
            self._deadline = self._loop.time() + self._read
        return data

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def aclose(self) -> None:
        self._stop()
        # Read to its end, the connection goes back to the pool; else it is closed (the
        # server must see the disconnect: a cancelled step stops the model).
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()
            # asyncio closes the socket in the loop's next round: let it, so the
            # connection is gone when this returns (as it was with httpx's transport).
            await asyncio.sleep(0)


def body_chunks(response: httpx2.Response) -> AsyncIterator[bytes]:
    """The body of a streamed ``response`` as its chunks arrive: straight from ``aiohttp``
    when this module's transport made it and it is not content-encoded, else through
    httpx's ``aiter_bytes`` (which decodes). Errors are ``httpx2``'s either way."""
    body = response.extensions.get(_BODY)
    encoding = response.headers.get("content-encoding")
    if isinstance(body, _Body) and (not encoding or encoding == "identity"):
        return body
    return response.aiter_bytes()


def _mapped(exc: BaseException, request: httpx2.Request, *, sending: bool) -> Exception:
    """``aiohttp``'s (or the socket's) error as the ``httpx2`` one the SDKs expect."""
    message = str(exc) or type(exc).__name__
    error: type[httpx2.TransportError]
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        error = httpx2.ConnectTimeout
    elif isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        error = httpx2.ReadTimeout  # sock_read: nothing came for the read timeout
    elif isinstance(exc, aiohttp.ClientProxyConnectionError | aiohttp.ClientHttpProxyError):
        error = httpx2.ProxyError
    elif isinstance(exc, aiohttp.ClientConnectorError):  # refused, unreachable, DNS, TLS
        error = httpx2.ConnectError
    elif isinstance(exc, aiohttp.InvalidURL):
        error = httpx2.UnsupportedProtocol
    elif isinstance(
        exc,
        aiohttp.ClientPayloadError | aiohttp.ClientResponseError | aiohttp.ServerDisconnectedError,
    ):
        # A malformed or cut-short response, or a kept-alive connection the server closed.
        error = httpx2.RemoteProtocolError
    else:  # the connection failed while the request went out, or while the body came
        error = httpx2.ConnectError if sending else httpx2.ReadError
    return error(message, request=request)
