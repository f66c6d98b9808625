"""The checkpointer: stores every running generation's new events in time, and says when
the server cannot keep that promise (overload).

The promise: a crash loses at most ``TURNLOG_CHECKPOINT_S`` of a generating row's output
(docs/architecture.md, "Generation"). One :class:`Checkpointer` per engine owns every
constant of it: each tick it looks for rows due, writes them in batches (one transaction
per chunk, ``Store.append_checkpoints``), acknowledges what committed, retries what failed,
and judges whether rows are late enough to refuse new generations (:meth:`overloaded`).
It takes the store, the wall clock (event times), a monotonic clock and the settings, so a
test drives it with a fake clock.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Mapping

import anyio
import structlog
from anyio.abc import TaskGroup

from turnlog.config import Settings
from turnlog.errors import AlreadyStored, DomainError
from turnlog.generation.turn import Clock, Generation
from turnlog.log import events as ev
from turnlog.log.pool import urgently
from turnlog.log.store import Store
from turnlog.metrics import Metrics

__all__ = ["CHECKPOINT_SLACK_S", "Checkpointer"]

log = structlog.get_logger("turnlog.generation")

# Every generating row's stored events are at most TURNLOG_CHECKPOINT_S + CHECKPOINT_SLACK_S
# apart. Checkpoints start early by up to STAGGER of an interval the first time (spreading
# rows started together). The server refuses new generations (503) for OVERLOAD_HOLD_S
# intervals (at least 1 s) once at least OVERLOAD_MIN_LATE rows, and OVERLOAD_SHARE of
# those running, hold events older than that.
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


class Checkpointer:
    """Writes the checkpoints of the generations in ``running`` (the engine's, by message
    id); runs in the engine's task group while any generation runs."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        running: Mapping[uuid.UUID, Generation],
        *,
        now: Clock,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.settings = settings
        self.now = now
        self.metrics = metrics
        self._running = running
        self._clock = clock
        self._tg: TaskGroup | None = None
        self._looping = False
        # Until when (clock) new generations are refused because checkpoints are late
        # (0: they are not).
        self._refuse_until = 0.0
        # Checkpoint writes in flight, and how early the next ones start (decaying maxima
        # of the write latency and of the checkpointer's lag behind its tick).
        self.writes = 0
        self._write_s = 0.0
        self._lag_s = 0.0

    def bind(self, tg: TaskGroup) -> None:
        """Run the tick loop and the writes in ``tg`` (the engine's)."""
        self._tg = tg

    @property
    def tick_s(self) -> float:
        return min(TICK_S, self.settings.checkpoint_s / 4)

    def join(self, gen: Generation) -> None:
        """A generation starts: its first checkpoint comes early by up to STAGGER of an
        interval, drawn from its message id (generations started together would otherwise
        all be due together, for good)."""
        gen.stagger = self.settings.checkpoint_s * STAGGER * (gen.turn.message_id.int % 1024) / 1024

    def ensure_running(self) -> None:
        """Start the tick loop unless it runs (it stops when no generation runs)."""
        if not self._looping and self._tg is not None:
            self._looping = True
            self._tg.start_soon(self._loop, name="checkpoints")

    # -- overload -------------------------------------------------------------------------

    def overloaded(self) -> float | None:
        """Seconds to wait before starting a generation, or None when one may start now
        (judged every tick: :meth:`_judge_overload`)."""
        wait = self._refuse_until - self._clock()
        return wait if wait > 0 else None

    def oldest_unstored_s(self) -> float:
        """Age in seconds of the oldest published event not yet stored (0 if none)."""
        times = [t for g in self._running.values() if (t := g.unstored_since()) is not None]
        return self._clock() - min(times) if times else 0.0

    def _judge_overload(self, now: float, late: list[float]) -> None:
        """``late``: when the oldest unstored event of each row still unstored
        TURNLOG_CHECKPOINT_S + CHECKPOINT_SLACK_S later was published.

        The promise (a crash loses at most TURNLOG_CHECKPOINT_S of output) is broken when
        an event waits that long to be stored. One late row may be one stuck conversation;
        when at least OVERLOAD_MIN_LATE rows and OVERLOAD_SHARE of those running are late,
        the server as a whole cannot keep up: it says so (a log line, the
        turnlog_overloaded gauge) and refuses new generations for OVERLOAD_HOLD_S intervals
        rather than silently let a crash lose more; judged again when that ends.
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

    # -- the tick -------------------------------------------------------------------------

    async def _loop(self) -> None:
        """Tick until no generation runs and no write is in flight."""
        # Started from some generation's task: its log context (conversation, message,
        # request) is not this task's, nor its writes' (copies of this context).
        structlog.contextvars.clear_contextvars()
        tick = self.tick_s
        try:
            while self._running or self.writes:
                slept = self._clock()
                await anyio.sleep(tick)
                self.tick(lag=self._clock() - slept - tick)
        finally:
            self._looping = False

    def tick(self, lag: float = 0.0) -> None:
        """Start the writes of every row due, so that none waits longer than
        TURNLOG_CHECKPOINT_S; ``lag``: how late this tick came.

        Deadline-based: a row's write should *commit* TURNLOG_CHECKPOINT_S after the oldest
        event it stores was published, so it starts that much earlier than the deadline as
        writes have lately taken, plus the tick and the loop's lag. Rows due go in chunks
        of at most CHUNK, most urgent first, each one transaction, up to WRITES at once,
        while the checkpointer keeps ticking: one slow write used to hold every row due
        meanwhile, which then went in one huge batch, due together again the next time
        (docs/performance.md).
        """
        tg = self._tg
        assert tg is not None  # bound before any generation runs
        self._lag_s = max(lag, self._lag_s * DECAY)
        due = self.due(self._clock())
        # Most urgent first; what does not fit in WRITES goes next tick, still first.
        for i in range(0, len(due), CHUNK):
            if self.writes >= WRITES:
                break
            chunk = due[i : i + CHUNK]
            for gen in chunk:
                gen.checkpoint_queued = True
            self.writes += 1
            tg.start_soon(self._write_chunk, chunk, name="checkpoint write")

    def due(self, now: float) -> list[Generation]:
        """The rows whose checkpoint should start by the next tick, most urgent first (and
        the overload judged on the late ones)."""
        interval = self.settings.checkpoint_s
        late_by = self._write_s + self._lag_s - CHECKPOINT_SLACK_S + MARGIN_S
        horizon = now + self.tick_s + min(max(late_by, 0.0), interval * LEAD_MAX)
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
            if deadline <= horizon and gen.retry_at <= horizon and not gen.checkpoint_queued:
                due.append((deadline, gen))
        self._judge_overload(now, late)
        due.sort(key=lambda d: d[0])
        return [gen for _, gen in due]

    # -- writes ---------------------------------------------------------------------------

    async def _write_chunk(self, due: list[Generation]) -> None:
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
                await self._write_batch(batch)
            except Exception:
                # A bug here must not take the app's task group down: the rows keep their
                # events (pending or unacked) and are tried again after a pause.
                log.exception("checkpoint write crashed; will retry")
                for gen in batch:
                    gen.retry_at = self._clock() + self.settings.checkpoint_s / 2
            finally:
                self.writes -= 1
                for gen in due:
                    gen.checkpoint_queued = False
                for gen in batch:
                    gen.write_lock.release()

    async def _write_batch(self, batch: list[Generation]) -> None:
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
        started = self._clock()
        with urgently():  # before new work: a burst of sends must not hold it back
            results = await self.store.append_checkpoints(
                [(g.turn.conversation_id, event) for g, event, _ in writes]
            )
        ended = self._clock()
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

    async def settle(self, gen: Generation) -> None:
        """Store the checkpoint in ``gen.unacked``, if any: sent as is, however often it
        takes, so a write whose answer was lost is never stored twice. Raises what the
        write raised (it stays unacked) or the DomainError that fenced it. The caller holds
        ``gen.write_lock`` (a step's end)."""
        event = gen.unacked
        if event is None:
            return
        # AlreadyStored: an earlier try of this very write committed; its answer was lost.
        since = gen.unacked_since
        started = self._clock()
        with contextlib.suppress(AlreadyStored), urgently():
            await self.store.append(gen.turn.conversation_id, [event])
        ended = self._clock()
        self.metrics.checkpoint_write.observe(ended - started)
        self._acked(gen, event, since, ended)

    def _acked(
        self, gen: Generation, event: ev.TurnCheckpointed, since: float | None, ended: float
    ) -> None:
        gen.unacked = None
        gen.unacked_since = None
        gen.stored_seq = event.stream_seq
        gen.stagger = 0.0
        self.count_miss(since, ended)

    def count_miss(self, since: float | None, stored: float) -> None:
        """Count a write that stored an event published at ``since`` later than promised."""
        if since is not None and stored - since > self.settings.checkpoint_s + CHECKPOINT_SLACK_S:
            self.metrics.checkpoint_misses.inc()
