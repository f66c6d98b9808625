"""Feedback on answers: `PUT /v1/messages/{mid}/feedback`."""

from __future__ import annotations

import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .support import FAST, Server, assert_problem, wait_until

pytestmark = pytest.mark.slow


def _feedback_count(server: Server, rating: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "turnlog_feedback_total"
        and s.labels == {"provider": "demo", "model": "default", "rating": rating}
    )


def test_feedback_is_stored_cleared_exported_and_counted(server: Server) -> None:
    """Up with a comment, then down, then cleared: each shows on the row, in the export
    and in the metrics."""
    with server.http("fb-a") as h:
        cid = h.post("/v1/conversations", json={"options": FAST}).json()["id"]
        sent = h.post(f"/v1/conversations/{cid}/messages", json={"content": "rate me"}).json()
        mid = sent["assistant_message"]["id"]
        wait_until(
            lambda: h.get(f"/v1/conversations/{cid}").json()["conversation"]["state"] == "idle",
            what="the answer",
        )
        ups = _feedback_count(server, "up")
        r = h.put(f"/v1/messages/{mid}/feedback", json={"rating": "up", "comment": "spot on"})
        assert r.status_code == 200, r.text
        assert r.json()["feedback"]["rating"] == "up"
        assert r.json()["feedback"]["comment"] == "spot on"
        assert _feedback_count(server, "up") == ups + 1
        md = h.get(f"/v1/conversations/{cid}/export").text
        assert "rated good" in md
        assert "> spot on" in md

        r = h.put(f"/v1/messages/{mid}/feedback", json={"rating": "down"})
        assert r.json()["feedback"] == {**r.json()["feedback"], "rating": "down", "comment": None}
        exported = h.get(f"/v1/conversations/{cid}/export?format=json").json()
        assert exported["messages"][1]["feedback"]["rating"] == "down"

        r = h.put(f"/v1/messages/{mid}/feedback", json={"rating": None})
        assert r.status_code == 200, r.text
        assert r.json()["feedback"] is None
        rows = h.get(f"/v1/conversations/{cid}/messages").json()["items"]
        assert rows[1]["feedback"] is None
        assert rows[0]["feedback"] is None


def test_feedback_refusals(server: Server) -> None:
    """User rows, another user's answer, unknown ids and bad bodies are 4xx with a detail."""
    with server.http("fb-b") as h, server.http("fb-c") as other:
        cid = h.post("/v1/conversations", json={"options": FAST}).json()["id"]
        sent = h.post(f"/v1/conversations/{cid}/messages", json={"content": "hello"}).json()
        user_mid = sent["user_message"]["id"]
        mid = sent["assistant_message"]["id"]
        r = h.put(f"/v1/messages/{user_mid}/feedback", json={"rating": "up"})
        assert_problem(r, 400)
        assert "only assistant messages" in r.json()["detail"]
        assert_problem(other.put(f"/v1/messages/{mid}/feedback", json={"rating": "up"}), 404)
        r = h.put(f"/v1/messages/{uuid.uuid4()}/feedback", json={"rating": "up"})
        assert_problem(r, 404)
        for bad in (
            {"rating": "meh"},
            {},
            {"rating": "up", "extra": 1},
            {"rating": None, "comment": "why"},
            {"rating": "up", "comment": "x" * 2001},
            {"rating": "up", "comment": "a\x00b"},
        ):
            assert_problem(h.put(f"/v1/messages/{mid}/feedback", json=bad), 400)
        assert h.get(f"/v1/conversations/{cid}/messages").json()["items"][1]["feedback"] is None
