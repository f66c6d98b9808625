"""The store: append domain events and update the projection rows in one transaction.

General layout of ``turnlog.log``::

    store.py         Store: the two ways to append, checkpoints in batches, the reads
      fold.py          the pure batch fold: checks, merged checkpoint runs, feed changes
      memory.py        what the store remembers: known conversations, exact histories
      group_commit.py  guarded writes of many conversations in one statement
      statements.py    the write SQL, each statement with its why-comment
      rows.py          the mapper: columns, row <-> struct codecs, statement parameters
      instances.py     instances, leases, orphans and liveness
      pool.py          the pool, bounded in time

Its refusals are the domain errors of :mod:`turnlog.errors` (the locked way's own:
``VersionConflict``).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import msgspec
import psycopg
import structlog
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool
from turnlog_reducer import StreamProtocolError

from turnlog.errors import DomainError, VersionConflict
from turnlog.log import events as ev
from turnlog.log.events import DomainEvent, TurnCheckpointed
from turnlog.log.fold import Change, Folded, fold_batch
from turnlog.log.group_commit import GroupCommit
from turnlog.log.instances import Instances
from turnlog.log.memory import Memory
from turnlog.log.pool import BoundedPool
from turnlog.log.projection import (
    ConversationRecord,
    MessageRecord,
    created_messages,
    numbered_row,
    referenced_messages,
)
from turnlog.log.rows import (
    CONVERSATION_COLUMNS,
    CONVERSATION_FIELDS,
    MESSAGE_COLUMNS,
    MESSAGE_FIELDS,
    Write,
    conversation_from_row,
    event_metadata,
    message_from_row,
    message_with_conversation,
)
from turnlog.log.statements import load_messages, lock_conversation, write, write_many
from turnlog.log.tree import numbered


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

    @classmethod
    def of(cls, cid: uuid.UUID, fold: Folded) -> Appended:
        return cls(cid, fold.conversation, fold.rows, fold.stored, fold.changes)


OnAppend = Callable[[Appended], None]

# A message row and its conversation's (NULLs if the conversation is gone).
_MESSAGE_IN_CONVERSATION = (
    f"SELECT {', '.join('m.' + c for c in MESSAGE_FIELDS)}, "
    f"{', '.join('c.' + c for c in CONVERSATION_FIELDS)} FROM messages m"
    " LEFT JOIN conversations c ON c.id = m.conversation_id WHERE m.id = %s"
)
# A message row and its conversation's tree (NULL if the conversation is gone).
_MESSAGE_WITH_TREE = (
    f"SELECT {', '.join('m.' + c for c in MESSAGE_FIELDS)}, c.tree FROM messages m"
    " LEFT JOIN conversations c ON c.id = m.conversation_id WHERE m.id = %s"
)


class Store:
    """Appends and reads, over a psycopg async pool of autocommit connections."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any] | BoundedPool,
        on_append: OnAppend | None = None,
    ) -> None:
        # ``on_append`` is called after every committed append (the server passes
        # FeedHub.publish: the live feeds here, then the other instances').
        # Every unit of work is bounded in time (see log/pool.py); the server passes its
        # TURNLOG_DB_TIMEOUT_S, a bare pool (tools, tests) gets a generous bound.
        self.pool = pool if isinstance(pool, BoundedPool) else BoundedPool(pool, timeout_s=30.0)
        self._on_append = on_append
        # The conversations this store wrote last, as it left them (the state the guarded
        # way of append folds onto), and their exact rows (``history``).
        self._memory = Memory()
        self._group = GroupCommit(self.pool)
        self.instances = Instances(self.pool)

    @property
    def group_writes(self) -> int:
        """Group writes run so far (see turnlog.log.group_commit)."""
        return self._group.writes

    @property
    def group_items(self) -> int:
        """Appends those group writes carried."""
        return self._group.items

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
        of other conversations waiting at that moment: see turnlog.log.group_commit). If
        another writer has moved the conversation since, the guard writes nothing, and
        the batch goes the locked way: lock, read, check and fold in a transaction, then
        the same write.
        """
        if not events:
            raise ValueError("append needs at least one event")
        metadata = event_metadata(actor, request_id)
        fold = await self._append_guarded(
            conversation_id, events, expected_version, metadata, instance_id
        )
        if fold is None:
            fold = await self._append_locked(
                conversation_id, events, expected_version, metadata, instance_id
            )
        self._memory.remember(conversation_id, fold)
        appended = Appended.of(conversation_id, fold)
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
        all of them (``WRITE_MANY``), so 500 generations cost a few commits a second, not
        500. Any item the guard refuses (another writer moved its conversation), and every
        item when the batch fails as a whole, then goes alone through ``append``; a batch
        whose commit's answer was lost is safe to send again (``AlreadyStored``).
        """
        results: list[Exception | None] = [None] * len(items)
        metadata = event_metadata("system", None)
        together: list[tuple[int, Write]] = []
        alone: list[int] = []
        # By conversation id, one item per conversation in `together` (the statement
        # writes each conversation once; it takes the row locks in id order itself).
        for i in sorted(range(len(items)), key=lambda i: items[i][0]):
            cid, event = items[i]
            known = self._memory.known(cid)
            if (
                known is None
                or event.message_id not in known.hot
                or any(w.cid == cid for _, w in together[-1:])
            ):
                alone.append(i)
                continue
            try:
                fold = fold_batch(cid, known.conversation, dict(known.hot), [event])
            except (DomainError, StreamProtocolError):
                alone.append(i)  # judged on rows that may be stale: append judges again
                continue
            together.append((i, Write(cid, fold, known.version, metadata, None)))
        written: list[Write] = []
        if together:
            try:
                async with self.pool.connection() as conn:
                    stored = await write_many(conn, [w for _, w in together])
                for i, w in together:
                    if w.cid in stored:
                        written.append(w)
                    else:  # another writer got there first: append reads afresh
                        self._memory.forget(w.cid)
                        alone.append(i)
            except psycopg.OperationalError as exc:
                # The database is out of reach (or the pool exhausted): so it is for each
                # alone too. Nothing of it committed, or (a lost answer to COMMIT) all of
                # it did: the caller sends the same checkpoints again later, and a stored
                # one then answers AlreadyStored.
                for i, _ in together:
                    results[i] = exc
                written = []
            except Exception:
                # Perhaps one item's fault: each goes again alone (same as above if stored).
                structlog.get_logger("turnlog.store").warning(
                    "batched checkpoint write failed; writing them one by one", exc_info=True
                )
                written = []
                alone = [i for i, _ in together] + alone
        for w in written:
            self._memory.remember(w.cid, w.fold)
            if self._on_append is not None:
                self._on_append(Appended.of(w.cid, w.fold))
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
    ) -> Folded | None:
        """The fast way: fold onto the remembered rows and write them if the conversation
        is still at their version. None when it cannot (the caller goes the locked way)."""
        known = self._memory.known(cid)
        if known is None:
            return None
        version = known.version
        if expected_version is not None and expected_version != version:
            return None  # perhaps we are behind: the locked way decides
        needed: set[uuid.UUID] = set()
        created: set[uuid.UUID] = set()
        for event in events:
            needed.update(m for m in referenced_messages(event) if m not in created)
            created.update(created_messages(event))
        if not needed <= known.hot.keys():
            return None
        try:
            fold = fold_batch(cid, known.conversation, dict(known.hot), events)
        except (DomainError, StreamProtocolError):
            return None  # judged on rows that may be stale: the locked way judges again
        w = Write(cid, fold, version, metadata, instance_id)
        if fold.conversation is None:
            written = await self._group.write_alone(w)
        else:
            written = await self._group.write(w)
        if not written:
            self._memory.forget(cid)
            return None
        return fold

    async def _append_locked(
        self,
        cid: uuid.UUID,
        events: Sequence[DomainEvent],
        expected_version: int | None,
        metadata: str,
        instance_id: uuid.UUID | None,
    ) -> Folded:
        async with self.pool.connection() as conn, conn.transaction():
            # The conversation's row lock first: see statements.LOCK_CONVERSATION.
            conv = await lock_conversation(conn, cid)
            found = 0 if conv is None else conv.conversation.version
            if expected_version is not None and found != expected_version:
                raise VersionConflict(
                    f"expected version {expected_version} of conversation {cid}, found {found}"
                )
            wanted = {m for e in events for m in referenced_messages(e)}
            messages = await load_messages(conn, wanted) if wanted else {}
            fold = fold_batch(cid, conv, messages, events)
            try:
                written = await write(conn, Write(cid, fold, found, metadata, instance_id))
            except psycopg.errors.UniqueViolation as exc:
                # Another key (a client_message_id sent twice) is the caller's to judge.
                if exc.diag.constraint_name != "events_conversation_version":
                    raise
                written = False
            if not written:  # only a creation can race (there was no row to lock)
                raise VersionConflict(f"conversation {cid} was appended to concurrently")
        return fold

    def known_idle(self, cid: uuid.UUID) -> ConversationRecord | None:
        """The conversation as this store last wrote it, if it was idle then; None if not
        remembered. It may be stale (another process may have written or deleted it since):
        decide on it only what an append guarded by its version re-checks, so that being
        stale costs a retry, never a wrong answer."""
        return self._memory.known_idle(cid)

    def history(self, cid: uuid.UUID, version: int) -> list[MessageRecord] | None:
        """Every message row of the conversation in seq order, as of ``version``, if this
        store wrote that version and knows the rows exactly then (see
        turnlog.log.memory); None if not (read them)."""
        return self._memory.history(cid, version)

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
            cur = await conn.execute(_MESSAGE_WITH_TREE, (mid,))
            row: TupleRow | None = await cur.fetchone()
        if row is None:
            return None
        return numbered_row(tuple(row[-1] or ()), message_from_row(row[:-1]))

    async def _message_events(
        self, cid: uuid.UUID, mid: uuid.UUID, event_type: str
    ) -> list[ev.DomainEvent]:
        """The ``event_type`` events of message ``mid``, newest first: recovery's records,
        rare and few per message, so read from the log rather than kept on the row."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT data FROM events WHERE conversation_id = %s "
                "AND type = %s AND data->>'message_id' = %s ORDER BY version DESC",
                (cid, event_type, str(mid)),
            )
            rows = await cur.fetchall()
        return [ev.decode(r[0]) for r in rows]  # jsonb comes as bytes (_RawJson)

    async def resumptions(self, cid: uuid.UUID, mid: uuid.UUID) -> int:
        """How many times message ``mid`` was taken over after its process died (its
        ``turn_resumed`` events): recovery's attempt budget."""
        return len(await self._message_events(cid, mid, "turn_resumed"))

    async def approved_started(
        self, cid: uuid.UUID, mid: uuid.UUID, call_id: str
    ) -> ev.StartedCall | None:
        """The record of approved call ``call_id`` of message ``mid`` having started (its
        result not stored since: the call still waits), or None if it never started."""
        for event in await self._message_events(cid, mid, "approved_call_started"):
            if isinstance(event, ev.ApprovedCallStarted) and event.call.tool_call_id == call_id:
                return event.call
        return None

    async def started_calls(
        self, cid: uuid.UUID, mid: uuid.UUID, stream_seq: int
    ) -> tuple[ev.StartedCall, ...] | None:
        """The server tool calls of message ``mid`` recorded as started at ``stream_seq`` (its
        stored seq) and not finished since: its process died while they ran, or before
        (None: no such record; its step was still streaming)."""
        # Only the newest record can be unfinished: the step's end, which stores the
        # results, moves the row on.
        newest = next(iter(await self._message_events(cid, mid, "tool_calls_started")), None)
        if not isinstance(newest, ev.ToolCallsStarted) or newest.stream_seq != stream_seq:
            return None
        return newest.calls

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
        message, conv = message_with_conversation(row)
        return (message, None) if conv is None else (numbered_row(conv.tree, message), conv)

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
            answer = None if row is None else message_from_row(row)
            # Their versions are counted from the conversation's tree (a repeat may come
            # after the row got a sibling: an edit and resend); a rare path, one read more.
            cur = await conn.execute("SELECT tree FROM conversations WHERE id = %s", (cid,))
            found = await cur.fetchone()
        tree = () if found is None else tuple(found[0])
        return numbered_row(tree, user), None if answer is None else numbered_row(tree, answer)

    async def snapshot(
        self, cid: uuid.UUID
    ) -> tuple[int, ConversationRecord | None, list[MessageRecord]] | None:
        """The conversation and all its rows (numbered, as ``list_messages`` gives them) as
        of one version, or (version, None, []) once deleted; None if it never existed."""
        async with self.pool.connection() as conn, conn.transaction():
            # REPEATABLE READ: the conversation row (its version) and the message rows
            # come from one snapshot, so the rows are exactly as that version left them.
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur = await conn.execute(
                f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = %s", (cid,)
            )
            row = await cur.fetchone()
            if row is None:
                cur = await conn.execute(
                    "SELECT max(version) FROM events WHERE conversation_id = %s", (cid,)
                )
                found = await cur.fetchone()
                if found is None or found[0] is None:
                    return None
                return int(found[0]), None, []
            conv = conversation_from_row(row)
            cur = await conn.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = %s ORDER BY seq",
                (cid,),
            )
            rows = numbered([message_from_row(r) for r in await cur.fetchall()])
        return conv.conversation.version, conv, rows

    async def versions(self, cids: Iterable[uuid.UUID]) -> dict[uuid.UUID, int]:
        """The current version of each of ``cids`` that exists."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT id, version FROM conversations WHERE id = ANY(%s)", (list(cids),)
            )
            return {r[0]: r[1] for r in await cur.fetchall()}

    # -- instances and leases (operational, never replayed): see turnlog.log.instances ---

    async def register_instance(
        self,
        conn: psycopg.AsyncConnection[Any],
        instance_id: uuid.UUID,
        now: datetime,
        *,
        key: int | None = None,
    ) -> int:
        return await self.instances.register(conn, instance_id, now, key=key)

    async def unregister_instance(self, instance_id: uuid.UUID) -> None:
        await self.instances.unregister(instance_id)

    async def orphans(
        self, *, me: uuid.UUID, mine: Iterable[uuid.UUID] = ()
    ) -> list[MessageRecord]:
        return await self.instances.orphans(me=me, mine=mine)

    async def is_orphan(self, mid: uuid.UUID, *, me: uuid.UUID, mine: bool) -> bool:
        return await self.instances.is_orphan(mid, me=me, mine=mine)

    async def liveness_unsettled_s(self) -> float:
        return await self.instances.liveness_unsettled_s()
