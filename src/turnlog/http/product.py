"""The routes of what a chat product keeps around the answers: feedback on
answers, prompt commands and agents. Search and metadata are in ``conversations.py``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post, put

from turnlog.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    TooLarge,
)
from turnlog.http.common import body, json_response, parse_id, runtime, user
from turnlog.http.openapi import api
from turnlog.log.projection import Message
from turnlog.log.store import Appended
from turnlog.metrics import provider_and_model
from turnlog.product import agents, feedback, prompts
from turnlog.product.config import Prompt


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


# -- prompt commands -----------------------------------------------------------------------


@contextmanager
def _prompt_errors() -> Iterator[None]:
    try:
        yield
    except prompts.BadPrompt as exc:
        raise BadRequest(str(exc)) from None
    except prompts.PromptTooLarge as exc:
        raise TooLarge(str(exc)) from None
    except prompts.ReadOnly as exc:
        raise Forbidden(str(exc)) from None
    except prompts.Taken as exc:
        raise Conflict(str(exc)) from None


@get(
    "/v1/prompts",
    opt=api("the configured prompt commands, then this user's own", {200: prompts.PromptList}),
)
async def list_prompts(request: Request[Any, Any, Any]) -> Response[bytes]:
    owner = user(request)
    items = await runtime(request).chat.prompts.listing(owner)
    return json_response(prompts.PromptList(items=items))


@post(
    "/v1/prompts",
    status_code=201,
    opt=api(
        "make a prompt command of this user's", {201: Prompt}, body=prompts.PromptIn,
        errors=(403, 409, 413),
    ),
)  # fmt: skip
async def create_prompt(request: Request[Any, Any, Any]) -> Response[bytes]:
    owner = user(request)
    data = await body(request, prompts.PromptIn)
    rt = runtime(request)
    if data.name is None:
        raise BadRequest("name is required: 1 to 32 of a-z, 0-9, _ and -")
    with _prompt_errors():
        prompts.check(data, data.name, rt.settings.max_message_chars)
        made, _ = await rt.chat.prompts.put(
            owner, data.name, data, at=rt.chat.now(), create_only=True
        )
    return json_response(made, 201)


@get("/v1/prompts/{name:str}", opt=api("one prompt command", {200: Prompt}))
async def get_prompt(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
    owner = user(request)
    found = await runtime(request).chat.prompts.get(owner, name)
    if found is None:
        raise NotFound(f"prompt {name!r} not found")
    return json_response(found)


@put(
    "/v1/prompts/{name:str}",
    opt=api(
        "make or replace a prompt command of this user's", {200: Prompt, 201: Prompt},
        body=prompts.PromptIn, errors=(403, 413),
    ),
)  # fmt: skip
async def put_prompt(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
    owner = user(request)
    data = await body(request, prompts.PromptIn)
    rt = runtime(request)
    if data.name is not None and data.name != name:
        raise BadRequest(f"the body names prompt {data.name!r}, the path {name!r}")
    with _prompt_errors():
        prompts.check(data, name, rt.settings.max_message_chars)
        made, new = await rt.chat.prompts.put(
            owner, name, data, at=rt.chat.now(), create_only=False
        )
    return json_response(made, 201 if new else 200)


@delete(
    "/v1/prompts/{name:str}",
    status_code=204,
    opt=api("delete a prompt command of this user's", {204: None}, errors=(403,)),
)
async def delete_prompt(request: Request[Any, Any, Any], name: str) -> None:
    owner = user(request)
    with _prompt_errors():
        if not await runtime(request).chat.prompts.delete(owner, name):
            raise NotFound(f"prompt {name!r} not found")


ROUTES = [
    put_feedback,
    list_agents,
    list_prompts,
    create_prompt,
    get_prompt,
    put_prompt,
    delete_prompt,
]
