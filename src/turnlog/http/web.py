"""What browsers need: the web chat at ``/`` and stream tokens for ``EventSource``.

The page is static files shipped inside the package (``turnlog/web/static``): ``GET /`` is
its ``index.html``, ``GET /web/<file>`` the rest. Browser auth (docs/protocol.md,
"Browsers"): a page holds a bearer token, and since ``EventSource`` cannot send headers it
asks ``POST /v1/conversations/{cid}/stream-token`` for a short-lived token that only reads
that conversation's feed and its messages' streams (``?token=`` on those two routes, see
``live``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.config.cors import CORSConfig
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

from turnlog.config import Settings
from turnlog.http.auth import make_stream_token
from turnlog.http.common import json_response, parse_id, runtime, user
from turnlog.http.openapi import api
from turnlog.web import STATIC

STREAM_TOKEN_TTL_S = 600
"""Long enough for a reconnecting EventSource to reuse its URL; a page asks again after."""

# The page loads nothing from elsewhere and runs no inline script.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-cache",
    "Referrer-Policy": "no-referrer",
}


def cors(settings: Settings) -> CORSConfig | None:
    """CORS for the origins in ``TURNLOG_CORS_ORIGINS`` (none by default: no CORS headers).

    Allowed request headers are what a client sends (``Authorization``, ``Content-Type`` and
    ``Last-Event-ID`` for a resumed stream); exposed are the response headers a streaming
    client reads. Credentials (cookies) are not used: auth is a bearer or stream token.
    """
    if not settings.cors_origins:
        return None
    return CORSConfig(
        allow_origins=list(settings.cors_origins),
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        expose_headers=[
            "Content-Language",
            "Retry-After",
            "X-Accel-Buffering",
            "X-Request-Id",
            "x-vercel-ai-ui-message-stream",
        ],
        max_age=600,
    )


@get("/", include_in_schema=False)
async def index() -> Response[bytes]:
    return Response(
        (STATIC / "index.html").read_bytes(),
        media_type="text/html",  # litestar adds "; charset=utf-8" to text types itself
        headers=_PAGE_HEADERS,
    )


class StreamToken(msgspec.Struct, frozen=True, kw_only=True):
    token: str
    expires_at: str


@post(
    "/v1/conversations/{cid:str}/stream-token",
    status_code=201,
    opt=api("a short-lived token that reads this conversation's SSE", {201: StreamToken}),
)
async def stream_token(request: Request[Any, Any, Any], cid: str) -> Response[bytes]:
    owner = user(request)
    rt = runtime(request)
    conversation_id = parse_id(cid, "conversation")
    await rt.chat.conversation(owner, conversation_id)  # 404 unless the caller's
    token, expires = make_stream_token(rt.secret, owner, conversation_id, STREAM_TOKEN_TTL_S)
    expires_at = dt.datetime.fromtimestamp(expires, dt.UTC).isoformat().replace("+00:00", "Z")
    return json_response(StreamToken(token=token, expires_at=expires_at), 201)


ROUTES: list[ControllerRouterHandler] = [
    index,
    stream_token,
    create_static_files_router(
        path="/web", directories=[STATIC], send_as_attachment=False, include_in_schema=False
    ),
]
