"""What browsers need: the web chat at ``/``, its session cookie, and stream tokens.

The page is static files shipped inside the package (``turnlog/web/static``): ``GET /`` is
its ``index.html``, ``GET /web/<file>`` the rest (gzipped when the browser accepts it, with an
ETag: a reload asks again and gets 304s), ``GET /favicon.ico`` its icon. Browser auth: the
page trades the bearer token it was given for an HttpOnly session cookie (``/v1/session``;
``turnlog.http.session`` and docs/web.md give the design and its CSRF defence), and since
``EventSource`` cannot send headers it asks ``POST /v1/conversations/{cid}/stream-token`` for a
short-lived token that only reads that conversation's feed and its messages' streams
(``?token=`` on those two routes, see ``live``).
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import math
import os
from pathlib import Path
from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.config.cors import CORSConfig
from litestar.types import ControllerRouterHandler

from turnlog.config import Settings
from turnlog.http import session
from turnlog.http.auth import Unauthorized, make_stream_token, user_from_header
from turnlog.http.common import error_response, json_response, parse_id, runtime, user
from turnlog.http.openapi import api
from turnlog.web import STATIC

STREAM_TOKEN_TTL_S = 600
"""Long enough for a reconnecting EventSource to reuse its URL; a page asks again after."""

# The page loads nothing from elsewhere and runs no inline script, no eval and no inline
# style attribute: whatever a model writes and a sanitizer missed cannot run (the web chat
# renders model output as untrusted, docs/web.md). Images only from here (no tracking pixels).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'; object-src 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
# litestar adds "; charset=utf-8" to text types itself.
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}


class _File:
    """One static file as served: its bytes, gzipped once, and an ETag of its content."""

    def __init__(self, path: Path) -> None:
        self.body = path.read_bytes()
        self.gzipped = gzip.compress(self.body, 9, mtime=0)
        self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:20] + '"'
        self.media_type = _TYPES.get(path.suffix, "text/plain")


_files: dict[str, _File] = {}


def _static(request: Request[Any, Any, Any], name: str, headers: dict[str, str]) -> Response[bytes]:
    """``name`` under the static folder, gzipped if accepted, 304 when the ETag matches;
    only files inside that folder (a listed name, no ``..``)."""
    file = _files.get(name)
    if file is None:
        # Judged by the name, not by where links lead: reducer.js links to the JS reducer's
        # one source, outside the folder.
        path = Path(os.path.normpath(STATIC / name))
        if not path.is_relative_to(STATIC) or not path.is_file():
            return error_response(404, f"no file {name!r} here")
        file = _files[name] = _File(path)
    out = {**headers, "ETag": file.etag, "Vary": "Accept-Encoding"}
    out.setdefault("Cache-Control", "no-cache")  # always revalidated: a new version shows at once
    if file.etag in request.headers.get("if-none-match", ""):
        return Response(b"", status_code=304, headers=out)
    if "gzip" in request.headers.get("accept-encoding", ""):
        out["Content-Encoding"] = "gzip"
        return Response(file.gzipped, media_type=file.media_type, headers=out)
    return Response(file.body, media_type=file.media_type, headers=out)


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
async def index(request: Request[Any, Any, Any]) -> Response[bytes]:
    return _static(request, "index.html", _PAGE_HEADERS)


@get("/web/{name:path}", include_in_schema=False)
async def static_file(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
    return _static(request, name.lstrip("/"), {"X-Content-Type-Options": "nosniff"})


@get("/favicon.ico", include_in_schema=False)
async def favicon(request: Request[Any, Any, Any]) -> Response[bytes]:
    return _static(request, "favicon.svg", {})


class Session(msgspec.Struct, frozen=True, kw_only=True):
    user: str
    expires_at: str | None


def _session(uid: str, token_expires: float) -> Session:
    expires = None
    if not math.isinf(token_expires):
        expires = dt.datetime.fromtimestamp(token_expires, dt.UTC).isoformat()
    return Session(user=uid, expires_at=expires and expires.replace("+00:00", "Z"))


def _secure(request: Request[Any, Any, Any]) -> bool:
    """Whether the browser reached us over HTTPS (directly or through a proxy that says so)."""
    forwarded = request.headers.get("x-forwarded-proto", "")
    return request.url.scheme == "https" or forwarded.split(",")[0].strip() == "https"


_NO_STORE = {"Cache-Control": "no-store"}


@post("/v1/session", status_code=201, include_in_schema=False)
async def sign_in(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Trade a bearer token for the web chat's session cookie (``turnlog.http.session``)."""
    if request.headers.get(session.CSRF_HEADER) != "1":
        raise Unauthorized(f"signing in needs the header {session.CSRF_HEADER}: 1")
    authorization = request.headers.get("authorization")
    uid = user_from_header(runtime(request).secret, authorization)
    token = (authorization or "").partition(" ")[2].strip()
    response = json_response(_session(uid, session.expires_at(token)), 201)
    response.headers.update(_NO_STORE)
    response.headers["Set-Cookie"] = session.cookie_header(token, secure=_secure(request))
    return response


@get("/v1/session", include_in_schema=False)
async def who(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Who the session cookie (or bearer token) signs in, and until when; 401 if nobody."""
    uid = user(request)
    authorization = request.headers.get("authorization")
    token = (authorization or "").partition(" ")[2].strip() or request.cookies[session.COOKIE]
    response = json_response(_session(uid, session.expires_at(token)))
    response.headers.update(_NO_STORE)
    return response


@delete("/v1/session", status_code=204, include_in_schema=False)
async def sign_out(request: Request[Any, Any, Any]) -> Response[None]:
    """Sign this browser out: the cookie is cleared (the token itself stays valid)."""
    if request.headers.get(session.CSRF_HEADER) != "1":
        raise Unauthorized(f"signing out needs the header {session.CSRF_HEADER}: 1")
    return Response(
        None,
        status_code=204,
        headers={**_NO_STORE, "Set-Cookie": session.clear_cookie_header(secure=_secure(request))},
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
    static_file,
    favicon,
    sign_in,
    who,
    sign_out,
    stream_token,
]
