"""What the sync ``Client`` (``turnlog.client``) and the ``AsyncClient``
(``turnlog.client_async``) share: everything but the sending itself.

General layout::

    ApiError, StreamGapError    the client's errors
    Init, Recovering, StreamItem
                                the decoded events of a message stream (``decode_item``)
    MessageFold                 folds ``init`` + stream events into blocks with the shared reducer
    Call, Routes                each route of section 2 as one request to send (method, path,
                                body, query) and how to read its answer; the clients only send
    Reconnects                  the reconnect policy of ``stream_message``

Import these from ``turnlog.client``, which re-exports the public ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any, Final, Generic, NamedTuple, TypeAlias, TypedDict, TypeVar

import httpx
import msgspec
from httpx_sse import ServerSentEvent
from turnlog_reducer import (
    EMPTY,
    Blocks,
    Done,
    StreamEvent,
    TextBlock,
    apply_stream_event,
    decode_blocks,
    decode_event,
)

# With the reducer's names that appear in the clients' answers (``StreamItem.data``,
# ``MessageFold.blocks``, ``.done``): a user of the client matches and folds with them.
__all__ = [
    "DROPPED",
    "EMPTY",
    "JSON",
    "ApiError",
    "Blocks",
    "Call",
    "ConversationFields",
    "Done",
    "Init",
    "MessageFold",
    "Reconnects",
    "Recovering",
    "Routes",
    "StreamEvent",
    "StreamGapError",
    "StreamItem",
    "TextBlock",
    "apply_stream_event",
    "auth_headers",
    "check",
    "decode_blocks",
    "decode_event",
    "decode_feed_item",
    "decode_item",
    "decoded",
    "stream_headers",
    "text_of",
]

JSON: TypeAlias = dict[str, Any]
T = TypeVar("T")

# Transport failures after which a stream is worth reopening (the server went away, a proxy
# cut the connection, the read timed out waiting for a heartbeat).
DROPPED: Final = (
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.ReadTimeout,
    httpx.ConnectError,
    httpx.WriteError,
)


class ApiError(Exception):
    """A 4xx or 5xx answer: ``status`` and the server's ``detail`` (or the raw body)."""

    def __init__(self, status: int, detail: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.body = body


class StreamGapError(Exception):
    """A stream event whose id is not the one after the previous event (a lost or repeated
    delta); the fold would be wrong from here on."""


# --------------------------------------------------------------------------- streams


class Init(msgspec.Struct, frozen=True):
    """The ``init`` event: the blocks after the first ``seq`` stream events, and the status."""

    message_id: str
    seq: int
    status: str
    blocks: Blocks


class Recovering(msgspec.Struct, frozen=True):
    """The ``recovering`` event: the generation is being continued after its process died
    (the ``attempt``-th time); it follows an ``init`` at the last stored checkpoint."""

    attempt: int


class StreamItem(NamedTuple):
    """One event of a message stream. ``data`` is an ``Init`` for ``init``, a
    ``Recovering`` for ``recovering``, else the reducer's event Struct (``TextDelta``, …,
    ``Done``)."""

    event: str
    id: int | None
    data: Init | Recovering | StreamEvent


def decode_item(sse: ServerSentEvent) -> StreamItem:
    """One SSE event of a message stream as a ``StreamItem``.

    Callers skip events without data: httpx-sse dispatches an empty "message" event for the
    blank line after a `: ping` comment once an id was seen, which the SSE spec says not to
    dispatch (an empty data buffer dispatches nothing).
    """
    event_id = int(sse.id) if sse.id else None
    if sse.event == "init":
        raw = msgspec.json.decode(sse.data)
        init = Init(
            message_id=str(raw["message_id"]),
            seq=int(raw["seq"]),
            status=str(raw["status"]),
            blocks=decode_blocks(msgspec.json.encode(raw["blocks"])),
        )
        return StreamItem("init", event_id, init)
    if sse.event == "recovering":
        return StreamItem("recovering", event_id, msgspec.json.decode(sse.data, type=Recovering))
    return StreamItem(sse.event, event_id, decode_event(sse.data))


def decode_feed_item(sse: ServerSentEvent) -> tuple[str, int, Any]:
    """One SSE event of a conversation feed: (event, id, decoded JSON data)."""
    return sse.event, int(sse.id), msgspec.json.decode(sse.data)


class MessageFold:
    """The live state of one message, folded from its stream.

    ``init`` replaces the state (the first one, and any later one: a reconnect or a
    resynchronisation; after its process died, one at the stored checkpoint, which may be
    behind what was shown: ``rewinds`` counts those); ``recovering`` counts in
    ``recoveries``; every other event must carry the id after the previous one and is
    applied with ``apply_stream_event``. ``done`` ends it.
    """

    def __init__(self) -> None:
        self.blocks: Blocks = EMPTY
        self.seq: int | None = None
        self.status: str | None = None
        self.done: Done | None = None
        self.inits = 0
        self.rewinds = 0
        self.recoveries = 0

    @property
    def finished(self) -> bool:
        """Whether the ``done`` event arrived."""
        return self.done is not None

    @property
    def text(self) -> str:
        """The answer text so far (the text blocks joined)."""
        return text_of(self.blocks)

    def feed(self, item: StreamItem) -> None:
        """Apply one stream item; raises ``StreamGapError`` on a missing or repeated id."""
        data = item.data
        if isinstance(data, Init):
            if self.seq is not None and data.seq < self.seq:
                self.rewinds += 1  # back to the stored checkpoint: the process died
            self.blocks, self.seq, self.status = data.blocks, data.seq, data.status
            self.inits += 1
            return
        if isinstance(data, Recovering):
            self.recoveries += 1
            return
        if self.seq is None:
            raise StreamGapError(f"{item.event} before init")
        if item.id != self.seq + 1:
            raise StreamGapError(f"{item.event} with id {item.id}, expected {self.seq + 1}")
        self.seq = item.id
        if isinstance(data, Done):
            self.done = data
            self.status = data.status
            return
        self.blocks = apply_stream_event(self.blocks, data)


def text_of(blocks: Any) -> str:
    """The text blocks of ``blocks`` (Structs or decoded JSON dicts) joined."""
    parts: list[str] = []
    for block in blocks:
        if isinstance(block, TextBlock):
            parts.append(block.text)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block["text"]))
    return "".join(parts)


class Reconnects:
    """The reconnect policy of ``stream_message``, shared by both clients: where to resume
    (the last event id seen) and how long to wait before the next try."""

    def __init__(self, last_event_id: int | None, reconnects: int, backoff_s: float) -> None:
        self.last_event_id = last_event_id
        self.reconnects = reconnects
        self.backoff_s = backoff_s
        self.failures = 0

    def seen(self, item: StreamItem) -> None:
        self.failures = 0
        if item.id is not None:
            self.last_event_id = item.id

    def pause(self, dropped: BaseException | None) -> float:
        """Seconds to wait before reopening after ``dropped`` (None: the server closed
        the stream without ``done``); raises once ``reconnects`` tries in a row failed."""
        if self.failures >= self.reconnects:
            if dropped is not None:
                raise dropped
            raise httpx.RemoteProtocolError("message stream ended without done")
        self.failures += 1
        return self.backoff_s * self.failures


# --------------------------------------------------------------------------- requests


def check(response: httpx.Response) -> None:
    """Raise ``ApiError`` for a 4xx/5xx answer (its body read first)."""
    if response.status_code < 400:
        return
    body: Any = None
    detail = response.text
    with contextlib.suppress(ValueError):
        body = response.json()
        if isinstance(body, dict) and "detail" in body:
            detail = str(body["detail"])
    raise ApiError(response.status_code, detail, body)


def decoded(response: httpx.Response) -> Any:
    """The decoded JSON answer (None for 204 or an empty body); ``ApiError`` on 4xx/5xx."""
    check(response)
    if response.status_code == 204 or not response.content:
        return None
    return response.json()


def _object(response: httpx.Response) -> JSON:
    result: JSON = decoded(response)
    return result


def _items(response: httpx.Response) -> list[JSON]:
    result: list[JSON] = decoded(response)["items"]
    return result


def _nothing(response: httpx.Response) -> None:
    check(response)


def _markdown(response: httpx.Response) -> Any:
    check(response)
    return response.text


class Call(NamedTuple, Generic[T]):
    """One request to send and how to read its answer (``answer`` raises ``ApiError``)."""

    method: str
    url: str
    answer: Callable[[httpx.Response], T]
    json: Any = None
    params: Mapping[str, str | int] | None = None


def auth_headers(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def stream_headers(last_event_id: int | None) -> dict[str, str]:
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    return headers


class ConversationFields(TypedDict, total=False):
    """The fields of a conversation a client sets: those given are sent (``None`` as null),
    those left out are left alone."""

    title: str | None
    model: str | None
    options: Mapping[str, Any] | None
    system_prompt: str | None


class Routes:
    """The routes of section 2 as ``Call``s: paths, bodies, queries and answers, written
    once for the sync and the async client."""

    @staticmethod
    def conversation(cid: str) -> str:
        return f"/v1/conversations/{cid}"

    @staticmethod
    def messages(cid: str) -> str:
        return f"/v1/conversations/{cid}/messages"

    @staticmethod
    def message(mid: str, action: str) -> str:
        return f"/v1/messages/{mid}/{action}"

    @staticmethod
    def create_conversation(fields: ConversationFields) -> Call[JSON]:
        return Call("POST", "/v1/conversations", _object, json=dict(fields))

    @staticmethod
    def list_conversations(limit: int | None, cursor: str | None) -> Call[JSON]:
        params: dict[str, str | int] = {}
        if limit is not None:
            params["limit"] = limit
        if cursor is not None:
            params["cursor"] = cursor
        return Call("GET", "/v1/conversations", _object, params=params)

    @staticmethod
    def get_conversation(cid: str) -> Call[JSON]:
        return Call("GET", Routes.conversation(cid), _object)

    @staticmethod
    def patch_conversation(cid: str, fields: ConversationFields) -> Call[JSON]:
        return Call("PATCH", Routes.conversation(cid), _object, json=dict(fields))

    @staticmethod
    def delete_conversation(cid: str) -> Call[None]:
        return Call("DELETE", Routes.conversation(cid), _nothing)

    @staticmethod
    def list_prompts() -> Call[list[JSON]]:
        return Call("GET", "/v1/prompts", _items)

    @staticmethod
    def send(
        cid: str, content: str, client_message_id: str | None, options: Mapping[str, Any] | None
    ) -> Call[JSON]:
        body: JSON = {"content": content}
        if client_message_id is not None:
            body["client_message_id"] = client_message_id
        if options is not None:
            body["options"] = dict(options)
        return Call("POST", Routes.messages(cid), _object, json=body)

    @staticmethod
    def list_messages(cid: str, every_version: bool) -> Call[list[JSON]]:
        params = {"all": "true"} if every_version else None
        return Call("GET", Routes.messages(cid), _items, params=params)

    @staticmethod
    def edit(cid: str, mid: str, content: str, *, resend: bool = False) -> Call[JSON]:
        body: JSON = {"content": content, "resend": True} if resend else {"content": content}
        return Call("PUT", f"{Routes.messages(cid)}/{mid}", _object, json=body)

    @staticmethod
    def regenerate(mid: str, options: Mapping[str, Any] | None, model: str | None) -> Call[JSON]:
        body: JSON = {}
        if options is not None:
            body["options"] = dict(options)
        if model is not None:
            body["model"] = model
        return Call("POST", Routes.message(mid, "regenerate"), _object, json=body or None)

    @staticmethod
    def select(mid: str) -> Call[JSON]:
        return Call("POST", Routes.message(mid, "select"), _object)

    @staticmethod
    def cancel(mid: str) -> Call[JSON]:
        return Call("POST", Routes.message(mid, "cancel"), _object)

    @staticmethod
    def retry(mid: str, options: Mapping[str, Any] | None) -> Call[JSON]:
        body = None if options is None else {"options": dict(options)}
        return Call("POST", Routes.message(mid, "retry"), _object, json=body)

    @staticmethod
    def tool_result(mid: str, tool_call_id: str, content: str) -> Call[Any]:
        body = {"tool_call_id": tool_call_id, "content": content}
        return Call("POST", Routes.message(mid, "tool-results"), decoded, json=body)

    @staticmethod
    def tool_approval(mid: str, tool_call_id: str, approved: bool, reason: str | None) -> Call[Any]:
        body: JSON = {"tool_call_id": tool_call_id, "approved": approved}
        if reason is not None:
            body["reason"] = reason
        return Call("POST", Routes.message(mid, "tool-approvals"), decoded, json=body)

    @staticmethod
    def tools() -> Call[Any]:
        return Call("GET", "/v1/tools", decoded)

    @staticmethod
    def export(cid: str, format: str, lang: str | None) -> Call[Any]:
        params = {"format": format} if lang is None else {"format": format, "lang": lang}
        answer = _markdown if format == "markdown" else decoded
        return Call("GET", f"{Routes.conversation(cid)}/export", answer, params=params)
