"""The AI SDK ``useChat`` adapter: one request in, a UI message stream out.

:meth:`UIChat.answer` is the one entry of ``POST /v1/ui/chat``: it takes what
``DefaultChatTransport`` sends (:class:`ChatIn`), sends the message, regenerates, or records
the client's tool answers through ``Chat`` (the commands), and returns the turn's frames;
:meth:`UIChat.resume`, :meth:`UIChat.stop` and :meth:`UIChat.messages` serve the other three
routes. What the chunks are is decided in ``mapping.py`` (pure); this module reads rows and
live streams and writes the chunks out as SSE ``data:`` frames. The route
(``turnlog.http.ui_chat``) only parses and answers.

Chat ids. The AI SDK makes its own chat ids (16-character nanoids) unless the app passes
one. An id that names a conversation of the caller (a UUID turnlog gave out) is that
conversation. Any other id names the conversation ``uuid5(CHAT_NAMESPACE, owner + NUL +
id)``, created for the caller on the first ``POST``: deterministic, so every route finds
it again, and per user, so two users' equal chat ids never meet (nor learn of each other).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any, Literal, Protocol

import anyio
import msgspec
import psycopg
import structlog
from turnlog_reducer import Done, decode_event

from turnlog.commands import (
    Chat,
    ConversationIn,
    MessageIn,
    RetryIn,
    ToolApprovalIn,
    ToolResultIn,
    unanswered,
)
from turnlog.config import Settings
from turnlog.errors import (
    BadRequest,
    DomainError,
    NotFound,
    NotGenerating,
)
from turnlog.follow import Follower, Mirror
from turnlog.log import tree
from turnlog.log.projection import ConversationRecord, Message, MessageRecord
from turnlog.log.store import Store
from turnlog.streams import PING, StreamRegistry, Subscription
from turnlog.uichat import mapping
from turnlog.uichat.mapping import StartStep, StepEncoder, UITurn

__all__ = ["CHAT_NAMESPACE", "DONE_FRAME", "ChatIn", "UIChat", "UIMessageIn", "UIPartIn"]

CHAT_NAMESPACE = uuid.UUID("5b0c2d1e-7a43-4f0e-9c59-2f3b8d6e1a10")
MAX_CHAT_ID_CHARS = 200
DONE_FRAME = b"data: [DONE]\n\n"


# -- request bodies: what DefaultChatTransport sends ----------------------------------------


class UIApprovalIn(msgspec.Struct, kw_only=True):
    """A tool part's ``approval`` as ``addToolApprovalResponse`` leaves it (AI SDK 6+)."""

    id: str
    approved: bool | None = None
    reason: str | None = None


class UIPartIn(msgspec.Struct, kw_only=True, rename="camel"):
    """A part of a client's UIMessage; only what a turn needs is read, the rest ignored."""

    type: str
    text: str | None = None
    tool_call_id: str | None = None
    state: str | None = None
    output: Any = None
    error_text: str | None = None
    approval: UIApprovalIn | None = None


class UIMessageIn(msgspec.Struct, kw_only=True):
    id: str
    role: str
    parts: list[UIPartIn] = msgspec.field(default_factory=list)


class ChatIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, rename="camel"):
    """``{id, messages, trigger, messageId?}``; ``options`` (the transport's ``body``) are
    per-message model options, as on ``POST /v1/conversations/{cid}/messages``."""

    id: str
    messages: list[UIMessageIn]
    trigger: Literal["submit-message", "regenerate-message"]
    message_id: str | None = None
    options: dict[str, Any] | None = None


class Closing(Protocol):
    """Set when the server shuts down (an ``anyio.Event``)."""

    def is_set(self) -> bool: ...


class UIChat:
    """The adapter, over the server's store, commands, live streams and followers."""

    def __init__(
        self,
        store: Store,
        chat: Chat,
        registry: StreamRegistry,
        follower: Follower,
        settings: Settings,
        closing: Closing,
    ) -> None:
        self.store = store
        self.chat = chat
        self.registry = registry
        self.follower = follower
        self.settings = settings
        self.closing = closing

    # -- the four routes ---------------------------------------------------------------------

    async def answer(self, owner: str, data: ChatIn) -> AsyncIterator[bytes]:
        """Do what a ``POST`` asks (send, regenerate or answer tool calls) and return the
        turn's frames. Everything it refuses is raised here, before the first frame."""
        if not data.messages:
            raise BadRequest("messages is empty; expected the chat's messages, the last one new")
        last = data.messages[-1]
        if last.role not in ("user", "assistant"):
            raise BadRequest(
                f"the last message's role is {last.role!r}; expected user or assistant"
            )
        sending = data.trigger == "submit-message" and last.role == "user"
        message = MessageIn(
            content="\n".join(p.text for p in last.parts if p.type == "text" and p.text),
            client_message_id=last.id,
            options=data.options,
        )
        conv = await self._conversation(owner, data.id)
        if conv is None:
            if not sending:
                raise NotFound(f"chat {data.id!r} not found")
            # Only a message that would be taken creates the chat: bad input writes nothing.
            self.chat.check_message(message)
            self.chat.check_model(owner, self.settings.default_model, data.options or {})
            conv = await self._conversation(owner, data.id, create=True)
            assert conv is not None
        cid = conv.conversation.id
        if data.trigger == "regenerate-message":
            return await self._regenerate(owner, cid, data.options)
        if sending:
            sent = await self.chat.send(owner, cid, message)
            return self._turn_frames(cid, sent.user_message.id)
        return await self._answer_tools(owner, cid, last)

    async def resume(self, owner: str, chat_id: str) -> AsyncIterator[bytes] | None:
        """The generating turn's frames from its start; None when nothing generates."""
        conv = await self._conversation(owner, chat_id)
        if conv is None or conv.conversation.state != "generating":
            return None
        cid = conv.conversation.id
        generating = [t for t in _turns(await self._active(cid)) if t.generating]
        if not generating:
            return None
        turn = generating[-1]
        return self._turn_frames(cid, _user_id(turn), stored=turn)

    async def stop(self, owner: str, chat_id: str) -> Message:
        """Cancel the generating step (or withdraw the question waiting for the user)."""
        conv = await self._conversation(owner, chat_id)
        target: MessageRecord | None = None
        if conv is not None:
            records = await self.store.list_messages(conv.conversation.id)
            steps = [r for r in records if r.message.role == "assistant"]
            generating = [r for r in steps if r.message.status == "generating"]
            if generating:
                target = generating[-1]
            elif conv.conversation.state == "awaiting_input" and steps:
                target = steps[-1]
        if target is None:
            raise NotGenerating(f"nothing is generating in chat {chat_id!r}")
        return await self.chat.cancel(owner, target.message.id)

    async def messages(self, owner: str, chat_id: str) -> list[dict[str, Any]]:
        """The chat's rows as UI messages ([] for an unknown chat)."""
        conv = await self._conversation(owner, chat_id)
        if conv is None:
            return []
        rows = tree.active(conv, await self.store.list_messages(conv.conversation.id))
        return mapping.ui_messages(rows)

    # -- chat ids ----------------------------------------------------------------------------

    async def _conversation(
        self, owner: str, chat_id: str, *, create: bool = False
    ) -> ConversationRecord | None:
        """The caller's conversation for ``chat_id`` (see the module doc), created if asked."""
        if not chat_id or len(chat_id) > MAX_CHAT_ID_CHARS or "\x00" in chat_id:
            raise BadRequest(
                f"chat id must be 1 to {MAX_CHAT_ID_CHARS} characters without NUL, got {chat_id!r}"
            )
        try:
            named: uuid.UUID | None = uuid.UUID(chat_id)
        except ValueError:
            named = None
        if named is not None:
            record = await self.store.get_conversation(named)
            if record is not None and record.owner == owner:
                return record
        cid = uuid.uuid5(CHAT_NAMESPACE, f"{owner}\x00{chat_id}")
        record = await self.store.get_conversation(cid)
        if record is None and create:
            # A concurrent first request may have created it: read it below either way.
            with contextlib.suppress(DomainError, psycopg.errors.UniqueViolation):
                await self.chat.create_conversation(owner, ConversationIn(), cid=cid)
            record = await self.store.get_conversation(cid)
        if record is None or record.owner != owner:
            if create:
                raise NotFound(f"chat {chat_id!r} not found")
            return None
        structlog.contextvars.bind_contextvars(conversation_id=str(cid))
        return record

    # -- what a POST starts ------------------------------------------------------------------

    async def _active(self, cid: uuid.UUID) -> list[MessageRecord]:
        """The conversation's active path (turnlog.log.tree): what ``useChat`` shows."""
        conv = await self.store.get_conversation(cid)
        rows = await self.store.list_messages(cid)
        return rows if conv is None else tree.active(conv, rows)

    async def _turn(self, cid: uuid.UUID, user_id: uuid.UUID | None) -> UITurn | None:
        """The turn answering user row ``user_id`` on the active path, as stored now."""
        for turn in _turns(await self._active(cid)):
            if _user_id(turn) == user_id:
                return turn
        return None

    async def _regenerate(
        self, owner: str, cid: uuid.UUID, options: dict[str, Any] | None
    ) -> AsyncIterator[bytes]:
        """A new version of the last turn (``regenerate``), with ``options`` in place of
        the turn's if given; answer it."""
        turns = _turns(await self._active(cid))
        if not turns:
            raise NotGenerating("this chat has no answer to regenerate")
        await self.chat.retry(owner, turns[-1].steps[-1].id, RetryIn(options=options))
        return self._turn_frames(cid, _user_id(turns[-1]))

    async def _answer_tools(
        self, owner: str, cid: uuid.UUID, last: UIMessageIn
    ) -> AsyncIterator[bytes]:
        """The client answered interactive tool calls (``addToolOutput``, then send):
        record each answer as a tool result, which resumes the turn; answer its
        continuation."""
        records = await self.store.list_messages(cid)
        waiting = [r for r in records if r.message.role == "assistant" and unanswered(r)]
        if not waiting:
            raise NotGenerating("nothing in this chat waits for a tool result")
        row = waiting[-1]
        open_calls = set(unanswered(row))
        answers: dict[str, str] = {}
        approvals: dict[str, UIApprovalIn] = {}
        for part in last.parts:
            if part.tool_call_id not in open_calls:
                continue
            if (
                part.state == "approval-responded"
                and part.approval is not None
                and part.approval.approved is not None
            ):
                approvals[part.tool_call_id] = part.approval
            elif part.state == "output-available":
                output = part.output
                answers[part.tool_call_id] = (
                    output if isinstance(output, str) else msgspec.json.encode(output).decode()
                )
            elif part.state == "output-error":
                answers[part.tool_call_id] = part.error_text or "error"
        if not answers and not approvals:
            raise BadRequest(
                "the last message answers none of the tool calls waiting: "
                + ", ".join(sorted(open_calls))
            )
        for call_id, content in answers.items():
            await self.chat.tool_result(
                owner, row.message.id, ToolResultIn(tool_call_id=call_id, content=content)
            )
        for call_id, approval in approvals.items():
            # addToolApprovalResponse: approved runs the stored arguments, denied tells
            # the model why (turnlog.commands.Chat.tool_approval).
            await self.chat.tool_approval(
                owner,
                row.message.id,
                ToolApprovalIn(
                    tool_call_id=call_id,
                    approved=bool(approval.approved),
                    reason=approval.reason,
                ),
            )
        answers.update(dict.fromkeys(approvals, ""))
        turn = next((t for t in _turns(records) if row.message in t.steps), None)
        user_id = None if turn is None else _user_id(turn)
        return self._turn_frames(cid, user_id, after_seq=row.message.seq, answered=set(answers))

    # -- the stream ----------------------------------------------------------------------------

    async def _turn_frames(
        self,
        cid: uuid.UUID,
        user_id: uuid.UUID | None,
        *,
        after_seq: int = 0,
        answered: frozenset[str] | set[str] = frozenset(),
        stored: UITurn | None = None,
    ) -> AsyncIterator[bytes]:
        """A turn as a UI message stream: ``start``, then each step row after ``after_seq``
        (stored ones whole, the generating one as its live snapshot and then live), then
        the chunks that end the turn, then ``[DONE]``.

        The prefix is taken at one offset: the stored rows before the generating one are
        final, and the generating one's blocks come from the same snapshot as the live
        events after it (``LiveStream.subscribe``), so nothing is missed or sent twice.
        Whether the turn goes on after a step is read from the stored rows, never from the
        stream alone. ``stored`` is the turn as the caller just read it, if it did (saves
        reading it again).
        """
        turn = stored if stored is not None else await self._turn(cid, user_id)
        if turn is None:  # pragma: no cover - the caller just found or made it
            yield DONE_FRAME
            return
        out: list[mapping.Chunk] = [mapping.Start(message_id=turn.message_id)]
        if answered:
            out += mapping.tool_outputs(t for t in turn.tools if t.tool_call_id in answered)
        done_seq = after_seq
        while True:
            pending = [s for s in turn.steps if s.seq > done_seq]
            if not pending:
                out += mapping.terminal(turn.steps[-1])
                yield _frames(out) + DONE_FRAME
                return
            step = pending[0]
            encoder = StepEncoder(str(step.id))
            out.append(StartStep())
            if step.status == "generating":
                yield _frames(out)
                out = []
                async for frame in self._live_step(step, encoder):
                    yield frame
                found = await self._turn(cid, user_id)
                if found is None:  # the conversation was deleted meanwhile
                    yield DONE_FRAME
                    return
                turn = found
                step = next((s for s in turn.steps if s.id == step.id), step)
            else:
                out += encoder.load(step.blocks)
            out += mapping.step_end(encoder, turn.tools_of(step))
            if step.status != "completed":
                out += mapping.terminal(step)
                yield _frames(out) + DONE_FRAME
                return
            done_seq = step.seq

    async def _live_step(self, step: Message, encoder: StepEncoder) -> AsyncIterator[bytes]:
        """The chunks of a generating step until it ends in the store (or the server
        closes).

        Live deltas come from this process's stream of the step, or from a mirror of the
        stream of the process that runs it (``turnlog.follow``); failing both, from its
        stored checkpoints. A step whose generation is gone (its process died) is repaired
        to interrupted on the spot.
        """
        stream = self.registry.get(step.id)
        mirror: Mirror | None = None
        if stream is None:
            record = await self.store.get_message(step.id)
            if record is not None and record.message.status == "generating":
                record = await self.chat.repair_if_orphan(record)
                stream = self.registry.get(step.id)
                if stream is None and record.message.status == "generating":
                    mirror = await self.follower.mirror(step.id)
                    stream = None if mirror is None else mirror.stream
        if stream is not None and not stream.finished:
            async for frame in self._follow_live(stream.subscribe(), encoder, mirror):
                yield frame
        # The stored row decides that the step ended: follow it until it does.
        settings = self.settings
        waited = 0.0
        while not self.closing.is_set():
            record = await self.store.get_message(step.id)
            if record is None:
                return
            if record.message.status == "generating":
                record = await self.chat.repair_if_orphan(record)
            chunks = encoder.load(record.message.blocks)
            if chunks:
                waited = 0.0
                yield _frames(chunks)
            if record.message.status != "generating":
                return
            await anyio.sleep(settings.checkpoint_s)
            waited += settings.checkpoint_s
            if waited >= settings.heartbeat_s:
                waited = 0.0
                yield PING

    async def _follow_live(
        self, sub: Subscription, encoder: StepEncoder, mirror: Mirror | None
    ) -> AsyncIterator[bytes]:
        """Chunks from one subscription to a step's live stream, until its ``done`` (or
        the mirror carrying it is dropped)."""
        heartbeat = self.settings.heartbeat_s
        wait = min(heartbeat, 1.0)
        idle = 0.0
        try:
            # The snapshot the subscription starts from (its init frame, skipped below).
            yield _frames(encoder.load(sub.init_blocks))
            first = True
            while True:
                try:
                    frame = await sub.next_frame(wait)
                except StopAsyncIteration:
                    return
                if frame is None:
                    if mirror is not None and mirror.dropped:
                        return
                    idle += wait
                    if idle >= heartbeat:
                        idle = 0.0
                        yield PING
                    continue
                idle = 0.0
                if frame.startswith(b"event: init\n"):
                    # The first is the snapshot loaded above; a later one resynchronises a
                    # reader that fell behind the ring: catch up from its blocks.
                    if not first:
                        yield _frames(encoder.load(sub.init_blocks))
                else:
                    event = decode_event(frame.split(b"\ndata: ", 1)[1].rstrip(b"\n"))
                    if isinstance(event, Done):
                        return
                    chunks = encoder.event(event)
                    if chunks:
                        yield _frames(chunks)
                first = False
        finally:
            sub.close()


def _turns(records: Iterable[MessageRecord]) -> list[UITurn]:
    return [t for t in mapping.group_turns(list(records)) if isinstance(t, UITurn)]


def _user_id(turn: UITurn) -> uuid.UUID | None:
    return None if turn.user is None else turn.user.message.id


def _frames(chunks: Iterable[mapping.Chunk]) -> bytes:
    return b"".join(b"data: %b\n\n" % mapping.encode_chunk(c) for c in chunks)
