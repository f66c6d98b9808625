"""The generation engine: runs assistant turns inside the app's task group.

One :class:`Generation` per generating row. It streams a provider step into the row's live
stream (every subscriber sees each event as it is published), stores the coalesced new
events every ``TURNLOG_CHECKPOINT_S`` (only when something changed), and stores the step's
end in one event: completed (with server tool results and the next step's row, in the same
transaction), failed, aborted (cancel) or interrupted (shutdown). Every write names the
generation's attempt id, so once anyone else has ended the row the store rejects it
(``Fenced``) and the generation stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
import msgspec
import structlog
from anyio.abc import TaskGroup
from turnlog_reducer import (
    Block,
    Done,
    ReasoningDelta,
    StreamEvent,
    StreamProtocolError,
    TextDelta,
    ToolCallBlock,
    ToolCallDelta,
    ToolCallReady,
    ToolCallStarted,
)

from turnlog import aio
from turnlog.config import Settings
from turnlog.generation.history import build_history
from turnlog.generation.tools import INTERACTIVE, TOOLS, run_server_tool
from turnlog.log import events as ev
from turnlog.log.pool import DatabaseUnavailable, urgently
from turnlog.log.projection import (
    AlreadyStored,
    ConversationRecord,
    DomainError,
    Fenced,
    MessageRecord,
)
from turnlog.log.store import Store
from turnlog.metrics import Metrics, provider_and_model
from turnlog.providers import get_provider
from turnlog.providers.base import ModelRequest, Provider, ProviderError, StepEnd, UnknownModel
from turnlog.streams import LiveStream, StreamRegistry

log = structlog.get_logger("turnlog.generation")

# A retry waits at most this long, whatever the provider's Retry-After asks; a longer ask
# ends the row as failed rather than holding the conversation for minutes.
MAX_RETRY_PAUSE_S = 60.0
# The write that ends a step is retried for this long (the database may restart meanwhile);
# at shutdown only until the drain's deadline. If it never lands the row stays generating,
# its subscribers get `done` (interrupted), and recovery marks it interrupted later, as
# after a crash.
FINAL_WRITE_S = 30.0
# At shutdown: how long the interrupted generations' last writes may take after the grace
# period, and after a second signal (a forced stop).
SHUTDOWN_WRITE_S = 2.0
FORCED_WRITE_S = 1.0

# The durability promise under load (issue 14): every generating row's stored events are
# at most TURNLOG_CHECKPOINT_S + CHECKPOINT_SLACK_S apart. Checkpoints start early by up to
# STAGGER of an interval the first time (spreading rows started together). The server
# refuses new generations (503) for OVERLOAD_HOLD_S intervals (at least 1 s) once at least
# OVERLOAD_MIN_LATE rows, and OVERLOAD_SHARE of those running, hold events older than that.
CHECKPOINT_SLACK_S = 0.25
STAGGER = 0.5
TICK_S = 0.1  # how often the checkpointer looks for due rows (at most a quarter interval)
# A write stores at most CHUNK rows (one transaction), at most WRITES of them at once, so the
# most urgent rows are not held by the commit of hundreds of others (nor by a slow write).
CHUNK = 64
WRITES = 4
# A write starts so that it commits MARGIN_S before the promise runs out: early by as much
# as writes and the event loop's lag lately took beyond the slack (each a decaying
# maximum, x DECAY per sample), at most LEAD_MAX of an interval (each row is written once
# per interval less that: writing earlier costs more writes, which slow the writes down).
MARGIN_S = 0.1
DECAY = 0.9
LEAD_MAX = 0.3
OVERLOAD_MIN_LATE = 2
OVERLOAD_SHARE = 0.1
OVERLOAD_HOLD_S = 2.0

EndReason = Literal["aborted", "interrupted"]
Clock = Callable[[], datetime]
ProviderFor = Callable[[str, Settings], tuple[Provider, str]]


class WriteGaveUp(Exception):
    """A step's final write kept failing (the database is gone) until its deadline."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class Turn(msgspec.Struct, frozen=True, kw_only=True):
    """What the engine needs to run one assistant row (the rest it reads from the store)."""

    conversation_id: uuid.UUID
    message_id: uuid.UUID
    attempt: uuid.UUID
    seq: int
    model: str
    # The user message this turn answers (its per-message options apply to every step).
    reply_to: uuid.UUID | None = None
    # A retry's options: they replace the user message's for every step of this turn.
    options: dict[str, Any] | None = None

    @classmethod
    def new(
        cls, conversation_id: uuid.UUID, seq: int, model: str, reply_to: uuid.UUID | None
    ) -> Turn:
        """A turn for a new assistant row at ``seq``, with fresh message and attempt ids."""
        return cls(
            conversation_id=conversation_id,
            message_id=uuid.uuid4(),
            attempt=uuid.uuid4(),
            seq=seq,
            model=model,
            reply_to=reply_to,
        )

    def next_step(self, seq: int) -> Turn:
        """The turn of the step after this one (a new row, same question and options)."""
        nxt = Turn.new(self.conversation_id, seq, self.model, self.reply_to)
        return msgspec.structs.replace(nxt, options=self.options)

    def started(
        self, at: datetime, *, retry_of: uuid.UUID | None = None
    ) -> ev.AssistantTurnStarted:
        """The event that creates this turn's row."""
        return ev.AssistantTurnStarted(
            at=at,
            message_id=self.message_id,
            seq=self.seq,
            attempt=self.attempt,
            model=self.model,
            reply_to=self.reply_to,
            retry_of=retry_of,
            options=self.options,
        )


class Generation:
    """The running state of one assistant row. Owned by the engine's task group."""

    def __init__(
        self, turn: Turn, stream: LiveStream, conversation: ConversationRecord | None = None
    ) -> None:
        self.turn = turn
        self.stream = stream
        # The conversation as the append that started this turn left it (None: read it).
        self.conversation = conversation
        # Its owner, when known without a read (it never changes): lets a stream request
        # for a row running here skip reading the row and the conversation (http/live.py).
        self.owner = None if conversation is None else conversation.owner
        self.scope = aio.cancel_scope()
        self.end_reason: EndReason | None = None
        # Set when a write was fenced off: someone else already ended the row.
        self.fenced = False
        # asyncio's Event, not anyio's: one per generation, and anyio's looks up its backend
        # (sniffio, current_task) to make one, ten times the cost. The server runs on asyncio.
        self.finished = asyncio.Event()
        # Published but not yet stored.
        self.pending: list[StreamEvent] = []
        # The stream seq the store holds for the row (every write names it as from_seq),
        # and a checkpoint whose write failed without telling whether it committed.
        self.stored_seq = 0
        self.unacked: ev.TurnCheckpointed | None = None
        # fast_acquire: an uncontended acquire does not yield a loop round (anyio's default
        # does, under a shielded scope of its own). It is taken by a step's end, shielded,
        # and without waiting by the checkpointer; a cancelled waiter still stops waiting.
        self.write_lock = aio.lock(fast_acquire=True)
        # For metrics (time.monotonic()): when this step started, when its first event
        # came, and when the oldest event not yet stored was published (pending or unacked).
        self.started_at = time.monotonic()
        self.first_at: float | None = None
        self.pending_since: float | None = None
        self.unacked_since: float | None = None
        # Checkpoints: how much earlier than due the first one goes (spreads generations
        # started together; 0 after it), and no retry of a failed one before retry_at.
        self.stagger = 0.0
        self.retry_at = 0.0
        # Set while a checkpoint write of it is queued or under way.
        self.checkpointing = False

    def take_pending(self) -> tuple[tuple[StreamEvent, ...], int]:
        """The unstored events, coalesced, and the seq they reach; no await in between, so
        nothing published meanwhile can slip between the two."""
        events = ev.coalesce(self.pending)
        self.pending = []
        if self.unacked_since is None:
            self.unacked_since = self.pending_since
        self.pending_since = None
        return events, self.stream.seq

    def unstored_since(self) -> float | None:
        """When the oldest event not yet stored was published; None if all are stored."""
        return self.unacked_since or self.pending_since

    def cancel(self, reason: EndReason) -> None:
        if self.end_reason is None:
            self.end_reason = reason
        self.scope.cancel()


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
    ) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings
        self.instance_id = instance_id
        self.now = now
        self.provider_for = provider_for
        self.metrics = metrics or Metrics()
        self.draining = False
        self._interrupting = False
        self._hurried = False
        # When final writes give up at the latest (anyio time), once a drain has begun.
        self._stop_by = float("inf")
        self._tg: TaskGroup | None = None
        self._running: dict[uuid.UUID, Generation] = {}
        # Until when (monotonic) new generations are refused because checkpoints are late
        # (0: they are not); whether the checkpointer task runs.
        self._refuse_until = 0.0
        self._checkpointer_running = False
        # Checkpoint writes in flight, and how early the next ones start (decaying maxima
        # of the write latency and of the checkpointer's lag behind its tick).
        self._writes = 0
        self._write_s = 0.0
        self._lag_s = 0.0
        # Set (and replaced) whenever a generation ends; drain waits on it. (asyncio's, as
        # Generation.finished: one is made per generation.)
        self._ended = asyncio.Event()

    def bind(self, tg: TaskGroup) -> None:
        """Run generations in ``tg`` (the app lifespan's task group)."""
        self._tg = tg

    def running(self, message_id: uuid.UUID) -> Generation | None:
        return self._running.get(message_id)

    def running_ids(self) -> list[uuid.UUID]:
        return list(self._running)

    def __len__(self) -> int:
        return len(self._running)

    def overloaded(self) -> float | None:
        """Seconds to wait before starting a generation, or None when one may start now
        (the checkpointer judges it every tick: :meth:`_judge_overload`)."""
        wait = self._refuse_until - time.monotonic()
        return wait if wait > 0 else None

    def _judge_overload(self, now: float, late: list[float]) -> None:
        """``late``: when the oldest unstored event of each row still unstored
        TURNLOG_CHECKPOINT_S + CHECKPOINT_SLACK_S later was published.

        The promise (CONTRACT: a crash loses at most TURNLOG_CHECKPOINT_S of output) is
        broken when an event waits that long to be stored. One late row may be one stuck
        conversation; when at least OVERLOAD_MIN_LATE rows and OVERLOAD_SHARE of those
        running are late, the server as a whole cannot keep up: it says so (a log line,
        the turnlog_overloaded gauge) and refuses new generations for OVERLOAD_HOLD_S
        intervals rather than silently let a crash lose more; judged again when that ends.
        """
        if now < self._refuse_until:
            return
        if len(late) < max(OVERLOAD_MIN_LATE, OVERLOAD_SHARE * len(self._running)):
            if self._refuse_until:
                self._refuse_until = 0.0
                log.info("overload over: accepting new generations again")
            return
        hold = max(1.0, OVERLOAD_HOLD_S * self.settings.checkpoint_s)
        self._refuse_until = now + hold
        log.warning(
            "overloaded: checkpoints are late, refusing new generations",
            late_rows=len(late),
            running=len(self._running),
            oldest_unstored_s=round(now - min(late), 3),
            checkpoint_s=self.settings.checkpoint_s,
            refuse_s=hold,
        )

    def oldest_unstored_s(self) -> float:
        """Age in seconds of the oldest published event not yet stored (0 if none)."""
        times = [t for g in self._running.values() if (t := g.unstored_since()) is not None]
        return time.monotonic() - min(times) if times else 0.0

    def start(self, turn: Turn, conversation: ConversationRecord | None = None) -> Generation:
        """Open the row's live stream now (so it exists before the HTTP answer) and run the
        turn in the background task group. ``conversation``: the conversation as the append
        that started the turn left it, which saves the generation reading it again."""
        if self._tg is None:
            raise RuntimeError("engine is not bound to a task group")
        gen = Generation(turn, self.registry.open(turn.message_id), conversation)
        gen.stagger = self.settings.checkpoint_s * STAGGER * (turn.message_id.int % 1024) / 1024
        self._running[turn.message_id] = gen
        self._tg.start_soon(self._run, gen, name=f"generation {turn.message_id}")
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

    async def drain(self, grace_s: float) -> None:
        """Stop taking turns, let running ones finish for ``grace_s``, then interrupt the
        rest and wait until their checkpoints are stored, or until the writes give up
        (SHUTDOWN_WRITE_S after the grace: a database that is gone does not hold the
        shutdown up). :meth:`hurry` cuts the grace short."""
        self.draining = True
        grace_s = 0.0 if self._hurried else grace_s
        self._stop_by = min(self._stop_by, anyio.current_time() + grace_s + SHUTDOWN_WRITE_S)
        with anyio.move_on_after(grace_s):
            while self._running and not self._hurried:
                await self._ended.wait()
        self._interrupting = True
        while self._running:
            for gen in list(self._running.values()):
                gen.cancel("interrupted")
            await self._ended.wait()

    def hurry(self) -> None:
        """A forced stop (a second signal): end the grace now, and give the interrupted
        generations' last writes only FORCED_WRITE_S; their subscribers still get done."""
        self._hurried = True
        self._stop_by = min(self._stop_by, anyio.current_time() + FORCED_WRITE_S)
        self._wake_drain()

    # -- one generation ------------------------------------------------------------------

    async def _run(self, first: Generation) -> None:
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
                gen = await self._step(current)
            except DomainError as exc:
                # The conversation was deleted or the row ended elsewhere meanwhile.
                log.info("generation stopped", reason=str(exc))
                with anyio.CancelScope(shield=True):
                    await self._finish_from_store(current)
                gen = None
            except DatabaseUnavailable as exc:
                # Reading what the step needs failed: the database is gone. The row is
                # repaired as an orphan later; the subscribers hear it ended now.
                self._gave_up(current, WriteGaveUp(str(exc)))
                gen = None
            except Exception:
                # A bug in one generation must not take the others (or the app) down: log
                # it, and end the row as failed if we still can.
                log.exception("generation crashed")
                await self._end_after_crash(current)
                gen = None
            finally:
                status = current.stream.status or "interrupted"
                m.child(m.generations_ended, provider, model, status).inc()
                m.child(m.generation_duration, provider, model, status).observe(
                    time.monotonic() - current.started_at
                )

    async def _step(self, gen: Generation) -> Generation | None:
        """Run one step of ``gen``; return the next step's generation after server tools."""
        try:
            try:
                request, provider = await self._request(gen.turn, gen.conversation)
                gen.conversation = None
            except UnknownModel as exc:
                with aio.cancel_scope(shield=True):
                    await self._end(gen, "error", error=str(exc))
                return None
            step_end: StepEnd | None = None
            error: str | None = None
            with gen.scope:
                # Its checkpoints are written by the engine's one checkpointer, batched.
                self._checkpointing()
                try:
                    step_end = await self._consume(gen, provider, request)
                except ProviderError as exc:
                    error = scrub(str(exc) or type(exc).__name__, self.settings.models.secrets())
            with aio.cancel_scope(shield=True):
                if gen.fenced:
                    await self._finish_from_store(gen)
                    return None
                if gen.end_reason is not None:
                    await self._end(gen, gen.end_reason)
                    return None
                if error is not None or step_end is None:
                    await self._end(gen, "error", error=error or "provider gave no result")
                    return None
                return await self._complete(gen, step_end)
            return None  # not reached: the shielded scope above is never cancelled
        finally:
            self._forget(gen)

    async def _request(
        self, turn: Turn, conv: ConversationRecord | None = None
    ) -> tuple[ModelRequest, Provider]:
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
        options = dict(conv.conversation.options)
        # From the end: the turn's own rows are the last ones (a long history is not scanned).
        asked = next((r for r in reversed(rows) if r.message.id == turn.reply_to), None)
        mine = next((r for r in reversed(rows) if r.message.id == turn.message_id), None)
        if mine is not None and mine.options is not None:
            options.update(mine.options)  # a retry's options replace the message's
        elif asked is not None and asked.options:
            options.update(asked.options)
        provider, name = self.provider_for(turn.model, self.settings)
        request = ModelRequest(
            model=name,
            system_prompt=conv.conversation.system_prompt,
            messages=build_history(
                rows, before_seq=turn.seq, provider=turn.model.partition(":")[0]
            ),
            options=options,
            tools=TOOLS,
        )
        return request, provider

    async def _consume(self, gen: Generation, provider: Provider, request: ModelRequest) -> StepEnd:
        """Publish the provider's step. A failure before any output is retried (bounded,
        exponential backoff with jitter, or the provider's Retry-After); after output it is
        final. No first event within the first-token timeout, or none for the stall
        timeout after that, fails the step."""
        settings = self.settings
        for attempt in range(settings.provider_retries + 1):
            produced = [False]
            try:
                return await self._attempt(gen, provider, request, produced)
            except ProviderError as exc:
                pause = None if produced[0] else retry_pause(exc, attempt, settings)
                which = provider_and_model(gen.turn.model)[0]
                kind = "retryable" if exc.retryable and not produced[0] else "fatal"
                self.metrics.child(self.metrics.provider_errors, which, kind).inc()
                if produced[0] or not exc.retryable or pause is None:
                    raise
                if attempt == settings.provider_retries:
                    raise ProviderError(
                        f"{exc} (gave up after {attempt + 1} attempts)", retryable=False
                    ) from exc
                self.metrics.child(self.metrics.provider_retries, which).inc()
                log.warning(
                    "provider failed before output; retrying",
                    attempt=attempt + 1,
                    error=scrub(str(exc), settings.models.secrets()),
                    pause_s=round(pause, 3),
                )
                await anyio.sleep(pause)
        raise AssertionError("unreachable")

    async def _attempt(
        self, gen: Generation, provider: Provider, request: ModelRequest, produced: list[bool]
    ) -> StepEnd:
        """One try of a step; ``produced[0]`` is set once something was published."""
        settings = self.settings
        stream = provider.stream(request)
        # One cancel scope for the whole try and one timer that fires only when a timeout
        # may have passed; a scope per item (armed and disarmed per token) was a tenth of
        # the server's CPU at 500 generations.
        watchdog = _Watchdog(settings.provider_first_token_timeout_s)
        try:
            with aio.cancel_scope() as scope:
                watchdog.start(scope)
                while True:
                    try:
                        item = await anext(stream)
                    except StopAsyncIteration:
                        raise ProviderError(
                            "provider ended the step without a result", retryable=False
                        ) from None
                    if isinstance(item, StepEnd):
                        return item
                    item = without_nul(item)
                    try:
                        gen.stream.publish(item)
                    except StreamProtocolError as exc:
                        raise ProviderError(
                            f"provider broke the stream: {exc}", retryable=False
                        ) from exc
                    gen.pending.append(item)
                    if gen.pending_since is None:
                        gen.pending_since = time.monotonic()
                        if gen.first_at is None:
                            gen.first_at = gen.pending_since
                            self.metrics.child(
                                self.metrics.time_to_first_token,
                                *provider_and_model(gen.turn.model),
                            ).observe(gen.first_at - gen.started_at)
                    produced[0] = True
                    watchdog.fed(settings.provider_stall_timeout_s)
            # Only the watchdog cancels this scope (any other cancel propagates past it).
            what = "for the first token" if not produced[0] else "(the stream stalled)"
            raise ProviderError(
                f"provider timed out: nothing for {watchdog.waited:g} s {what}", retryable=False
            )
        finally:
            watchdog.stop()
            # Close the provider's request now (cancel, timeout, error): its server sees the
            # disconnect at once. Shielded, so a cancelled step still gets to close it.
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with aio.cancel_scope(shield=True):
                    await aclose()

    def _checkpointing(self) -> None:
        """Start the checkpointer unless it runs (it stops when no generation runs)."""
        if not self._checkpointer_running and self._tg is not None:
            self._checkpointer_running = True
            self._tg.start_soon(self._checkpointer, name="checkpoints")

    async def _checkpointer(self) -> None:
        """Store every generation's new events so that none waits longer than
        TURNLOG_CHECKPOINT_S, in batched writes for all that are due.

        Deadline-based: a row's write should *commit* TURNLOG_CHECKPOINT_S after the oldest
        event it stores was published, so it starts that much earlier than the deadline as
        writes have lately taken, plus the tick and the loop's lag. Rows due go in chunks
        of at most CHUNK, most urgent first, each one transaction
        (``Store.append_checkpoints``), up to WRITES at once, while the checkpointer keeps
        ticking: one slow write used to hold every row due meanwhile, which then went in
        one huge batch, due together again the next time (at G = 500: 300 rows, 0.5 s a
        write, and misses). Generations started together would all be due together: each
        one's first write comes early by up to half an interval (drawn from its message
        id), which spreads them over the ticks for good.
        """
        # Started from some generation's task: its log context (conversation, message,
        # request) is not this task's, nor its writes' (copies of this context).
        structlog.contextvars.clear_contextvars()
        interval = self.settings.checkpoint_s
        tick = min(TICK_S, interval / 4)
        tg = self._tg
        assert tg is not None  # it runs in it
        try:
            while self._running or self._writes:
                slept = time.monotonic()
                await anyio.sleep(tick)
                now = time.monotonic()
                self._lag_s = max(now - slept - tick, self._lag_s * DECAY)
                late_by = self._write_s + self._lag_s - CHECKPOINT_SLACK_S + MARGIN_S
                horizon = now + tick + min(max(late_by, 0.0), interval * LEAD_MAX)
                limit = now - interval - CHECKPOINT_SLACK_S
                due: list[tuple[float, Generation]] = []
                late: list[float] = []
                for gen in self._running.values():
                    since = gen.unstored_since()
                    if since is None:
                        continue
                    if since < limit:
                        late.append(since)
                    deadline = since + interval - gen.stagger
                    if deadline <= horizon and gen.retry_at <= horizon and not gen.checkpointing:
                        due.append((deadline, gen))
                self._judge_overload(now, late)
                # Most urgent first; what does not fit in WRITES goes next tick, still first.
                due.sort(key=lambda d: d[0])
                for i in range(0, len(due), CHUNK):
                    if self._writes >= WRITES:
                        break
                    chunk = [gen for _, gen in due[i : i + CHUNK]]
                    for gen in chunk:
                        gen.checkpointing = True
                    self._writes += 1
                    tg.start_soon(self._checkpoint, chunk, name="checkpoint write")
        finally:
            self._checkpointer_running = False

    async def _checkpoint(self, due: list[Generation]) -> None:
        """Write one checkpoint for each of ``due`` (together), and settle each."""
        batch: list[Generation] = []
        # Shielded: a cancel landing inside the write would lose the events it had taken
        # (or store them unacknowledged).
        with anyio.CancelScope(shield=True):
            try:
                for gen in due:
                    if gen.fenced or gen.write_lock.locked():
                        continue  # its step is ending: the end's own write stores the events
                    gen.write_lock.acquire_nowait()
                    batch.append(gen)
                await self._checkpoint_batch(batch)
            except Exception:
                # A bug here must not take the app's task group down: the rows keep their
                # events (pending or unacked) and are tried again after a pause.
                log.exception("checkpoint write crashed; will retry")
                for gen in batch:
                    gen.retry_at = time.monotonic() + self.settings.checkpoint_s / 2
            finally:
                self._writes -= 1
                for gen in due:
                    gen.checkpointing = False
                for gen in batch:
                    gen.write_lock.release()

    async def _checkpoint_batch(self, batch: list[Generation]) -> None:
        for gen in batch:
            if gen.unacked is None and gen.pending:
                events, seq = gen.take_pending()
                gen.unacked = ev.TurnCheckpointed(
                    at=self.now(),
                    message_id=gen.turn.message_id,
                    attempt=gen.turn.attempt,
                    events=events,
                    stream_seq=seq,
                    from_seq=gen.stored_seq,
                )
        writes = [(g, g.unacked, g.unacked_since) for g in batch if g.unacked is not None]
        if not writes:
            return
        started = time.monotonic()
        with urgently():  # before new work: a burst of sends must not hold it back
            results = await self.store.append_checkpoints(
                [(g.turn.conversation_id, event) for g, event, _ in writes]
            )
        ended = time.monotonic()
        self._write_s = max(ended - started, self._write_s * DECAY)
        for (gen, event, since), error in zip(writes, results, strict=True):
            # AlreadyStored: an earlier try of this very write committed; its answer was
            # lost.
            if error is None or isinstance(error, AlreadyStored):
                self.metrics.checkpoint_write.observe(ended - started)
                self._acked(gen, event, since, ended)
            elif isinstance(error, DomainError):
                # Fenced (the row was ended elsewhere) or the conversation is gone.
                log.warning("generation fenced off; stopping", reason=str(error))
                gen.fenced = True
                gen.scope.cancel()
            else:
                # Committed or not, it cannot tell: the very same event goes again (after
                # a pause), and the store knows a repeat (AlreadyStored).
                log.warning("checkpoint failed; will retry", exc_info=error)
                gen.retry_at = ended + self.settings.checkpoint_s / 2

    def _acked(
        self, gen: Generation, event: ev.TurnCheckpointed, since: float | None, ended: float
    ) -> None:
        gen.unacked = None
        gen.unacked_since = None
        gen.stored_seq = event.stream_seq
        gen.stagger = 0.0
        self._count_miss(since, ended)

    def _count_miss(self, since: float | None, stored: float) -> None:
        """Count a write that stored an event published at ``since`` later than promised."""
        if since is not None and stored - since > self.settings.checkpoint_s + CHECKPOINT_SLACK_S:
            self.metrics.checkpoint_misses.inc()

    async def _settle(self, gen: Generation) -> None:
        """Store the checkpoint in ``gen.unacked``, if any: sent as is, however often it
        takes, so a write whose answer was lost is never stored twice. Raises what the
        write raised (it stays unacked) or the DomainError that fenced it."""
        event = gen.unacked
        if event is None:
            return
        # AlreadyStored: an earlier try of this very write committed; its answer was lost.
        since = gen.unacked_since
        started = time.monotonic()
        with contextlib.suppress(AlreadyStored), urgently():
            await self.store.append(gen.turn.conversation_id, [event])
        ended = time.monotonic()
        self.metrics.checkpoint_write.observe(ended - started)
        self._acked(gen, event, since, ended)

    async def _settle_before_end(self, gen: Generation) -> None:
        """Before a step's last write: store a checkpoint left unacked, retrying a while."""
        await self._retrying(lambda: self._settle(gen), "storing a checkpoint failed; retrying")

    async def _retrying(self, write: Callable[[], Awaitable[object]], failed: str) -> None:
        """Run a step's final ``write``, retrying a failure that is not a DomainError (a
        lost connection, say) with backoff for FINAL_WRITE_S, or until the drain's deadline;
        then raise ``WriteGaveUp``."""
        give_up = aio.current_time() + FINAL_WRITE_S
        for i in itertools.count():
            try:
                await write()
                return
            except DomainError:
                raise
            except Exception as exc:
                pause = min(0.2 * 2**i, 2.0)
                if anyio.current_time() + pause >= min(give_up, self._stop_by):
                    raise WriteGaveUp(f"{failed.split(';')[0]}: {exc}") from exc
                log.warning(failed, error=str(exc) or type(exc).__name__, attempt=i + 1)
                await anyio.sleep(pause)

    def _gave_up(self, gen: Generation, exc: WriteGaveUp) -> None:
        """The end of the step could not be stored: tell the subscribers it ended anyway
        (interrupted, as the row will read once repaired)."""
        log.error(
            "could not store the end of the step; the row stays generating until it is "
            "repaired as an orphan",
            error=str(exc),
        )
        if not gen.stream.finished:
            gen.stream.finish(Done(status="interrupted"))

    def _close_open_calls(self, gen: Generation) -> None:
        """Mark tool calls the step left unfinished as ready with null arguments."""
        for event in closing_events(gen.stream.blocks):
            gen.stream.publish(event)
            gen.pending.append(event)

    async def _complete(self, gen: Generation, step_end: StepEnd) -> Generation | None:
        turn = gen.turn
        self._close_open_calls(gen)
        calls = [b for b in gen.stream.blocks if isinstance(b, ToolCallBlock)]
        server_calls = [c for c in calls if c.name not in INTERACTIVE]
        awaiting = tuple(c.id for c in calls if c.name in INTERACTIVE)
        now = self.now()
        async with gen.write_lock:
            try:
                await self._settle_before_end(gen)
            except DomainError:  # fenced, or the conversation is gone
                await self._finish_from_store(gen)
                return None
            except WriteGaveUp as exc:
                self._gave_up(gen, exc)
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
                    awaiting_user=awaiting,
                )
            ]
            next_turn: Turn | None = None
            if server_calls:
                # Only tool results need the next seq. Otherwise no read: a conversation
                # deleted meanwhile makes the append itself fail (a DomainError, as here).
                try:
                    conv = await self.store.get_conversation(turn.conversation_id)
                except DatabaseUnavailable as exc:
                    self._gave_up(gen, WriteGaveUp(str(exc)))
                    return None
                if conv is None:
                    raise Fenced(f"conversation {turn.conversation_id} is gone")
                next_seq = conv.last_seq + 1
            for call in server_calls:
                batch.append(
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
            if server_calls and not awaiting:
                next_turn = turn.next_step(next_seq)
                batch.append(next_turn.started(now))
            try:
                await self._write(turn, batch, gen.unacked_since)
            except WriteGaveUp as exc:
                self._gave_up(gen, exc)
                return None
            except Fenced:
                # Refused because the row has ended; but a retry after a lost answer is
                # refused the same way when our own write ended it. The next step's row,
                # whose id only this write knows, tells which.
                landed = next_turn is not None and (
                    await self.store.get_message(next_turn.message_id) is not None
                )
                if not landed:
                    await self._finish_from_store(gen)
                    return None
        nxt = None
        if next_turn is not None:
            nxt = Generation(next_turn, self.registry.open(next_turn.message_id))
            nxt.owner = gen.owner
            self._running[next_turn.message_id] = nxt
            if self._interrupting:
                nxt.cancel("interrupted")
        self._count_tokens(turn, step_end.usage)
        gen.stream.finish(
            Done(status="completed", finish_reason=step_end.finish_reason, usage=step_end.usage)
        )
        return nxt

    def _count_tokens(self, turn: Turn, usage: dict[str, Any] | None) -> None:
        provider, model = provider_and_model(turn.model)
        for key, direction in (("input_tokens", "in"), ("output_tokens", "out")):
            n = (usage or {}).get(key)
            if isinstance(n, int) and n > 0:
                self.metrics.child(self.metrics.tokens, provider, model, direction).inc(n)

    async def _end(
        self, gen: Generation, how: Literal["aborted", "interrupted", "error"], error: str = ""
    ) -> None:
        turn = gen.turn
        self._close_open_calls(gen)
        async with gen.write_lock:
            try:
                await self._settle_before_end(gen)
            except DomainError:  # fenced, or the conversation is gone
                await self._finish_from_store(gen)
                return
            except WriteGaveUp as exc:
                self._gave_up(gen, exc)
                return
            events, seq = gen.take_pending()
            common: dict[str, Any] = {
                "at": self.now(),
                "message_id": turn.message_id,
                "attempt": turn.attempt,
                "events": events,
                "stream_seq": seq,
                "from_seq": gen.stored_seq,
            }
            event: ev.DomainEvent
            if how == "aborted":
                event = ev.TurnAborted(**common)
            elif how == "interrupted":
                event = ev.TurnInterrupted(**common, reason="the server shut down")
            else:
                event = ev.TurnFailed(**common, error=error)
            try:
                await self._write(turn, [event], gen.unacked_since)
            except Fenced:
                await self._finish_from_store(gen)
                return
            except WriteGaveUp as exc:
                self._gave_up(gen, exc)
                return
        gen.stream.finish(Done(status=how, error=error or None))

    async def _write(self, turn: Turn, batch: list[ev.DomainEvent], since: float | None) -> None:
        """Store a step's end; ``since``: when its oldest event was published (a write
        stored later than the promise allows counts as a checkpoint miss too)."""

        async def append() -> None:
            with urgently():
                await self.store.append(turn.conversation_id, batch, instance_id=self.instance_id)

        await self._retrying(append, "storing the end of a step failed; retrying")
        self._count_miss(since, time.monotonic())

    async def _finish_from_store(self, gen: Generation) -> None:
        """Someone else ended the row: close the live stream with what the store says."""
        try:
            row = await self.store.get_message(gen.turn.message_id)
        except DatabaseUnavailable:
            row = None  # done says interrupted: what the row reads once repaired
        if not gen.stream.finished:
            gen.stream.finish(done_for(row))

    async def _end_after_crash(self, gen: Generation) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self._end(gen, "error", error="internal error while generating")
            except Exception:
                log.exception("could not store the end of a crashed generation")
                if not gen.stream.finished:
                    gen.stream.finish(Done(status="interrupted"))

    def _forget(self, gen: Generation) -> None:
        if not gen.finished.is_set():
            gen.finished.set()
        if self._running.get(gen.turn.message_id) is gen:
            del self._running[gen.turn.message_id]
        self._wake_drain()

    def _wake_drain(self) -> None:
        ended, self._ended = self._ended, asyncio.Event()
        ended.set()


class _Watchdog:
    """Cancels a scope once nothing came for ``waited`` seconds (the provider timeouts).

    ``fed`` after each item only moves the deadline; the one timer re-arms itself when it
    fires before the deadline, so there is no timer or cancel scope per token.
    """

    def __init__(self, waited: float) -> None:
        self.waited = waited
        self._deadline = 0.0
        self._armed = math.inf  # when the timer fires (inf: not armed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clock: Callable[[], float] = time.monotonic  # the loop's clock, once started
        self._scope: anyio.CancelScope | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self, scope: anyio.CancelScope) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._clock = loop.time
        self._scope = scope
        self._deadline = loop.time() + self.waited
        self._arm(self._deadline)

    def _arm(self, when: float) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._armed = when
        self._timer = self._loop.call_at(when, self._fire)

    def fed(self, waited: float) -> None:
        """Something came: nothing for ``waited`` seconds from now times out. Once per item,
        so as lean as it can be: a clock read and a comparison."""
        self.waited = waited
        deadline = self._deadline = self._clock() + waited
        if deadline < self._armed:  # a shorter timeout than the one armed
            self._arm(deadline)

    def _fire(self) -> None:
        assert self._loop is not None
        assert self._scope is not None
        self._timer = None
        if self._loop.time() >= self._deadline:
            self._armed = math.inf
            self._scope.cancel()
        else:
            self._arm(self._deadline)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed = math.inf


def without_nul(event: StreamEvent) -> StreamEvent:
    """The event with U+0000 replaced by U+FFFD: PostgreSQL text and jsonb cannot store
    NUL, and a model that emits one must not cost the answer its checkpoints. Replaced
    before publishing, so subscribers and the store see the same text."""
    # Nearly every event is a text delta without NUL: one check, not the match below.
    if isinstance(event, TextDelta) and "\x00" not in event.text:
        return event
    match event:
        case TextDelta(text=t) | ReasoningDelta(text=t) if "\x00" in t:
            return type(event)(text=t.replace("\x00", "\ufffd"))
        case ToolCallDelta(arguments_delta=t) if "\x00" in t:
            return ToolCallDelta(id=event.id, arguments_delta=t.replace("\x00", "\ufffd"))
        case ToolCallStarted(name=t) if "\x00" in t or "\x00" in event.id:
            return ToolCallStarted(
                id=event.id.replace("\x00", "\ufffd"), name=t.replace("\x00", "\ufffd")
            )
        case ToolCallReady() if "\\u0000" in msgspec.json.encode(event.arguments).decode():
            return ToolCallReady(
                id=event.id,
                arguments=msgspec.json.decode(
                    msgspec.json.encode(event.arguments).decode().replace("\\u0000", "\\ufffd")
                ),
            )
        case _:
            return event


def retry_pause(exc: ProviderError, attempt: int, settings: Settings) -> float | None:
    """Seconds to wait before retry number ``attempt + 1``, or None to give up: the
    provider's Retry-After if it sent one (up to MAX_RETRY_PAUSE_S), else exponential
    backoff from ``provider_backoff_s`` with full jitter in [0.5, 1.5)."""
    asked: float | None = exc.retry_after
    if asked is not None:
        return asked if asked <= MAX_RETRY_PAUSE_S else None
    pause = settings.provider_backoff_s * 2.0**attempt * random.uniform(0.5, 1.5)
    return min(pause, MAX_RETRY_PAUSE_S)


def scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every API key in ``secrets`` (and anything shaped like a bearer token
    or an ``sk-`` key) masked: provider error texts are stored on rows and logged."""
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    text = _BEARER.sub(r"\1[redacted]", text)
    return _KEYLIKE.sub("[redacted]", text)


_BEARER = re.compile(r"((?:Bearer|x-api-key:?|key=)\s*)[A-Za-z0-9._\-]{8,}", re.IGNORECASE)
_KEYLIKE = re.compile(r"\b(?:sk|sk-ant|AIza)[-_A-Za-z0-9]{16,}")


def done_for(row: MessageRecord | None) -> Done:
    """The ``done`` event for a row that is no longer generating."""
    if row is None:
        return Done(status="interrupted")
    m = row.message
    status = "interrupted" if m.status == "generating" else m.status
    return Done(status=status, finish_reason=m.finish_reason, usage=m.usage, error=m.error)


def closing_events(blocks: Sequence[Block]) -> tuple[ToolCallReady, ...]:
    """Events that close the unfinished tool calls among ``blocks``, null arguments (pure)."""
    return tuple(
        ToolCallReady(id=b.id, arguments=None)
        for b in blocks
        if isinstance(b, ToolCallBlock) and not b.ready
    )


def interrupt_events(row: MessageRecord) -> tuple[StreamEvent, ...]:
    """Events that close a dead generation's unfinished tool calls (pure)."""
    return closing_events(row.message.blocks)


__all__ = ["Engine", "Generation", "Turn", "closing_events", "done_for", "interrupt_events"]
