"""The pure batch fold (``turnlog.log.fold``), without PostgreSQL.

Every append runs :func:`fold_batch` before it writes: a batch is checked event by event,
a run of checkpoints of one row is folded as one, and the changes the live feeds show are
the rows' final public states at the version of their last change.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from turnlog_reducer import Done, StreamEvent, TextDelta

from tests.strategies import event_sequences
from turnlog.errors import InvalidEvent, NotFound
from turnlog.log import events as ev
from turnlog.log.fold import Change, Folded, fold_batch
from turnlog.log.projection import ConversationRecord, MessageRecord

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
CID = uuid.UUID(int=1)
USER = uuid.UUID(int=2)
MID = uuid.UUID(int=3)
ATTEMPT = uuid.UUID(int=4)


def at(n: int) -> datetime:
    return EPOCH + timedelta(seconds=n)


def created() -> ev.ConversationCreated:
    return ev.ConversationCreated(
        at=at(0),
        conversation_id=CID,
        owner="alice",
        title="t",
        model="demo:default",
        options={},
        system_prompt=None,
    )


def started() -> list[ev.DomainEvent]:
    return [
        ev.UserMessageSent(at=at(1), message_id=USER, seq=1, content="hi"),
        ev.AssistantTurnStarted(at=at(2), message_id=MID, seq=2, attempt=ATTEMPT, model="m"),
    ]


def generating() -> tuple[ConversationRecord, dict[uuid.UUID, MessageRecord]]:
    """A conversation (version 3) whose assistant row is generating."""
    messages: dict[uuid.UUID, MessageRecord] = {}
    first = fold_batch(CID, None, messages, [created()])
    assert first.conversation is not None
    second = fold_batch(CID, first.conversation, messages, started())
    assert second.conversation is not None
    return second.conversation, messages


def checkpoint(n: int, seq: int, *events: StreamEvent) -> ev.TurnCheckpointed:
    return ev.TurnCheckpointed(
        at=at(n), message_id=MID, attempt=ATTEMPT, events=events, stream_seq=seq
    )


def test_versions_follow_the_conversation() -> None:
    """Each event of a batch is stored at the next version, and the conversation's version
    is the last one."""
    conv, messages = generating()
    fold = fold_batch(CID, conv, messages, [checkpoint(3, 1, TextDelta("a"))])
    assert [v for v, _ in fold.stored] == [4]
    assert fold.conversation is not None
    assert fold.conversation.conversation.version == 4
    assert fold.types == ["turn_checkpointed"]
    assert fold.data == [ev.encode(e).decode() for _, e in fold.stored]


@given(st.data())
def test_a_run_of_checkpoints_folds_as_its_events_one_by_one(data: st.DataObject) -> None:
    """Law: a batch of checkpoints of one row leaves the rows, the versions and the
    conversation exactly as appending them one at a time would."""
    drawn = data.draw(event_sequences(max_size=20))
    # PostgreSQL cannot hold NUL (a test of its own, below).
    assume(not any(b"\\u0000" in msgspec.json.encode(e) for e in drawn))
    stream = [e for e in drawn if not isinstance(e, Done)]  # `done` ends no checkpoint
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    bounds = [0, *cuts, len(stream)]
    batch = [
        checkpoint(10 + k, bounds[k + 1], *stream[bounds[k] : bounds[k + 1]])
        for k in range(len(bounds) - 1)
    ]

    conv, messages = generating()
    together = fold_batch(CID, conv, dict(messages), batch)

    apart_conv: ConversationRecord | None = conv
    apart_messages = dict(messages)
    stored: list[tuple[int, ev.DomainEvent]] = []
    for event in batch:
        one = fold_batch(CID, apart_conv, apart_messages, [event])
        apart_conv = one.conversation
        stored += one.stored

    assert together.conversation == apart_conv
    assert together.seen[MID] == apart_messages[MID]
    assert together.stored == tuple(stored)
    assert together.rows == (apart_messages[MID],)


def test_a_run_of_checkpoints_is_checked_event_by_event() -> None:
    """A stream seq going back in the middle of a run refuses the whole batch."""
    conv, messages = generating()
    bad = [checkpoint(3, 2, TextDelta("a"), TextDelta("b")), checkpoint(4, 1, TextDelta("c"))]
    with pytest.raises(InvalidEvent):
        fold_batch(CID, conv, messages, bad)


def test_feed_changes_show_each_row_at_its_last_change() -> None:
    """A row changed twice in one batch appears once, in its final state, at the version
    of its last change; the conversation appears when its public fields changed."""
    conv, messages = generating()
    batch: list[ev.DomainEvent] = [
        checkpoint(3, 1, TextDelta("a")),
        ev.ConversationUpdated(at=at(4), title="renamed"),
        ev.StepCompleted(
            at=at(5), message_id=MID, attempt=ATTEMPT, stream_seq=2, events=(TextDelta("b"),)
        ),
    ]
    fold = fold_batch(CID, conv, messages, batch)
    (row,) = fold.rows
    assert fold.changes == (
        Change(6, (row.message,), False),
        Change(6, (), True),
    )
    assert row.message.status == "completed"
    assert row.stream_seq == 2


def test_only_a_public_change_of_the_conversation_is_shown() -> None:
    """A checkpoint moves the conversation's version, not its public fields: no
    conversation change."""
    conv, messages = generating()
    fold = fold_batch(CID, conv, messages, [checkpoint(3, 1, TextDelta("a"))])
    assert [c.conversation_changed for c in fold.changes] == [False]


def test_a_creation_is_a_public_change() -> None:
    fold = fold_batch(CID, None, {}, [created()])
    assert fold.changes == (Change(1, (), True),)
    assert fold.rows == ()


def test_a_deletion_writes_no_rows() -> None:
    """A batch ending in the deletion leaves no conversation and no rows to write, and
    shows the deletion."""
    conv, messages = generating()
    fold = fold_batch(CID, conv, messages, [ev.ConversationDeleted(at=at(3))])
    assert fold.conversation is None
    assert fold.rows == ()
    assert fold.changes[-1] == Change(4, (), True)


def test_no_event_may_follow_a_deletion() -> None:
    conv, messages = generating()
    batch = [ev.ConversationDeleted(at=at(3)), ev.ConversationUpdated(at=at(4), title="x")]
    with pytest.raises(InvalidEvent, match="follow its deletion"):
        fold_batch(CID, conv, messages, batch)


def test_nul_is_refused_before_any_write() -> None:
    conv, messages = generating()
    with pytest.raises(InvalidEvent, match="NUL"):
        fold_batch(CID, conv, messages, [ev.ConversationUpdated(at=at(3), title="a\x00b")])


def test_an_escaped_backslash_before_u0000_is_not_nul() -> None:
    """The text ``\\u0000`` (a backslash, then u0000) is allowed: only a real NUL is not."""
    conv, messages = generating()
    fold = fold_batch(CID, conv, messages, [ev.ConversationUpdated(at=at(3), title="\\u0000")])
    assert isinstance(fold, Folded)


def test_an_event_on_a_missing_conversation_is_not_found() -> None:
    with pytest.raises(NotFound):
        fold_batch(CID, None, {}, started())
