"""Tools the server offers models: ``clock`` runs here, ``ask_user`` is answered by the user."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from turnlog.providers.base import ASK_USER_TOOL, CLOCK_TOOL, ToolSpec

TOOLS: tuple[ToolSpec, ...] = (CLOCK_TOOL, ASK_USER_TOOL)
INTERACTIVE = frozenset(t.name for t in TOOLS if t.interactive)


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
