"""Tool calls at most once where it matters, across a real SIGKILL.

One step calls four server tools (a Python and an MCP tool with side effects, a Python and
an MCP read-only tool); each counts its runs in a file and takes long, and the server is
killed while all four run. After the restart the row is continued without asking the model
again: the side effects are not run again (the model reads that they may or may not have
happened), the read-only calls run again, and the turn completes.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.providers import openai_wire as ow
from tests.providers.fakeserver import FakeServer

from .conftest import Databases, _make_server
from .support import Server, find, wait_until

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
INTERRUPTED = (
    "error: interrupted while running; it may or may not have taken effect; it was not run again"
)
CALLS = [
    ("c_refund", "refund", {"order": "A1"}),
    ("c_mail", "m__send_mail", {"to": "ann"}),
    ("c_status", "order_status", {"order": "A1"}),
    ("c_inbox", "m__read_inbox", {"box": "support"}),
]


def runs(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


@pytest.fixture
def setup(databases: Databases, tmp_path: Path) -> Iterator[tuple[Server, FakeServer, Path]]:
    runs_file = tmp_path / "runs.txt"
    config = tmp_path / "tools.toml"
    config.write_text(
        f"""
[mcp.m]
transport = "stdio"
command = "{sys.executable}"
args = ["-m", "tests.tools.mcp_server", "stdio"]
cwd = "{ROOT}"
env = {{ RUNS_FILE = "{runs_file}" }}

[python_tools]
modules = ["tests.e2e.crash_tools"]

[tools]
default = ["refund", "order_status", "m__send_mail", "m__read_inbox"]
parallel_tool_calls = 4
timeout_s = 300
""",
        encoding="utf-8",
    )
    with FakeServer() as fake:
        env = {
            "OPENAI_BASE_URL": fake.url + "/v1",
            "OPENAI_API_KEY": "sk-test",
            "TURNLOG_CONFIG": str(config),
            "PYTHONPATH": str(ROOT),
            "RUNS_FILE": str(runs_file),
        }
        srv = _make_server(databases, tmp_path, env, None)
        try:
            yield srv, fake, runs_file
        finally:
            srv.kill()


def test_a_kill_while_tools_run_never_repeats_a_side_effect(
    setup: tuple[Server, FakeServer, Path],
) -> None:
    """SIGKILL while four calls run; restart: side effects ran once and read ``interrupted``;
    read-only calls ran twice (same key) and answered; the model is asked once more, for
    the step after the tools; the turn completes."""
    srv, fake, runs_file = setup
    fake.queue(
        ow.stream(
            ow.chunk(
                {
                    "tool_calls": [
                        ow.call(i, cid, name, json.dumps(args))
                        for i, (cid, name, args) in enumerate(CALLS)
                    ]
                }
            ),
            ow.chunk({}, "tool_calls"),
        ),
        ow.stream(ow.chunk({"content": "Done what could be done."}), ow.chunk({}, "stop")),
    )
    srv.start(timeout=90)
    with srv.http("alice") as h:
        cid = h.post("/v1/conversations", json={"model": "openai:m"}).json()["id"]
        r = h.post(f"/v1/conversations/{cid}/messages", json={"content": "sort my order out"})
        assert r.status_code == 201, r.text
        mid = r.json()["assistant_message"]["id"]
    wait_until(lambda: len(runs(runs_file)) == 4, timeout=60, what="all four calls running")
    srv.kill()
    srv.start(same_port=True, timeout=90)

    def ended() -> list[dict[str, Any]] | None:
        with srv.http("alice") as h:
            rows: list[dict[str, Any]] = h.get(f"/v1/conversations/{cid}/messages").json()["items"]
        return (
            rows
            if rows[-1]["role"] == "assistant"
            and rows[-1]["status"] == "completed"
            and len(rows) > 2
            else None
        )

    rows = wait_until(ended, timeout=90, what="the turn to complete after the restart")
    assert find(rows, mid)["status"] == "completed"
    results = {m["tool_name"]: m["content"] for m in rows if m["role"] == "tool"}
    assert results == {
        "refund": INTERRUPTED,
        "m__send_mail": INTERRUPTED,
        "order_status": "A1: shipped",
        "m__read_inbox": "support: 3 unread",
    }
    counted = runs(runs_file)
    assert counted.count("refund A1") == 1, counted
    assert counted.count("send_mail ann") == 1, counted
    assert counted.count("order_status A1") == 2, counted
    assert counted.count("read_inbox support") == 2, counted
    # The model was asked twice in all: the first step, then the step after the tools.
    assert len(fake.requests) == 2
    assert rows[-1]["blocks"][0]["text"] == "Done what could be done."
    assert "not running a side-effect tool call again after a crash" in srv.log()


def test_an_approved_side_effect_cut_by_a_kill_is_not_run_again_when_approved_again(
    databases: Databases, tmp_path: Path
) -> None:
    """SIGKILL while an approved call runs: after the restart the call waits again (its
    result was never stored); approving it again does not run it a second time, the model
    reads that it may or may not have happened, and the turn completes."""
    runs_file = tmp_path / "runs.txt"
    config = tmp_path / "tools.toml"
    config.write_text(
        '[python_tools]\nmodules = ["tests.e2e.crash_tools"]\n\n'
        '[tools]\ndefault = ["wire_money"]\ntimeout_s = 300\n',
        encoding="utf-8",
    )
    env = {"TURNLOG_CONFIG": str(config), "PYTHONPATH": str(ROOT), "RUNS_FILE": str(runs_file)}
    srv = _make_server(databases, tmp_path, env, None)
    try:
        srv.start(timeout=90)
        with srv.http("alice") as h:
            cid = h.post("/v1/conversations", json={}).json()["id"]
            options = {"tool": "wire_money", "tool_arguments": {"to": "bob"}, "length": 8}
            r = h.post(
                f"/v1/conversations/{cid}/messages",
                json={"content": "pay bob", "options": options},
            )
            assert r.status_code == 201, r.text
            mid = r.json()["assistant_message"]["id"]

            def waiting() -> str | None:
                conv = h.get(f"/v1/conversations/{cid}").json()
                if conv["conversation"]["state"] != "awaiting_input":
                    return None
                blocks = find(conv["messages"], mid)["blocks"]
                return str(blocks[-1]["id"])

            call = wait_until(waiting, timeout=60, what="the call to wait for approval")
        approve = {"tool_call_id": call, "approved": True}

        def approve_in_background() -> None:
            with contextlib.suppress(Exception), srv.http("alice", timeout=300) as h:
                h.post(f"/v1/messages/{mid}/tool-approvals", json=approve)

        thread = threading.Thread(target=approve_in_background, daemon=True)
        thread.start()
        wait_until(lambda: len(runs(runs_file)) == 1, timeout=60, what="the approved call running")
        srv.kill()
        srv.start(same_port=True, timeout=90)
        with srv.http("alice") as h:
            assert waiting() == call, "the call waits again: its result was never stored"
            r = h.post(f"/v1/messages/{mid}/tool-approvals", json=approve)
            assert r.status_code == 201, r.text

            def ended() -> list[dict[str, Any]] | None:
                rows: list[dict[str, Any]] = h.get(f"/v1/conversations/{cid}/messages").json()[
                    "items"
                ]
                return rows if rows[-1]["status"] == "completed" and len(rows) == 4 else None

            rows = wait_until(ended, timeout=60, what="the turn to complete")
        assert runs(runs_file) == ["wire_money bob"], "the side effect ran once"
        assert rows[2]["role"] == "tool"
        assert rows[2]["content"] == INTERRUPTED
        assert "not running an approved side-effect call again after a crash" in srv.log()
    finally:
        srv.kill()
