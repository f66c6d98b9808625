"""The store: append domain events and update the projection rows in one transaction.

Error tree (all from :mod:`turnlog.log.projection` plus one here)::

    DomainError
    ├── NotFound            the conversation or message does not exist
    ├── ConversationBusy    generating or awaiting input
    ├── Fenced              a late write from a generation that no longer owns its row
    ├── InvalidEvent        any other rule of projection.check
    ├── AlreadyStored       a checkpoint sent again after its answer was lost
    └── VersionConflict     expected_version was not the conversation's version
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import anyio
import msgspec
import psycopg
import structlog
from psycopg.adapt import Loader
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool
from turnlog_reducer import Block, StreamProtocolError

from turnlog import aio
from turnlog.log import events as ev
from turnlog.log.events import DomainEvent, TurnCheckpointed
from turnlog.log.pool import BoundedPool
from turnlog.log.projection import (
    Conversation,
    ConversationRecord,
    DomainError,
    Feedback,
    InvalidEvent,
    Message,
    MessageRecord,
    check,
    created_messages,
    evolve,
    numbered_row,
    referenced_messages,
)
from turnlog.log.tree import numbered


class VersionConflict(DomainError):
    """Another writer appended to the conversation since the caller read it."""


class Change(msgspec.Struct, frozen=True):
    """A change in public view, as of ``version``: message rows whose API shape an append
    changed (their final state) or that the conversation's did (beyond its version and
    updated_at)."""

    version: int
    messages: tuple[Message, ...]
    conversation_changed: bool


class Appended(msgspec.Struct, frozen=True):
    """The result of one append: the conversation after it (None once deleted), every
    message row the events created or changed (final state, seq order), the events with
    their versions, and what changed in public view in version order (for the feeds)."""

    conversation_id: uuid.UUID
    conversation: ConversationRecord | None
    messages: tuple[MessageRecord, ...]
    events: tuple[tuple[int, DomainEvent], ...]
    changes: tuple[Change, ...] = ()

    @property
    def version(self) -> int:
        return self.events[-1][0]


def _public_change(before: ConversationRecord | None, after: ConversationRecord | None) -> bool:
    if before is None or after is None:
        return True
    a, b = before.conversation, after.conversation
    return (
        a.title,
        a.model,
        a.options,
        a.system_prompt,
        a.state,
        a.metadata,
        a.agent,
        a.active_leaf_id,
        a.tools,
    ) != (
        b.title,
        b.model,
        b.options,
        b.system_prompt,
        b.state,
        b.metadata,
        b.agent,
        b.active_leaf_id,
        b.tools,
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
_json = msgspec.json.Encoder()

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
_MESSAGE_WRITABLE = MESSAGE_COLUMNS.split(", ")
_CONVERSATION_WRITABLE = CONVERSATION_COLUMNS.split(", ")


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


def conversation_params(r: ConversationRecord) -> tuple[Any, ...]:
    c = r.conversation
    return (
        c.id,
        r.owner,
        c.title,
        c.model,
        _json.encode(c.options).decode(),
        c.system_prompt,
        c.state,
        c.version,
        r.last_seq,
        c.created_at,
        c.updated_at,
        _json.encode(c.metadata).decode(),
        c.agent,
        c.active_leaf_id,
        r.leaf_seq,
        r.last_id,
        list(r.tree),
        None if c.tools is None else _json.encode(c.tools).decode(),
    )


def message_params(r: MessageRecord) -> tuple[Any, ...]:
    m = r.message
    return (
        m.id,
        m.conversation_id,
        m.seq,
        m.role,
        m.content,
        _json.encode(m.blocks).decode(),
        m.status,
        m.error,
        m.finish_reason,
        None if m.usage is None else _json.encode(m.usage).decode(),
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
        None if r.options is None else _json.encode(r.options).decode(),
        list(r.open_tool_calls),
        list(r.awaiting_user),
        None if m.feedback is None else _json.encode(m.feedback).decode(),
        None if m.command is None else _json.encode(m.command).decode(),
        r.prompt,
        m.parent_id,
    )


def _updates(columns: list[str], key: str = "id") -> str:
    return ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c != key)


# Every append writes with one statement: this one on the locked way (in its transaction)
# and for a guarded write that goes alone (autocommit: its own transaction, one round trip);
# a guarded write of the group commit goes with others in `_WRITE_MANY` (below), which
# keeps the same guard per conversation. Its first step, `guard`, writes the conversation
# row, only if the conversation is still at the version the batch was folded onto (%(expected)s, 0
# for a creation). Every other write of the statement is conditioned on the guard's row, so
# when another writer got there first nothing at all is written.
# - The guard takes the conversation's row lock, the same lock the locked way's FOR UPDATE
#   takes, so it serialises writers the same way; ON CONFLICT evaluates its version test on
#   the newest row, after any wait for that lock. It is the first relation the statement
#   names, hence the first lock it takes, so rebuild's swap (conversations, then events)
#   cannot deadlock with it.
# - Events: ORDER BY v so positions follow versions. The arrays go in binary (%b): the text
#   array format would escape every quote of the JSON, one regex call each. The unique
#   (conversation_id, version) key backs the guard.
# - Messages come as one JSON array of rows (jsonb_populate_recordset): the whole batch's
#   rows in one parameter.
_LOG_EVENTS = (
    "logged AS ("
    " INSERT INTO events (conversation_id, version, type, data, metadata)"
    " SELECT %(id)s, v, t, d::jsonb, %(event_metadata)s::jsonb"
    " FROM unnest(%(versions)b::int[], %(types)b::text[], %(data)b::text[]) AS e (v, t, d)"
    " WHERE EXISTS (SELECT FROM guard) ORDER BY v)"
)
_WRITE = (
    f"WITH guard AS (INSERT INTO conversations ({CONVERSATION_COLUMNS}) VALUES ("
    + ", ".join(
        f"%({c})s::jsonb" if c in ("options", "metadata", "tools") else f"%({c})s"
        for c in _CONVERSATION_WRITABLE
    )
    + f") ON CONFLICT (id) DO UPDATE SET {_updates(_CONVERSATION_WRITABLE)}"
    " WHERE conversations.version = %(expected)s RETURNING id), "
    + _LOG_EVENTS
    + f", written AS (INSERT INTO messages ({MESSAGE_COLUMNS}) SELECT {MESSAGE_COLUMNS}"
    " FROM jsonb_populate_recordset(NULL::messages, %(messages)s::jsonb)"
    " WHERE EXISTS (SELECT FROM guard)"
    f" ON CONFLICT (id) DO UPDATE SET {_updates(_MESSAGE_WRITABLE)}"
    "), ended AS ("
    " DELETE FROM leases WHERE message_id = ANY(%(ended)s::uuid[])"
    " AND EXISTS (SELECT FROM guard)"
    "), started AS ("
    " INSERT INTO leases (message_id, attempt, instance_id)"
    " SELECT m, a, %(instance)s::uuid"
    " FROM unnest(%(lease_ids)s::uuid[], %(lease_attempts)s::uuid[]) AS l (m, a)"
    " WHERE EXISTS (SELECT FROM guard) ON CONFLICT (message_id) DO UPDATE"
    " SET attempt = EXCLUDED.attempt, instance_id = EXCLUDED.instance_id"
    ") SELECT count(*) FROM guard"
)
# A batch ending in the conversation's deletion: the same guard as a DELETE, then its rows
# and their leases go (all CTEs see the statement's snapshot, so `leases_gone` still finds
# the messages that `messages_gone` deletes).
_WRITE_DELETION = (
    "WITH guard AS (DELETE FROM conversations WHERE id = %(id)s AND version = %(expected)s"
    " RETURNING id), "
    + _LOG_EVENTS
    + ", leases_gone AS (DELETE FROM leases USING messages m WHERE leases.message_id = m.id"
    " AND m.conversation_id = %(id)s AND EXISTS (SELECT FROM guard))"
    ", messages_gone AS (DELETE FROM messages WHERE conversation_id = %(id)s"
    " AND EXISTS (SELECT FROM guard))"
    " SELECT count(*) FROM guard"
)
# Many guarded appends of different conversations (none a creation or a deletion), one
# statement, one round trip, one commit: the group commit of ``Store`` and the engine's
# batched checkpoints. Each conversation keeps its own guard: one whose version moved writes
# nothing (its events, rows and leases are conditioned on its id being in `guard`), the
# others commit.
# - `locked` takes the row locks of every conversation of the batch first, in id order
#   (ORDER BY ... FOR UPDATE locks rows as the sort hands them out): two batches, of this
#   process or of two, always lock in one order and cannot deadlock; every other writer
#   (the locked way, a single guarded write, a deletion) takes one conversation lock only.
#   FOR UPDATE waits for a concurrent writer and then hands out the row as that writer left
#   it (or drops it, if deleted), so `guard` tests the newest version, as _WRITE's ON
#   CONFLICT does. `conversations` is the first relation the statement names, so its first
#   table lock is on conversations, and rebuild's swap (conversations, then events) cannot
#   deadlock with it either.
# - `guard` is an UPDATE, not an upsert: a remembered conversation exists, and one deleted
#   since by another writer must stay deleted (its row is gone, so nothing is written and
#   the append goes the locked way, which reports it).
# - Arrays go in binary (%b), cheaper to dump than the text array format.
# - The rows of every CTE belong to one conversation each (messages and leases through
#   their conversation's id), and a batch holds at most one append per conversation, so no
#   row is written twice by one statement.
_WRITE_MANY = (
    "WITH locked AS (SELECT c.id, c.version FROM conversations c"
    " WHERE c.id = ANY(%(ids)b::uuid[]) ORDER BY c.id FOR UPDATE), "
    "guard AS (UPDATE conversations c SET "
    + ", ".join(f"{c} = r.{c}" for c in _CONVERSATION_WRITABLE if c != "id")
    + " FROM jsonb_populate_recordset(NULL::conversations, %(conversations)s::jsonb) AS r,"
    " unnest(%(ids)b::uuid[], %(expected)b::int[]) AS i (id, expected), locked l"
    " WHERE c.id = r.id AND i.id = r.id AND l.id = r.id AND l.version = i.expected"
    " RETURNING c.id), "
    "logged AS (INSERT INTO events (conversation_id, version, type, data, metadata)"
    " SELECT e.c, e.v, e.t, e.d::jsonb, e.m::jsonb FROM unnest(%(event_of)b::uuid[],"
    " %(versions)b::int[], %(types)b::text[], %(data)b::text[], %(metadata)b::text[])"
    " AS e (c, v, t, d, m) WHERE e.c IN (SELECT id FROM guard) ORDER BY e.c, e.v), "
    f"written AS (INSERT INTO messages ({MESSAGE_COLUMNS}) SELECT {MESSAGE_COLUMNS}"
    " FROM jsonb_populate_recordset(NULL::messages, %(messages)s::jsonb) AS r"
    " WHERE r.conversation_id IN (SELECT id FROM guard)"
    f" ON CONFLICT (id) DO UPDATE SET {_updates(_MESSAGE_WRITABLE)}), "
    "ended AS (DELETE FROM leases WHERE message_id IN (SELECT x.m"
    " FROM unnest(%(ended)b::uuid[], %(ended_of)b::uuid[]) AS x (m, c)"
    " WHERE x.c IN (SELECT id FROM guard))), "
    "started AS (INSERT INTO leases (message_id, attempt, instance_id)"
    " SELECT l.m, l.a, l.i FROM unnest(%(lease_ids)b::uuid[], %(lease_attempts)b::uuid[],"
    " %(lease_instances)b::uuid[], %(lease_of)b::uuid[]) AS l (m, a, i, c)"
    " WHERE l.c IN (SELECT id FROM guard) AND l.i IS NOT NULL"
    " ON CONFLICT (message_id) DO UPDATE"
    " SET attempt = EXCLUDED.attempt, instance_id = EXCLUDED.instance_id)"
    " SELECT id FROM guard"
)
# Group commit: how many group writes may be in flight at once (the first appends go at
# once; the ones arriving meanwhile wait and go together in the next), and how many
# appends one group write takes at most.
GROUP_WRITERS = 2
GROUP_MAX = 64
# The full rows a store keeps of the conversations it wrote, for a generation's history
# (``Store.history``): at most this many rows in all, and none of a longer conversation.
HISTORY_ROWS = 20_000
HISTORY_ROWS_PER_CONVERSATION = 200
# A message row and its conversation's (NULLs if the conversation is gone).
_MESSAGE_IN_CONVERSATION = (
    f"SELECT {', '.join('m.' + c for c in _MESSAGE_WRITABLE)}, "
    f"{', '.join('c.' + c for c in _CONVERSATION_WRITABLE)} FROM messages m"
    " LEFT JOIN conversations c ON c.id = m.conversation_id WHERE m.id = %s"
)
# How many conversations a store remembers for guarded appends (least recent dropped).
KNOWN_CONVERSATIONS = 4096

OnAppend = Callable[[Appended], None]


class _Folded(msgspec.Struct):
    """A checked batch folded onto the rows it touches, ready to write."""

    conversation: ConversationRecord | None  # None once deleted
    rows: tuple[MessageRecord, ...]  # every row created or changed, final state, seq order
    seen: dict[uuid.UUID, MessageRecord]  # the rows folded onto, as the batch left them
    stored: tuple[tuple[int, DomainEvent], ...]
    changes: tuple[Change, ...]
    types: list[str]
    data: list[str]


# A JSON string's escape of NUL: backslash-u-0000 whose backslash is not itself escaped.
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _fold(
    cid: uuid.UUID,
    conv: ConversationRecord | None,
    messages: dict[uuid.UUID, MessageRecord],
    events: Sequence[DomainEvent],
) -> _Folded:
    """Check and fold ``events`` in order onto ``conv`` and ``messages`` (updated in
    place); raise the first rule an event breaks. Nothing here touches the database.

    A run of checkpoints of one row is checked event by event but folded as one merged
    checkpoint (its stream events joined, its last time and stream seq): folding them one
    by one would give the same row, materialising its blocks once per event on the way.
    """
    version = 0 if conv is None else conv.conversation.version
    conv_before = conv
    before: dict[uuid.UUID, Message | None] = {}  # public rows as the batch found them
    touched: dict[uuid.UUID, int] = {}  # row -> version of its last public change
    changed: dict[uuid.UUID, MessageRecord] = {}
    stored: list[tuple[int, DomainEvent]] = []
    i, n = 0, len(events)
    while i < n:
        if conv is None and i > 0:
            raise InvalidEvent(f"conversation {cid}: no event may follow its deletion")
        event = events[i]
        check(conv, messages, event)
        run = 1
        if type(event) is TurnCheckpointed:
            row = messages[event.message_id]
            while i + run < n:
                nxt = events[i + run]
                if type(nxt) is not TurnCheckpointed or nxt.message_id != event.message_id:
                    break
                # Within the run only the row's stream seq moves (status and attempt stay).
                prev = events[i + run - 1]
                assert isinstance(prev, TurnCheckpointed)
                row = msgspec.structs.replace(row, stream_seq=prev.stream_seq)
                check(conv, {row.message.id: row}, nxt)
                run += 1
            if run > 1:
                last = events[i + run - 1]
                assert isinstance(last, TurnCheckpointed)
                joined = tuple(
                    e
                    for c in events[i : i + run]
                    if isinstance(c, TurnCheckpointed)
                    for e in c.events
                )
                event = msgspec.structs.replace(last, events=joined)
        stored += [(version + k + 1, events[i + k]) for k in range(run)]
        version += run
        i += run
        outcome = evolve(conv, messages, event, version)
        for row in outcome.messages:
            mid = row.message.id
            old = messages.get(mid)
            if old is None or old.message is not row.message:
                before.setdefault(mid, None if old is None else old.message)
                touched[mid] = version
            messages[mid] = row
            changed[mid] = row
        conv = outcome.conversation
    if conv is None:
        changed = {}
    rows = tuple(sorted(changed.values(), key=lambda r: r.message.seq))
    # What the live feeds show: each row whose public shape the batch changed, at the
    # version of its last change. States in between were never visible to any reader.
    changes = sorted(
        (
            Change(touched[r.message.id], (r.message,), False)
            for r in rows
            if r.message.id in touched and before[r.message.id] != r.message
        ),
        key=lambda c: c.version,
    )
    if _public_change(conv_before, conv):
        changes.append(Change(version, (), True))
    data = [ev.encode(e).decode() for _, e in stored]
    for text in data:
        # PostgreSQL text and jsonb cannot hold NUL: refused here with a clear error,
        # before any SQL, rather than by whichever column meets it first.
        if "\\u0000" in text and _JSON_NUL.search(text):
            raise InvalidEvent(f"conversation {cid}: text cannot contain NUL (U+0000)")
    return _Folded(
        conv,
        rows,
        messages,
        tuple(stored),
        tuple(changes),
        [ev.event_type(e) for _, e in stored],
        data,
    )


def _lease_changes(
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


def _message_json(r: MessageRecord) -> dict[str, Any]:
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


async def _write(
    conn: psycopg.AsyncConnection[Any],
    cid: uuid.UUID,
    fold: _Folded,
    expected: int,
    metadata: str,
    instance_id: uuid.UUID | None,
) -> bool:
    """Write a folded batch with its one statement (``_WRITE``); False when the guard found
    the conversation past ``expected`` and so nothing was written."""
    cur = await conn.execute(*_statement(cid, fold, expected, metadata, instance_id))
    row = await cur.fetchone()
    return row is not None and row[0] == 1


def _statement(
    cid: uuid.UUID,
    fold: _Folded,
    expected: int,
    metadata: str,
    instance_id: uuid.UUID | None,
) -> tuple[str, dict[str, Any]]:
    """The one statement that writes a folded batch, and its parameters."""
    params: dict[str, Any] = {
        "id": cid,
        "expected": expected,
        "event_metadata": metadata,
        "versions": [v for v, _ in fold.stored],
        "types": fold.types,
        "data": fold.data,
    }
    if fold.conversation is None:
        return _WRITE_DELETION, params
    ended, started = _lease_changes(fold.rows, instance_id)
    params.update(zip(_CONVERSATION_WRITABLE, conversation_params(fold.conversation), strict=True))
    params.update(
        messages=_json.encode([_message_json(r) for r in fold.rows]).decode(),
        ended=ended,
        lease_ids=[m for m, _ in started],
        lease_attempts=[a for _, a in started],
        instance=instance_id,
    )
    return _WRITE, params


class _Guarded(msgspec.Struct):
    """One guarded write of a folded batch (not a deletion): the conversation must still
    be at ``expected``. ``written`` and ``error`` are its outcome once a group write took it;
    ``alone`` asks its caller to write it by itself (the group write failed as a whole)."""

    cid: uuid.UUID
    fold: _Folded
    expected: int
    metadata: str
    instance_id: uuid.UUID | None
    wake: anyio.Event | None = None
    taken: bool = False
    done: bool = False
    written: bool = False
    alone: bool = False
    error: Exception | None = None


def _many_params(batch: Sequence[_Guarded]) -> dict[str, Any]:
    """The parameters of ``_WRITE_MANY`` for ``batch`` (different conversations)."""
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
    for g in batch:
        fold, cid = g.fold, g.cid
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
        messages += [_message_json(r) for r in fold.rows]
        n = len(fold.stored)
        event_of += [cid] * n
        versions += [v for v, _ in fold.stored]
        types += fold.types
        data += fold.data
        metadata += [g.metadata] * n
        gone, started = _lease_changes(fold.rows, g.instance_id)
        ended += gone
        ended_of += [cid] * len(gone)
        lease_ids += [m for m, _ in started]
        lease_attempts += [a for _, a in started]
        lease_instances += [g.instance_id] * len(started)
        lease_of += [cid] * len(started)
    return {
        "ids": [g.cid for g in batch],
        "expected": [g.expected for g in batch],
        "conversations": _json.encode(conversations).decode(),
        "event_of": event_of,
        "versions": versions,
        "types": types,
        "data": data,
        "metadata": metadata,
        "messages": _json.encode(messages).decode(),
        "ended": ended,
        "ended_of": ended_of,
        "lease_ids": lease_ids,
        "lease_attempts": lease_attempts,
        "lease_instances": lease_instances,
        "lease_of": lease_of,
    }


async def _write_many(
    conn: psycopg.AsyncConnection[Any], batch: Sequence[_Guarded]
) -> set[uuid.UUID]:
    """Write guarded batches of different conversations with one statement
    (``_WRITE_MANY``); the conversations whose guard held (the others wrote nothing)."""
    cur = await conn.execute(_WRITE_MANY, _many_params(batch))
    return {r[0] for r in await cur.fetchall()}


class Store:
    """Appends and reads, over a psycopg async pool of autocommit connections."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any] | BoundedPool,
        on_append: OnAppend | None = None,
    ) -> None:
        # Every unit of work is bounded in time (see log/pool.py); the server passes its
        # TURNLOG_DB_TIMEOUT_S, a bare pool (tools, tests) gets a generous bound.
        self.pool = pool if isinstance(pool, BoundedPool) else BoundedPool(pool, timeout_s=30.0)
        self._on_append = on_append
        # The conversations this store wrote last (oldest first, for eviction), as it left
        # them: the state the guarded fast way of append folds onto.
        self._known: dict[uuid.UUID, tuple[ConversationRecord, dict[uuid.UUID, MessageRecord]]]
        self._known = {}
        # Every message row of conversations this store wrote, exactly as of a version (see
        # ``history``), least recent first; at most HISTORY_ROWS rows in all.
        # Each: (version, the last row's seq, rows by id in seq order).
        self._history: OrderedDict[uuid.UUID, tuple[int, int, dict[uuid.UUID, MessageRecord]]]
        self._history = OrderedDict()
        self._history_rows = 0
        # Group commit (see ``_group_write``): guarded writes waiting, group writes running.
        self._queue: deque[_Guarded] = deque()
        self._in_flight = 0
        self.group_writes = 0  # group writes run, and the appends they carried
        self.group_items = 0

    def set_on_append(self, on_append: OnAppend | None) -> None:
        """Called after every committed append (the live conversation feeds use it)."""
        self._on_append = on_append

    # -- writes --------------------------------------------------------------------------

    async def append(
        self,
        conversation_id: uuid.UUID,
        events: Sequence[DomainEvent],
        *,
        expected_version: int | None = None,
        actor: str = "system",
        request_id: str | None = None,
        instance_id: uuid.UUID | None = None,
    ) -> Appended:
        """Append ``events`` to the conversation's log and update its rows, atomically.

        ``expected_version`` (the version the caller decided on) is checked under the
        conversation's row lock; ``None`` appends at whatever the version is, for writers
        whose guard is a fence (a generation's attempt id) rather than a version. Each
        event is checked against the rows as the previous ones left them, so a failing
        event aborts the whole batch and leaves no trace. ``instance_id`` takes the lease
        of any assistant turn the events start.

        Two ways in, one outcome. When this store last wrote the conversation and still
        holds the rows the events touch, it checks and folds the batch on those rows and
        writes it with a guarded statement (one round trip, shared by the guarded appends
        of other conversations waiting at that moment: see ``_group_write``). If
        another writer has moved the conversation since, the guard writes nothing, and
        the batch goes the locked way: lock, read, check and fold in a transaction, then
        the same write.
        """
        if not events:
            raise ValueError("append needs at least one event")
        metadata = _json.encode({"actor": actor, "request_id": request_id}).decode()
        fold = await self._append_guarded(
            conversation_id, events, expected_version, metadata, instance_id
        )
        if fold is None:
            fold = await self._append_locked(
                conversation_id, events, expected_version, metadata, instance_id
            )
        self._remember(conversation_id, fold)
        self._remember_rows(conversation_id, fold)
        appended = Appended(
            conversation_id, fold.conversation, fold.rows, fold.stored, fold.changes
        )
        if self._on_append is not None:
            self._on_append(appended)
        return appended

    async def append_checkpoints(
        self, items: Sequence[tuple[uuid.UUID, TurnCheckpointed]]
    ) -> list[Exception | None]:
        """Store checkpoints of many conversations, most of them in one transaction.

        Each item is what ``append(cid, [checkpoint])`` would store, with the same checks
        and outcome, and its result is None or the exception that append would raise.
        Items this store can fold on remembered rows go together: one guarded statement for
        all of them (``_WRITE_MANY``), so 500 generations cost a few commits a second, not
        500. Any item the guard refuses (another writer moved its conversation), and every
        item when the batch fails as a whole, then goes alone through ``append``; a batch
        whose commit's answer was lost is safe to send again (``AlreadyStored``).
        """
        results: list[Exception | None] = [None] * len(items)
        metadata = _json.encode({"actor": "system", "request_id": None}).decode()
        together: list[tuple[int, uuid.UUID, _Folded, int]] = []
        alone: list[int] = []
        # By conversation id, one item per conversation in `together` (the statement
        # writes each conversation once; it takes the row locks in id order itself).
        for i in sorted(range(len(items)), key=lambda i: items[i][0]):
            cid, event = items[i]
            known = self._known.get(cid)
            if (
                known is None
                or event.message_id not in known[1]
                or any(c == cid for _, c, _, _ in together[-1:])
            ):
                alone.append(i)
                continue
            conv, hot = known
            try:
                fold = _fold(cid, conv, dict(hot), [event])
            except (DomainError, StreamProtocolError):
                alone.append(i)  # judged on rows that may be stale: append judges again
                continue
            together.append((i, cid, fold, conv.conversation.version))
        written: list[tuple[int, uuid.UUID, _Folded]] = []
        if together:
            try:
                async with self.pool.connection() as conn:
                    stored = await _write_many(
                        conn,
                        [
                            _Guarded(cid, fold, version, metadata, None)
                            for _, cid, fold, version in together
                        ],
                    )
                for i, cid, fold, _ in together:
                    if cid in stored:
                        written.append((i, cid, fold))
                    else:  # another writer got there first: append reads afresh
                        self._known.pop(cid, None)
                        alone.append(i)
            except psycopg.OperationalError as exc:
                # The database is out of reach (or the pool exhausted): so it is for each
                # alone too. Nothing of it committed, or (a lost answer to COMMIT) all of
                # it did: the caller sends the same checkpoints again later, and a stored
                # one then answers AlreadyStored.
                for i, _, _, _ in together:
                    results[i] = exc
                written = []
            except Exception:
                # Perhaps one item's fault: each goes again alone (same as above if stored).
                structlog.get_logger("turnlog.store").warning(
                    "batched checkpoint write failed; writing them one by one", exc_info=True
                )
                written = []
                alone = [i for i, _, _, _ in together] + alone
        for _, cid, fold in written:
            self._remember(cid, fold)
            self._remember_rows(cid, fold)
            if self._on_append is not None:
                self._on_append(
                    Appended(cid, fold.conversation, fold.rows, fold.stored, fold.changes)
                )
        for i in alone:
            cid, event = items[i]
            try:
                await self.append(cid, [event])
            except Exception as exc:
                results[i] = exc
        return results

    async def _append_guarded(
        self,
        cid: uuid.UUID,
        events: Sequence[DomainEvent],
        expected_version: int | None,
        metadata: str,
        instance_id: uuid.UUID | None,
    ) -> _Folded | None:
        """The fast way: fold onto the remembered rows and write them if the conversation
        is still at their version. None when it cannot (the caller goes the locked way)."""
        known = self._known.get(cid)
        if known is None:
            return None
        conv, hot = known
        version = conv.conversation.version
        if expected_version is not None and expected_version != version:
            return None  # perhaps we are behind: the locked way decides
        needed: set[uuid.UUID] = set()
        created: set[uuid.UUID] = set()
        for event in events:
            needed.update(m for m in referenced_messages(event) if m not in created)
            created.update(created_messages(event))
        if not needed <= hot.keys():
            return None
        try:
            fold = _fold(cid, conv, dict(hot), events)
        except (DomainError, StreamProtocolError):
            return None  # judged on rows that may be stale: the locked way judges again
        if fold.conversation is None:
            written = await self._write_alone(cid, fold, version, metadata, instance_id)
        else:
            written = await self._group_write(_Guarded(cid, fold, version, metadata, instance_id))
        if not written:
            self._known.pop(cid, None)
            return None
        return fold

    async def _write_alone(
        self,
        cid: uuid.UUID,
        fold: _Folded,
        expected: int,
        metadata: str,
        instance_id: uuid.UUID | None,
    ) -> bool:
        async with self.pool.connection() as conn:
            try:
                return await _write(conn, cid, fold, expected, metadata, instance_id)
            except psycopg.errors.UniqueViolation:
                return False  # raced a writer of the locked way, or a key: let it judge

    async def _group_write(self, item: _Guarded) -> bool:
        """Group commit: write ``item`` together with the guarded writes of other
        conversations that arrive while earlier ones are in flight (``_WRITE_MANY``).

        While fewer than GROUP_WRITERS group writes are in flight, the caller leads one at
        once (no added latency when idle): it takes what waits in the queue, its own item
        included, up to GROUP_MAX. Otherwise it waits; a finished group write wakes the
        next waiter to lead. At most one item per conversation goes in one write (a second
        waits for the next, where its guard fails if the first moved the conversation)."""
        self._queue.append(item)
        try:
            while not item.done:
                if self._in_flight < GROUP_WRITERS:
                    await self._lead()
                    continue
                item.wake = aio.event()
                await item.wake.wait()
        finally:
            if not item.taken:
                self._queue.remove(item)
                self._wake_next()
        if item.error is not None:
            raise item.error
        if item.alone:
            return await self._write_alone(
                item.cid, item.fold, item.expected, item.metadata, item.instance_id
            )
        return item.written

    def _wake_next(self) -> None:
        if self._queue and self._in_flight < GROUP_WRITERS:
            wake = self._queue[0].wake
            if wake is not None:
                wake.set()

    async def _lead(self) -> None:
        batch: list[_Guarded] = []
        cids: set[uuid.UUID] = set()
        for g in self._queue:
            if len(batch) == GROUP_MAX:
                break
            if g.cid not in cids:
                cids.add(g.cid)
                batch.append(g)
        for g in batch:
            g.taken = True
            self._queue.remove(g)
        self._in_flight += 1
        self.group_writes += 1
        self.group_items += len(batch)
        self._wake_next()  # a write slot is still free: the rest need not wait
        try:
            # Shielded: the batch is the other callers' too, and a cancelled caller must not
            # cut their writes off (the pool still bounds it in time).
            with aio.cancel_scope(shield=True):
                await self._write_batch(batch)
        finally:
            self._in_flight -= 1
            for g in batch:
                g.done = True
                if g.wake is not None:
                    g.wake.set()
            self._wake_next()

    async def _write_batch(self, batch: Sequence[_Guarded]) -> None:
        """Run one group write and record each item's outcome (never raises)."""
        try:
            async with self.pool.connection() as conn:
                written = await _write_many(conn, batch)
        except psycopg.OperationalError as exc:
            # The database is out of reach (or the pool exhausted): so it would be for each
            # alone. Nothing committed, or (an answer to COMMIT lost) all of it did: each
            # caller gets the error, as from its own write.
            for g in batch:
                g.error = exc
            return
        except Exception:
            # Perhaps one item's fault (a client_message_id sent twice is a unique key):
            # each goes again by itself, where the single write and the locked way judge.
            if len(batch) > 1:
                structlog.get_logger("turnlog.store").info(
                    "group write failed; writing its appends one by one", exc_info=True
                )
            for g in batch:
                g.alone = True
            return
        for g in batch:
            g.written = g.cid in written

    async def _append_locked(
        self,
        cid: uuid.UUID,
        events: Sequence[DomainEvent],
        expected_version: int | None,
        metadata: str,
        instance_id: uuid.UUID | None,
    ) -> _Folded:
        async with self.pool.connection() as conn, conn.transaction():
            conv = await self._lock_conversation(conn, cid)
            found = 0 if conv is None else conv.conversation.version
            if expected_version is not None and found != expected_version:
                raise VersionConflict(
                    f"expected version {expected_version} of conversation {cid}, found {found}"
                )
            wanted = {m for e in events for m in referenced_messages(e)}
            messages = await self._load_messages(conn, wanted) if wanted else {}
            fold = _fold(cid, conv, messages, events)
            try:
                written = await _write(conn, cid, fold, found, metadata, instance_id)
            except psycopg.errors.UniqueViolation as exc:
                # Another key (a client_message_id sent twice) is the caller's to judge.
                if exc.diag.constraint_name != "events_conversation_version":
                    raise
                written = False
            if not written:  # only a creation can race (there was no row to lock)
                raise VersionConflict(f"conversation {cid} was appended to concurrently")
        return fold

    def _remember(self, cid: uuid.UUID, fold: _Folded) -> None:
        """Keep the conversation as this append left it, with its hot rows: the ones the
        next events of a generation will name (generating, or waiting for tool results)."""
        conv = fold.conversation
        known = self._known.pop(cid, None)
        if conv is None:
            return
        if known is not None and known[0].conversation.version > conv.conversation.version:
            # A concurrent append of this process got further: keep what it left.
            self._known[cid] = known
            return
        hot = {m: r for m, r in fold.seen.items() if r.message.is_generating or r.open_tool_calls}
        self._known[cid] = (conv, hot)
        if len(self._known) > KNOWN_CONVERSATIONS:
            del self._known[next(iter(self._known))]

    def _remember_rows(self, cid: uuid.UUID, fold: _Folded) -> None:
        """Carry the conversation's full rows to the version ``fold`` committed at, if they
        were exact at the version it was folded onto (or it is the creation): that write
        went in under the version guard or the row lock, so nobody else wrote in between.
        Otherwise (unknown, or this process's appends remembered out of order) forget."""
        entry = self._history.pop(cid, None)
        if entry is not None:
            self._history_rows -= len(entry[2])
        conv = fold.conversation
        if conv is None:
            return
        base = fold.stored[0][0] - 1
        rows: dict[uuid.UUID, MessageRecord]
        if base == 0:
            last, rows = 0, {}  # a creation: no rows before it
        elif entry is not None and entry[0] == base:
            _, last, rows = entry
        else:
            return
        # Kept in seq order (``history`` hands them out as they are): a new row comes after
        # every row there (seqs only grow; a fold's rows are in seq order), else forget.
        for r in fold.rows:
            if r.message.id not in rows:
                if r.message.seq <= last:
                    return
                last = r.message.seq
            rows[r.message.id] = r
        if len(rows) > HISTORY_ROWS_PER_CONVERSATION:
            return
        self._history[cid] = (conv.conversation.version, last, rows)
        self._history_rows += len(rows)
        while self._history_rows > HISTORY_ROWS:
            _, (_, _, dropped) = self._history.popitem(last=False)
            self._history_rows -= len(dropped)

    def known_idle(self, cid: uuid.UUID) -> ConversationRecord | None:
        """The conversation as this store last wrote it, if it was idle then; None if not
        remembered. It may be stale (another process may have written or deleted it since):
        decide on it only what an append guarded by its version re-checks, so that being
        stale costs a retry, never a wrong answer."""
        known = self._known.get(cid)
        if known is None or known[0].conversation.state != "idle":
            return None
        return known[0]

    def history(self, cid: uuid.UUID, version: int) -> list[MessageRecord] | None:
        """Every message row of the conversation in seq order, as of ``version``, if this
        store wrote that version and knows the rows exactly then (see ``_remember_rows``);
        None if not (read them)."""
        entry = self._history.get(cid)
        if entry is None or entry[0] != version:
            return None
        self._history.move_to_end(cid)
        return list(entry[2].values())

    async def _lock_conversation(
        self, conn: psycopg.AsyncConnection[Any], cid: uuid.UUID
    ) -> ConversationRecord | None:
        # FOR UPDATE on the conversation row serialises every writer of this conversation
        # (and nothing else): the version check, the message checks and the row writes
        # below all see the state the previous writer committed. Writers of a conversation
        # take only this lock, and always first, so they cannot deadlock.
        # A creation runs it too (it finds no row): its ROW SHARE lock on the conversations
        # table is then the first lock every append takes, so `turnlog replay rebuild`,
        # which locks conversations before events for its swap, never holds one lock an
        # append needs while waiting for another the append holds (no deadlock).
        cur = await conn.execute(
            f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = %s FOR UPDATE",
            (cid,),
        )
        row = await cur.fetchone()
        return None if row is None else conversation_from_row(row)

    async def _load_messages(
        self, conn: psycopg.AsyncConnection[Any], ids: Iterable[uuid.UUID]
    ) -> dict[uuid.UUID, MessageRecord]:
        # No row locks needed: the conversation lock already excludes every other writer.
        cur = await conn.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ANY(%s)", (list(ids),)
        )
        return {r.message.id: r for r in map(message_from_row, await cur.fetchall())}

    async def retrying(
        self,
        attempt: Callable[[], Awaitable[Appended]],
        *,
        tries: int = 5,
    ) -> Appended:
        """Run a read-decide-append ``attempt`` again when it loses a version race."""
        for i in range(tries):
            try:
                return await attempt()
            except VersionConflict:
                if i == tries - 1:
                    raise
        raise AssertionError("unreachable")

    # -- reads ---------------------------------------------------------------------------

    async def get_conversation(self, cid: uuid.UUID) -> ConversationRecord | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = %s", (cid,)
            )
            row = await cur.fetchone()
        return None if row is None else conversation_from_row(row)

    async def list_conversations(
        self, owner: str, *, limit: int, before: tuple[datetime, uuid.UUID] | None = None
    ) -> list[ConversationRecord]:
        """Newest first; ``before`` is the (created_at, id) of the last row already seen."""
        query = f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE owner = %s"
        params: list[Any] = [owner]
        if before is not None:
            query += " AND (created_at, id) < (%s, %s)"
            params += [before[0], before[1]]
        query += " ORDER BY created_at DESC, id DESC LIMIT %s"
        params.append(limit)
        async with self.pool.connection() as conn:
            cur = await conn.execute(query, params)
            return [conversation_from_row(r) for r in await cur.fetchall()]

    async def list_messages(self, cid: uuid.UUID) -> list[MessageRecord]:
        """Every row of the conversation (all versions) in seq order, numbered (see
        turnlog.log.tree; ``tree.active`` picks the active path)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = %s ORDER BY seq",
                (cid,),
            )
            return numbered([message_from_row(r) for r in await cur.fetchall()])

    async def get_message(self, mid: uuid.UUID) -> MessageRecord | None:
        async with self.pool.connection() as conn:
            # With its conversation's tree, to number its version (an empty one once the
            # conversation is gone).
            cur = await conn.execute(
                f"SELECT {', '.join('m.' + c for c in _MESSAGE_WRITABLE)}, c.tree FROM messages m"
                " LEFT JOIN conversations c ON c.id = m.conversation_id WHERE m.id = %s",
                (mid,),
            )
            row: TupleRow | None = await cur.fetchone()
        if row is None:
            return None
        return numbered_row(tuple(row[-1] or ()), message_from_row(row[:-1]))

    async def resumptions(self, cid: uuid.UUID, mid: uuid.UUID) -> int:
        """How many times message ``mid`` was taken over after its process died (its
        ``turn_resumed`` events): recovery's attempt budget. Rare, so read from the log."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM events WHERE conversation_id = %s "
                "AND type = 'turn_resumed' AND data->>'message_id' = %s",
                (cid, str(mid)),
            )
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def started_calls(
        self, cid: uuid.UUID, mid: uuid.UUID, stream_seq: int
    ) -> tuple[ev.StartedCall, ...] | None:
        """The server tool calls of message ``mid`` recorded as started at ``stream_seq`` (its
        stored seq) and not finished since: its process died while they ran, or before
        (None: no such record; its step was still streaming)."""
        async with self.pool.connection() as conn:
            # The newest record of the row; only one at its current seq can be unfinished
            # (the step's end, which stores the results, moves the row on).
            cur = await conn.execute(
                "SELECT data FROM events WHERE conversation_id = %s "
                "AND type = 'tool_calls_started' AND data->>'message_id' = %s "
                "ORDER BY version DESC LIMIT 1",
                (cid, str(mid)),
            )
            row = await cur.fetchone()
        if row is None:
            return None
        event = ev.decode(row[0])  # jsonb comes as bytes (_RawJson)
        if not isinstance(event, ev.ToolCallsStarted) or event.stream_seq != stream_seq:
            return None
        return event.calls

    async def get_message_in_conversation(
        self, mid: uuid.UUID
    ) -> tuple[MessageRecord, ConversationRecord | None] | None:
        """The message row and its conversation's, read together (one round trip, one
        snapshot); None if there is no such message."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(_MESSAGE_IN_CONVERSATION, (mid,))
            row = await cur.fetchone()
        if row is None:
            return None
        n = len(_MESSAGE_WRITABLE)
        message = message_from_row(row[:n])
        if row[n] is None:
            return message, None
        conv = conversation_from_row(row[n:])
        return numbered_row(conv.tree, message), conv

    async def find_sent(
        self, cid: uuid.UUID, client_message_id: str
    ) -> tuple[MessageRecord, MessageRecord | None] | None:
        """The user row sent with ``client_message_id`` and the first assistant row
        answering it, for idempotent sends."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM messages "
                "WHERE conversation_id = %s AND client_message_id = %s",
                (cid, client_message_id),
            )
            row = await cur.fetchone()
            if row is None:
                return None
            user = message_from_row(row)
            cur = await conn.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = %s "
                "AND reply_to = %s AND role = 'assistant' ORDER BY seq LIMIT 1",
                (cid, user.message.id),
            )
            row = await cur.fetchone()
        return user, None if row is None else message_from_row(row)

    # -- instances and leases (operational, never replayed) -------------------------------

    async def register_instance(
        self,
        conn: psycopg.AsyncConnection[Any],
        instance_id: uuid.UUID,
        now: datetime,
        *,
        key: int | None = None,
    ) -> int:
        """Record this process and take its liveness lock on ``conn``, which the caller
        keeps open (outside the pool); return the lock's key. ``key``: the key to take
        again after the connection was lost (see turnlog.log.liveness); if another
        instance took it meanwhile, a new one is chosen and this instance's row follows."""
        for attempt in range(10):
            if key is None or attempt > 0:
                key = secrets.randbelow(2**31 - 2) + 1
            cur = await conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (INSTANCE_LOCK_SPACE, key)
            )
            row = await cur.fetchone()
            if row is None or not row[0]:
                continue
            # Rows of dead instances with this key would confuse the liveness join. The
            # upsert keeps this instance's id (its leases name it) with the key it holds.
            await conn.execute(
                "DELETE FROM instances WHERE lock_key = %s AND id <> %s", (key, instance_id)
            )
            await conn.execute(
                "INSERT INTO instances (id, lock_key, started_at) VALUES (%s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET lock_key = EXCLUDED.lock_key",
                (instance_id, key, now),
            )
            return key
        raise RuntimeError("could not take an instance lock after 10 tries")

    async def unregister_instance(self, instance_id: uuid.UUID) -> None:
        async with self.pool.connection() as conn:
            await conn.execute("DELETE FROM instances WHERE id = %s", (instance_id,))

    async def orphans(
        self, *, me: uuid.UUID, mine: Iterable[uuid.UUID] = ()
    ) -> list[MessageRecord]:
        """Generating rows whose generation is gone: no lease or no instance, a lease of
        an instance whose liveness lock is free (its process died; see LIVENESS_GRACE_S),
        or a lease of this instance (``me``) for a row it does not run. A row this process
        runs (in ``mine``) is never an orphan, whatever its lock looks like."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {', '.join('m.' + c for c in _MESSAGE_WRITABLE)} FROM messages m "
                f"LEFT JOIN leases l ON l.message_id = m.id AND l.attempt = m.attempt "
                f"{_LIVENESS_JOIN} "
                "WHERE m.status = 'generating' AND NOT (m.id = ANY(%s)) AND ("
                f"  i.id IS NULL OR i.id = %s OR (pl.pid IS NULL AND {_SETTLED}))",
                (list(mine), me, LIVENESS_GRACE_S),
            )
            return [message_from_row(r) for r in await cur.fetchall()]

    async def is_orphan(self, mid: uuid.UUID, *, me: uuid.UUID, mine: bool) -> bool:
        """Whether one generating row's generation is gone (see :meth:`orphans`)."""
        if mine:
            return False
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT i.id, pl.pid, {_SETTLED} FROM messages m "
                "LEFT JOIN leases l ON l.message_id = m.id AND l.attempt = m.attempt "
                f"{_LIVENESS_JOIN} "
                "WHERE m.id = %s AND m.status = 'generating'",
                (LIVENESS_GRACE_S, mid),
            )
            row = await cur.fetchone()
        if row is None:
            return False
        instance, holder, settled = row
        if instance is None or instance == me:
            return True
        return bool(holder is None and settled)

    async def liveness_unsettled_s(self) -> float:
        """Seconds until a free liveness lock proves its instance dead again: 0 unless the
        database (re)started less than LIVENESS_GRACE_S ago and generating rows exist."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT greatest(0, %s - extract(epoch FROM now() - pg_postmaster_start_time()))"
                "::float8, EXISTS (SELECT FROM messages WHERE status = 'generating')",
                (LIVENESS_GRACE_S,),
            )
            row = await cur.fetchone()
        assert row is not None
        return float(row[0]) if row[1] else 0.0


# The advisory lock space of instance liveness locks (see schema.sql, table instances).
INSTANCE_LOCK_SPACE = 0x746C  # "tl"

# A restart of PostgreSQL drops every session, so every instance's liveness lock is free
# for a moment, living instances' too: each takes its lock again as soon as it can reach
# the database (turnlog.log.liveness, within about a second). Until the database has been
# up this long, a free lock therefore proves nothing, and its rows are left alone (a send
# to their conversation is 409, a sweep waits); only a real death orphans a row.
LIVENESS_GRACE_S = 3.0
# "The database has been up longer than the grace" (one parameter: the grace, seconds).
_SETTLED = "(pg_postmaster_start_time() < now() - make_interval(secs => %s))"

# instances i and the granted advisory lock pl that proves it alive; pl.pid is NULL when
# the lease, the instance or its lock is missing. Two-key advisory locks show in pg_locks
# as (classid, objid, objsubid = 2).
_LIVENESS_JOIN = (
    "LEFT JOIN instances i ON i.id = l.instance_id "
    "LEFT JOIN pg_locks pl ON pl.locktype = 'advisory' AND pl.granted "
    "AND pl.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    f"AND pl.classid = {INSTANCE_LOCK_SPACE} AND pl.objid = i.lock_key::oid "
    "AND pl.objsubid = 2"
)


def open_pool(conninfo: str, *, min_size: int = 2, max_size: int = 20) -> AsyncConnectionPool[Any]:
    """An (unopened) pool of autocommit connections configured for the store."""

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        configure_connection(conn)

    return AsyncConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        # connect_timeout: a paused server accepts the socket and never answers.
        kwargs={"autocommit": True, "connect_timeout": 2},
        configure=configure,
        # A connection that cannot be made again is given up after 2 s rather than retried
        # with a backoff growing to minutes: the next request that needs one makes a new
        # attempt at once, so the pool is back as soon as the database is.
        reconnect_timeout=2.0,
        open=False,
    )
