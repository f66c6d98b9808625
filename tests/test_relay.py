"""The relay: frames of many streams on one batched byte stream, and mirrors fed from it.

The follower's side is exercised across real instances in tests/e2e/test_cluster.py; here
the owner's session and the record format are checked in process: whatever is published,
wherever the follow starts and however the bytes are cut on the way, a mirror built from
the snapshot and the records holds the owner's blocks and serves the owner's frames.
"""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from turnlog_reducer import (
    Done,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallReady,
    ToolCallStarted,
    decode_blocks,
    decode_event,
)

from turnlog.relay import HEADER, RecordReader, Relays, RelaySession, Snapshot, frame_data
from turnlog.streams import LiveStream, StreamFinished

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def answer(n: int) -> list[StreamEvent]:
    """A valid answer of about ``n`` events: text, reasoning and a tool call."""
    events: list[StreamEvent] = [ReasoningDelta(text="hm ")]
    events += [TextDelta(text=f"w{i} ") for i in range(n)]
    events += [
        ToolCallStarted(id="c1", name="search"),
        ToolCallDelta(id="c1", arguments_delta='{"q":'),
        ToolCallDelta(id="c1", arguments_delta='"x"}'),
        ToolCallReady(id="c1", arguments={"q": "x"}),
        TextDelta(text="é ✓ \n end"),
    ]
    return events


def mirror_of(snapshot: bytes, mid: uuid.UUID) -> LiveStream:
    snap = msgspec.json.decode(snapshot, type=Snapshot)
    return LiveStream(
        mid, blocks=decode_blocks(snap.blocks), seq=snap.seq, recovering=snap.recovering
    )


def cut(data: bytes, sizes: list[int]) -> list[bytes]:
    """``data`` in pieces of the given sizes (cycled), as a socket may deliver it."""
    pieces, pos, i = [], 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)] if sizes else len(data)
        pieces.append(data[pos : pos + size])
        pos += size
        i += 1
    return pieces


async def _relay_run(n: int, start: int, finish: bool, sizes: list[int], followers: int) -> None:
    owner = LiveStream(uuid.uuid4())
    events = answer(n)
    start = min(start, len(events))
    for event in events[:start]:
        owner.publish(event)
    session = RelaySession(uuid.uuid4())
    body = session.body(heartbeat_s=60.0)
    mirror = mirror_of(session.follow(owner), owner.message_id)
    k = mirror.seq
    assert k == owner.seq
    assert mirror.blocks == owner.blocks
    readers = [mirror.subscribe() for _ in range(followers)]
    for event in events[start:]:
        owner.publish(event)
    if finish:
        owner.finish(Done(status="completed", finish_reason="stop"))
    session.close()  # the body ends after what is buffered
    data = b"".join([batch async for batch in body])
    reader = RecordReader()
    for piece in cut(data, sizes):
        for key, seq, frame in reader.feed(piece):
            assert key == owner.message_id.bytes
            assert seq == mirror.seq + 1
            mirror.publish_encoded(decode_event(frame_data(frame)), frame)
    assert mirror.seq == owner.seq
    assert mirror.blocks == owner.blocks
    assert mirror.finished == finish
    assert mirror.status == owner.status
    # Byte for byte what the owner's own subscribers got after the snapshot.
    want = [owner._ring[s - 1] for s in range(k + 1, owner.seq + 1)]
    for sub in readers:
        got = []
        while (frame := sub._poll()) is not None:
            got.append(frame)
        assert got[0].startswith(b"event: init\nid: %d\n" % k)
        assert got[1:] == want


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 40),
    start=st.integers(0, 50),
    finish=st.booleans(),
    sizes=st.lists(st.integers(1, 200), max_size=5),
    followers=st.integers(0, 3),
)
def test_a_mirror_fed_by_the_relay_holds_the_owners_blocks_and_frames(
    n: int, start: int, finish: bool, sizes: list[int], followers: int
) -> None:
    asyncio.run(_relay_run(n, start, finish, sizes, followers))


async def test_frames_of_many_streams_share_one_write() -> None:
    session = RelaySession(uuid.uuid4())
    body = session.body(heartbeat_s=60.0)
    owners = [LiveStream(uuid.uuid4()) for _ in range(50)]
    for owner in owners:
        session.follow(owner)
    first = asyncio.ensure_future(anext(body))
    await asyncio.sleep(0)
    for owner in owners:
        owner.publish(TextDelta(text="a"))
        owner.publish(TextDelta(text="b"))
    batch = await first
    records = RecordReader().feed(batch)
    assert len(records) == 100  # one write for all of them
    assert [r[1] for r in records[:2]] == [1, 2]
    await body.aclose()
    assert session.closed
    assert not owners[0]._taps


async def test_a_finished_stream_hands_its_done_over_at_once() -> None:
    owner = LiveStream(uuid.uuid4())
    owner.publish(TextDelta(text="hi"))
    owner.finish(Done(status="completed"))
    session = RelaySession(uuid.uuid4())
    snap = msgspec.json.decode(session.follow(owner), type=Snapshot)
    assert snap.seq == 1
    assert snap.status == "generating"
    assert len(session) == 0  # nothing more can come
    session.close()
    (record,) = RecordReader().feed(b"".join([b async for b in session.body(60.0)]))
    assert record[1] == 2
    assert decode_event(frame_data(record[2])) == Done(status="completed")


async def test_a_handed_over_stream_sends_its_end_and_cannot_be_followed() -> None:
    owner = LiveStream(uuid.uuid4(), recovering=2)
    session = RelaySession(uuid.uuid4())
    snap = msgspec.json.decode(session.follow(owner), type=Snapshot)
    assert snap.recovering == 2
    owner.publish(TextDelta(text="hi"))
    owner.abandon()
    session.close()
    records = RecordReader().feed(b"".join([b async for b in session.body(60.0)]))
    assert [(r[1], r[2][:12]) for r in records] == [(1, b"event: text_"), (0, b"")]
    with pytest.raises(StreamFinished):
        RelaySession(uuid.uuid4()).follow(owner)


async def test_unfollow_stops_the_frames_and_an_idle_session_pings() -> None:
    owner = LiveStream(uuid.uuid4())
    session = RelaySession(uuid.uuid4())
    session.follow(owner)
    session.unfollow(owner.message_id)
    owner.publish(TextDelta(text="unseen"))
    body = session.body(heartbeat_s=0.05)
    ping = await anext(body)
    assert ping == HEADER.pack(bytes(16), 0, 0)
    assert RecordReader().feed(ping) == []  # pings are not records
    await body.aclose()


async def test_a_follower_that_stops_reading_is_cut_off() -> None:
    owner = LiveStream(uuid.uuid4())
    session = RelaySession(uuid.uuid4(), max_buffer=10_000)
    session.follow(owner)
    for i in range(200):
        owner.publish(TextDelta(text=f"{i:040d}"))
    await asyncio.sleep(0)  # the close is scheduled, not run inside the tap
    assert session.closed
    assert not owner._taps
    with pytest.raises(LookupError):
        session.follow(owner)


async def test_relays_replace_a_reopened_session_and_forget_a_finished_one() -> None:
    relays = Relays()
    sid = uuid.uuid4()
    first = relays.open(sid)
    second = relays.open(sid)
    assert first.closed
    assert relays.get(sid) is second
    body = relays.serve(second, 60.0)
    second.close()
    assert [b async for b in body] == []
    assert relays.get(sid) is None
    assert len(relays) == 0
