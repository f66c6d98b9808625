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
and copies its first ``m`` chunks first.

The same scheme holds the rest of the state. A ``Blocks`` is a ``_Prefix`` (every block but
the last) and the last block's entry, so a delta to the last block builds two small objects
and shares the prefix. The prefix keeps its blocks as a shared entry list plus a count, then
a short tuple of the most recent blocks (``TAIL``), where an argument delta to a tool call
that is not last costs O(TAIL); only a tool call older than that costs a copy of the list.
Tool-call ids live in an append-only registry of the same kind: a shared list of
``(id, index)`` with a count, and a dict from id to list position that is valid below the
count (a fork copies the list and rebuilds the dict, so no version sees another's ids).

The append is done before the ownership check (``append``, then ``items[m] is item``), not
after a length test, so two threads forking the same version cannot both believe they own
the tail: ``list.append`` is atomic, and the loser sees someone else's item at ``m`` and
copies. Its stray item lies past every version's count and is never read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeAlias, TypeVar, overload

import msgspec
from msgspec import UNSET, UnsetType

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

_T = TypeVar("_T")

TAIL = 8
"""How many blocks before the last stay cheap to change (parallel tool calls' arguments)."""


class _Block(msgspec.Struct, frozen=True, tag_field="type"):
    """Base of the block Structs; every field is always written, ``null`` included, except
    the optional ``signature`` and ``redacted``: left ``UNSET`` they are not written at all,
    so a block without them encodes exactly as it did before they existed."""


class TextBlock(_Block, frozen=True, tag="text"):
    """Answer text; ``signature`` is a provider's opaque proof, sent back with the history."""

    text: str
    signature: str | UnsetType = UNSET


class ReasoningBlock(_Block, frozen=True, tag="reasoning"):
    """Reasoning ("thinking") text shown apart from the answer.

    ``redacted`` marks a provider's encrypted reasoning: ``text`` is "" and the opaque data
    is in ``signature``.
    """

    text: str
    signature: str | UnsetType = UNSET
    redacted: bool | UnsetType = UNSET


class ToolCallBlock(_Block, frozen=True, tag="tool_call"):
    """A tool call: its streamed ``arguments_text`` and, once ready, the parsed ``arguments``."""

    id: str
    name: str
    arguments_text: str = ""
    arguments: Any = None
    ready: bool = False
    signature: str | UnsetType = UNSET


Block: TypeAlias = TextBlock | ReasoningBlock | ToolCallBlock


def _join(chunks: list[str], m: int) -> str:
    if m == 1:
        return chunks[0]
    # Slice before joining: the shared list may be longer than this version's ``m``.
    return "".join(chunks[:m])


def _append(items: list[_T], m: int, item: _T) -> list[_T]:
    """Return a list whose first ``m + 1`` items are ``items[:m]`` then ``item``."""
    if len(items) == m:
        items.append(item)
        if items[m] is item:  # we own the tail (see the module docstring)
            return items
    return [*items[:m], item]


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

    __slots__ = ("arguments", "block", "chunks", "id", "m", "name", "ready", "signature")

    def __init__(
        self,
        id: str,
        name: str,
        chunks: list[str],
        m: int,
        arguments: Any,
        ready: bool,
        block: ToolCallBlock | None = None,
        signature: str | UnsetType = UNSET,
    ) -> None:
        self.id = id
        self.name = name
        self.chunks = chunks
        self.m = m
        self.arguments = arguments
        self.ready = ready
        self.block = block
        self.signature = signature

    def extended(self, delta: str) -> _Tool:
        chunks = _append(self.chunks, self.m, delta)
        return _Tool(
            self.id, self.name, chunks, self.m + 1, self.arguments, self.ready, None, self.signature
        )

    def made_ready(self, arguments: Any) -> _Tool:
        return _Tool(self.id, self.name, self.chunks, self.m, arguments, True, None, self.signature)

    def signed(self, signature: str) -> _Tool:
        return _Tool(
            self.id, self.name, self.chunks, self.m, self.arguments, self.ready, None, signature
        )

    def materialize(self) -> ToolCallBlock:
        block = self.block
        if block is None:
            text = _join(self.chunks, self.m) if self.m else ""
            block = self.block = ToolCallBlock(
                self.id, self.name, text, self.arguments, self.ready, self.signature
            )
        return block


class _Sealed:
    """A signed or redacted text/reasoning block: it never grows again, so it is kept whole.

    A later delta sees that the last entry is not a ``_Run`` and starts a new block.
    """

    __slots__ = ("block",)

    def __init__(self, block: TextBlock | ReasoningBlock) -> None:
        self.block = block

    def materialize(self) -> TextBlock | ReasoningBlock:
        return self.block


_Entry: TypeAlias = _Run | _Tool | _Sealed


def _is_sealed(block: TextBlock | ReasoningBlock) -> bool:
    if block.signature is not UNSET:
        return True
    return isinstance(block, ReasoningBlock) and block.redacted is True


def _entry(block: object, index: int) -> _Entry:
    """The entry of an already materialized block (from a list, a tuple or decoded JSON)."""
    if isinstance(block, TextBlock | ReasoningBlock) and _is_sealed(block):
        return _Sealed(block)
    if isinstance(block, TextBlock):
        return _Run(TextBlock, [block.text], 1, block)
    if isinstance(block, ReasoningBlock):
        return _Run(ReasoningBlock, [block.text], 1, block)
    if isinstance(block, ToolCallBlock):
        return _Tool(
            block.id,
            block.name,
            [block.arguments_text],
            1,
            block.arguments,
            block.ready,
            block,
            block.signature,
        )
    raise TypeError(
        f"expected a TextBlock, ReasoningBlock or ToolCallBlock at index {index}, "
        f"got {type(block).__name__}"
    )


class _Tools:
    """The tool-call registry of one version: ``pairs[:k]`` are its ``(id, block index)``."""

    __slots__ = ("k", "pairs", "position")

    def __init__(self, pairs: list[tuple[str, int]], k: int, position: dict[str, int]) -> None:
        self.pairs = pairs
        self.k = k
        self.position = position  # id -> index into pairs; valid only below k

    def index_of(self, tool_id: str) -> int | None:
        p = self.position.get(tool_id)
        if p is None or p >= self.k:
            return None
        return self.pairs[p][1]

    def added(self, tool_id: str, index: int) -> _Tools:
        k = self.k
        pairs = _append(self.pairs, k, (tool_id, index))
        if pairs is self.pairs:
            position = self.position
        else:  # forked: positions at or above k in the shared dict belong to someone else
            position = {pair[0]: p for p, pair in enumerate(pairs[:k])}
        position[tool_id] = k
        return _Tools(pairs, k + 1, position)

    def ids(self) -> list[str]:
        return [pair[0] for pair in self.pairs[: self.k]]


def _tools_of(entries: Sequence[_Entry]) -> _Tools:
    pairs = [(e.id, i) for i, e in enumerate(entries) if type(e) is _Tool]
    return _Tools(pairs, len(pairs), {pair[0]: p for p, pair in enumerate(pairs)})


class _Prefix:
    """Every block before the last: ``items[:n]``, then ``tail``; and the tool registry."""

    __slots__ = ("items", "n", "tail", "tools")

    def __init__(self, items: list[_Entry], n: int, tail: tuple[_Entry, ...], tools: _Tools):
        self.items = items
        self.n = n
        self.tail = tail
        self.tools = tools

    def appended(self, entry: _Entry) -> _Prefix:
        """This prefix followed by ``entry`` (the block that was last until now)."""
        tail = (*self.tail, entry)
        items = self.items
        n = self.n
        if len(tail) > TAIL:
            items = _append(items, n, tail[0])
            tail = tail[1:]
            n += 1
        return _Prefix(items, n, tail, self.tools)

    def replaced(self, index: int, entry: _Entry) -> _Prefix:
        """This prefix with the block at ``index`` (< its length) replaced by ``entry``."""
        n = self.n
        if index >= n:
            j = index - n
            tail = self.tail
            return _Prefix(self.items, n, (*tail[:j], entry, *tail[j + 1 :]), self.tools)
        items = self.items[:n]  # an old block: copy the list, O(number of blocks)
        items[index] = entry
        return _Prefix(items, n, self.tail, self.tools)

    def at(self, index: int) -> _Entry:
        n = self.n
        return self.items[index] if index < n else self.tail[index - n]

    def entries(self) -> Iterator[_Entry]:
        items = self.items
        for i in range(self.n):
            yield items[i]
        yield from self.tail


def _empty_prefix() -> _Prefix:
    # Always fresh lists: a prefix shared by every fold from EMPTY would collect their entries.
    return _Prefix([], 0, (), _Tools([], 0, {}))


class Blocks(Sequence[Block]):
    """An immutable sequence of blocks; the state ``apply_stream_event`` returns.

    ``Blocks(iterable)`` builds one from block Structs. Indexing and iteration give plain
    block Structs (their text joined once, then cached). A ``Blocks`` equals any ``Blocks``,
    list or tuple holding equal blocks in the same order.
    """

    # _prefix holds every block but the last; _last is the last block's entry (None only
    # when empty). The length is _prefix.n + len(_prefix.tail) + 1.
    __slots__ = ("_last", "_prefix")

    _prefix: _Prefix
    _last: _Entry | None

    def __init__(self, blocks: Iterable[Block] = ()) -> None:
        entries = [_entry(block, index) for index, block in enumerate(blocks)]
        self._last = entries.pop() if entries else None
        cut = max(0, len(entries) - TAIL)
        tools = _tools_of([*entries, self._last] if self._last is not None else entries)
        self._prefix = _Prefix(entries[:cut], cut, tuple(entries[cut:]), tools)

    def __len__(self) -> int:
        prefix = self._prefix
        return prefix.n + len(prefix.tail) + (self._last is not None)

    def _entry_at(self, index: int) -> _Entry:
        prefix = self._prefix
        size = prefix.n + len(prefix.tail)  # the index of the last block
        last = self._last
        if index < 0:
            index += size + 1
        if index == size and last is not None:
            return last
        if 0 <= index < size:
            return prefix.at(index)
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
        yield from self._prefix.entries()
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

    def _pushed(self, entry: _Entry) -> Blocks:
        """A new version with ``entry`` appended as the last block (registers a tool id)."""
        last = self._last
        prefix = _empty_prefix() if last is None else self._prefix.appended(last)
        if type(entry) is _Tool:
            tools = prefix.tools.added(entry.id, prefix.n + len(prefix.tail))
            prefix = _Prefix(prefix.items, prefix.n, prefix.tail, tools)
        new = _new(Blocks)
        new._prefix = prefix
        new._last = entry
        return new

    def _tool_index(self, tool_id: str) -> int | None:
        return self._prefix.tools.index_of(tool_id)

    def _tool_ids(self) -> list[str]:
        return self._prefix.tools.ids()

    def _replaced(self, index: int, entry: _Entry) -> Blocks:
        """A new version with the block at ``index`` replaced (same kind, same id)."""
        prefix = self._prefix
        new = _new(Blocks)
        if index == prefix.n + len(prefix.tail):
            new._prefix = prefix
            new._last = entry
        else:
            new._prefix = prefix.replaced(index, entry)
            new._last = self._last
        return new


_new = object.__new__


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
