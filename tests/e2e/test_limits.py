"""Per-user limits (429 + Retry-After) across two server processes on one database, and the
body size limit (413 before the body is read whole) (§2, §6)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from turnlog.client import ApiError

from .support import DEMO, FAST, Server, make_token, wait_until

pytestmark = pytest.mark.slow

SLOW = {"tokens_per_second": 5, "length": 500}
LIMITS = {"TURNLOG_MAX_CONCURRENT_GENERATIONS": "1", "TURNLOG_MAX_SENDS_PER_MINUTE": "3"}


@pytest.fixture
def pair(spawn: Callable[..., Server]) -> tuple[Server, Server]:
    """Two server processes sharing one database, both with the limits above."""
    a = spawn(env=LIMITS).start()
    b = spawn(env=LIMITS, database_url=a.database_url).start()
    return a, b


def _post(server: Server, user: str, path: str, body: dict[str, Any]) -> httpx.Response:
    with server.http(user) as http:
        return http.post(path, json=body)


def test_limits_hold_across_two_processes(pair: tuple[Server, Server]) -> None:
    """One generation at a time and three sends a minute per user, whichever process
    answers: the next is 429 with a readable detail and Retry-After."""
    a, b = pair
    with a.client("bob") as ca, b.client("bob") as cb:
        slow = ca.create_conversation(model=DEMO, options=SLOW)["id"]
        fast = cb.create_conversation(model=DEMO, options=FAST)["id"]
        running = ca.send(slow, "one")["assistant_message"]["id"]  # send 1

        refused = _post(b, "bob", f"/v1/conversations/{fast}/messages", {"content": "two"})
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert "generations" in refused.json()["detail"]
        # Someone else is not limited by bob's generation.
        with b.client("carol") as other:
            theirs = other.create_conversation(model=DEMO, options=FAST)["id"]
            other.follow(other.send(theirs, "hi")["assistant_message"]["id"])

        cb.cancel(running)
        cb.follow(cb.send(fast, "two")["assistant_message"]["id"])  # send 2
        ca.follow(ca.send(fast, "three")["assistant_message"]["id"])  # send 3
        refused = _post(b, "bob", f"/v1/conversations/{fast}/messages", {"content": "four"})
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert "last minute" in refused.json()["detail"]
        # The refused sends stored nothing.
        assert [r["content"] for r in cb.list_messages(fast) if r["role"] == "user"] == [
            "two",
            "three",
        ]


def test_concurrent_sends_from_two_processes_admit_exactly_the_limit(
    pair: tuple[Server, Server],
) -> None:
    """Six sends at once to six conversations, through both processes: exactly one starts."""
    a, b = pair
    servers = [a, b] * 3
    with a.client("dave") as c:
        convs = [c.create_conversation(model=DEMO, options=SLOW)["id"] for _ in servers]
    barrier = threading.Barrier(len(servers))
    statuses: list[int] = []

    def send(server: Server, cid: str) -> None:
        with server.http("dave") as http:
            barrier.wait(10)
            r = http.post(f"/v1/conversations/{cid}/messages", json={"content": "race"})
            statuses.append(r.status_code)

    threads = [threading.Thread(target=send, args=sc) for sc in zip(servers, convs, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(statuses) == [201] + [429] * 5, statuses


def test_a_body_over_the_limit_is_413_before_it_is_read(spawn: Callable[..., Server]) -> None:
    """A body past TURNLOG_MAX_BODY_BYTES is 413 with a detail; a Content-Length past it is
    answered before a byte of the body is sent."""
    srv = spawn(env={"TURNLOG_MAX_BODY_BYTES": "4096"}).start()
    with srv.client("erin") as c:
        cid = c.create_conversation(model=DEMO, options=FAST)["id"]
        with pytest.raises(ApiError) as e:
            c.send(cid, "x" * 5000)
        assert e.value.status == 413
        assert e.value.detail
        c.follow(c.send(cid, "x" * 1000)["assistant_message"]["id"])  # under the limit: fine

    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(
            (
                f"POST /v1/conversations/{cid}/messages HTTP/1.1\r\n"
                f"Host: 127.0.0.1\r\nAuthorization: Bearer {make_token('erin')}\r\n"
                "Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
            ).encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(4096)
            assert chunk, f"connection closed without an answer: {answer!r}"
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    wait_until(lambda: srv.proc is not None and srv.proc.poll() is None, what="server alive")
