"""The litestar app: assembles the route modules (one per surface) and owns the lifespan.

Route modules: `conversations` (CRUD, sends, cancel/retry/tool results, export), `live`
(message streams and conversation feeds over SSE), `ops` (health, readiness, metrics).
What they share (the runtime, the caller, bodies, error answers) is in `common`.

The lifespan owns everything that lives as long as the server: the database (embedded or
external), the connection pool, the instance's liveness lock, the stream registry and one
task group in which every generation runs.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import psycopg
import structlog
from litestar import Litestar
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, Receive, Scope, Send
from litestar.types import Message as ASGIMessage

from turnlog.cluster import Cluster
from turnlog.commands import Chat
from turnlog.config import Settings
from turnlog.db.schema import apply_schema
from turnlog.errors import DomainError
from turnlog.follow import Follower
from turnlog.generation.engine import Engine, utcnow
from turnlog.http import (
    conversations,
    internal,
    live,
    models,
    openapi,
    ops,
    product,
    tools,
    ui_chat,
    web,
)
from turnlog.http.auth import Unauthorized
from turnlog.http.common import (
    Runtime,
    database_unavailable,
    domain_error,
    http_exception,
    internal_error,
    unauthorized,
)
from turnlog.log.liveness import Liveness
from turnlog.log.pool import BoundedPool, DatabaseUnavailable, open_pool
from turnlog.log.store import Appended, OnAppend, Store
from turnlog.product.cache import ResponseCache
from turnlog.product.titles import Titler
from turnlog.uichat import mapping as uichat_mapping

__all__ = ["Runtime", "create_app"]

log = structlog.get_logger("turnlog.http")


# What a client's X-Request-ID may hold to be logged and echoed back as is: a header value
# is raw bytes (any of them, 0xFF included), and the log wants plain printable text.
_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,64}")


def safe_request_id(raw: bytes | None) -> str | None:
    """The client's X-Request-ID if it is 1 to 64 printable ASCII characters, else None
    (the caller makes one up): never an error, whatever bytes arrived."""
    if raw is None or _REQUEST_ID.fullmatch(raw) is None:
        return None
    return raw.decode("ascii")


def request_log(rt: Runtime) -> Callable[[ASGIApp], ASGIApp]:
    """One canonical log line per request, with the ids bound while it ran."""

    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            headers = dict(scope.get("headers") or [])
            request_id = safe_request_id(headers.get(b"x-request-id")) or uuid.uuid4().hex
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(request_id=request_id)
            status = 500
            started = time.perf_counter()

            # Not a coroutine: it hands back send's own awaitable, so the SSE body chunks
            # (hundreds per second per stream) pay no extra coroutine frame for the log.
            def send_logged(message: ASGIMessage) -> Awaitable[None]:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    message["headers"] = [
                        *message.get("headers", []),
                        (b"x-request-id", request_id.encode()),
                    ]
                return send(message)

            try:
                await app(scope, receive, send_logged)
            finally:
                elapsed = time.perf_counter() - started
                method = str(scope.get("method", ""))
                # The route's template (`/v1/messages/{mid}/stream`), never the raw path:
                # ids in labels would make a new time series per conversation.
                route = scope.get("path_template") or "unmatched"
                rt.metrics.http_request(method, route, status, elapsed)
                log.info(
                    "request",
                    method=method,
                    # The path alone: the query may hold a stream token (never logged).
                    path=scope["path"],
                    status=status,
                    duration_ms=round(elapsed * 1000, 1),
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
            *conversations.ROUTES,
            *live.ROUTES,
            *models.ROUTES,
            *tools.ROUTES,
            *ops.ROUTES,
            *openapi.ROUTES,
            *ui_chat.ROUTES,
            *web.ROUTES,
            *internal.ROUTES,
            *product.ROUTES,
        ],
        lifespan=[lifespan],
        exception_handlers={
            DomainError: domain_error,
            Unauthorized: unauthorized,
            psycopg.OperationalError: database_unavailable,
            HTTPException: http_exception,
            Exception: internal_error,
        },
        cors_config=web.cors(settings),
        logging_config=None,
        openapi_config=None,
        # Larger bodies are answered 413 from Content-Length, or as soon as the streamed
        # body passes the limit: never read whole.
        request_max_body_size=settings.body_limit,
        debug=False,
    )
    # The request log wraps litestar's whole handler (its exception handler and CORS
    # included), not each route: route middleware makes litestar put a second exception
    # handler in every route, and both wrap `send`, a coroutine layer per SSE chunk. Out
    # here, a request no route answers (404, a CORS preflight) gets its line as well.
    app.asgi_handler = request_log(rt)(app.asgi_handler)
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
    pool = BoundedPool(open_pool(url), timeout_s=settings.db_timeout_s)
    await pool.open(wait=True)
    rt.store = Store(pool, on_append=_after_commit(rt))
    rt.liveness = Liveness(url, rt.store, rt.instance_id)
    try:
        rt.engine = Engine(
            rt.store,
            rt.registry,
            settings,
            instance_id=rt.instance_id,
            metrics=rt.metrics,
            tools=rt.tools,
        )
        cache_config = settings.models.product.cache
        if cache_config is not None:
            rt.engine.response_cache = ResponseCache(rt.store.pool, cache_config, rt.metrics)
        if settings.auto_titles:
            rt.titler = Titler(rt.store, settings, rt.metrics, now=rt.engine.now)
        _gauges(rt)
        await rt.limits.open(url)
        rt.cluster = Cluster(url, rt.store, rt.hub, rt.engine, rt.instance_id)
        rt.chat = Chat(
            rt.store,
            rt.engine,
            settings,
            rt.limits,
            cancel_elsewhere=rt.cluster.request_cancel,
        )
        await rt.liveness.start(utcnow())
        await rt.cluster.register(rt.internal_url)
        rt.follower = Follower(
            rt.cluster, rt.chat, token=rt.internal_token, heartbeat_s=settings.heartbeat_s
        )
        async with anyio.create_task_group() as tg:
            rt.engine.bind(tg)
            rt.follower.bind(tg)
            tg.start_soon(rt.cluster.run)
            tg.start_soon(rt.registry.run)
            tg.start_soon(rt.liveness.run)
            if rt.titler is not None:
                tg.start_soon(rt.titler.run)
            await tg.start(rt.tools.run)  # MCP servers connected, their tools listed
            # The UI message stream's tool parts follow the registry (client tools,
            # approvals).
            uichat_mapping.configure(rt.tools.answered_by_client, rt.tools.needs_approval)
            orphans = await rt.chat.sweep()
            log.info("started", instance_id=str(rt.instance_id), orphans_taken_over=orphans)
            tg.start_soon(rt.chat.recovery.watch)
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
                    await _unregister(rt)
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            if hasattr(rt, "follower"):
                await rt.follower.aclose()
            await rt.liveness.close()
            await rt.limits.close()
            await pool.close()
        log.info("stopped")


def _after_commit(rt: Runtime) -> OnAppend:
    """The store's after-commit hook: the feeds (here, and the other instances' through
    the cluster), then automatic titles (``rt.titler``, made once the engine exists; None
    when TURNLOG_AUTO_TITLES=0)."""
    hub = rt.hub

    def after_commit(appended: Appended) -> None:
        hub.publish(appended)
        if rt.titler is not None:
            rt.titler.on_append(appended)

    return after_commit


async def _unregister(rt: Runtime) -> None:
    """Remove this instance's row, unless the database is gone: then its lock is gone too,
    which tells the others the same (its rows are orphans either way)."""
    if not rt.liveness.held:
        return
    try:
        await rt.store.unregister_instance(rt.instance_id)
    except DatabaseUnavailable as exc:
        log.warning("could not unregister the instance", error=str(exc))


def _gauges(rt: Runtime) -> None:
    """Gauges read at scrape time from what the runtime holds."""
    m = rt.metrics
    m.gauge("turnlog_generations_running", "Generations running here.", lambda: len(rt.engine))
    m.gauge(
        "turnlog_oldest_unstored_delta_seconds",
        "Age of the oldest streamed event not yet stored (what a crash would lose).",
        rt.engine.oldest_unstored_s,
    )
    m.gauge(
        "turnlog_overloaded",
        "1 while new generations are refused because checkpoints are late (see the log).",
        lambda: float(rt.engine.overloaded() is not None),
    )
    m.gauge(
        "turnlog_streams_open", "Live streams (running or lingering).", lambda: len(rt.registry)
    )
    m.gauge(
        "turnlog_stream_subscribers",
        "Readers of live streams.",
        rt.registry.subscriber_count,
    )
    m.gauge("turnlog_feeds_open", "Open conversation feeds.", lambda: len(rt.hub))
    m.gauge(
        "turnlog_mirrors_open",
        "Streams of generations on other instances mirrored here (one relay per instance).",
        lambda: len(rt.follower),
    )
    m.gauge(
        "turnlog_relayed_streams",
        "Streams running here that other instances follow (a tap in one of their relays).",
        rt.relays.streams,
    )
    m.gauge(
        "turnlog_cluster_listening",
        "1 while the LISTEN connection for other instances' wake-ups is up.",
        lambda: float(rt.cluster.listening),
    )

    def pool_stat(key: str) -> Callable[[], float]:
        return lambda: float(rt.store.pool.get_stats().get(key, 0))

    def in_use() -> float:
        stats = rt.store.pool.get_stats()
        return float(stats.get("pool_size", 0) - stats.get("pool_available", 0))

    m.gauge("turnlog_db_pool_connections_in_use", "Pool connections lent out.", in_use)
    m.gauge(
        "turnlog_db_pool_requests_waiting",
        "Requests waiting for a pool connection.",
        pool_stat("requests_waiting"),
    )


async def _drain(rt: Runtime, grace_s: float) -> None:
    """Let generations finish for ``grace_s`` (then interrupt them), end every feed and
    stream response."""
    await rt.engine.drain(grace_s)
    rt.hub.close_all()
    rt.follower.drop_all()
    rt.relays.close_all()
    rt.closing.set()


async def _drain_when_asked(rt: Runtime) -> None:
    await rt.drain_requested.wait()
    log.info("draining", grace_s=rt.settings.shutdown_grace_s, running=len(rt.engine))
    async with anyio.create_task_group() as tg:

        async def hurry_when_forced() -> None:
            await rt.force_requested.wait()
            log.info("forced stop: interrupting now", running=len(rt.engine))
            rt.engine.hurry()

        tg.start_soon(hurry_when_forced)
        await _drain(rt, rt.settings.shutdown_grace_s)
        tg.cancel_scope.cancel()
    log.info("drained")
    if rt.on_drained is not None:
        rt.on_drained()
