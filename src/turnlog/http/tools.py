"""Tools over HTTP (docs/tools.md): ``GET /v1/tools``, the tools the caller may give a
conversation, and ``POST /v1/messages/{mid}/tool-approvals``, the user's yes or no to a
call that waits for it."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get, post

from turnlog.commands import ToolApprovalIn
from turnlog.generation.tools.registry import ToolDescriptor
from turnlog.http.common import body, json_response, parse_id, runtime, user
from turnlog.http.openapi import api
from turnlog.log.projection import Message


class ToolList(msgspec.Struct, frozen=True, kw_only=True):
    items: list[ToolDescriptor]


class ToolApprovalAnswer(msgspec.Struct, frozen=True, kw_only=True):
    # The next step's row when the answer resumed the turn (None: calls still wait).
    assistant_message: Message | None


@get("/v1/tools", opt=api("the tools this user may use", {200: ToolList}))
async def list_tools(request: Request[Any, Any, Any]) -> Response[bytes]:
    owner = user(request)
    return json_response(ToolList(items=runtime(request).tools.listing(owner)))


@post(
    "/v1/messages/{mid:str}/tool-approvals",
    status_code=201,
    opt=api(
        "approve or deny a tool call that waits for it; an approved call runs with exactly the"
        " stored arguments; generation resumes",
        {201: ToolApprovalAnswer},
        body=ToolApprovalIn,
        errors=(409, 429, 503),
    ),
)
async def tool_approvals(request: Request[Any, Any, Any], mid: str) -> Response[bytes]:
    owner = user(request)
    message_id = parse_id(mid, "message")
    data = await body(request, ToolApprovalIn)
    assistant = await runtime(request).chat.tool_approval(owner, message_id, data)
    return json_response(ToolApprovalAnswer(assistant_message=assistant), 201)


ROUTES = [list_tools, tool_approvals]
