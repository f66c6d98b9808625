"""Automatic titles through a real server: written after the first answer, shown
by the feed, never over a user's title, off with TURNLOG_AUTO_TITLES=0, failures logged."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from .support import FAST, Server, make_token, parse_sse, wait_until

pytestmark = pytest.mark.slow


def _send(h: httpx.Client, cid: str, text: str) -> None:
    r = h.post(f"/v1/conversations/{cid}/messages", json={"content": text})
    assert r.status_code == 201, r.text


def _title(h: httpx.Client, cid: str) -> str | None:
    title: str | None = h.get(f"/v1/conversations/{cid}").json()["conversation"]["title"]
    return title


ON = {"TURNLOG_AUTO_TITLES": "1"}  # tests/e2e/support.py turns them off for other tests


def test_first_answer_titles_the_conversation_and_the_feed_shows_it(
    spawn: Callable[..., Server],
) -> None:
    """The demo model titles from the first words; the feed sends the change."""
    server = spawn(env=ON).start()
    with server.http("title-a") as h:
        cid = h.post("/v1/conversations", json={"options": FAST}).json()["id"]
        headers = {"Authorization": f"Bearer {make_token('title-a')}"}
        with httpx.stream(
            "GET", f"{server.url}/v1/conversations/{cid}/live", headers=headers, timeout=30
        ) as feed:
            _send(h, cid, "How do lighthouses work at night, exactly?")
            titles = []
            for event, _, data in parse_sse(feed.iter_lines()):
                if event == "conversation" and data:
                    titles.append(json.loads(data)["conversation"]["title"])
                    if titles[-1] is not None:
                        break
        assert titles[-1] == "How do lighthouses work at night,"
        assert _title(h, cid) == "How do lighthouses work at night,"
        # Only after the first answer: a later one keeps it, even once a user cleared it.
        h.patch(f"/v1/conversations/{cid}", json={"title": None})
        _send(h, cid, "second question here")
        wait_until(lambda: len(h.get(f"/v1/conversations/{cid}/messages").json()["items"]) == 4)
        wait_until(
            lambda: h.get(f"/v1/conversations/{cid}").json()["conversation"]["state"] == "idle"
        )
        assert _title(h, cid) is None


def test_a_users_title_is_never_replaced(spawn: Callable[..., Server]) -> None:
    """A title given at creation stays after the first answer."""
    server = spawn(env=ON).start()
    with server.http("title-b") as h:
        cid = h.post("/v1/conversations", json={"title": "Mine", "options": FAST}).json()["id"]
        _send(h, cid, "please do not rename this")
        wait_until(
            lambda: h.get(f"/v1/conversations/{cid}").json()["conversation"]["state"] == "idle"
        )
        other = h.post("/v1/conversations", json={"options": FAST}).json()["id"]
        _send(h, other, "a marker conversation")
        wait_until(lambda: _title(h, other), what="the marker's title")
        assert _title(h, cid) == "Mine"


def test_titles_can_be_turned_off(spawn: Callable[..., Server]) -> None:
    """TURNLOG_AUTO_TITLES=0: answers come, titles do not."""
    srv = spawn(env={"TURNLOG_AUTO_TITLES": "0"}).start()
    with srv.http("title-c") as h:
        cid = h.post("/v1/conversations", json={"options": FAST}).json()["id"]
        _send(h, cid, "no title please")
        wait_until(
            lambda: h.get(f"/v1/conversations/{cid}").json()["conversation"]["state"] == "idle"
        )
        rows: list[dict[str, Any]] = h.get(f"/v1/conversations/{cid}/messages").json()["items"]
        assert rows[-1]["status"] == "completed"
        assert _title(h, cid) is None
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert 'turnlog_titles_total{outcome="written"}' not in metrics


def test_a_failing_titling_model_leaves_it_untitled_and_logs(
    spawn: Callable[..., Server], tmp_path: Path
) -> None:
    """A titling model that cannot be reached: the answer is fine, no title, a log line."""
    config = tmp_path / "turnlog.toml"
    config.write_text(
        '[providers.broken]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
        'api_key_env = "BROKEN_KEY"\n'
    )
    srv = spawn(
        env={
            **ON,
            "TURNLOG_CONFIG": str(config),
            "TURNLOG_TITLE_MODEL": "broken:any",
            "TURNLOG_PROVIDER_RETRIES": "0",
            "BROKEN_KEY": "k",
        }
    ).start()
    with srv.http("title-d") as h:
        cid = h.post("/v1/conversations", json={"options": FAST}).json()["id"]
        _send(h, cid, "title this if you can")
        wait_until(lambda: "title failed" in srv.log(), what="the failure in the log")
        rows = h.get(f"/v1/conversations/{cid}/messages").json()["items"]
        assert rows[-1]["status"] == "completed"
        assert _title(h, cid) is None
