"""Running a completed step's server tool calls (``Engine._complete`` stores their results).

The turn's limits decide how many run (``orchestration.limit_note``); before any runs,
``ToolCallsStarted`` is stored so that recovery can tell a call that may have run; a
side-effect call that had started before its process died is not run again (its result is
INTERRUPTED_CALL); the rest run, concurrently when configured (``execution.run_calls``).
"""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
import structlog

from turnlog.errors import AlreadyStored, DomainError
from turnlog.generation.endings import StepEnds, WriteGaveUp
from turnlog.generation.tools.execution import idempotency_key, run_calls
from turnlog.generation.tools.orchestration import NOT_RUN, ToolPlan, limit_note
from turnlog.generation.tools.registry import Tool, ToolContext
from turnlog.generation.turn import Generation
from turnlog.log import events as ev
from turnlog.metrics import Metrics
from turnlog.models import ToolsConfig

__all__ = ["INTERRUPTED_CALL", "not_again", "run_server_calls"]

log = structlog.get_logger("turnlog.generation")

# The result of a side-effect tool call that had started when its process died (recovery
# does not run it again; the model decides what to do).
INTERRUPTED_CALL = (
    "error: interrupted while running; it may or may not have taken effect; it was not run again"
)


async def run_server_calls(
    gen: Generation, plan: ToolPlan, ends: StepEnds, config: ToolsConfig, metrics: Metrics
) -> tuple[list[str], str | None] | None:
    """Run a completed step's server calls; their results in call order and the note
    that ends the turn when a limit stopped it (None: fenced or the database gone,
    already handled).

    Before any call runs, ``ToolCallsStarted`` is stored (with the stream events not
    yet stored, as a checkpoint): each call, its idempotency key and its tool's effect.
    Recovery relies on it: a call with that record and no result may have run."""
    turn = gen.turn
    runnable, note = limit_note(
        gen.step,
        gen.calls_before,
        len(plan.server),
        config.max_steps,
        config.max_tool_calls,
    )
    calls = plan.server[:runnable]
    batch: list[tuple[Tool | None, str, Any, ToolContext]] = []
    for call in calls:
        tool = gen.tools.get(call.name)
        ctx = ToolContext(
            user=gen.user,
            conversation_id=str(turn.conversation_id),
            message_id=str(turn.message_id),
            tool_call_id=call.id,
            idempotency_key=idempotency_key(str(turn.message_id), call.id),
        )
        batch.append(
            (tool if tool is not None and tool.run else None, call.name, call.arguments, ctx)
        )
    # On recovery, a side-effect call that had started is never run again: the model
    # reads that it may or may not have taken effect (read-only and idempotent calls
    # run again, with the same idempotency key).
    kept = {
        i: INTERRUPTED_CALL
        for i, (_, name, _, ctx) in enumerate(batch)
        if not_again(gen, name, ctx.tool_call_id)
    }
    whole = batch
    batch = [b for i, b in enumerate(batch) if i not in kept]
    if batch:
        async with gen.write_lock:
            try:
                await ends.settle_before_end(gen)
                events, seq = gen.take_pending()
                started = ev.ToolCallsStarted(
                    at=ends.now(),
                    message_id=turn.message_id,
                    attempt=turn.attempt,
                    events=events,
                    stream_seq=seq,
                    from_seq=gen.stored_seq,
                    calls=tuple(
                        ev.StartedCall(
                            tool_call_id=ctx.tool_call_id,
                            tool_name=name,
                            idempotency_key=ctx.idempotency_key,
                            effect=tool.descriptor.effect if tool else "read_only",
                        )
                        for tool, name, _, ctx in batch
                    ),
                )
                with contextlib.suppress(AlreadyStored):
                    await ends.write_end(turn, [started], gen.unacked_since)
            except DomainError:  # fenced, or the conversation is gone
                await ends.finish_from_store(gen)
                return None
            except WriteGaveUp as exc:
                ends.gave_up(gen, exc)
                return None
            gen.stored_seq = seq
            gen.unacked_since = None
        log.info("tool calls started", calls=[name for _, name, _, _ in batch])
    outputs = []
    with anyio.CancelScope() as scope:
        gen.tool_scope = scope
        if gen.end_reason is None:
            outputs = await run_calls(batch, parallel=config.parallel_tool_calls, metrics=metrics)
    gen.tool_scope = None
    ran = iter(o.content for o in outputs)
    results = [kept[i] if i in kept else next(ran, NOT_RUN) for i in range(len(whole))]
    results += [NOT_RUN] * (len(plan.server) - len(results))
    return results, note


def not_again(gen: Generation, name: str, call_id: str) -> bool:
    """Whether a call of a recovered step started before its process died with an
    effect that must not run twice (it then gets INTERRUPTED_CALL as its result)."""
    started = (gen.started_calls or {}).get(call_id)
    if started is None or started.effect != "side_effect":
        return False
    log.warning(
        "not running a side-effect tool call again after a crash",
        tool=name,
        tool_call_id=call_id,
        idempotency_key=started.idempotency_key,
    )
    return True
