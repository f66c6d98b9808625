"""The projection: a pure fold of domain events into conversation and message rows.

The live path (``store``) and replay (``turnlog.replay``) both call :func:`evolve`; nothing
here reads a clock, makes an id or touches the database. :func:`check` states the rules an
event must satisfy against the current rows (the fences); the store runs it before every
append, replay trusts the log.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

import msgspec
from turnlog_reducer import Block, ToolCallBlock, fold

from turnlog.errors import AlreadyStored, ConversationBusy, Fenced, InvalidEvent, NotFound
from turnlog.log.events import (
    UNSET,
    ApprovedCallStarted,
    AssistantTurnStarted,
    Command,
    ConversationCreated,
    ConversationDeleted,
    ConversationUpdated,
    DomainEvent,
    FeedbackGiven,
    StepCompleted,
    TitleGenerated,
    ToolCallsStarted,
    ToolResultRecorded,
    TurnAborted,
    TurnCheckpointed,
    TurnEvent,
    TurnFailed,
    TurnInterrupted,
    TurnResumed,
    UserMessageEdited,
    UserMessageSent,
    VersionSelected,
)

ConversationState = Literal["idle", "generating", "awaiting_input"]
Role = Literal["user", "assistant", "tool", "system"]
Status = Literal["generating", "completed", "interrupted", "error", "aborted"]


class Conversation(msgspec.Struct, frozen=True, kw_only=True):
    """A conversation as the API shows it (docs/protocol.md, "HTTP")."""

    id: uuid.UUID
    title: str | None
    model: str
    options: dict[str, Any]
    system_prompt: str | None
    state: ConversationState
    version: int
    created_at: datetime
    updated_at: datetime
    # At most 16 string keys to string values (turnlog.product.metadata checks them).
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    # The preset whose fields are this conversation's defaults (turnlog.product.agents).
    agent: str | None = None
    # Where the active path ends (None: no rows yet). See turnlog.log.tree.
    active_leaf_id: uuid.UUID | None = None
    # Tool names or globs its model may call (None: the agent's, else the configured default).
    tools: tuple[str, ...] | None = None


class Feedback(msgspec.Struct, frozen=True, kw_only=True):
    """A user's rating of an assistant row (``PUT /v1/messages/{mid}/feedback``)."""

    rating: Literal["up", "down"]
    comment: str | None
    at: datetime


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """A message row as the API shows it (docs/protocol.md, "HTTP")."""

    id: uuid.UUID
    conversation_id: uuid.UUID
    seq: int
    role: Role
    content: str | None
    blocks: tuple[Block, ...]
    status: Status
    is_generating: bool
    interrupted: bool
    error: str | None
    finish_reason: str | None
    usage: dict[str, Any] | None
    model: str | None
    reply_to: uuid.UUID | None
    tool_call_id: str | None
    tool_name: str | None
    edited_content: str | None
    edited_at: datetime | None
    created_at: datetime
    updated_at: datetime
    feedback: Feedback | None = None
    command: Command | None = None  # a user row typed as `/NAME input`
    # Versions (turnlog.log.tree): the row this one follows; this row's index among the
    # rows sharing that parent, and their count (counted, not stored: see ``numbered``).
    parent_id: uuid.UUID | None = None
    version: int = 1
    versions: int = 1


class ConversationRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A conversation row with the columns only the server sees."""

    conversation: Conversation
    owner: str
    last_seq: int
    # The tree of its rows (turnlog.log.tree): the active leaf's seq, the id of the row at
    # ``last_seq``, and every row's parent seq by seq (0 for a first row).
    leaf_seq: int = 0
    last_id: uuid.UUID | None = None
    tree: tuple[int, ...] = ()


class MessageRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A message row with the columns only the server sees.

    ``attempt`` fences a generating row to the generation that owns it; ``stream_seq`` is
    how many stream events its blocks hold; ``options`` are a user row's per-message model
    options; ``open_tool_calls`` are this step's tool calls
    still without a result, ``awaiting_user`` the interactive ones among them.
    """

    message: Message
    attempt: uuid.UUID | None = None
    stream_seq: int = 0
    client_message_id: str | None = None
    options: dict[str, Any] | None = None
    open_tool_calls: tuple[str, ...] = ()
    awaiting_user: tuple[str, ...] = ()
    # A command's expanded template: what the model is sent instead of ``content``.
    prompt: str | None = None


class Outcome(msgspec.Struct, frozen=True):
    """What one event changed: the conversation after it (None once deleted) and the
    message rows it created or changed, in seq order."""

    conversation: ConversationRecord | None
    messages: tuple[MessageRecord, ...]


def referenced_messages(event: DomainEvent) -> tuple[uuid.UUID, ...]:
    """The existing message rows :func:`check` and :func:`evolve` need to see."""
    match event:
        case UserMessageEdited(message_id=mid) | TurnCheckpointed(message_id=mid):
            return (mid,)
        case ToolCallsStarted(message_id=mid):
            return (mid,)
        case StepCompleted(message_id=mid) | TurnFailed(message_id=mid):
            return (mid,)
        case TurnAborted(message_id=mid) | TurnInterrupted(message_id=mid):
            return (mid,)
        case (
            ToolResultRecorded(reply_to=mid)
            | FeedbackGiven(message_id=mid)
            | TurnResumed(message_id=mid)
            | ApprovedCallStarted(message_id=mid)
        ):
            return (mid,)
        case UserMessageSent(parent_id=uuid.UUID() as mid):
            return (mid,)
        case AssistantTurnStarted(parent_id=uuid.UUID() as mid):
            return (mid,)
        case VersionSelected(message_id=mid, leaf_id=leaf):
            return (mid, leaf)
        case _:
            return ()


def created_messages(event: DomainEvent) -> tuple[uuid.UUID, ...]:
    """The message rows ``event`` creates."""
    match event:
        case UserMessageSent(message_id=mid) | AssistantTurnStarted(message_id=mid):
            return (mid,)
        case ToolResultRecorded(message_id=mid):
            return (mid,)
        case _:
            return ()


def check(
    conv: ConversationRecord | None,
    messages: Mapping[uuid.UUID, MessageRecord],
    event: DomainEvent,
) -> None:
    """Raise a :class:`DomainError` unless ``event`` may be appended on top of these rows."""
    if isinstance(event, ConversationCreated):
        if conv is not None:
            raise InvalidEvent(f"conversation {event.conversation_id} already exists")
        return
    if conv is None:
        raise NotFound("conversation not found")
    cid = conv.conversation.id
    match event:
        case UserMessageSent() | AssistantTurnStarted() | ToolResultRecorded():
            if event.seq != conv.last_seq + 1:
                raise InvalidEvent(
                    f"expected message seq {conv.last_seq + 1} in conversation {cid}, "
                    f"got {event.seq}"
                )
    match event:
        case (
            UserMessageSent(parent_id=uuid.UUID() as parent)
            | AssistantTurnStarted(parent_id=uuid.UUID() as parent)
        ):
            # A new version's parent: an existing row of this conversation. Being a new row,
            # the child can never be its own ancestor (no route makes a cycle).
            if _row(messages, parent).message.conversation_id != cid:
                raise NotFound(f"message {parent} not found in conversation {cid}")
    match event:
        case UserMessageSent():
            if conv.conversation.state != "idle":
                raise ConversationBusy(f"conversation {cid} is {conv.conversation.state}")
        case AssistantTurnStarted():
            if conv.conversation.state == "generating":
                raise ConversationBusy(f"conversation {cid} is generating")
        case UserMessageEdited(message_id=mid):
            row = _row(messages, mid)
            if row.message.role != "user":
                raise InvalidEvent(
                    f"message {mid} is a {row.message.role} message; "
                    "only user messages can be edited"
                )
        case (
            TurnCheckpointed()
            | StepCompleted()
            | TurnFailed()
            | TurnAborted()
            | TurnInterrupted()
            | ToolCallsStarted()
        ):
            row = _row(messages, event.message_id)
            if row.message.status != "generating":
                raise Fenced(
                    f"message {event.message_id} is {row.message.status}, no longer generating"
                )
            if event.attempt is not None and event.attempt != row.attempt:
                raise Fenced(
                    f"message {event.message_id} belongs to attempt {row.attempt}, "
                    f"not {event.attempt}"
                )
            if event.attempt is None and not isinstance(event, TurnAborted | TurnInterrupted):
                raise InvalidEvent(f"{type(event).__name__} needs the generation's attempt id")
            if event.from_seq is not UNSET and event.from_seq != row.stream_seq:
                if (
                    isinstance(event, TurnCheckpointed | ToolCallsStarted)
                    and event.from_seq < row.stream_seq
                    and event.stream_seq == row.stream_seq
                ):
                    raise AlreadyStored(
                        f"message {event.message_id} already holds this checkpoint "
                        f"(stream seq {event.from_seq} to {event.stream_seq})"
                    )
                raise InvalidEvent(
                    f"message {event.message_id} holds stream seq {row.stream_seq}, but the "
                    f"event follows on from {event.from_seq}"
                )
            if event.stream_seq < row.stream_seq:
                raise InvalidEvent(
                    f"message {event.message_id} already holds stream seq {row.stream_seq}, "
                    f"got {event.stream_seq}"
                )
        case TurnResumed(message_id=mid):
            row = _row(messages, mid)
            if row.message.status != "generating":
                raise Fenced(f"message {mid} is {row.message.status}, no longer generating")
            if row.attempt != event.previous_attempt:
                raise Fenced(
                    f"message {mid} belongs to attempt {row.attempt}, "
                    f"not {event.previous_attempt}: someone else took it over"
                )
            if row.stream_seq != event.stream_seq:
                raise InvalidEvent(
                    f"message {mid} holds stream seq {row.stream_seq}, but the takeover "
                    f"continues from {event.stream_seq}"
                )
        case ToolResultRecorded(reply_to=mid, tool_call_id=call):
            row = _row(messages, mid)
            if call not in row.open_tool_calls:
                raise InvalidEvent(f"message {mid} has no tool call {call!r} waiting for a result")
        case ApprovedCallStarted(message_id=mid, call=started):
            row = _row(messages, mid)
            if started.tool_call_id not in row.open_tool_calls:
                raise InvalidEvent(
                    f"message {mid} has no tool call {started.tool_call_id!r} waiting for a result"
                )
        case TitleGenerated():
            if conv.conversation.title is not None:
                # A title set by a user (even while the titling ran) always wins.
                raise InvalidEvent(f"conversation {cid} already has a title")
        case FeedbackGiven(message_id=mid):
            row = _row(messages, mid)
            if row.message.conversation_id != cid or row.message.role != "assistant":
                raise InvalidEvent(
                    f"message {mid} is not an assistant message of conversation {cid}; "
                    "only answers take feedback"
                )
        case VersionSelected(message_id=mid, leaf_id=leaf_id):
            chosen, leaf = _row(messages, mid).message, _row(messages, leaf_id).message
            for m in (chosen, leaf):
                if m.conversation_id != cid:
                    raise NotFound(f"message {m.id} not found in conversation {cid}")
            s = leaf.seq
            while s > chosen.seq:
                s = conv.tree[s - 1]
            if s != chosen.seq:
                raise InvalidEvent(f"message {leaf_id} is not below message {mid}")
            if leaf.seq in conv.tree:
                raise InvalidEvent(f"message {leaf_id} has replies: it is not a leaf")
        case _:
            pass


def _row(messages: Mapping[uuid.UUID, MessageRecord], mid: uuid.UUID) -> MessageRecord:
    row = messages.get(mid)
    if row is None:
        raise NotFound(f"message {mid} not found")
    return row


def evolve(
    conv: ConversationRecord | None,
    messages: Mapping[uuid.UUID, MessageRecord],
    event: DomainEvent,
    version: int,
) -> Outcome:
    """Fold one event (stored at ``version``) into the rows it touches.

    ``messages`` must hold the rows :func:`referenced_messages` names. The event is assumed
    valid (see :func:`check`).
    """
    if isinstance(event, ConversationCreated):
        c = Conversation(
            id=event.conversation_id,
            title=event.title,
            model=event.model,
            options=event.options,
            system_prompt=event.system_prompt,
            state="idle",
            version=version,
            created_at=event.at,
            updated_at=event.at,
            metadata=event.metadata,
            agent=event.agent,
            tools=event.tools,
        )
        return Outcome(ConversationRecord(conversation=c, owner=event.owner, last_seq=0), ())
    assert conv is not None, "event for a missing conversation"
    c = conv.conversation
    at = event.at
    match event:
        case ConversationUpdated():
            c = msgspec.structs.replace(
                c,
                title=c.title if event.title is UNSET else event.title,
                model=c.model if event.model is UNSET else event.model,
                options=c.options if event.options is UNSET else event.options,
                system_prompt=(
                    c.system_prompt if event.system_prompt is UNSET else event.system_prompt
                ),
                metadata=c.metadata if event.metadata is UNSET else event.metadata,
                agent=c.agent if event.agent is UNSET else event.agent,
                tools=c.tools if event.tools is UNSET else event.tools,
                updated_at=at,
            )
            return _with(conv, c, version)
        case TitleGenerated():
            c = msgspec.structs.replace(c, title=event.title, updated_at=at)
            return _with(conv, c, version)
        case FeedbackGiven():
            old = messages[event.message_id]
            feedback = (
                None
                if event.rating is None
                else Feedback(rating=event.rating, comment=event.comment, at=at)
            )
            m = msgspec.structs.replace(old.message, feedback=feedback, updated_at=at)
            return _with(conv, c, version, (msgspec.structs.replace(old, message=m),))
        case ConversationDeleted():
            return Outcome(None, ())
        case UserMessageSent():
            conv, pid = _place(conv, messages, event)
            m = _new_message(
                event.message_id, c.id, event.seq, "user", at, content=event.content, parent_id=pid
            )
            if event.command is not None:
                m = msgspec.structs.replace(m, command=event.command)
            row = MessageRecord(
                message=m,
                client_message_id=event.client_message_id,
                options=event.options,
                prompt=event.prompt,
            )
            c = msgspec.structs.replace(conv.conversation, updated_at=at)
            return _with(conv, c, version, (row,), event.seq)
        case UserMessageEdited():
            old = messages[event.message_id]
            m = msgspec.structs.replace(
                old.message, edited_content=event.content, edited_at=at, updated_at=at
            )
            return _with(conv, c, version, (msgspec.structs.replace(old, message=m),))
        case AssistantTurnStarted():
            conv, pid = _place(conv, messages, event)
            c = conv.conversation
            m = _new_message(
                event.message_id,
                c.id,
                event.seq,
                "assistant",
                at,
                status="generating",
                model=event.model,
                reply_to=event.reply_to,
                parent_id=pid,
            )
            row = MessageRecord(message=m, attempt=event.attempt, options=event.options)
            c = msgspec.structs.replace(c, state="generating", updated_at=at)
            return _with(conv, c, version, (row,), event.seq)
        case ToolResultRecorded():
            conv, after = _place(conv, messages, event)
            c = conv.conversation
            parent = messages[event.reply_to]
            parent = msgspec.structs.replace(
                parent,
                open_tool_calls=tuple(t for t in parent.open_tool_calls if t != event.tool_call_id),
            )
            if c.state == "awaiting_input" and not (
                set(parent.awaiting_user) & set(parent.open_tool_calls)
            ):
                # Every question has a result (an answer, or a withdrawal by cancel): the
                # conversation waits no longer. An answer's batch then starts the next step.
                c = msgspec.structs.replace(c, state="idle", updated_at=at)
            m = _new_message(
                event.message_id,
                c.id,
                event.seq,
                "tool",
                at,
                content=event.content,
                reply_to=event.reply_to,
                tool_call_id=event.tool_call_id,
                tool_name=event.tool_name,
                parent_id=after,
            )
            return _with(conv, c, version, (parent, MessageRecord(message=m)), event.seq)
        case VersionSelected():
            leaf = messages[event.leaf_id].message
            conv = msgspec.structs.replace(conv, leaf_seq=leaf.seq)
            c = msgspec.structs.replace(c, active_leaf_id=leaf.id, updated_at=at)
            return _with(conv, c, version)
        case ApprovedCallStarted():
            # A record for recovery (turnlog.tool_answers): no row changes.
            return _with(conv, c, version)
        case TurnResumed():
            # The row goes on generating under its new owner; its blocks stay as stored.
            old = messages[event.message_id]
            m = msgspec.structs.replace(old.message, updated_at=at)
            row = msgspec.structs.replace(old, message=m, attempt=event.attempt)
            return _with(conv, c, version, (row,))
        case (
            TurnCheckpointed()
            | StepCompleted()
            | TurnFailed()
            | TurnAborted()
            | TurnInterrupted()
            | ToolCallsStarted()
        ):
            return _evolve_turn(conv, messages[event.message_id], event, version)
    raise AssertionError(f"unhandled event {type(event).__name__}")


def _evolve_turn(
    conv: ConversationRecord,
    old: MessageRecord,
    event: TurnEvent,
    version: int,
) -> Outcome:
    at = event.at
    blocks = tuple(fold(old.message.blocks, event.events)) if event.events else old.message.blocks
    m = msgspec.structs.replace(old.message, blocks=blocks, updated_at=at)
    row = msgspec.structs.replace(old, message=m, stream_seq=event.stream_seq)
    c = conv.conversation
    if isinstance(event, TurnCheckpointed | ToolCallsStarted):
        return _with(conv, c, version, (row,))
    if isinstance(event, StepCompleted):
        calls = tuple(b.id for b in blocks if isinstance(b, ToolCallBlock))
        m = _end(m, "completed", finish_reason=event.finish_reason, usage=event.usage)
        row = msgspec.structs.replace(
            row, message=m, attempt=None, open_tool_calls=calls, awaiting_user=event.awaiting_user
        )
        state: ConversationState = "awaiting_input" if event.awaiting_user else "idle"
    elif isinstance(event, TurnFailed):
        row = msgspec.structs.replace(
            row, message=_end(m, "error", error=event.error), attempt=None
        )
        state = "idle"
    elif isinstance(event, TurnAborted):
        row = msgspec.structs.replace(row, message=_end(m, "aborted"), attempt=None)
        state = "idle"
    else:
        row = msgspec.structs.replace(row, message=_end(m, "interrupted"), attempt=None)
        state = "idle"
    return _with(conv, msgspec.structs.replace(c, state=state, updated_at=at), version, (row,))


def _place(
    conv: ConversationRecord,
    messages: Mapping[uuid.UUID, MessageRecord],
    event: UserMessageSent | AssistantTurnStarted | ToolResultRecorded,
) -> tuple[ConversationRecord, uuid.UUID | None]:
    """Put the row ``event`` creates into the tree; (the conversation after, its parent).

    - A new version (the event names its parent): under that parent, and the active path
      now ends at it.
    - A user row naming none (a send): after the active leaf, which it becomes.
    - Any other row (a send's answer, a tool result, a turn's next step, and every row of a
      log written before versions): after the row before it (seq - 1), the tail of the one
      turn that can be running; it becomes the active leaf only if that row was the leaf
      (the user may have selected another path while it ran).
    """
    explicit = not isinstance(event, ToolResultRecorded) and event.parent_id is not UNSET
    if explicit:
        assert not isinstance(event, ToolResultRecorded)
        parent = event.parent_id
        assert parent is not UNSET
        pseq = 0 if parent is None else messages[parent].message.seq
        leaf = True
    elif isinstance(event, UserMessageSent):
        parent, pseq, leaf = conv.conversation.active_leaf_id, conv.leaf_seq, True
    else:
        parent, pseq = conv.last_id, conv.last_seq
        leaf = pseq == conv.leaf_seq
    c = conv.conversation
    if leaf:
        c = msgspec.structs.replace(c, active_leaf_id=event.message_id)
    record = msgspec.structs.replace(
        conv,
        conversation=c,
        leaf_seq=event.seq if leaf else conv.leaf_seq,
        last_id=event.message_id,
        tree=(*conv.tree, pseq),
    )
    return record, parent


def _end(m: Message, status: Status, **fields: Any) -> Message:
    return msgspec.structs.replace(
        m, status=status, is_generating=False, interrupted=status == "interrupted", **fields
    )


def _with(
    conv: ConversationRecord,
    c: Conversation,
    version: int,
    rows: tuple[MessageRecord, ...] = (),
    last_seq: int | None = None,
) -> Outcome:
    record = msgspec.structs.replace(
        conv,
        conversation=msgspec.structs.replace(c, version=version),
        last_seq=conv.last_seq if last_seq is None else last_seq,
    )
    return Outcome(record, tuple(numbered_row(record.tree, r) for r in rows))


def numbered_row(tree: tuple[int, ...], r: MessageRecord) -> MessageRecord:
    """``r`` with its version and versions as of ``tree`` (see turnlog.log.tree)."""
    m = r.message
    if m.seq > len(tree):
        return r  # a log that does not hold the row's creation (never in a valid one)
    parent = tree[m.seq - 1]
    # tuple.count runs in C: microseconds per row even with thousands of rows.
    version, versions = tree[: m.seq - 1].count(parent) + 1, tree.count(parent)
    if m.version == version and m.versions == versions:
        return r
    return msgspec.structs.replace(
        r, message=msgspec.structs.replace(m, version=version, versions=versions)
    )


def _new_message(
    mid: uuid.UUID,
    cid: uuid.UUID,
    seq: int,
    role: Role,
    at: datetime,
    *,
    content: str | None = None,
    status: Status = "completed",
    model: str | None = None,
    reply_to: uuid.UUID | None = None,
    tool_call_id: str | None = None,
    tool_name: str | None = None,
    parent_id: uuid.UUID | None = None,
) -> Message:
    return Message(
        id=mid,
        conversation_id=cid,
        seq=seq,
        role=role,
        content=content,
        blocks=(),
        status=status,
        is_generating=status == "generating",
        interrupted=False,
        error=None,
        finish_reason=None,
        usage=None,
        model=model,
        reply_to=reply_to,
        tool_call_id=tool_call_id,
        tool_name=tool_name,
        edited_content=None,
        edited_at=None,
        created_at=at,
        updated_at=at,
        parent_id=parent_id,
    )
