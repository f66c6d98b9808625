"""Python tools for the crash tests: each run is counted in $RUNS_FILE (one line per run),
and a run the test kills the server during takes very long."""

from __future__ import annotations

import os

import anyio

import turnlog


def count_run(name: str, key: str) -> int:
    """Note one run of ``name`` for ``key``; how many runs it has now."""
    path = os.environ["RUNS_FILE"]
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{name} {key}\n")
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.split() == [name, key])


@turnlog.tool(effect="side_effect")
async def refund(order: str) -> str:
    """Refund an order (a side effect: it must never run twice)."""
    count_run("refund", order)
    await anyio.sleep(120)
    return f"refunded {order}"


@turnlog.tool(effect="read_only")
async def order_status(order: str) -> str:
    """Look an order up (read-only); its first run takes very long."""
    if count_run("order_status", order) == 1:
        await anyio.sleep(120)
    return f"{order}: shipped"


@turnlog.tool(effect="side_effect", approval="always")
async def wire_money(to: str) -> str:
    """Send money (a side effect that waits for the user's yes); it takes very long."""
    count_run("wire_money", to)
    await anyio.sleep(120)
    return f"wired to {to}"
