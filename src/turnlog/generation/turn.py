"""What the engine runs and the state it keeps while running it.

A :class:`Turn` names one assistant row to produce (ids, seq, model, the question it answers
and a retry's options); a :class:`Generation` is that row's running state in this process:
its live stream, the events published but not yet stored, the checkpoint in flight, its
cancel scope and why it was cancelled.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
import msgspec
from turnlog_reducer import StreamEvent

from turnlog import aio
from turnlog.log import events as ev
from turnlog.log.projection import ConversationRecord
from turnlog.streams import LiveStream

__all__ = ["Clock", "EndReason", "Generation", "Turn", "utcnow"]

# Why a generation was cancelled: a user's cancel (aborted), or a shutdown that hands the
# row over to be continued elsewhere (handed_over) or, with recovery off, ends it (interrupted).
EndReason = Literal["aborted", "interrupted", "handed_over"]
Clock = Callable[[], datetime]


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
    # Set when this turn continues its row after the process that ran it died: the number
    # of that recovery (1, 2, ...). The step asks the model to go on from the stored blocks.
    recovery: int = 0

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
        # for a row running here skip reading the row and the conversation
        # (Engine.streams_here).
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
        # A continued row (recovery): when its last stored write was, the latest its
        # previous process can have died (for the time-to-first-continued-delta metric).
        self.recovered_from: datetime | None = None
        self.pending_since: float | None = None
        self.unacked_since: float | None = None
        # Checkpoints (turnlog.generation.checkpoints): how much earlier than due the first
        # one goes (spreads generations started together; 0 after it), and no retry of a
        # failed one before retry_at.
        self.stagger = 0.0
        self.retry_at = 0.0
        # Set while a checkpoint write of it is queued or under way.
        self.checkpoint_queued = False
        # Tools (turnlog.generation.tools): those this step offered the model, by name; the
        # conversation's owner (the user tools run for); this step's number in its turn and
        # the tool calls earlier steps ran (the turn's limits); while server tools run, the
        # scope that cancel stops them with.
        self.tools: dict[str, Any] = {}
        self.user = "" if conversation is None else conversation.owner
        self.step = 1
        self.calls_before = 0
        self.tool_scope: anyio.CancelScope | None = None
        # A recovered row whose step's server calls had started when its process died: the
        # model's part is stored whole, and these calls (by id) ran or may have run.
        self.started_calls: dict[str, ev.StartedCall] | None = None

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

    def streams_here(self) -> bool:
        """Whether this row generates here with nothing ending it (a delete, here or through
        another instance, cancels it first) and its owner is known without a read."""
        return (
            self.owner is not None
            and self.end_reason is None
            and not self.fenced
            and not self.stream.finished
        )

    def cancel(self, reason: EndReason) -> None:
        if self.end_reason is None:
            self.end_reason = reason
        self.scope.cancel()
        if self.tool_scope is not None:
            self.tool_scope.cancel()
