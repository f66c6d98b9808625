"""Auth, owner gate and bad input: 401/404/4xx with a readable detail, never a 500, and
nothing written (docs/protocol.md)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from .support import DEMO, FAST, JWT_SECRET, Server, assert_problem, make_token, parse_sse

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def owned(server: Server) -> Iterator[dict[str, Any]]:
    """alice's conversation with one finished turn."""
    with server.client("alice") as c:
        conv = c.create_conversation(title="alice's", model=DEMO, options=FAST)
        sent = c.send(conv["id"], "secret question")
        c.follow(sent["assistant_message"]["id"])
        yield {
            "cid": conv["id"],
            "user_mid": sent["user_message"]["id"],
            "mid": sent["assistant_message"]["id"],
        }


def _routes(ids: dict[str, Any]) -> list[tuple[str, str, Any]]:
    cid, mid, umid = ids["cid"], ids["mid"], ids["user_mid"]
    return [
        ("GET", f"/v1/conversations/{cid}", None),
        ("PATCH", f"/v1/conversations/{cid}", {"title": "mine now"}),
        ("POST", f"/v1/conversations/{cid}/messages", {"content": "hi"}),
        ("GET", f"/v1/conversations/{cid}/messages", None),
        ("PUT", f"/v1/conversations/{cid}/messages/{umid}", {"content": "edited"}),
        ("GET", f"/v1/conversations/{cid}/live", None),
        ("GET", f"/v1/conversations/{cid}/export?format=markdown", None),
        ("GET", f"/v1/conversations/{cid}/export?format=json", None),
        ("GET", f"/v1/messages/{mid}/stream", None),
        ("POST", f"/v1/messages/{mid}/cancel", None),
        ("PUT", f"/v1/messages/{mid}/feedback", {"rating": "up"}),
        ("POST", f"/v1/messages/{mid}/retry", None),
        ("POST", f"/v1/messages/{mid}/tool-results", {"tool_call_id": "x", "content": "y"}),
        ("DELETE", f"/v1/conversations/{cid}", None),
    ]


def _request(h: httpx.Client, method: str, path: str, body: Any) -> httpx.Response:
    # Read streams as streams: a wrongly answered SSE route must not hang the test.
    with h.stream(method, path, json=body) as r:
        if r.status_code == 200 and r.headers.get("content-type", "").startswith(
            "text/event-stream"
        ):
            return r
        r.read()
        return r


def _snapshot(server: Server, cid: str) -> Any:
    with server.client("alice") as c:
        state = c.get_conversation(cid)
    return state["conversation"]["version"], state["conversation"]["title"], state["messages"]


def test_another_users_token_gets_404_on_every_route(server: Server, owned: dict[str, Any]) -> None:
    """mallory's token -> 404 on every conversation and message route, streams included;
    alice's data is untouched."""
    before = _snapshot(server, owned["cid"])
    with server.http("mallory") as h:
        for method, path, body in _routes(owned):
            r = _request(h, method, path, body)
            assert r.status_code == 404, f"{method} {path}: {r.status_code}"
        listed = h.get("/v1/conversations").json()["items"]
        assert owned["cid"] not in [x["id"] for x in listed]
    assert _snapshot(server, owned["cid"]) == before


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer not-a-jwt",
        "Bearer " + jwt.encode({"sub": "alice", "exp": 4102444800}, "wrong-secret-" * 3),
        "Bearer " + jwt.encode({"sub": "alice", "exp": 1000}, JWT_SECRET),
        "Bearer " + jwt.encode({"exp": 4102444800}, JWT_SECRET),
        "Basic YWxpY2U6cGFzcw==",
    ],
    ids=["missing", "garbage", "wrong-secret", "expired", "no-sub", "basic"],
)
def test_missing_or_bad_token_gets_401(
    server: Server, owned: dict[str, Any], authorization: str | None
) -> None:
    """No token or an invalid one -> 401 on every route, conversation list and create included."""
    before = _snapshot(server, owned["cid"])
    headers = {} if authorization is None else {"Authorization": authorization}
    routes = [
        *_routes(owned),
        ("GET", "/v1/conversations", None),
        ("POST", "/v1/conversations", {"title": "x"}),
    ]
    with httpx.Client(base_url=server.url, headers=headers, timeout=10) as h:
        for method, path, body in routes:
            r = _request(h, method, path, body)
            assert r.status_code == 401, f"{method} {path}: {r.status_code} {r.text[:200]}"
    assert _snapshot(server, owned["cid"]) == before


def test_a_token_is_refused_once_it_expires_even_after_it_was_accepted(server: Server) -> None:
    """A token accepted while valid (the server remembers verified tokens) gets 401 from
    the second its exp passes, as a token it never saw would."""
    exp = int(time.time()) + 5
    token = jwt.encode({"sub": "alice", "exp": exp}, JWT_SECRET, algorithm="HS256")
    with httpx.Client(base_url=server.url, timeout=10) as h:
        headers = {"Authorization": f"Bearer {token}"}
        assert h.get("/v1/conversations", headers=headers).status_code == 200
        while time.time() < exp:  # wait for the clock, not a fixed sleep
            time.sleep(0.05)
        r = h.get("/v1/conversations", headers=headers)
        assert r.status_code == 401, r.text
        assert "expired" in r.json()["detail"]


def _stream_status(h: httpx.Client, path: str) -> tuple[int, str | None]:
    """The status of a message stream request, and its first event's name if it opened."""
    with h.stream("GET", path) as r:
        if r.status_code != 200:
            r.read()
            assert_problem(r, r.status_code)
            return r.status_code, None
        for event, _, _ in parse_sse(r.iter_lines()):
            if event is not None:
                return 200, event
    return 200, None


def test_a_generating_rows_stream_opens_only_for_its_owner(server: Server) -> None:
    """While a row generates here, its stream opens for its owner and a stream token of
    its conversation only: another user or another conversation's token gets 404, and so
    does everyone once the conversation is deleted."""
    slow = {"tokens_per_second": 20, "length": 2000}
    with server.client("alice") as c:
        conv = c.create_conversation(model=DEMO, options=slow)
        other = c.create_conversation(model=DEMO, options=FAST)
        mid = c.send(conv["id"], "a long answer")["assistant_message"]["id"]
    path = f"/v1/messages/{mid}/stream"
    with server.http("alice") as alice, server.http("mallory") as mallory:
        r = alice.post(f"/v1/conversations/{other['id']}/stream-token")
        assert r.status_code == 201, r.text
        other_token = r.json()["token"]
        assert _stream_status(alice, path) == (200, "init")
        assert _stream_status(mallory, path) == (404, None)
        with httpx.Client(base_url=server.url, timeout=10) as anon:
            assert _stream_status(anon, f"{path}?token={other_token}") == (404, None)
        assert alice.delete(f"/v1/conversations/{conv['id']}").status_code == 204
        assert _stream_status(alice, path) == (404, None)


def test_health_endpoints_need_no_token(server: Server) -> None:
    """/healthz, /readyz and /metrics answer 200 without a token."""
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(server.url + path, timeout=5).status_code == 200, path


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def conv(server: Server) -> dict[str, Any]:
    """A fresh idle conversation of alice with one finished turn."""
    with server.client("alice") as c:
        conv = c.create_conversation(model=DEMO, options=FAST)
        sent = c.send(conv["id"], "first")
        c.follow(sent["assistant_message"]["id"])
        return {
            "cid": conv["id"],
            "user_mid": sent["user_message"]["id"],
            "mid": sent["assistant_message"]["id"],
        }


def _state(server: Server, cid: str) -> Any:
    with server.client("alice") as c:
        state = c.get_conversation(cid)
        listed = c.list_conversations(limit=100)["items"]
    return state, len(listed)


BAD_SENDS: list[tuple[str, bytes, tuple[int, ...]]] = [
    ("malformed", b'{"content": "hi"', (400,)),
    ("not-an-object", b'["hi"]', (400,)),
    ("content-int", b'{"content": 5}', (400,)),
    ("content-null", b'{"content": null}', (400,)),
    ("missing-content", b"{}", (400,)),
    ("unknown-field", b'{"content": "hi", "bogus": 1}', (400,)),
    ("options-string", b'{"content": "hi", "options": "fast"}', (400,)),
    ("client-id-int", b'{"content": "hi", "client_message_id": 5}', (400,)),
    ("empty-content", b'{"content": ""}', ()),
    ("bad-demo-option", b'{"content": "hi", "options": {"tokens_per_second": "x"}}', ()),
    ("nul-in-content", b'{"content": "a\\u0000b"}', (400,)),
    ("nul-in-client-id", b'{"content": "hi", "client_message_id": "c\\u0000"}', (400,)),
    ("nul-in-options", b'{"content": "hi", "options": {"x\\u0000": 1}}', (400,)),
]


@pytest.mark.parametrize(
    ("body", "statuses"), [b[1:] for b in BAD_SENDS], ids=[b[0] for b in BAD_SENDS]
)
def test_bad_send_is_4xx_with_detail_and_writes_nothing(
    server: Server, conv: dict[str, Any], body: bytes, statuses: tuple[int, ...]
) -> None:
    """A malformed, mistyped, over-strict or empty send -> 4xx + detail; nothing written."""
    before = _state(server, conv["cid"])
    with server.http("alice") as h:
        r = h.post(
            f"/v1/conversations/{conv['cid']}/messages",
            content=body,
            headers={"Content-Type": "application/json"},
        )
    assert_problem(r, *statuses)
    assert _state(server, conv["cid"]) == before


def test_one_megabyte_content_is_413_and_writes_nothing(
    server: Server, conv: dict[str, Any]
) -> None:
    """Content over TURNLOG_MAX_MESSAGE_CHARS (1 MB here) -> 413 + detail; nothing written."""
    before = _state(server, conv["cid"])
    with server.http("alice") as h:
        r = h.post(f"/v1/conversations/{conv['cid']}/messages", json={"content": "x" * 1_000_000})
        assert_problem(r, 413)
        r = h.put(
            f"/v1/conversations/{conv['cid']}/messages/{conv['user_mid']}",
            json={"content": "y" * 1_000_000},
        )
        assert_problem(r, 413)
    assert _state(server, conv["cid"]) == before


BAD_CONVERSATIONS: list[tuple[str, bytes]] = [
    ("malformed", b'{"title": '),
    ("title-int", b'{"title": 5}'),
    ("options-list", b'{"options": [1, 2]}'),
    ("unknown-field", b'{"title": "x", "owner": "mallory"}'),
    ("system-prompt-int", b'{"system_prompt": 1}'),
    ("nul-in-title", b'{"title": "t\\u0000"}'),
]


@pytest.mark.parametrize(
    "body", [b[1] for b in BAD_CONVERSATIONS], ids=[b[0] for b in BAD_CONVERSATIONS]
)
def test_bad_conversation_create_and_patch_are_400_and_write_nothing(
    server: Server, conv: dict[str, Any], body: bytes
) -> None:
    """A bad conversation body on create or patch -> 400 + detail; nothing created or changed."""
    before = _state(server, conv["cid"])
    with server.http("alice") as h:
        headers = {"Content-Type": "application/json"}
        assert_problem(h.post("/v1/conversations", content=body, headers=headers), 400)
        assert_problem(
            h.patch(f"/v1/conversations/{conv['cid']}", content=body, headers=headers), 400
        )
    assert _state(server, conv["cid"]) == before


def test_bad_edit_and_tool_result_bodies_are_4xx_and_write_nothing(
    server: Server, conv: dict[str, Any]
) -> None:
    """Bad edit bodies and a tool result for a call that does not exist -> 4xx + detail."""
    before = _state(server, conv["cid"])
    edit = f"/v1/conversations/{conv['cid']}/messages/{conv['user_mid']}"
    results = f"/v1/messages/{conv['mid']}/tool-results"
    headers = {"Content-Type": "application/json"}
    with server.http("alice") as h:
        assert_problem(h.put(edit, content=b'{"content": ', headers=headers), 400)
        assert_problem(h.put(edit, json={"content": 7}), 400)
        assert_problem(h.put(edit, json={"content": "x", "extra": True}), 400)
        assert_problem(h.put(edit, json={"content": ""}))
        assert_problem(h.post(results, content=b"{", headers=headers), 400)
        assert_problem(h.post(results, json={"tool_call_id": 1, "content": "x"}), 400)
        assert_problem(h.post(results, json={"tool_call_id": "call_x", "content": "x"}))
        assert_problem(
            h.post(results, json={"tool_call_id": "call_x", "content": "x", "extra": 1}), 400
        )
    assert _state(server, conv["cid"]) == before


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "123", str(uuid.uuid4())])
def test_non_uuid_and_unknown_ids_are_404(
    server: Server, conv: dict[str, Any], bad_id: str
) -> None:
    """Non-UUID and unknown conversation/message ids -> 404 + detail on every route."""
    before = _state(server, conv["cid"])
    routes = _routes({"cid": bad_id, "mid": bad_id, "user_mid": bad_id})
    routes += _routes({"cid": conv["cid"], "mid": bad_id, "user_mid": bad_id})[4:5]
    with server.http("alice") as h:
        for method, path, body in routes:
            r = _request(h, method, path, body)
            assert r.status_code == 404, f"{method} {path}: {r.status_code} {r.text[:200]}"
            assert_problem(r, 404)
    assert _state(server, conv["cid"]) == before


def test_bad_query_parameters_are_4xx_not_500(server: Server, conv: dict[str, Any]) -> None:
    """Bad limit/cursor/format query parameters -> 4xx + detail, never a 500."""
    with server.http("alice") as h:
        for params in ({"limit": "many"}, {"limit": "-1"}, {"cursor": "%%%garbage"}):
            assert_problem(h.get("/v1/conversations", params=params))
        r = h.get(f"/v1/conversations/{conv['cid']}/export", params={"format": "pdf"})
        assert_problem(r)


def test_fresh_user_sees_no_conversations(server: Server) -> None:
    """A syntactically valid token for a fresh user sees an empty conversation list."""
    with httpx.Client(
        base_url=server.url,
        headers={"Authorization": f"Bearer {make_token(f'new-{uuid.uuid4().hex}')}"},
        timeout=10,
    ) as h:
        r = h.get("/v1/conversations")
        assert r.status_code == 200
        assert r.json() == {"items": [], "next": None}


def test_a_token_with_the_wrong_signature_says_how_to_get_a_valid_one(server: Server) -> None:
    """401 names `turnlog token` and the secret to share; the server said its secret."""
    bad = make_token("alice", secret="another-secret-0123456789abcdef0123456789")
    with server.http(None) as http:
        r = http.get("/v1/conversations", headers={"Authorization": f"Bearer {bad}"})
    assert r.status_code == 401
    detail = r.json()["detail"]
    assert "turnlog token" in detail
    assert "TURNLOG_JWT_SECRET" in detail
    assert "tokens are signed with the secret in TURNLOG_JWT_SECRET" in server.log()
