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

import uuid
from datetime import datetime
from typing import Any

import msgspec

from turnlog.log.pool import BoundedPool
from turnlog.log.projection import Conversation, ConversationRecord
from turnlog.log.store import CONVERSATION_COLUMNS, conversation_from_row

MAX_QUERY_CHARS = 1_000


class BadQuery(ValueError):
    """A search text PostgreSQL cannot take (the commands answer it with a 400)."""


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
# user's text cannot be found. PostgreSQL picks how to meet `mine` and the matching
# messages: through the GIN index (rare words) or through messages_conversation_seq
# (a user with few messages); both give the same rows.
# - `hits`: each conversation's best message, DISTINCT ON with rank then seq, so the
#   snippet comes from the best match and ties go to the earliest message (a stable order).
# - A title match weighs double a message's: the title says what the whole chat is about.
# - Order: score, then newest first, then id: total, so OFFSET paging is stable while
#   nothing changes.
# - Snippets are made for the returned page only (the outer query, after LIMIT):
#   ts_headline re-parses the text and is the costly part.
# The query, written out where it is used (not computed once in a CTE): the planner then
# sees the words and estimates from the column's statistics how many messages match, so
# it goes through the GIN index for rare words and through the user's own messages
# (messages_conversation_seq) for common ones; behind a CTE it assumed 0.5% of the table
# for every query and read a common word's hits in every user's messages (seconds).
_Q = "websearch_to_tsquery('simple', %(q)s)"
_SEARCH = (
    "WITH mine AS (SELECT * FROM conversations"
    " WHERE owner = %(owner)s AND metadata @> %(metadata)s::jsonb), "
    "hits AS (SELECT DISTINCT ON (m.conversation_id) m.conversation_id, m.id,"
    f" ts_rank(m.search, {_Q}, 1) AS rank FROM messages m JOIN mine ON mine.id = m.conversation_id"
    f" WHERE m.search @@ {_Q} ORDER BY m.conversation_id, rank DESC, m.seq), "
    f"titled AS (SELECT mine.id, ts_rank(to_tsvector('simple', mine.title), {_Q}, 1) AS rank"
    f" FROM mine WHERE mine.title IS NOT NULL AND to_tsvector('simple', mine.title) @@ {_Q}), "
    "page AS (SELECT c.*, h.id AS hit, 2 * coalesce(t.rank, 0) + coalesce(h.rank, 0) AS score"
    " FROM mine c LEFT JOIN hits h ON h.conversation_id = c.id"
    " LEFT JOIN titled t ON t.id = c.id WHERE h.id IS NOT NULL OR t.id IS NOT NULL"
    " ORDER BY score DESC, c.created_at DESC, c.id DESC LIMIT %(limit)s OFFSET %(offset)s) "
    f"SELECT {_COLUMNS}, ts_headline('simple', coalesce(("
    "  SELECT CASE WHEN m.role = 'user' THEN coalesce(m.edited_content, m.content)"
    "  ELSE (SELECT string_agg(t, ' ') FROM jsonb_array_elements_text("
    "   jsonb_path_query_array(m.blocks, '$[*] ? (@.type == \"text\").text')) AS t) END"
    f"  FROM messages m WHERE m.id = c.hit), c.title, ''), {_Q},"
    ' \'MaxWords=16, MinWords=6, MaxFragments=1, StartSel="", StopSel=""\')'
    " FROM page c ORDER BY c.score DESC, c.created_at DESC, c.id DESC"
)


def check_query(q: str) -> str:
    """``q`` if a search can take it, else ``BadQuery`` saying why."""
    if len(q) > MAX_QUERY_CHARS:
        raise BadQuery(f"q is {len(q)} characters; at most {MAX_QUERY_CHARS} are searched")
    if "\x00" in q:
        raise BadQuery("q must not contain NUL (U+0000)")
    return q


def statement(
    owner: str, q: str, *, metadata: dict[str, str], limit: int, offset: int
) -> tuple[str, dict[str, Any]]:
    """The search's SQL and parameters: rows of the conversation columns, then the snippet
    (bench/search.py times exactly this)."""
    params = {
        "q": check_query(q),
        "owner": owner,
        "metadata": _json.encode(metadata).decode(),
        "limit": limit,
        "offset": offset,
    }
    return _SEARCH, params


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
        sql, params = statement(owner, q, metadata=metadata, limit=limit, offset=offset)
        cur = await conn.execute(sql, params, prepare=False)
        rows = await cur.fetchall()
    found = []
    for row in rows:
        c = conversation_from_row(row[:n]).conversation
        snippet = " ".join(str(row[n]).split()) or None
        found.append(Found(**msgspec.structs.asdict(c), match=snippet))
    return found
