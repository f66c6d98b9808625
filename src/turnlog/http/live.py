"""The SSE routes (docs/protocol.md, "Server-sent events"): a message's stream and a
conversation's feed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
import structlog
from litestar import Request, get
from litestar.response import Stream

from turnlog.errors import NotFound
from turnlog.feeds import Feed
from turnlog.http.auth import stream_reader
from turnlog.http.common import (
    Runtime,
    json_encoder,
    last_event_id,
    live_frames,
    parse_id,
    runtime,
    sse,
    user,
)
from turnlog.http.openapi import Text, api
from turnlog.log.projection import Conversation, Message, MessageRecord
from turnlog.streams import PING, LiveStream, done_for, event_frame, init_frame, sse_frame

_SSE = Text("text/event-stream", "server-sent events (docs/protocol.md)")


class StreamQuery(msgspec.Struct, frozen=True, kw_only=True):
    token: str | None = None  # a stream token, instead of the Authorization header


def reader(request: Request[Any, Any, Any]) -> tuple[str, uuid.UUID | None]:
    """The caller, and the one conversation it may read if it came with a stream token.

    Only these two routes read ``?token=`` (a browser's EventSource cannot send headers); the
    request log writes the path without the query, so the token never reaches a log.
    """
    token = request.query_params.get("token")
    if token is None:
        return user(request), None
    owner, conversation_id = stream_reader(runtime(request).secret, token)
    structlog.contextvars.bind_contextvars(user=owner)
    return owner, conversation_id


def _within(scope: uuid.UUID | None, conversation_id: uuid.UUID, what: str) -> None:
    # A stream token for another conversation opens nothing here: 404, existence not revealed.
    if scope is not None and scope != conversation_id:
        raise NotFound(f"{what} not found")


@get(
    "/v1/messages/{mid:str}/stream",
    opt=api("a message's stream: init, stream events, done", {200: _SSE}, query=StreamQuery),
)
async def message_stream(request: Request[Any, Any, Any], mid: str) -> Stream:
    owner, scope = reader(request)
    rt = runtime(request)
    message_id = parse_id(mid, "message")
    gen = rt.engine.streams_here(message_id)
    row: MessageRecord | None = None
    live: LiveStream | None
    if gen is not None:
        # Its owner and conversation are known: no read of the row and the conversation
        # (two round trips per subscriber).
        if gen.owner != owner:
            raise NotFound(f"message {message_id} not found")
        conversation_id, live = gen.turn.conversation_id, gen.stream
    else:
        row, _ = await rt.chat.message(owner, message_id)
        conversation_id, live = row.message.conversation_id, rt.registry.get(message_id)
    _within(scope, conversation_id, f"message {mid!r}")
    after = last_event_id(request)
    structlog.contextvars.bind_contextvars(
        conversation_id=str(conversation_id), message_id=str(message_id)
    )
    if live is None and row is not None and row.message.status == "generating":
        # Another living instance runs it: mirror its live stream (one relay per instance,
        # turnlog.follow). Else its process died (take it over), or it cannot be followed
        # that way: the checkpoints in the store, below.
        mirror = await rt.follower.mirror(message_id)
        if mirror is not None:
            live = mirror.stream
        else:
            row = await rt.chat.repair_if_orphan(row)
            live = rt.registry.get(message_id)
    if live is not None:
        # Streamed without a generator around the live frames.
        return sse(live_frames(live, rt.settings.heartbeat_s, after))
    assert row is not None  # only a row read here has no live stream
    return sse(_message_frames(rt, row))


async def _message_frames(rt: Runtime, row: MessageRecord) -> AsyncIterator[bytes]:
    """A row no stream here or mirror serves: its final frames, or its checkpoints."""
    if row.message.status != "generating":
        for frame in _final_frames(row):
            yield frame
        return
    async for frame in _follow_store(rt, row):
        yield frame


def _final_frames(row: MessageRecord) -> list[bytes]:
    m = row.message
    k = row.stream_seq
    return [init_frame(m.id, k, m.status, m.blocks), event_frame(k + 1, done_for(row))]


async def _follow_store(rt: Runtime, row: MessageRecord) -> AsyncIterator[bytes]:
    """init now, then a fresh init whenever the stored checkpoint moves, then done."""
    m = row.message
    yield init_frame(m.id, row.stream_seq, m.status, m.blocks)
    seen = row.stream_seq
    idle = 0.0
    while not rt.closing.is_set():
        await anyio.sleep(rt.settings.checkpoint_s)
        idle += rt.settings.checkpoint_s
        current = await rt.store.get_message(m.id)
        if current is None:
            return
        if current.message.status == "generating":
            # Its owner may have died meanwhile: never wait for a generation that is gone.
            current = await rt.chat.repair_if_orphan(current)
            live = rt.registry.get(m.id)
            if live is not None:
                # Taken over and continued here: its live stream, from a fresh init.
                async for frame in live_frames(live, rt.settings.heartbeat_s, None):
                    yield frame
                return
        if current.message.status != "generating":
            for frame in _final_frames(current):
                yield frame
            return
        if current.stream_seq != seen:
            seen, idle = current.stream_seq, 0.0
            yield init_frame(m.id, seen, "generating", current.message.blocks)
        elif idle >= rt.settings.heartbeat_s:
            idle = 0.0
            yield PING


@get(
    "/v1/conversations/{cid:str}/live",
    opt=api("a conversation's feed: snapshot, then changes", {200: _SSE}, query=StreamQuery),
)
async def conversation_live(request: Request[Any, Any, Any], cid: str) -> Stream:
    owner, scope = reader(request)
    rt = runtime(request)
    conversation_id = parse_id(cid, "conversation")
    _within(scope, conversation_id, f"conversation {cid!r}")
    last_event_id(request)  # validated; the answer is always a snapshot at the current V
    # Subscribe before reading the snapshot (which also checks the owner), then drop
    # queued changes the snapshot already holds: snapshot at V plus every change after V,
    # none lost, none twice.
    feed = rt.hub.subscribe(conversation_id)
    try:
        conv, messages = await rt.chat.conversation_with_messages(owner, conversation_id)
    except BaseException:
        rt.hub.unsubscribe(conversation_id, feed)
        raise
    rt.hub.seed(conversation_id, conv.version)
    return sse(_feed_frames(rt, conversation_id, feed, conv, messages))


async def _feed_frames(
    rt: Runtime, cid: uuid.UUID, feed: Feed, conv: Conversation, messages: list[Message]
) -> AsyncIterator[bytes]:
    v = conv.version
    try:
        snapshot = {"conversation": conv, "messages": messages, "version": v}
        yield sse_frame(b"snapshot", v, json_encoder.encode(snapshot))
        while True:
            item = await feed.next(rt.settings.heartbeat_s)
            if item is None:
                return
            if item is False:
                yield PING
                continue
            version, data = item
            if version > v:
                yield data
    finally:
        rt.hub.unsubscribe(cid, feed)


ROUTES = [message_stream, conversation_live]
