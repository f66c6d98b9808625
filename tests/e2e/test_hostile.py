"""Hostile input never gets a 500 (docs/operations.md): undecodable headers, deeply nested JSON,
crafted tokens, concurrent repeats of one send, and connections that never finish a
request head."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from .rawhttp import request
from .support import DEMO, FAST, JWT_SECRET, Server, assert_problem, make_token

pytestmark = pytest.mark.slow

HEAD_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def server(databases: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The module's server, with a short head timeout so that test does not wait long."""
    from .conftest import _make_server

    srv = _make_server(
        databases,
        tmp_path_factory.mktemp("hostile"),
        {"TURNLOG_HEADER_TIMEOUT_S": str(HEAD_TIMEOUT_S)},
        None,
    ).start()
    yield srv
    srv.terminate(timeout=15)


def _signed(claims: dict[str, Any], *, alg: str = "HS256") -> str:
    return jwt.encode(claims, JWT_SECRET, algorithm=alg)


def _unsigned(header: dict[str, Any], claims: bytes) -> str:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{b64(json.dumps(header).encode())}.{b64(claims)}.{b64(b'sig')}"


def _signed_raw(claims: bytes) -> str:
    """An HS256 token over exactly these claim bytes (JSON escapes PyJWT would not write)."""
    import hashlib
    import hmac

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = b64(b'{"alg":"HS256","typ":"JWT"}')
    signing = f"{header}.{b64(claims)}"
    sig = hmac.new(JWT_SECRET.encode(), signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64(sig)}"


LATER = int(time.time()) + 3600
HOSTILE_TOKENS: dict[str, str] = {
    "sub empty": _signed({"sub": "", "exp": LATER}),
    "sub number": _signed({"sub": 42, "exp": LATER}),
    "sub list": _signed({"sub": ["alice"], "exp": LATER}),
    "sub null": _signed({"sub": None, "exp": LATER}),
    "sub missing": _signed({"exp": LATER}),
    "sub NUL": _signed({"sub": "al\x00ice", "exp": LATER}),
    "sub lone surrogate": _signed_raw(b'{"sub":"al\\ud800ice","exp":%d}' % LATER),
    "sub control char": _signed({"sub": "al\x1bice", "exp": LATER}),
    "sub 10 kB": _signed({"sub": "a" * 10_000, "exp": LATER}),
    "exp past": _signed({"sub": "alice", "exp": 1}),
    "exp far future": _signed({"sub": "alice", "exp": 10**15}),
    "exp infinite": _signed_raw(b'{"sub":"alice","exp":1e400}'),
    "exp text": _signed({"sub": "alice", "exp": "tomorrow"}),
    "exp list": _signed({"sub": "alice", "exp": [LATER]}),
    "iat infinite": _signed_raw(b'{"sub":"alice","exp":%d,"iat":1e400}' % LATER),
    "alg none": _unsigned({"alg": "none", "typ": "JWT"}, b'{"sub":"alice"}'),
    "alg unknown": _unsigned({"alg": "XY512", "typ": "JWT"}, b'{"sub":"alice"}'),
    "alg HS512": _unsigned({"alg": "HS512", "typ": "JWT"}, b'{"sub":"alice"}'),
    "header not JSON": "bm90IGpzb24.eyJzdWIiOiJhIn0.c2ln",
    "not a JWT": "garbage",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_TOKENS))
def test_hostile_token_claims_are_401(server: Server, name: str) -> None:
    """A token with a hostile claim or header is 401 with a detail on every authenticated
    route kind (a read, a write, a stream), never a 500."""
    headers = {"Authorization": f"Bearer {HOSTILE_TOKENS[name]}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=10) as http:
        for response in (
            http.get("/v1/conversations"),
            http.post("/v1/conversations", json={}),
            http.get("/v1/messages/6f1d1d2e-4a5b-4c6d-8e9f-0a1b2c3d4e5f/stream"),
        ):
            assert_problem(response, 401)


def test_token_command_refuses_a_user_id_it_would_not_accept(tmp_path: Any) -> None:
    """`turnlog token --user` refuses ids no server accepts (undecodable bytes, a control
    character, too long), exit 2 with a message, and prints nothing on stdout."""
    env = {"TURNLOG_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for user in (b"\xff", b"a\x1bb", b"x" * 300):
        done = subprocess.run(
            [sys.executable, "-m", "turnlog.cli", "token", "--user", user],
            env=env,
            capture_output=True,
            check=False,
        )
        assert done.returncode == 2, done
        assert done.stdout == b""
        assert b"--user" in done.stderr


def test_undecodable_request_id_is_replaced_not_a_500(server: Server) -> None:
    """An X-Request-ID of bytes ff fe (not UTF-8) is answered normally on every kind of
    route; the answer carries a request id the server made up instead."""
    token = make_token("alice").encode()
    for method, target, auth in (
        (b"GET", b"/healthz", False),
        (b"GET", b"/metrics", False),
        (b"GET", b"/readyz", False),
        (b"GET", b"/v1/conversations", True),
    ):
        headers = [(b"X-Request-ID", b"\xff\xfe")]
        if auth:
            headers.append((b"Authorization", b"Bearer " + token))
        answer = request(server.port, method, target, headers)
        assert answer.status == 200, (target, answer)
        rid = answer.headers[b"x-request-id"]
        assert rid
        assert rid != b"\xff\xfe"
        assert rid.isascii()


def test_deeply_nested_json_is_400(server: Server) -> None:
    """JSON nested a thousand levels deep (in options, or as the whole body) is 400 with a
    detail, on creation, update and send; nothing is stored."""
    deep = "[" * 1000 + "]" * 1000
    with server.http() as http:
        before = http.get("/v1/conversations").json()["items"]
        r = http.post(
            "/v1/conversations",
            content=f'{{"options": {{"x": {deep}}}}}',
            headers={"Content-Type": "application/json"},
        )
        assert_problem(r, 400)
        assert "nested" in r.json()["detail"]
        assert_problem(http.post("/v1/conversations", content=deep), 400)
        conv = http.post("/v1/conversations", json={"model": DEMO, "options": FAST}).json()
        cid = conv["id"]
        assert_problem(
            http.patch(f"/v1/conversations/{cid}", content=f'{{"options": {{"x": {deep}}}}}'),
            400,
        )
        assert_problem(
            http.post(
                f"/v1/conversations/{cid}/messages",
                content=f'{{"content": "hi", "options": {{"x": {deep}}}}}',
            ),
            400,
        )
        assert http.get(f"/v1/conversations/{cid}/messages").json()["items"] == []
        after = http.get("/v1/conversations").json()["items"]
        assert len(after) == len(before) + 1


def test_concurrent_sends_with_one_client_message_id_are_idempotent(server: Server) -> None:
    """20 sends with one client_message_id at once: one 201, the other 19 are 200 with the
    very same rows; one user row, one generation."""
    with server.http() as http:
        cid = http.post("/v1/conversations", json={"model": DEMO, "options": FAST}).json()["id"]
    body = {"content": "once, please", "client_message_id": "c-20-at-once"}
    barrier = threading.Barrier(20)
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def send() -> None:
        with server.http() as http:
            barrier.wait()
            r = http.post(f"/v1/conversations/{cid}/messages", json=body)
        with lock:
            answers.append(r)

    threads = [threading.Thread(target=send) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200] * 19 + [201], [(r.status_code, r.text[:200]) for r in answers]
    ids = {(r.json()["user_message"]["id"], r.json()["assistant_message"]["id"]) for r in answers}
    assert len(ids) == 1
    with server.client() as c:
        c.follow(next(iter(ids))[1])
        rows = c.list_messages(cid)
    assert [(r["role"], r["status"]) for r in rows] == [
        ("user", "completed"),
        ("assistant", "completed"),
    ]


def test_half_sent_request_heads_are_cut_off(server: Server) -> None:
    """Connections that send nothing, or half a request head, are closed after the head
    timeout (a half head with a 408); the server keeps answering meanwhile."""
    silent: list[socket.socket] = []
    half: list[socket.socket] = []
    try:
        for i in range(50):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            if i % 2:
                s.sendall(b"GET /v1/conversations HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                half.append(s)
            else:
                silent.append(s)
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
        started = time.monotonic()
        for s in half:
            data = _read_until_closed(s)
            assert data.startswith(b"HTTP/1.1 408"), data[:100]
        for s in silent:
            assert _read_until_closed(s) == b""
        # Generous bound (shared CPUs): the point is "closed", not "closed quickly".
        assert time.monotonic() - started < HEAD_TIMEOUT_S + 20
    finally:
        for s in silent + half:
            s.close()


def _read_until_closed(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    return data
