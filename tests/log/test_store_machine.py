"""The store against real PostgreSQL, driven by a Hypothesis state machine.

Random commands go through ``Store.append``: valid ones, stale and racing versions, late
writes from ended generations, batches that fail halfway. After every step the projection
rows must equal the fold of the stored events and the result of ``rebuild``, and every
conversation's versions must run 1..n without a gap.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import hypothesis.strategies as st
import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from turnlog_reducer import (
    ReasoningDelta,
    StreamEvent,
    StreamProtocolError,
    TextDelta,
    ToolCallBlock,
    ToolCallDelta,
    ToolCallReady,
    ToolCallStarted,
)

from turnlog import replay
from turnlog.db.schema import apply_schema
from turnlog.errors import (
    AlreadyStored,
    ConversationBusy,
    DomainError,
    Fenced,
    InvalidEvent,
    NotFound,
    VersionConflict,
)
from turnlog.log import events as ev
from turnlog.log import tree
from turnlog.log.pool import open_pool
from turnlog.log.projection import ConversationRecord, MessageRecord
from turnlog.log.store import Appended, Store

T = TypeVar("T")

# No NUL: PostgreSQL text and jsonb cannot hold it (see bad_batch for what happens then).
texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8)
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class StoreMachine(RuleBasedStateMachine):
    """One database; the model is what each conversation's version must be."""

    url: str

    def __init__(self) -> None:
        super().__init__()
        self._portal_cm = anyio.from_thread.start_blocking_portal("asyncio")
        self.portal = self._portal_cm.__enter__()
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("TRUNCATE events, conversations, messages, leases, instances")
        self.pool = open_pool(self.url, min_size=2, max_size=4)
        self.portal.call(self.pool.open)
        # Two stores on one database, as two server processes: each remembers what it last
        # wrote, so whenever the other one writes, its next (guarded) append finds itself
        # behind and must go the locked way.
        self.stores = (Store(self.pool), Store(self.pool))
        self.store = self.stores[0]
        self.versions: dict[uuid.UUID, int] = {}  # expected version, deleted ones included
        self.deleted: set[uuid.UUID] = set()
        self.ended_attempts: list[tuple[uuid.UUID, uuid.UUID, uuid.UUID]] = []  # cid, mid, attempt
        self.ids = 0
        self.clock = 0

    def teardown(self) -> None:
        self.portal.call(self.pool.close)
        self._portal_cm.__exit__(None, None, None)

    # -- helpers -------------------------------------------------------------------------

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        return self.portal.call(functools.partial(fn, *args, **kwargs))

    def new_id(self) -> uuid.UUID:
        self.ids += 1
        return uuid.UUID(int=self.ids)

    def now(self) -> datetime:
        self.clock += 1
        return EPOCH + timedelta(milliseconds=self.clock)

    def live(self) -> list[uuid.UUID]:
        return sorted(c for c in self.versions if c not in self.deleted)

    def append(
        self, cid: uuid.UUID, events: Sequence[ev.DomainEvent], *, expected: bool = True
    ) -> Appended:
        version = self.versions.get(cid, 0)
        done = self.run(
            self.store.append, cid, events, expected_version=version if expected else None
        )
        self.versions[cid] = done.version
        if done.conversation is None:
            self.deleted.add(cid)
        return done

    def append_fails(
        self,
        cid: uuid.UUID,
        events: Sequence[ev.DomainEvent],
        errors: type[BaseException] | tuple[type[BaseException], ...],
        *,
        expected_version: int | None = None,
    ) -> None:
        """The append raises one of ``errors`` and the database is left as it was."""
        before = self.snapshot()
        with pytest.raises(errors):
            self.run(self.store.append, cid, events, expected_version=expected_version)
        assert self.snapshot() == before

    def snapshot(self) -> tuple[Any, ...]:
        with psycopg.connect(self.url) as conn:
            events = conn.execute("SELECT count(*), coalesce(max(position), 0) FROM events")
            convs = conn.execute("SELECT * FROM conversations ORDER BY id").fetchall()
            msgs = conn.execute("SELECT * FROM messages ORDER BY id").fetchall()
            leases = conn.execute("SELECT * FROM leases ORDER BY message_id").fetchall()
            return (events.fetchone(), convs, msgs, leases)

    def conversation(self, cid: uuid.UUID) -> ConversationRecord:
        record = self.run(self.store.get_conversation, cid)
        assert record is not None
        return record

    def messages(self, cid: uuid.UUID) -> list[MessageRecord]:
        return self.run(self.store.list_messages, cid)

    def generating(self, cid: uuid.UUID) -> MessageRecord | None:
        rows = [m for m in self.messages(cid) if m.message.status == "generating"]
        assert len(rows) <= 1
        return rows[0] if rows else None

    def stream_events(self, data: st.DataObject, ids: list[str]) -> list[StreamEvent]:
        """A valid continuation of a stream whose tool calls are ``ids`` (which it extends):
        deltas, new and growing tool calls."""
        out: list[StreamEvent] = []
        kinds = st.sampled_from(["text", "text", "reasoning", "start", "delta", "ready"])
        for kind in data.draw(st.lists(kinds, max_size=6), label="stream"):
            if kind == "text":
                out.append(TextDelta(data.draw(texts)))
            elif kind == "reasoning":
                out.append(ReasoningDelta(data.draw(texts)))
            elif kind == "start" or not ids:
                ids.append(f"call_{len(ids)}")
                out.append(ToolCallStarted(ids[-1], data.draw(st.sampled_from(["clock", "ask"]))))
            elif kind == "delta":
                out.append(ToolCallDelta(data.draw(st.sampled_from(ids)), data.draw(texts)))
            else:
                out.append(ToolCallReady(data.draw(st.sampled_from(ids)), data.draw(json_values)))
        return out

    def start_turn(self, cid: uuid.UUID, seq: int, reply_to: uuid.UUID | None) -> ev.DomainEvent:
        return ev.AssistantTurnStarted(
            at=self.now(),
            message_id=self.new_id(),
            seq=seq,
            attempt=self.new_id(),
            model="demo:default",
            reply_to=reply_to,
        )

    # -- commands ------------------------------------------------------------------------

    @rule(data=st.data())
    def create(self, data: st.DataObject) -> None:
        cid = self.new_id()
        event = ev.ConversationCreated(
            at=self.now(),
            conversation_id=cid,
            owner=data.draw(st.sampled_from(["alice", "bob"])),
            title=data.draw(st.none() | texts),
            model="demo:default",
            options=data.draw(st.dictionaries(texts, json_values, max_size=2)),
            system_prompt=data.draw(st.none() | texts),
        )
        self.append(cid, [event])

    @precondition(lambda self: self.live())
    @rule(data=st.data())
    def update(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(self.live()))
        fields = data.draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "title": st.none() | texts,
                    "model": st.just("demo:other"),
                    "options": st.dictionaries(texts, json_values, max_size=2),
                    "system_prompt": st.none() | texts,
                },
            )
        )
        self.append(cid, [ev.ConversationUpdated(at=self.now(), **fields)])

    @precondition(lambda self: self.live())
    @rule(data=st.data())
    def send(self, data: st.DataObject) -> None:
        """A user message and the assistant turn answering it, in one append."""
        cid = data.draw(st.sampled_from(self.live()))
        conv = self.conversation(cid)
        seq = conv.last_seq + 1
        user = ev.UserMessageSent(
            at=self.now(),
            message_id=self.new_id(),
            seq=seq,
            content=data.draw(texts),
            client_message_id=data.draw(st.none() | st.just(f"c{self.ids}")),
            options=data.draw(st.none() | st.dictionaries(texts, json_values, max_size=1)),
        )
        batch = [user, self.start_turn(cid, seq + 1, user.message_id)]
        if conv.conversation.state != "idle":
            self.append_fails(
                cid, batch, ConversationBusy, expected_version=conv.conversation.version
            )
        else:
            self.append(cid, batch)

    @rule(which=st.sampled_from([0, 1]))
    def switch_store(self, which: int) -> None:
        """Write through the other store from now on (as another process would)."""
        self.store = self.stores[which]

    @precondition(lambda self: self.live())
    @rule(data=st.data(), checkpoints=st.integers(1, 3))
    def checkpoint(self, data: st.DataObject, checkpoints: int) -> None:
        cid = data.draw(st.sampled_from(self.live()))
        row = self.generating(cid)
        if row is None:
            return
        ids = [b.id for b in row.message.blocks if isinstance(b, ToolCallBlock)]
        seq = row.stream_seq
        chained = data.draw(st.booleans(), label="with from_seq")
        batch: list[ev.DomainEvent] = []
        for _ in range(checkpoints):
            stream = self.stream_events(data, ids)
            batch.append(
                ev.TurnCheckpointed(
                    at=self.now(),
                    message_id=row.message.id,
                    attempt=row.attempt,
                    events=ev.coalesce(stream),
                    stream_seq=seq + len(stream),
                    from_seq=seq if chained else ev.UNSET,
                )
            )
            seq += len(stream)
        # Workers append checkpoints unversioned: their guard is the attempt (the fence).
        # Several in one batch are a run, which the store folds as one checkpoint.
        self.append(cid, batch, expected=data.draw(st.booleans()))
        last = batch[-1]
        if chained and isinstance(last, ev.TurnCheckpointed) and last.events:
            # Say the worker's answer was lost: it sends its last checkpoint again, as is
            # (through whichever store is current). Recognised as a repeat, refused, and no
            # trace left.
            self.append_fails(cid, [last], AlreadyStored)

    @precondition(lambda self: self.live())
    @rule(data=st.data(), how=st.sampled_from(["complete", "fail", "abort", "interrupt"]))
    def finish(self, data: st.DataObject, how: str) -> None:
        cid = data.draw(st.sampled_from(self.live()))
        row = self.generating(cid)
        if row is None:
            return
        stream = self.stream_events(
            data, [b.id for b in row.message.blocks if isinstance(b, ToolCallBlock)]
        )
        common: dict[str, Any] = {
            "at": self.now(),
            "message_id": row.message.id,
            "attempt": row.attempt,
            "events": ev.coalesce(stream),
            "stream_seq": row.stream_seq + len(stream),
        }
        event: ev.DomainEvent
        if how == "complete":
            calls = [b.id for b in row.message.blocks if isinstance(b, ToolCallBlock)]
            calls += [e.id for e in stream if isinstance(e, ToolCallStarted)]
            event = ev.StepCompleted(
                **common,
                finish_reason=data.draw(st.sampled_from(["stop", "tool_calls"])),
                usage=data.draw(st.none() | st.just({"input": 3, "output": len(stream)})),
                awaiting_user=tuple(data.draw(st.lists(st.sampled_from(calls), unique=True)))
                if calls
                else (),
            )
        elif how == "fail":
            event = ev.TurnFailed(**common, error=data.draw(texts))
        elif how == "abort":
            event = ev.TurnAborted(
                **common | {"attempt": data.draw(st.none() | st.just(row.attempt))}
            )
        else:
            event = ev.TurnInterrupted(**common | {"attempt": None}, reason="shutdown")
        self.append(cid, [event], expected=data.draw(st.booleans()))
        assert row.attempt is not None
        self.ended_attempts.append((cid, row.message.id, row.attempt))

    @precondition(lambda self: self.ended_attempts)
    @rule(data=st.data())
    def late_write(self, data: st.DataObject) -> None:
        """A worker's checkpoint after its turn ended (or its conversation went) is refused."""
        cid, mid, attempt = data.draw(st.sampled_from(self.ended_attempts))
        event = ev.TurnCheckpointed(
            at=self.now(),
            message_id=mid,
            attempt=attempt,
            events=(TextDelta("late"),),
            stream_seq=10_000,
        )
        self.append_fails(cid, [event], NotFound if cid in self.deleted else Fenced)

    @precondition(lambda self: self.live())
    @rule(data=st.data())
    def tool_result(self, data: st.DataObject) -> None:
        """Answer an open tool call; maybe start the next step's turn in the same append."""
        cid = data.draw(st.sampled_from(self.live()))
        conv = self.conversation(cid)
        open_calls = [
            (m.message.id, call)
            for m in self.messages(cid)
            if m.message.role == "assistant"
            for call in m.open_tool_calls
        ]
        if not open_calls:
            return
        parent, call = data.draw(st.sampled_from(open_calls))
        seq = conv.last_seq + 1
        batch: list[ev.DomainEvent] = [
            ev.ToolResultRecorded(
                at=self.now(),
                message_id=self.new_id(),
                seq=seq,
                reply_to=parent,
                tool_call_id=call,
                tool_name="clock",
                content=data.draw(texts),
            )
        ]
        if conv.conversation.state != "generating" and data.draw(st.booleans()):
            batch.append(self.start_turn(cid, seq + 1, parent))
        self.append(cid, batch)

    @precondition(lambda self: self.live())
    @rule(data=st.data())
    def edit(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(self.live()))
        rows = self.messages(cid)
        if not rows:
            return
        row = data.draw(st.sampled_from(rows))
        event = ev.UserMessageEdited(at=self.now(), message_id=row.message.id, content="edited")
        if row.message.role == "user":
            self.append(cid, [event])
        else:
            self.append_fails(cid, [event], InvalidEvent, expected_version=self.versions[cid])

    @precondition(lambda self: self.live())
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(self.live()))
        self.append(cid, [ev.ConversationDeleted(at=self.now())])
        assert self.run(self.store.get_conversation, cid) is None
        assert self.messages(cid) == []

    @precondition(lambda self: self.live())
    @rule(data=st.data(), delta=st.sampled_from([-1, 1]))
    def stale_version(self, data: st.DataObject, delta: int) -> None:
        """An append naming a version other than the current one is refused."""
        cid = data.draw(st.sampled_from(self.live()))
        event = ev.ConversationUpdated(at=self.now(), title="stale")
        self.append_fails(
            cid, [event], VersionConflict, expected_version=self.versions[cid] + delta
        )

    @precondition(lambda self: self.live())
    @rule(data=st.data())
    def race(self, data: st.DataObject) -> None:
        """Two appends racing on one expected version, on two connections: exactly one wins."""
        cid = data.draw(st.sampled_from(self.live()))
        version = self.versions[cid]
        results: list[Appended | BaseException] = []

        async def one(title: str) -> None:
            try:
                event = ev.ConversationUpdated(at=self.now(), title=title)
                results.append(await self.store.append(cid, [event], expected_version=version))
            except VersionConflict as exc:
                results.append(exc)

        async def both() -> None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(one, "left")
                tg.start_soon(one, "right")

        self.run(both)
        won = [r for r in results if isinstance(r, Appended)]
        assert len(won) == 1, results
        assert sum(isinstance(r, VersionConflict) for r in results) == 1
        assert won[0].version == version + 1
        self.versions[cid] = version + 1

    @precondition(lambda self: self.live())
    @rule(data=st.data())
    def race_fence(self, data: st.DataObject) -> None:
        """A worker's checkpoint racing an interrupt: either the checkpoint lands first or
        it is fenced; never a checkpoint after the interrupt."""
        cid = data.draw(st.sampled_from(self.live()))
        row = self.generating(cid)
        if row is None:
            return
        assert row.attempt is not None
        checkpoint = ev.TurnCheckpointed(
            at=self.now(),
            message_id=row.message.id,
            attempt=row.attempt,
            events=(TextDelta("racing"),),
            stream_seq=row.stream_seq + 1,
        )
        outcomes: dict[str, Appended | DomainError] = {}

        async def work() -> None:
            try:
                outcomes["checkpoint"] = await self.store.append(cid, [checkpoint])
            except DomainError as exc:
                outcomes["checkpoint"] = exc

        async def interrupt() -> None:
            # The interrupter names the stream seq it read; a checkpoint landing in between
            # makes that stale (InvalidEvent), so it reads again and retries.
            seen = row
            for _ in range(3):
                event = ev.TurnInterrupted(
                    at=self.now(),
                    message_id=seen.message.id,
                    attempt=None,
                    stream_seq=seen.stream_seq,
                    reason="shutdown",
                )
                try:
                    outcomes["interrupt"] = await self.store.append(cid, [event])
                    return
                except InvalidEvent:
                    fresh = await self.store.get_message(seen.message.id)
                    assert fresh is not None
                    seen = fresh

        async def both() -> None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(work)
                tg.start_soon(interrupt)

        self.run(both)
        stopped = outcomes["interrupt"]
        assert isinstance(stopped, Appended)
        landed = outcomes["checkpoint"]
        if isinstance(landed, Appended):
            assert landed.version < stopped.version
        else:
            assert isinstance(landed, Fenced)
        self.versions[cid] = stopped.version
        self.ended_attempts.append((cid, row.message.id, row.attempt))

    @precondition(lambda self: self.live())
    @rule(data=st.data(), failure=st.sampled_from(["seq", "stream", "nul", "fenced"]))
    def bad_batch(self, data: st.DataObject, failure: str) -> None:
        """A batch whose last event fails leaves no trace, whatever rejects it: the
        projection rules, the reducer, or PostgreSQL itself."""
        cid = data.draw(st.sampled_from(self.live()))
        good = ev.ConversationUpdated(at=self.now(), title="first of a failing batch")
        errors: type[BaseException] | tuple[type[BaseException], ...]
        bad: ev.DomainEvent
        row = self.generating(cid)
        if failure == "seq":
            bad = ev.UserMessageSent(at=self.now(), message_id=self.new_id(), seq=999, content="x")
            errors = (InvalidEvent, ConversationBusy)
        elif failure == "stream" and row is not None:
            # Passes the projection's check; the reducer rejects it while folding.
            bad = ev.TurnCheckpointed(
                at=self.now(),
                message_id=row.message.id,
                attempt=row.attempt,
                events=(ToolCallDelta("no_such_call", "{"),),
                stream_seq=row.stream_seq + 1,
            )
            errors = StreamProtocolError
        elif failure == "fenced" and row is not None:
            bad = ev.TurnCheckpointed(
                at=self.now(),
                message_id=row.message.id,
                attempt=self.new_id(),
                stream_seq=row.stream_seq,
            )
            errors = Fenced
        else:
            # Valid for the projection, refused by the store before any SQL (PostgreSQL has no NUL).
            bad = ev.ConversationUpdated(at=self.now(), title="nul \x00 here")
            errors = InvalidEvent
        self.append_fails(cid, [good, bad], errors, expected_version=self.versions[cid])

    @precondition(lambda self: self.live())
    @rule(data=st.data())
    def regenerate(self, data: st.DataObject) -> None:
        """A new version of a turn that ended: a sibling of its first row, made active."""
        cid = data.draw(st.sampled_from(self.live()))
        conv, rows = self.conversation(cid), self.messages(cid)
        answered = {r.message.reply_to for r in rows if r.message.role == "tool"}
        ends = [
            r.message.id
            for r in rows
            if r.message.role == "assistant"
            and r.message.status != "generating"
            and r.message.id not in answered
        ]
        if not ends:
            return
        start = tree.turn_parent(rows, data.draw(st.sampled_from(ends)))
        event = ev.AssistantTurnStarted(
            at=self.now(),
            message_id=self.new_id(),
            seq=conv.last_seq + 1,
            attempt=self.new_id(),
            model="demo:default",
            parent_id=None if start is None else start.message.id,
        )
        if conv.conversation.state == "generating":
            self.append_fails(cid, [event], ConversationBusy)
            return
        self.append(cid, [event])
        assert self.conversation(cid).conversation.active_leaf_id == event.message_id

    @precondition(lambda self: self.live())
    @rule(data=st.data())
    def resend(self, data: st.DataObject) -> None:
        """Edit and resend: a new version of a user row, answered."""
        cid = data.draw(st.sampled_from(self.live()))
        conv, rows = self.conversation(cid), self.messages(cid)
        users = [r for r in rows if r.message.role == "user"]
        if not users or conv.conversation.state != "idle":
            return
        old = data.draw(st.sampled_from(users))
        user = ev.UserMessageSent(
            at=self.now(),
            message_id=self.new_id(),
            seq=conv.last_seq + 1,
            content=data.draw(texts),
            parent_id=old.message.parent_id,
        )
        self.append(cid, [user, self.start_turn(cid, user.seq + 1, user.message_id)])

    @precondition(lambda self: self.live())
    @rule(data=st.data())
    def select(self, data: st.DataObject) -> None:
        """Switch the active path (allowed while a version generates)."""
        cid = data.draw(st.sampled_from(self.live()))
        rows = self.messages(cid)
        if not rows:
            return
        mid = data.draw(st.sampled_from([r.message.id for r in rows]))
        leaf = tree.newest_leaf(rows, mid).message.id
        self.append(cid, [ev.VersionSelected(at=self.now(), message_id=mid, leaf_id=leaf)])
        path = tree.active(self.conversation(cid), self.messages(cid))
        assert path[0].message.parent_id is None
        assert path[-1].message.id == leaf
        assert mid in {r.message.id for r in path}

    @precondition(lambda self: self.deleted)
    @rule(data=st.data())
    def write_deleted(self, data: st.DataObject) -> None:
        """Nothing can be appended to a deleted conversation."""
        cid = data.draw(st.sampled_from(sorted(self.deleted)))
        event = ev.ConversationUpdated(at=self.now(), title="ghost")
        self.append_fails(cid, [event], (NotFound, VersionConflict))

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def log_matches_model(self) -> None:
        """Every conversation's versions are exactly 1..n, n what the model expects."""
        with psycopg.connect(self.url) as conn:
            rows = conn.execute(
                "SELECT conversation_id, count(*), min(version), max(version) FROM events "
                "GROUP BY conversation_id"
            ).fetchall()
        found = {cid: (count, low, high) for cid, count, low, high in rows}
        assert found == {cid: (v, 1, v) for cid, v in self.versions.items()}

    @invariant()
    def projection_is_fold_is_rebuild(self) -> None:
        """projection rows == fold of the log == what rebuild writes."""
        report = replay.verify(self.url)
        assert report.ok, "\n".join(report.drift)
        before = self.snapshot()
        replay.rebuild(self.url)
        assert self.snapshot() == before


def test_store_state_machine(fresh_db: str) -> None:
    """Random command sequences keep the projection equal to the fold of a gapless log."""
    apply_schema(fresh_db)
    machine = type("Machine", (StoreMachine,), {"url": fresh_db})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=20,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


def test_schema_reapplies_after_rebuild(fresh_db: str) -> None:
    """After a rebuild swapped the tables, schema.sql applies again and a second rebuild works."""
    apply_schema(fresh_db)
    replay.rebuild(fresh_db)
    replay.rebuild(fresh_db)
    apply_schema(fresh_db)
    with psycopg.connect(fresh_db) as conn:
        names = {
            r[0]
            for r in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename IN ('conversations', 'messages')"
            )
        }
    assert names == {
        "conversations_pkey",
        "conversations_owner_created",
        "conversations_generating",
        "messages_pkey",
        "messages_conversation_seq",
        "messages_client_id",
        "messages_generating",
        "messages_search",
    }
