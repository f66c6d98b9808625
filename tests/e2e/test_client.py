"""The reference client alone, against ``httpx.MockTransport``: folding, resync, reconnects,
errors. (No server process; these pin the client's own behaviour.)"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import pytest
from turnlog_reducer import TextBlock

from turnlog.client import (
    ApiError,
    AsyncClient,
    Client,
    MessageFold,
    StreamGapError,
    StreamItem,
)


def _init(k: int, text: str, status: str = "generating") -> bytes:
    blocks = f'[{{"type":"text","text":"{text}"}}]' if text else "[]"
    data = f'{{"message_id":"m","seq":{k},"status":"{status}","blocks":{blocks}}}'
    return f"event: init\nid: {k}\ndata: {data}\n\n".encode()


def _delta(k: int, text: str) -> bytes:
    return f'event: text_delta\nid: {k}\ndata: {{"type":"text_delta","text":"{text}"}}\n\n'.encode()


def _done(k: int, status: str = "completed") -> bytes:
    return f'event: done\nid: {k}\ndata: {{"type":"done","status":"{status}"}}\n\n'.encode()


class _Dropping(httpx.SyncByteStream, httpx.AsyncByteStream):
    """Yields ``chunks``, then fails like a connection cut by the peer (sync or async)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        raise httpx.RemoteProtocolError("peer closed connection")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        raise httpx.RemoteProtocolError("peer closed connection")


@pytest.mark.parametrize("kind", ["Client", "AsyncClient"])
def test_stream_reconnects_with_last_event_id_and_init_replaces_the_state(kind: str) -> None:
    """A drop before done reconnects with Last-Event-ID; the new init replaces the fold.
    Both clients follow the same policy."""
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("last-event-id"))
        sse = {"content-type": "text/event-stream"}
        if len(seen) == 1:
            chunks = [_init(0, ""), _delta(1, "a"), _delta(2, "b")]
            return httpx.Response(200, headers=sse, stream=_Dropping(chunks))
        body = _init(3, "abc") + _delta(4, "d") + _done(5)
        return httpx.Response(200, headers=sse, content=body)

    async def follow_async() -> MessageFold:
        async with AsyncClient("http://t", "tok", transport=httpx.MockTransport(handler)) as c:
            return await c.follow("m", backoff_s=0)

    if kind == "Client":
        with Client("http://t", "tok", transport=httpx.MockTransport(handler)) as c:
            fold = c.follow("m", backoff_s=0)
    else:
        fold = anyio.run(follow_async)
    assert seen == [None, "2"]
    assert fold.inits == 2
    assert list(fold.blocks) == [TextBlock("abcd")]
    assert fold.done is not None
    assert fold.done.status == "completed"


@pytest.mark.parametrize("how", ["dropped", "closed without done"])
def test_stream_gives_up_after_reconnects_failures_in_a_row(how: str) -> None:
    """Every try fails before a single event: the client raises after ``reconnects``
    reconnects in a row (1 + 2 tries). (An event received resets the count.)"""
    tries = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal tries
        tries += 1
        sse = {"content-type": "text/event-stream"}
        if how == "dropped":
            return httpx.Response(200, headers=sse, stream=_Dropping([]))
        return httpx.Response(200, headers=sse, content=b"")

    with (
        Client("http://t", "tok", transport=httpx.MockTransport(handler)) as c,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        c.follow("m", backoff_s=0, reconnects=2)
    assert tries == 3


def test_fold_rejects_a_missing_or_repeated_id() -> None:
    """MessageFold raises StreamGapError on a gap or a duplicate after init."""
    from turnlog_reducer import TextDelta

    from turnlog.client import Init

    fold = MessageFold()
    fold.feed(StreamItem("init", 2, Init("m", 2, "generating", MessageFold().blocks)))
    fold.feed(StreamItem("text_delta", 3, TextDelta("x")))
    with pytest.raises(StreamGapError):
        fold.feed(StreamItem("text_delta", 3, TextDelta("x")))
    with pytest.raises(StreamGapError):
        fold.feed(StreamItem("text_delta", 5, TextDelta("x")))


def test_fold_goes_back_to_an_earlier_init_and_counts_it() -> None:
    """After its process died a message restarts from the stored checkpoint, which may be
    behind what was shown: a later init at a lower seq replaces the state (a rewind), and
    ``recovering`` is counted, not folded."""
    from turnlog_reducer import EMPTY, TextBlock, TextDelta

    from turnlog.client import Init, Recovering

    fold = MessageFold()
    fold.feed(StreamItem("init", 0, Init("m", 0, "generating", EMPTY)))
    fold.feed(StreamItem("text_delta", 1, TextDelta("a")))
    fold.feed(StreamItem("text_delta", 2, TextDelta("b")))
    stored = fold.blocks.__class__([TextBlock("a")])
    fold.feed(StreamItem("init", 1, Init("m", 1, "generating", stored)))
    fold.feed(StreamItem("recovering", None, Recovering(attempt=1)))
    fold.feed(StreamItem("text_delta", 2, TextDelta("c")))
    assert fold.text == "ac"
    assert (fold.rewinds, fold.recoveries, fold.inits) == (1, 1, 2)


def test_api_error_carries_status_and_detail() -> None:
    """A 4xx answer raises ApiError with the server's detail."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(409, json={"detail": "conversation c is generating"})

    with (
        Client("http://t", "tok", transport=httpx.MockTransport(handler)) as c,
        pytest.raises(ApiError) as e,
    ):
        c.send("c", "hi")
    assert e.value.status == 409
    assert e.value.detail == "conversation c is generating"


def test_heartbeat_comments_between_events_are_skipped() -> None:
    """`: ping` comments (and the blank line after them) never reach the fold."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = _init(0, "") + b": ping\n\n" + _delta(1, "a") + b": ping\n\n" + _done(2)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    with Client("http://t", "tok", transport=httpx.MockTransport(handler)) as c:
        items = list(c.stream_message("m"))
    assert [i.event for i in items] == ["init", "text_delta", "done"]
