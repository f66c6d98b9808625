"""Running server tool calls: limits, timeouts, and every failure as a result the model reads.

:func:`run_tool` runs one call under its tool's ``timeout_s``, cuts a result over
``MAX_RESULT_CHARS`` with a note, counts it (calls, errors, duration per tool) and turns any
exception into an error result: a tool can never fail a turn. :func:`run_calls` runs one
step's calls concurrently, at most ``parallel`` at once, and returns the results in call
order (the order the model made them, which is the order they are stored).

The idempotency key of a call is derived from the turn and the call id
(:func:`idempotency_key`): the same for every run of that call, different for any other.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from turnlog.generation.tools.registry import (
    Progress,
    Tool,
    ToolContext,
    ToolOutput,
    error_output,
)

if TYPE_CHECKING:
    from turnlog.metrics import Metrics

log = structlog.get_logger("turnlog.tools")

MAX_RESULT_CHARS = 100_000


def idempotency_key(turn_id: str, call_id: str) -> str:
    """The key of one tool call: a hash of the turn (its first assistant row) and the call id."""
    return "tk_" + hashlib.sha256(f"{turn_id}\x00{call_id}".encode()).hexdigest()[:32]


def cut(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    """``text``, or its first ``limit`` characters and a note saying it was cut."""
    if len(text) <= limit:
        return text
    return (
        text[:limit]
        + f"\n[result cut: the tool returned {len(text)} characters;"
        + f" only the first {limit} are shown]"
    )


def _no_progress(progress: float, total: float | None, message: str | None) -> None:
    return None


async def run_tool(
    tool: Tool,
    arguments: Any,
    ctx: ToolContext,
    *,
    metrics: Metrics | None = None,
    progress: Progress | None = None,
) -> ToolOutput:
    """Run one call of server tool ``tool``; never raises (except cancellation)."""
    name = tool.name
    started = time.monotonic()
    bound = log.bind(tool=name, tool_call_id=ctx.tool_call_id)

    def on_progress(done: float, total: float | None, message: str | None) -> None:
        bound.info("tool progress", progress=done, total=total, message=message)
        (progress or _no_progress)(done, total, message)

    out: ToolOutput
    if tool.run is None:
        out = error_output(f"tool {name!r} is not run by the server")
    elif not tool.descriptor.available:
        out = error_output(f"tool {name!r} is unavailable now: {tool.descriptor.detail or ''}")
    else:
        result: ToolOutput | None = None
        try:
            with anyio.move_on_after(tool.timeout_s):
                result = await tool.run(arguments, ctx, on_progress)
        except Exception as exc:
            bound.warning("tool raised", error=f"{type(exc).__name__}: {exc}")
            result = error_output(f"the tool raised {type(exc).__name__}: {exc}")
        out = result or error_output(
            f"the tool did not answer within its timeout of {tool.timeout_s:g} s"
        )
    out = ToolOutput(cut(out.content), out.is_error)
    seconds = time.monotonic() - started
    if metrics is not None:
        metrics.child(metrics.tool_calls, name).inc()
        metrics.child(metrics.tool_duration, name).observe(seconds)
        if out.is_error:
            metrics.child(metrics.tool_errors, name).inc()
    bound.info("tool call ended", error=out.is_error, seconds=round(seconds, 3))
    return out


async def run_calls(
    calls: Sequence[tuple[Tool | None, str, Any, ToolContext]],
    *,
    parallel: int,
    metrics: Metrics | None = None,
) -> list[ToolOutput]:
    """Run ``(tool, name, arguments, context)`` calls, at most ``parallel`` at once; the
    outputs in call order. A call of an unknown tool (``None``) is an error result."""
    outputs: list[ToolOutput | None] = [None] * len(calls)
    limiter = anyio.CapacityLimiter(max(1, parallel))

    async def one(i: int, tool: Tool | None, name: str, arguments: Any, ctx: ToolContext) -> None:
        async with limiter:
            if tool is None:
                outputs[i] = error_output(f"unknown tool {name!r}: it is not offered here")
            else:
                outputs[i] = await run_tool(tool, arguments, ctx, metrics=metrics)

    async with anyio.create_task_group() as tg:
        for i, (tool, name, arguments, ctx) in enumerate(calls):
            tg.start_soon(one, i, tool, name, arguments, ctx)
    return [o if o is not None else error_output("the call produced no result") for o in outputs]
