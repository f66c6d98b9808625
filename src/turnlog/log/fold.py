"""The pure batch fold: an append's events checked and folded onto the rows they touch.

:func:`fold_batch` is what every append runs before it writes anything, on the rows the store
remembers (the guarded way) or on rows it just locked and read (the locked way): the
rules of :func:`turnlog.log.projection.check`, event by event; runs of checkpoints of one
row merged into one fold; the rows to write; the changes the live feeds show. Nothing here
touches the database or reads a clock, so it is tested without PostgreSQL
(``tests/log/test_fold.py``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence

import msgspec

from turnlog.errors import InvalidEvent
from turnlog.log import events as ev
from turnlog.log.events import DomainEvent, TurnCheckpointed
from turnlog.log.projection import ConversationRecord, Message, MessageRecord, check, evolve


class Change(msgspec.Struct, frozen=True):
    """A change in public view, as of ``version``: message rows whose API shape an append
    changed (their final state) or that the conversation's did (beyond its version and
    updated_at)."""

    version: int
    messages: tuple[Message, ...]
    conversation_changed: bool


class Folded(msgspec.Struct):
    """A checked batch folded onto the rows it touches, ready to write."""

    conversation: ConversationRecord | None  # None once deleted
    rows: tuple[MessageRecord, ...]  # every row created or changed, final state, seq order
    seen: dict[uuid.UUID, MessageRecord]  # the rows folded onto, as the batch left them
    stored: tuple[tuple[int, DomainEvent], ...]  # the events with their versions
    changes: tuple[Change, ...]  # what changed in public view, in version order
    types: list[str]  # each stored event's type and JSON, as the events table takes them
    data: list[str]


def public_change(before: ConversationRecord | None, after: ConversationRecord | None) -> bool:
    """Whether the conversation changed in public view (created, deleted, or a field the
    API shows beyond its version and updated_at)."""
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


# A JSON string's escape of NUL: backslash-u-0000 whose backslash is not itself escaped.
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def fold_batch(
    cid: uuid.UUID,
    conv: ConversationRecord | None,
    messages: dict[uuid.UUID, MessageRecord],
    events: Sequence[DomainEvent],
) -> Folded:
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
    if public_change(conv_before, conv):
        changes.append(Change(version, (), True))
    data = [ev.encode(e).decode() for _, e in stored]
    for text in data:
        # PostgreSQL text and jsonb cannot hold NUL: refused here with a clear error,
        # before any SQL, rather than by whichever column meets it first.
        if "\\u0000" in text and _JSON_NUL.search(text):
            raise InvalidEvent(f"conversation {cid}: text cannot contain NUL (U+0000)")
    return Folded(
        conv,
        rows,
        messages,
        tuple(stored),
        tuple(changes),
        [ev.event_type(e) for _, e in stored],
        data,
    )
