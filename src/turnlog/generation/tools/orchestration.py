"""Tools the server offers models, and the rule for what a completed step's calls lead to.

``clock`` runs here; ``ask_user`` is answered by the user. When a step completes with tool
calls (:func:`plan_tools`): the server runs its own calls at once and stores each result as
a tool row after the step; the next step starts in the same write unless a call waits for
the user, whose answer starts it later (``Chat.tool_result``). Pure: the engine supplies the
time and the seq, and writes what :func:`tool_rows` returns.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
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


def plan_tools(blocks: Sequence[Block]) -> ToolPlan:
    """Split a completed step's tool calls into the server's and the user's."""
    calls = [b for b in blocks if isinstance(b, ToolCallBlock)]
    return ToolPlan(
        server=tuple(c for c in calls if c.name not in INTERACTIVE),
        awaiting=tuple(c.id for c in calls if c.name in INTERACTIVE),
    )


def tool_rows(
    turn: Turn, plan: ToolPlan, next_seq: int, now: datetime
) -> tuple[list[ev.DomainEvent], Turn | None]:
    """The events that store the server calls' results as rows from ``next_seq`` on, and,
    when the server ran calls and none waits for the user, the next step's start and turn
    (None: no next step now)."""
    rows: list[ev.DomainEvent] = []
    for call in plan.server:
        rows.append(
            ev.ToolResultRecorded(
                at=now,
                message_id=uuid.uuid4(),
                seq=next_seq,
                reply_to=turn.message_id,
                tool_call_id=call.id,
                tool_name=call.name,
                content=run_server_tool(call.name, call.arguments, now),
            )
        )
        next_seq += 1
    if not plan.server or plan.awaiting:
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
