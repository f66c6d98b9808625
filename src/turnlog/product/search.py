"""Listing a user's conversations with filters: ``metadata.KEY=VALUE`` and full-text ``q``.

Search is PostgreSQL full-text: ``messages.search`` is a generated tsvector column (a user's
text, an assistant's text blocks; see migration 0005) behind a GIN index, so it is kept
with every projection write and rebuilt with the table. Titles are matched on the fly over
the user's own conversations (a handful to thousands of rows): an index on them would be
rewritten by every append, since each one updates the conversation row.

The query text goes to ``websearch_to_tsquery``, which accepts any text (quotes, ``or``,
``-word``; stray operators are words or nothing), so a hostile query is at worst one that
finds nothing. What PostgreSQL cannot hold (NUL) and what is too long are refused first.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Any

import msgspec

from turnlog.log.pool import BoundedPool
from turnlog.log.projection import Conversation, ConversationRecord
from turnlog.log.rows import CONVERSATION_COLUMNS, conversation_from_row
from turnlog.log.store import Store

MAX_QUERY_CHARS = 1_000


class BadQuery(ValueError):
    """A search text PostgreSQL cannot take, or a cursor this server never gave out (the
    commands answer it with a 400)."""


class Found(Conversation, frozen=True, kw_only=True):
    """A conversation a search found, with a short snippet of where (``match``)."""

    match: str | None = None


_json = msgspec.json.Encoder()
_COLUMNS = ", ".join(f"c.{c}" for c in CONVERSATION_COLUMNS.split(", "))

# The user's conversations, newest first, with the metadata filters (``@>``: every pair
# must hold). Keyset paging by (created_at, id) on conversations_owner_created, the index
# the plain list uses; the metadata test filters the owner's rows as they come.
_LIST = (
    f"SELECT {CONVERSATION_COLUMNS} FROM conversations"
    " WHERE owner = %(owner)s AND metadata @> %(metadata)s::jsonb"
    " AND (%(before_at)s::timestamptz IS NULL OR (created_at, id) < (%(before_at)s, %(before_id)s))"
    " ORDER BY created_at DESC, id DESC LIMIT %(limit)s"
)

# Ranked search. Only this user's conversations (`mine`) are ever joined, so another
# user's text cannot be found.
# - The query is written out where it is used (not computed once in a CTE), so the planner
#   sees its words; each title is matched once, in `mine`.
# - `hits` reads the user's own messages through messages_conversation_seq and tests each
#   (`(... @@ ...) IS TRUE` keeps the GIN index out of this join): the cost is the user's
#   message count, whatever the words. Through the GIN index, inside the join the planner
#   re-read a common word's whole posting list once per conversation (a phrase of two
#   common words: 1.5 s at a million messages); outside it, a common word's hits in every
#   user's messages (seconds). The index still serves rare words to other readers and
#   costs nothing on the write path (generating rows hold NULL).
# - `hits`: each conversation's best message, DISTINCT ON with rank then seq, so the
#   snippet comes from the best match and ties go to the earliest message (a stable order).
# - A title match weighs double a message's: the title says what the whole chat is about.
# - Order: score, then newest first, then id: total, so OFFSET paging is stable while
#   nothing changes.
# - Snippets are made for the returned page only (the outer query, after LIMIT):
#   ts_headline re-parses the text and is the costly part.
_Q = "websearch_to_tsquery('simple', %(q)s)"
_SEARCH_TEMPLATE = (
    "WITH mine AS (SELECT *, CASE WHEN title IS NOT NULL"
    f" AND to_tsvector('simple', title) @@ {_Q}"
    f" THEN ts_rank(to_tsvector('simple', title), {_Q}, 1) END AS title_rank"
    " FROM conversations WHERE owner = %(owner)s AND metadata @> %(metadata)s::jsonb), "
    "hits AS (SELECT DISTINCT ON (m.conversation_id) m.conversation_id, m.id,"
    f" ts_rank(m.search, {_Q}, 1) AS rank"
    " FROM {messages} m JOIN mine ON mine.id = m.conversation_id"
    " ORDER BY m.conversation_id, rank DESC, m.seq), "
    "page AS (SELECT c.*, h.id AS hit, 2 * coalesce(c.title_rank, 0) + coalesce(h.rank, 0)"
    " AS score FROM mine c LEFT JOIN hits h ON h.conversation_id = c.id"
    " WHERE h.id IS NOT NULL OR c.title_rank IS NOT NULL"
    " ORDER BY score DESC, c.created_at DESC, c.id DESC LIMIT %(limit)s OFFSET %(offset)s) "
    f"SELECT {_COLUMNS}, ts_headline('simple', coalesce(("
    "  SELECT CASE WHEN m.role = 'user' THEN coalesce(m.edited_content, m.content)"
    "  ELSE (SELECT string_agg(t, ' ') FROM jsonb_array_elements_text("
    "   jsonb_path_query_array(m.blocks, '$[*] ? (@.type == \"text\").text')) AS t) END"
    f"  FROM messages m WHERE m.id = c.hit), c.title, ''), {_Q},"
    ' \'MaxWords=16, MinWords=6, MaxFragments=1, StartSel="", StopSel=""\')'
    " FROM page c ORDER BY c.score DESC, c.created_at DESC, c.id DESC"
)
# Rare words: the matching messages of everyone through the GIN index (OFFSET 0 keeps that
# subquery planned on its own), then this user's among them.
_SEARCH_RARE = _SEARCH_TEMPLATE.replace(
    "{messages}",
    f"(SELECT id, conversation_id, seq, search FROM messages WHERE search @@ {_Q} OFFSET 0)",
)
# Common words: this user's messages, each tested (not an index condition).
_SEARCH_OWN = _SEARCH_TEMPLATE.replace(
    "{messages}", f"(SELECT * FROM messages WHERE (search @@ {_Q}) IS TRUE)"
)
# How many messages of everyone the planner expects to match: a plan, not a scan (the GIN
# column's statistics know how common each word is).
ESTIMATE = f"EXPLAIN (FORMAT JSON) SELECT 1 FROM messages WHERE search @@ {_Q}"
# At most this many expected matches in the whole table: the rare-word shape.
RARE_MATCHES = 1_500


def shape(plan: Any) -> str:
    """The search statement for a query whose EXPLAIN (FORMAT JSON) row is ``plan``."""
    try:
        found = plan[0]
        if isinstance(found, bytes | str):
            found = msgspec.json.decode(found)
        rows = float(found[0]["Plan"]["Plan Rows"])
    except (TypeError, ValueError, KeyError, IndexError, msgspec.DecodeError):
        rows = float("inf")
    return _SEARCH_RARE if rows <= RARE_MATCHES else _SEARCH_OWN


def check_query(q: str) -> str:
    """``q`` if a search can take it, else ``BadQuery`` saying why."""
    if len(q) > MAX_QUERY_CHARS:
        raise BadQuery(f"q is {len(q)} characters; at most {MAX_QUERY_CHARS} are searched")
    if "\x00" in q:
        raise BadQuery("q must not contain NUL (U+0000)")
    return q


def parameters(
    owner: str, q: str, *, metadata: dict[str, str], limit: int, offset: int
) -> dict[str, Any]:
    """The search's parameters; its statement is ``shape`` of the ``ESTIMATE`` plan
    (bench/search.py times exactly these two steps)."""
    return {
        "q": check_query(q),
        "owner": owner,
        "metadata": _json.encode(metadata).decode(),
        "limit": limit,
        "offset": offset,
    }


async def list_filtered(
    pool: BoundedPool,
    owner: str,
    *,
    metadata: dict[str, str],
    limit: int,
    before: tuple[datetime, uuid.UUID] | None,
) -> list[ConversationRecord]:
    """The owner's conversations whose metadata holds every pair of ``metadata``, newest
    first, after ``before`` (the (created_at, id) of the last one already seen)."""
    params = {
        "owner": owner,
        "metadata": _json.encode(metadata).decode(),
        "before_at": None if before is None else before[0],
        "before_id": None if before is None else before[1],
        "limit": limit,
    }
    async with pool.connection() as conn:
        cur = await conn.execute(_LIST, params)
        return [conversation_from_row(r) for r in await cur.fetchall()]


async def search(
    pool: BoundedPool,
    owner: str,
    q: str,
    *,
    metadata: dict[str, str],
    limit: int,
    offset: int,
) -> list[Found]:
    """The owner's conversations matching ``q`` in their title or message text, best
    first, each with a snippet of its best match."""
    n = len(CONVERSATION_COLUMNS.split(", "))
    async with pool.connection() as conn:
        # Never prepared (psycopg prepares a statement run 5 times on a connection): a
        # prepared statement soon runs a generic plan, one for every query, and the right
        # plan depends on how common the words are (the GIN index for rare ones, the
        # user's own messages for common ones); a plan made for each query costs ~1 ms.
        params = parameters(owner, q, metadata=metadata, limit=limit, offset=offset)
        plan = await conn.execute(ESTIMATE, {"q": params["q"]}, prepare=False)
        sql = shape(await plan.fetchone())
        cur = await conn.execute(sql, params, prepare=False)
        rows = await cur.fetchall()
    found = []
    for row in rows:
        c = conversation_from_row(row[:n]).conversation
        snippet = " ".join(str(row[n]).split()) or None
        found.append(Found(**msgspec.structs.asdict(c), match=snippet))
    return found


async def page(
    store: Store,
    owner: str,
    *,
    limit: int,
    cursor: str | None,
    q: str | None,
    metadata: dict[str, str],
) -> tuple[list[Conversation], str | None]:
    """One page of ``GET /v1/conversations``: newest first (keyset cursor), or with ``q``
    the matches best first (offset cursor); ``metadata``: pairs every one must hold."""
    if q is not None and q.strip():
        offset = _decode_offset(cursor) if cursor else 0
        found = await search(
            store.pool, owner, q, metadata=metadata, limit=limit + 1, offset=offset
        )
        nxt = _encode_offset(offset + limit) if len(found) > limit else None
        return list(found[:limit]), nxt
    before = _decode_cursor(cursor) if cursor else None
    if metadata:
        rows = await list_filtered(
            store.pool, owner, metadata=metadata, limit=limit + 1, before=before
        )
    else:
        rows = await store.list_conversations(owner, limit=limit + 1, before=before)
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = _encode_cursor(rows[-1].conversation) if more and rows else None
    return [r.conversation for r in rows], nxt


def _encode_offset(offset: int) -> str:
    return base64.urlsafe_b64encode(f"search|{offset}".encode()).decode().rstrip("=")


def _decode_offset(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, offset = raw.partition("|")
        if kind == "search" and offset.isdigit() and len(offset) <= 9:
            return int(offset)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise BadQuery(f"cursor {cursor!r} is not one this server gave out for this search")


def _encode_cursor(c: Conversation) -> str:
    raw = f"{c.created_at.isoformat()}|{c.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, cid = raw.partition("|")
        return datetime.fromisoformat(at), uuid.UUID(cid)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadQuery(f"cursor {cursor!r} is not one this server gave out") from None
