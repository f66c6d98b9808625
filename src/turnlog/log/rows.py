"""The mapper: projection rows <-> PostgreSQL columns, and the parameters of the writes.

- column lists of ``conversations`` and ``messages`` (the order every read and write uses);
- the row codecs, :func:`conversation_from_row` / :func:`message_from_row` and their
  inverses for COPY (:func:`conversation_params`, :func:`message_params`);
- :func:`configure_connection`: jsonb arrives as bytes, for msgspec to decode;
- :class:`Write` and the parameters of the statements of :mod:`turnlog.log.statements`.

Nothing here runs SQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
import psycopg
from psycopg.adapt import Loader
from turnlog_reducer import Block

from turnlog.log import events as ev
from turnlog.log.fold import Folded
from turnlog.log.projection import (
    Conversation,
    ConversationRecord,
    Feedback,
    Message,
    MessageRecord,
)


class _RawJson(Loader):
    """Hand jsonb/json columns over as bytes: msgspec decodes them into typed Structs,
    far faster than json.loads into dicts first."""

    def load(self, data: Any) -> bytes:
        return bytes(data)


def configure_connection(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """Per-connection setup shared by the pool and the CLI tools."""
    conn.adapters.register_loader("jsonb", _RawJson)
    conn.adapters.register_loader("json", _RawJson)


_blocks = msgspec.json.Decoder(tuple[Block, ...])
_obj = msgspec.json.Decoder(dict[str, Any])
_strings = msgspec.json.Decoder(dict[str, str])
_names = msgspec.json.Decoder(tuple[str, ...] | None)
_feedback = msgspec.json.Decoder(Feedback)
_command = msgspec.json.Decoder(ev.Command)
json_encoder = msgspec.json.Encoder()

CONVERSATION_COLUMNS = (
    "id, owner, title, model, options, system_prompt, state, version, last_seq, "
    "created_at, updated_at, metadata, agent, active_leaf_id, leaf_seq, last_id, tree, tools"
)
MESSAGE_COLUMNS = (
    "id, conversation_id, seq, role, content, blocks, status, error, finish_reason, usage, "
    "model, reply_to, tool_call_id, tool_name, edited_content, edited_at, created_at, "
    "updated_at, attempt, stream_seq, client_message_id, options, open_tool_calls, awaiting_user, "
    "feedback, command, prompt, parent_id"
)
# The same columns one by one (for SET lists and prefixed selects).
CONVERSATION_FIELDS = CONVERSATION_COLUMNS.split(", ")
MESSAGE_FIELDS = MESSAGE_COLUMNS.split(", ")


def conversation_from_row(row: Sequence[Any]) -> ConversationRecord:
    (
        cid,
        owner,
        title,
        model,
        options,
        system_prompt,
        state,
        version,
        last_seq,
        created,
        updated,
        metadata,
        agent,
        active_leaf_id,
        leaf_seq,
        last_id,
        tree,
        tools,
    ) = row
    return ConversationRecord(
        conversation=Conversation(
            id=cid,
            title=title,
            model=model,
            options=_obj.decode(options),
            system_prompt=system_prompt,
            state=state,
            version=version,
            created_at=created,
            updated_at=updated,
            metadata=_strings.decode(metadata),
            agent=agent,
            active_leaf_id=active_leaf_id,
            tools=None if tools is None else _names.decode(tools),
        ),
        owner=owner,
        last_seq=last_seq,
        leaf_seq=leaf_seq,
        last_id=last_id,
        tree=tuple(tree),
    )


def message_from_row(row: Sequence[Any]) -> MessageRecord:
    (
        mid,
        cid,
        seq,
        role,
        content,
        blocks,
        status,
        error,
        finish_reason,
        usage,
        model,
        reply_to,
        tool_call_id,
        tool_name,
        edited_content,
        edited_at,
        created,
        updated,
        attempt,
        stream_seq,
        client_message_id,
        options,
        open_tool_calls,
        awaiting_user,
        feedback,
        command,
        prompt,
        parent_id,
    ) = row
    return MessageRecord(
        message=Message(
            id=mid,
            conversation_id=cid,
            seq=seq,
            role=role,
            content=content,
            blocks=_blocks.decode(blocks),
            status=status,
            is_generating=status == "generating",
            interrupted=status == "interrupted",
            error=error,
            finish_reason=finish_reason,
            usage=None if usage is None else _obj.decode(usage),
            model=model,
            reply_to=reply_to,
            tool_call_id=tool_call_id,
            tool_name=tool_name,
            edited_content=edited_content,
            edited_at=edited_at,
            created_at=created,
            updated_at=updated,
            feedback=None if feedback is None else _feedback.decode(feedback),
            command=None if command is None else _command.decode(command),
            parent_id=parent_id,
        ),
        attempt=attempt,
        stream_seq=stream_seq,
        client_message_id=client_message_id,
        options=None if options is None else _obj.decode(options),
        open_tool_calls=tuple(open_tool_calls),
        awaiting_user=tuple(awaiting_user),
        prompt=prompt,
    )


def message_with_conversation(
    row: Sequence[Any],
) -> tuple[MessageRecord, ConversationRecord | None]:
    """A row of MESSAGE_FIELDS then CONVERSATION_FIELDS (a LEFT JOIN: NULLs if the
    conversation is gone)."""
    n = len(MESSAGE_FIELDS)
    message = message_from_row(row[:n])
    return message, None if row[n] is None else conversation_from_row(row[n:])


def conversation_params(r: ConversationRecord) -> tuple[Any, ...]:
    c = r.conversation
    return (
        c.id,
        r.owner,
        c.title,
        c.model,
        json_encoder.encode(c.options).decode(),
        c.system_prompt,
        c.state,
        c.version,
        r.last_seq,
        c.created_at,
        c.updated_at,
        json_encoder.encode(c.metadata).decode(),
        c.agent,
        c.active_leaf_id,
        r.leaf_seq,
        r.last_id,
        list(r.tree),
        None if c.tools is None else json_encoder.encode(c.tools).decode(),
    )


def message_params(r: MessageRecord) -> tuple[Any, ...]:
    m = r.message
    return (
        m.id,
        m.conversation_id,
        m.seq,
        m.role,
        m.content,
        json_encoder.encode(m.blocks).decode(),
        m.status,
        m.error,
        m.finish_reason,
        None if m.usage is None else json_encoder.encode(m.usage).decode(),
        m.model,
        m.reply_to,
        m.tool_call_id,
        m.tool_name,
        m.edited_content,
        m.edited_at,
        m.created_at,
        m.updated_at,
        r.attempt,
        r.stream_seq,
        r.client_message_id,
        None if r.options is None else json_encoder.encode(r.options).decode(),
        list(r.open_tool_calls),
        list(r.awaiting_user),
        None if m.feedback is None else json_encoder.encode(m.feedback).decode(),
        None if m.command is None else json_encoder.encode(m.command).decode(),
        r.prompt,
        m.parent_id,
    )


def message_json(r: MessageRecord) -> dict[str, Any]:
    """A message row as jsonb_populate_recordset reads it: column name to value."""
    row = msgspec.structs.asdict(r.message)
    row.update(
        attempt=r.attempt,
        stream_seq=r.stream_seq,
        client_message_id=r.client_message_id,
        options=r.options,
        open_tool_calls=r.open_tool_calls,
        awaiting_user=r.awaiting_user,
        prompt=r.prompt,
    )
    return row


def event_metadata(actor: str, request_id: str | None) -> str:
    """The ``metadata`` column of an append's events."""
    return json_encoder.encode({"actor": actor, "request_id": request_id}).decode()


class Write(msgspec.Struct, frozen=True):
    """One guarded write of a folded batch: written only if the conversation is still at
    version ``expected`` (0 for a creation). ``instance_id`` takes the leases of the turns
    the batch starts."""

    cid: uuid.UUID
    fold: Folded
    expected: int
    metadata: str
    instance_id: uuid.UUID | None


def lease_changes(
    rows: Sequence[MessageRecord], instance_id: uuid.UUID | None
) -> tuple[list[uuid.UUID], list[tuple[uuid.UUID, uuid.UUID]]]:
    """(assistant rows that stopped generating: their leases go; (row, attempt) of rows
    generating, whose lease ``instance_id`` takes)."""
    ended = [
        r.message.id for r in rows if r.message.role == "assistant" and not r.message.is_generating
    ]
    started = (
        []
        if instance_id is None
        else [
            (r.message.id, r.attempt)
            for r in rows
            if r.message.is_generating and r.attempt is not None
        ]
    )
    return ended, started


def write_params(w: Write) -> dict[str, Any]:
    """The parameters of ``WRITE`` (or of ``WRITE_DELETION``, for a batch that deletes the
    conversation: the first six only). The events' metadata is ``event_metadata``: the
    conversation's own ``metadata`` column is among the others."""
    fold = w.fold
    params: dict[str, Any] = {
        "id": w.cid,
        "expected": w.expected,
        "event_metadata": w.metadata,
        "versions": [v for v, _ in fold.stored],
        "types": fold.types,
        "data": fold.data,
    }
    if fold.conversation is None:
        return params
    ended, started = lease_changes(fold.rows, w.instance_id)
    params.update(zip(CONVERSATION_FIELDS, conversation_params(fold.conversation), strict=True))
    params.update(
        messages=json_encoder.encode([message_json(r) for r in fold.rows]).decode(),
        ended=ended,
        lease_ids=[m for m, _ in started],
        lease_attempts=[a for _, a in started],
        instance=w.instance_id,
    )
    return params


def write_many_params(batch: Sequence[Write]) -> dict[str, Any]:
    """The parameters of ``WRITE_MANY`` for ``batch`` (different conversations, none a
    deletion)."""
    conversations: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    event_of: list[uuid.UUID] = []
    versions: list[int] = []
    types: list[str] = []
    data: list[str] = []
    metadata: list[str] = []
    ended: list[uuid.UUID] = []
    ended_of: list[uuid.UUID] = []
    lease_ids: list[uuid.UUID] = []
    lease_attempts: list[uuid.UUID] = []
    lease_instances: list[uuid.UUID | None] = []
    lease_of: list[uuid.UUID] = []
    for w in batch:
        fold, cid = w.fold, w.cid
        conv = fold.conversation
        assert conv is not None
        row = msgspec.structs.asdict(conv.conversation)
        row.update(
            owner=conv.owner,
            last_seq=conv.last_seq,
            leaf_seq=conv.leaf_seq,
            last_id=conv.last_id,
            tree=conv.tree,
        )
        conversations.append(row)
        messages += [message_json(r) for r in fold.rows]
        n = len(fold.stored)
        event_of += [cid] * n
        versions += [v for v, _ in fold.stored]
        types += fold.types
        data += fold.data
        metadata += [w.metadata] * n
        gone, started = lease_changes(fold.rows, w.instance_id)
        ended += gone
        ended_of += [cid] * len(gone)
        lease_ids += [m for m, _ in started]
        lease_attempts += [a for _, a in started]
        lease_instances += [w.instance_id] * len(started)
        lease_of += [cid] * len(started)
    return {
        "ids": [w.cid for w in batch],
        "expected": [w.expected for w in batch],
        "conversations": json_encoder.encode(conversations).decode(),
        "event_of": event_of,
        "versions": versions,
        "types": types,
        "data": data,
        "metadata": metadata,
        "messages": json_encoder.encode(messages).decode(),
        "ended": ended,
        "ended_of": ended_of,
        "lease_ids": lease_ids,
        "lease_attempts": lease_attempts,
        "lease_instances": lease_instances,
        "lease_of": lease_of,
    }
