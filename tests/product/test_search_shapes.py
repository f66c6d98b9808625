"""The search's two shapes (rare words through the GIN index, common ones through the
user's own messages) find the same conversations in the same order with the same snippets."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from turnlog_reducer import TextDelta

from turnlog.log import events as ev
from turnlog.log.rows import configure_connection
from turnlog.log.store import Store
from turnlog.product import search

pytestmark = pytest.mark.anyio

AT = datetime(2026, 1, 1, tzinfo=UTC)
TEXTS = [
    ("Otters and rivers", "do otters hold hands while sleeping", "yes otters hold hands"),
    (None, "rivers run to the sea", "the sea is salty; otters swim there"),
    (None, "nothing to see", "plain words only"),
]


async def test_both_shapes_agree(store: Store, fresh_db: str) -> None:
    """For words common and rare, phrases and nothing found: the same page."""
    for n, (title, asked, answered) in enumerate(TEXTS):
        for owner in ("ann", "bob"):
            cid, user, mid, attempt = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
            at = AT + timedelta(minutes=n)
            await store.append(
                cid,
                [
                    ev.ConversationCreated(
                        at=at, conversation_id=cid, owner=owner, title=title,
                        model="demo:default", options={}, system_prompt=None,
                    ),
                    ev.UserMessageSent(at=at, message_id=user, seq=1, content=asked),
                    ev.AssistantTurnStarted(
                        at=at, message_id=mid, seq=2, attempt=attempt, model="demo:default",
                    ),
                    ev.StepCompleted(
                        at=at, message_id=mid, attempt=attempt,
                        events=(TextDelta(answered),), stream_seq=1, finish_reason="stop",
                    ),
                ],
            )  # fmt: skip
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        configure_connection(conn)
        for q in ("otters", "sea", '"hold hands"', "otters -rivers", "zebra", "rivers OR plain"):
            params = search.parameters("ann", q, metadata={}, limit=10, offset=0)
            rare = conn.execute(search._SEARCH_RARE, params).fetchall()
            own = conn.execute(search._SEARCH_OWN, params).fetchall()
            assert rare == own, q
            assert all(row[1] == "ann" for row in rare)
        params = search.parameters("ann", "otters", metadata={}, limit=10, offset=0)
        found = conn.execute(search._SEARCH_OWN, params).fetchall()
        assert [row[2] for row in found] == ["Otters and rivers", None]
