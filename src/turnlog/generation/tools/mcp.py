"""MCP servers' tools, through the official ``mcp`` SDK (the 2.x line, ``turnlog[mcp]``).

One :class:`McpManager` per process holds one long-lived session per configured server. Each
session lives in its own task (``_keep``), which enters and exits the SDK's ``Client`` (the
SDK's task groups and cancel scopes require both in the same task); calls from generations
only send requests on it. The task:

1. connects (``stdio``: starts the command with an allow-listed environment plus the
   configured ``env``, its stderr copied line by line to our log; ``http``: Streamable HTTP
   with the configured ``headers``), ``${VAR}`` filled in from the environment here, never
   logged;
2. lists the tools (``SERVER__TOOL``; ``include``/``exclude`` globs; effect from the config,
   else the annotations: ``readOnlyHint`` read_only, ``idempotentHint`` idempotent, else
   side_effect) and marks them available;
3. watches the session (a listing every ``poll_s``, or at once when a call saw the connection
   close); when it fails the tools stay listed but ``available: false`` with a ``detail``,
   and a call gets an error result at once;
4. reconnects with exponential backoff (``backoff_s`` doubling to ``max_backoff_s``).

A result with ``isError`` is an error result for the model, never a failure of the turn;
every SDK error (a timeout, a closed connection, garbage on the wire) becomes one too.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TextIO, cast

import anyio
import msgspec
import structlog
from anyio.abc import TaskStatus

from turnlog.generation.tools.registry import (
    Progress,
    Tool,
    ToolContext,
    ToolDescriptor,
    ToolOutput,
    error_output,
    needs_approval,
)
from turnlog.models import (
    TOOL_NAME,
    Effect,
    McpServerConfig,
    ToolsConfig,
    check_input_schema,
)

log = structlog.get_logger("turnlog.mcp")

CONNECT_TIMEOUT_S = 20.0
LIST_TIMEOUT_S = 10.0
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class McpUnavailable(RuntimeError):
    """The ``mcp`` SDK is not installed (``pip install 'turnlog[mcp]'``)."""


def expand(value: str, environ: Mapping[str, str]) -> str:
    """``value`` with each ``${VAR}`` read from ``environ`` (unset: ValueError naming it)."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in environ:
            raise ValueError(f"environment variable {name} is not set")
        return environ[name]

    return _VAR.sub(one, value)


def tool_name(server: str, name: str) -> str:
    """``SERVER__TOOL`` made valid for every provider (other characters become ``_``; a
    name too long is cut and given a short hash, so it stays unique)."""
    import hashlib

    raw = f"{server}__{name}"
    safe = re.sub(r"[^a-zA-Z0-9_-]", "_", raw)
    if TOOL_NAME.match(safe):
        return safe
    digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
    return f"{safe[:55]}_{digest}"


class _Server:
    """One configured server: its session (while connected) and its last tool listing."""

    def __init__(self, name: str, config: McpServerConfig) -> None:
        self.name = name
        self.config = config
        self.client: Any = None  # mcp.Client while connected
        self.available = False
        self.detail = "not connected yet"
        self.tools: list[Tool] = []
        self.lost = anyio.Event()  # a call saw the connection close
        self.tried = anyio.Event()  # the first connection attempt ended
        self.calls = 0  # calls in flight

    def down(self, detail: str) -> None:
        self.client = None
        self.available = False
        self.detail = detail
        self.tools = [_mark(t, False, detail) for t in self.tools]


def _mark(tool: Tool, available: bool, detail: str | None) -> Tool:
    d = msgspec.structs.replace(
        tool.descriptor,
        available=available,
        detail=msgspec.UNSET if available or detail is None else detail,
    )
    return Tool(d, tool.timeout_s, tool.run)


class McpManager:
    """The sessions of every ``[mcp.SERVER]``, owned by one task group (``run``)."""

    def __init__(
        self,
        config: ToolsConfig,
        environ: Mapping[str, str] | None = None,
        *,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        poll_s: float = 5.0,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.config = config
        self.environ = dict(os.environ if environ is None else environ)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.poll_s = poll_s
        self.connect_timeout_s = connect_timeout_s
        self._servers = {n: _Server(n, c) for n, c in config.mcp.items()}

    # -- what the registry reads ---------------------------------------------------------

    def tools(self) -> Sequence[Tool]:
        return [t for s in self._servers.values() for t in s.tools]

    def servers(self) -> Iterable[str]:
        return self._servers.keys()

    def available(self, server: str) -> bool:
        return self._servers[server].available

    # -- the sessions --------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep every server's session until cancelled; ``started`` once each server's first
        attempt ended (connected or not, at most ``connect_timeout_s``), so that the tools
        are listed when the server starts serving."""
        if self._servers:
            try:
                import mcp  # noqa: F401
            except ImportError:
                detail = "the mcp SDK is not installed: pip install 'turnlog[mcp]'"
                log.error("MCP servers configured but not usable", detail=detail)
                for s in self._servers.values():
                    s.down(detail)
                task_status.started()
                return
        async with anyio.create_task_group() as tg:
            for s in self._servers.values():
                tg.start_soon(self._keep, s)
            with anyio.move_on_after(self.connect_timeout_s + 1):
                for s in self._servers.values():
                    await s.tried.wait()
            task_status.started()

    async def _keep(self, s: _Server) -> None:
        """Connect, list, watch; on any failure mark the tools unavailable and reconnect
        after a growing pause. Runs until cancelled."""
        delay = self.backoff_s
        while True:
            detail = "the connection ended"
            deadline = anyio.current_time() + self.connect_timeout_s
            with anyio.CancelScope(deadline=deadline) as scope:
                try:
                    async with self._connect(s) as client:
                        await self._list(s, client)
                        # Connected: no deadline for the session itself.
                        scope.deadline = math.inf
                        s.client = client
                        s.lost = anyio.Event()
                        delay = self.backoff_s
                        log.info(
                            "MCP server connected",
                            server=s.name,
                            tools=[t.name for t in s.tools],
                        )
                        s.tried.set()
                        await self._watch(s, client)
                except Exception as exc:
                    detail = describe(exc)
            if scope.cancelled_caught:
                detail = f"no answer within {self.connect_timeout_s:g} s"
            s.down(detail)
            s.tried.set()
            log.warning(
                "MCP server unreachable; reconnecting",
                server=s.name,
                detail=detail,
                retry_in_s=round(delay, 2),
            )
            await anyio.sleep(delay)
            delay = min(delay * 2, self.max_backoff_s)

    @asynccontextmanager
    async def _connect(self, s: _Server) -> AsyncIterator[Any]:
        from mcp import Client
        from mcp.types import Implementation

        c = s.config
        info = Implementation(name="turnlog", version="0.1.0")
        if c.transport == "stdio":
            from mcp.client.stdio import StdioServerParameters

            assert c.command is not None
            params = StdioServerParameters(
                command=c.command,
                args=list(c.args),
                env={k: expand(v, self.environ) for k, v in c.env.items()},
                cwd=c.cwd,
            )
            async with _stderr_to_log(s.name) as errlog:
                from mcp.client.stdio import stdio_client

                async with Client(
                    stdio_client(params, errlog=errlog), cache=None, client_info=info
                ) as client:
                    yield client
        else:
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            assert c.url is not None
            headers = {k: expand(v, self.environ) for k, v in c.headers.items()}
            async with (
                httpx2.AsyncClient(
                    headers=headers, timeout=httpx2.Timeout(30.0, read=300.0)
                ) as http,
                Client(
                    streamable_http_client(c.url, http_client=http), cache=None, client_info=info
                ) as client,
            ):
                yield client

    async def _list(self, s: _Server, client: Any) -> None:
        """List the server's tools (every page) and make them the available ones."""
        listed: list[Any] = []
        cursor: str | None = None
        with anyio.fail_after(LIST_TIMEOUT_S):
            while True:
                page = await client.list_tools(cursor=cursor)
                listed.extend(page.tools)
                cursor = page.next_cursor
                if not cursor:
                    break
        s.tools = self._tools(s, listed)
        s.available = True
        s.detail = ""

    async def _watch(self, s: _Server, client: Any) -> None:
        """Return when the session is gone: a listing fails (every ``poll_s``, or at once
        after a call saw the connection close). No listing while calls are in flight: a
        long result holds the connection (a stdio pipe answers in order), and a call that
        finds the connection closed says so itself."""
        while True:
            with anyio.move_on_after(self.poll_s):
                await s.lost.wait()
            if s.lost.is_set():
                raise ConnectionError("the connection closed")
            if s.calls == 0:
                await self._list(s, client)

    def _tools(self, s: _Server, listed: Sequence[Any]) -> list[Tool]:
        c = s.config
        out: list[Tool] = []
        seen: set[str] = set()
        for t in listed:
            name: str = t.name
            if c.include is not None and not any(fnmatch.fnmatchcase(name, p) for p in c.include):
                continue
            if any(fnmatch.fnmatchcase(name, p) for p in c.exclude):
                continue
            full = tool_name(s.name, name)
            if full in seen:
                log.warning("MCP tool left out: its name collides", server=s.name, tool=name)
                continue
            seen.add(full)
            per = c.tools.get(name)
            hints = t.annotations
            effect: Effect = "side_effect"
            if per is not None and per.effect is not None:
                effect = per.effect
            elif hints is not None and hints.read_only_hint:
                effect = "read_only"
            elif hints is not None and hints.idempotent_hint:
                effect = "idempotent"
            schema = t.input_schema
            why = check_input_schema(schema)
            descriptor = ToolDescriptor(
                name=full,
                description=(t.description or name)[:4000],
                input_schema=schema if why is None else {"type": "object", "properties": {}},
                kind="server",
                source=f"mcp:{s.name}",
                effect=effect,
                approval=needs_approval(
                    effect,
                    per.approval if per is not None else None,
                    c.approval,
                    self.config.approval,
                ),
                available=why is None,
                detail=msgspec.UNSET if why is None else f"its input schema is not valid: {why}",
            )
            if why is not None:
                log.warning(
                    "MCP tool unusable: bad input schema", server=s.name, tool=name, why=why
                )
            timeout = (per.timeout_s if per is not None else None) or c.timeout_s
            out.append(
                Tool(descriptor, timeout or self.config.timeout_s, self._runner(s, name, why))
            )
        return out

    def _runner(self, s: _Server, name: str, bad_schema: str | None) -> Any:
        async def run(arguments: Any, ctx: ToolContext, progress: Progress) -> ToolOutput:
            if bad_schema is not None:
                return error_output(f"the tool's input schema is not valid: {bad_schema}")
            return await self.call(s.name, name, arguments, ctx, progress)

        return run

    async def call(
        self,
        server: str,
        name: str,
        arguments: Any,
        ctx: ToolContext,
        progress: Progress,
        timeout_s: float | None = None,
    ) -> ToolOutput:
        """Call tool ``name`` of ``server``; every failure is an error output."""
        from mcp.shared.exceptions import MCPError
        from mcp_types import CONNECTION_CLOSED

        s = self._servers[server]
        client = s.client
        if client is None or not s.available:
            return error_output(f"MCP server {server!r} is unreachable now: {s.detail}")
        if arguments is not None and not isinstance(arguments, dict):
            return error_output(
                f"invalid arguments: expected a JSON object, got {type(arguments).__name__}"
            )

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress(done, total, message)

        s.calls += 1
        try:
            result = await client.call_tool(
                name,
                arguments or {},
                read_timeout_seconds=timeout_s,
                progress_callback=on_progress,
                meta={"turnlog/idempotency_key": ctx.idempotency_key},
            )
        except MCPError as exc:
            if exc.code == CONNECTION_CLOSED and s.client is client:
                # Unavailable at once (the next call fails fast); the session's task sees
                # it too and reconnects.
                s.down("the connection closed")
                s.lost.set()
            return error_output(f"MCP server {server!r}: {exc.message}")
        except Exception as exc:
            return error_output(f"MCP server {server!r}: {describe(exc)}")
        finally:
            s.calls -= 1
        text = render(result)
        return ToolOutput(f"error: {text}" if result.is_error else text, bool(result.is_error))


def render(result: Any) -> str:
    """The text of a ``CallToolResult``: its text parts; others named by kind and size; the
    structured content as JSON when there is no text."""
    parts: list[str] = []
    for block in result.content:
        kind = getattr(block, "type", "?")
        if kind == "text":
            parts.append(block.text)
        elif kind in ("image", "audio"):
            parts.append(f"[{kind} {block.mime_type}, {len(block.data)} base64 characters]")
        elif kind == "resource_link":
            parts.append(f"[resource {block.uri}]")
        elif kind == "resource":
            res = block.resource
            parts.append(getattr(res, "text", None) or f"[resource {res.uri}]")
        else:
            parts.append(f"[{kind} content]")
    if not parts and result.structured_content is not None:
        return msgspec.json.encode(result.structured_content).decode()
    return "\n".join(parts)


def describe(exc: BaseException) -> str:
    """A short, secret-free reason for an SDK failure (the innermost of an exception group)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@asynccontextmanager
async def _stderr_to_log(server: str) -> AsyncIterator[TextIO]:
    """A file for a stdio server's stderr whose lines go to our log (a pipe read in a
    worker thread; it ends when the last writer, the server, closes it)."""
    read_fd, write_fd = os.pipe()
    reader = os.fdopen(read_fd, "r", encoding="utf-8", errors="replace")
    writer = cast(TextIO, os.fdopen(write_fd, "w"))

    def pump() -> None:
        with reader:
            for line in reader:
                log.info("MCP server stderr", server=server, line=line.rstrip("\n")[:2000])

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: anyio.to_thread.run_sync(pump, abandon_on_cancel=True))
            try:
                yield writer
            finally:
                writer.close()  # the server's copy keeps the pipe open until it exits
                tg.cancel_scope.cancel()
    finally:
        if not writer.closed:
            writer.close()
