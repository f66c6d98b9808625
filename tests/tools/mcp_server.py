"""A small MCP server for the tests, written with the official SDK's server API (``MCPServer``).

    python -m tests.tools.mcp_server stdio
    python -m tests.tools.mcp_server http PORT
    python -m tests.tools.mcp_server garbage      # answers every line with non-JSON

Tools: ``add`` (read-only), ``note`` (a side effect: appends to $NOTES_FILE), ``fail``
(an ``isError`` result), ``slow`` (sleeps), ``progress`` (reports progress), ``big`` (a long
text), ``env`` (an environment variable's value), ``die`` (the process exits mid-call),
``header`` (a request header, over HTTP); ``send_mail`` (a side effect) and ``read_inbox``
(read-only) count their runs in $RUNS_FILE and take long, for the crash tests.
"""

from __future__ import annotations

import os
import sys
import time

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

server = MCPServer("turnlog-test")


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def add(a: int, b: int) -> str:
    """Add two whole numbers."""
    return str(a + b)


@server.tool()
def note(text: str) -> str:
    """Write a note (a side effect)."""
    path = os.environ.get("NOTES_FILE")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text + "\n")
    return f"noted: {text}"


def _count_run(name: str, key: str) -> int:
    """Note one run of ``name`` for ``key`` in $RUNS_FILE; how many runs it has now."""
    path = os.environ["RUNS_FILE"]
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{name} {key}\n")
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.split() == [name, key])


@server.tool()
async def send_mail(to: str) -> str:
    """Send an email (a side effect): noted in $RUNS_FILE, then it takes very long."""
    _count_run("send_mail", to)
    await anyio.sleep(120)
    return f"sent to {to}"


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
async def read_inbox(box: str) -> str:
    """Read a mailbox (read-only): noted in $RUNS_FILE; the first run takes very long."""
    if _count_run("read_inbox", box) == 1:
        await anyio.sleep(120)
    return f"{box}: 3 unread"


@server.tool(annotations=ToolAnnotations(idempotent_hint=True))
def fail(message: str) -> str:
    """Always fails with ``message``."""
    raise ToolError(message)


@server.tool()
async def slow(seconds: float) -> str:
    """Sleep, then answer."""
    await anyio.sleep(seconds)
    return f"slept {seconds}"


@server.tool()
async def progress(steps: int, ctx: Context) -> str:
    """Report progress ``steps`` times."""
    for i in range(steps):
        await ctx.report_progress(i + 1, steps, f"step {i + 1}")
    return f"{steps} steps"


@server.tool()
def big(chars: int) -> str:
    """A text of ``chars`` characters."""
    return "x" * chars


@server.tool()
def env(name: str) -> str:
    """An environment variable of the server process."""
    return os.environ.get(name, "<unset>")


@server.tool()
def die() -> str:
    """The server process exits in the middle of the call."""
    print("dying now", file=sys.stderr, flush=True)
    os._exit(3)


@server.tool()
def header(name: str, ctx: Context) -> str:
    """A header of the HTTP request carrying this call."""
    request = ctx.request_context.request
    return str(request.headers.get(name, "<none>")) if request is not None else "<no request>"


def odd_schemas() -> None:
    """A low-level server listing a tool whose input schema is not a JSON schema of an
    object (its properties are not schemas), beside a good tool, and a name no provider
    accepts. (A root that is not ``"type": "object"`` the SDK itself refuses to send.)"""
    from mcp.server.lowlevel import Server
    from mcp.server.stdio import stdio_server
    from mcp.types import CallToolResult, ListToolsResult, TextContent, Tool

    tools = [
        Tool(name="props", input_schema={"type": "object", "properties": {"a": 5}}),
        Tool(name="good", input_schema={"type": "object", "properties": {}}),
        Tool(name="dotted.name/with spaces", input_schema={"type": "object"}),
        Tool(name="dotted_name_with_spaces", input_schema={"type": "object"}),
    ]

    async def list_tools(ctx: object, params: object) -> ListToolsResult:
        return ListToolsResult(tools=tools)

    async def call_tool(ctx: object, params: object) -> CallToolResult:
        return CallToolResult(content=[TextContent(type="text", text="good answer")])

    low = Server("odd", on_list_tools=list_tools, on_call_tool=call_tool)

    async def main() -> None:
        async with stdio_server() as (read, write):
            await low.run(read, write, low.create_initialization_options())

    anyio.run(main)


def garbage() -> None:
    """Answer every line on stdin with a line that is not JSON-RPC."""
    print("starting up", file=sys.stderr, flush=True)
    for _line in sys.stdin:
        sys.stdout.write("this is not json {{{\n")
        sys.stdout.flush()
    time.sleep(0.1)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "stdio":
        print("test server on stdio", file=sys.stderr, flush=True)
        server.run("stdio")
    elif mode == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    elif mode == "garbage":
        garbage()
    elif mode == "odd":
        odd_schemas()
    else:
        raise SystemExit(f"unknown mode {mode!r}")
