"""The web chat's session cookie: the signed-in page in every tab, the token in none of them.

The page receives a bearer token in the URL fragment (``#token=…``, never sent to a server)
or pasted into its sign-in form, and exchanges it at once: ``POST /v1/session`` with
``Authorization: Bearer <token>`` answers with a cookie that holds that token, ``HttpOnly``
(no script, so no injected script, can read it), ``SameSite=Strict`` (no other site's page or
link sends it), ``Path=/``, ``Secure`` on HTTPS, and expiring when the token does. The page
then forgets the token: its requests carry the cookie, so a new tab or a restarted browser is
still signed in until the token expires or ``DELETE /v1/session`` (Sign out) clears it.

CSRF. A cookie is sent by the browser whatever page made the request, so it is accepted only
with the header ``X-Turnlog-CSRF: 1``, on every method:
- a page cannot add a custom header to a request to another origin without a CORS preflight,
  and this server's CORS (``TURNLOG_CORS_ORIGINS``) never allows that header, so only a page
  of this origin (ours, under its CSP) can send it; forms, links, images and ``<script src>``
  cannot send headers at all;
- ``SameSite=Strict`` already keeps the cookie off requests started by another *site*; the
  header covers other origins of the same site (another port on the same host);
- a request whose ``Sec-Fetch-Site`` says it came from anywhere but this origin is refused
  all the same (browsers set that header and pages cannot forge it).
``EventSource`` cannot send headers: the page keeps using short-lived stream tokens
(``?token=``) for the feed and the streams, asked for with the cookie and the header.
A bearer ``Authorization`` header, when present, is used instead of the cookie.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

import jwt

from turnlog.http.auth import Unauthorized, user_from_header

COOKIE = "turnlog_session"
CSRF_HEADER = "x-turnlog-csrf"
# A token with no expiry still gets a cookie that ends: the longest a browser keeps one.
MAX_AGE_S = 400 * 86400


def session_user(secret: str, headers: Mapping[str, str], cookies: Mapping[str, str]) -> str:
    """The user of the session cookie, with the CSRF checks above, or ``Unauthorized``."""
    token = cookies.get(COOKIE)
    if not token:
        raise Unauthorized("missing Authorization header; expected 'Bearer <token>'")
    if headers.get(CSRF_HEADER) != "1":
        raise Unauthorized(
            f"the session cookie is accepted only with the header {CSRF_HEADER}: 1 "
            "(the web chat sends it); other clients send 'Authorization: Bearer <token>'"
        )
    site = headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        raise Unauthorized(f"the session cookie is accepted only from this origin, not {site!r}")
    return user_from_header(secret, f"Bearer {token}")


def expires_at(token: str) -> float:
    """When a token (already verified) expires, in Unix time; inf when it does not."""
    exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    return math.inf if exp is None else float(exp)


def cookie_header(token: str, *, secure: bool) -> str:
    """The ``Set-Cookie`` value that signs a browser in with ``token`` until it expires."""
    max_age = min(MAX_AGE_S, max(0, int(expires_at(token) - time.time())))
    flags = "; Secure" if secure else ""
    return f"{COOKIE}={token}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Strict{flags}"


def clear_cookie_header(*, secure: bool) -> str:
    flags = "; Secure" if secure else ""
    return f"{COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict{flags}"
