"""The AI SDK ``useChat`` routes of CONTRACT.md section 3b (the "UI message stream").

``POST /v1/ui/chat`` takes what ``DefaultChatTransport`` sends and answers the turn as a UI
message stream; ``GET /v1/ui/chat/{id}/stream`` resumes the generating turn from its start;
``POST …/stop`` cancels it; ``GET …/messages`` hydrates ``useChat`` from the stored rows.
What the chunks are is decided in :mod:`turnlog.uichat` (pure); this module only reads rows
and live streams and writes the chunks out.

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
from typing import Any, Literal

import anyio
import msgspec
import psycopg
import structlog
from litestar import Request, Response, get, post
from litestar.response import Stream
from turnlog_reducer import Done, decode_event

from turnlog import uichat
from turnlog.commands import (
    BadRequest,
    ConversationIn,
    MessageIn,
    NotGenerating,
    RetryIn,
    ToolResultIn,
    unanswered,
)
from turnlog.follow import Mirror
from turnlog.http.common import PING, SSE_HEADERS, Runtime, body, json_response, runtime, user
from turnlog.log.projection import ConversationRecord, DomainError, Message, MessageRecord, NotFound
from turnlog.streams import Subscription
from turnlog.uichat import StartStep, StepEncoder, Turn

CHAT_NAMESPACE = uuid.UUID("5b0c2d1e-7a43-4f0e-9c59-2f3b8d6e1a10")
MAX_CHAT_ID_CHARS = 200
UI_HEADERS = {
    **SSE_HEADERS,
    "Connection": "keep-alive",
    "x-vercel-ai-ui-message-stream": "v1",
}
DONE_FRAME = b"data: [DONE]\n\n"

log = structlog.get_logger("turnlog.http")


# -- request bodies: what DefaultChatTransport sends ----------------------------------------


class UIPartIn(msgspec.Struct, kw_only=True, rename="camel"):
    """A part of a client's UIMessage; only what a turn needs is read, the rest ignored."""

    type: str
    text: str | None = None
    tool_call_id: str | None = None
    state: str | None = None
    output: Any = None
    error_text: str | None = None


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


# -- chat ids ------------------------------------------------------------------------------


def _check_chat_id(chat_id: str) -> None:
    if not chat_id or len(chat_id) > MAX_CHAT_ID_CHARS or "\x00" in chat_id:
        raise BadRequest(
            f"chat id must be 1 to {MAX_CHAT_ID_CHARS} characters without NUL, got {chat_id!r}"
        )


async def _conversation(
    rt: Runtime, owner: str, chat_id: str, *, create: bool = False
) -> ConversationRecord | None:
    """The caller's conversation for ``chat_id`` (see the module doc), created if asked."""
    _check_chat_id(chat_id)
    try:
        named: uuid.UUID | None = uuid.UUID(chat_id)
    except ValueError:
        named = None
    if named is not None:
        record = await rt.store.get_conversation(named)
        if record is not None and record.owner == owner:
            return record
    cid = uuid.uuid5(CHAT_NAMESPACE, f"{owner}\x00{chat_id}")
    record = await rt.store.get_conversation(cid)
    if record is None and create:
        # A concurrent first request may have created it: read it below either way.
        with contextlib.suppress(DomainError, psycopg.errors.UniqueViolation):
            await rt.chat.create_conversation(owner, ConversationIn(), cid=cid)
        record = await rt.store.get_conversation(cid)
    if record is None or record.owner != owner:
        if create:
            raise NotFound(f"chat {chat_id!r} not found")
        return None
    structlog.contextvars.bind_contextvars(conversation_id=str(cid))
    return record


def _turns(records: Iterable[MessageRecord]) -> list[Turn]:
    return [t for t in uichat.group_turns(list(records)) if isinstance(t, Turn)]


def _user_id(turn: Turn) -> uuid.UUID | None:
    return None if turn.user is None else turn.user.message.id


async def _turn(rt: Runtime, cid: uuid.UUID, user_id: uuid.UUID | None) -> Turn | None:
    """The turn answering user row ``user_id``, as stored now."""
    for turn in _turns(await rt.store.list_messages(cid)):
        if _user_id(turn) == user_id:
            return turn
    return None


# -- routes --------------------------------------------------------------------------------


@post("/v1/ui/chat", status_code=200)
async def ui_chat(request: Request[Any, Any, Any]) -> Stream:
    owner = user(request)
    rt = runtime(request)
    data = await body(request, ChatIn)
    if not data.messages:
        raise BadRequest("messages is empty; expected the chat's messages, the last one new")
    last = data.messages[-1]
    if last.role not in ("user", "assistant"):
        raise BadRequest(f"the last message's role is {last.role!r}; expected user or assistant")
    sending = data.trigger == "submit-message" and last.role == "user"
    message = MessageIn(
        content="\n".join(p.text for p in last.parts if p.type == "text" and p.text),
        client_message_id=last.id,
        options=data.options,
    )
    conv = await _conversation(rt, owner, data.id)
    if conv is None:
        if not sending:
            raise NotFound(f"chat {data.id!r} not found")
        # Only a message that would be taken creates the chat: bad input writes nothing.
        rt.chat.check_message(message)
        rt.chat.check_model(owner, rt.settings.default_model, data.options or {})
        conv = await _conversation(rt, owner, data.id, create=True)
        assert conv is not None
    cid = conv.conversation.id
    if data.trigger == "regenerate-message":
        frames = await _regenerate(rt, owner, cid, data.options)
    elif sending:
        sent = await rt.chat.send(owner, cid, message)
        frames = _turn_frames(rt, cid, sent.user_message.id)
    else:
        frames = await _answer(rt, owner, cid, last)
    return _ui_stream(frames)


@get("/v1/ui/chat/{chat_id:str}/stream")
async def ui_chat_resume(request: Request[Any, Any, Any], chat_id: str) -> Response[Any]:
    owner = user(request)
    rt = runtime(request)
    conv = await _conversation(rt, owner, chat_id)
    if conv is None or conv.conversation.state != "generating":
        return Response(content=None, status_code=204)
    cid = conv.conversation.id
    generating = [t for t in _turns(await rt.store.list_messages(cid)) if t.generating]
    if not generating:
        return Response(content=None, status_code=204)
    turn = generating[-1]
    return _ui_stream(_turn_frames(rt, cid, _user_id(turn), stored=turn))


@post("/v1/ui/chat/{chat_id:str}/stop", status_code=200)
async def ui_chat_stop(request: Request[Any, Any, Any], chat_id: str) -> Response[bytes]:
    owner = user(request)
    rt = runtime(request)
    conv = await _conversation(rt, owner, chat_id)
    target: MessageRecord | None = None
    if conv is not None:
        records = await rt.store.list_messages(conv.conversation.id)
        steps = [r for r in records if r.message.role == "assistant"]
        generating = [r for r in steps if r.message.status == "generating"]
        if generating:
            target = generating[-1]
        elif conv.conversation.state == "awaiting_input" and steps:
            target = steps[-1]
    if target is None:
        raise NotGenerating(f"nothing is generating in chat {chat_id!r}")
    row = await rt.chat.cancel(owner, target.message.id)
    return json_response(row)


@get("/v1/ui/chat/{chat_id:str}/messages")
async def ui_chat_messages(request: Request[Any, Any, Any], chat_id: str) -> Response[bytes]:
    owner = user(request)
    rt = runtime(request)
    conv = await _conversation(rt, owner, chat_id)
    if conv is None:
        return json_response([])
    return json_response(uichat.ui_messages(await rt.store.list_messages(conv.conversation.id)))


# -- what a POST starts ---------------------------------------------------------------------


async def _regenerate(
    rt: Runtime, owner: str, cid: uuid.UUID, options: dict[str, Any] | None
) -> AsyncIterator[bytes]:
    """Retry the last turn's last step (interrupted, failed or aborted), with ``options``
    in place of the failed step's if given; answer the turn."""
    turns = _turns(await rt.store.list_messages(cid))
    if not turns:
        raise NotGenerating("this chat has no answer to regenerate")
    await rt.chat.retry(owner, turns[-1].steps[-1].id, RetryIn(options=options))
    return _turn_frames(rt, cid, _user_id(turns[-1]))


async def _answer(
    rt: Runtime, owner: str, cid: uuid.UUID, last: UIMessageIn
) -> AsyncIterator[bytes]:
    """The client answered interactive tool calls (``addToolOutput``, then send): record
    each answer as a tool result, which resumes the turn; answer its continuation."""
    records = await rt.store.list_messages(cid)
    waiting = [r for r in records if r.message.role == "assistant" and unanswered(r)]
    if not waiting:
        raise NotGenerating("nothing in this chat waits for a tool result")
    row = waiting[-1]
    open_calls = set(unanswered(row))
    answers: dict[str, str] = {}
    for part in last.parts:
        if part.tool_call_id not in open_calls:
            continue
        if part.state == "output-available":
            output = part.output
            answers[part.tool_call_id] = (
                output if isinstance(output, str) else msgspec.json.encode(output).decode()
            )
        elif part.state == "output-error":
            answers[part.tool_call_id] = part.error_text or "error"
    if not answers:
        raise BadRequest(
            "the last message answers none of the tool calls waiting: "
            + ", ".join(sorted(open_calls))
        )
    for call_id, content in answers.items():
        await rt.chat.tool_result(
            owner, row.message.id, ToolResultIn(tool_call_id=call_id, content=content)
        )
    turn = next((t for t in _turns(records) if row.message in t.steps), None)
    user_id = None if turn is None else _user_id(turn)
    return _turn_frames(rt, cid, user_id, after_seq=row.message.seq, answered=set(answers))


# -- the stream ------------------------------------------------------------------------------


def _ui_stream(frames: AsyncIterator[bytes]) -> Stream:
    return Stream(frames, media_type="text/event-stream", headers=UI_HEADERS)


def _frames(chunks: Iterable[uichat.Chunk]) -> bytes:
    return b"".join(b"data: %b\n\n" % uichat.encode_chunk(c) for c in chunks)


async def _turn_frames(
    rt: Runtime,
    cid: uuid.UUID,
    user_id: uuid.UUID | None,
    *,
    after_seq: int = 0,
    answered: frozenset[str] | set[str] = frozenset(),
    stored: Turn | None = None,
) -> AsyncIterator[bytes]:
    """A turn as a UI message stream: ``start``, then each step row after ``after_seq``
    (stored ones whole, the generating one as its live snapshot and then live), then the
    chunks that end the turn, then ``[DONE]``.

    The prefix is taken at one offset: the stored rows before the generating one are final,
    and the generating one's blocks come from the same snapshot as the live events after
    it (``LiveStream.subscribe``), so nothing is missed or sent twice. Whether the turn
    goes on after a step is read from the stored rows, never from the stream alone.
    ``stored`` is the turn as the caller just read it, if it did (saves reading it again).
    """
    turn = stored if stored is not None else await _turn(rt, cid, user_id)
    if turn is None:  # pragma: no cover - the caller just found or made it
        yield DONE_FRAME
        return
    out: list[uichat.Chunk] = [uichat.Start(message_id=turn.message_id)]
    if answered:
        out += uichat.tool_outputs(t for t in turn.tools if t.tool_call_id in answered)
    done_seq = after_seq
    while True:
        pending = [s for s in turn.steps if s.seq > done_seq]
        if not pending:
            out += uichat.terminal(turn.steps[-1])
            yield _frames(out) + DONE_FRAME
            return
        step = pending[0]
        encoder = StepEncoder(str(step.id))
        out.append(StartStep())
        if step.status == "generating":
            yield _frames(out)
            out = []
            async for frame in _live_step(rt, step, encoder):
                yield frame
            found = await _turn(rt, cid, user_id)
            if found is None:  # the conversation was deleted meanwhile
                yield DONE_FRAME
                return
            turn = found
            step = next((s for s in turn.steps if s.id == step.id), step)
        else:
            out += encoder.load(step.blocks)
        out += uichat.step_end(encoder, turn.tools_of(step))
        if step.status != "completed":
            out += uichat.terminal(step)
            yield _frames(out) + DONE_FRAME
            return
        done_seq = step.seq


async def _live_step(rt: Runtime, step: Message, encoder: StepEncoder) -> AsyncIterator[bytes]:
    """The chunks of a generating step until it ends in the store (or the server closes).

    Live deltas come from this process's stream of the step, or from a mirror of the
    stream of the process that runs it (``turnlog.follow``); failing both, from its stored
    checkpoints. A step whose generation is gone (its process died) is repaired to
    interrupted on the spot.
    """
    stream = rt.registry.get(step.id)
    mirror: Mirror | None = None
    if stream is None:
        record = await rt.store.get_message(step.id)
        if record is not None and record.message.status == "generating":
            record = await rt.chat.repair_if_orphan(record)
            stream = rt.registry.get(step.id)
            if stream is None and record.message.status == "generating":
                mirror = await rt.follower.mirror(step.id)
                stream = None if mirror is None else mirror.stream
    if stream is not None and not stream.finished:
        async for frame in _follow_live(rt, stream.subscribe(), encoder, mirror):
            yield frame
    # The stored row decides that the step ended: follow it until it does.
    waited = 0.0
    while not rt.closing.is_set():
        record = await rt.store.get_message(step.id)
        if record is None:
            return
        if record.message.status == "generating":
            record = await rt.chat.repair_if_orphan(record)
        chunks = encoder.load(record.message.blocks)
        if chunks:
            waited = 0.0
            yield _frames(chunks)
        if record.message.status != "generating":
            return
        await anyio.sleep(rt.settings.checkpoint_s)
        waited += rt.settings.checkpoint_s
        if waited >= rt.settings.heartbeat_s:
            waited = 0.0
            yield PING


async def _follow_live(
    rt: Runtime, sub: Subscription, encoder: StepEncoder, mirror: Mirror | None
) -> AsyncIterator[bytes]:
    """Chunks from one subscription to a step's live stream, until its ``done`` (or the
    mirror carrying it is dropped)."""
    heartbeat = rt.settings.heartbeat_s
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


ROUTES = [ui_chat, ui_chat_resume, ui_chat_stop, ui_chat_messages]
