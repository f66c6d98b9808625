"""The litestar app: routes of CONTRACT.md section 2, SSE of section 3, the lifespan.

The lifespan owns everything that lives as long as the server: the database (embedded or
external), the connection pool, the instance's liveness lock, the stream registry and one
task group in which every generation runs.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import msgspec
import psycopg
import structlog
from litestar import Litestar, Request, Response, delete, get, patch, post, put
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.response import Stream
from litestar.types import ASGIApp, Receive, Scope, Send
from litestar.types import Message as ASGIMessage

from turnlog.commands import (
    BadRequest,
    Chat,
    ConversationIn,
    ConversationPatch,
    EditIn,
    MessageIn,
    NotGenerating,
    TooLarge,
    ToolResultIn,
    Unavailable,
)
from turnlog.config import Settings
from turnlog.db.schema import apply_schema
from turnlog.generation.engine import Engine, done_for, utcnow
from turnlog.http import export
from turnlog.http.auth import Unauthorized, load_secret, user_from_header
from turnlog.http.feeds import Feed, FeedHub
from turnlog.log.projection import (
    Conversation,
    ConversationBusy,
    DomainError,
    Fenced,
    InvalidEvent,
    Message,
    MessageRecord,
    NotFound,
)
from turnlog.log.store import Store, VersionConflict, open_pool
from turnlog.streams import StreamRegistry, event_frame, init_frame, sse_frame

log = structlog.get_logger("turnlog.http")

T = TypeVar("T")
_json = msgspec.json.Encoder()

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
PING = b": ping\n\n"


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
        self.closing = anyio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.on_ready: Callable[[Runtime], None] | None = None
        self.on_drained: Callable[[], None] | None = None
        self.responses: dict[int, int] = {}

    def request_drain(self) -> None:
        """Thread- and signal-safe: begin the graceful drain."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.drain_requested.set)


def runtime(request: Request[Any, Any, Any]) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


# -- errors ------------------------------------------------------------------------------

_STATUS: list[tuple[type[Exception], int]] = [
    (NotFound, 404),
    (ConversationBusy, 409),
    (Fenced, 409),
    (VersionConflict, 409),
    (NotGenerating, 409),
    (TooLarge, 413),
    (Unavailable, 503),
    (BadRequest, 400),
    (InvalidEvent, 400),
]


def _error(status: int, detail: str) -> Response[bytes]:
    return Response(
        _json.encode({"status_code": status, "detail": detail}),
        status_code=status,
        media_type="application/json",
    )


def _domain_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    status = next((code for cls, code in _STATUS if isinstance(exc, cls)), 400)
    return _error(status, str(exc))


def _unauthorized(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    response = _error(401, str(exc))
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


def _http_exception(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, str(exc.detail))


def _internal(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.error("unhandled error", exc_info=exc)
    return _error(500, "internal error; the request was not applied")


# -- helpers -----------------------------------------------------------------------------


def user(request: Request[Any, Any, Any]) -> str:
    uid = user_from_header(runtime(request).secret, request.headers.get("authorization"))
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
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None


def json_response(value: Any, status: int = 200) -> Response[bytes]:
    return Response(_json.encode(value), status_code=status, media_type="application/json")


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


# -- conversations -----------------------------------------------------------------------


@post("/v1/conversations", status_code=201)
async def create_conversation(request: Request[Any, Any, Any]) -> Response[bytes]:
    owner = user(request)
    data = await body(request, ConversationIn, empty_ok=True)
    conv = await runtime(request).chat.create_conversation(owner, data)
    return json_response(conv, 201)


@get("/v1/conversations")
async def list_conversations(request: Request[Any, Any, Any]) -> Response[bytes]:
    owner = user(request)
    raw_limit = request.query_params.get("limit") or "20"
    try:
        limit = int(raw_limit)
    except ValueError:
        raise BadRequest(f"limit must be an integer, got {raw_limit!r}") from None
    items, nxt = await runtime(request).chat.list_conversations(
        owner, limit=limit, cursor=request.query_params.get("cursor") or None
    )
    return json_response({"items": items, "next": nxt})


@get("/v1/conversations/{cid:str}")
async def get_conversation(request: Request[Any, Any, Any], cid: str) -> Response[bytes]:
    owner = user(request)
    rt = runtime(request)
    conv, messages = await rt.chat.conversation_with_messages(owner, parse_id(cid, "conversation"))
    return json_response({"conversation": conv, "messages": messages})


@patch("/v1/conversations/{cid:str}")
async def update_conversation(request: Request[Any, Any, Any], cid: str) -> Response[bytes]:
    owner = user(request)
    data = await body(request, ConversationPatch, empty_ok=True)
    conv = await runtime(request).chat.update_conversation(
        owner, parse_id(cid, "conversation"), data
    )
    return json_response(conv)


@delete("/v1/conversations/{cid:str}", status_code=204)
async def delete_conversation(request: Request[Any, Any, Any], cid: str) -> None:
    owner = user(request)
    await runtime(request).chat.delete_conversation(owner, parse_id(cid, "conversation"))


@post("/v1/conversations/{cid:str}/messages", status_code=201)
async def send_message(request: Request[Any, Any, Any], cid: str) -> Response[bytes]:
    owner = user(request)
    conversation_id = parse_id(cid, "conversation")
    data = await body(request, MessageIn)
    sent = await runtime(request).chat.send(owner, conversation_id, data)
    structlog.contextvars.bind_contextvars(
        conversation_id=str(conversation_id), message_id=str(sent.assistant_message.id)
    )
    return json_response(
        {"user_message": sent.user_message, "assistant_message": sent.assistant_message},
        201 if sent.created else 200,
    )


@get("/v1/conversations/{cid:str}/messages")
async def list_messages(request: Request[Any, Any, Any], cid: str) -> Response[bytes]:
    owner = user(request)
    items = await runtime(request).chat.list_messages(owner, parse_id(cid, "conversation"))
    return json_response({"items": items})


@put("/v1/conversations/{cid:str}/messages/{mid:str}")
async def edit_message(request: Request[Any, Any, Any], cid: str, mid: str) -> Response[bytes]:
    owner = user(request)
    conversation_id = parse_id(cid, "conversation")
    message_id = parse_id(mid, "message")
    data = await body(request, EditIn)
    row = await runtime(request).chat.edit(owner, conversation_id, message_id, data)
    return json_response(row)


@get("/v1/conversations/{cid:str}/export")
async def export_conversation(request: Request[Any, Any, Any], cid: str) -> Response[bytes]:
    owner = user(request)
    rt = runtime(request)
    conv, rows = await rt.chat.conversation_with_messages(owner, parse_id(cid, "conversation"))
    fmt = (request.query_params.get("format") or "markdown").lower()
    lang = export.normalize_lang(request.query_params.get("lang"))
    if fmt == "json":
        return json_response({"conversation": conv, "messages": rows})
    if fmt not in ("markdown", "md"):
        raise BadRequest(f"format must be 'markdown' or 'json', got {fmt!r}")
    text = export.markdown(conv, rows, lang)
    return Response(
        text.encode(),
        media_type="text/markdown; charset=utf-8",
        headers={"Content-Language": lang},
    )


# -- messages ----------------------------------------------------------------------------


@post("/v1/messages/{mid:str}/cancel", status_code=200)
async def cancel_message(request: Request[Any, Any, Any], mid: str) -> Response[bytes]:
    owner = user(request)
    row = await runtime(request).chat.cancel(owner, parse_id(mid, "message"))
    return json_response(row)


@post("/v1/messages/{mid:str}/retry", status_code=201)
async def retry_message(request: Request[Any, Any, Any], mid: str) -> Response[bytes]:
    owner = user(request)
    row = await runtime(request).chat.retry(owner, parse_id(mid, "message"))
    return json_response({"assistant_message": row}, 201)


@post("/v1/messages/{mid:str}/tool-results", status_code=201)
async def tool_results(request: Request[Any, Any, Any], mid: str) -> Response[bytes]:
    owner = user(request)
    message_id = parse_id(mid, "message")
    data = await body(request, ToolResultIn)
    tool_row, assistant = await runtime(request).chat.tool_result(owner, message_id, data)
    return json_response({"tool_message": tool_row, "assistant_message": assistant}, 201)


@get("/v1/messages/{mid:str}/stream")
async def message_stream(request: Request[Any, Any, Any], mid: str) -> Stream:
    owner = user(request)
    rt = runtime(request)
    row, _ = await rt.chat.message(owner, parse_id(mid, "message"))
    after = last_event_id(request)
    structlog.contextvars.bind_contextvars(
        conversation_id=str(row.message.conversation_id), message_id=str(row.message.id)
    )
    return sse(_message_frames(rt, row, after))


async def _message_frames(
    rt: Runtime, row: MessageRecord, after: int | None
) -> AsyncIterator[bytes]:
    mid = row.message.id
    heartbeat = rt.settings.heartbeat_s
    live = rt.registry.get(mid)
    if live is None and row.message.status == "generating":
        row = await rt.chat.repair_if_orphan(row)
        live = rt.registry.get(mid)
    if live is None:
        if row.message.status != "generating":
            for frame in _final_frames(row):
                yield frame
            return
        # Another living server process runs it: follow its checkpoints from the store.
        async for frame in _follow_store(rt, row):
            yield frame
        return
    sub = live.subscribe(after=after)
    try:
        while True:
            try:
                next_frame = await sub.next_frame(heartbeat)
            except StopAsyncIteration:
                return
            # next_frame suspends once per frame even when frames are queued, so this
            # writer loop never starves the server after its client is gone.
            yield PING if next_frame is None else next_frame
    finally:
        sub.close()


def _final_frames(row: MessageRecord) -> list[bytes]:
    m = row.message
    k = row.stream_seq
    return [init_frame(m.id, k, m.status, m.blocks), event_frame(k + 1, done_for(row))]


async def _follow_store(rt: Runtime, row: MessageRecord) -> AsyncIterator[bytes]:
    """init now, then a fresh init whenever the stored checkpoint moves, then done."""
    m = row.message
    yield init_frame(m.id, row.stream_seq, m.status, m.blocks)
    seen = row.stream_seq
    idle = 0.0
    while not rt.closing.is_set():
        await anyio.sleep(rt.settings.checkpoint_s)
        idle += rt.settings.checkpoint_s
        current = await rt.store.get_message(m.id)
        if current is None:
            return
        if current.message.status != "generating":
            for frame in _final_frames(current):
                yield frame
            return
        if current.stream_seq != seen:
            seen, idle = current.stream_seq, 0.0
            yield init_frame(m.id, seen, "generating", current.message.blocks)
        elif idle >= rt.settings.heartbeat_s:
            idle = 0.0
            yield PING


@get("/v1/conversations/{cid:str}/live")
async def conversation_live(request: Request[Any, Any, Any], cid: str) -> Stream:
    owner = user(request)
    rt = runtime(request)
    conversation_id = parse_id(cid, "conversation")
    last_event_id(request)  # validated; the answer is always a snapshot at the current V
    # Subscribe before reading the snapshot (which also checks the owner), then drop
    # queued changes the snapshot already holds: snapshot at V plus every change after V,
    # none lost, none twice.
    feed = rt.hub.subscribe(conversation_id)
    try:
        conv, messages = await rt.chat.conversation_with_messages(owner, conversation_id)
    except BaseException:
        rt.hub.unsubscribe(conversation_id, feed)
        raise
    return sse(_feed_frames(rt, conversation_id, feed, conv, messages))


async def _feed_frames(
    rt: Runtime, cid: uuid.UUID, feed: Feed, conv: Conversation, messages: list[Message]
) -> AsyncIterator[bytes]:
    v = conv.version
    try:
        snapshot = {"conversation": conv, "messages": messages, "version": v}
        yield sse_frame(b"snapshot", v, _json.encode(snapshot))
        while True:
            item = await feed.next(rt.settings.heartbeat_s)
            if item is None:
                return
            if item is False:
                yield PING
                continue
            version, data = item
            if version > v:
                yield data
    finally:
        rt.hub.unsubscribe(cid, feed)


# -- operations --------------------------------------------------------------------------


@get("/healthz")
async def healthz() -> Response[bytes]:
    return json_response({"status": "ok"})


@get("/readyz")
async def readyz(request: Request[Any, Any, Any]) -> Response[bytes]:
    rt = runtime(request)
    if not rt.ready or rt.drain_requested.is_set():
        return _error(503, "not ready" if not rt.ready else "shutting down")
    try:
        with anyio.fail_after(2):
            async with rt.store.pool.connection() as conn:
                await conn.execute("SELECT 1")
    except (TimeoutError, psycopg.Error) as exc:
        return _error(503, f"database unreachable: {exc}")
    return json_response({"status": "ready"})


@get("/metrics")
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    rt = runtime(request)
    lines = [
        "# HELP turnlog_generations_running Generations running in this process.",
        "# TYPE turnlog_generations_running gauge",
        f"turnlog_generations_running {len(rt.engine)}",
        "# HELP turnlog_streams_open Live streams held in memory (running or lingering).",
        "# TYPE turnlog_streams_open gauge",
        f"turnlog_streams_open {len(rt.registry)}",
        "# HELP turnlog_feeds_open Open conversation feeds.",
        "# TYPE turnlog_feeds_open gauge",
        f"turnlog_feeds_open {len(rt.hub)}",
        "# HELP turnlog_http_responses_total HTTP responses by status code.",
        "# TYPE turnlog_http_responses_total counter",
    ]
    lines += [
        f'turnlog_http_responses_total{{code="{code}"}} {n}'
        for code, n in sorted(rt.responses.items())
    ]
    return Response(("\n".join(lines) + "\n").encode(), media_type="text/plain; version=0.0.4")


# -- the app -----------------------------------------------------------------------------


def request_log(rt: Runtime) -> Callable[[ASGIApp], ASGIApp]:
    """One canonical log line per request, with the ids bound while it ran."""

    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            headers = dict(scope.get("headers") or [])
            request_id = headers.get(b"x-request-id", b"").decode()[:64] or uuid.uuid4().hex
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(request_id=request_id)
            status = 500
            started = time.perf_counter()

            async def send_logged(message: ASGIMessage) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    message["headers"] = [
                        *message.get("headers", []),
                        (b"x-request-id", request_id.encode()),
                    ]
                await send(message)

            try:
                await app(scope, receive, send_logged)
            finally:
                rt.responses[status] = rt.responses.get(status, 0) + 1
                log.info(
                    "request",
                    method=scope.get("method"),
                    path=scope["path"],
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 1),
                )
                structlog.contextvars.clear_contextvars()

        return middleware

    return factory


def create_app(settings: Settings, rt: Runtime | None = None) -> Litestar:
    rt = rt or Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncGenerator[None, None]:
        async with _lifespan(rt):
            yield

    app = Litestar(
        route_handlers=[
            create_conversation,
            list_conversations,
            get_conversation,
            update_conversation,
            delete_conversation,
            send_message,
            list_messages,
            edit_message,
            export_conversation,
            cancel_message,
            retry_message,
            tool_results,
            message_stream,
            conversation_live,
            healthz,
            readyz,
            metrics,
        ],
        lifespan=[lifespan],
        exception_handlers={
            DomainError: _domain_error,
            Unauthorized: _unauthorized,
            HTTPException: _http_exception,
            Exception: _internal,
        },
        middleware=[request_log(rt)],
        logging_config=None,
        openapi_config=None,
        debug=False,
    )
    app.state.runtime = rt
    return app


@asynccontextmanager
async def _lifespan(rt: Runtime) -> AsyncGenerator[None, None]:
    from turnlog.db.embedded import resolve_database_url

    settings = rt.settings
    rt.loop = asyncio.get_running_loop()
    # An embedded cluster outlives this process on purpose: a restart (or a crash) finds it
    # running and reuses it; `turnlog db stop` stops it.
    url, _ = await anyio.to_thread.run_sync(resolve_database_url, settings)
    await anyio.to_thread.run_sync(apply_schema, url)
    pool = open_pool(url)
    await pool.open(wait=True)
    lock_conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    try:
        rt.store = Store(pool, on_append=rt.hub.publish)
        rt.engine = Engine(rt.store, rt.registry, settings, instance_id=rt.instance_id)
        rt.chat = Chat(rt.store, rt.engine, settings)
        await rt.store.register_instance(lock_conn, rt.instance_id, utcnow())
        async with anyio.create_task_group() as tg:
            rt.engine.bind(tg)
            tg.start_soon(rt.registry.run)
            repaired = await rt.chat.sweep()
            log.info("started", instance_id=str(rt.instance_id), interrupted_orphans=repaired)
            tg.start_soon(_drain_when_asked, rt)
            rt.ready = True
            if rt.on_ready is not None:
                rt.on_ready(rt)
            try:
                yield
            finally:
                rt.ready = False
                with anyio.CancelScope(shield=True):
                    # Shut down without a drain first (a second signal): interrupt at once.
                    await _drain(rt, 0 if rt.drain_requested.is_set() else 0.5)
                    await rt.store.unregister_instance(rt.instance_id)
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await lock_conn.close()
            await pool.close()
        log.info("stopped")


async def _drain(rt: Runtime, grace_s: float) -> None:
    """Let generations finish for ``grace_s`` (then interrupt them), end every feed and
    stream response."""
    await rt.engine.drain(grace_s)
    rt.hub.close_all()
    rt.closing.set()


async def _drain_when_asked(rt: Runtime) -> None:
    await rt.drain_requested.wait()
    log.info("draining", grace_s=rt.settings.shutdown_grace_s, running=len(rt.engine))
    await _drain(rt, rt.settings.shutdown_grace_s)
    log.info("drained")
    if rt.on_drained is not None:
        rt.on_drained()
