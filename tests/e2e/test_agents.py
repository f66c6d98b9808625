"""Agents through a real server: `[agents.NAME]` presets, GET /v1/agents with
per-user access, a conversation's `agent` as defaults under its own fields, and a changed
agent config applying to the next turn."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from .support import Server, assert_problem, wait_until

pytestmark = pytest.mark.slow

CONFIG = """
[agents.terse]
description = "Answers in {length} words"
model = "demo:default"
system_prompt = "Be terse."
options = {{ length = {length}, tokens_per_second = 400 }}

[agents.secret]
description = "Only for bob"
options = {{ length = 2 }}

[agents.broken]
description = "Names a tool nobody has"
tools = ["no_such_tool"]

[access.agents]
default = ["terse", "broken"]
users = {{ bob = ["*"] }}
"""


def _words(h: httpx.Client, cid: str, text: str) -> int:
    """Send ``text``; the number of words of its answer."""
    r = h.post(f"/v1/conversations/{cid}/messages", json={"content": text})
    assert r.status_code == 201, r.text
    mid = r.json()["assistant_message"]["id"]

    def done() -> dict[str, Any] | None:
        rows = h.get(f"/v1/conversations/{cid}/messages").json()["items"]
        row: dict[str, Any] = next(x for x in rows if x["id"] == mid)
        return row if row["status"] == "completed" else None

    row = wait_until(done, what="the answer")
    return len("".join(b["text"] for b in row["blocks"] if b["type"] == "text").split())


def test_agents_listed_applied_and_followed_after_a_change(
    spawn: Callable[..., Server], tmp_path: Path
) -> None:
    """The agent's options are the conversation's defaults (its own win), per-user access
    holds, and a new config applies to the next turn of an existing conversation."""
    config = tmp_path / "turnlog.toml"
    config.write_text(CONFIG.format(length=5))
    srv = spawn(env={"TURNLOG_CONFIG": str(config), "TURNLOG_AUTO_TITLES": "0"}).start()
    with srv.http("alice") as alice, srv.http("bob") as bob:
        listed = alice.get("/v1/agents").json()["items"]
        assert [a["name"] for a in listed] == ["broken", "terse"]
        assert listed[1] == {
            "name": "terse",
            "description": "Answers in 5 words",
            "model": "demo:default",
            "tools": None,
            "options": {"length": 5, "tokens_per_second": 400},
            "system_prompt": "Be terse.",
        }
        names = [a["name"] for a in bob.get("/v1/agents").json()["items"]]
        assert names == ["broken", "secret", "terse"]
        # The agent's tools are checked as a conversation's own would be.
        r = alice.post("/v1/conversations", json={"agent": "broken"})
        assert_problem(r, 400)
        assert "no_such_tool" in r.json()["detail"]
        ok = alice.post("/v1/conversations", json={"agent": "broken", "tools": ["clock"]})
        assert ok.status_code == 201, ok.text

        conv = alice.post("/v1/conversations", json={"agent": "terse"}).json()
        assert conv["agent"] == "terse"
        assert conv["model"] == "demo:default"
        assert conv["options"] == {}, "the agent's options stay the agent's"
        assert _words(alice, conv["id"], "hello") == 5
        own = alice.post(
            "/v1/conversations", json={"agent": "terse", "options": {"length": 3}}
        ).json()
        assert _words(alice, own["id"], "hello") == 3, "the conversation's own options win"

        assert_problem(alice.post("/v1/conversations", json={"agent": "secret"}), 403)
        r = alice.post("/v1/conversations", json={"agent": "nope"})
        assert_problem(r, 400)
        assert "unknown agent 'nope'" in r.json()["detail"]
        assert_problem(alice.patch(f"/v1/conversations/{conv['id']}", json={"agent": "x"}), 400)
        cid = conv["id"]

    # A changed agent config (the file, then a restart) applies to the next turn.
    srv.terminate()
    config.write_text(CONFIG.format(length=7))
    again = spawn(
        env={"TURNLOG_CONFIG": str(config), "TURNLOG_AUTO_TITLES": "0"},
        database_url=srv.database_url,
    ).start()
    with again.http("alice") as alice:
        assert _words(alice, cid, "hello again") == 7
        r = alice.patch(f"/v1/conversations/{cid}", json={"agent": None})
        assert r.json()["agent"] is None
        assert _words(alice, cid, "and without it") == 60  # the demo default length
        exported = alice.get(f"/v1/conversations/{cid}/export?format=json").json()
        assert exported["conversation"]["agent"] is None
