"""The response cache through a real server (docs/operations.md)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from turnlog import replay

from .support import FAST, Server, assert_problem, make_token, parse_sse, wait_until

pytestmark = pytest.mark.slow


def _server(spawn: Callable[..., Server], tmp_path: Path, scope: str, ttl_s: float) -> Server:
    config = tmp_path / f"cache-{scope}.toml"
    config.write_text(f'[cache]\nmodels = ["demo:*"]\nttl_s = {ttl_s}\nscope = "{scope}"\n')
    return spawn(env={"TURNLOG_CONFIG": str(config), "TURNLOG_AUTO_TITLES": "0"}).start()


def _ask(srv: Server, user: str, text: str, **options: Any) -> dict[str, Any]:
    """A new conversation of ``user`` asking ``text``; its finished answer row."""
    with srv.http(user) as h:
        cid = h.post("/v1/conversations", json={"options": {**FAST, **options}}).json()["id"]
        r = h.post(f"/v1/conversations/{cid}/messages", json={"content": text})
        assert r.status_code == 201, r.text

        def done() -> list[dict[str, Any]] | None:
            state = h.get(f"/v1/conversations/{cid}").json()
            rows: list[dict[str, Any]] = state["messages"]
            idle = state["conversation"]["state"] == "idle"
            return rows if idle and rows[-1]["status"] != "generating" else None

        rows = wait_until(done, what="the answer")
        assert rows[-1]["status"] == "completed", rows[-1]
        return rows[-1]


def _hit(row: dict[str, Any]) -> bool:
    return bool((row["usage"] or {}).get("cache_hit"))


def _entries(srv: Server) -> int:
    with psycopg.connect(srv.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM response_cache").fetchone()
    assert row is not None
    return int(row[0])


def _metric(srv: Server, name: str) -> float:
    text = httpx.get(f"{srv.url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and 'model="default"' in line
    )


def test_identical_requests_hit_and_others_miss(
    spawn: Callable[..., Server], tmp_path: Path
) -> None:
    """The same question twice is a hit with the same blocks, streamed as events; a changed
    option, another user, cache: false and a tool turn miss; replay stays exact."""
    srv = _server(spawn, tmp_path, "user", 3600)
    first = _ask(srv, "cat", "What is a cache?")
    assert not _hit(first)
    assert _entries(srv) == 1

    # The same question again, followed live: the stored answer comes as ordinary events.
    with srv.http("cat") as h:
        cid = h.post("/v1/conversations", json={"options": FAST}).json()["id"]
        mid = h.post(f"/v1/conversations/{cid}/messages", json={"content": "What is a cache?"})
        mid = mid.json()["assistant_message"]["id"]
        headers = {"Authorization": f"Bearer {make_token('cat')}"}
        with httpx.stream(
            "GET", f"{srv.url}/v1/messages/{mid}/stream", headers=headers, timeout=30
        ) as stream:
            kinds = [e for e, _, _ in parse_sse(stream.iter_lines()) if e is not None]
        assert kinds[0] == "init"
        assert kinds[-1] == "done"
        rows = h.get(f"/v1/conversations/{cid}/messages").json()["items"]
    second, hit_cid = rows[-1], cid
    assert _hit(second)
    assert second["blocks"] == first["blocks"]
    assert second["status"] == "completed"
    # Stored as any answer is: the turn's events in the log carry its stream events.
    with psycopg.connect(srv.database_url) as conn:
        logged = conn.execute(
            "SELECT data FROM events WHERE data->>'message_id' = %s AND type = 'step_completed'",
            (mid,),
        ).fetchall()
    assert any(e["type"] == "text_delta" for (data,) in logged for e in data["events"])
    assert _metric(srv, "turnlog_cache_hits_total") == 1
    assert _metric(srv, "turnlog_cache_tokens_saved_total") == 40

    assert not _hit(_ask(srv, "cat", "What is a cache?", length=41)), "an option changed"
    assert not _hit(_ask(srv, "dog", "What is a cache?")), "another user (scope user)"
    assert not _hit(_ask(srv, "cat", "What is a cache?", cache=False)), "bypassed"
    entries = _entries(srv)
    assert not _hit(_ask(srv, "cat", "What is a cache?", cache=False))
    assert _entries(srv) == entries, "a bypassed answer is not stored"

    # A tool turn is never stored: the same tool turn again calls the model again.
    for _ in range(2):
        with srv.http("cat") as h:
            cid = h.post("/v1/conversations", json={"options": {**FAST, "tool": "clock"}}).json()
            cid = cid["id"]
            h.post(f"/v1/conversations/{cid}/messages", json={"content": "time please"})
            wait_until(
                lambda cid=cid: (
                    h.get(f"/v1/conversations/{cid}").json()["conversation"]["state"] == "idle"
                    and len(h.get(f"/v1/conversations/{cid}/messages").json()["items"]) == 4
                ),
                what="the tool turn",
            )
            rows = h.get(f"/v1/conversations/{cid}/messages").json()["items"]
        assert [r["role"] for r in rows] == ["user", "assistant", "tool", "assistant"]
        assert not any(_hit(r) for r in rows if r["role"] == "assistant")
    assert _entries(srv) == entries

    # A regeneration asks for another answer: never served from the cache.
    with srv.http("cat") as h:
        r = h.post(f"/v1/messages/{second['id']}/regenerate")
        assert r.status_code == 201, r.text
        again = r.json()["assistant_message"]["id"]

        def regenerated() -> dict[str, Any] | None:
            rows = h.get(f"/v1/conversations/{hit_cid}/messages?all=true").json()["items"]
            row: dict[str, Any] = next(x for x in rows if x["id"] == again)
            return row if row["status"] == "completed" else None

        assert not _hit(wait_until(regenerated, what="the regenerated answer"))

    with srv.http("cat") as h:
        r = h.post("/v1/conversations", json={"options": {"cache": "no"}})
        assert_problem(r, 400)
    report = replay.verify(srv.database_url)
    assert report.ok, report.drift


def test_shared_scope_expiry_and_a_concurrent_pair(
    spawn: Callable[..., Server], tmp_path: Path
) -> None:
    """Shared: another user's identical request hits; an expired entry misses (and is
    replaced); two identical requests at once are both answered with one entry."""
    srv = _server(spawn, tmp_path, "shared", 2)
    assert not _hit(_ask(srv, "ann", "Shared question"))
    assert _hit(_ask(srv, "ben", "Shared question"))

    # Autocommit: now() is each statement's own, not one transaction's start.
    with psycopg.connect(srv.database_url, autocommit=True) as conn:

        def expired() -> bool:
            row = conn.execute("SELECT bool_and(expires_at <= now()) FROM response_cache")
            found = row.fetchone()
            return bool(found and found[0])

        wait_until(expired, timeout=20, what="the entry to expire")
    assert not _hit(_ask(srv, "ann", "Shared question")), "expired"

    before = _entries(srv)
    answers: list[dict[str, Any]] = []
    threads = [
        threading.Thread(target=lambda u=u: answers.append(_ask(srv, u, "Both at once")))
        for u in ("cid", "dee")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == 2
    assert all(a["status"] == "completed" for a in answers)
    assert answers[0]["blocks"] == answers[1]["blocks"]
    with psycopg.connect(srv.database_url) as conn:
        live = conn.execute("SELECT count(*) FROM response_cache WHERE expires_at > now()")
        count = live.fetchone()
    assert count is not None
    assert count[0] >= 1
    assert _entries(srv) <= before + 1, "one entry for the identical pair"
