"""Prompt commands through a real server: configured and per-user prompts,
`/v1/prompts` CRUD, and `/NAME rest` expanded for the model while the row keeps what was
typed and `command`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from .support import FAST, Server, assert_problem, wait_until

pytestmark = pytest.mark.slow

CONFIG = """
[prompts.shout]
description = "Say it loudly"
template = "LOUDLY for {{user}} on {{date}}: {{input}}"
"""


def _answer(h: httpx.Client, cid: str, text: str) -> tuple[dict[str, Any], str]:
    """Send ``text``; (its user row, the answer's text)."""
    r = h.post(f"/v1/conversations/{cid}/messages", json={"content": text})
    assert r.status_code == 201, r.text
    sent = r.json()
    mid = sent["assistant_message"]["id"]

    def done() -> dict[str, Any] | None:
        rows = h.get(f"/v1/conversations/{cid}/messages").json()["items"]
        row: dict[str, Any] = next(x for x in rows if x["id"] == mid)
        return row if row["status"] == "completed" else None

    row = wait_until(done, what="the answer")
    return sent["user_message"], "".join(b["text"] for b in row["blocks"] if b["type"] == "text")


def test_prompt_commands_expand_and_rows_keep_what_was_typed(
    spawn: Callable[..., Server], tmp_path: Path
) -> None:
    """Configured and own prompts expand ({{input}}, {{date}}, {{user}}); other `/` text is
    plain; the row keeps content and command; export shows them."""
    config = tmp_path / "turnlog.toml"
    config.write_text(CONFIG)
    srv = spawn(env={"TURNLOG_CONFIG": str(config), "TURNLOG_AUTO_TITLES": "0"}).start()
    with srv.http("pat") as h:
        r = h.post("/v1/prompts", json={"name": "fix-it", "template": "Fix this: {{input}}"})
        assert r.status_code == 201, r.text
        listed = h.get("/v1/prompts").json()["items"]
        assert [(p["name"], p["scope"]) for p in listed] == [
            ("shout", "global"),
            ("fix-it", "user"),
        ]

        cid = h.post("/v1/conversations", json={"options": FAST}).json()["id"]
        row, answer = _answer(h, cid, "/shout  hello there ")
        today = datetime.now(UTC).date().isoformat()
        assert row["content"] == "/shout  hello there "
        assert row["command"] == {"name": "shout", "input": "hello there"}
        # The demo model quotes the first words of what it was sent: the expansion.
        assert answer.startswith(f"Demo answer to “LOUDLY for pat on {today}:")
        row, answer = _answer(h, cid, "/fix-it")
        assert row["command"] == {"name": "fix-it", "input": ""}
        assert answer.startswith("Demo answer to “Fix this:")
        row, answer = _answer(h, cid, "/unknown stays text")
        assert row["command"] is None
        assert answer.startswith("Demo answer to “/unknown stays text")
        row, _ = _answer(h, cid, "/shouting is not shout")
        assert row["command"] is None
        exported = h.get(f"/v1/conversations/{cid}/export?format=json").json()
        assert exported["messages"][0]["command"] == {"name": "shout", "input": "hello there"}
        assert "/shout  hello there" in h.get(f"/v1/conversations/{cid}/export").text

        # A changed prompt never changes what an old turn said (the expansion was stored).
        h.put("/v1/prompts/fix-it", json={"template": "Changed: {{input}}"})
        _, answer = _answer(h, cid, "/fix-it again")
        assert answer.startswith("Demo answer to “Changed: again")


def test_prompt_crud_and_refusals(spawn: Callable[..., Server], tmp_path: Path) -> None:
    """CRUD of one's own prompts; names, sizes and configured prompts are guarded; another
    user never sees them."""
    config = tmp_path / "turnlog.toml"
    config.write_text(CONFIG)
    srv = spawn(env={"TURNLOG_CONFIG": str(config), "TURNLOG_MAX_MESSAGE_CHARS": "100"}).start()
    with srv.http("quinn") as h, srv.http("rory") as other:
        r = h.put("/v1/prompts/tl-dr", json={"description": "short", "template": "TL;DR {{input}}"})
        assert r.status_code == 201, r.text
        assert r.json() == {
            "name": "tl-dr",
            "description": "short",
            "template": "TL;DR {{input}}",
            "scope": "user",
        }
        r = h.put("/v1/prompts/tl-dr", json={"template": "Shorter {{input}}"})
        assert r.status_code == 200, r.text
        assert h.get("/v1/prompts/tl-dr").json()["template"] == "Shorter {{input}}"
        assert h.get("/v1/prompts/shout").json()["scope"] == "global"
        assert_problem(h.post("/v1/prompts", json={"name": "tl-dr", "template": "x"}), 409)
        assert_problem(other.get("/v1/prompts/tl-dr"), 404)
        assert [p["name"] for p in other.get("/v1/prompts").json()["items"]] == ["shout"]

        for bad, status in (
            ({"name": "Bad Name", "template": "x"}, 400),
            ({"name": "x" * 33, "template": "x"}, 400),
            ({"template": "x"}, 400),
            ({"name": "ok", "template": ""}, 400),
            ({"name": "ok", "template": "x" * 101}, 413),
            ({"name": "ok", "template": "a\x00b"}, 400),
            ({"name": "ok", "template": "x", "extra": 1}, 400),
            ({"name": "shout", "template": "mine now"}, 403),
        ):
            assert_problem(h.post("/v1/prompts", json=bad), status)
        assert_problem(h.put("/v1/prompts/shout", json={"template": "x"}), 403)
        assert_problem(h.delete("/v1/prompts/shout"), 403)
        assert_problem(h.put("/v1/prompts/a", json={"name": "b", "template": "x"}), 400)

        assert h.delete("/v1/prompts/tl-dr").status_code == 204
        assert_problem(h.delete("/v1/prompts/tl-dr"), 404)
        assert_problem(h.get("/v1/prompts/tl-dr"), 404)
