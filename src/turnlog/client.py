"""The reference client of the turnlog HTTP API and its SSE (docs/protocol.md).

General layout::

    Client             sync, over ``httpx.Client``; one method per route of section 2 (here)
    AsyncClient        its methods (all but a few) over ``httpx.AsyncClient`` (``client_async``)
    ApiError           a 4xx/5xx answer: its status and the server's readable ``detail``
    StreamItem         one SSE event of a message stream: (event, id, decoded data)
    MessageFold        folds ``init`` + stream events into blocks with the shared reducer

What the two clients share (the errors, the stream's items and its fold, each route as one
request, the reconnect policy) is written once in ``turnlog.client_common``; this module
re-exports all of it, so ``from turnlog.client import ...`` is the one import a user needs.

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

import time
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar, Unpack

import httpx
from httpx_sse import EventSource, ServerSentEvent

from turnlog.client_async import AsyncClient
from turnlog.client_common import (
    DROPPED,
    EMPTY,
    JSON,
    ApiError,
    Blocks,
    Call,
    ConversationFields,
    Done,
    Init,
    MessageFold,
    Reconnects,
    Recovering,
    Routes,
    StreamEvent,
    StreamGapError,
    StreamItem,
    TextBlock,
    apply_stream_event,
    auth_headers,
    check,
    decode_blocks,
    decode_event,
    decode_feed_item,
    decode_item,
    stream_headers,
    text_of,
)

__all__ = [  # the reducer's names too (see client_common), as before the split
    "EMPTY",
    "JSON",
    "ApiError",
    "AsyncClient",
    "Blocks",
    "Client",
    "ConversationFields",
    "Done",
    "Init",
    "MessageFold",
    "Recovering",
    "StreamEvent",
    "StreamGapError",
    "StreamItem",
    "TextBlock",
    "apply_stream_event",
    "decode_blocks",
    "decode_event",
    "text_of",
]

T = TypeVar("T")


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
            headers=auth_headers(token),
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

    def _call(self, call: Call[T]) -> T:
        response = self.http.request(call.method, call.url, json=call.json, params=call.params)
        return call.answer(response)

    # -- conversations ----------------------------------------------------------------

    def create_conversation(self, **fields: Unpack[ConversationFields]) -> JSON:
        """POST /v1/conversations -> the conversation (201)."""
        return self._call(Routes.create_conversation(fields))

    def list_conversations(self, *, limit: int | None = None, cursor: str | None = None) -> JSON:
        """GET /v1/conversations -> ``{"items": [...], "next": cursor or null}``."""
        return self._call(Routes.list_conversations(limit, cursor))

    def get_conversation(self, cid: str) -> JSON:
        """GET /v1/conversations/{cid} -> ``{"conversation": ..., "messages": [...]}``."""
        return self._call(Routes.get_conversation(cid))

    def list_prompts(self) -> list[JSON]:
        """GET /v1/prompts -> the prompt commands (configured, then the user's own)."""
        return self._call(Routes.list_prompts())

    def patch_conversation(self, cid: str, **fields: Unpack[ConversationFields]) -> JSON:
        """PATCH /v1/conversations/{cid} -> the conversation."""
        return self._call(Routes.patch_conversation(cid, fields))

    def delete_conversation(self, cid: str) -> None:
        """DELETE /v1/conversations/{cid} (204)."""
        self._call(Routes.delete_conversation(cid))

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
        return self._call(Routes.send(cid, content, client_message_id, options))

    def list_messages(self, cid: str, *, every_version: bool = False) -> list[JSON]:
        """GET /v1/conversations/{cid}/messages -> the active path's rows in canonical
        order (``every_version``: every row, ``?all=true``)."""
        return self._call(Routes.list_messages(cid, every_version))

    def resend(self, cid: str, mid: str, content: str) -> JSON:
        """PUT a user message with ``resend: true`` -> ``{"user_message", "assistant_message"}``
        (201): a new version of it, answered."""
        return self._call(Routes.edit(cid, mid, content, resend=True))

    def regenerate(
        self, mid: str, *, options: Mapping[str, Any] | None = None, model: str | None = None
    ) -> JSON:
        """POST /v1/messages/{mid}/regenerate -> ``{"assistant_message": row}`` (201): a new
        version of the turn that assistant message ends."""
        return self._call(Routes.regenerate(mid, options, model))

    def select(self, mid: str) -> JSON:
        """POST /v1/messages/{mid}/select -> the conversation, its active path now through
        ``mid``."""
        return self._call(Routes.select(mid))

    def edit(self, cid: str, mid: str, content: str) -> JSON:
        """PUT a user message's edited content -> the row."""
        return self._call(Routes.edit(cid, mid, content))

    def cancel(self, mid: str) -> JSON:
        """POST /v1/messages/{mid}/cancel -> the row (``aborted``)."""
        return self._call(Routes.cancel(mid))

    def retry(self, mid: str, *, options: Mapping[str, Any] | None = None) -> JSON:
        """POST /v1/messages/{mid}/retry -> ``{"assistant_message": row}`` (201); ``options``
        given replace the failed turn's."""
        return self._call(Routes.retry(mid, options))

    def tool_result(self, mid: str, tool_call_id: str, content: str) -> Any:
        """POST /v1/messages/{mid}/tool-results: answer a pending interactive tool call."""
        return self._call(Routes.tool_result(mid, tool_call_id, content))

    def tool_approval(
        self, mid: str, tool_call_id: str, approved: bool, reason: str | None = None
    ) -> Any:
        """POST /v1/messages/{mid}/tool-approvals: approve or deny a call waiting for it."""
        return self._call(Routes.tool_approval(mid, tool_call_id, approved, reason))

    def tools(self) -> Any:
        """GET /v1/tools: the tools this user may use."""
        return self._call(Routes.tools())

    def export(self, cid: str, *, format: str = "markdown", lang: str | None = None) -> Any:
        """GET .../export: the markdown text, or the decoded JSON document."""
        return self._call(Routes.export(cid, format, lang))

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
        policy = Reconnects(last_event_id, reconnects, backoff_s)
        while True:
            dropped: BaseException | None = None
            try:
                for item in self._stream_once(mid, policy.last_event_id):
                    policy.seen(item)
                    yield item
                    if item.event == "done":
                        return
            except DROPPED as exc:
                dropped = exc
            # Dropped, or closed by the server without ``done``: reopen the same way.
            time.sleep(policy.pause(dropped))

    def _stream_once(self, mid: str, last_event_id: int | None) -> Iterator[StreamItem]:
        for sse in self._sse(Routes.message(mid, "stream"), last_event_id):
            yield decode_item(sse)

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
        for sse in self._sse(f"{Routes.conversation(cid)}/live", last_event_id):
            yield decode_feed_item(sse)

    def _sse(self, url: str, last_event_id: int | None) -> Iterator[ServerSentEvent]:
        """The events of one SSE answer that carry data (see ``decode_item``)."""
        with self.http.stream(
            "GET", url, headers=stream_headers(last_event_id), timeout=self._stream_timeout
        ) as response:
            if response.status_code >= 400:
                response.read()
                check(response)
            for sse in EventSource(response).iter_sse():
                if sse.data:
                    yield sse
