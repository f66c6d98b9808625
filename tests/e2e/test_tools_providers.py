"""Tools through a real ``turnlog serve`` and each provider adapter against its fake wire
server: one step calls an MCP tool (stdio), Python tools and a client tool; the server runs
its calls in parallel and stores their results in call order, the client's answer resumes
the turn, and every adapter sends the conversation's tools in its own format."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.providers import anthropic_wire as aw
from tests.providers import gemini_wire as gw
from tests.providers import openai_wire as ow
from tests.providers.fakeserver import FakeServer, Reply

from .conftest import Databases, _make_server
from .support import Server, wait_until

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

# The step's calls: (id, name, arguments). t__slow is first and slowest: its result must
# still come first.
CALLS = [
    ("call_slow", "t__slow", {"seconds": 1.0}),
    ("call_add", "t__add", {"a": 2, "b": 3}),
    ("call_weather", "weather", {"city": "Oslo"}),
    ("call_pick", "pick_color", {"hint": "warm"}),
]
TOOLS = ["t__slow", "t__add", "weather", "pick_color"]


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


@dataclass(frozen=True)
class Dialect:
    kind: str
    model: str
    env: Callable[[str], dict[str, str]]
    calls: Callable[[], Reply]
    text: Callable[[str], Reply]
    sent_tools: Callable[[Any], list[str]]
    results: Callable[[Any], list[str]]


def _o_calls() -> Reply:
    return ow.stream(
        ow.chunk(
            {"tool_calls": [ow.call(i, cid, n, _json(a)) for i, (cid, n, a) in enumerate(CALLS)]}
        ),
        ow.chunk({}, "tool_calls"),
        ow.usage_chunk(10, 5),
    )


def _o_results(body: Any) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "tool"]


OPENAI = Dialect(
    "openai",
    "openai:test-model",
    lambda url: {"OPENAI_BASE_URL": url + "/v1", "OPENAI_API_KEY": "sk-test"},
    _o_calls,
    lambda t: ow.stream(ow.chunk({"content": t}), ow.chunk({}, "stop"), ow.usage_chunk(10, 2)),
    lambda body: [t["function"]["name"] for t in body["tools"]],
    _o_results,
)


def _a_results(body: Any) -> list[str]:
    out = []
    for m in body["messages"]:
        if isinstance(m["content"], list):
            for c in m["content"]:
                if c["type"] == "tool_result":
                    content = c["content"]
                    out.append(content if isinstance(content, str) else content[0]["text"])
    return out


ANTHROPIC = Dialect(
    "anthropic",
    f"anthropic:{aw.MODEL}",
    lambda url: {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "sk-ant-test"},
    lambda: aw.message(
        *[aw.tool_use(i, cid, n, _json(a)) for i, (cid, n, a) in enumerate(CALLS)],
        stop_reason="tool_use",
    ),
    lambda t: aw.message(aw.text(0, t)),
    lambda body: [t["name"] for t in body["tools"]],
    _a_results,
)


def _g_calls() -> Reply:
    parts = []
    for cid, n, a in CALLS:
        part = gw.call(n, a)
        part["functionCall"]["id"] = cid
        parts.append(part)
    return gw.reply(gw.chunk(*parts, finish="STOP"))


def _g_results(body: Any) -> list[str]:
    out = []
    for c in body["contents"]:
        for p in c["parts"]:
            if "functionResponse" in p:
                r = p["functionResponse"]["response"]
                out.append(r.get("output", r.get("result", r.get("error", str(r)))))
    return out


GEMINI = Dialect(
    "gemini",
    f"gemini:{gw.MODEL}",
    lambda url: {"GEMINI_BASE_URL": url, "GEMINI_API_KEY": "AIza-test"},
    _g_calls,
    lambda t: gw.reply(gw.chunk(gw.text(t), finish="STOP")),
    lambda body: [f["name"] for t in body["tools"] for f in t["functionDeclarations"]],
    _g_results,
)

DIALECTS = [OPENAI, ANTHROPIC, GEMINI]


def config(tmp: Path) -> Path:
    path = tmp / "tools.toml"
    path.write_text(
        f"""
[mcp.t]
transport = "stdio"
command = "{sys.executable}"
args = ["-m", "tests.tools.mcp_server", "stdio"]
cwd = "{ROOT}"

[python_tools]
modules = ["tests.tools.pytools"]

[client_tools.pick_color]
description = "Ask the browser to pick a color."
input_schema = {{ type = "object", properties = {{ hint = {{ type = "string" }} }} }}

[tools]
parallel_tool_calls = 4

[access.tools.users]
bob = ["clock", "ask_user"]
""",
        encoding="utf-8",
    )
    return path


@dataclass
class Stack:
    fakes: dict[str, FakeServer]
    server: Server


@pytest.fixture(scope="module")
def stack(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("toolsprov")
    with contextlib.ExitStack() as es:
        fakes = {d.kind: es.enter_context(FakeServer()) for d in DIALECTS}
        env = {k: v for d in DIALECTS for k, v in d.env(fakes[d.kind].url).items()}
        env.update(TURNLOG_CONFIG=str(config(tmp)), PYTHONPATH=str(ROOT))
        srv = _make_server(databases, tmp, env, None).start(timeout=90)
        yield Stack(fakes, srv)
        srv.terminate(timeout=15)


def _events(server: Server, cid: str) -> list[str]:
    with psycopg.connect(server.database_url) as conn:
        rows = conn.execute(
            "SELECT type FROM events WHERE conversation_id = %s ORDER BY version", (cid,)
        ).fetchall()
    return [r[0] for r in rows]


@pytest.mark.parametrize("d", DIALECTS, ids=lambda d: d.kind)
def test_mcp_python_and_client_tools_in_one_turn(stack: Stack, d: Dialect) -> None:
    """One step calls four tools: the three server calls run (concurrently; the slow first
    one's result still first), a started record is stored before they run, the client
    tool's call waits for tool-results, and the next step sees every result."""
    fake = stack.fakes[d.kind]
    fake.clear()
    fake.queue(d.calls(), d.text("All four tools answered."))
    with stack.server.http("alice") as h:
        r = h.post("/v1/conversations", json={"model": d.model, "tools": TOOLS})
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        assert r.json()["tools"] == TOOLS
        r = h.post(f"/v1/conversations/{cid}/messages", json={"content": "use your tools"})
        assert r.status_code == 201, r.text
        first = r.json()["assistant_message"]["id"]

        def waiting() -> Any:
            conv = h.get(f"/v1/conversations/{cid}").json()
            return conv if conv["conversation"]["state"] == "awaiting_input" else None

        conv = wait_until(waiting, timeout=60, what="awaiting the client tool")
        rows = conv["messages"]
        tool_rows = [m for m in rows if m["role"] == "tool"]
        assert [m["tool_name"] for m in tool_rows] == ["t__slow", "t__add", "weather"]
        assert tool_rows[0]["content"] == "slept 1.0"
        assert tool_rows[1]["content"] == "5"
        assert tool_rows[2]["content"].startswith("sunny in Oslo")
        # The adapter sent exactly the conversation's tools, in its own format.
        step1 = fake.requests[0].json()
        assert sorted(d.sent_tools(step1)) == sorted(TOOLS)
        # The started record came before the results, in the log.
        types = _events(stack.server, cid)
        assert types.index("tool_calls_started") < types.index("step_completed")
        # The client answers its tool; the turn resumes.
        r = h.post(
            f"/v1/messages/{first}/tool-results",
            json={"tool_call_id": "call_pick", "content": "teal"},
        )
        assert r.status_code == 201, r.text

        def done() -> Any:
            conv = h.get(f"/v1/conversations/{cid}").json()
            last = conv["messages"][-1]
            idle = conv["conversation"]["state"] == "idle"
            return conv if idle and last["status"] == "completed" else None

        conv = wait_until(done, timeout=60, what="the final answer")
    final = conv["messages"][-1]
    assert final["blocks"] == [{"type": "text", "text": "All four tools answered."}]
    results = d.results(fake.requests[1].json())
    assert results[:2] == ["slept 1.0", "5"]
    assert results[-1] == "teal"


def test_unknown_and_forbidden_tools_on_create_and_patch(stack: Stack) -> None:
    """Unknown names and globs are 400; a tool the user may not use is 403; PATCH checks
    the same; null goes back to the default."""
    with stack.server.http("alice") as h:
        r = h.post("/v1/conversations", json={"tools": ["nope"]})
        assert r.status_code == 400
        assert "unknown tool 'nope'" in r.json()["detail"]
        r = h.post("/v1/conversations", json={"tools": ["zz*"]})
        assert r.status_code == 400
        r = h.post("/v1/conversations", json={"tools": "clock"})
        assert r.status_code == 400
        cid = h.post("/v1/conversations", json={"tools": ["t__*", "clock"]}).json()["id"]
        r = h.patch(f"/v1/conversations/{cid}", json={"tools": ["weather", "bogus"]})
        assert r.status_code == 400
        r = h.patch(f"/v1/conversations/{cid}", json={"tools": None})
        assert r.status_code == 200
        assert r.json()["tools"] is None
    with stack.server.http("bob") as h:
        r = h.post("/v1/conversations", json={"tools": ["weather"]})
        assert r.status_code == 403
        assert "may not use tool 'weather'" in r.json()["detail"]
        r = h.post("/v1/conversations", json={"tools": ["t__*"]})
        assert r.status_code == 403
        cid = h.post("/v1/conversations", json={"tools": ["clock"]}).json()["id"]
        r = h.patch(f"/v1/conversations/{cid}", json={"tools": ["create_ticket"]})
        assert r.status_code == 403
        names = [t["name"] for t in h.get("/v1/tools").json()["items"]]
        assert names == ["clock", "ask_user"]
