"""Tools through a real ``turnlog serve``: ``GET /v1/tools`` over every source, access per
user, an MCP server that cannot be reached, and configurations that must not start."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .support import Server

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
