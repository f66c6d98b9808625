"""Operations: liveness, readiness and metrics."""

from __future__ import annotations

from typing import Any

import psycopg
from litestar import Request, Response, get

from turnlog.http.common import error_response, json_response, runtime


@get("/healthz")
async def healthz() -> Response[bytes]:
    return json_response({"status": "ok"})


@get("/readyz")
async def readyz(request: Request[Any, Any, Any]) -> Response[bytes]:
    rt = runtime(request)
    if not rt.ready or rt.drain_requested.is_set():
        return error_response(503, "not ready" if not rt.ready else "shutting down")
    if not rt.liveness.held:
        # Without its lock this process cannot prove it is alive (log/liveness.py).
        return error_response(503, "liveness lock lost; taking it again")
    try:
        async with rt.store.pool.connection() as conn:
            await conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return error_response(503, f"database unreachable: {exc}")
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


ROUTES = [healthz, readyz, metrics]
