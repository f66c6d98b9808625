"""Versions: the tree of a conversation's rows and its active path (pure).

Every row has a parent (``parent_id``; None for a first row), fixed when it is created and
always an earlier row, so the rows form a forest with no cycle. Rows sharing a parent are
*versions* of each other: ``version`` is a row's 1-based index among them by seq,
``versions`` their count. The conversation's *active path* runs from a first row down to
``active_leaf_id``; what reads "the conversation" (lists, feeds, exports, the history sent to
a model, ``useChat`` hydration) follows it.

Two views of the same tree, for two callers:

- by seq, ``tree[s - 1]`` = the parent seq of row ``s`` (0 for a first row): the compact form
  the conversation's projection row keeps, so the fold can number versions and tell whether a
  row is on the active path without reading any other row;
- by id, over rows with ``parent_id``: for readers holding the rows (lists, commands).

Nothing here reads a clock or the database.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar

import msgspec

from turnlog.log.projection import ConversationRecord, Message, MessageRecord


def on_active_path(conv: ConversationRecord, seq: int) -> bool:
    """Whether row ``seq`` is on the conversation's active path (an ancestor of its leaf,
    or the leaf itself)."""
    tree, s = conv.tree, conv.leaf_seq
    # Parents are always earlier rows: walk up from the leaf until at or above ``seq``. A
    # row near the leaf (a generating one, the common case) is found in a step or two.
    while s > seq:
        s = tree[s - 1]
    return s == seq


class _Row(Protocol):
    @property
    def message(self) -> Message: ...


R = TypeVar("R", bound=_Row)


def numbered(rows: Sequence[MessageRecord]) -> list[MessageRecord]:
    """``rows`` (all of a conversation's, any order) with their ``version``/``versions``
    counted from their parents."""
    siblings: dict[uuid.UUID | None, list[int]] = {}
    for r in rows:
        siblings.setdefault(r.message.parent_id, []).append(r.message.seq)
    for seqs in siblings.values():
        seqs.sort()
    out: list[MessageRecord] = []
    for r in rows:
        m = r.message
        seqs = siblings[m.parent_id]
        version, versions = seqs.index(m.seq) + 1, len(seqs)
        if (m.version, m.versions) != (version, versions):
            m = msgspec.structs.replace(m, version=version, versions=versions)
            r = msgspec.structs.replace(r, message=m)
        out.append(r)
    return out


def path_to(rows: Iterable[R], leaf_id: uuid.UUID | None) -> list[R]:
    """The rows from a first row down to ``leaf_id``, in order (empty for None or an
    unknown leaf)."""
    by_id = {r.message.id: r for r in rows}
    path: list[R] = []
    at = by_id.get(leaf_id) if leaf_id is not None else None
    while at is not None:
        path.append(at)
        parent = at.message.parent_id
        at = by_id.get(parent) if parent is not None else None
    path.reverse()
    return path


def active(conv: ConversationRecord, rows: Sequence[R]) -> list[R]:
    """The conversation's active path among ``rows`` (all of its rows)."""
    return path_to(rows, conv.conversation.active_leaf_id)


def newest_leaf(rows: Sequence[R], mid: uuid.UUID) -> R:
    """The newest (highest seq) row with no children at or below row ``mid``: where
    selecting ``mid`` takes the active path."""
    children: dict[uuid.UUID, list[R]] = {}
    by_id: dict[uuid.UUID, R] = {}
    for r in rows:
        by_id[r.message.id] = r
        if r.message.parent_id is not None:
            children.setdefault(r.message.parent_id, []).append(r)
    best = by_id[mid]
    stack = [best]
    while stack:
        r = stack.pop()
        below = children.get(r.message.id)
        if below:
            stack.extend(below)
        elif r.message.seq > best.message.seq or best.message.id in children:
            best = r
    return best


def turn_parent(rows: Sequence[R], mid: uuid.UUID) -> R | None:
    """Where a turn ending at assistant row ``mid`` starts: its nearest ancestor that is a
    user row or the user's answer to an interactive tool call (a ``tool`` row answering a
    call its step left for the user); None if it has no such ancestor. A new version of the
    turn is a child of that row (a sibling of the turn's first row), so a multi-step tool
    turn is regenerated as a whole."""
    by_id = {r.message.id: r for r in rows}
    at = by_id[mid]
    while at.message.parent_id is not None:
        parent = by_id.get(at.message.parent_id)
        if parent is None:
            return None
        m = parent.message
        if m.role == "user":
            return parent
        if m.role == "tool" and m.reply_to is not None:
            step = by_id.get(m.reply_to)
            if m.tool_call_id in getattr(step, "awaiting_user", ()):
                return parent
        at = parent
    return None
