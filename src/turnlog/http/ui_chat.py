"""The AI SDK ``useChat`` routes (docs/ui-chat.md): the "UI message stream".

``POST /v1/ui/chat`` takes what ``DefaultChatTransport`` sends and answers the turn as a UI
message stream; ``GET /v1/ui/chat/{id}/stream`` resumes the generating turn from its start;
``POST …/stop`` cancels it; ``GET …/messages`` hydrates ``useChat`` from the stored rows.
Each route parses the request, asks the adapter (``turnlog.uichat.UIChat``) and answers
with what it returns.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response, get, post
from litestar.response import Stream

from turnlog.http.common import SSE_HEADERS, body, json_response, runtime, user
from turnlog.uichat import CHAT_NAMESPACE, ChatIn, UIChat

__all__ = ["CHAT_NAMESPACE", "ROUTES", "ChatIn"]

UI_HEADERS = {
    **SSE_HEADERS,
    "Connection": "keep-alive",
    "x-vercel-ai-ui-message-stream": "v1",
}


def _adapter(request: Request[Any, Any, Any]) -> UIChat:
    rt = runtime(request)
    return UIChat(rt.store, rt.chat, rt.registry, rt.follower, rt.settings, rt.closing)


def _ui_stream(frames: AsyncIterator[bytes]) -> Stream:
    return Stream(frames, media_type="text/event-stream", headers=UI_HEADERS)


@post("/v1/ui/chat", status_code=200)
async def ui_chat(request: Request[Any, Any, Any]) -> Stream:
    owner = user(request)
    data = await body(request, ChatIn)
    return _ui_stream(await _adapter(request).answer(owner, data))


@get("/v1/ui/chat/{chat_id:str}/stream")
async def ui_chat_resume(request: Request[Any, Any, Any], chat_id: str) -> Response[Any]:
    frames = await _adapter(request).resume(user(request), chat_id)
    if frames is None:
        return Response(content=None, status_code=204)
    return _ui_stream(frames)


@post("/v1/ui/chat/{chat_id:str}/stop", status_code=200)
async def ui_chat_stop(request: Request[Any, Any, Any], chat_id: str) -> Response[bytes]:
    return json_response(await _adapter(request).stop(user(request), chat_id))


@get("/v1/ui/chat/{chat_id:str}/messages")
async def ui_chat_messages(request: Request[Any, Any, Any], chat_id: str) -> Response[bytes]:
    return json_response(await _adapter(request).messages(user(request), chat_id))


ROUTES = [ui_chat, ui_chat_resume, ui_chat_stop, ui_chat_messages]
