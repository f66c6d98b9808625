"""The write SQL of the store: one statement per way of writing a folded batch.

- ``WRITE``: one conversation's batch (the locked way, and a guarded write that goes alone);
- ``WRITE_DELETION``: a batch that ends in the conversation's deletion;
- ``WRITE_MANY``: the guarded batches of many conversations at once (group commit and the
  engine's batched checkpoints);
- ``LOCK_CONVERSATION`` / ``LOAD_MESSAGES``: what the locked way reads under its lock.

Each statement is guarded by the conversation's version, so a writer that was overtaken
writes nothing at all; the comment above each says which lock it takes, in which order,
and why that cannot deadlock. Their parameters come from :mod:`turnlog.log.rows`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg

from turnlog.log.projection import ConversationRecord, MessageRecord
from turnlog.log.rows import (
    CONVERSATION_COLUMNS,
    CONVERSATION_FIELDS,
    MESSAGE_COLUMNS,
    MESSAGE_FIELDS,
    Write,
    conversation_from_row,
    message_from_row,
    write_many_params,
    write_params,
)


def _updates(columns: list[str], key: str = "id") -> str:
    return ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c != key)


# Every append writes with one statement: this one on the locked way (in its transaction)
# and for a guarded write that goes alone (autocommit: its own transaction, one round trip);
# a guarded write of the group commit goes with others in `WRITE_MANY` (below), which
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
WRITE = (
    f"WITH guard AS (INSERT INTO conversations ({CONVERSATION_COLUMNS}) VALUES ("
    + ", ".join(
        f"%({c})s::jsonb" if c in ("options", "metadata", "tools") else f"%({c})s"
        for c in CONVERSATION_FIELDS
    )
    + f") ON CONFLICT (id) DO UPDATE SET {_updates(CONVERSATION_FIELDS)}"
    " WHERE conversations.version = %(expected)s RETURNING id), "
    + _LOG_EVENTS
    + f", written AS (INSERT INTO messages ({MESSAGE_COLUMNS}) SELECT {MESSAGE_COLUMNS}"
    " FROM jsonb_populate_recordset(NULL::messages, %(messages)s::jsonb)"
    " WHERE EXISTS (SELECT FROM guard)"
    f" ON CONFLICT (id) DO UPDATE SET {_updates(MESSAGE_FIELDS)}"
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
WRITE_DELETION = (
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
#   it (or drops it, if deleted), so `guard` tests the newest version, as WRITE's ON
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
WRITE_MANY = (
    "WITH locked AS (SELECT c.id, c.version FROM conversations c"
    " WHERE c.id = ANY(%(ids)b::uuid[]) ORDER BY c.id FOR UPDATE), "
    "guard AS (UPDATE conversations c SET "
    + ", ".join(f"{c} = r.{c}" for c in CONVERSATION_FIELDS if c != "id")
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
    f" ON CONFLICT (id) DO UPDATE SET {_updates(MESSAGE_FIELDS)}), "
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
# FOR UPDATE on the conversation row serialises every writer of this conversation (and
# nothing else): the version check, the message checks and the row writes after it all see
# the state the previous writer committed. Writers of a conversation take only this lock,
# and always first, so they cannot deadlock.
# A creation runs it too (it finds no row): its ROW SHARE lock on the conversations table is
# then the first lock every append takes, so `turnlog replay rebuild`, which locks
# conversations before events for its swap, never holds one lock an append needs while
# waiting for another the append holds (no deadlock).
LOCK_CONVERSATION = f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = %s FOR UPDATE"
# No row locks needed: the conversation lock already excludes every other writer.
LOAD_MESSAGES = f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ANY(%s)"


async def write(conn: psycopg.AsyncConnection[Any], w: Write) -> bool:
    """Write a folded batch with its one statement (``WRITE`` or ``WRITE_DELETION``); False
    when the guard found the conversation past ``w.expected`` and so nothing was written."""
    statement = WRITE_DELETION if w.fold.conversation is None else WRITE
    cur = await conn.execute(statement, write_params(w))
    row = await cur.fetchone()
    return row is not None and row[0] == 1


async def write_many(conn: psycopg.AsyncConnection[Any], batch: Sequence[Write]) -> set[uuid.UUID]:
    """Write guarded batches of different conversations with one statement
    (``WRITE_MANY``); the conversations whose guard held (the others wrote nothing)."""
    cur = await conn.execute(WRITE_MANY, write_many_params(batch))
    return {r[0] for r in await cur.fetchall()}


async def lock_conversation(
    conn: psycopg.AsyncConnection[Any], cid: uuid.UUID
) -> ConversationRecord | None:
    """Take the conversation's row lock in ``conn``'s transaction (``LOCK_CONVERSATION``)
    and read its row; None if there is none (a creation)."""
    cur = await conn.execute(LOCK_CONVERSATION, (cid,))
    row = await cur.fetchone()
    return None if row is None else conversation_from_row(row)


async def load_messages(
    conn: psycopg.AsyncConnection[Any], ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, MessageRecord]:
    """The message rows ``ids``, under the conversation lock (``LOAD_MESSAGES``)."""
    cur = await conn.execute(LOAD_MESSAGES, (list(ids),))
    return {r.message.id: r for r in map(message_from_row, await cur.fetchall())}
