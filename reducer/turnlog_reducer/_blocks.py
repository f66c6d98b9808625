"""Blocks: the content of an assistant message, and ``Blocks``, the reducer's state.

``Blocks`` is an immutable sequence of block Structs built for one access pattern: a stream
of small deltas appended to the end. Copying the growing text on every delta would make a
fold quadratic, so the text of a block is kept as a *chunk list* and joined once, lazily.

Persistence (how a pure fold can append in place)
-------------------------------------------------
A chunk list is shared by every version of a block; each version remembers ``m``, how many
chunks it sees. Appending to a version whose ``m`` equals the list's length means nobody has
appended after it, so the chunk goes onto the shared list and the new version sees ``m + 1``;
the old version still sees its ``m`` chunks and is unchanged. Appending to an older version
(a *fork*: two different events applied to the same state) finds the list longer than ``m``
and copies its first ``m`` chunks first. The list of blocks uses the same scheme: the blocks
before the last are a shared entry list plus a count, and the last block is held apart, so
growing it never touches the list.

The append is done before the ownership check (``append``, then ``chunks[m] is chunk``), not
after a length test, so two threads forking the same version cannot both believe they own
the tail: ``list.append`` is atomic, and the loser sees someone else's chunk at ``m`` and
copies. Its stray chunk lies past every version's ``m`` and is never read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeAlias, overload

import msgspec

__all__ = [
    "EMPTY",
    "Block",
    "Blocks",
    "ReasoningBlock",
    "TextBlock",
    "ToolCallBlock",
    "decode_blocks",
    "encode_blocks",
]


class _Block(msgspec.Struct, frozen=True, tag_field="type"):
    """Base of the block Structs; every field is always written, ``null`` included."""


class TextBlock(_Block, frozen=True, tag="text"):
    """Answer text."""

    text: str


class ReasoningBlock(_Block, frozen=True, tag="reasoning"):
    """Reasoning ("thinking") text shown apart from the answer."""

    text: str


class ToolCallBlock(_Block, frozen=True, tag="tool_call"):
    """A tool call: its streamed ``arguments_text`` and, once ready, the parsed ``arguments``."""

    id: str
    name: str
    arguments_text: str = ""
    arguments: Any = None
    ready: bool = False


Block: TypeAlias = TextBlock | ReasoningBlock | ToolCallBlock


def _join(chunks: list[str], m: int) -> str:
    if m == 1:
        return chunks[0]
    # Slice before joining: the shared list may be longer than this version's ``m``.
    return "".join(chunks[:m])


def _append(chunks: list[str], m: int, chunk: str) -> list[str]:
    """Return a chunk list whose first ``m + 1`` chunks are ``chunks[:m]`` then ``chunk``."""
    if len(chunks) == m:
        chunks.append(chunk)
        if chunks[m] is chunk:  # we own the tail (see the module docstring)
            return chunks
    return [*chunks[:m], chunk]


class _Run:
    """One version of a text or reasoning block: ``kind`` and ``chunks[:m]``."""

    __slots__ = ("block", "chunks", "kind", "m")

    def __init__(
        self,
        kind: type[TextBlock] | type[ReasoningBlock],
        chunks: list[str],
        m: int,
        block: TextBlock | ReasoningBlock | None = None,
    ) -> None:
        self.kind = kind
        self.chunks = chunks
        self.m = m
        self.block = block

    def materialize(self) -> TextBlock | ReasoningBlock:
        block = self.block
        if block is None:
            block = self.block = self.kind(_join(self.chunks, self.m))
        return block


class _Tool:
    """One version of a tool-call block; ``arguments_text`` is ``chunks[:m]``."""

    __slots__ = ("arguments", "block", "chunks", "id", "m", "name", "ready")

    def __init__(
        self,
        id: str,
        name: str,
        chunks: list[str],
        m: int,
        arguments: Any,
        ready: bool,
        block: ToolCallBlock | None = None,
    ) -> None:
        self.id = id
        self.name = name
        self.chunks = chunks
        self.m = m
        self.arguments = arguments
        self.ready = ready
        self.block = block

    def extended(self, delta: str) -> _Tool:
        chunks = _append(self.chunks, self.m, delta)
        return _Tool(self.id, self.name, chunks, self.m + 1, self.arguments, self.ready)

    def made_ready(self, arguments: Any) -> _Tool:
        return _Tool(self.id, self.name, self.chunks, self.m, arguments, True)

    def materialize(self) -> ToolCallBlock:
        block = self.block
        if block is None:
            text = _join(self.chunks, self.m) if self.m else ""
            block = self.block = ToolCallBlock(self.id, self.name, text, self.arguments, self.ready)
        return block


_Entry: TypeAlias = _Run | _Tool


def _entry(block: object, index: int) -> _Entry:
    """The entry of an already materialized block (from a list, a tuple or decoded JSON)."""
    if isinstance(block, TextBlock):
        return _Run(TextBlock, [block.text], 1, block)
    if isinstance(block, ReasoningBlock):
        return _Run(ReasoningBlock, [block.text], 1, block)
    if isinstance(block, ToolCallBlock):
        text = block.arguments_text
        return _Tool(
            block.id,
            block.name,
            [text],
            1,
            block.arguments,
            block.ready,
            block,
        )
    raise TypeError(
        f"expected a TextBlock, ReasoningBlock or ToolCallBlock at index {index}, "
        f"got {type(block).__name__}"
    )


class Blocks(Sequence[Block]):
    """An immutable sequence of blocks; the state ``apply_stream_event`` returns.

    Indexing and iteration give plain block Structs (their text joined once, then cached).
    A ``Blocks`` equals any ``Blocks``, list or tuple holding equal blocks in the same order.
    """

    # _items[:_n] are the entries of the blocks before the last; _last is the last block's
    # entry (None only when empty). _ids maps a tool-call id to its index; it is shared by
    # the versions sharing _items, and an index above _n belongs to another version's future.
    __slots__ = ("_ids", "_items", "_last", "_n")

    _items: list[_Entry]
    _n: int
    _ids: dict[str, int]
    _last: _Entry | None

    def __init__(self, blocks: Iterable[Block] = ()) -> None:
        entries = [_entry(block, index) for index, block in enumerate(blocks)]
        ids: dict[str, int] = {}
        for index, entry in enumerate(entries):
            if type(entry) is _Tool:
                ids[entry.id] = index
        self._ids = ids
        self._last = entries.pop() if entries else None
        self._items = entries
        self._n = len(entries)

    def __len__(self) -> int:
        return self._n + (self._last is not None)

    def _entry_at(self, index: int) -> _Entry:
        n = self._n
        if index < 0:
            index += n + 1
        last = self._last
        if index == n and last is not None:
            return last
        if 0 <= index < n:
            return self._items[index]
        raise IndexError(f"block index out of range: {index} (length {len(self)})")

    @overload
    def __getitem__(self, index: int) -> Block: ...

    @overload
    def __getitem__(self, index: slice) -> Blocks: ...

    def __getitem__(self, index: int | slice) -> Block | Blocks:
        if isinstance(index, slice):
            return Blocks([self[i] for i in range(*index.indices(len(self)))])
        return self._entry_at(index).materialize()

    def _entries(self) -> Iterator[_Entry]:
        items = self._items
        for i in range(self._n):
            yield items[i]
        if self._last is not None:
            yield self._last

    def __iter__(self) -> Iterator[Block]:
        for entry in self._entries():
            yield entry.materialize()

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if isinstance(other, Blocks):
            if len(self) != len(other):
                return False
            # Versions of one fold share their unchanged entries: identical means equal.
            return all(
                a is b or a.materialize() == b.materialize()
                for a, b in zip(self._entries(), other._entries(), strict=True)
            )
        if isinstance(other, list | tuple):
            if len(self) != len(other):
                return False
            return all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    def __hash__(self) -> int:
        # Like a tuple: hashable while every block is (a dict in `arguments` is not).
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"Blocks({list(self)!r})"

    def __reduce__(self) -> tuple[type[Blocks], tuple[list[Block]]]:
        # Pickle and deepcopy see the plain blocks, never the shared chunk lists.
        return (Blocks, (list(self),))

    def _push(self, entry: _Entry) -> Blocks:
        """A new version with ``entry`` appended as the last block (registers tool ids)."""
        last = self._last
        new = _new(Blocks)
        new._last = entry
        if last is None:
            # A fresh list: an empty state's list must not become shared by every fold.
            new._items = []
            new._n = 0
            new._ids = {entry.id: 0} if type(entry) is _Tool else {}
            return new
        items = self._items
        n = self._n
        ids = self._ids
        if len(items) == n:
            items.append(last)
            if items[n] is not last:  # someone else appended first (see the module docstring)
                items, ids = _fork(items, n, ids, last)
        else:
            items, ids = _fork(items, n, ids, last)
        new._items = items
        new._n = n + 1
        new._ids = ids
        if type(entry) is _Tool:
            ids[entry.id] = n + 1
        return new

    def _tool_index(self, tool_id: str) -> int | None:
        index = self._ids.get(tool_id)
        if index is None or index > self._n:
            return None
        return index

    def _replace(self, index: int, entry: _Entry) -> Blocks:
        """A new version with the block at ``index`` replaced (same kind, same id)."""
        new = _new(Blocks)
        n = self._n
        if index == n:
            new._items = self._items
            new._n = n
            new._ids = self._ids
            new._last = entry
            return new
        # A block before the last: copy the entry list (cost O(number of blocks)).
        items = self._items[:n]
        items[index] = entry
        new._items = items
        new._n = n
        new._ids = _ids_upto(self._ids, n)
        new._last = self._last
        return new


_new = object.__new__


def _ids_upto(ids: dict[str, int], n: int) -> dict[str, int]:
    # dict.copy() is atomic; iterating the shared dict itself is not.
    return {k: v for k, v in ids.copy().items() if v <= n}


def _fork(
    items: list[_Entry], n: int, ids: dict[str, int], last: _Entry
) -> tuple[list[_Entry], dict[str, int]]:
    return [*items[:n], last], _ids_upto(ids, n)


EMPTY = Blocks()
"""The empty state: an immutable, empty sequence of blocks."""

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[list[Block]] = msgspec.json.Decoder(list[Block])


def encode_blocks(blocks: Sequence[Block]) -> bytes:
    """Encode blocks as a JSON array (every field written, ``"arguments": null`` included)."""
    if not isinstance(blocks, list):
        blocks = list(blocks)
    return _encoder.encode(blocks)


def decode_blocks(data: bytes | str) -> Blocks:
    """Decode a JSON array of blocks; raises ``msgspec.ValidationError`` on a bad shape."""
    return Blocks(_decoder.decode(data))
