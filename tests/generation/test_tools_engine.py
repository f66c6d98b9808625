"""Tools in the engine, in process (real PostgreSQL, a function as the model): the turn's
limits, the started record before a tool runs, and the key the tool receives."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from turnlog_reducer import TextBlock, ToolCallReady, ToolCallStarted

import turnlog
from tests.generation.support import in_process, wait_until
from turnlog.generation.tools.execution import idempotency_key
from turnlog.generation.tools.python import make_tool
from turnlog.generation.tools.registry import ToolRegistry
from turnlog.log.store import Store
from turnlog.models import ToolsConfig
from turnlog.providers.base import ModelRequest, StepEnd

pytestmark = pytest.mark.anyio

SEEN: list[tuple[str, str]] = []


@turnlog.tool(effect="side_effect")
def charge(amount: int, ctx: turnlog.ToolContext) -> str:
    """Charge a card (records its idempotency key)."""
    SEEN.append((ctx.tool_call_id, ctx.idempotency_key))
    return f"charged {amount}"


def calls(*names: str) -> Any:
    async def step(request: ModelRequest) -> AsyncIterator[Any]:
        n = sum(1 for m in request.messages if m.role == "assistant")
        for i, name in enumerate(names):
            cid = f"s{n}c{i}"
            yield ToolCallStarted(id=cid, name=name)
            yield ToolCallReady(id=cid, arguments={"amount": 5} if name == "charge" else {})
        yield StepEnd(finish_reason="tool_calls")

    return step


def registry(**config: Any) -> ToolRegistry:
    c = ToolsConfig(default=("clock", "charge"), **config)
    return ToolRegistry(c, python=[make_tool(charge, c)])


async def _run(store: Store, step: Any, tools: ToolRegistry) -> list[Any]:
    async with in_process(store, step, tools=tools) as run:
        cid = await run.conversation()
        await run.send(cid)

        await wait_until(lambda: not run.engine.running_ids() and len(run.provider.requests) > 0)
        await wait_until(lambda: not run.engine.running_ids())
        rows = [r.message for r in await store.list_messages(cid)]
        return [cid, rows, len(run.provider.requests)]


async def test_max_steps_ends_the_turn_with_a_note(store: Store) -> None:
    """A model that calls tools forever: at step max_steps the calls are not run, they get
    an error result, and the answer ends with a note naming the limit."""
    cid, rows, requests = await _run(store, calls("clock"), registry(max_steps=2))
    assert requests == 2
    assert [m.role for m in rows] == ["user", "assistant", "tool", "assistant", "tool"]
    assert rows[2].content
    assert not rows[2].content.startswith("error")
    assert rows[4].content.startswith("error: not run")
    last = rows[3]
    text = "".join(b.text for b in last.blocks if isinstance(b, TextBlock))
    assert "limit of 2 steps (max_steps)" in text
    assert last.status == "completed"
    conv = await store.get_conversation(cid)
    assert conv is not None
    assert conv.conversation.state == "idle"


async def test_max_tool_calls_runs_only_what_the_turn_may(store: Store) -> None:
    """Three calls where the turn may run two: two results, one 'not run', the note."""
    _, rows, requests = await _run(
        store, calls("clock", "clock", "clock"), registry(max_tool_calls=2)
    )
    assert requests == 1
    tools = [m for m in rows if m.role == "tool"]
    assert [t.content.startswith("error: not run") for t in tools] == [False, False, True]
    text = "".join(b.text for b in rows[1].blocks if isinstance(b, TextBlock))
    assert "limit of 2 tool calls (max_tool_calls); 1 of the calls above were not run" in text


async def test_the_started_record_comes_first_and_names_the_key_the_tool_gets(
    store: Store, fresh_db: str
) -> None:
    """tool_calls_started is stored before the results, with the idempotency key the
    tool received and the tool's effect."""
    SEEN.clear()
    cid, rows, _ = await _run(store, calls("charge"), registry(max_steps=2))
    step_id = rows[1].id
    key = idempotency_key(str(step_id), "s0c0")
    assert [("s0c0", key)] == SEEN
    async with await psycopg.AsyncConnection.connect(fresh_db) as conn:
        cur = await conn.execute(
            "SELECT type, data FROM events WHERE conversation_id = %s ORDER BY version", (cid,)
        )
        events = await cur.fetchall()
    types = [t for t, _ in events]
    assert types.index("tool_calls_started") < types.index("step_completed")
    started = next(d for t, d in events if t == "tool_calls_started")
    assert started["calls"] == [
        {
            "tool_call_id": "s0c0",
            "tool_name": "charge",
            "idempotency_key": key,
            "effect": "side_effect",
        }
    ]
