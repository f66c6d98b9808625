"""The reference client of the turnlog HTTP API and its SSE (docs/protocol.md).

General layout::

    ApiError           a 4xx/5xx answer: its status and the server's readable ``detail``
    Client             sync, over ``httpx.Client``; one method per route of section 2
    AsyncClient        the same over ``httpx.AsyncClient``
    StreamItem         one SSE event of a message stream: (event, id, decoded data)
    MessageFold        folds ``init`` + stream events into blocks with the shared reducer

Answers are returned as decoded JSON (dicts), exactly as the server sent them; only the
message stream is decoded further (``Init`` and the reducer's event Structs), because a
client has to fold it. The fold is the one the server uses (``turnlog_reducer``), so a
client's live view and the stored blocks always agree.

Reconnecting: ``stream_message`` reconnects with ``Last-Event-ID`` when the connection drops
before ``done``. The server answers a reconnect with a fresh ``init`` at its current seq (a
snapshot paired with the suffix at one offset), so ``MessageFold`` simply *replaces* its state
on every ``init`` and then applies the deltas; it never needs to know what it missed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeAlias

import anyio
import httpx
import msgspec
from httpx_sse import EventSource, ServerSentEvent
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

if TYPE_CHECKING:
    pass

__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "Init",
    "MessageFold",
    "Recovering",
    "StreamGapError",
    "StreamItem",
    "text_of",
]

JSON: TypeAlias = dict[str, Any]

_UNSET: Final = object()

# Transport failures after which a stream is worth reopening (the server went away, a proxy
# cut the connection, the read timed out waiting for a heartbeat).
_DROPPED: Final = (
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


def _decode_item(sse: ServerSentEvent) -> StreamItem:
    # Callers skip events without data: httpx-sse dispatches an empty "message" event for
    # the blank line after a `: ping` comment once an id was seen, which the SSE spec says
    # not to dispatch (an empty data buffer dispatches nothing).
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


# --------------------------------------------------------------------------- requests


def _json_body(**fields: Any) -> JSON:
    """The fields that were given (``_UNSET`` ones dropped); ``None`` is sent as null."""
    return {k: v for k, v in fields.items() if v is not _UNSET}


def _check(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    body: Any = None
    detail = response.text
    with contextlib.suppress(ValueError):
        body = response.json()
        if isinstance(body, dict) and "detail" in body:
            detail = str(body["detail"])
    raise ApiError(response.status_code, detail, body)


def _decoded(response: httpx.Response) -> Any:
    _check(response)
    if response.status_code == 204 or not response.content:
        return None
    return response.json()


class _Routes:
    """The paths and bodies of section 2, shared by the sync and the async client."""

    @staticmethod
    def conversation(cid: str) -> str:
        return f"/v1/conversations/{cid}"

    @staticmethod
    def messages(cid: str) -> str:
        return f"/v1/conversations/{cid}/messages"

    @staticmethod
    def message(mid: str, action: str) -> str:
        return f"/v1/messages/{mid}/{action}"


def _headers(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def _stream_headers(last_event_id: int | None) -> dict[str, str]:
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    return headers


def _list_params(limit: int | None, cursor: str | None) -> dict[str, str | int]:
    params: dict[str, str | int] = {}
    if limit is not None:
        params["limit"] = limit
    if cursor is not None:
        params["cursor"] = cursor
    return params


def _send_body(
    content: str, client_message_id: str | None, options: Mapping[str, Any] | None
) -> JSON:
    body: JSON = {"content": content}
    if client_message_id is not None:
        body["client_message_id"] = client_message_id
    if options is not None:
        body["options"] = dict(options)
    return body


def _export_params(format: str, lang: str | None) -> dict[str, str]:
    return {"format": format} if lang is None else {"format": format, "lang": lang}


def _exported(response: httpx.Response, format: str) -> Any:
    _check(response)
    return response.text if format == "markdown" else response.json()


class _Reconnects:
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


class Client:
    """A synchronous client of one turnlog server, acting as the user of ``token``.

    Every method returns the decoded JSON answer and raises ``ApiError`` on 4xx/5xx.
    ``transport`` is the usual httpx seam (e.g. ``httpx.MockTransport``).
    """

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout: float = 30.0,
        stream_read_timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._stream_timeout = httpx.Timeout(timeout, read=stream_read_timeout)
        self.http = httpx.Client(
            base_url=self.base_url,
            headers=_headers(token),
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- conversations ----------------------------------------------------------------

    def create_conversation(
        self,
        *,
        title: Any = _UNSET,
        model: Any = _UNSET,
        options: Any = _UNSET,
        system_prompt: Any = _UNSET,
    ) -> JSON:
        """POST /v1/conversations -> the conversation (201)."""
        body = _json_body(title=title, model=model, options=options, system_prompt=system_prompt)
        result: JSON = _decoded(self.http.post("/v1/conversations", json=body))
        return result

    def list_conversations(self, *, limit: int | None = None, cursor: str | None = None) -> JSON:
        """GET /v1/conversations -> ``{"items": [...], "next": cursor or null}``."""
        params = _list_params(limit, cursor)
        result: JSON = _decoded(self.http.get("/v1/conversations", params=params))
        return result

    def get_conversation(self, cid: str) -> JSON:
        """GET /v1/conversations/{cid} -> ``{"conversation": ..., "messages": [...]}``."""
        result: JSON = _decoded(self.http.get(_Routes.conversation(cid)))
        return result

    def list_prompts(self) -> list[JSON]:
        """GET /v1/prompts -> the prompt commands (configured, then the user's own)."""
        result: list[JSON] = _decoded(self.http.get("/v1/prompts"))["items"]
        return result

    def patch_conversation(
        self,
        cid: str,
        *,
        title: Any = _UNSET,
        model: Any = _UNSET,
        options: Any = _UNSET,
        system_prompt: Any = _UNSET,
    ) -> JSON:
        """PATCH /v1/conversations/{cid} -> the conversation."""
        body = _json_body(title=title, model=model, options=options, system_prompt=system_prompt)
        result: JSON = _decoded(self.http.patch(_Routes.conversation(cid), json=body))
        return result

    def delete_conversation(self, cid: str) -> None:
        """DELETE /v1/conversations/{cid} (204)."""
        _decoded(self.http.delete(_Routes.conversation(cid)))

    # -- messages ---------------------------------------------------------------------

    def send(
        self,
        cid: str,
        content: str,
        *,
        client_message_id: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> JSON:
        """POST a user message -> ``{"user_message": row, "assistant_message": row}``."""
        body = _send_body(content, client_message_id, options)
        result: JSON = _decoded(self.http.post(_Routes.messages(cid), json=body))
        return result

    def list_messages(self, cid: str, *, every_version: bool = False) -> list[JSON]:
        """GET /v1/conversations/{cid}/messages -> the active path's rows in canonical
        order (``every_version``: every row, ``?all=true``)."""
        params = {"all": "true"} if every_version else None
        items: list[JSON] = _decoded(self.http.get(_Routes.messages(cid), params=params))["items"]
        return items

    def resend(self, cid: str, mid: str, content: str) -> JSON:
        """PUT a user message with ``resend: true`` -> ``{"user_message", "assistant_message"}``
        (201): a new version of it, answered."""
        url = f"{_Routes.messages(cid)}/{mid}"
        result: JSON = _decoded(self.http.put(url, json={"content": content, "resend": True}))
        return result

    def regenerate(
        self, mid: str, *, options: Mapping[str, Any] | None = None, model: str | None = None
    ) -> JSON:
        """POST /v1/messages/{mid}/regenerate -> ``{"assistant_message": row}`` (201): a new
        version of the turn that assistant message ends."""
        body: dict[str, Any] = {}
        if options is not None:
            body["options"] = dict(options)
        if model is not None:
            body["model"] = model
        url = _Routes.message(mid, "regenerate")
        result: JSON = _decoded(self.http.post(url, json=body or None))
        return result

    def select(self, mid: str) -> JSON:
        """POST /v1/messages/{mid}/select -> the conversation, its active path now through
        ``mid``."""
        result: JSON = _decoded(self.http.post(_Routes.message(mid, "select")))
        return result

    def edit(self, cid: str, mid: str, content: str) -> JSON:
        """PUT a user message's edited content -> the row."""
        url = f"{_Routes.messages(cid)}/{mid}"
        result: JSON = _decoded(self.http.put(url, json={"content": content}))
        return result

    def cancel(self, mid: str) -> JSON:
        """POST /v1/messages/{mid}/cancel -> the row (``aborted``)."""
        result: JSON = _decoded(self.http.post(_Routes.message(mid, "cancel")))
        return result

    def retry(self, mid: str, *, options: Mapping[str, Any] | None = None) -> JSON:
        """POST /v1/messages/{mid}/retry -> ``{"assistant_message": row}`` (201); ``options``
        given replace the failed turn's."""
        body = None if options is None else {"options": dict(options)}
        result: JSON = _decoded(self.http.post(_Routes.message(mid, "retry"), json=body))
        return result

    def tool_result(self, mid: str, tool_call_id: str, content: str) -> Any:
        """POST /v1/messages/{mid}/tool-results: answer a pending interactive tool call."""
        body = {"tool_call_id": tool_call_id, "content": content}
        return _decoded(self.http.post(_Routes.message(mid, "tool-results"), json=body))

    def tool_approval(
        self, mid: str, tool_call_id: str, approved: bool, reason: str | None = None
    ) -> Any:
        """POST /v1/messages/{mid}/tool-approvals: approve or deny a call waiting for it."""
        body: dict[str, Any] = {"tool_call_id": tool_call_id, "approved": approved}
        if reason is not None:
            body["reason"] = reason
        return _decoded(self.http.post(_Routes.message(mid, "tool-approvals"), json=body))

    def tools(self) -> Any:
        """GET /v1/tools: the tools this user may use."""
        return _decoded(self.http.get("/v1/tools"))

    def export(self, cid: str, *, format: str = "markdown", lang: str | None = None) -> Any:
        """GET .../export: the markdown text, or the decoded JSON document."""
        params = _export_params(format, lang)
        response = self.http.get(f"{_Routes.conversation(cid)}/export", params=params)
        return _exported(response, format)

    # -- streams ----------------------------------------------------------------------

    def stream_message(
        self,
        mid: str,
        last_event_id: int | None = None,
        *,
        reconnects: int = 5,
        backoff_s: float = 0.2,
    ) -> Iterator[StreamItem]:
        """The message's stream events until ``done``, reconnecting on a dropped connection.

        A drop before ``done`` reopens the stream with ``Last-Event-ID`` (at most
        ``reconnects`` times in a row); the server then answers with a fresh ``init``.
        """
        policy = _Reconnects(last_event_id, reconnects, backoff_s)
        while True:
            dropped: BaseException | None = None
            try:
                for item in self._stream_once(mid, policy.last_event_id):
                    policy.seen(item)
                    yield item
                    if item.event == "done":
                        return
            except _DROPPED as exc:
                dropped = exc
            # Dropped, or closed by the server without ``done``: reopen the same way.
            time.sleep(policy.pause(dropped))

    def _stream_once(self, mid: str, last_event_id: int | None) -> Iterator[StreamItem]:
        with self.http.stream(
            "GET",
            _Routes.message(mid, "stream"),
            headers=_stream_headers(last_event_id),
            timeout=self._stream_timeout,
        ) as response:
            if response.status_code >= 400:
                response.read()
                _check(response)
            for sse in EventSource(response).iter_sse():
                if sse.data:  # see _decode_item
                    yield _decode_item(sse)

    def follow(self, mid: str, **kwargs: Any) -> MessageFold:
        """Stream ``mid`` to its ``done`` and return the fold."""
        fold = MessageFold()
        for item in self.stream_message(mid, **kwargs):
            fold.feed(item)
        return fold

    def live(self, cid: str, last_event_id: int | None = None) -> Iterator[tuple[str, int, Any]]:
        """The conversation feed: (event, id, decoded JSON data), starting with ``snapshot``.

        It never ends by itself; close the generator to stop.
        """
        with self.http.stream(
            "GET",
            f"{_Routes.conversation(cid)}/live",
            headers=_stream_headers(last_event_id),
            timeout=self._stream_timeout,
        ) as response:
            if response.status_code >= 400:
                response.read()
                _check(response)
            for sse in EventSource(response).iter_sse():
                if sse.data:  # see _decode_item
                    yield sse.event, int(sse.id), msgspec.json.decode(sse.data)


class AsyncClient:
    """``Client`` over ``httpx.AsyncClient``: the same methods, awaited."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout: float = 30.0,
        stream_read_timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._stream_timeout = httpx.Timeout(timeout, read=stream_read_timeout)
        self.http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=_headers(token),
            timeout=timeout,
            transport=transport,
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def create_conversation(
        self,
        *,
        title: Any = _UNSET,
        model: Any = _UNSET,
        options: Any = _UNSET,
        system_prompt: Any = _UNSET,
    ) -> JSON:
        """POST /v1/conversations -> the conversation (201)."""
        body = _json_body(title=title, model=model, options=options, system_prompt=system_prompt)
        result: JSON = _decoded(await self.http.post("/v1/conversations", json=body))
        return result

    async def list_conversations(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> JSON:
        """GET /v1/conversations -> ``{"items": [...], "next": cursor or null}``."""
        params = _list_params(limit, cursor)
        result: JSON = _decoded(await self.http.get("/v1/conversations", params=params))
        return result

    async def get_conversation(self, cid: str) -> JSON:
        """GET /v1/conversations/{cid}."""
        result: JSON = _decoded(await self.http.get(_Routes.conversation(cid)))
        return result

    async def patch_conversation(
        self,
        cid: str,
        *,
        title: Any = _UNSET,
        model: Any = _UNSET,
        options: Any = _UNSET,
        system_prompt: Any = _UNSET,
    ) -> JSON:
        """PATCH /v1/conversations/{cid} -> the conversation."""
        body = _json_body(title=title, model=model, options=options, system_prompt=system_prompt)
        result: JSON = _decoded(await self.http.patch(_Routes.conversation(cid), json=body))
        return result

    async def delete_conversation(self, cid: str) -> None:
        """DELETE /v1/conversations/{cid} (204)."""
        _decoded(await self.http.delete(_Routes.conversation(cid)))

    async def send(
        self,
        cid: str,
        content: str,
        *,
        client_message_id: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> JSON:
        """POST a user message -> ``{"user_message": row, "assistant_message": row}``."""
        body = _send_body(content, client_message_id, options)
        result: JSON = _decoded(await self.http.post(_Routes.messages(cid), json=body))
        return result

    async def list_messages(self, cid: str) -> list[JSON]:
        """GET /v1/conversations/{cid}/messages -> the rows in canonical order."""
        items: list[JSON] = _decoded(await self.http.get(_Routes.messages(cid)))["items"]
        return items

    async def edit(self, cid: str, mid: str, content: str) -> JSON:
        """PUT a user message's edited content -> the row."""
        url = f"{_Routes.messages(cid)}/{mid}"
        result: JSON = _decoded(await self.http.put(url, json={"content": content}))
        return result

    async def cancel(self, mid: str) -> JSON:
        """POST /v1/messages/{mid}/cancel -> the row (``aborted``)."""
        result: JSON = _decoded(await self.http.post(_Routes.message(mid, "cancel")))
        return result

    async def retry(self, mid: str, *, options: Mapping[str, Any] | None = None) -> JSON:
        """POST /v1/messages/{mid}/retry -> ``{"assistant_message": row}`` (201); ``options``
        given replace the failed turn's."""
        body = None if options is None else {"options": dict(options)}
        result: JSON = _decoded(await self.http.post(_Routes.message(mid, "retry"), json=body))
        return result

    async def tool_result(self, mid: str, tool_call_id: str, content: str) -> Any:
        """POST /v1/messages/{mid}/tool-results."""
        body = {"tool_call_id": tool_call_id, "content": content}
        return _decoded(await self.http.post(_Routes.message(mid, "tool-results"), json=body))

    async def export(self, cid: str, *, format: str = "markdown", lang: str | None = None) -> Any:
        """GET .../export: the markdown text, or the decoded JSON document."""
        params = _export_params(format, lang)
        response = await self.http.get(f"{_Routes.conversation(cid)}/export", params=params)
        return _exported(response, format)

    async def stream_message(
        self,
        mid: str,
        last_event_id: int | None = None,
        *,
        reconnects: int = 5,
        backoff_s: float = 0.2,
    ) -> AsyncIterator[StreamItem]:
        """The message's stream events until ``done``, reconnecting on a dropped connection."""
        policy = _Reconnects(last_event_id, reconnects, backoff_s)
        while True:
            dropped: BaseException | None = None
            try:
                async for item in self._stream_once(mid, policy.last_event_id):
                    policy.seen(item)
                    yield item
                    if item.event == "done":
                        return
            except _DROPPED as exc:
                dropped = exc
            await anyio.sleep(policy.pause(dropped))

    async def _stream_once(self, mid: str, last_event_id: int | None) -> AsyncIterator[StreamItem]:
        async with self.http.stream(
            "GET",
            _Routes.message(mid, "stream"),
            headers=_stream_headers(last_event_id),
            timeout=self._stream_timeout,
        ) as response:
            if response.status_code >= 400:
                await response.aread()
                _check(response)
            async for sse in EventSource(response).aiter_sse():
                if sse.data:  # see _decode_item
                    yield _decode_item(sse)

    async def follow(self, mid: str, **kwargs: Any) -> MessageFold:
        """Stream ``mid`` to its ``done`` and return the fold."""
        fold = MessageFold()
        async for item in self.stream_message(mid, **kwargs):
            fold.feed(item)
        return fold
