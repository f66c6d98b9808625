"""The tool registry: one descriptor shape for every source (docs/tools.md).

Sources: the built-ins (``clock``, ``ask_user``), Python functions marked ``turnlog.tool``
(``python.py``), the tools of MCP servers (``mcp.py``, named ``SERVER__TOOL``) and client
tools from ``[client_tools.NAME]``. Each becomes a :class:`Tool`: the public
:class:`ToolDescriptor` (what ``GET /v1/tools`` lists) and, for a server tool, how to run it.

Names: every name is one all providers accept (``models.TOOL_NAME``). The static sources
(built-ins, Python, client tools) must not collide: that is a configuration error at start.
An MCP tool whose name is taken is left out (and logged), so a server cannot shadow a tool.

A conversation's ``tools`` are names or globs. :meth:`ToolRegistry.check` refuses a pattern
that names nothing (``UnknownTool``, 400) or only tools the user may not use
(``ToolForbidden``, 403); :meth:`ToolRegistry.select` expands patterns into the tools a
step offers the model, filtered by access at that moment.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

import anyio
import msgspec
import structlog
from anyio.abc import TaskStatus

from turnlog.models import (
    TOOL_NAME,
    Approval,
    ClientToolConfig,
    Effect,
    ToolsConfig,
)
from turnlog.providers.base import ASK_USER_TOOL, CLOCK_TOOL, ToolSpec

log = structlog.get_logger("turnlog.tools")

Kind = Literal["server", "client", "interactive"]
GLOB_CHARS = frozenset("*?[")


class UnknownTool(ValueError):
    """A conversation names a tool (or a glob) that matches no tool here (400)."""


class ToolForbidden(ValueError):
    """A conversation names a tool its user may not use (403)."""


class ToolDescriptor(msgspec.Struct, frozen=True, kw_only=True):
    """A tool as ``GET /v1/tools`` shows it."""

    name: str
    description: str
    input_schema: dict[str, Any]
    kind: Kind
    source: str  # builtin | python | mcp:SERVER | config
    effect: Effect
    approval: bool
    available: bool = True
    detail: str | msgspec.UnsetType = msgspec.UNSET  # why it is unavailable


class ToolContext(msgspec.Struct, frozen=True, kw_only=True):
    """What a running tool may know about its call (``turnlog.ToolContext``).

    ``idempotency_key`` is the same for every run of one call (it is derived from the turn
    and the call id), so a tool with side effects can make a repeat harmless."""

    user: str
    conversation_id: str
    message_id: str
    tool_call_id: str
    idempotency_key: str


class ToolOutput(msgspec.Struct, frozen=True):
    """A tool's result text; ``is_error`` when the model should read it as a failure."""

    content: str
    is_error: bool = False


# Told of a running call's progress: (progress, total or None, message or None).
Progress = Callable[[float, float | None, str | None], None]


# How a server tool runs: (arguments, context, progress) -> output. A runner turns every
# failure it knows into an error output; the executor catches the rest.
Runner = Callable[[Any, ToolContext, Progress], Awaitable[ToolOutput]]


@dataclass(frozen=True)
class Tool:
    """One tool: its descriptor, and for a server tool how to run it."""

    descriptor: ToolDescriptor
    timeout_s: float
    run: Runner | None = None  # None: the client or the user answers

    @property
    def name(self) -> str:
        return self.descriptor.name

    def spec(self) -> ToolSpec:
        """The tool as a provider adapter sends it to a model."""
        d = self.descriptor
        return ToolSpec(
            name=d.name,
            description=d.description,
            parameters=d.input_schema,
            interactive=d.kind != "server",
        )


def needs_approval(effect: Effect, *policies: Approval | None) -> bool:
    """Whether each call waits for the user's yes: the most specific policy set wins."""
    policy = next((p for p in policies if p is not None), "never")
    return policy == "always" or (policy == "side_effect" and effect == "side_effect")


def error_output(text: str) -> ToolOutput:
    return ToolOutput(text if text.startswith("error:") else f"error: {text}", is_error=True)


def _builtins(config: ToolsConfig, now: Callable[[], datetime]) -> list[Tool]:
    from turnlog.generation.tools import run_server_tool

    async def clock(arguments: Any, ctx: ToolContext, progress: Progress) -> ToolOutput:
        text = run_server_tool(CLOCK_TOOL.name, arguments, now())
        return ToolOutput(text, is_error=text.startswith("error:"))

    return [
        Tool(
            ToolDescriptor(
                name=CLOCK_TOOL.name,
                description=CLOCK_TOOL.description,
                input_schema=CLOCK_TOOL.parameters,
                kind="server",
                source="builtin",
                effect="read_only",
                approval=needs_approval("read_only", config.approval),
            ),
            timeout_s=config.timeout_s,
            run=clock,
        ),
        Tool(
            ToolDescriptor(
                name=ASK_USER_TOOL.name,
                description=ASK_USER_TOOL.description,
                input_schema=ASK_USER_TOOL.parameters,
                kind="interactive",
                source="builtin",
                effect="read_only",
                approval=False,  # the user answers it anyway
            ),
            timeout_s=config.timeout_s,
        ),
    ]


def client_tool(name: str, c: ClientToolConfig, config: ToolsConfig) -> Tool:
    return Tool(
        ToolDescriptor(
            name=name,
            description=c.description,
            input_schema=c.input_schema,
            kind="client",
            source="config",
            effect="side_effect",
            approval=needs_approval("side_effect", c.approval, config.approval),
        ),
        timeout_s=config.timeout_s,
    )


class DynamicSource(Protocol):
    """Tools that come and go (an MCP manager): listed anew on each read."""

    def tools(self) -> Sequence[Tool]: ...

    def servers(self) -> Iterable[str]: ...

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None: ...


class ToolRegistry:
    """Every tool this server offers, and who may use which."""

    def __init__(
        self,
        config: ToolsConfig,
        *,
        python: Sequence[Tool] = (),
        dynamic: DynamicSource | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        from datetime import UTC

        self.config = config
        self.dynamic = dynamic
        clock = now or (lambda: datetime.now(UTC))
        static: dict[str, Tool] = {}
        clients = [client_tool(n, c, config) for n, c in config.client_tools.items()]
        for tool in [*_builtins(config, clock), *python, *clients]:
            name = tool.name
            if not TOOL_NAME.match(name):
                raise ValueError(
                    f"tool name {name!r} ({tool.descriptor.source}) is not one every provider"
                    f" accepts: {TOOL_NAME.pattern}"
                )
            if "__" in name:
                raise ValueError(
                    f"tool name {name!r} ({tool.descriptor.source}) holds '__', which is kept"
                    " for MCP tools (SERVER__TOOL)"
                )
            if name in static:
                raise ValueError(
                    f"two tools are named {name!r}: one from {static[name].descriptor.source},"
                    f" one from {tool.descriptor.source}"
                )
            static[name] = tool
        self._static = static

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep the MCP sessions (until cancelled); ``started`` once their tools are listed
        (or their first attempt failed)."""
        if self.dynamic is None:
            task_status.started()
            return
        await self.dynamic.run(task_status=task_status)

    def tools(self) -> dict[str, Tool]:
        """Every tool by name, in a stable order (static first, then MCP servers')."""
        out = dict(self._static)
        for tool in self.dynamic.tools() if self.dynamic is not None else ():
            if tool.name in out:
                log.warning("MCP tool left out: its name is taken", tool=tool.name)
                continue
            out[tool.name] = tool
        return out

    def get(self, name: str) -> Tool | None:
        return self.tools().get(name)

    def allows(self, user: str, name: str) -> bool:
        return self.config.access.allows(user, name)

    def listing(self, user: str) -> list[ToolDescriptor]:
        """The descriptors of the tools ``user`` may use (``GET /v1/tools``)."""
        return [t.descriptor for t in self.tools().values() if self.allows(user, t.name)]

    def check(self, user: str, patterns: Sequence[str]) -> None:
        """Refuse a conversation's ``tools`` that name nothing known (``UnknownTool``) or
        only tools ``user`` may not use (``ToolForbidden``).

        A name under a configured MCP server (``SERVER__…``) is known even while that
        server is unreachable: its tools come back with it."""
        names = list(self.tools())
        servers = tuple(self.dynamic.servers()) if self.dynamic is not None else ()
        for pattern in patterns:
            if not isinstance(pattern, str) or not pattern or len(pattern) > 200:
                raise UnknownTool(f"a tool name or glob must be 1 to 200 characters: {pattern!r}")
            matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            prefix = pattern.partition("__")[0] if "__" in pattern else None
            if not matched and (prefix is None or prefix not in servers):
                raise UnknownTool(
                    f"unknown tool {pattern!r}: no tool here has that name"
                    + (" or matches that glob" if GLOB_CHARS & set(pattern) else "")
                    + " (GET /v1/tools lists the tools you may use)"
                )
            if matched and not any(self.allows(user, n) for n in matched):
                raise ToolForbidden(f"user {user!r} may not use tool {pattern!r}")
            if not matched and not self.allows(user, pattern):
                raise ToolForbidden(f"user {user!r} may not use tool {pattern!r}")

    def select(self, user: str, patterns: Sequence[str] | None) -> list[Tool]:
        """The tools a step of ``user``'s conversation offers the model: those its
        ``patterns`` (None: the configured default) match and the user may use now."""
        chosen = self.config.default if patterns is None else patterns
        return [
            t
            for t in self.tools().values()
            if any(fnmatch.fnmatchcase(t.name, p) for p in chosen) and self.allows(user, t.name)
        ]

    def answered_by_client(self, name: str) -> bool:
        """Whether calls of ``name`` are answered by the user or the client."""
        tool = self.get(name)
        return tool is not None and tool.descriptor.kind != "server"

    def needs_approval(self, name: str) -> bool:
        """Whether calls of server tool ``name`` wait for the user's approval."""
        tool = self.get(name)
        return tool is not None and tool.descriptor.kind == "server" and tool.descriptor.approval

    def interactive(self) -> Mapping[str, Tool]:
        """The tools whose calls a person or a client answers (the turn then waits)."""
        return {n: t for n, t in self.tools().items() if t.descriptor.kind != "server"}


def build_registry(
    config: ToolsConfig, environ: Mapping[str, str] | None = None, **mcp_options: Any
) -> ToolRegistry:
    """The registry of ``config``: built-ins, its Python modules' tools (imported now), its
    client tools and its MCP servers (connected once ``ToolRegistry.run`` runs).
    ``ValueError`` says what is wrong with the configuration."""
    from turnlog.generation.tools.mcp import McpManager
    from turnlog.generation.tools.python import load_modules

    python = load_modules(config.python_modules, config)
    mcp = McpManager(config, environ, **mcp_options) if config.mcp else None
    return ToolRegistry(config, python=python, dynamic=mcp)
