"""The MCP client manager against a real MCP server (tests/tools/mcp_server.py, written with
the official SDK), over stdio and over Streamable HTTP on loopback."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from structlog.testing import capture_logs

from tests.e2e.support import free_port
from turnlog.generation.tools.execution import run_tool
from turnlog.generation.tools.mcp import McpManager
from turnlog.generation.tools.registry import ToolContext, ToolRegistry
from turnlog.models import McpServerConfig, McpToolConfig, ToolsConfig

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CTX = ToolContext(
    user="alice",
    conversation_id="c",
    message_id="m",
    tool_call_id="call_1",
    idempotency_key="k",
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def stdio(**over: Any) -> McpServerConfig:
    return McpServerConfig(
        transport="stdio",
        command=sys.executable,
        args=("-m", "tests.tools.mcp_server", "stdio"),
        cwd=str(ROOT),
        **over,
    )


def http_server(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.tools.mcp_server", "http", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the MCP test server did not start")


@pytest.fixture
def http_port() -> Iterator[tuple[int, list[subprocess.Popen[bytes]]]]:
    port = free_port()
    procs = [http_server(port)]
    yield port, procs
    for p in procs:
        p.kill()
        p.wait()


async def until(probe: Any, what: str, limit: float = 30.0) -> None:
    """Poll ``probe`` (state another process changes: nothing to wait on) for ``limit`` s."""
    with anyio.fail_after(limit):
        while not probe():  # noqa: ASYNC110 - the state is another process's
            await anyio.sleep(0.05)


@asynccontextmanager
async def manager(
    config: ToolsConfig,
    env: dict[str, str] | None = None,
    *,
    connect_timeout_s: float = 30,
    wait: bool = True,
) -> AsyncIterator[McpManager]:
    """A running manager; with ``wait``, once every server is connected (a loaded machine
    may take long to start a Python process: no timing is assumed)."""
    m = McpManager(
        config,
        env,
        backoff_s=0.1,
        max_backoff_s=0.5,
        poll_s=0.2,
        connect_timeout_s=connect_timeout_s,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(m.run)
        if wait:
            await until(lambda: all(m.available(s) for s in m.servers()), "connected", 120)
        yield m
        tg.cancel_scope.cancel()


def registry(m: McpManager, config: ToolsConfig) -> ToolRegistry:
    return ToolRegistry(config, dynamic=m)


@pytest.mark.anyio
async def test_stdio_lists_tools_calls_them_and_reads_annotations() -> None:
    """A stdio server's tools are listed as SERVER__TOOL with effects from the annotations
    (or the config), and a call returns the tool's text."""
    config = ToolsConfig(
        mcp={
            "t": stdio(
                env={"SECRET_THING": "${MY_SECRET}"},
                tools={"note": McpToolConfig(approval="always")},
            )
        }
    )
    with capture_logs() as logs:
        async with manager(config, {"MY_SECRET": "s3cr3t-value", "PATH": "/usr/bin"}) as m:
            reg = registry(m, config)
            tools = reg.tools()
            assert {"t__add", "t__note", "t__fail", "t__slow", "t__progress"} <= set(tools)
            add = tools["t__add"].descriptor
            assert (add.effect, add.source, add.kind, add.available) == (
                "read_only",
                "mcp:t",
                "server",
                True,
            )
            assert add.input_schema["properties"]["a"]["type"] == "integer"
            assert tools["t__fail"].descriptor.effect == "idempotent"
            assert tools["t__note"].descriptor.effect == "side_effect"
            assert tools["t__note"].descriptor.approval is True
            assert tools["t__add"].descriptor.approval is False
            out = await run_tool(tools["t__add"], {"a": 2, "b": 40}, CTX)
            assert (out.content, out.is_error) == ("42", False)
            # ${VAR} reached the server, not the log.
            out = await run_tool(tools["t__env"], {"name": "SECRET_THING"}, CTX)
            assert out.content == "s3cr3t-value"
            # The allow-listed environment only: turnlog's own variables stay out.
            out = await run_tool(tools["t__env"], {"name": "MY_SECRET"}, CTX)
            assert out.content == "<unset>"
            # Its stderr reaches our log (read by a thread: poll for it).
            await until(
                lambda: any(e.get("event") == "MCP server stderr" for e in logs), "stderr line"
            )
    assert "s3cr3t-value" not in repr(logs)


@pytest.mark.anyio
async def test_is_error_is_an_error_result_and_bad_arguments_too() -> None:
    """isError and invalid arguments come back as error results, never exceptions."""
    config = ToolsConfig(mcp={"t": stdio()})
    async with manager(config) as m:
        tools = registry(m, config).tools()
        out = await run_tool(tools["t__fail"], {"message": "boom"}, CTX)
        assert out.is_error
        assert out.content.startswith("error:")
        assert "boom" in out.content
        out = await run_tool(tools["t__add"], {"a": "two"}, CTX)
        assert out.is_error
        assert out.content.startswith("error:")
        out = await run_tool(tools["t__add"], ["not", "an", "object"], CTX)
        assert out.is_error
        assert "expected a JSON object" in out.content


@pytest.mark.anyio
async def test_slow_call_past_its_timeout_is_an_error_result() -> None:
    """A call running past the tool's timeout_s ends with an error result saying so."""
    config = ToolsConfig(mcp={"t": stdio(tools={"slow": McpToolConfig(timeout_s=0.5)})})
    async with manager(config) as m:
        tools = registry(m, config).tools()
        started = time.monotonic()
        out = await run_tool(tools["t__slow"], {"seconds": 30}, CTX)
        assert out.is_error
        assert "timeout" in out.content
        assert time.monotonic() - started < 10
        # The session is still usable afterwards.
        out = await run_tool(tools["t__add"], {"a": 1, "b": 1}, CTX)
        assert out.content == "2"


@pytest.mark.anyio
async def test_progress_reaches_the_caller() -> None:
    """Progress notifications of a call reach its progress callback."""
    config = ToolsConfig(mcp={"t": stdio()})
    seen: list[tuple[float, float | None, str | None]] = []
    async with manager(config) as m:
        tools = registry(m, config).tools()
        out = await run_tool(
            tools["t__progress"],
            {"steps": 3},
            CTX,
            progress=lambda p, t, msg: seen.append((p, t, msg)),
        )
    assert out.content == "3 steps"
    assert seen == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]


@pytest.mark.anyio
async def test_stdio_server_killed_mid_call_then_back() -> None:
    """A server that dies mid-call gives an error result; its tools read unavailable until
    the manager has started it again, then calls work."""
    config = ToolsConfig(mcp={"t": stdio()})
    async with manager(config) as m:
        reg = registry(m, config)
        out = await run_tool(reg.tools()["t__die"], {}, CTX)
        assert out.is_error
        await until(lambda: m.available("t"), "reconnect")
        out = await run_tool(reg.tools()["t__add"], {"a": 3, "b": 4}, CTX)
        assert out.content == "7"


@pytest.mark.anyio
async def test_http_server_lists_calls_and_sends_headers(http_port: Any) -> None:
    """Streamable HTTP: the same tools, and the configured headers (with ${VAR}) reach the
    server."""
    port, _ = http_port
    config = ToolsConfig(
        mcp={
            "web": McpServerConfig(
                transport="http",
                url=f"http://127.0.0.1:{port}/mcp",
                headers={"Authorization": "Bearer ${TOKEN}"},
            )
        }
    )
    with capture_logs() as logs:
        async with manager(config, {"TOKEN": "tok-123"}) as m:
            tools = registry(m, config).tools()
            assert tools["web__add"].descriptor.available
            out = await run_tool(tools["web__add"], {"a": 20, "b": 22}, CTX)
            assert out.content == "42"
            out = await run_tool(tools["web__header"], {"name": "authorization"}, CTX)
            assert out.content == "Bearer tok-123"
    assert "tok-123" not in repr(logs)


@pytest.mark.anyio
async def test_http_server_killed_then_back(http_port: Any) -> None:
    """An HTTP server that goes away: its tools read available false with a detail and a
    call is an error result at once; once it is back, the tools are available again."""
    port, procs = http_port
    config = ToolsConfig(
        mcp={"web": McpServerConfig(transport="http", url=f"http://127.0.0.1:{port}/mcp")}
    )
    async with manager(config) as m:
        reg = registry(m, config)
        assert m.available("web")
        procs[0].kill()
        procs[0].wait()
        await until(lambda: not m.available("web"), "the server is seen gone")
        d = reg.tools()["web__add"].descriptor
        assert d.available is False
        assert isinstance(d.detail, str)
        assert d.detail
        started = time.monotonic()
        out = await run_tool(reg.tools()["web__add"], {"a": 1, "b": 1}, CTX)
        assert out.is_error
        assert "unavailable now: ConnectError" in out.content
        assert time.monotonic() - started < 2
        procs.append(await anyio.to_thread.run_sync(http_server, port))
        await until(lambda: m.available("web"), "reconnect")
        out = await run_tool(reg.tools()["web__add"], {"a": 1, "b": 1}, CTX)
        assert out.content == "2"


@pytest.mark.anyio
async def test_a_server_that_sends_garbage_is_unavailable_not_a_crash() -> None:
    """A stdio server answering with non-JSON never connects: its tools are simply absent,
    the manager keeps trying, nothing raises."""
    config = ToolsConfig(
        mcp={
            "junk": McpServerConfig(
                transport="stdio",
                command=sys.executable,
                args=("-m", "tests.tools.mcp_server", "garbage"),
                cwd=str(ROOT),
            ),
            "t": stdio(),
        }
    )
    async with manager(config, connect_timeout_s=3, wait=False) as m:
        await until(lambda: m.available("t"), "the good server", 120)
        assert not m.available("junk")
        assert not [t for t in m.tools() if t.name.startswith("junk__")]
        out = await m.call("junk", "add", {}, CTX, lambda *a: None)
        assert out.is_error
        assert "unreachable" in out.content


@pytest.mark.anyio
async def test_a_ten_megabyte_result_is_cut_with_a_note() -> None:
    """A 10 MB result reaches the model as its first 100,000 characters and a note."""
    config = ToolsConfig(mcp={"t": stdio()})
    async with manager(config) as m:
        tools = registry(m, config).tools()
        out = await run_tool(tools["t__big"], {"chars": 10_000_000}, CTX)
    assert out.content.startswith("x" * 100_000)
    assert len(out.content) < 100_500
    assert "cut" in out.content
    assert "10000000" in out.content


@pytest.mark.anyio
async def test_schemas_that_are_not_json_schema_and_odd_names() -> None:
    """A tool whose input schema is not an object schema is listed unavailable with the
    reason (a call is an error result); the server's other tools work; a name no provider
    accepts is made valid, and of two that collide then only the first is kept."""
    config = ToolsConfig(
        mcp={
            "odd": McpServerConfig(
                transport="stdio",
                command=sys.executable,
                args=("-m", "tests.tools.mcp_server", "odd"),
                cwd=str(ROOT),
            )
        }
    )
    async with manager(config) as m:
        tools = registry(m, config).tools()
        props = tools["odd__props"].descriptor
        assert props.available is False
        assert isinstance(props.detail, str)
        assert "properties" in props.detail
        out = await run_tool(tools["odd__props"], {}, CTX)
        assert out.is_error
        assert (await run_tool(tools["odd__good"], {}, CTX)).content == "good answer"
        assert "odd__dotted_name_with_spaces" in tools
        # Two tools whose valid names collide: the first listed is kept, the other left out.
        assert [t.name for t in m.tools()].count("odd__dotted_name_with_spaces") == 1
