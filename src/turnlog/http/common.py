"""What every route module shares: the runtime, the caller, bodies, ids and error answers."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import anyio
import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.response import Stream

from turnlog.cluster import Cluster, internal_token
from turnlog.commands import Chat
from turnlog.config import Settings
from turnlog.errors import (
    BadRequest,
    Conflict,
    ConversationBusy,
    Fenced,
    Forbidden,
    InvalidEvent,
    NotFound,
    NotGenerating,
    Overloaded,
    TooLarge,
    TooMany,
    Unavailable,
    VersionConflict,
)
from turnlog.feeds import FeedHub
from turnlog.follow import Follower
from turnlog.generation.engine import Engine
from turnlog.generation.tools.registry import build_registry
from turnlog.http.auth import load_secret, user_from_header
from turnlog.http.session import COOKIE, session_user
from turnlog.limits import Limits
from turnlog.log.liveness import Liveness
from turnlog.log.pool import RETRY_AFTER_S
from turnlog.log.store import Store
from turnlog.metrics import Metrics
from turnlog.product.titles import Titler
from turnlog.relay import Relays
from turnlog.streams import PING, LiveStream, StreamRegistry

log = structlog.get_logger("turnlog.http")

T = TypeVar("T")
json_encoder = msgspec.json.Encoder()

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Runtime:
    """What the lifespan builds and the handlers use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.secret = load_secret(settings)
        self.instance_id = uuid.uuid4()
        self.ready = False
        self.store: Store
        self.registry = StreamRegistry()
        self.engine: Engine
        self.chat: Chat
        self.hub = FeedHub()
        self.drain_requested = anyio.Event()
        self.force_requested = anyio.Event()
        self.liveness: Liveness
        self.closing = anyio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.on_ready: Callable[[Runtime], None] | None = None
        self.on_drained: Callable[[], None] | None = None
        self.responses: dict[int, int] = {}
        # Many instances (turnlog.cluster, turnlog.follow): where this one serves its live
        # streams to the others (None: it does not), and what they present there.
        self.internal_url: str | None = None
        self.internal_token = internal_token(self.secret)
        self.cluster: Cluster
        self.follower: Follower
        self.relays = Relays()  # the other instances' relay sessions of streams run here
        self.metrics = Metrics()
        self.limits = Limits(settings)
        self.titler: Titler | None = None  # automatic titles, unless turned off
        # Every tool this server offers; its MCP sessions run in the lifespan's task group.
        self.tools = build_registry(settings.models.tools)

    def request_drain(self) -> None:
        """Thread- and signal-safe: begin the graceful drain."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.drain_requested.set)

    def request_force(self) -> None:
        """Thread- and signal-safe: cut the drain short (interrupt generations now)."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.force_requested.set)


def runtime(request: Request[Any, Any, Any]) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


# -- errors ------------------------------------------------------------------------------

# The answer to each domain error: the tree and its statuses are drawn in turnlog.errors
# (tests/test_errors.py keeps the two equal). The first class that matches wins.
_STATUS: list[tuple[type[Exception], int]] = [
    (NotFound, 404),
    (Forbidden, 403),
    (ConversationBusy, 409),
    (Fenced, 409),
    (VersionConflict, 409),
    (NotGenerating, 409),
    (Conflict, 409),
    (TooMany, 429),
    (TooLarge, 413),
    (Unavailable, 503),
    (BadRequest, 400),
    (InvalidEvent, 400),
]


def error_response(status: int, detail: str) -> Response[bytes]:
    return Response(
        json_encoder.encode({"status_code": status, "detail": detail}),
        status_code=status,
        media_type="application/json",
    )


def domain_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    status = next((code for cls, code in _STATUS if isinstance(exc, cls)), 400)
    response = error_response(status, str(exc))
    if isinstance(exc, TooMany | Overloaded):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


def unauthorized(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    response = error_response(401, str(exc))
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


def http_exception(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail))


def database_unavailable(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """The database is unreachable or did not answer in time (log/pool.py): 503, and when
    to try again. An append cut off this way may or may not have landed; its atomicity
    holds either way, and sends with a client_message_id can simply be repeated."""
    log.warning("database unavailable", error=str(exc))
    response = error_response(503, f"database unavailable; try again in a moment ({exc})")
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def internal_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.error("unhandled error", exc_info=exc)
    return error_response(500, "internal error; the request was not applied")


# -- helpers -----------------------------------------------------------------------------


def user(request: Request[Any, Any, Any]) -> str:
    """The caller: a bearer token, else the web chat's session cookie (turnlog.http.session)."""
    authorization = request.headers.get("authorization")
    if authorization is None and COOKIE in request.cookies:
        uid = session_user(runtime(request).secret, request.headers, request.cookies)
    else:
        uid = user_from_header(runtime(request).secret, authorization)
    structlog.contextvars.bind_contextvars(user=uid)
    return uid


def parse_id(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        # Not an id we could have given out, so it names nothing: 404, like an unknown id.
        raise NotFound(f"{what} {value!r} not found") from None


async def body(request: Request[Any, Any, Any], kind: type[T], *, empty_ok: bool = False) -> T:
    raw = await request.body()
    if not raw.strip():
        if empty_ok:
            raw = b"{}"
        else:
            raise BadRequest("request body is empty; expected a JSON object")
    return decode_json(raw, kind)


# How deeply arrays and objects may nest in a request body. Real options nest two or three
# levels; a decoder (and `_no_nul`, and PostgreSQL's jsonb) recurses once per level, so a
# body nested a thousand levels deep would end in a RecursionError (a 500), not a 400.
MAX_JSON_DEPTH = 64
# A JSON string (escapes included) or one bracket: strings are skipped whole by the regex
# engine, so brackets inside them do not count and a long text costs one match. The string
# alternative matches an unterminated string (up to the end) as well, so it never fails
# and backtracks: a body of many `"\` pairs stays linear, not quadratic.
_JSON_TOKEN = re.compile(rb'"[^"\\]*(?:\\.?[^"\\]*)*"?|[\[\]{}]', re.DOTALL)


def json_depth(raw: bytes) -> int:
    """How deeply arrays and objects nest in ``raw`` (JSON, well-formed or not)."""
    depth = deepest = 0
    for match in _JSON_TOKEN.finditer(raw):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in (b"]", b"}"):
            depth -= 1
    return deepest


def decode_json(raw: bytes, kind: type[T]) -> T:
    """Decode a request body strictly into ``kind``: every failure is a ``BadRequest``
    (400) saying what was wrong, never another error. Every route decoding a body goes
    through here (``body`` does)."""
    depth = json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise BadRequest(
            f"JSON nested {depth} levels deep; at most {MAX_JSON_DEPTH} levels are accepted"
        )
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None


def query(request: Request[Any, Any, Any], kind: type[T]) -> T:
    """The query string as ``kind`` (a Struct of optional fields): strings are converted
    to the declared types; unknown parameters are ignored, as HTTP clients expect."""
    try:
        return msgspec.convert(dict(request.query_params), kind, strict=False)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid query: {exc}") from None


def json_response(value: Any, status: int = 200) -> Response[bytes]:
    return Response(json_encoder.encode(value), status_code=status, media_type="application/json")


def last_event_id(request: Request[Any, Any, Any]) -> int | None:
    raw = request.headers.get("last-event-id")
    if raw is None or not raw.strip():
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise BadRequest(f"Last-Event-ID must be an integer, got {raw!r}") from None
    if value < 0:
        raise BadRequest(f"Last-Event-ID must be >= 0, got {value}")
    return value


def sse(frames: AsyncIterator[bytes]) -> Stream:
    return Stream(frames, media_type="text/event-stream", headers=SSE_HEADERS)


def live_frames(
    live: LiveStream, heartbeat_s: float, after: int | None = None
) -> AsyncIterator[bytes]:
    """One subscriber's SSE frames from a stream this instance runs, with pings while idle.

    The stream's own generator, not one wrapped around it: a layer per frame per subscriber
    is what the fan-out profile is made of. It suspends once per frame even when frames are
    queued, so the writer loop never starves the server after its client is gone.
    """
    return live.frames(heartbeat_s, PING, after)
