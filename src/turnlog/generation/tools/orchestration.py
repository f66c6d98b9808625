"""The rule for what a completed step's tool calls lead to (pure).

When a step completes with tool calls (:func:`plan_tools`): the server runs its own calls
(the tools the step offered whose kind is ``server``, and calls of tools it never offered,
which get an error result) and stores each result as a tool row after the step; the next
step starts in the same write unless a call waits for the user or the client, whose answer
starts it later (``Chat.tool_result``), or the turn reached a limit (:func:`limit_note`).
The engine supplies the time, the seq and the results, and writes what :func:`tool_rows`
returns.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from turnlog_reducer import Block, ToolCallBlock

from turnlog.generation.turn import Turn
from turnlog.log import events as ev
from turnlog.providers.base import ASK_USER_TOOL, CLOCK_TOOL, ToolSpec

__all__ = ["INTERACTIVE", "TOOLS", "ToolPlan", "plan_tools", "run_server_tool", "tool_rows"]

TOOLS: tuple[ToolSpec, ...] = (CLOCK_TOOL, ASK_USER_TOOL)
INTERACTIVE = frozenset(t.name for t in TOOLS if t.interactive)


class ToolPlan(msgspec.Struct, frozen=True):
    """What a completed step's tool calls ask for."""

    # Calls the server runs now, in the order the model made them.
    server: tuple[ToolCallBlock, ...]
    # The ids of the calls the user answers (the step's row waits for them).
    awaiting: tuple[str, ...]


def plan_tools(blocks: Sequence[Block], answered: Collection[str] = INTERACTIVE) -> ToolPlan:
    """Split a completed step's tool calls into the server's and those ``answered`` by the
    user or the client (the names of the interactive and client tools offered)."""
    calls = [b for b in blocks if isinstance(b, ToolCallBlock)]
    return ToolPlan(
        server=tuple(c for c in calls if c.name not in answered),
        awaiting=tuple(c.id for c in calls if c.name in answered),
    )


def limit_note(
    step: int, calls_before: int, calls: int, max_steps: int, max_tool_calls: int
) -> tuple[int, str | None]:
    """How many of a step's ``calls`` server calls may run, and the text that ends the turn
    when a limit stops it (None: the turn goes on). ``step`` counts from 1; ``calls_before``
    is the number of tool calls earlier steps of the turn ran."""
    if step >= max_steps:
        return 0, (
            f"\n\n[The turn stopped here: it reached its limit of {max_steps} steps"
            " (max_steps); the tool calls above were not run.]"
        )
    allowed = max(0, max_tool_calls - calls_before)
    if calls > allowed:
        return allowed, (
            f"\n\n[The turn stopped here: it reached its limit of {max_tool_calls} tool calls"
            f" (max_tool_calls); {calls - allowed} of the calls above were not run.]"
        )
    return calls, None


def turn_so_far(rows: Sequence[Any], turn: Turn) -> tuple[int, int]:
    """This step's number in its turn (from 1) and how many tool results the turn's
    earlier steps stored, from the conversation's rows (``MessageRecord``s)."""
    if turn.reply_to is None:
        return 1, 0
    steps = {
        r.message.id
        for r in rows
        if r.message.role == "assistant"
        and r.message.reply_to == turn.reply_to
        and r.message.seq < turn.seq
    }
    results = sum(1 for r in rows if r.message.role == "tool" and r.message.reply_to in steps)
    return len(steps) + 1, results


NOT_RUN = "error: not run: the turn reached its limit (see the note at the end of the answer)"


def tool_rows(
    turn: Turn,
    plan: ToolPlan,
    next_seq: int,
    now: datetime,
    results: Sequence[str] | None = None,
    *,
    stop: bool = False,
) -> tuple[list[ev.DomainEvent], Turn | None]:
    """The events that store the server calls' results (``results``, in call order; None:
    run the built-in ``clock`` here) as rows from ``next_seq`` on, and, when the server ran
    calls, none waits for the user and no limit ``stop``s the turn, the next step's start
    and turn (None: no next step now)."""
    rows: list[ev.DomainEvent] = []
    for i, call in enumerate(plan.server):
        rows.append(
            ev.ToolResultRecorded(
                at=now,
                message_id=uuid.uuid4(),
                seq=next_seq,
                reply_to=turn.message_id,
                tool_call_id=call.id,
                tool_name=call.name,
                content=(
                    run_server_tool(call.name, call.arguments, now)
                    if results is None
                    else results[i]
                ),
            )
        )
        next_seq += 1
    if not plan.server or plan.awaiting or stop:
        return rows, None
    nxt = turn.next_step(next_seq)
    rows.append(nxt.started(now))
    return rows, nxt


def run_server_tool(name: str, arguments: Any, now: datetime) -> str:
    """The result text of server tool ``name``; errors are results too, so the model can
    read them and carry on."""
    if name != CLOCK_TOOL.name:
        return f"error: unknown tool {name!r}"
    tz_name = arguments.get("timezone") if isinstance(arguments, dict) else None
    if tz_name is None:
        return now.isoformat()
    if not isinstance(tz_name, str):
        return f"error: timezone must be a string, got {type(tz_name).__name__}"
    try:
        return now.astimezone(ZoneInfo(tz_name)).isoformat()
    except (ZoneInfoNotFoundError, ValueError):
        return f"error: unknown time zone {tz_name!r}"
