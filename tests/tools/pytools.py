"""Python tools for the tests (``[python_tools] modules = ["tests.tools.pytools"]``)."""

from __future__ import annotations

import threading
import time
from typing import Annotated, Literal

import anyio
import anyio.lowlevel
import msgspec

import turnlog

CALLS: list[tuple[str, str]] = []


class Point(msgspec.Struct):
    x: int
    y: int


@turnlog.tool(effect="read_only")
def weather(
    city: Annotated[str, msgspec.Meta(description="A city name")], unit: Literal["C", "F"] = "C"
) -> str:
    """The weather in a city."""
    return f"sunny in {city}, 21 {unit} (thread {threading.current_thread().name})"


@turnlog.tool(effect="side_effect", approval="always")
async def create_ticket(
    title: str, ctx: turnlog.ToolContext, priority: Annotated[int, msgspec.Meta(ge=1, le=5)] = 3
) -> dict[str, object]:
    """Open a ticket in the tracker."""
    CALLS.append((ctx.idempotency_key, title))
    await anyio.lowlevel.checkpoint()
    return {"ticket": len(CALLS), "title": title, "priority": priority, "user": ctx.user}


@turnlog.tool(effect="read_only")
def distance(a: Point, b: Point) -> float:
    """The distance between two points."""
    return float(((a.x - b.x) ** 2 + (a.y - b.y) ** 2) ** 0.5)


@turnlog.tool(effect="idempotent", timeout_s=0.3)
def sleepy(seconds: float) -> str:
    """Blocks its thread."""
    time.sleep(seconds)
    return "awake"


@turnlog.tool(effect="read_only")
def broken() -> str:
    """Always raises."""
    raise RuntimeError("the database is on fire")


@turnlog.tool(effect="read_only")
def huge() -> str:
    """A 10 MB answer."""
    return "y" * 10_000_000


def not_a_tool() -> None:
    """Not marked: never offered."""
