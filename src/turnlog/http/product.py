"""The routes of what a chat product keeps around the answers: feedback on
answers, prompt commands and agents. Search and metadata are in ``conversations.py``."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get, put

from turnlog.commands import BadRequest
from turnlog.http.common import body, json_response, parse_id, runtime, user
from turnlog.http.openapi import api
from turnlog.log.projection import Message
from turnlog.log.store import Appended
from turnlog.metrics import provider_and_model
from turnlog.product import agents, feedback


@put(
    "/v1/messages/{mid:str}/feedback",
    opt=api(
        "rate an answer up or down (null clears it), with an optional comment",
        {200: Message},
        body=feedback.FeedbackIn,
        errors=(409,),
    ),
)
async def put_feedback(request: Request[Any, Any, Any], mid: str) -> Response[bytes]:
    owner = user(request)
    message_id = parse_id(mid, "message")
    data = await body(request, feedback.FeedbackIn)
    rt = runtime(request)
    try:
        feedback.check(data)

        async def attempt() -> Appended:
            row, conv = await rt.chat.message(owner, message_id)
            return await feedback.give(rt.store, row, conv, data, at=rt.chat.now(), actor=owner)

        row = feedback.answer_of(await rt.store.retrying(attempt))
    except feedback.BadFeedback as exc:
        raise BadRequest(str(exc)) from None
    provider, model = provider_and_model(row.model or "")
    rating = data.rating or "cleared"
    rt.metrics.child(rt.metrics.feedback, provider, model, rating).inc()
    return json_response(row)


class AgentInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str
    model: str
    tools: list[str] | None
    options: dict[str, Any]
    system_prompt: str | None


class AgentList(msgspec.Struct, frozen=True, kw_only=True):
    items: list[AgentInfo]


@get("/v1/agents", opt=api("the agents (named presets) this user may use", {200: AgentList}))
async def list_agents(request: Request[Any, Any, Any]) -> Response[bytes]:
    owner = user(request)
    settings = runtime(request).settings
    items = [
        AgentInfo(
            name=a.name,
            description=a.description,
            model=a.model or settings.default_model,
            tools=a.tools,
            options=a.options,
            system_prompt=a.system_prompt,
        )
        for a in agents.listing(settings.models, owner, settings.default_model)
    ]
    return json_response(AgentList(items=items))


ROUTES = [put_feedback, list_agents]
