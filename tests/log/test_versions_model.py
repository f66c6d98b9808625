"""Versions in the pure projection, driven by a Hypothesis state machine (no database).

Any sequence of sends, finished and failed turns, tool steps, regenerates, edits with
resend and selects, folded with ``check`` and ``evolve`` as the store does. A reference model
(each row's parent, the expected active leaf) is kept beside it. After every step: the active
path is a path from a first row to the leaf, every row is reachable from a first row through
parents that come earlier, the tree the conversation keeps agrees with the rows' parents,
versions are numbered the same from either, and replaying the encoded log equals the live
rows.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from turnlog_reducer import TextDelta, ToolCallReady, ToolCallStarted

from turnlog import replay
from turnlog.errors import (
    DomainError,
)
from turnlog.log import events as ev
from turnlog.log import tree
from turnlog.log.projection import ConversationRecord, MessageRecord, check, evolve, numbered_row

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
CID = uuid.UUID(int=1)


class VersionsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ids = 1
        self.clock = 0
        self.log: list[tuple[int, bytes]] = []
        self.conv: ConversationRecord | None = None
        self.rows: dict[uuid.UUID, MessageRecord] = {}
        # The reference model: each row's parent and the leaf the active path must end at.
        self.parent: dict[uuid.UUID, uuid.UUID | None] = {}
        self.leaf: uuid.UUID | None = None
        self.generating: uuid.UUID | None = None  # the one tail generating, if any
        self.append(
            ev.ConversationCreated(
                at=self.now(),
                conversation_id=CID,
                owner="alice",
                title=None,
                model="demo:default",
                options={},
                system_prompt=None,
            )
        )

    # -- helpers -------------------------------------------------------------------------

    def new_id(self) -> uuid.UUID:
        self.ids += 1
        return uuid.UUID(int=self.ids)

    def now(self) -> datetime:
        self.clock += 1
        return EPOCH + timedelta(milliseconds=self.clock)

    @property
    def c(self) -> ConversationRecord:
        assert self.conv is not None
        return self.conv

    def append(self, *events: ev.DomainEvent) -> None:
        """Check and fold ``events`` as one batch, as the store does (all or nothing)."""
        conv, rows = self.conv, dict(self.rows)
        version = 0 if conv is None else conv.conversation.version
        stored = []
        for e in events:
            check(conv, rows, e)
            version += 1
            outcome = evolve(conv, rows, e, version)
            conv = outcome.conversation
            for r in outcome.messages:
                rows[r.message.id] = r
            stored.append((version, ev.encode(e)))
        self.conv, self.rows = conv, rows
        self.log += stored

    def user(
        self, parent: uuid.UUID | msgspec.UnsetType | None = msgspec.UNSET
    ) -> ev.UserMessageSent:
        return ev.UserMessageSent(
            at=self.now(),
            message_id=self.new_id(),
            seq=self.c.last_seq + 1,
            content="hi",
            parent_id=parent,
        )

    def turn(
        self, seq: int, parent: uuid.UUID | msgspec.UnsetType | None = msgspec.UNSET
    ) -> ev.AssistantTurnStarted:
        return ev.AssistantTurnStarted(
            at=self.now(),
            message_id=self.new_id(),
            seq=seq,
            attempt=self.new_id(),
            model="demo:default",
            parent_id=parent,
        )

    def started(self, *events: ev.DomainEvent) -> None:
        """Append events creating rows; the model learns each row's parent."""
        leaf, last = self.leaf, max(self.rows.values(), key=lambda r: r.message.seq, default=None)
        last_id = None if last is None else last.message.id
        self.append(*events)
        for e in events:
            assert isinstance(
                e, ev.UserMessageSent | ev.AssistantTurnStarted | ev.ToolResultRecorded
            )
            explicit = not isinstance(e, ev.ToolResultRecorded) and e.parent_id is not msgspec.UNSET
            if explicit:
                assert not isinstance(e, ev.ToolResultRecorded)
                assert not isinstance(e.parent_id, msgspec.UnsetType)
                self.parent[e.message_id] = e.parent_id
                leaf = e.message_id
            elif isinstance(e, ev.UserMessageSent):
                self.parent[e.message_id] = leaf
                leaf = e.message_id
            else:
                self.parent[e.message_id] = last_id
                if last_id == leaf:
                    leaf = e.message_id
            last_id = e.message_id
            if isinstance(e, ev.AssistantTurnStarted):
                self.generating = e.message_id
        self.leaf = leaf

    def ended_turns(self) -> list[uuid.UUID]:
        """Assistant rows that end a turn and are not generating (regenerate's targets)."""
        answered = {r.message.reply_to for r in self.rows.values() if r.message.role == "tool"}
        return sorted(
            m.id
            for m in (r.message for r in self.rows.values())
            if m.role == "assistant" and m.status != "generating" and m.id not in answered
        )

    # -- rules ---------------------------------------------------------------------------

    @initialize(turns=st.integers(1, 3))
    def some_turns(self, turns: int) -> None:
        """Start from a few finished turns, so that versions come early in every example."""
        for _ in range(turns):
            self.send()
            self.finish("complete")

    @precondition(lambda self: self.c.conversation.state == "idle")
    @rule()
    def send(self) -> None:
        u = self.user()
        self.started(u, self.turn(u.seq + 1))

    @precondition(lambda self: self.generating is not None)
    @rule(how=st.sampled_from(["complete", "fail", "tool"]))
    def finish(self, how: str) -> None:
        mid = self.generating
        assert mid is not None
        row = self.rows[mid]
        common = {
            "at": self.now(),
            "message_id": mid,
            "attempt": row.attempt,
            "stream_seq": row.stream_seq + 1,
        }
        if how == "fail":
            self.append(ev.TurnFailed(**common, events=(TextDelta("x"),), error="boom"))
            self.generating = None
            return
        if how == "complete":
            self.append(ev.StepCompleted(**common, events=(TextDelta("done"),)))
            self.generating = None
            return
        # A tool step: the call, its result, and the turn's next step (three rows in a turn).
        call = (ToolCallStarted("t1", "clock"), ToolCallReady("t1", {}))
        self.append(ev.StepCompleted(**{**common, "stream_seq": row.stream_seq + 2}, events=call))
        self.generating = None
        result = ev.ToolResultRecorded(
            at=self.now(),
            message_id=self.new_id(),
            seq=self.c.last_seq + 1,
            reply_to=mid,
            tool_call_id="t1",
            tool_name="clock",
            content="12:00",
        )
        self.started(result, self.turn(result.seq + 1))

    @precondition(lambda self: self.c.conversation.state == "idle")
    @rule(data=st.data())
    def regenerate(self, data: st.DataObject) -> None:
        targets = self.ended_turns()
        if not targets:
            return
        mid = data.draw(st.sampled_from(targets), label="regenerate")
        start = tree.turn_parent(list(self.rows.values()), mid)
        assert start is not None
        assert start.message.role == "user"
        self.started(self.turn(self.c.last_seq + 1, start.message.id))

    @precondition(lambda self: self.c.conversation.state == "idle")
    @rule(data=st.data())
    def edit_and_resend(self, data: st.DataObject) -> None:
        users = sorted(m for m, r in self.rows.items() if r.message.role == "user")
        if not users:
            return
        mid = data.draw(st.sampled_from(users), label="edit")
        u = self.user(self.rows[mid].message.parent_id)
        self.started(u, self.turn(u.seq + 1))

    @precondition(lambda self: self.rows)
    @rule(data=st.data())
    def select(self, data: st.DataObject) -> None:
        """Select any row, even while another version generates."""
        mid = data.draw(st.sampled_from(sorted(self.rows)), label="select")
        leaf = tree.newest_leaf(list(self.rows.values()), mid)
        self.append(ev.VersionSelected(at=self.now(), message_id=mid, leaf_id=leaf.message.id))
        self.leaf = leaf.message.id

    @precondition(lambda self: len(self.rows) > 1)
    @rule(data=st.data())
    def select_wrong(self, data: st.DataObject) -> None:
        """A leaf that is not below the chosen row, or not a leaf, is refused unchanged."""
        mid, other = data.draw(
            st.lists(st.sampled_from(sorted(self.rows)), min_size=2, max_size=2, unique=True)
        )
        rows = list(self.rows.values())
        below = {r.message.id for r in rows if mid in self.ancestors(r.message.id)}
        has_children = {p for p in self.parent.values() if p is not None}
        event = ev.VersionSelected(at=self.now(), message_id=mid, leaf_id=other)
        if other in below and other not in has_children:
            return
        before = (self.conv, self.rows, len(self.log))
        with pytest.raises(DomainError):
            self.append(event)
        assert (self.conv, self.rows, len(self.log)) == before

    def ancestors(self, mid: uuid.UUID) -> list[uuid.UUID]:
        out: list[uuid.UUID] = []
        at: uuid.UUID | None = mid
        while at is not None:
            out.append(at)
            at = self.parent[at]
        return out

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def active_path_is_a_path_from_the_root(self) -> None:
        c = self.c
        assert c.conversation.active_leaf_id == self.leaf
        path = tree.active(c, list(self.rows.values()))
        expected = [] if self.leaf is None else list(reversed(self.ancestors(self.leaf)))
        assert [r.message.id for r in path] == expected
        if path:
            assert path[0].message.parent_id is None
            for a, b in itertools.pairwise(path):
                assert b.message.parent_id == a.message.id
            assert c.leaf_seq == path[-1].message.seq
            # The tree's answer agrees with the rows'.
            on_path = {r.message.seq for r in path}
            assert {s for s in range(1, c.last_seq + 1) if tree.on_active_path(c, s)} == on_path

    @invariant()
    def every_row_is_reachable(self) -> None:
        c = self.c
        by_id = {r.message.id: r.message for r in self.rows.values()}
        assert len(c.tree) == c.last_seq == len(by_id)
        for m in by_id.values():
            assert m.parent_id == self.parent[m.id]
            parent = None if m.parent_id is None else by_id[m.parent_id]
            assert c.tree[m.seq - 1] == (0 if parent is None else parent.seq)
            assert parent is None or parent.seq < m.seq  # parents come first: no cycle
            assert self.ancestors(m.id)[-1] in {x.id for x in by_id.values() if x.parent_id is None}

    @invariant()
    def versions_counted_either_way_agree(self) -> None:
        by_rows = {
            r.message.id: (r.message.version, r.message.versions)
            for r in tree.numbered(list(self.rows.values()))
        }
        by_tree = {
            mid: (n.message.version, n.message.versions)
            for mid, n in ((mid, numbered_row(self.c.tree, r)) for mid, r in self.rows.items())
        }
        assert by_rows == by_tree
        event("branched" if any(n > 1 for _, n in by_rows.values()) else "one path")
        for mid, (version, versions) in by_rows.items():
            siblings = sorted(
                self.rows[m].message.seq for m, p in self.parent.items() if p == self.parent[mid]
            )
            assert (version, versions) == (
                siblings.index(self.rows[mid].message.seq) + 1,
                len(siblings),
            )

    @invariant()
    def replay_equals_live(self) -> None:
        folded = replay.fold_events(CID, self.log)
        assert folded.problem is None
        assert folded.conversation == self.conv
        mine = {r.message.id: r for r in tree.numbered(list(self.rows.values()))}
        theirs = {r.message.id: r for r in tree.numbered(list(folded.messages.values()))}
        assert mine == theirs


TestVersions = VersionsMachine.TestCase
TestVersions.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
