"""``GET /openapi.json``: the OpenAPI 3.1 description, generated from the running app.

Nothing here is written twice. Paths, methods and path parameters come from the app's
routes; each handler declares, with :func:`api` in its decorator's ``opt``, the msgspec types
it decodes (its body and query) and encodes (its answers), the very types it passes to
``common.body``/``common.query`` and ``json_response``. Their JSON Schemas are msgspec's own
(``msgspec.json.schema_components``), so the description and the codec cannot disagree:
strict bodies say ``additionalProperties: false`` because the decoder forbids unknown
fields.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get
from litestar.routes import HTTPRoute

import turnlog
from turnlog.commands import Sent
from turnlog.log.projection import Conversation, Message
from turnlog.uichat import ChatIn

__all__ = [
    "ROUTES",
    "Api",
    "ConversationList",
    "ConversationWithMessages",
    "ErrorAnswer",
    "Exported",
    "MessageList",
    "RetryAnswer",
    "SendAnswer",
    "ToolResultAnswer",
    "api",
    "describe",
]


# -- answers (what the handlers encode) ----------------------------------------------------


class ErrorAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """Every 4xx/5xx answer: the status again and a readable ``detail``."""

    status_code: int
    detail: str


class ConversationList(msgspec.Struct, frozen=True, kw_only=True):
    # A search's items also carry `match`: a short snippet of where (turnlog.product.search).
    items: list[Conversation]
    next: str | None


class ConversationWithMessages(msgspec.Struct, frozen=True, kw_only=True):
    conversation: Conversation
    messages: list[Message]


class SendAnswer(msgspec.Struct, frozen=True, kw_only=True):
    user_message: Message
    assistant_message: Message

    @classmethod
    def of(cls, sent: Sent) -> SendAnswer:
        return cls(user_message=sent.user_message, assistant_message=sent.assistant_message)


class MessageList(msgspec.Struct, frozen=True, kw_only=True):
    items: list[Message]


class RetryAnswer(msgspec.Struct, frozen=True, kw_only=True):
    assistant_message: Message


class ToolResultAnswer(msgspec.Struct, frozen=True, kw_only=True):
    tool_message: Message
    assistant_message: Message | None


class Exported(msgspec.Struct, frozen=True, kw_only=True):
    """``export?format=json``."""

    conversation: Conversation
    messages: list[Message]


class Text(msgspec.Struct, frozen=True):
    """Marks an answer that is not a JSON Struct: its media type and a description."""

    media_type: str
    description: str
    schema: dict[str, Any] | None = None  # else a string, an object or SSE events


# One server-sent event as OpenAPI tools read a `text/event-stream` answer: its fields.
_SSE_EVENT = {
    "type": "object",
    "properties": {
        "event": {"type": "string"},
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
}


class Api(msgspec.Struct, frozen=True, kw_only=True):
    """What one handler declares about itself for the description."""

    summary: str
    # status -> a msgspec type, a ``Text``, None (no body), or a tuple of them (one per
    # media type)
    answers: dict[int, Any]
    body: Any = None  # the msgspec type of the JSON body, if any
    body_required: bool = True
    query: Any = None  # a msgspec Struct whose fields are the query parameters
    errors: tuple[int, ...] = ()
    auth: bool = True


def api(summary: str, answers: dict[int, Any], **kw: Any) -> dict[str, Any]:
    """The ``opt`` of a route decorator: ``@post(path, opt=api(...))``."""
    return {"api": Api(summary=summary, answers=answers, **kw)}


# Errors every authenticated route can answer: a bad or missing token, an unknown id, the
# database unreachable.
_COMMON_ERRORS = (400, 401, 404, 503)
_ERROR_TEXT = {
    400: "bad input (malformed JSON, unknown fields, wrong types)",
    401: "missing, invalid or expired bearer token",
    403: "not allowed",
    404: "not found (or another user's)",
    409: "conflict with the current state",
    413: "body or content too large",
    429: "too many sends or concurrent generations; see Retry-After",
    503: "shutting down or database unreachable",
}


_UI_STREAM = Text("text/event-stream", "the turn as an AI SDK UI message stream")

# The AI SDK routes (http/ui_chat.py, docs/ui-chat.md) declare nothing in their decorators:
# their descriptions, by (path, method).
DECLARED_HERE: dict[tuple[str, str], Api] = {
    ("/v1/ui/chat", "post"): Api(
        summary="send the chat's new message (or regenerate) and answer the turn (useChat)",
        answers={200: _UI_STREAM},
        body=ChatIn,
        errors=(403, 409, 413, 429),
    ),
    ("/v1/ui/chat/{chat_id}/stream", "get"): Api(
        summary="resume the chat's generating turn from its start (204: none generating)",
        answers={200: _UI_STREAM, 204: None},
    ),
    ("/v1/ui/chat/{chat_id}/stop", "post"): Api(
        summary="stop the chat's generating answer (or withdraw its question)",
        answers={200: Message},
        errors=(409,),
    ),
    ("/v1/ui/chat/{chat_id}/messages", "get"): Api(
        summary="the chat's messages as AI SDK UI messages ([] for an unknown chat)",
        answers={
            200: Text(
                "application/json",
                "the UI messages",
                {"type": "array", "items": {"type": "object"}},
            )
        },
    ),
}


def describe(app: Litestar) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``'s routes that declare :class:`Api`."""
    ops: list[tuple[str, str, Api, HTTPRoute]] = []  # (path, method, spec, route)
    types: list[Any] = [ErrorAnswer]
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for method, (handler, _) in route.route_handler_map.items():
            spec = handler.opt.get("api") or DECLARED_HERE.get(
                (route.path_format, str(method).lower())
            )
            if not isinstance(spec, Api):
                continue
            ops.append((route.path_format, str(method).lower(), spec, route))
            answers = [a for v in spec.answers.values() for a in _alternatives(v)]
            types += [t for t in (spec.body, *answers) if _is_type(t)]
    unique = list(dict.fromkeys(types))
    schemas, components = msgspec.json.schema_components(
        unique, ref_template="#/components/schemas/{name}"
    )
    ref = dict(zip(unique, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for path, verb, spec, route in sorted(ops, key=lambda o: (o[0], o[1])):
        paths.setdefault(path, {})[verb] = _operation(path, verb, spec, route, ref)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "turnlog",
            "version": turnlog.__version__,
            "description": "Event-sourced generation backend for AI chat (docs/protocol.md).",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _alternatives(answer: Any) -> tuple[Any, ...]:
    return answer if isinstance(answer, tuple) else (answer,)


def _is_type(t: Any) -> bool:
    return t is not None and not isinstance(t, Text)


def _operation(
    path: str, method: str, spec: Api, route: HTTPRoute, ref: dict[Any, Any]
) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
        }
        for name in route.path_parameters
    ]
    if spec.query is not None:
        _, qcomponents = msgspec.json.schema_components([spec.query])
        for name, schema in qcomponents[spec.query.__name__]["properties"].items():
            params.append({"name": name, "in": "query", "required": False, "schema": schema})
    op: dict[str, Any] = {
        "operationId": f"{method}_{re.sub(r'[^a-z0-9]+', '_', path.lower()).strip('_')}",
        "summary": spec.summary,
        "parameters": params,
        "responses": {},
    }
    if spec.auth:
        op["security"] = [{"bearer": []}]
    if spec.body is not None:
        op["requestBody"] = {
            "required": spec.body_required,
            "content": {"application/json": {"schema": ref[spec.body]}},
        }
    for status, answer in spec.answers.items():
        op["responses"][str(status)] = _answer(answer, ref)
    errors = set(spec.errors) | (set(_COMMON_ERRORS) if spec.auth else set())
    if spec.body is not None:
        errors |= {400, 413}
    for status in sorted(errors):
        op["responses"][str(status)] = {
            "description": _ERROR_TEXT.get(status, "error"),
            "content": {"application/json": {"schema": ref[ErrorAnswer]}},
        }
    return op


def _answer(answer: Any, ref: dict[Any, Any]) -> dict[str, Any]:
    if answer is None:
        return {"description": "no content"}
    out: dict[str, Any] = {"description": "", "content": {}}
    for alt in _alternatives(answer):
        if isinstance(alt, Text):
            schema: dict[str, Any] = {"type": "string"}
            if alt.schema is not None:
                schema = alt.schema
            elif alt.media_type == "application/json":
                schema = {"type": "object"}
            elif alt.media_type == "text/event-stream":
                schema = _SSE_EVENT
            out["content"][alt.media_type] = {"schema": schema}
            out["description"] = out["description"] or alt.description
        else:
            out["content"]["application/json"] = {"schema": ref[alt]}
            out["description"] = out["description"] or alt.__name__
    return out


_encoder = msgspec.json.Encoder()


@get(
    "/openapi.json",
    opt=api("this description", {200: Text("application/json", "OpenAPI")}, auth=False),
)
async def openapi_json(request: Request[Any, Any, Any]) -> Response[bytes]:
    app = request.app
    doc = app.state.get("openapi_doc")
    if doc is None:
        doc = app.state.openapi_doc = _encoder.encode(describe(app))
    return Response(doc, media_type="application/json")


ROUTES = [openapi_json]
