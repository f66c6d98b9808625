"""Operations: liveness, readiness and metrics."""

from __future__ import annotations

from typing import Any

import psycopg
from litestar import Request, Response, get

from turnlog.http.common import error_response, json_response, runtime
from turnlog.http.openapi import Text, api
from turnlog.metrics import MEDIA_TYPE

_JSON = Text("application/json", "status")


@get("/healthz", opt=api("liveness", {200: _JSON}, auth=False))
async def healthz() -> Response[bytes]:
    return json_response({"status": "ok"})


@get("/readyz", opt=api("readiness (database reachable)", {200: _JSON}, errors=(503,), auth=False))
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


@get(
    "/metrics",
    opt=api("Prometheus metrics", {200: Text("text/plain", "Prometheus text format")}, auth=False),
)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    return Response(runtime(request).metrics.render(), media_type=MEDIA_TYPE)


ROUTES = [healthz, readyz, metrics]
