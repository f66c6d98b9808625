"""Conversations and their messages: the CRUD routes of CONTRACT.md section 2."""

from __future__ import annotations

from typing import Any

import structlog
from litestar import Request, Response, delete, get, patch, post, put

from turnlog.commands import (
    BadRequest,
    ConversationIn,
    ConversationPatch,
    EditIn,
    MessageIn,
    ToolResultIn,
)
from turnlog.http import export
from turnlog.http.common import body, json_response, parse_id, runtime, user


@post("/v1/conversations", status_code=201)
async def create_conversation(request: Request[Any, Any, Any]) -> Response[bytes]:
    owner = user(request)
    data = await body(request, ConversationIn, empty_ok=True)
    conv = await runtime(request).chat.create_conversation(owner, data)
    return json_response(conv, 201)


@get("/v1/conversations")
async def list_conversations(request: Request[Any, Any, Any]) -> Response[bytes]:
    owner = user(request)
    raw_limit = request.query_params.get("limit") or "20"
    try:
        limit = int(raw_limit)
    except ValueError:
        raise BadRequest(f"limit must be an integer, got {raw_limit!r}") from None
    items, nxt = await runtime(request).chat.list_conversations(
        owner, limit=limit, cursor=request.query_params.get("cursor") or None
    )
    return json_response({"items": items, "next": nxt})


@get("/v1/conversations/{cid:str}")
async def get_conversation(request: Request[Any, Any, Any], cid: str) -> Response[bytes]:
    owner = user(request)
    rt = runtime(request)
    conv, messages = await rt.chat.conversation_with_messages(owner, parse_id(cid, "conversation"))
    return json_response({"conversation": conv, "messages": messages})


@patch("/v1/conversations/{cid:str}")
async def update_conversation(request: Request[Any, Any, Any], cid: str) -> Response[bytes]:
    owner = user(request)
    data = await body(request, ConversationPatch, empty_ok=True)
    conv = await runtime(request).chat.update_conversation(
        owner, parse_id(cid, "conversation"), data
    )
    return json_response(conv)


@delete("/v1/conversations/{cid:str}", status_code=204)
async def delete_conversation(request: Request[Any, Any, Any], cid: str) -> None:
    owner = user(request)
    await runtime(request).chat.delete_conversation(owner, parse_id(cid, "conversation"))


@post("/v1/conversations/{cid:str}/messages", status_code=201)
async def send_message(request: Request[Any, Any, Any], cid: str) -> Response[bytes]:
    owner = user(request)
    conversation_id = parse_id(cid, "conversation")
    data = await body(request, MessageIn)
    sent = await runtime(request).chat.send(owner, conversation_id, data)
    structlog.contextvars.bind_contextvars(
        conversation_id=str(conversation_id), message_id=str(sent.assistant_message.id)
    )
    return json_response(
        {"user_message": sent.user_message, "assistant_message": sent.assistant_message},
        201 if sent.created else 200,
    )


@get("/v1/conversations/{cid:str}/messages")
async def list_messages(request: Request[Any, Any, Any], cid: str) -> Response[bytes]:
    owner = user(request)
    items = await runtime(request).chat.list_messages(owner, parse_id(cid, "conversation"))
    return json_response({"items": items})


@put("/v1/conversations/{cid:str}/messages/{mid:str}")
async def edit_message(request: Request[Any, Any, Any], cid: str, mid: str) -> Response[bytes]:
    owner = user(request)
    conversation_id = parse_id(cid, "conversation")
    message_id = parse_id(mid, "message")
    data = await body(request, EditIn)
    row = await runtime(request).chat.edit(owner, conversation_id, message_id, data)
    return json_response(row)


@get("/v1/conversations/{cid:str}/export")
async def export_conversation(request: Request[Any, Any, Any], cid: str) -> Response[bytes]:
    owner = user(request)
    rt = runtime(request)
    conv, rows = await rt.chat.conversation_with_messages(owner, parse_id(cid, "conversation"))
    fmt = (request.query_params.get("format") or "markdown").lower()
    lang = export.normalize_lang(request.query_params.get("lang"))
    if fmt == "json":
        return json_response({"conversation": conv, "messages": rows})
    if fmt not in ("markdown", "md"):
        raise BadRequest(f"format must be 'markdown' or 'json', got {fmt!r}")
    text = export.markdown(conv, rows, lang)
    return Response(
        text.encode(),
        media_type="text/markdown; charset=utf-8",
        headers={"Content-Language": lang},
    )


# -- messages ----------------------------------------------------------------------------


@post("/v1/messages/{mid:str}/cancel", status_code=200)
async def cancel_message(request: Request[Any, Any, Any], mid: str) -> Response[bytes]:
    owner = user(request)
    row = await runtime(request).chat.cancel(owner, parse_id(mid, "message"))
    return json_response(row)


@post("/v1/messages/{mid:str}/retry", status_code=201)
async def retry_message(request: Request[Any, Any, Any], mid: str) -> Response[bytes]:
    owner = user(request)
    row = await runtime(request).chat.retry(owner, parse_id(mid, "message"))
    return json_response({"assistant_message": row}, 201)


@post("/v1/messages/{mid:str}/tool-results", status_code=201)
async def tool_results(request: Request[Any, Any, Any], mid: str) -> Response[bytes]:
    owner = user(request)
    message_id = parse_id(mid, "message")
    data = await body(request, ToolResultIn)
    tool_row, assistant = await runtime(request).chat.tool_result(owner, message_id, data)
    return json_response({"tool_message": tool_row, "assistant_message": assistant}, 201)


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
    tool_results,
]
