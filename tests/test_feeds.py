"""FeedHub with two sources: this process's commits and catch-ups from the store
after another instance committed. Ids never decrease, nothing is shown twice at one version,
and a gap is left to the catch-up."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import anyio
import msgspec

from turnlog.feeds import Feed, FeedHub
from turnlog.log import events as ev
from turnlog.log.fold import Change
from turnlog.log.projection import Conversation, ConversationRecord, Message
from turnlog.log.store import Appended

AT = datetime(2026, 1, 1, tzinfo=UTC)
CID = uuid.uuid4()


def conversation(version: int, title: str = "t") -> Conversation:
    return Conversation(
        id=CID,
        title=title,
        model="demo:default",
        options={},
        system_prompt=None,
        state="idle",
        version=version,
        created_at=AT,
        updated_at=AT,
    )


def message(seq: int, content: str) -> Message:
    return Message(
        id=uuid.UUID(int=seq),
        conversation_id=CID,
        seq=seq,
        role="user",
        content=content,
        blocks=(),
        status="completed",
        is_generating=False,
        interrupted=False,
        error=None,
        finish_reason=None,
        usage=None,
        model=None,
        reply_to=None,
        tool_call_id=None,
        tool_name=None,
        edited_content=None,
        edited_at=None,
        created_at=AT,
        updated_at=AT,
    )


def appended(version: int, *messages: Message, title: str = "t") -> Appended:
    # Nine rows on one path (each the child of the one before), the last one active.
    record = ConversationRecord(
        conversation=conversation(version, title),
        owner="u",
        last_seq=9,
        leaf_seq=9,
        tree=tuple(range(9)),
    )
    event = ev.ConversationUpdated(at=AT, title=title)
    return Appended(
        CID,
        record,
        (),
        ((version, event),),
        (Change(version, messages, conversation_changed=False),),
    )


def drain(feed: Feed) -> list[tuple[str, int, object]]:
    """Every queued frame as (event, id, decoded data)."""
    out: list[tuple[str, int, object]] = []

    async def read() -> None:
        while True:
            item = await feed.next(0.01)
            if item is None or item is False:
                return
            _, frame = item
            lines = dict(line.split(": ", 1) for line in frame.decode().strip().split("\n"))
            out.append((lines["event"], int(lines["id"]), msgspec.json.decode(lines["data"])))

    anyio.run(read)
    return out


def test_own_commits_after_the_snapshot_are_pushed_as_they_come() -> None:
    """Seeded at the subscriber's snapshot, a contiguous commit of this process goes out
    at once with its own version."""
    hub = FeedHub()
    feed = hub.subscribe(CID)
    hub.seed(CID, 3)
    hub.publish(appended(4, message(1, "a")))
    assert [(e, v) for e, v, _ in drain(feed)] == [("message", 4)]
    assert hub.stale.pending() == {}


def test_a_commit_after_versions_written_elsewhere_waits_for_the_catch_up() -> None:
    """A commit that finds versions missing before it is not shown alone; the catch-up
    shows the rows that differ under its version, and the commit is not shown again."""
    hub = FeedHub()
    feed = hub.subscribe(CID)
    hub.seed(CID, 3)
    hub.publish(appended(4, message(1, "a")))
    hub.publish(appended(6, message(2, "b")))  # 5 was written by another instance
    assert list(hub.stale.pending()) == [CID]
    hub.caught_up(CID, 6, conversation(6, "renamed elsewhere"), [message(1, "a"), message(2, "b")])
    hub.publish(appended(6, message(2, "b")))  # arrives late: already shown
    frames = drain(feed)
    assert [(e, v) for e, v, _ in frames] == [
        ("message", 4),
        ("message", 6),  # row 1 is unchanged since version 4: not shown again
        ("conversation", 6),
    ]
    ids = [v for _, v, _ in frames]
    assert ids == sorted(ids)


def test_before_the_snapshot_is_known_commits_go_through_the_catch_up() -> None:
    """Until the first subscriber's snapshot version is known, a commit cannot be placed
    in order: it asks for a catch-up instead of being pushed."""
    hub = FeedHub()
    feed = hub.subscribe(CID)
    hub.publish(appended(2, message(1, "a")))
    assert list(hub.stale.pending()) == [CID]
    assert drain(feed) == []


def test_a_deletion_seen_in_the_store_ends_the_feeds() -> None:
    """A conversation deleted through another instance: a conversation frame marked
    deleted, then the feed ends."""
    hub = FeedHub()
    feed = hub.subscribe(CID)
    hub.seed(CID, 3)
    hub.caught_up(CID, 5, None, [])
    frames = drain(feed)
    assert [(e, v) for e, v, _ in frames] == [("conversation", 5)]
    assert frames[0][2] == {"conversation": None, "version": 5, "deleted": True}
    assert feed.closed


def test_rows_off_the_active_path_are_not_shown_and_a_switch_is_caught_up() -> None:
    """A row of another version (off the active path) sends no frame; a select asks for a
    catch-up, which shows the new path's rows (even ones shown before) and the conversation."""
    hub = FeedHub()
    feed = hub.subscribe(CID)
    hub.seed(CID, 3)
    # Rows 1 (first) and 2, 3: versions under row 1; row 3 is active, row 2 is not.
    record = ConversationRecord(
        conversation=conversation(4), owner="u", last_seq=3, leaf_seq=3, tree=(0, 1, 1)
    )
    change = Change(4, (message(2, "off"), message(3, "on")), conversation_changed=False)
    hub.publish(Appended(CID, record, (), ((4, ev.ConversationUpdated(at=AT)),), (change,)))
    assert [d["message"]["id"] for _, _, d in drain(feed)] == [str(uuid.UUID(int=3))]  # type: ignore[index]
    select = ev.VersionSelected(at=AT, message_id=uuid.UUID(int=2), leaf_id=uuid.UUID(int=2))
    switched = msgspec.structs.replace(
        record,
        leaf_seq=2,
        conversation=msgspec.structs.replace(
            record.conversation, version=5, active_leaf_id=uuid.UUID(int=2)
        ),
    )
    hub.publish(Appended(CID, switched, (), ((5, select),), (Change(5, (), True),)))
    assert list(hub.stale.pending()) == [CID]
    assert drain(feed) == []
    hub.caught_up(CID, 5, switched.conversation, [message(1, "first"), message(2, "off")])
    assert [e for e, _, _ in drain(feed)] == ["message", "message", "conversation"]


def test_every_commit_here_is_kept_for_the_other_instances() -> None:
    """Subscribed here or not, each commit of this process waits in ``committed`` for the
    backend to announce, coalesced to the newest version of each conversation, a deletion
    marked."""
    hub = FeedHub()
    other = uuid.uuid4()
    hub.publish(appended(2, message(1, "a")))
    hub.publish(appended(3, message(2, "b")))
    gone = Appended(other, None, (), ((7, ev.ConversationDeleted(at=AT)),), ())
    hub.publish(gone)

    async def take() -> tuple[dict[uuid.UUID, int], set[uuid.UUID]]:
        return await hub.committed.take()

    assert anyio.run(take) == ({CID: 3, other: 7}, {other})
    assert hub.committed.pending() == {}
    assert hub.stale.pending() == {}  # nobody follows them here: nothing to catch up
