"""Browsers (docs/protocol.md, "Browsers"): CORS for the origins in TURNLOG_CORS_ORIGINS,
stream tokens for ``EventSource``, ``?token=`` only on the two SSE routes and never in a log,
and the web chat served at ``/``."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from turnlog.http.auth import make_stream_token

from .support import FAST, JWT_SECRET, Server, assert_problem, make_token, parse_sse

REPO = Path(__file__).parents[2]

pytestmark = pytest.mark.slow

ALLOWED = "http://chat.example:5173"


@pytest.fixture(scope="module")
def cors_server(databases: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that serves ALLOWED cross-origin."""
    data_dir = tmp_path_factory.mktemp("cors")
    srv = Server(
        database_url=databases.create(),
        data_dir=data_dir,
        log_path=data_dir / "server.log",
        env_overrides={"TURNLOG_CORS_ORIGINS": f"{ALLOWED}, http://other.example"},
    ).start()
    yield srv
    srv.terminate(timeout=15)


@pytest.fixture(scope="module")
def turn(cors_server: Server) -> dict[str, str]:
    """alice's conversation with one finished turn, and a second conversation of hers."""
    with cors_server.client("alice") as c:
        conv = c.create_conversation(options=FAST)
        sent = c.send(conv["id"], "hello")
        c.follow(sent["assistant_message"]["id"])
        other = c.create_conversation(options=FAST)
        other_sent = c.send(other["id"], "elsewhere")
        c.follow(other_sent["assistant_message"]["id"])
    return {
        "cid": conv["id"],
        "mid": sent["assistant_message"]["id"],
        "other_cid": other["id"],
        "other_mid": other_sent["assistant_message"]["id"],
    }


def _preflight(h: httpx.Client, path: str, origin: str, method: str = "POST") -> httpx.Response:
    return h.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type, last-event-id",
        },
    )


def test_no_cors_headers_by_default(server: Server) -> None:
    """Without TURNLOG_CORS_ORIGINS no response carries Access-Control-* headers."""
    with server.http(None) as h:
        r = h.get("/healthz", headers={"Origin": ALLOWED})
        assert r.status_code == 200
        assert not [k for k in r.headers if k.lower().startswith("access-control-")]


def test_preflight_of_an_allowed_origin(cors_server: Server) -> None:
    """A preflight from a listed origin allows it, the methods and the streaming headers."""
    with cors_server.http(None) as h:
        r = _preflight(h, "/v1/conversations", ALLOWED)
        assert r.status_code in (200, 204), r.text
        assert r.headers["access-control-allow-origin"] == ALLOWED
        allowed = {v.strip().lower() for v in r.headers["access-control-allow-headers"].split(",")}
        assert {"authorization", "content-type", "last-event-id"} <= allowed
        methods = r.headers["access-control-allow-methods"]
        assert all(m in methods for m in ("GET", "POST", "PUT", "PATCH", "DELETE"))
        sse = _preflight(h, f"/v1/messages/{uuid.uuid4()}/stream", ALLOWED, "GET")
        assert sse.headers["access-control-allow-origin"] == ALLOWED


def test_preflight_of_another_origin_is_refused(cors_server: Server) -> None:
    """An origin not listed gets no Access-Control-Allow-Origin, so the browser refuses."""
    with cors_server.http(None) as h:
        r = _preflight(h, "/v1/conversations", "http://evil.example")
        assert "access-control-allow-origin" not in r.headers
        assert r.status_code >= 400
        plain = h.get("/healthz", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in plain.headers


def test_responses_to_an_allowed_origin_expose_what_a_client_reads(
    cors_server: Server, turn: dict[str, str]
) -> None:
    """Answers (errors and SSE included) carry the origin and the exposed headers."""
    with cors_server.http("alice") as h:
        ok = h.get("/v1/conversations", headers={"Origin": ALLOWED})
        assert ok.headers["access-control-allow-origin"] == ALLOWED
        assert "x-request-id" in ok.headers["access-control-expose-headers"].lower()
        denied = h.get("/v1/conversations", headers={"Origin": ALLOWED, "Authorization": ""})
        assert_problem(denied, 401)
        assert denied.headers["access-control-allow-origin"] == ALLOWED
        with h.stream(
            "GET", f"/v1/messages/{turn['mid']}/stream", headers={"Origin": ALLOWED}
        ) as r:
            assert r.status_code == 200
            assert r.headers["access-control-allow-origin"] == ALLOWED


def _stream_token(h: httpx.Client, cid: str) -> str:
    r = h.post(f"/v1/conversations/{cid}/stream-token")
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"token", "expires_at"}
    token: str = body["token"]
    return token


def _first_event(h: httpx.Client, path: str) -> tuple[str | None, dict[str, Any] | None]:
    import json

    with h.stream("GET", path) as r:
        if r.status_code != 200:
            r.read()
            assert_problem(r, r.status_code)
            return str(r.status_code), None
        for event, _, data in parse_sse(r.iter_lines()):
            if event is not None:
                return event, json.loads(data or "null")
    return None, None


def test_a_stream_token_reads_its_conversations_feed_and_streams(
    cors_server: Server, turn: dict[str, str]
) -> None:
    """?token= opens the feed and a message stream of the token's conversation, no header."""
    with cors_server.http("alice") as h:
        token = _stream_token(h, turn["cid"])
    with cors_server.http(None) as anon:
        event, data = _first_event(anon, f"/v1/conversations/{turn['cid']}/live?token={token}")
        assert event == "snapshot"
        assert data is not None
        assert data["conversation"]["id"] == turn["cid"]
        event, data = _first_event(anon, f"/v1/messages/{turn['mid']}/stream?token={token}")
        assert event == "init"
        assert data is not None
        assert data["message_id"] == turn["mid"]


def test_a_stream_token_opens_nothing_else(cors_server: Server, turn: dict[str, str]) -> None:
    """Another conversation's feed or message: 404; any other route: 401 (it is no bearer)."""
    with cors_server.http("alice") as h:
        token = _stream_token(h, turn["cid"])
    with cors_server.http(None) as anon:
        for path in (
            f"/v1/conversations/{turn['other_cid']}/live?token={token}",
            f"/v1/messages/{turn['other_mid']}/stream?token={token}",
        ):
            assert _first_event(anon, path) == ("404", None), path
        for method, path in (
            ("GET", f"/v1/conversations/{turn['cid']}?token={token}"),
            ("GET", f"/v1/conversations/{turn['cid']}/messages?token={token}"),
            ("POST", f"/v1/messages/{turn['mid']}/retry?token={token}"),
            ("POST", f"/v1/conversations/{turn['cid']}/stream-token?token={token}"),
        ):
            assert_problem(anon.request(method, path), 401)
        as_bearer = anon.get(
            f"/v1/conversations/{turn['cid']}", headers={"Authorization": f"Bearer {token}"}
        )
        assert_problem(as_bearer, 401)
        assert "stream token" in as_bearer.json()["detail"]


def test_expired_forged_and_bearer_tokens_in_the_query_are_401(
    cors_server: Server, turn: dict[str, str]
) -> None:
    """An expired stream token, one signed with another secret, or a bearer token: 401."""
    cid = uuid.UUID(turn["cid"])
    expired, _ = make_stream_token(JWT_SECRET, "alice", cid, -30)
    forged, _ = make_stream_token("not-the-secret-0123456789abcdef0123456789", "alice", cid, 60)
    with cors_server.http(None) as anon:
        for token in (expired, forged, make_token("alice"), "garbage"):
            assert _first_event(anon, f"/v1/conversations/{cid}/live?token={token}") == (
                "401",
                None,
            )
            assert _first_event(anon, f"/v1/messages/{turn['mid']}/stream?token={token}") == (
                "401",
                None,
            )


def test_stream_tokens_are_minted_only_for_the_owner(
    cors_server: Server, turn: dict[str, str]
) -> None:
    """Another user asking for a token of alice's conversation gets 404; no token is 401."""
    with cors_server.http("mallory") as h:
        assert_problem(h.post(f"/v1/conversations/{turn['cid']}/stream-token"), 404)
        assert_problem(h.post(f"/v1/conversations/{uuid.uuid4()}/stream-token"), 404)
    with cors_server.http(None) as anon:
        assert_problem(anon.post(f"/v1/conversations/{turn['cid']}/stream-token"), 401)


def test_a_stream_token_is_never_logged(cors_server: Server, turn: dict[str, str]) -> None:
    """The request log names the path of a ?token= request, never its query."""
    with cors_server.http("alice") as h:
        token = _stream_token(h, turn["cid"])
    start = cors_server.log_size()
    with cors_server.http(None) as anon:
        _first_event(anon, f"/v1/messages/{turn['mid']}/stream?token={token}")
        _first_event(anon, f"/v1/messages/{turn['other_mid']}/stream?token={token}")
    log = _wait_for_log(cors_server, start, lambda text: text.count('"request"') >= 2)
    assert f"/v1/messages/{turn['mid']}/stream" in log
    assert token not in log
    assert token.split(".")[2] not in log  # not even the signature


def _wait_for_log(server: Server, start: int, done: Callable[[str], bool]) -> str:
    from .support import wait_until

    return wait_until(lambda: (lambda t: t if done(t) else None)(server.log(start)))


def test_the_web_chat_is_served_at_the_root(server: Server) -> None:
    """GET / is the page (no auth needed to load it); its modules come from /web/."""
    with server.http(None) as h:
        page = h.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "/web/app.js" in page.text
        csp = page.headers["content-security-policy"]
        assert "script-src 'self';" in csp
        assert "unsafe" not in csp
        for name in ("app.js", "timeline.js", "reducer.js", "markdown.js", "style.css"):
            r = h.get(f"/web/{name}")
            assert r.status_code == 200, name
        reducer = h.get("/web/reducer.js")
        assert "javascript" in reducer.headers["content-type"]
        # The JS reducer's one source, served as is.
        assert reducer.content == (REPO / "reducer" / "js" / "reducer.js").read_bytes()
        assert h.get("/web/../../config.py").status_code == 404
        assert h.get("/web/vendor/../../../http/web.py").status_code == 404


def test_static_files_are_gzipped_and_revalidated(server: Server) -> None:
    """Page files go gzipped to a browser that accepts it, with an ETag (a reload: 304);
    /favicon.ico is the page's icon (no 404 on every load)."""
    with server.http(None) as h:
        r = h.get("/web/vendor/purify.es.mjs", headers={"Accept-Encoding": "gzip"})
        assert r.status_code == 200
        assert r.headers["content-encoding"] == "gzip"
        assert int(r.headers["content-length"]) < len(r.content) / 2
        again = h.get("/web/vendor/purify.es.mjs", headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304
        plain = h.get("/web/app.js", headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in plain.headers
        icon = h.get("/favicon.ico")
        assert (icon.status_code, icon.headers["content-type"]) == (200, "image/svg+xml")


def test_the_session_cookie_signs_in_with_csrf_defended(server: Server) -> None:
    """POST /v1/session trades a bearer token for an HttpOnly, SameSite=Strict cookie; the
    cookie is a credential only with X-Turnlog-CSRF: 1 and not from another site; DELETE
    clears it."""
    token = make_token("alice")
    with server.http(None) as h:
        bearer = {"Authorization": f"Bearer {token}"}
        assert h.post("/v1/session", headers=bearer).status_code == 401  # no CSRF header
        signed = h.post("/v1/session", headers={**bearer, "X-Turnlog-CSRF": "1"})
        assert signed.status_code == 201
        assert signed.json()["user"] == "alice"
        cookie = signed.headers["set-cookie"]
        for flag in ("turnlog_session=", "HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="):
            assert flag in cookie, cookie
        assert "Secure" not in cookie  # plain HTTP here; HTTPS (or X-Forwarded-Proto) adds it
    jar = {"turnlog_session": token}
    with httpx.Client(base_url=server.url, cookies=jar, timeout=10) as h:
        assert h.get("/v1/conversations").status_code == 401
        csrf = {"X-Turnlog-CSRF": "1"}
        assert h.get("/v1/conversations", headers=csrf).status_code == 200
        assert h.get("/v1/session", headers=csrf).json()["user"] == "alice"
        cross = {**csrf, "Sec-Fetch-Site": "same-site"}
        assert h.get("/v1/conversations", headers=cross).status_code == 401
        out = h.delete("/v1/session", headers=csrf)
        assert out.status_code == 204
        assert "Max-Age=0" in out.headers["set-cookie"]
    with httpx.Client(base_url=server.url, cookies={"turnlog_session": "forged"}, timeout=10) as h:
        assert h.get("/v1/conversations", headers={"X-Turnlog-CSRF": "1"}).status_code == 401
