"""What a store remembers of the conversations it wrote, so most appends need no read.

- :class:`Known`: a conversation as this store last wrote it, with its hot rows (the ones a
  generation's next events name). The guarded way of append folds onto it; a version guard
  in the write makes a stale one cost a retry, never a wrong answer.
- :class:`History`: every message row of a conversation, exactly as of one version, for a
  generation's history (``Store.history``), so a step need not read them back.

Both are bounded (least recently written or read dropped first); nothing here does I/O.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict

import msgspec

from turnlog.log.fold import Folded
from turnlog.log.projection import ConversationRecord, MessageRecord

# How many conversations a store remembers for guarded appends (least recent dropped).
KNOWN_CONVERSATIONS = 4096
# The full rows a store keeps of the conversations it wrote, for a generation's history
# (``Store.history``): at most this many rows in all, and none of a longer conversation.
HISTORY_ROWS = 20_000
HISTORY_ROWS_PER_CONVERSATION = 200


class Known(msgspec.Struct, frozen=True):
    """A conversation as this store left it, and its hot rows by id: generating, or waiting
    for tool results."""

    conversation: ConversationRecord
    hot: dict[uuid.UUID, MessageRecord]

    @property
    def version(self) -> int:
        return self.conversation.conversation.version


class History(msgspec.Struct, frozen=True):
    """Every message row of a conversation as of ``version``, by id in seq order, and the
    last row's seq."""

    version: int
    last_seq: int
    rows: dict[uuid.UUID, MessageRecord]


class Memory:
    """The conversations and exact histories a store remembers (module doc)."""

    def __init__(self) -> None:
        # Oldest first, for eviction.
        self._known: dict[uuid.UUID, Known] = {}
        # Least recent first; at most HISTORY_ROWS rows in all.
        self._history: OrderedDict[uuid.UUID, History] = OrderedDict()
        self._history_rows = 0

    def known(self, cid: uuid.UUID) -> Known | None:
        return self._known.get(cid)

    def forget(self, cid: uuid.UUID) -> None:
        """Another writer moved the conversation: the next append reads it afresh."""
        self._known.pop(cid, None)

    def remember(self, cid: uuid.UUID, fold: Folded) -> None:
        """Keep what a committed ``fold`` left: the conversation and its hot rows, and
        its full rows when they are known exactly."""
        self._remember_known(cid, fold)
        self._remember_history(cid, fold)

    def _remember_known(self, cid: uuid.UUID, fold: Folded) -> None:
        conv = fold.conversation
        known = self._known.pop(cid, None)
        if conv is None:
            return
        if known is not None and known.version > conv.conversation.version:
            # A concurrent append of this process got further: keep what it left.
            self._known[cid] = known
            return
        hot = {m: r for m, r in fold.seen.items() if r.message.is_generating or r.open_tool_calls}
        self._known[cid] = Known(conv, hot)
        if len(self._known) > KNOWN_CONVERSATIONS:
            del self._known[next(iter(self._known))]

    def _remember_history(self, cid: uuid.UUID, fold: Folded) -> None:
        """Carry the conversation's full rows to the version ``fold`` committed at, if they
        were exact at the version it was folded onto (or it is the creation): that write
        went in under the version guard or the row lock, so nobody else wrote in between.
        Otherwise (unknown, or this process's appends remembered out of order) forget."""
        entry = self._history.pop(cid, None)
        if entry is not None:
            self._history_rows -= len(entry.rows)
        conv = fold.conversation
        if conv is None:
            return
        base = fold.stored[0][0] - 1
        rows: dict[uuid.UUID, MessageRecord]
        if base == 0:
            last, rows = 0, {}  # a creation: no rows before it
        elif entry is not None and entry.version == base:
            last, rows = entry.last_seq, entry.rows
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
        self._history[cid] = History(conv.conversation.version, last, rows)
        self._history_rows += len(rows)
        while self._history_rows > HISTORY_ROWS:
            _, dropped = self._history.popitem(last=False)
            self._history_rows -= len(dropped.rows)

    def known_idle(self, cid: uuid.UUID) -> ConversationRecord | None:
        """The conversation as this store last wrote it, if it was idle then (see
        ``Store.known_idle``)."""
        known = self._known.get(cid)
        if known is None or known.conversation.conversation.state != "idle":
            return None
        return known.conversation

    def history(self, cid: uuid.UUID, version: int) -> list[MessageRecord] | None:
        """Every message row of the conversation in seq order as of ``version``, if known
        exactly then; None if not."""
        entry = self._history.get(cid)
        if entry is None or entry.version != version:
            return None
        self._history.move_to_end(cid)
        return list(entry.rows.values())
