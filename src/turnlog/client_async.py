"""``AsyncClient``: the reference client (``turnlog.client``) over ``httpx.AsyncClient``.

The sync ``Client``'s methods (all but the few the class docstring names), awaited, with the
same answers and errors: both send the requests ``turnlog.client_common.Routes`` builds and
read their answers the same way; only the sending differs. Import it from ``turnlog.client``
like the rest.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeVar, Unpack

import anyio
import httpx
from httpx_sse import EventSource, ServerSentEvent

from turnlog.client_common import (
    DROPPED,
    JSON,
    Call,
    ConversationFields,
    MessageFold,
    Reconnects,
    Routes,
    StreamItem,
    auth_headers,
    check,
    decode_item,
    stream_headers,
)

T = TypeVar("T")


class AsyncClient:
    """``Client`` over ``httpx.AsyncClient``: the same methods, awaited, with the same
    answers and errors; not here yet: ``live``, ``list_prompts``, ``tools`` and
    ``tool_approval``."""

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
            headers=auth_headers(token),
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

    async def _call(self, call: Call[T]) -> T:
        response = await self.http.request(
            call.method, call.url, json=call.json, params=call.params
        )
        return call.answer(response)

    # -- conversations ----------------------------------------------------------------

    async def create_conversation(self, **fields: Unpack[ConversationFields]) -> JSON:
        """POST /v1/conversations -> the conversation (201)."""
        return await self._call(Routes.create_conversation(fields))

    async def list_conversations(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> JSON:
        """GET /v1/conversations -> ``{"items": [...], "next": cursor or null}``."""
        return await self._call(Routes.list_conversations(limit, cursor))

    async def get_conversation(self, cid: str) -> JSON:
        """GET /v1/conversations/{cid}."""
        return await self._call(Routes.get_conversation(cid))

    async def patch_conversation(self, cid: str, **fields: Unpack[ConversationFields]) -> JSON:
        """PATCH /v1/conversations/{cid} -> the conversation."""
        return await self._call(Routes.patch_conversation(cid, fields))

    async def delete_conversation(self, cid: str) -> None:
        """DELETE /v1/conversations/{cid} (204)."""
        await self._call(Routes.delete_conversation(cid))

    # -- messages ---------------------------------------------------------------------

    async def send(
        self,
        cid: str,
        content: str,
        *,
        client_message_id: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> JSON:
        """POST a user message -> ``{"user_message": row, "assistant_message": row}``."""
        return await self._call(Routes.send(cid, content, client_message_id, options))

    async def list_messages(self, cid: str, *, every_version: bool = False) -> list[JSON]:
        """GET /v1/conversations/{cid}/messages -> the active path's rows in canonical
        order (``every_version``: every row, ``?all=true``)."""
        return await self._call(Routes.list_messages(cid, every_version))

    async def resend(self, cid: str, mid: str, content: str) -> JSON:
        """PUT a user message with ``resend: true`` -> ``{"user_message", "assistant_message"}``
        (201): a new version of it, answered."""
        return await self._call(Routes.edit(cid, mid, content, resend=True))

    async def regenerate(
        self, mid: str, *, options: Mapping[str, Any] | None = None, model: str | None = None
    ) -> JSON:
        """POST /v1/messages/{mid}/regenerate -> ``{"assistant_message": row}`` (201): a new
        version of the turn that assistant message ends."""
        return await self._call(Routes.regenerate(mid, options, model))

    async def select(self, mid: str) -> JSON:
        """POST /v1/messages/{mid}/select -> the conversation, its active path now through
        ``mid``."""
        return await self._call(Routes.select(mid))

    async def edit(self, cid: str, mid: str, content: str) -> JSON:
        """PUT a user message's edited content -> the row."""
        return await self._call(Routes.edit(cid, mid, content))

    async def cancel(self, mid: str) -> JSON:
        """POST /v1/messages/{mid}/cancel -> the row (``aborted``)."""
        return await self._call(Routes.cancel(mid))

    async def retry(self, mid: str, *, options: Mapping[str, Any] | None = None) -> JSON:
        """POST /v1/messages/{mid}/retry -> ``{"assistant_message": row}`` (201); ``options``
        given replace the failed turn's."""
        return await self._call(Routes.retry(mid, options))

    async def tool_result(self, mid: str, tool_call_id: str, content: str) -> Any:
        """POST /v1/messages/{mid}/tool-results."""
        return await self._call(Routes.tool_result(mid, tool_call_id, content))

    async def export(self, cid: str, *, format: str = "markdown", lang: str | None = None) -> Any:
        """GET .../export: the markdown text, or the decoded JSON document."""
        return await self._call(Routes.export(cid, format, lang))

    # -- streams ----------------------------------------------------------------------

    async def stream_message(
        self,
        mid: str,
        last_event_id: int | None = None,
        *,
        reconnects: int = 5,
        backoff_s: float = 0.2,
    ) -> AsyncIterator[StreamItem]:
        """The message's stream events until ``done``, reconnecting on a dropped connection."""
        policy = Reconnects(last_event_id, reconnects, backoff_s)
        while True:
            dropped: BaseException | None = None
            try:
                async for item in self._stream_once(mid, policy.last_event_id):
                    policy.seen(item)
                    yield item
                    if item.event == "done":
                        return
            except DROPPED as exc:
                dropped = exc
            await anyio.sleep(policy.pause(dropped))

    async def _stream_once(self, mid: str, last_event_id: int | None) -> AsyncIterator[StreamItem]:
        async for sse in self._sse(Routes.message(mid, "stream"), last_event_id):
            yield decode_item(sse)

    async def follow(self, mid: str, **kwargs: Any) -> MessageFold:
        """Stream ``mid`` to its ``done`` and return the fold."""
        fold = MessageFold()
        async for item in self.stream_message(mid, **kwargs):
            fold.feed(item)
        return fold

    async def _sse(self, url: str, last_event_id: int | None) -> AsyncIterator[ServerSentEvent]:
        """The events of one SSE answer that carry data (see ``decode_item``)."""
        async with self.http.stream(
            "GET", url, headers=stream_headers(last_event_id), timeout=self._stream_timeout
        ) as response:
            if response.status_code >= 400:
                await response.aread()
                check(response)
            async for sse in EventSource(response).aiter_sse():
                if sse.data:
                    yield sse
