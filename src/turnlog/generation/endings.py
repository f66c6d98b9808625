"""The writes that end a step, and fencing.

A step ends in one write (``Engine._complete`` adds a completed step's tool rows and the next
step's row): completed, failed, aborted (cancel), interrupted (shutdown), or handed over (a
checkpoint, the row left generating for recovery). Each first stores a checkpoint left unacked
(:meth:`StepEnds.settle_before_end`), and each is retried (:meth:`StepEnds.retry_final_write`)
for FINAL_WRITE_S or until the drain's deadline (``stop_by``), then given up: the subscribers
hear the row ended and recovery repairs it later. Every write names the generation's attempt,
so once anyone else has ended the row the store refuses it (``Fenced``) and the live stream is
closed with what the store says (:meth:`StepEnds.finish_from_store`).
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import anyio
import structlog
from turnlog_reducer import Done

from turnlog import aio
from turnlog.errors import DomainError, Fenced
from turnlog.generation.checkpoints import Checkpointer
from turnlog.generation.turn import Clock, Generation, Turn
from turnlog.log import events as ev
from turnlog.log.pool import DatabaseUnavailable, urgently
from turnlog.log.projection import MessageRecord
from turnlog.log.store import Store
from turnlog.streams import closing_events, done_for

__all__ = ["FINAL_WRITE_S", "StepEnds", "WriteGaveUp"]

log = structlog.get_logger("turnlog.generation")

# The write that ends a step is retried for this long (the database may restart meanwhile);
# at shutdown only until the drain's deadline. If it never lands the row stays generating,
# its subscribers get `done` (interrupted), and recovery marks it interrupted later, as
# after a crash.
FINAL_WRITE_S = 30.0


class WriteGaveUp(Exception):
    """A step's final write kept failing (the database is gone) until its deadline."""


class StepEnds:
    """Stores the ends of this process's steps (one per engine)."""

    def __init__(
        self, store: Store, checkpoints: Checkpointer, *, instance_id: uuid.UUID, now: Clock
    ) -> None:
        self.store = store
        self.checkpoints = checkpoints
        self.instance_id = instance_id
        self.now = now
        # When final writes give up at the latest (anyio time), once a drain has begun (the
        # engine's drain and hurry set it).
        self.stop_by = float("inf")

    async def settle_before_end(self, gen: Generation) -> None:
        """Before a step's last write: store a checkpoint left unacked, retrying a while."""
        await self.retry_final_write(
            lambda: self.checkpoints.settle(gen), "storing a checkpoint failed; retrying"
        )

    async def retry_final_write(self, write: Callable[[], Awaitable[object]], failed: str) -> None:
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
                if anyio.current_time() + pause >= min(give_up, self.stop_by):
                    raise WriteGaveUp(f"{failed.split(';')[0]}: {exc}") from exc
                log.warning(failed, error=str(exc) or type(exc).__name__, attempt=i + 1)
                await anyio.sleep(pause)

    def gave_up(self, gen: Generation, exc: WriteGaveUp) -> None:
        """The end of the step could not be stored: tell the subscribers it ended anyway
        (interrupted, as the row will read once repaired)."""
        log.error(
            "could not store the end of the step; the row stays generating until it is "
            "repaired as an orphan",
            error=str(exc),
        )
        if not gen.stream.finished:
            gen.stream.finish(Done(status="interrupted"))

    def close_open_calls(self, gen: Generation) -> None:
        """Mark tool calls the step left unfinished as ready with null arguments."""
        for event in closing_events(gen.stream.blocks):
            gen.stream.publish(event)
            gen.pending.append(event)

    async def hand_over(self, gen: Generation) -> None:
        """The process is going away (a drain past its grace): store what the step has so
        far as a checkpoint and leave the row generating, for another instance or the next
        start to continue (recovery). Its readers end without ``done`` and reconnect."""
        turn = gen.turn
        async with gen.write_lock:
            try:
                await self.settle_before_end(gen)
                events, seq = gen.take_pending()
                if seq != gen.stored_seq:
                    checkpoint = ev.TurnCheckpointed(
                        at=self.now(),
                        message_id=turn.message_id,
                        attempt=turn.attempt,
                        events=events,
                        stream_seq=seq,
                        from_seq=gen.stored_seq,
                    )
                    await self.write_end(turn, [checkpoint], gen.unacked_since)
            except DomainError:  # fenced, or the conversation is gone
                await self.finish_from_store(gen)
                return
            except WriteGaveUp as exc:
                # The last checkpoint is what a successor continues from.
                log.warning("could not store the handed-over row's last events", error=str(exc))
        log.info("generation handed over", stream_seq=gen.stream.seq)
        gen.stream.abandon()

    async def end(
        self, gen: Generation, how: Literal["aborted", "interrupted", "error"], error: str = ""
    ) -> None:
        """Store the end of a step that did not complete: aborted, interrupted or failed."""
        turn = gen.turn
        self.close_open_calls(gen)
        async with gen.write_lock:
            try:
                await self.settle_before_end(gen)
            except DomainError:  # fenced, or the conversation is gone
                await self.finish_from_store(gen)
                return
            except WriteGaveUp as exc:
                self.gave_up(gen, exc)
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
                await self.write_end(turn, [event], gen.unacked_since)
            except Fenced:
                await self.finish_from_store(gen)
                return
            except WriteGaveUp as exc:
                self.gave_up(gen, exc)
                return
        gen.stream.finish(Done(status=how, error=error or None))

    async def write_end(self, turn: Turn, batch: list[ev.DomainEvent], since: float | None) -> None:
        """Store a step's end; ``since``: when its oldest event was published (a write
        stored later than the promise allows counts as a checkpoint miss too)."""

        async def append() -> None:
            with urgently():
                await self.store.append(turn.conversation_id, batch, instance_id=self.instance_id)

        await self.retry_final_write(append, "storing the end of a step failed; retrying")
        self.checkpoints.count_miss(since, time.monotonic())

    async def finish_from_store(self, gen: Generation) -> None:
        """Someone else ended the row (fencing): close the live stream with what the store
        says."""
        row: MessageRecord | None
        try:
            row = await self.store.get_message(gen.turn.message_id)
        except DatabaseUnavailable:
            row = None  # done says interrupted: what the row reads once repaired
        if not gen.stream.finished:
            gen.stream.finish(done_for(row))

    async def end_after_crash(self, gen: Generation) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self.end(gen, "error", error="internal error while generating")
            except Exception:
                log.exception("could not store the end of a crashed generation")
                if not gen.stream.finished:
                    gen.stream.finish(Done(status="interrupted"))
