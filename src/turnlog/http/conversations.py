"""Conversations and their messages: the CRUD routes (docs/protocol.md, "HTTP")."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import structlog
from litestar import Request, Response, delete, get, patch, post, put

from turnlog import versioning
from turnlog.commands import (
    MAX_PAGE,
    ConversationIn,
    ConversationPatch,
    EditIn,
    MessageIn,
    RetryIn,
    ToolResultIn,
)
from turnlog.errors import BadRequest
from turnlog.http import export
from turnlog.http.common import body, json_response, parse_id, query, runtime, user
from turnlog.http.openapi import (
    ConversationList,
    ConversationWithMessages,
    Exported,
    MessageList,
    RetryAnswer,
    SendAnswer,
    Text,
    ToolResultAnswer,
    api,
)
from turnlog.log.projection import Conversation, Message
from turnlog.product import metadata


class ListQuery(msgspec.Struct, frozen=True, kw_only=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE)] = 20
    cursor: str | None = None
    q: str | None = None  # full-text search: ranked, each item with a `match` snippet


class MessagesQuery(msgspec.Struct, frozen=True, kw_only=True):
    all: bool = False  # every row of every version, not only the active path


class ExportQuery(msgspec.Struct, frozen=True, kw_only=True):
    format: Literal["markdown", "md", "json"] = "markdown"
    lang: str | None = None  # any BCP 47 tag; normalized, never an error


# A send, a retry or an answer starts a generation: busy (409), limited (429), draining (503).
_GENERATES = (409, 429, 503)


@post(
    "/v1/conversations",
    status_code=201,
    opt=api(
        "create a conversation",
        {201: Conversation},
        body=ConversationIn,
        body_required=False,
        errors=(403,),
    ),
)
async def create_conversation(request: Request[Any, Any, Any]) -> Response[bytes]:
    owner = user(request)
    data = await body(request, ConversationIn, empty_ok=True)
    conv = await runtime(request).chat.create_conversation(owner, data)
    return json_response(conv, 201)


@get(
    "/v1/conversations",
    opt=api(
        "list conversations, newest first; with q, those matching it, best first;"
        " metadata.KEY=VALUE filters (all must hold)",
        {200: ConversationList},
        query=ListQuery,
    ),
)
async def list_conversations(request: Request[Any, Any, Any]) -> Response[bytes]:
    owner = user(request)
    q = query(request, ListQuery)
    try:
        wanted = metadata.filters(request.query_params.multi_items())
    except metadata.BadMetadata as exc:
        raise BadRequest(str(exc)) from None
    items, nxt = await runtime(request).chat.list_conversations(
        owner, limit=q.limit, cursor=q.cursor or None, q=q.q, metadata=wanted
    )
    return json_response(ConversationList(items=items, next=nxt))


@get(
    "/v1/conversations/{cid:str}",
    opt=api("a conversation and its messages", {200: ConversationWithMessages}),
)
async def get_conversation(request: Request[Any, Any, Any], cid: str) -> Response[bytes]:
    owner = user(request)
    rt = runtime(request)
    conv, messages = await rt.chat.conversation_with_messages(owner, parse_id(cid, "conversation"))
    return json_response(ConversationWithMessages(conversation=conv, messages=messages))


@patch(
    "/v1/conversations/{cid:str}",
    opt=api(
        "change title, model, options or system prompt",
        {200: Conversation},
        body=ConversationPatch,
        body_required=False,
        errors=(403, 409),
    ),
)
async def update_conversation(request: Request[Any, Any, Any], cid: str) -> Response[bytes]:
    owner = user(request)
    data = await body(request, ConversationPatch, empty_ok=True)
    conv = await runtime(request).chat.update_conversation(
        owner, parse_id(cid, "conversation"), data
    )
    return json_response(conv)


@delete(
    "/v1/conversations/{cid:str}",
    status_code=204,
    opt=api("delete a conversation (then 404 everywhere)", {204: None}, errors=(409,)),
)
async def delete_conversation(request: Request[Any, Any, Any], cid: str) -> None:
    owner = user(request)
    await runtime(request).chat.delete_conversation(owner, parse_id(cid, "conversation"))


@post(
    "/v1/conversations/{cid:str}/messages",
    status_code=201,
    opt=api(
        "send a user message; its answer starts generating",
        {201: SendAnswer, 200: SendAnswer},
        body=MessageIn,
        errors=_GENERATES,
    ),
)
async def send_message(request: Request[Any, Any, Any], cid: str) -> Response[bytes]:
    owner = user(request)
    conversation_id = parse_id(cid, "conversation")
    data = await body(request, MessageIn)
    sent = await runtime(request).chat.send(owner, conversation_id, data)
    structlog.contextvars.bind_contextvars(
        conversation_id=str(conversation_id), message_id=str(sent.assistant_message.id)
    )
    return json_response(SendAnswer.of(sent), 201 if sent.created else 200)


@get(
    "/v1/conversations/{cid:str}/messages",
    opt=api(
        "the messages of the active path in canonical (seq) order (all=true: every version)",
        {200: MessageList},
        query=MessagesQuery,
    ),
)
async def list_messages(request: Request[Any, Any, Any], cid: str) -> Response[bytes]:
    owner = user(request)
    q = query(request, MessagesQuery)
    items = await runtime(request).chat.list_messages(
        owner, parse_id(cid, "conversation"), every_version=q.all
    )
    return json_response(MessageList(items=items))


@put(
    "/v1/conversations/{cid:str}/messages/{mid:str}",
    status_code=200,
    opt=api(
        "edit a user message; with resend: true, a new version of it, answered",
        {200: Message, 201: SendAnswer},
        body=EditIn,
        errors=_GENERATES,
    ),
)
async def edit_message(request: Request[Any, Any, Any], cid: str, mid: str) -> Response[bytes]:
    owner = user(request)
    conversation_id = parse_id(cid, "conversation")
    message_id = parse_id(mid, "message")
    data = await body(request, EditIn)
    rt = runtime(request)
    if data.resend:
        sent = await versioning.resend(rt.chat, owner, conversation_id, message_id, data)
        structlog.contextvars.bind_contextvars(
            conversation_id=str(conversation_id), message_id=str(sent.assistant_message.id)
        )
        return json_response(SendAnswer.of(sent), 201)
    row = await rt.chat.edit(owner, conversation_id, message_id, data)
    return json_response(row)


@get(
    "/v1/conversations/{cid:str}/export",
    opt=api(
        "the conversation as Markdown or JSON, from stored rows only",
        {200: (Text("text/markdown", "the conversation as Markdown"), Exported)},
        query=ExportQuery,
    ),
)
async def export_conversation(request: Request[Any, Any, Any], cid: str) -> Response[bytes]:
    owner = user(request)
    rt = runtime(request)
    q = query(request, ExportQuery)
    conv, rows = await rt.chat.conversation_with_messages(owner, parse_id(cid, "conversation"))
    lang = export.normalize_lang(q.lang)
    if q.format == "json":
        return json_response(Exported(conversation=conv, messages=rows))
    text = export.markdown(conv, rows, lang)
    # `media_type` without a charset: litestar adds `; charset=utf-8` to text types itself.
    return Response(text.encode(), media_type="text/markdown", headers={"Content-Language": lang})


# -- messages ----------------------------------------------------------------------------


@post(
    "/v1/messages/{mid:str}/cancel",
    status_code=200,
    opt=api(
        "stop a generating answer, or withdraw an unanswered question",
        {200: Message},
        errors=(409,),
    ),
)
async def cancel_message(request: Request[Any, Any, Any], mid: str) -> Response[bytes]:
    owner = user(request)
    row = await runtime(request).chat.cancel(owner, parse_id(mid, "message"))
    return json_response(row)


@post(
    "/v1/messages/{mid:str}/retry",
    status_code=201,
    opt=api(
        "answer again with a new assistant row (options given replace the failed turn's)",
        {201: RetryAnswer},
        body=RetryIn,
        body_required=False,
        errors=_GENERATES,
    ),
)
async def retry_message(request: Request[Any, Any, Any], mid: str) -> Response[bytes]:
    owner = user(request)
    message_id = parse_id(mid, "message")
    data = await body(request, RetryIn, empty_ok=True)
    row = await versioning.regenerate(
        runtime(request).chat, owner, message_id, versioning.RegenerateIn(options=data.options)
    )
    return json_response(RetryAnswer(assistant_message=row), 201)


@post(
    "/v1/messages/{mid:str}/regenerate",
    status_code=201,
    opt=api(
        "a new version of the turn this assistant message ends, made active and answered",
        {201: RetryAnswer},
        body=versioning.RegenerateIn,
        body_required=False,
        errors=(*_GENERATES, 403),
    ),
)
async def regenerate_message(request: Request[Any, Any, Any], mid: str) -> Response[bytes]:
    owner = user(request)
    message_id = parse_id(mid, "message")
    data = await body(request, versioning.RegenerateIn, empty_ok=True)
    row = await versioning.regenerate(runtime(request).chat, owner, message_id, data)
    structlog.contextvars.bind_contextvars(message_id=str(row.id))
    return json_response(RetryAnswer(assistant_message=row), 201)


@post(
    "/v1/messages/{mid:str}/select",
    status_code=200,
    opt=api(
        "make the path through this message active (to the newest leaf below it)",
        {200: Conversation},
    ),
)
async def select_message(request: Request[Any, Any, Any], mid: str) -> Response[bytes]:
    owner = user(request)
    conv = await versioning.select(runtime(request).chat, owner, parse_id(mid, "message"))
    return json_response(conv)


@post(
    "/v1/messages/{mid:str}/tool-results",
    status_code=201,
    opt=api(
        "answer a pending question; generation resumes",
        {201: ToolResultAnswer},
        body=ToolResultIn,
        errors=_GENERATES,
    ),
)
async def tool_results(request: Request[Any, Any, Any], mid: str) -> Response[bytes]:
    owner = user(request)
    message_id = parse_id(mid, "message")
    data = await body(request, ToolResultIn)
    tool_row, assistant = await runtime(request).chat.tool_result(owner, message_id, data)
    return json_response(ToolResultAnswer(tool_message=tool_row, assistant_message=assistant), 201)


ROUTES = [
    create_conversation,
    list_conversations,
    get_conversation,
    update_conversation,
    delete_conversation,
    send_message,
    list_messages,
    edit_message,
    export_conversation,
    cancel_message,
    retry_message,
    regenerate_message,
    select_message,
    tool_results,
]
