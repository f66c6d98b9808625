"""``GET /v1/tools``: the tools the caller may give a conversation (docs/tools.md)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get

from turnlog.generation.tools.registry import ToolDescriptor
from turnlog.http.common import json_response, runtime, user
from turnlog.http.openapi import api


class ToolList(msgspec.Struct, frozen=True, kw_only=True):
    items: list[ToolDescriptor]


@get("/v1/tools", opt=api("the tools this user may use", {200: ToolList}))
async def list_tools(request: Request[Any, Any, Any]) -> Response[bytes]:
    owner = user(request)
    return json_response(ToolList(items=runtime(request).tools.listing(owner)))


ROUTES = [list_tools]
