"""Tools through a real ``turnlog serve``: ``GET /v1/tools`` over every source, access per
user, an MCP server that cannot be reached, and configurations that must not start."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .support import Server, wait_until

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def tools_config(tmp: Path, extra: str = "") -> Path:
    """A TURNLOG_CONFIG with a stdio MCP server, an unreachable HTTP one, Python tools and a
    client tool."""
    path = tmp / "tools.toml"
    path.write_text(
        f"""
[mcp.t]
transport = "stdio"
command = "{sys.executable}"
args = ["-m", "tests.tools.mcp_server", "stdio"]
cwd = "{ROOT}"
include = ["add", "note", "fail", "slow", "big", "progress"]
[mcp.t.tools.note]
approval = "always"

[mcp.gone]
transport = "http"
url = "http://127.0.0.1:9/mcp"
headers = {{ Authorization = "Bearer ${{GONE_TOKEN}}" }}

[python_tools]
modules = ["tests.tools.pytools"]

[client_tools.pick_color]
description = "Ask the browser to pick a color."
input_schema = {{ type = "object", properties = {{ hint = {{ type = "string" }} }} }}

[tools]
default = ["clock", "t__*", "weather"]

[access.tools]
default = ["clock", "ask_user", "t__add", "weather", "pick_color"]
[access.tools.users]
root = ["*"]
{extra}
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def tool_server(databases: object, tmp_path_factory: pytest.TempPathFactory) -> object:
    from .conftest import _make_server

    tmp = tmp_path_factory.mktemp("tools")
    env = {
        "TURNLOG_CONFIG": str(tools_config(tmp)),
        "GONE_TOKEN": "very-secret-token",
        "PYTHONPATH": str(ROOT),
    }
    srv = _make_server(databases, tmp, env, None).start(timeout=60)  # type: ignore[arg-type]
    yield srv
    srv.terminate(timeout=15)


def test_tools_lists_every_source_for_a_user_with_every_right(tool_server: Server) -> None:
    """root sees built-ins, MCP, Python and client tools, each in the one descriptor shape."""
    with tool_server.http("root") as h:
        r = h.get("/v1/tools")
    assert r.status_code == 200
    items = {t["name"]: t for t in r.json()["items"]}
    expected = {"clock", "ask_user", "t__add", "t__note", "weather", "create_ticket", "pick_color"}
    assert expected <= set(items)
    assert "t__env" not in items  # not included
    assert items["t__add"] == {
        "name": "t__add",
        "description": "Add two whole numbers.",
        "input_schema": items["t__add"]["input_schema"],
        "kind": "server",
        "source": "mcp:t",
        "effect": "read_only",
        "approval": False,
        "available": True,
    }
    assert items["t__note"]["approval"] is True
    assert items["t__note"]["effect"] == "side_effect"
    assert items["ask_user"]["kind"] == "interactive"
    assert items["pick_color"]["kind"] == "client"
    assert items["pick_color"]["source"] == "config"
    assert items["create_ticket"]["source"] == "python"
    assert items["create_ticket"]["approval"] is True
    assert items["weather"]["input_schema"]["required"] == ["city"]


def test_tools_follow_the_users_access(tool_server: Server) -> None:
    """Another user sees only what [access.tools] gives everyone."""
    with tool_server.http("bob") as h:
        names = [t["name"] for t in h.get("/v1/tools").json()["items"]]
    assert names == ["clock", "ask_user", "weather", "pick_color", "t__add"]


def test_an_unreachable_server_is_logged_without_its_secret(tool_server: Server) -> None:
    """The HTTP server that is not there is reported in the log, its header never."""
    log = tool_server.log()
    assert "MCP server unreachable" in log
    assert "very-secret-token" not in log


def test_a_configuration_with_colliding_names_does_not_start(
    spawn: Callable[..., Server], tmp_path: Path
) -> None:
    """A client tool named like a built-in stops `turnlog serve` with a message naming it."""
    path = tmp_path / "bad.toml"
    path.write_text('[client_tools.clock]\ndescription = "mine"\n', encoding="utf-8")
    srv = spawn(env={"TURNLOG_CONFIG": str(path)})
    out = subprocess.run(
        [sys.executable, "-m", "turnlog.cli", "serve", "--port", "1"],
        env=srv.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "two tools are named 'clock'" in out.stderr


def test_a_client_tool_schema_that_is_not_json_schema_does_not_start(
    spawn: Callable[..., Server], tmp_path: Path
) -> None:
    """input_schema must be an object schema: anything else is refused at start."""
    path = tmp_path / "bad.toml"
    path.write_text(
        '[client_tools.pick]\ndescription = "x"\ninput_schema = { type = "banana" }\n',
        encoding="utf-8",
    )
    srv = spawn(env={"TURNLOG_CONFIG": str(path)})
    out = subprocess.run(
        [sys.executable, "-m", "turnlog.cli", "serve", "--port", "1"],
        env=srv.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "client_tools.pick.input_schema is not a JSON schema" in out.stderr


def _ticket_conversation(h: Any, **options: Any) -> tuple[str, str, str]:
    """A conversation whose demo model calls create_ticket (approval: always); the
    conversation id, the assistant row waiting for approval and the call id."""
    cid = h.post("/v1/conversations", json={"tools": ["create_ticket", "clock"]}).json()["id"]
    opts = {
        "tool": "create_ticket",
        "tool_arguments": {"title": "fix the build", "priority": 2},
        "tokens_per_second": 400,
        "length": 8,
        **options,
    }
    r = h.post(f"/v1/conversations/{cid}/messages", json={"content": "file it", "options": opts})
    assert r.status_code == 201, r.text
    mid = r.json()["assistant_message"]["id"]

    def waiting() -> Any:
        conv = h.get(f"/v1/conversations/{cid}").json()
        return conv if conv["conversation"]["state"] == "awaiting_input" else None

    conv = wait_until(waiting, timeout=60, what="the call to wait for approval")
    row = next(m for m in conv["messages"] if m["id"] == mid)
    call = row["blocks"][-1]
    assert call["type"] == "tool_call"
    assert call["name"] == "create_ticket"
    assert call["arguments"] == {"title": "fix the build", "priority": 2}
    return cid, mid, call["id"]


def _settled(h: Any, cid: str) -> Any:
    def idle() -> Any:
        conv = h.get(f"/v1/conversations/{cid}").json()
        last = conv["messages"][-1]
        done = conv["conversation"]["state"] == "idle" and last["status"] != "generating"
        return conv if done else None

    return wait_until(idle, timeout=60, what="the turn to end")


def test_an_approved_call_runs_with_the_stored_arguments(tool_server: Server) -> None:
    """A call of a tool that needs approval waits; tool-results cannot answer it; approved,
    it runs with exactly the stored arguments and the turn goes on."""
    with tool_server.http("root") as h:
        cid, mid, call = _ticket_conversation(h)
        r = h.post(
            f"/v1/messages/{mid}/tool-results", json={"tool_call_id": call, "content": "fake"}
        )
        assert r.status_code == 409
        assert "tool-approvals" in r.json()["detail"]
        r = h.post(
            f"/v1/messages/{mid}/tool-approvals", json={"tool_call_id": call, "approved": True}
        )
        assert r.status_code == 201, r.text
        assert r.json()["assistant_message"]["status"] == "generating"
        conv = _settled(h, cid)
        tool_row = next(m for m in conv["messages"] if m["role"] == "tool")
        assert tool_row["tool_name"] == "create_ticket"
        assert '"title":"fix the build","priority":2,"user":"root"' in tool_row["content"]
        assert conv["messages"][-1]["status"] == "completed"
        # Answered once: a second approval is refused.
        r = h.post(
            f"/v1/messages/{mid}/tool-approvals", json={"tool_call_id": call, "approved": True}
        )
        assert r.status_code == 400


def test_a_denied_call_gives_the_model_the_reason(tool_server: Server) -> None:
    """Denied: the tool never runs; the model reads ``denied: <reason>``."""
    with tool_server.http("root") as h:
        cid, mid, call = _ticket_conversation(h)
        r = h.post(
            f"/v1/messages/{mid}/tool-approvals",
            json={"tool_call_id": call, "approved": False, "reason": "not today"},
        )
        assert r.status_code == 201, r.text
        conv = _settled(h, cid)
        tool_row = next(m for m in conv["messages"] if m["role"] == "tool")
        assert tool_row["content"] == "denied: not today"
        final = conv["messages"][-1]
        assert final["blocks"][0]["text"].startswith("create_ticket said denied: not today.")


def test_cancel_withdraws_a_call_waiting_for_approval(tool_server: Server) -> None:
    """Cancel on the waiting row withdraws the call: a cancelled result, idle again."""
    with tool_server.http("root") as h:
        cid, mid, call = _ticket_conversation(h)
        r = h.post(f"/v1/messages/{mid}/cancel")
        assert r.status_code == 200, r.text
        conv = h.get(f"/v1/conversations/{cid}").json()
        assert conv["conversation"]["state"] == "idle"
        tool_row = next(m for m in conv["messages"] if m["role"] == "tool")
        assert tool_row["content"].startswith("cancelled")
        r = h.post(
            f"/v1/messages/{mid}/tool-approvals", json={"tool_call_id": call, "approved": True}
        )
        assert r.status_code == 400


def test_a_user_may_not_name_a_tool_outside_their_access(tool_server: Server) -> None:
    """bob may not use create_ticket: naming it is 403, an unknown one 400."""
    with tool_server.http("bob") as h:
        r = h.post("/v1/conversations", json={"tools": ["create_ticket"]})
        assert r.status_code == 403
        r = h.post("/v1/conversations", json={"tools": ["no_such_tool"]})
        assert r.status_code == 400


def _chat(server: Server, tmp_path: Path, stdin: str, *extra: str) -> Any:
    import os

    from .support import JWT_SECRET

    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNLOG_")}
    env.update(TURNLOG_JWT_SECRET=JWT_SECRET, TURNLOG_DATA_DIR=str(tmp_path))
    return subprocess.run(
        [
            sys.executable,
            *("-m", "turnlog.cli", "chat", "--url", server.url, "--user", "root"),
            *extra,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.mark.parametrize(("answer", "result"), [("y", '"title":"fix the build"'), ("n", "denied")])
def test_turnlog_chat_asks_y_or_n(
    tool_server: Server, tmp_path: Path, answer: str, result: str
) -> None:
    """`turnlog chat` shows a call waiting for approval with its arguments and asks y/n:
    y runs it, n denies it."""
    options = {
        "tool": "create_ticket",
        "tool_arguments": {"title": "fix the build", "priority": 2},
        "tokens_per_second": 400,
        "length": 8,
    }
    with tool_server.http("root") as h:
        cid = h.post(
            "/v1/conversations", json={"tools": ["create_ticket"], "options": options}
        ).json()["id"]
    done = _chat(tool_server, tmp_path, f"file it\n{answer}\n/quit\n", "--conversation", cid)
    assert done.returncode == 0, done.stderr
    assert 'create_ticket {"title": "fix the build", "priority": 2}' in done.stdout
    with tool_server.http("root") as h:
        conv = _settled(h, cid)
    tool_row = next(m for m in conv["messages"] if m["role"] == "tool")
    assert result in tool_row["content"]
    assert conv["messages"][-1]["status"] == "completed"


def test_tool_calls_are_counted_per_tool(tool_server: Server) -> None:
    """Calls, errors and durations per tool in /metrics (after the calls above)."""
    with tool_server.http("root") as h:
        _, mid, call = _ticket_conversation(h)
        h.post(f"/v1/messages/{mid}/tool-approvals", json={"tool_call_id": call, "approved": True})
        text = h.get("/metrics").text
    assert 'turnlog_tool_calls_total{tool="create_ticket"}' in text
    assert 'turnlog_tool_duration_seconds_count{tool="create_ticket"}' in text
    assert "turnlog_tool_errors_total" in text


def _running_with(marker: str) -> bool:
    """Whether a process whose command line holds ``marker`` is alive."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            status = (entry / "status").read_text()
        except OSError:
            continue
        if marker.encode() in cmdline and "State:\tZ" not in status:
            return True
    return False


def test_a_stdio_server_stops_with_turnlog(spawn: Callable[..., Server], tmp_path: Path) -> None:
    """The stdio MCP server turnlog started ends when turnlog is killed (its stdin closes)."""
    import uuid

    marker = f"marker-{uuid.uuid4().hex}"
    path = tmp_path / "one.toml"
    path.write_text(
        f"""
[mcp.t]
transport = "stdio"
command = "{sys.executable}"
args = ["-m", "tests.tools.mcp_server", "stdio", "{marker}"]
cwd = "{ROOT}"
""",
        encoding="utf-8",
    )
    srv = spawn(env={"TURNLOG_CONFIG": str(path), "PYTHONPATH": str(ROOT)}).start(timeout=60)
    assert _running_with(marker)
    srv.kill()
    wait_until(lambda: not _running_with(marker), timeout=30, what="the MCP server to stop")
