"""Send, stream, fold: the message stream and the conversation feed over real HTTP (§2, §3)."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from turnlog.client import Init, MessageFold

from .support import DEMO, FAST, Server, blocks_json, find, make_token, parse_sse

pytestmark = pytest.mark.slow

ROW_FIELDS = {
    "id",
    "conversation_id",
    "seq",
    "role",
    "content",
    "blocks",
    "status",
    "is_generating",
    "interrupted",
    "error",
    "finish_reason",
    "usage",
    "model",
    "reply_to",
    "tool_call_id",
    "tool_name",
    "edited_content",
    "edited_at",
    "created_at",
    "updated_at",
}
CONVERSATION_FIELDS = {
    "id",
    "title",
    "model",
    "options",
    "system_prompt",
    "state",
    "version",
    "created_at",
    "updated_at",
}


def test_send_stream_done_fold_equals_stored_blocks(server: Server) -> None:
    """init + deltas folded by the client equal the stored blocks of the completed row."""
    with server.client() as c:
        conv = c.create_conversation(title="fold", model=DEMO, options=FAST)
        sent = c.send(conv["id"], "hello there")
        user, assistant = sent["user_message"], sent["assistant_message"]
        assert user["role"] == "user"
        assert assistant["role"] == "assistant"
        assert assistant["seq"] == user["seq"] + 1
        assert assistant["status"] == "generating"
        assert assistant["is_generating"] is True

        fold = c.follow(assistant["id"])
        assert fold.done is not None
        assert fold.done.status == "completed"
        assert fold.text, "the demo answer has text"

        rows = c.list_messages(conv["id"])
        assert [r["seq"] for r in rows] == [1, 2]
        for r in rows:
            assert set(r) >= ROW_FIELDS, ROW_FIELDS - set(r)
        assert set(conv) >= CONVERSATION_FIELDS, CONVERSATION_FIELDS - set(conv)
        row = find(rows, assistant["id"])
        assert row["reply_to"] in (None, user["id"])
        assert row["conversation_id"] == conv["id"]
        assert row["status"] == "completed"
        assert row["is_generating"] is False
        assert row["interrupted"] is False
        assert row["error"] is None
        assert row["blocks"] == blocks_json(fold.blocks)


def test_reasoning_blocks_fold_equals_stored_blocks(server: Server) -> None:
    """With reasoning on, the stream carries reasoning and text blocks the store agrees with."""
    with server.client() as c:
        conv = c.create_conversation(model=DEMO, options={**FAST, "reasoning": True})
        assistant = c.send(conv["id"], "think first")["assistant_message"]
        fold = c.follow(assistant["id"])
        stored = find(c.list_messages(conv["id"]), assistant["id"])
        assert [b["type"] for b in stored["blocks"]] == ["reasoning", "text"]
        assert stored["blocks"] == blocks_json(fold.blocks)


def test_finished_message_answers_init_and_done_at_once(server: Server) -> None:
    """A finished message's stream is its final blocks in init, then done, immediately."""
    with server.client() as c:
        conv = c.create_conversation(model=DEMO, options=FAST)
        mid = c.send(conv["id"], "hi")["assistant_message"]["id"]
        c.follow(mid)
        time.sleep(5.5)  # past the 5 s linger: answered from the stored row
        start = time.monotonic()
        items = list(c.stream_message(mid, reconnects=0))
        assert time.monotonic() - start < 2.0
        assert [i.event for i in items] == ["init", "done"]
        init = items[0].data
        assert isinstance(init, Init)
        assert init.status == "completed"
        assert items[1].id == items[0].id + 1  # type: ignore[operator]
        stored = find(c.list_messages(conv["id"]), mid)
        assert blocks_json(init.blocks) == stored["blocks"]


def test_sse_headers_and_first_event(server: Server) -> None:
    """Message stream headers are flushed at once and the first event is init with its id."""
    with server.client() as c:
        conv = c.create_conversation(model=DEMO, options={"tokens_per_second": 1, "length": 30})
        mid = c.send(conv["id"], "slow please")["assistant_message"]["id"]
        try:
            with server.http() as h:
                start = time.monotonic()
                with h.stream("GET", f"/v1/messages/{mid}/stream") as r:
                    assert time.monotonic() - start < 3.0, "headers not flushed at once"
                    assert r.status_code == 200
                    assert r.headers["content-type"].startswith("text/event-stream")
                    assert "no-cache" in r.headers["cache-control"]
                    assert r.headers["x-accel-buffering"] == "no"
                    event, event_id, data = next(
                        e for e in parse_sse(r.iter_lines()) if e[0] is not None
                    )
                    assert event == "init"
                    assert event_id is not None
                    import json

                    payload = json.loads(data or "")
                    assert payload["seq"] == int(event_id)
                    assert payload["message_id"] == mid
                    assert payload["status"] == "generating"
                    assert isinstance(payload["blocks"], list)
        finally:
            c.cancel(mid)


def test_live_feed_headers_and_heartbeat_when_idle(server: Server) -> None:
    """An idle conversation feed sends `: ping` comments every TURNLOG_HEARTBEAT_S (0.5 s)."""
    with server.client() as c:
        cid = c.create_conversation(model=DEMO)["id"]
    pings = 0
    with (
        server.http(timeout=httpx.Timeout(5.0, read=3.0)) as h,
        h.stream("GET", f"/v1/conversations/{cid}/live") as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert "no-cache" in r.headers["cache-control"]
        assert r.headers["x-accel-buffering"] == "no"
        start = time.monotonic()
        first = True
        for event, _id, data in parse_sse(r.iter_lines()):
            if first:
                assert event == "snapshot"
                first = False
            elif event is None and data is not None and "ping" in data:
                pings += 1
            if time.monotonic() - start > 2.2:
                break
    assert pings >= 2, f"expected >= 2 pings in 2.2 s at 0.5 s heartbeat, got {pings}"


def test_message_stream_heartbeat_between_slow_tokens(server: Server) -> None:
    """A message stream idle between tokens (1 token/s) sends `: ping` at 0.5 s heartbeat."""
    with server.client() as c:
        conv = c.create_conversation(model=DEMO, options={"tokens_per_second": 0.5, "length": 20})
        mid = c.send(conv["id"], "very slow")["assistant_message"]["id"]
        pings = 0
        try:
            with (
                server.http(timeout=httpx.Timeout(5.0, read=4.0)) as h,
                h.stream("GET", f"/v1/messages/{mid}/stream") as r,
            ):
                start = time.monotonic()
                for event, _id, data in parse_sse(r.iter_lines()):
                    if event is None and data is not None and "ping" in data:
                        pings += 1
                    if time.monotonic() - start > 2.6:
                        break
        finally:
            c.cancel(mid)
    assert pings >= 2, f"expected >= 2 pings in 2.6 s between 2 s-apart tokens, got {pings}"


def test_live_feed_snapshot_then_message_events_with_increasing_ids(server: Server) -> None:
    """The feed opens with a snapshot at V, then message events whose ids (= versions) grow."""
    with server.client() as c:
        cid = c.create_conversation(model=DEMO, options=FAST)["id"]
        events: list[tuple[str, int, Any]] = []
        opened = threading.Event()
        errors: list[BaseException] = []

        def watch() -> None:
            try:
                with server.client(stream_read_timeout=10.0) as feed:
                    for event, event_id, data in feed.live(cid):
                        events.append((event, event_id, data))
                        opened.set()
                        if (
                            event == "message"
                            and data["message"]["role"] == "assistant"
                            and data["message"]["status"] == "completed"
                        ):
                            return
            except BaseException as e:
                errors.append(e)
                opened.set()

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        assert opened.wait(10), "no snapshot"
        sent = c.send(cid, "feed me")
        t.join(15)
        assert not t.is_alive(), f"feed never showed the completed assistant row: {events}"
        assert not errors, errors

        event, v0, snap = events[0]
        assert event == "snapshot"
        assert snap["version"] == v0
        assert snap["conversation"]["id"] == cid
        assert snap["messages"] == []
        # One stored event may change several rows (and the conversation): its frames
        # share that event's version, so ids never decrease and all follow the snapshot.
        ids = [e[1] for e in events]
        assert ids == sorted(ids), ids
        assert all(i > v0 for i in ids[1:]), ids
        for event, event_id, data in events[1:]:
            assert event in ("message", "conversation"), event
            assert data["version"] == event_id
        seen = {e[2]["message"]["id"] for e in events if e[0] == "message"}
        assert {sent["user_message"]["id"], sent["assistant_message"]["id"]} <= seen
        last = next(e[2]["message"] for e in reversed(events) if e[0] == "message")
        stored = find(c.list_messages(cid), last["id"])
        assert last["blocks"] == stored["blocks"]
        assert last["status"] == stored["status"]

        # Reconnecting with Last-Event-ID: a snapshot at the current version (>= the id).
        with server.client(stream_read_timeout=10.0) as feed:
            gen = feed.live(cid, last_event_id=ids[-1])
            event, event_id, data = next(gen)
            gen.close()
        assert event == "snapshot"
        assert event_id >= ids[-1]
        assert [m["id"] for m in data["messages"]] == [r["id"] for r in c.list_messages(cid)]


# --------------------------------------------------------------------------- property


def _subscriber(server: Server, mid: str, delay: float, drops: list[int]) -> MessageFold:
    """Join after ``delay``, drop the connection after each count in ``drops`` events and
    reconnect with Last-Event-ID, then read to done; checks ids on the way (MessageFold)."""
    time.sleep(delay)
    fold = MessageFold()
    last: int | None = None
    plan = list(drops)
    with server.client() as c:
        for _connection in range(len(drops) + 3):
            limit = plan.pop(0) if plan else None
            gen = c.stream_message(mid, last_event_id=last, reconnects=0)
            try:
                for n, item in enumerate(gen, start=1):
                    if n == 1:
                        assert item.event == "init", f"connection opened with {item.event}"
                        assert isinstance(item.data, Init)
                        assert item.id == item.data.seq
                    fold.feed(item)  # raises on a duplicate or missing id
                    last = item.id
                    if limit is not None and n >= limit:
                        break
            finally:
                gen.close()
            if fold.finished:
                return fold
    raise AssertionError(f"no done after {len(drops) + 3} connections")


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    plans=st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=0.5),
            st.lists(st.integers(min_value=1, max_value=40), max_size=3),
        ),
        min_size=1,
        max_size=4,
    ),
    reasoning=st.booleans(),
)
def test_subscribers_joining_and_dropping_all_fold_to_the_stored_blocks(
    server: Server, plans: list[tuple[float, list[int]]], reasoning: bool
) -> None:
    """Subscribers joining, dropping and resuming with Last-Event-ID all fold to the stored
    blocks, with ids strictly increasing after each init and no delta repeated or lost."""
    options = {"tokens_per_second": 250, "length": 100, "reasoning": reasoning}
    with server.client() as c:
        conv = c.create_conversation(model=DEMO, options=options)
        mid = c.send(conv["id"], "property")["assistant_message"]["id"]
        with ThreadPoolExecutor(len(plans)) as pool:
            futures = [pool.submit(_subscriber, server, mid, d, drops) for d, drops in plans]
            folds = [f.result(timeout=30) for f in futures]
        stored = find(c.list_messages(conv["id"]), mid)
    assert stored["status"] == "completed"
    for fold in folds:
        assert fold.done is not None
        assert fold.done.status == "completed"
        assert blocks_json(fold.blocks) == stored["blocks"]


def test_stuck_and_vanished_subscribers_neither_stop_nor_slow_the_generation(
    server: Server,
) -> None:
    """A subscriber that never reads and one that leaves after init do not slow or stop the
    generation: it finishes on schedule and a normal subscriber folds the stored blocks."""
    length, tps = 6000, 3000.0  # 2 s of tokens, ~400 kB of frames
    with server.client() as c:
        conv = c.create_conversation(
            model=DEMO, options={"tokens_per_second": tps, "length": length}
        )
        start = time.monotonic()
        mid = c.send(conv["id"], "flood")["assistant_message"]["id"]

        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(("127.0.0.1", server.port))
        stuck.sendall(
            f"GET /v1/messages/{mid}/stream HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {make_token('alice')}\r\n\r\n".encode()
        )
        try:
            with server.client() as gone:
                first = next(iter(gone.stream_message(mid, reconnects=0)))
                assert first.event == "init"
            fold = c.follow(mid)
            elapsed = time.monotonic() - start
        finally:
            stuck.close()
        assert fold.done is not None
        assert fold.done.status == "completed"
        assert elapsed < length / tps + 3.0, f"took {elapsed:.2f} s for {length / tps:.1f} s"
        stored = find(c.list_messages(conv["id"]), mid)
        assert stored["blocks"] == blocks_json(fold.blocks)
        assert len(fold.text.split()) == length
