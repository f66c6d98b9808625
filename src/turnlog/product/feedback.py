"""Feedback on answers: ``PUT /v1/messages/{mid}/feedback`` (up, down or cleared, with an
optional comment), stored as a ``FeedbackGiven`` event on the assistant row."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from turnlog.log import events as ev
from turnlog.log.projection import ConversationRecord, Message, MessageRecord
from turnlog.log.store import Appended, Store

MAX_COMMENT_CHARS = 2_000


class FeedbackIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    rating: Literal["up", "down"] | None  # None clears it
    comment: str | None = None


class BadFeedback(ValueError):
    """Feedback that cannot be stored (the route answers it with a 400)."""


def check(body: FeedbackIn) -> None:
    if body.comment is None:
        return
    if body.rating is None:
        raise BadFeedback("a comment needs a rating: send rating 'up' or 'down' with it")
    if len(body.comment) > MAX_COMMENT_CHARS:
        raise BadFeedback(
            f"comment is {len(body.comment)} characters; the limit is {MAX_COMMENT_CHARS}"
        )
    if "\x00" in body.comment:
        raise BadFeedback("comment must not contain NUL (U+0000)")


async def give(
    store: Store,
    row: MessageRecord,
    conv: ConversationRecord,
    body: FeedbackIn,
    *,
    at: datetime,
    actor: str,
) -> Appended:
    """Store ``body`` on the answer ``row`` (an owner-checked read of ``conv``); a lost
    version race is the caller's to retry. Only assistant rows take feedback."""
    if row.message.role != "assistant":
        raise BadFeedback(
            f"message {row.message.id} is a {row.message.role} message; only assistant "
            "messages take feedback"
        )
    return await store.append(
        conv.conversation.id,
        [
            ev.FeedbackGiven(
                at=at, message_id=row.message.id, rating=body.rating, comment=body.comment
            )
        ],
        expected_version=conv.conversation.version,
        actor=actor,
    )


def answer_of(done: Appended) -> Message:
    """The row a ``give`` changed."""
    return done.messages[0].message


__all__ = ["MAX_COMMENT_CHARS", "BadFeedback", "FeedbackIn", "answer_of", "check", "give"]
