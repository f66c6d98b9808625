"""Replay: fold the event log into projection rows, to verify, rebuild or inspect them.

The log is the truth; ``conversations`` and ``messages`` are its fold through
:func:`turnlog.log.projection.evolve`, the same function the live path uses. This module
folds the log again, from the events alone:

- :func:`verify` compares the fold with the projection rows and lists every difference;
- :func:`rebuild` folds into fresh tables and swaps them in, in one transaction;
- :func:`show` folds one conversation up to a version.

Replay reads a clock only to report progress, never calls a model and never appends an
event. Every function takes a connection string and opens its own connections.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from itertools import islice
from typing import Any

import msgspec
import psycopg
from psycopg import sql
from turnlog_reducer import StreamProtocolError

from turnlog.config import Settings
from turnlog.log.events import ConversationCreated, decode
from turnlog.log.projection import ConversationRecord, MessageRecord, evolve
from turnlog.log.rows import (
    CONVERSATION_COLUMNS,
    MESSAGE_COLUMNS,
    configure_connection,
    conversation_from_row,
    conversation_params,
    message_from_row,
    message_params,
)
from turnlog.log.tree import numbered

PROJECTIONS = ("conversations", "messages")
"""The tables replay owns. ``instances`` and ``leases`` are operational state, not folds."""

_REBUILD_SUFFIX = "_rebuild"
# Session advisory lock held for a whole rebuild: two rebuilds at once would drop each
# other's half-built tables. Any constant works if every turnlog process uses the same one.
_REBUILD_LOCK = 0x7475726E72656275  # "turnrebu"
_FETCH = 10_000  # rows per round trip of the log cursor
_BATCH = 2_000  # conversations folded between two COPYs of their rows


class ReplayError(Exception):
    """The log cannot be folded (a gap in versions, an undecodable event), or an
    argument names nothing in it."""


class Folded(msgspec.Struct):
    """One conversation's log folded up to ``version``: its row (None once deleted) and its
    message rows by id. ``problem`` says why folding stopped early, if it did."""

    conversation_id: uuid.UUID
    version: int = 0
    conversation: ConversationRecord | None = None
    messages: dict[uuid.UUID, MessageRecord] = msgspec.field(default_factory=dict)
    problem: str | None = None

    @property
    def deleted(self) -> bool:
        # A log can only fold to no row after its creation by deleting it.
        return self.conversation is None and self.version > 0


Progress = Callable[[int], None]
"""Called with the number of events folded so far, after every fetched batch."""


# -- folding -------------------------------------------------------------------------------


def fold_log(
    conn: psycopg.Connection[Any],
    conversation_ids: Sequence[uuid.UUID] | None = None,
    *,
    at: int | None = None,
    progress: Progress | None = None,
) -> Iterator[Folded]:
    """Fold every conversation's events (or those of ``conversation_ids``, up to version
    ``at``), yielding one :class:`Folded` per conversation in id order.

    Reads through a server-side cursor in one snapshot, so memory holds one conversation
    and one fetch at a time. ``conn`` must be configured with
    :func:`~turnlog.log.rows.configure_connection` (jsonb arrives as bytes).
    """
    where: list[sql.Composable] = []
    params: list[Any] = []
    if conversation_ids is not None:
        where.append(sql.SQL("conversation_id = ANY(%s)"))
        params.append(list(conversation_ids))
    if at is not None:
        where.append(sql.SQL("version <= %s"))
        params.append(at)
    query = sql.SQL("SELECT conversation_id, version, data FROM events {w} {o}").format(
        w=sql.SQL("WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""),
        # The (conversation_id, version) key's index delivers this order without a sort.
        o=sql.SQL("ORDER BY conversation_id, version"),
    )
    # A named (server-side) cursor lives in a transaction; inside one already, this is a
    # savepoint and the fold shares the caller's snapshot.
    with conn.transaction(), conn.cursor(name="turnlog_replay_fold") as cur:
        cur.execute(query, params)
        state: Folded | None = None
        seen = 0
        while rows := cur.fetchmany(_FETCH):
            for cid, version, data in rows:
                if state is None or cid != state.conversation_id:
                    if state is not None:
                        yield state
                    state = Folded(cid)
                if state.problem is None:
                    _step(state, version, data)
            seen += len(rows)
            if progress is not None:
                progress(seen)
        if state is not None:
            yield state


def _step(state: Folded, version: int, data: bytes) -> None:
    """Fold one stored event into ``state``, or record why it cannot be folded."""
    cid = state.conversation_id
    if version != state.version + 1:
        state.problem = f"log versions of conversation {cid} jump from {state.version} to {version}"
        return
    try:
        event = decode(data)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        state.problem = f"event {version} of conversation {cid} does not decode: {exc}"
        return
    created = isinstance(event, ConversationCreated)
    if state.deleted or created != (state.conversation is None):
        where = "after its deletion" if state.deleted else "out of place"
        state.problem = f"event {version} of conversation {cid} ({type(event).__name__}) {where}"
        return
    try:
        outcome = evolve(state.conversation, state.messages, event, version)
    except (KeyError, StreamProtocolError) as exc:
        state.problem = f"event {version} of conversation {cid} does not fold: {exc!r}"
        return
    state.version = version
    state.conversation = outcome.conversation
    if outcome.conversation is None:
        state.messages.clear()
    else:
        for row in outcome.messages:
            state.messages[row.message.id] = row


def fold_events(conversation_id: uuid.UUID, events: Iterable[tuple[int, bytes | str]]) -> Folded:
    """Fold ``(version, event JSON)`` pairs of one conversation, in memory (for tests)."""
    state = Folded(conversation_id)
    for version, data in events:
        if state.problem is None:
            _step(state, version, data if isinstance(data, bytes) else data.encode())
    return state


def _connect(conninfo: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    conn = psycopg.connect(conninfo, autocommit=autocommit)
    configure_connection(conn)
    return conn


def _batched(items: Iterable[Folded], n: int) -> Iterator[list[Folded]]:
    it = iter(items)
    while batch := list(islice(it, n)):
        yield batch


# -- verify --------------------------------------------------------------------------------


class VerifyReport(msgspec.Struct, frozen=True):
    conversations: int
    messages: int
    events: int
    drift: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.drift

    def summary(self) -> str:
        counts = (
            f"{self.conversations:,} conversations, {self.messages:,} messages "
            f"from {self.events:,} events"
        )
        if self.ok:
            return f"verify: projections match the log ({counts})"
        return f"verify: {len(self.drift):,} differences between projections and log ({counts})"


def verify(conninfo: str) -> VerifyReport:
    """Fold the whole log and compare it with the projection rows, field by field."""
    drift: list[str] = []
    n_conv = n_msg = n_events = 0
    with _connect(conninfo) as conn:
        # One snapshot for log and projections: appends committed meanwhile are either in
        # both or in neither, so a busy server shows no false drift.
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            for batch in _batched(fold_log(conn), _BATCH):
                ids = [f.conversation_id for f in batch]
                live = _read_conversations(conn, "WHERE id = ANY(%s)", ids)
                rows = _read_messages(conn, "WHERE conversation_id = ANY(%s)", ids)
                for f in batch:
                    n_events += f.version
                    if f.conversation is not None:
                        n_conv += 1
                        n_msg += len(f.messages)
                    drift += _diff(f, live.get(f.conversation_id), rows.get(f.conversation_id, {}))
            # Rows whose conversation has no event at all.
            unlogged = "WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.conversation_id = {})"
            for cid in _read_conversations(conn, unlogged.format("id"), None):
                drift.append(f"conversation {cid}: in the projection but not in the log")
            for cid, msgs in _read_messages(conn, unlogged.format("conversation_id"), None).items():
                for m in sorted(msgs.values(), key=lambda r: r.message.seq):
                    drift.append(
                        f"{_message_label(m)}: in the projection but conversation {cid} "
                        "has no events"
                    )
    return VerifyReport(n_conv, n_msg, n_events, tuple(drift))


def _read_conversations(
    conn: psycopg.Connection[Any], where: str, ids: list[uuid.UUID] | None
) -> dict[uuid.UUID, ConversationRecord]:
    cur = conn.execute(
        f"SELECT {CONVERSATION_COLUMNS} FROM conversations {where}",
        None if ids is None else (ids,),
    )
    return {r.conversation.id: r for r in map(conversation_from_row, cur)}


def _read_messages(
    conn: psycopg.Connection[Any], where: str, ids: list[uuid.UUID] | None
) -> dict[uuid.UUID, dict[uuid.UUID, MessageRecord]]:
    cur = conn.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM messages {where}",
        None if ids is None else (ids,),
    )
    out: dict[uuid.UUID, dict[uuid.UUID, MessageRecord]] = {}
    for r in map(message_from_row, cur):
        out.setdefault(r.message.conversation_id, {})[r.message.id] = r
    return out


def _diff(
    f: Folded, live: ConversationRecord | None, rows: dict[uuid.UUID, MessageRecord]
) -> list[str]:
    cid = f.conversation_id
    if f.problem is not None:
        return [f"conversation {cid}: {f.problem}"]
    out: list[str] = []
    # Versions are counted, not stored (turnlog.log.tree): both sides counted afresh.
    rows = {r.message.id: r for r in numbered(list(rows.values()))}
    folded = {r.message.id: r for r in numbered(list(f.messages.values()))}
    if f.conversation is None:
        if live is not None:
            out.append(
                f"conversation {cid}: in the projection but deleted in the log "
                f"(version {f.version})"
            )
    elif live is None:
        out.append(f"conversation {cid}: missing from the projection (log version {f.version})")
    elif live != f.conversation:
        out += _field_diff(f"conversation {cid}", _fields(live), _fields(f.conversation))
    for mid in sorted(rows.keys() | folded.keys(), key=lambda m: _seq(rows, folded, m)):
        want, have = folded.get(mid), rows.get(mid)
        if want is None:
            assert have is not None
            out.append(f"{_message_label(have)}: in the projection but not in the log")
        elif have is None:
            out.append(f"{_message_label(want)}: missing from the projection")
        elif have != want:
            out += _field_diff(_message_label(want), _fields(have), _fields(want))
    return out


def _seq(
    a: dict[uuid.UUID, MessageRecord], b: dict[uuid.UUID, MessageRecord], mid: uuid.UUID
) -> int:
    row = a.get(mid) or b[mid]
    return row.message.seq


def _message_label(r: MessageRecord) -> str:
    m = r.message
    return f"message {m.id} (conversation {m.conversation_id}, seq {m.seq})"


def _fields(record: ConversationRecord | MessageRecord) -> dict[str, Any]:
    """Every column of a row, the API fields and the server-only ones, by name."""
    inner = record.conversation if isinstance(record, ConversationRecord) else record.message
    out = msgspec.structs.asdict(inner)
    out.update(
        (name, getattr(record, name))
        for name in record.__struct_fields__
        if name not in ("conversation", "message")
    )
    return out


# Generated from ``status`` by PostgreSQL: a wrong status is reported once, as status.
_DERIVED = frozenset({"is_generating", "interrupted"})


def _field_diff(label: str, projection: dict[str, Any], log: dict[str, Any]) -> list[str]:
    return [
        f"{label}: {name}: projection {_show_value(projection[name])}, log {_show_value(value)}"
        for name, value in log.items()
        if name not in _DERIVED and projection.get(name) != value
    ]


def _show_value(value: Any, limit: int = 160) -> str:
    if isinstance(value, str):
        text = repr(value)
    elif isinstance(value, datetime):
        text = value.isoformat()
    else:
        text = msgspec.json.encode(value).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- rebuild -------------------------------------------------------------------------------


class RebuildReport(msgspec.Struct, frozen=True):
    conversations: int
    messages: int
    events: int
    seconds: float
    caught_up: int
    locked_seconds: float

    def summary(self) -> str:
        rate = self.events / self.seconds if self.seconds > 0 else 0.0
        return (
            f"rebuild: {self.conversations:,} conversations, {self.messages:,} messages "
            f"from {self.events:,} events in {self.seconds:.1f} s ({rate:,.0f} events/s); "
            f"{self.caught_up:,} conversations caught up, appends paused "
            f"{self.locked_seconds * 1000:.0f} ms for the swap"
        )


class _Counts:
    def __init__(self) -> None:
        self.conversations = 0
        self.messages = 0
        self.versions: dict[uuid.UUID, int] = {}
        """The version each conversation was folded to (deleted ones included)."""


def rebuild(conninfo: str, *, progress: Progress | None = None) -> RebuildReport:
    """Fold the whole log into ``*_rebuild`` tables and swap them in for the projections.

    Readers keep the old tables until the swap commits, then see the new ones: never a
    half-built projection. Appends go on while the fold runs; the swap pauses them for
    the short catch-up of conversations appended to meanwhile.
    """
    started = time.perf_counter()
    with _connect(conninfo, autocommit=True) as conn:
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (_REBUILD_LOCK,)).fetchone()
        if not got or not got[0]:
            raise ReplayError("another `turnlog replay rebuild` is running on this database")
        try:
            _create_rebuild_tables(conn)
            counts = _Counts()
            with _connect(conninfo) as reader:
                for batch in _batched(fold_log(reader, progress=progress), _BATCH):
                    _write(conn, batch, counts)
            # First catch up without any lock, so the locked round below has little left.
            _catch_up(conn, counts)
            for table in PROJECTIONS:
                conn.execute(sql.SQL("ANALYZE {}").format(_rebuild_name(table)))
            locked, caught_up = _swap(conn, counts)
        except BaseException:
            conn.execute(_drop_rebuild_tables())
            raise
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_REBUILD_LOCK,))
    events = sum(counts.versions.values())
    return RebuildReport(
        counts.conversations,
        counts.messages,
        events,
        time.perf_counter() - started,
        caught_up,
        locked,
    )


def _rebuild_name(table: str) -> sql.Identifier:
    return sql.Identifier(table + _REBUILD_SUFFIX)


def _drop_rebuild_tables() -> sql.Composed:
    return sql.SQL("DROP TABLE IF EXISTS {}").format(
        sql.SQL(", ").join(_rebuild_name(t) for t in PROJECTIONS)
    )


def _create_rebuild_tables(conn: psycopg.Connection[Any]) -> None:
    # Left over by a rebuild that was killed: nothing else uses these names.
    conn.execute(_drop_rebuild_tables())
    for table in PROJECTIONS:
        # INCLUDING ALL copies columns, defaults, generated columns, CHECK and NOT NULL
        # constraints and indexes. Index (and index-backed constraint) names get made up
        # from the new table's name; _swap gives them their canonical names back.
        conn.execute(
            sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
                _rebuild_name(table), sql.Identifier(table)
            )
        )


def _write(conn: psycopg.Connection[Any], batch: Sequence[Folded], counts: _Counts) -> None:
    """COPY the rows of folded conversations into the rebuild tables."""
    with conn.transaction():
        with conn.cursor().copy(
            sql.SQL("COPY {} ({}) FROM STDIN").format(
                _rebuild_name("conversations"), sql.SQL(CONVERSATION_COLUMNS)
            )
        ) as copy:
            for f in batch:
                if f.problem is not None:
                    raise ReplayError(
                        f"cannot rebuild: conversation {f.conversation_id}: {f.problem}"
                    )
                counts.versions[f.conversation_id] = f.version
                if f.conversation is not None:
                    copy.write_row(conversation_params(f.conversation))
                    counts.conversations += 1
        with conn.cursor().copy(
            sql.SQL("COPY {} ({}) FROM STDIN").format(
                _rebuild_name("messages"), sql.SQL(MESSAGE_COLUMNS)
            )
        ) as copy:
            for f in batch:
                for row in f.messages.values():
                    copy.write_row(message_params(row))
                counts.messages += len(f.messages)


def _catch_up(conn: psycopg.Connection[Any], counts: _Counts) -> int:
    """Fold again every conversation whose log moved past the version folded; return how
    many. A conversation deleted meanwhile folds to no rows, so its rows just go."""
    heads = conn.execute(
        "SELECT conversation_id, max(version) FROM events GROUP BY conversation_id"
    ).fetchall()
    stale = [cid for cid, version in heads if counts.versions.get(cid) != version]
    if not stale:
        return 0
    conv, msgs = (_rebuild_name(t) for t in PROJECTIONS)
    with conn.transaction():
        for cid in stale:
            if counts.versions.pop(cid, None) is not None:
                counts.conversations -= conn.execute(
                    sql.SQL("DELETE FROM {} WHERE id = %s").format(conv), (cid,)
                ).rowcount
                counts.messages -= conn.execute(
                    sql.SQL("DELETE FROM {} WHERE conversation_id = %s").format(msgs), (cid,)
                ).rowcount
        for batch in _batched(fold_log(conn, stale), _BATCH):
            _write(conn, batch, counts)
    return len(stale)


def _swap(conn: psycopg.Connection[Any], counts: _Counts) -> tuple[float, int]:
    """Catch up under lock and put the rebuilt tables in place of the projections, in one
    transaction. Returns how long appends were paused and how many conversations were
    folded again."""
    with conn.transaction():
        # Lock order matters. Every append takes the conversations table first (its
        # SELECT ... FOR UPDATE holds ROW SHARE until commit) and events and messages after.
        # EXCLUSIVE on conversations conflicts with that ROW SHARE but not with plain
        # SELECTs: it waits for in-flight appends to commit and makes new ones wait at
        # their first statement, holding nothing we need; readers go on.
        conn.execute("LOCK TABLE conversations IN EXCLUSIVE MODE")
        locked_at = time.perf_counter()
        # In-flight appends hold ROW EXCLUSIVE on events until they commit, so once this
        # is granted every committed event is visible to the statements below and no new
        # one can commit before we do. (With the lock above it is granted at once; it
        # states the invariant for any other writer of events.)
        conn.execute("LOCK TABLE events IN EXCLUSIVE MODE")
        caught_up = _catch_up(conn, counts)
        renames = _canonical_index_names(conn)
        # DROP and RENAME take ACCESS EXCLUSIVE: readers wait for the commit, then read
        # the new tables (a waiting query looks its table up again once it gets the lock).
        for table in PROJECTIONS:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
            conn.execute(
                sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                    _rebuild_name(table), sql.Identifier(table)
                )
            )
        # Index names are global: schema.sql's CREATE INDEX IF NOT EXISTS at the next
        # start, and the next rebuild, look indexes up by their canonical names. Renaming
        # the index behind a primary key or unique constraint renames the constraint too.
        for made_up, canonical in renames:
            conn.execute(
                sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                    sql.Identifier(made_up), sql.Identifier(canonical)
                )
            )
        locked = time.perf_counter() - locked_at
    return locked, caught_up


def _canonical_index_names(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """(rebuilt index, live index of the same definition) pairs for every projection."""
    pairs: list[tuple[str, str]] = []
    for table in PROJECTIONS:
        live = _index_definitions(conn, table)
        rebuilt = _index_definitions(conn, table + _REBUILD_SUFFIX)
        by_definition = {d: name for name, d in live.items()}
        for name, definition in rebuilt.items():
            canonical = by_definition.get(definition)
            if canonical is None:
                raise ReplayError(
                    f"rebuilt index {name} ({definition}) matches no index of {table}"
                )
            if canonical != name:
                pairs.append((name, canonical))
    return pairs


def _index_definitions(conn: psycopg.Connection[Any], table: str) -> dict[str, str]:
    """Index name -> its definition with the index and table names left out."""
    rows = conn.execute(
        "SELECT c.relname, quote_ident(c.relname), pg_get_indexdef(i.indexrelid) "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = to_regclass(%s)",
        (table,),
    ).fetchall()
    out = {}
    for name, quoted, definition in rows:
        # "CREATE [UNIQUE] INDEX <name> ON <schema>.<table> USING ..." -> "CREATE [UNIQUE]
        # INDEX USING ..."
        head, _, rest = definition.partition(" ON ")
        _, _, using = rest.partition(" USING ")
        out[name] = head.removesuffix(" " + quoted) + " USING " + using
    return out


# -- show ----------------------------------------------------------------------------------


def show(conninfo: str, conversation_id: uuid.UUID, at: int | None = None) -> Folded:
    """The conversation as it stood after event ``at`` (default: the last), from the log."""
    if at is not None and at < 1:
        raise ReplayError(f"--at must be a version of 1 or more, got {at}")
    with _connect(conninfo) as conn:
        conn.read_only = True
        with conn.transaction():
            row = conn.execute(
                "SELECT max(version) FROM events WHERE conversation_id = %s", (conversation_id,)
            ).fetchone()
            last = None if row is None else row[0]
            if last is None:
                raise ReplayError(f"conversation {conversation_id} has no events in the log")
            if at is not None and at > last:
                raise ReplayError(
                    f"conversation {conversation_id} has {last} events; --at {at} is beyond the end"
                )
            folded = list(fold_log(conn, [conversation_id], at=at))
    assert len(folded) == 1
    return folded[0]


def show_json(folded: Folded) -> bytes:
    """Pretty JSON of a folded conversation: every column of its rows, messages in seq order."""
    doc = {
        "conversation_id": folded.conversation_id,
        "version": folded.version,
        "deleted": folded.deleted,
        "conversation": None if folded.conversation is None else _fields(folded.conversation),
        "messages": [
            _fields(m) for m in sorted(folded.messages.values(), key=lambda r: r.message.seq)
        ],
    }
    if folded.problem is not None:
        doc["problem"] = folded.problem
    return msgspec.json.format(msgspec.json.encode(doc), indent=2)


# -- CLI -----------------------------------------------------------------------------------


class _ProgressLine:
    """Events folded and events/s on stderr, at most about once a second."""

    def __init__(self, conninfo: str) -> None:
        self.started = self.shown = time.perf_counter()
        self.total = _estimated_events(conninfo)

    def __call__(self, events: int) -> None:
        now = time.perf_counter()
        if now - self.shown < 1.0:
            return
        self.shown = now
        rate = events / (now - self.started)
        of = f" of ~{self.total:,}" if self.total > events else ""
        print(f"rebuild: {events:,}{of} events folded, {rate:,.0f} events/s", file=sys.stderr)


def _estimated_events(conninfo: str) -> int:
    # The planner's estimate: a count(*) would scan the whole log once more.
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass('events')"
        ).fetchone()
    return max(0, int(row[0])) if row and row[0] is not None else 0


def cli_replay(settings: Settings, args: argparse.Namespace) -> int:
    """``turnlog replay verify|rebuild|show``; returns the exit status."""
    from turnlog.db.embedded import resolve_database_url
    from turnlog.db.schema import apply_schema

    try:
        conninfo, _embedded = resolve_database_url(settings)
        apply_schema(conninfo)
        match args.replay_command:
            case "verify":
                report = verify(conninfo)
                for line in report.drift:
                    print(line)
                print(report.summary())
                return 0 if report.ok else 1
            case "rebuild":
                result = rebuild(conninfo, progress=_ProgressLine(conninfo))
                print(result.summary())
                return 0
            case "show":
                try:
                    cid = uuid.UUID(args.conversation_id)
                except ValueError:
                    given = args.conversation_id
                    print(
                        f"turnlog: expected a conversation id (a UUID), got {given!r}",
                        file=sys.stderr,
                    )
                    return 2
                try:
                    folded = show(conninfo, cid, args.at)
                except ReplayError as exc:
                    print(f"turnlog: {exc}", file=sys.stderr)
                    return 2
                sys.stdout.buffer.write(show_json(folded) + b"\n")
                return 0
    except (ReplayError, psycopg.Error) as exc:
        print(f"turnlog: {exc}", file=sys.stderr)
        return 1
    print(f"turnlog: expected replay action verify, rebuild or show, got {args.replay_command!r}")
    return 2
