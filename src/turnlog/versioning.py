"""Version commands: regenerate a turn, edit and resend a user message, select a path.

The rules (docs/protocol.md, "Versions", says them for clients):

- Every row has a parent; rows sharing one are versions of each other, and a conversation
  shows the path from a first row to its active leaf (turnlog.log.tree).
- **Regenerate** (and ``retry``, the same operation) takes an assistant row that ends a turn
  (no tool result answers it) and is not generating, and starts a new version of the *whole
  turn*: a new assistant row whose parent is where the turn starts, the user row it answers
  or the user's answer to an interactive tool call (``tree.turn_parent``). The new row is
  made active; the old turn, tool steps and all, stays as the other version.
- **Edit and resend** makes a new user row beside the edited one (same parent) with the new
  text, made active, and answers it.
- **Select** makes the path through a row active, down to the newest leaf below it.
- One tail generates at a time per conversation: regenerate and resend need the
  conversation idle (409 otherwise), like a send; select never generates and is allowed
  while a version is generating.

Each command reads the rows it decides on, then appends with the version it read (a lost
race reads again), so a decision is never made on stale rows.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from turnlog.commands import Chat, EditIn, MessageIn, Sent
from turnlog.errors import (
    BadRequest,
    ConversationBusy,
    NotFound,
    NotGenerating,
)
from turnlog.generation.turn import Turn
from turnlog.log import events as ev
from turnlog.log import tree
from turnlog.log.projection import Conversation, Message
from turnlog.log.store import Appended


class RegenerateIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Options given replace the turn's; a model given replaces the conversation's for
    this version only."""

    options: dict[str, Any] | None = None
    model: str | None = None


class NotRegenerable(NotGenerating):
    """The row is not an assistant row that ends a finished turn (409)."""


def _idle(c: Conversation) -> None:
    if c.state != "idle":
        raise ConversationBusy(
            f"conversation {c.id} is {c.state.replace('_', ' ')}; wait for it, cancel the "
            "running answer or answer the pending question"
        )


async def regenerate(
    chat: Chat, owner: str, mid: uuid.UUID, body: RegenerateIn | None = None
) -> Message:
    """A new version of the turn that assistant row ``mid`` ends, made active and answered."""
    body = body or RegenerateIn()
    chat._may_start()
    turn: Turn | None = None

    async def attempt() -> Appended:
        nonlocal turn
        row, conv = await chat.message(owner, mid)
        m, c = row.message, conv.conversation
        if m.role != "assistant":
            raise NotRegenerable(
                f"message {mid} is a {m.role} message; only an assistant message can be "
                "regenerated (to answer a user message again, edit it with resend: true)"
            )
        if m.status == "generating":
            raise NotRegenerable(
                f"message {mid} is still generating; cancel it or wait for it to end"
            )
        _idle(c)
        rows = await chat.store.list_messages(c.id)
        if any(r.message.role == "tool" and r.message.reply_to == mid for r in rows):
            last = tree.path_to(rows, tree.newest_leaf(rows, mid).message.id)[-1].message
            raise NotRegenerable(
                f"message {mid} is a step inside a turn (its tool calls have results); "
                f"regenerate the message that ends the turn instead (for example {last.id})"
            )
        start = tree.turn_parent(rows, mid)
        model = body.model or c.model
        options = row.options if body.options is None else body.options
        chat.check_model(owner, model, {**c.options, **(options or {})})
        turn = Turn.new(c.id, conv.last_seq + 1, model, reply_to=m.reply_to)
        turn = msgspec.structs.replace(turn, options=options)
        started = msgspec.structs.replace(
            turn.started(chat.now(), retry_of=mid),
            parent_id=None if start is None else start.message.id,
        )
        return await chat.store.append(
            c.id,
            [started],
            expected_version=c.version,
            actor=owner,
            instance_id=chat.engine.instance_id,
        )

    async with chat.limits.admit(owner, send=False):
        done = await chat.store.retrying(attempt)
    assert turn is not None
    chat.engine.start(turn, done.conversation)
    return done.messages[0].message


async def resend(chat: Chat, owner: str, cid: uuid.UUID, mid: uuid.UUID, body: EditIn) -> Sent:
    """A new version of user row ``mid`` with ``body.content``, made active and answered."""
    chat.check_message(MessageIn(content=body.content))
    chat._may_start()
    turn: Turn | None = None

    async def attempt() -> Appended:
        nonlocal turn
        conv = await chat.conversation(owner, cid)
        row = await chat.store.get_message(mid)
        if row is None or row.message.conversation_id != cid:
            raise NotFound(f"message {mid} not found")
        m, c = row.message, conv.conversation
        if m.role != "user":
            raise BadRequest(
                f"message {mid} is an {m.role} message; only user messages can be edited "
                "(to answer again, regenerate the assistant message)"
            )
        _idle(c)
        chat.check_model(owner, c.model, {**c.options, **(row.options or {})})
        now = chat.now()
        user = ev.UserMessageSent(
            at=now,
            message_id=uuid.uuid4(),
            seq=conv.last_seq + 1,
            content=body.content,
            options=row.options,
            parent_id=m.parent_id,
        )
        turn = Turn.new(cid, conv.last_seq + 2, c.model, reply_to=user.message_id)
        return await chat.store.append(
            cid,
            [user, turn.started(now)],
            expected_version=c.version,
            actor=owner,
            instance_id=chat.engine.instance_id,
        )

    async with chat.limits.admit(owner, send=True):
        done = await chat.store.retrying(attempt)
    assert turn is not None
    chat.engine.start(turn, done.conversation)
    user_row, assistant = done.messages
    return Sent(user_row.message, assistant.message, created=True)


class _AlreadyActive(Exception):
    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation


async def select(chat: Chat, owner: str, mid: uuid.UUID) -> Conversation:
    """Make the path through ``mid`` active, down to the newest leaf below it."""

    async def attempt() -> Appended:
        _, conv = await chat.message(owner, mid)
        c = conv.conversation
        rows = await chat.store.list_messages(c.id)
        leaf = tree.newest_leaf(rows, mid).message.id
        if leaf == c.active_leaf_id:
            raise _AlreadyActive(c)  # nothing to store
        return await chat.store.append(
            c.id,
            [ev.VersionSelected(at=chat.now(), message_id=mid, leaf_id=leaf)],
            expected_version=c.version,
            actor=owner,
        )

    try:
        done = await chat.store.retrying(attempt)
    except _AlreadyActive as same:
        return same.conversation
    assert done.conversation is not None
    return done.conversation.conversation
