"""The generation engine: runs assistant turns inside the app's task group.

One :class:`Generation` per generating row (``turn.py``). The engine runs a turn's steps
(:meth:`Engine._run_steps` -> :meth:`Engine._run_step` -> ``step.stream_with_retries`` ->
``step._stream_once``): each step streams into the row's live stream (every subscriber sees
each event as it is published), the :class:`Checkpointer` (``checkpoints.py``) stores the
coalesced new events every ``TURNLOG_CHECKPOINT_S`` (only when something changed), and the
step's end is stored in one event: completed (:meth:`Engine._complete`, with the server tool
results, run by ``tools/running.py``, and the next step's row, in the same transaction), or
failed, aborted (cancel), interrupted or handed over (shutdown): those writes, their retries
and fencing are :class:`StepEnds` (``endings.py``). Every write names the generation's attempt
id, so once anyone else has ended the row the store rejects it (``Fenced``) and the
generation stops.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup
from turnlog_reducer import Done, TextDelta

from turnlog import aio
from turnlog.config import Settings
from turnlog.errors import (
    DomainError,
    Fenced,
)
from turnlog.generation.checkpoints import Checkpointer
from turnlog.generation.endings import StepEnds, WriteGaveUp
from turnlog.generation.history import build_request
from turnlog.generation.step import scrub, stream_with_retries
from turnlog.generation.tools.orchestration import (
    plan_tools,
    tool_rows,
    turn_so_far,
)
from turnlog.generation.tools.registry import ToolRegistry
from turnlog.generation.tools.running import INTERRUPTED_CALL, run_server_calls
from turnlog.generation.turn import Clock, EndReason, Generation, Turn, utcnow
from turnlog.log import events as ev
from turnlog.log.pool import DatabaseUnavailable
from turnlog.log.projection import ConversationRecord, MessageRecord
from turnlog.log.store import Store
from turnlog.metrics import Metrics, provider_and_model
from turnlog.product import agents, cache
from turnlog.product.cache import ResponseCache
from turnlog.providers import get_provider
from turnlog.providers.base import ModelRequest, Provider, ProviderError, StepEnd, UnknownModel
from turnlog.streams import StreamRegistry

__all__ = [
    "INTERRUPTED_CALL",
    "EndReason",
    "Engine",
    "Generation",
    "Turn",
    "WriteGaveUp",
    "utcnow",
]

log = structlog.get_logger("turnlog.generation")

# At shutdown: how long the interrupted generations' last writes may take after the grace
# period, and after a second signal (a forced stop).
SHUTDOWN_WRITE_S = 2.0
FORCED_WRITE_S = 1.0

ProviderFor = Callable[[str, Settings], tuple[Provider, str]]


class Engine:
    """Starts, runs, cancels and drains generations."""

    def __init__(
        self,
        store: Store,
        registry: StreamRegistry,
        settings: Settings,
        *,
        instance_id: uuid.UUID,
        now: Clock = utcnow,
        provider_for: ProviderFor = get_provider,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        tools: ToolRegistry | None = None,
    ) -> None:
        """``now``: the wall clock of the stored events; ``clock``: the checkpointer's
        monotonic clock (a test moves it on to make unstored events late); ``tools``: the
        tools offered (default: the built-ins and the configured client tools)."""
        self.store = store
        self.registry = registry
        self.settings = settings
        self.instance_id = instance_id
        self.now = now
        self.provider_for = provider_for
        self.metrics = metrics or Metrics()
        self.response_cache: ResponseCache | None = None  # set by the app when configured
        self.tools = tools or ToolRegistry(settings.models.tools, now=now)
        self.draining = False
        # Set once a drain stops what still runs: why (a next step started then stops too).
        self._stop_reason: EndReason | None = None
        self._hurried = False
        self._tg: TaskGroup | None = None
        self._running: dict[uuid.UUID, Generation] = {}
        self.checkpoints = Checkpointer(
            store, settings, self._running, now=now, metrics=self.metrics, clock=clock
        )
        # Every write that ends a step (and the drain's deadline for them).
        self.ends = StepEnds(store, self.checkpoints, instance_id=instance_id, now=now)
        # Set (and replaced) whenever a generation ends; drain waits on it. (asyncio's, as
        # Generation.finished: one is made per generation.)
        self._ended = asyncio.Event()

    def bind(self, tg: TaskGroup) -> None:
        """Run generations (and their checkpoints) in ``tg`` (the app lifespan's group)."""
        self._tg = tg
        self.checkpoints.bind(tg)

    # -- what the rest of the server asks --------------------------------------------------

    def running(self, message_id: uuid.UUID) -> Generation | None:
        return self._running.get(message_id)

    def running_ids(self) -> list[uuid.UUID]:
        return list(self._running)

    def __len__(self) -> int:
        return len(self._running)

    def streams_here(self, message_id: uuid.UUID) -> Generation | None:
        """The generation of ``message_id`` if it runs here with nothing ending it and its
        owner known: a stream request then needs no read of the row or the conversation
        (the answers are the ones the reads would give)."""
        gen = self._running.get(message_id)
        return gen if gen is not None and gen.streams_here() else None

    def overloaded(self) -> float | None:
        """Seconds to wait before starting a generation, or None when one may start now."""
        return self.checkpoints.overloaded()

    def oldest_unstored_s(self) -> float:
        """Age in seconds of the oldest published event not yet stored (0 if none)."""
        return self.checkpoints.oldest_unstored_s()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, turn: Turn, conversation: ConversationRecord | None = None) -> Generation:
        """Open the row's live stream now (so it exists before the HTTP answer) and run the
        turn in the background task group. ``conversation``: the conversation as the append
        that started the turn left it, which saves the generation reading it again."""
        return self._launch(Generation(turn, self.registry.open(turn.message_id), conversation))

    def resume(
        self,
        turn: Turn,
        row: MessageRecord,
        conversation: ConversationRecord | None = None,
        *,
        started_calls: tuple[ev.StartedCall, ...] | None = None,
    ) -> Generation:
        """Continue ``row``, taken over (``turn.attempt``) after the process that ran it
        died: its live stream starts at the stored blocks, every init followed by a
        ``recovering`` frame, and the step asks the model to go on from there; or, when its
        server calls had ``started_calls`` (the model's part was done), it runs the calls
        again that may run again and stores the step's end."""
        stream = self.registry.open(
            turn.message_id,
            blocks=row.message.blocks,
            seq=row.stream_seq,
            recovering=turn.recovery,
        )
        gen = Generation(turn, stream, conversation)
        gen.stored_seq = row.stream_seq
        gen.recovered_from = row.message.updated_at
        if started_calls is not None:
            gen.started_calls = {c.tool_call_id: c for c in started_calls}
        return self._launch(gen)

    def _launch(self, gen: Generation) -> Generation:
        if self._tg is None:
            raise RuntimeError("engine is not bound to a task group")
        self.checkpoints.join(gen)
        self._running[gen.turn.message_id] = gen
        self._tg.start_soon(self._run_steps, gen, name=f"generation {gen.turn.message_id}")
        return gen

    async def cancel(self, message_id: uuid.UUID) -> bool:
        """Abort a generation running here and wait until its end is stored. False if it
        does not run in this process."""
        gen = self._running.get(message_id)
        if gen is None:
            return False
        gen.cancel("aborted")
        await gen.finished.wait()
        return True

    def cancel_conversation(self, conversation_id: uuid.UUID) -> list[uuid.UUID]:
        """Abort every generation of ``conversation_id`` running here (it was deleted),
        without waiting for their ends; the ids of those cancelled."""
        cancelled = []
        for gen in list(self._running.values()):
            if gen.turn.conversation_id == conversation_id:
                gen.cancel("aborted")
                cancelled.append(gen.turn.message_id)
        return cancelled

    async def drain(self, grace_s: float) -> None:
        """Stop taking turns, let running ones finish for ``grace_s``, then interrupt the
        rest and wait until their checkpoints are stored, or until the writes give up
        (SHUTDOWN_WRITE_S after the grace: a database that is gone does not hold the
        shutdown up). :meth:`hurry` cuts the grace short."""
        self.draining = True
        grace_s = 0.0 if self._hurried else grace_s
        self.ends.stop_by = min(
            self.ends.stop_by, anyio.current_time() + grace_s + SHUTDOWN_WRITE_S
        )
        with anyio.move_on_after(grace_s):
            while self._running and not self._hurried:
                await self._ended.wait()
        # What is left is handed over (its checkpoint stored, the row left generating for
        # another instance or the next start to continue), or with recovery off, interrupted.
        self._stop_reason = "handed_over" if self.settings.recovery == "continue" else "interrupted"
        while self._running:
            for gen in list(self._running.values()):
                gen.cancel(self._stop_reason)
            await self._ended.wait()

    def hurry(self) -> None:
        """A forced stop (a second signal): end the grace now, and give the interrupted
        generations' last writes only FORCED_WRITE_S; their subscribers still get done."""
        self._hurried = True
        self.ends.stop_by = min(self.ends.stop_by, anyio.current_time() + FORCED_WRITE_S)
        self._wake_drain()

    # -- running a turn's steps ------------------------------------------------------------

    async def _run_steps(self, first: Generation) -> None:
        """Run ``first``'s step and each next step that its server tools start."""
        gen: Generation | None = first
        while gen is not None:
            structlog.contextvars.bind_contextvars(
                conversation_id=str(gen.turn.conversation_id),
                message_id=str(gen.turn.message_id),
            )
            current = gen
            m = self.metrics
            provider, model = provider_and_model(current.turn.model)
            m.child(m.generations_started, provider, model).inc()
            try:
                gen = await self._run_step(current)
            except DomainError as exc:
                # The conversation was deleted or the row ended elsewhere meanwhile.
                log.info("generation stopped", reason=str(exc))
                with anyio.CancelScope(shield=True):
                    await self.ends.finish_from_store(current)
                gen = None
            except DatabaseUnavailable as exc:
                # Reading what the step needs failed: the database is gone. The row is
                # repaired as an orphan later; the subscribers hear it ended now.
                self.ends.gave_up(current, WriteGaveUp(str(exc)))
                gen = None
            except Exception:
                # A bug in one generation must not take the others (or the app) down: log
                # it, and end the row as failed if we still can.
                log.exception("generation crashed")
                await self.ends.end_after_crash(current)
                gen = None
            finally:
                status = current.stream.status or (
                    "handed_over" if current.end_reason == "handed_over" else "interrupted"
                )
                self._count_recovery(current, status)
                m.child(m.generations_ended, provider, model, status).inc()
                m.child(m.generation_duration, provider, model, status).observe(
                    time.monotonic() - current.started_at
                )

    async def _run_step(self, gen: Generation) -> Generation | None:
        """Run one step of ``gen`` and store its end; return the next step's generation
        after server tools."""
        try:
            try:
                request, provider = await self._request(gen, gen.conversation)
                gen.conversation = None
            except UnknownModel as exc:
                with aio.cancel_scope(shield=True):
                    await self.ends.end(gen, "error", error=str(exc))
                return None
            step_end: StepEnd | None = None
            error: str | None = None
            with gen.scope:
                # Its checkpoints are written by the engine's one checkpointer, batched.
                self.checkpoints.ensure_running()
                try:
                    if gen.started_calls is not None:
                        # Recovered after its server calls started: nothing to ask the model.
                        step_end = StepEnd("tool_calls")
                    else:
                        step_end = await stream_with_retries(
                            gen, provider, request, self.settings, self.metrics
                        )
                except ProviderError as exc:
                    error = scrub(str(exc) or type(exc).__name__, self.settings.models.secrets())
            with aio.cancel_scope(shield=True):
                if gen.fenced:
                    await self.ends.finish_from_store(gen)
                    return None
                if gen.end_reason == "handed_over":
                    await self.ends.hand_over(gen)
                    return None
                if gen.end_reason is not None:
                    await self.ends.end(gen, gen.end_reason)
                    return None
                if error is not None or step_end is None:
                    await self.ends.end(gen, "error", error=error or "provider gave no result")
                    return None
                return await self._complete(gen, step_end)
            return None  # not reached: the shielded scope above is never cancelled
        finally:
            self._forget(gen)

    async def _request(
        self, gen: Generation, conv: ConversationRecord | None = None
    ) -> tuple[ModelRequest, Provider]:
        turn = gen.turn
        # The system prompt and options cannot change while the turn runs (the conversation
        # is busy), so the row its start was appended with is as good as a fresh read.
        if conv is None:
            conv = await self.store.get_conversation(turn.conversation_id)
        if conv is None:
            raise Fenced(f"conversation {turn.conversation_id} is gone")
        # The rows as of the version the turn's start was appended at, when this store wrote
        # that version and knows them exactly (no round trip); else read them.
        rows = self.store.history(turn.conversation_id, conv.conversation.version)
        if rows is None:
            rows = await self.store.list_messages(turn.conversation_id)
        provider, name = self.provider_for(turn.model, self.settings)
        # The agent's system prompt and options as configured now, under the conversation's.
        conv = agents.effective(conv, self.settings.models)
        # The tools this step offers: the conversation's (else its agent's, else the
        # default) that its owner may use now; the turn's limits count what came before.
        gen.user = conv.owner
        gen.tools = {t.name: t for t in self.tools.select(conv.owner, self._patterns(conv))}
        gen.step, gen.calls_before = turn_so_far(rows, turn)
        specs = tuple(t.spec() for t in gen.tools.values())
        request = build_request(turn, conv, rows, model=name, tools=specs)
        # The response cache (when configured) answers an identical first step itself; not
        # a regeneration (a new version asks for another answer) nor a continued turn.
        mine = next((r for r in reversed(rows) if r.message.id == turn.message_id), None)
        fresh = turn.recovery == 0 and (mine is None or mine.message.version == 1)
        return cache.prepare(
            self.response_cache if fresh else None,
            provider,
            request,
            owner=conv.owner,
            model=turn.model,
        )

    def _patterns(self, conv: ConversationRecord) -> tuple[str, ...] | None:
        c = conv.conversation
        if c.tools is not None:
            return c.tools
        agent = self.settings.models.product.agents.get(c.agent) if c.agent else None
        return tuple(agent.tools) if agent is not None and agent.tools is not None else None

    # -- a completed step (the other step ends: endings.py) --------------------------------

    async def _complete(self, gen: Generation, step_end: StepEnd) -> Generation | None:
        """Store a completed step with its server tools' results and the next step's row
        (one write); return the next step's generation, if one starts."""
        turn = gen.turn
        self.ends.close_open_calls(gen)
        # Answered later: by the user (ask_user), the client (client tools), or by the
        # user's yes or no (tools that need approval: their calls are stored with their
        # arguments and run only once approved, with exactly those arguments).
        answered = [
            n
            for n, t in gen.tools.items()
            if t.descriptor.kind != "server" or t.descriptor.approval
        ]
        plan = plan_tools(gen.stream.blocks, answered)
        results: list[str] | None = None
        note: str | None = None
        if plan.server:
            ran = await run_server_calls(gen, plan, self.ends, self.tools.config, self.metrics)
            if ran is None:
                return None  # fenced, or the database gone: handled
            if gen.end_reason == "handed_over":
                # Left generating: its started calls are the successor's to judge.
                await self.ends.hand_over(gen)
                return None
            if gen.end_reason is not None:
                await self.ends.end(gen, gen.end_reason)
                return None
            results, note = ran
            if note is not None:
                # The turn ends here (a limit): say so in the answer itself.
                gen.stream.publish(TextDelta(note))
                gen.pending.append(TextDelta(note))
        now = self.now()
        async with gen.write_lock:
            try:
                await self.ends.settle_before_end(gen)
            except DomainError:  # fenced, or the conversation is gone
                await self.ends.finish_from_store(gen)
                return None
            except WriteGaveUp as exc:
                self.ends.gave_up(gen, exc)
                return None
            events, seq = gen.take_pending()
            batch: list[ev.DomainEvent] = [
                ev.StepCompleted(
                    at=now,
                    message_id=turn.message_id,
                    attempt=turn.attempt,
                    events=events,
                    stream_seq=seq,
                    from_seq=gen.stored_seq,
                    finish_reason=step_end.finish_reason,
                    usage=step_end.usage,
                    awaiting_user=plan.awaiting,
                )
            ]
            next_turn: Turn | None = None
            if plan.server:
                # Only tool results need the next seq. Otherwise no read: a conversation
                # deleted meanwhile makes the append itself fail (a DomainError, as here).
                try:
                    conv = await self.store.get_conversation(turn.conversation_id)
                except DatabaseUnavailable as exc:
                    self.ends.gave_up(gen, WriteGaveUp(str(exc)))
                    return None
                if conv is None:
                    raise Fenced(f"conversation {turn.conversation_id} is gone")
                rows, next_turn = tool_rows(
                    turn, plan, conv.last_seq + 1, now, results, stop=note is not None
                )
                batch.extend(rows)
            try:
                await self.ends.write_end(turn, batch, gen.unacked_since)
            except WriteGaveUp as exc:
                self.ends.gave_up(gen, exc)
                return None
            except Fenced:
                # Refused because the row has ended; but a retry after a lost answer is
                # refused the same way when our own write ended it. The next step's row,
                # whose id only this write knows, tells which.
                landed = next_turn is not None and (
                    await self.store.get_message(next_turn.message_id) is not None
                )
                if not landed:
                    await self.ends.finish_from_store(gen)
                    return None
        nxt = None
        if next_turn is not None:
            nxt = Generation(next_turn, self.registry.open(next_turn.message_id))
            nxt.owner = gen.owner
            self._running[next_turn.message_id] = nxt
            if self._stop_reason is not None:
                nxt.cancel(self._stop_reason)
        self._count_tokens(turn, step_end.usage)
        gen.stream.finish(
            Done(status="completed", finish_reason=step_end.finish_reason, usage=step_end.usage)
        )
        return nxt

    def _count_recovery(self, gen: Generation, status: str) -> None:
        """A continued row's step ended: count a completed one, and when its first continued
        event came after its last stored write."""
        if not gen.turn.recovery:
            return
        m = self.metrics
        if status == "completed":
            m.child(m.recoveries, "succeeded", "").inc()
        if gen.recovered_from is not None and gen.first_at is not None:
            first = self.now().timestamp() - (time.monotonic() - gen.first_at)
            m.recovery_first_delta.observe(max(0.0, first - gen.recovered_from.timestamp()))

    def _count_tokens(self, turn: Turn, usage: dict[str, Any] | None) -> None:
        provider, model = provider_and_model(turn.model)
        for key, direction in (("input_tokens", "in"), ("output_tokens", "out")):
            n = (usage or {}).get(key)
            if isinstance(n, int) and n > 0:
                self.metrics.child(self.metrics.tokens, provider, model, direction).inc(n)

    def _forget(self, gen: Generation) -> None:
        if not gen.finished.is_set():
            gen.finished.set()
        if self._running.get(gen.turn.message_id) is gen:
            del self._running[gen.turn.message_id]
        self._wake_drain()

    def _wake_drain(self) -> None:
        ended, self._ended = self._ended, asyncio.Event()
        ended.set()
