"""Domain events: the facts the log stores, one tagged msgspec Struct per kind.

Every id and timestamp is decided by the command that emits the event and copied by the
projection, so folding the log never reads a clock or calls a model. The assistant's content
travels as reducer stream events (``turnlog_reducer``), coalesced, inside the turn events;
the projection folds them with ``apply_stream_event``, so a row's blocks are always the fold
of what its turn stored.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import msgspec
from turnlog_reducer import ReasoningDelta, StreamEvent, TextDelta

# Fields that an update may leave alone carry UNSET; ``None`` is a real value ("no title").
UNSET = msgspec.UNSET
UnsetType = msgspec.UnsetType


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    at: datetime


class ConversationCreated(_Event, frozen=True, tag="conversation_created"):
    conversation_id: uuid.UUID
    owner: str
    title: str | None
    model: str
    options: dict[str, Any]
    system_prompt: str | None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    agent: str | None = None
    # Tool names or globs the model may call (None: the configured default).
    tools: tuple[str, ...] | None = None


class ConversationUpdated(_Event, frozen=True, tag="conversation_updated"):
    title: str | UnsetType | None = UNSET
    model: str | UnsetType = UNSET
    options: dict[str, Any] | UnsetType = UNSET
    system_prompt: str | UnsetType | None = UNSET
    metadata: dict[str, str] | UnsetType = UNSET  # replaces the whole map
    agent: str | UnsetType | None = UNSET
    tools: tuple[str, ...] | UnsetType | None = UNSET


class ConversationDeleted(_Event, frozen=True, tag="conversation_deleted"):
    pass


class Command(msgspec.Struct, frozen=True, kw_only=True):
    """A prompt command a user message invoked."""

    name: str
    input: str


class UserMessageSent(_Event, frozen=True, tag="user_message_sent"):
    message_id: uuid.UUID
    seq: int
    content: str
    client_message_id: str | None = None
    options: dict[str, Any] | None = None  # per-message model options, over the conversation's
    # Typed as `/NAME input` naming a prompt command: the command, and the expanded template
    # the model is sent instead of ``content`` (decided, date included, when it was sent).
    command: Command | None = None
    prompt: str | None = None
    # Set: a new version (edit and resend) under this parent (None: a first row), made the
    # active one. Unset (every send, and events written before versions): the row follows
    # the conversation's active leaf.
    parent_id: uuid.UUID | UnsetType | None = UNSET


class UserMessageEdited(_Event, frozen=True, tag="user_message_edited"):
    message_id: uuid.UUID
    content: str


class AssistantTurnStarted(_Event, frozen=True, tag="assistant_turn_started"):
    """A new assistant row, ``generating``, owned by generation ``attempt``."""

    message_id: uuid.UUID
    seq: int
    attempt: uuid.UUID
    model: str
    reply_to: uuid.UUID | None = None
    retry_of: uuid.UUID | None = None
    options: dict[str, Any] | None = None  # a retry's options, over the user message's
    # Set: a new version (regenerate, retry) under this parent, made the active one. Unset
    # (a send's answer, a turn's next step, events written before versions): the row
    # follows the row before it (seq - 1).
    parent_id: uuid.UUID | UnsetType | None = UNSET


class _TurnEvent(_Event, frozen=True, kw_only=True):
    """An event about a generating assistant row, carrying the stream events since the
    previous stored one (coalesced) and the stream seq they reach.

    ``from_seq``, when set, is the stream seq the row must hold for these events to follow
    on: the store refuses a gap or an overlap. It also makes a checkpoint safe to send
    again when the answer to a write was lost: a repeat is recognised (the row already
    holds its ``stream_seq``, from further back) and refused as ``AlreadyStored``, so no
    text is ever stored twice."""

    message_id: uuid.UUID
    attempt: uuid.UUID | None
    events: tuple[StreamEvent, ...] = ()
    stream_seq: int
    from_seq: int | UnsetType = UNSET


class TurnCheckpointed(_TurnEvent, frozen=True, tag="turn_checkpointed"):
    """In-progress content, stored every TURNLOG_CHECKPOINT_S while it changes."""


class StepCompleted(_TurnEvent, frozen=True, tag="step_completed"):
    """The step finished; the row is ``completed``. ``awaiting_user`` holds the ids of
    interactive tool calls left for the user to answer (the conversation then waits)."""

    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    awaiting_user: tuple[str, ...] = ()


class TurnFailed(_TurnEvent, frozen=True, tag="turn_failed"):
    error: str


class TurnAborted(_TurnEvent, frozen=True, tag="turn_aborted"):
    """Cancelled by the user; the partial blocks are kept."""


class TurnInterrupted(_TurnEvent, frozen=True, tag="turn_interrupted"):
    """Its process died or shut down; the row keeps its last stored blocks."""

    reason: str


class TurnResumed(_Event, frozen=True, tag="turn_resumed"):
    """A generating row whose process died is taken over by generation ``attempt``, which
    continues it from the ``stream_seq`` events it holds (recovery number ``recovery``).
    Written only on top of ``previous_attempt`` at that seq: of two instances that find the
    same orphan, one takes it and the other is fenced."""

    message_id: uuid.UUID
    attempt: uuid.UUID
    previous_attempt: uuid.UUID | None
    stream_seq: int
    recovery: int


class ToolResultRecorded(_Event, frozen=True, tag="tool_result_recorded"):
    message_id: uuid.UUID
    seq: int
    reply_to: uuid.UUID
    tool_call_id: str
    tool_name: str
    content: str


class TitleGenerated(_Event, frozen=True, tag="title_generated"):
    """The server titled an untitled conversation after its first completed answer
    (``turnlog.product.titles``); refused if a title was set meanwhile."""

    title: str


class FeedbackGiven(_Event, frozen=True, tag="feedback_given"):
    """A user's rating of an assistant row; ``rating`` None clears it."""

    message_id: uuid.UUID
    rating: Literal["up", "down"] | None
    comment: str | None = None


class VersionSelected(_Event, frozen=True, tag="version_selected"):
    """The active path now ends at ``leaf_id``: the newest leaf below ``message_id``, the
    row the user chose (both decided by the command)."""

    message_id: uuid.UUID
    leaf_id: uuid.UUID


class StartedCall(msgspec.Struct, frozen=True, kw_only=True):
    """One server tool call about to run (see ``ToolCallsStarted``)."""

    tool_call_id: str
    tool_name: str
    # The same for every run of this call (a hash of the step's row id and the call id);
    # the tool receives it (turnlog.ToolContext, MCP ``_meta``).
    idempotency_key: str
    effect: Literal["read_only", "idempotent", "side_effect"]


class ToolCallsStarted(_TurnEvent, frozen=True, tag="tool_calls_started"):
    """Server tool calls of a step are about to run: stored BEFORE any of them runs.

    The row stays ``generating`` (it is a checkpoint of the step, carrying the stream
    events not yet stored) until the step's ``StepCompleted`` stores the results. So a
    process that dies while tools run leaves a generating row whose log says which calls
    started and have no result: recovery runs one again only if its ``effect`` is
    ``read_only`` or ``idempotent`` (docs/tools.md, "At most once")."""

    calls: tuple[StartedCall, ...]


class ApprovedCallStarted(_Event, frozen=True, tag="approved_call_started"):
    """A call the user approved is about to run: stored BEFORE it runs. Its row has ended
    (the call waits for its answer), so if the process dies before the result is stored,
    the call waits again; approving it again then does not run a ``side_effect`` call twice
    (its result says it may or may not have happened), and runs a read-only or idempotent
    one again under the same idempotency key."""

    message_id: uuid.UUID
    call: StartedCall


DomainEvent = (
    ConversationCreated
    | ConversationUpdated
    | ConversationDeleted
    | UserMessageSent
    | UserMessageEdited
    | AssistantTurnStarted
    | TurnCheckpointed
    | StepCompleted
    | TurnFailed
    | TurnAborted
    | TurnInterrupted
    | ToolResultRecorded
    | TitleGenerated
    | FeedbackGiven
    | VersionSelected
    | TurnResumed
    | ToolCallsStarted
    | ApprovedCallStarted
)

TurnEvent = (
    TurnCheckpointed | StepCompleted | TurnFailed | TurnAborted | TurnInterrupted | ToolCallsStarted
)

EVENT_TYPES: dict[type[Any], str] = {cls: cls.__struct_config__.tag for cls in DomainEvent.__args__}

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[DomainEvent] = msgspec.json.Decoder(DomainEvent)


def encode(event: DomainEvent) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes | str) -> DomainEvent:
    return _decoder.decode(data)


def event_type(event: DomainEvent) -> str:
    return EVENT_TYPES[type(event)]


def coalesce(events: list[StreamEvent]) -> tuple[StreamEvent, ...]:
    """Join runs of adjacent text deltas (and of reasoning deltas) into one event.

    Folding the result equals folding the input: a run of deltas onto one block appends
    their texts in order. Tool-call events are kept as they are.
    """
    out: list[StreamEvent] = []
    run: list[str] = []
    run_type: type[Any] | None = None

    def flush() -> None:
        if run_type is not None and run:
            out.append(run_type(text="".join(run)))
        run.clear()

    for ev in events:
        kind = type(ev)
        if kind is TextDelta or kind is ReasoningDelta:
            if kind is not run_type:
                flush()
                run_type = kind
            run.append(ev.text)  # type: ignore[union-attr]
        else:
            flush()
            run_type = None
            out.append(ev)
    flush()
    return tuple(out)
