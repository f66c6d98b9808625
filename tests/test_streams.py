"""The stream registry: snapshot + suffix at one offset, encoded once, never held back."""

from __future__ import annotations

import gc
import json
import uuid
import weakref
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given
from hypothesis import strategies as st
from turnlog_reducer import (
    EMPTY,
    Blocks,
    Done,
    ReasoningDelta,
    StreamEvent,
    StreamProtocolError,
    TextBlock,
    TextDelta,
    ToolCallDelta,
    ToolCallReady,
    ToolCallStarted,
    apply_stream_event,
    decode_blocks,
    decode_event,
    fold,
)

from turnlog.streams import (
    LiveStream,
    StreamAlreadyOpen,
    StreamFinished,
    StreamRegistry,
    Subscription,
    init_frame,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def parse(frame: bytes) -> tuple[str, int, bytes]:
    """Split one SSE frame into (event name, id, data)."""
    assert frame.endswith(b"\n\n")
    fields = dict(line.split(b": ", 1) for line in frame[:-2].split(b"\n"))
    assert set(fields) == {b"event", b"id", b"data"}
    return fields[b"event"].decode(), int(fields[b"id"]), fields[b"data"]


class Reader:
    """A client folding what it reads, checking ids the way a careful client would."""

    def __init__(self) -> None:
        self.blocks: Blocks | None = None
        self.expected: int | None = None
        self.inits: list[int] = []
        self.status: str | None = None
        self.frames = 0

    def feed(self, frame: bytes) -> None:
        name, seq, data = parse(frame)
        self.frames += 1
        if name == "init":
            payload = json.loads(data)
            assert payload["seq"] == seq
            assert not self.inits or seq >= self.inits[-1], "init went backwards"
            self.inits.append(seq)
            self.blocks = decode_blocks(json.dumps(payload["blocks"]))
            self.status = payload["status"]
            self.expected = seq + 1
            return
        assert self.blocks is not None, "a delta came before any init"
        assert seq == self.expected, f"expected seq {self.expected}, got {seq}"
        self.expected = seq + 1
        event = decode_event(data)
        assert name == json.loads(data)["type"]
        if isinstance(event, Done):
            self.status = event.status
        else:
            self.blocks = apply_stream_event(self.blocks, event)

    async def read_all(self, sub: Subscription) -> None:
        async for frame in sub:
            self.feed(frame)


def events_of(texts: Sequence[str]) -> list[StreamEvent]:
    """A valid event sequence: text and reasoning deltas with a tool call in the middle."""
    half = len(texts) // 2
    events: list[StreamEvent] = [TextDelta(t) for t in texts[:half]]
    events += [ToolCallStarted("c1", "clock"), ToolCallDelta("c1", "{}")]
    events += [ReasoningDelta(t) for t in texts[half:]]
    events.append(ToolCallReady("c1", {}))
    return events


@pytest.mark.anyio
async def test_subscriber_gets_init_then_every_frame_then_done() -> None:
    """A subscriber from the start folds init + frames to the stream's blocks and stops at done."""
    stream = StreamRegistry().open(uuid.uuid4())
    sub = stream.subscribe()
    reader = Reader()
    async with anyio.create_task_group() as tg:
        tg.start_soon(reader.read_all, sub)
        for event in events_of(["a", "b ", "c", "d"]):
            stream.publish(event)
            await anyio.lowlevel.checkpoint()
        stream.finish(Done("completed", finish_reason="stop"))
    assert reader.inits == [0]
    assert reader.blocks == stream.blocks == fold(EMPTY, events_of(["a", "b ", "c", "d"]))
    assert reader.status == "completed" == stream.status
    assert stream.finished
    assert stream.seq == 8


@given(
    texts=st.lists(st.text(max_size=5), min_size=2, max_size=60),
    joins=st.lists(st.integers(0, 70), max_size=8),
    bursts=st.lists(st.integers(1, 10), min_size=1, max_size=10),
    ring_size=st.sampled_from([1, 2, 3, 8, 4096]),
)
@pytest.mark.anyio
async def test_join_at_any_point_folds_to_the_final_blocks(
    texts: list[str], joins: list[int], bursts: list[int], ring_size: int
) -> None:
    """Subscribers joining at any point while bursts are published end with the final blocks."""
    stream = StreamRegistry(ring_size=ring_size).open(uuid.uuid4())
    events = events_of(texts)
    readers: list[Reader] = []
    async with anyio.create_task_group() as tg:
        for i, event in enumerate(events):
            for _ in range(joins.count(i)):
                reader = Reader()
                readers.append(reader)
                tg.start_soon(reader.read_all, stream.subscribe())
            stream.publish(event)
            if (i + 1) % bursts[i % len(bursts)] == 0:  # let readers run between bursts
                await anyio.lowlevel.checkpoint()
        stream.finish(Done("completed"))
        late = Reader()
        readers.append(late)
        tg.start_soon(late.read_all, stream.subscribe())
    for reader in readers:
        assert reader.blocks == stream.blocks
        assert reader.status == "completed"
        assert reader.expected == stream.seq + 1  # the done frame was the last one read
        if ring_size >= len(events) + 1:
            assert len(reader.inits) == 1, "resynchronised although nothing fell out"


@pytest.mark.anyio
async def test_stuck_subscriber_is_resynchronised_with_a_fresh_init() -> None:
    """A reader that stops reading never holds publish back and is resynchronised later."""
    stream = StreamRegistry(ring_size=4).open(uuid.uuid4())
    stuck = stream.subscribe()
    reader = Reader()
    reader.feed(await stuck.__anext__())
    for i in range(1000):  # synchronous: nothing here could wait for the stuck reader
        stream.publish(TextDelta(f"{i} "))
    frame = await stuck.__anext__()
    assert parse(frame)[:2] == ("init", 1000)
    reader.feed(frame)
    assert stuck.init_seq == 1000
    assert stuck.init_blocks == stream.blocks
    stream.publish(TextDelta("end"))
    stream.finish(Done("completed"))
    await reader.read_all(stuck)
    assert reader.inits == [0, 1000]
    assert reader.blocks == stream.blocks
    assert reader.blocks[0] == TextBlock("".join(f"{i} " for i in range(1000)) + "end")


@pytest.mark.anyio
async def test_last_event_id_gets_snapshot_at_current_seq_then_suffix() -> None:
    """subscribe(after=n) answers init at the current K >= n, never a bare suffix."""
    stream = StreamRegistry().open(uuid.uuid4())
    for t in "abcde":
        stream.publish(TextDelta(t))
    for after in (0, 2, 5, 9):  # 9: ahead of the stream, still init at the current K
        k = stream.seq
        sub = stream.subscribe(after=after)
        name, seq, data = parse(await sub.__anext__())
        assert (name, seq) == ("init", k)
        assert decode_blocks(json.dumps(json.loads(data)["blocks"])) == stream.blocks
        assert stream.publish(TextDelta("+")) == k + 1
        assert parse(await sub.__anext__())[:2] == ("text_delta", k + 1)
        sub.close()
    assert parse(await stream.subscribe(after=-1).__anext__())[:2] == ("init", stream.seq)


@pytest.mark.anyio
async def test_open_from_checkpoint_continues_its_seq() -> None:
    """A stream opened from a stored checkpoint answers init at its seq and numbers onward."""
    registry = StreamRegistry()
    checkpoint = fold(EMPTY, [TextDelta("hello ")])
    stream = registry.open(uuid.uuid4(), blocks=list(checkpoint), seq=41)
    sub = stream.subscribe()
    assert parse(await sub.__anext__())[:2] == ("init", 41)
    assert stream.publish(TextDelta("world")) == 42
    assert parse(await sub.__anext__())[:2] == ("text_delta", 42)
    assert stream.blocks == [TextBlock("hello world")]


@pytest.mark.anyio
async def test_finished_stream_answers_final_init_then_done() -> None:
    """A late subscriber to a finished stream gets init (final status, K = D - 1) and done."""
    stream = StreamRegistry().open(uuid.uuid4())
    stream.publish(TextDelta("all"))
    stream.finish(Done("aborted"))
    frames = [frame async for frame in stream.subscribe()]
    assert [parse(f)[:2] for f in frames] == [("init", 1), ("done", 2)]
    assert json.loads(parse(frames[0])[2])["status"] == "aborted"
    assert json.loads(parse(frames[1])[2]) == {"type": "done", "status": "aborted"}


@pytest.mark.anyio
async def test_publish_after_finish_raises() -> None:
    """Nothing may follow done: publish and a second finish raise StreamFinished."""
    stream = StreamRegistry().open(uuid.uuid4())
    stream.finish(Done("completed"))
    with pytest.raises(StreamFinished):
        stream.publish(TextDelta("late"))
    with pytest.raises(StreamFinished):
        stream.finish(Done("completed"))
    assert stream.seq == 1


@pytest.mark.anyio
async def test_publish_of_done_finishes_the_stream() -> None:
    """publish(Done) is finish(Done): the stream ends and the seq is returned."""
    stream = StreamRegistry().open(uuid.uuid4())
    assert stream.publish(Done("error", error="boom")) == 1
    assert stream.finished
    assert stream.status == "error"


@pytest.mark.anyio
async def test_invalid_event_changes_nothing() -> None:
    """An event invalid in context raises StreamProtocolError and leaves no trace."""
    stream = StreamRegistry().open(uuid.uuid4())
    sub = stream.subscribe()
    await sub.__anext__()
    stream.publish(TextDelta("a"))
    with pytest.raises(StreamProtocolError):
        stream.publish(ToolCallDelta("nope", "{"))
    assert stream.seq == 1
    assert stream.blocks == [TextBlock("a")]
    stream.publish(TextDelta("b"))
    assert [parse(await sub.__anext__())[1] for _ in range(2)] == [1, 2]


@pytest.mark.anyio
async def test_open_twice_raises_until_finished() -> None:
    """A message has one live stream; a finished one may be replaced by a new open."""
    registry = StreamRegistry()
    mid = uuid.uuid4()
    first = registry.open(mid)
    with pytest.raises(StreamAlreadyOpen):
        registry.open(mid)
    first.finish(Done("interrupted"))
    second = registry.open(mid, seq=first.seq)
    assert registry.get(mid) is second
    assert len(registry) == 1


@pytest.mark.anyio
async def test_finished_streams_linger_then_are_dropped() -> None:
    """The janitor drops a finished stream linger_s after it finished, returning the memory."""
    registry = StreamRegistry(linger_s=0.05)
    async with anyio.create_task_group() as tg:
        tg.start_soon(registry.run)
        live = registry.open(uuid.uuid4())
        done = registry.open(uuid.uuid4())
        done.finish(Done("completed"))
        assert registry.get(done.message_id) is done
        await anyio.sleep(0.2)
        assert len(registry) == 1  # len does not purge: the janitor did
        assert registry.get(done.message_id) is None
        assert registry.get(live.message_id) is live
        freed = weakref.ref(live)
        live.finish(Done("completed"))
        del live, done
        await anyio.sleep(0.2)
        assert len(registry) == 0
        gc.collect()
        assert freed() is None, "a dropped stream is still referenced"
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_get_drops_expired_streams_without_the_janitor() -> None:
    """Correctness does not depend on the janitor: get never returns an expired stream."""
    registry = StreamRegistry(linger_s=0.01)
    stream = registry.open(uuid.uuid4())
    stream.finish(Done("completed"))
    await anyio.sleep(0.05)
    assert registry.get(stream.message_id) is None
    assert len(registry) == 0


@pytest.mark.anyio
async def test_next_frame_returns_none_when_idle() -> None:
    """next_frame gives None after the timeout, frames when they come, and ends after done."""
    stream = StreamRegistry().open(uuid.uuid4())
    sub = stream.subscribe()
    assert parse(await sub.next_frame(1.0) or b"")[0] == "init"
    assert await sub.next_frame(0.02) is None
    stream.publish(TextDelta("x"))
    assert parse(await sub.next_frame(1.0) or b"")[:2] == ("text_delta", 1)

    async def finish_soon() -> None:
        await anyio.sleep(0.01)
        stream.finish(Done("completed"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(finish_soon)
        assert parse(await sub.next_frame(1.0) or b"")[0] == "done"
    with pytest.raises(StopAsyncIteration):
        await sub.next_frame(1.0)


@pytest.mark.anyio
async def test_close_ends_the_iteration() -> None:
    """A closed subscription yields nothing more and no longer counts as a subscriber."""
    stream = StreamRegistry().open(uuid.uuid4())
    sub = stream.subscribe()
    assert stream.subscriber_count == 1
    sub.close()
    sub.close()
    stream.publish(TextDelta("x"))
    assert [frame async for frame in sub] == []
    assert stream.subscriber_count == 0


@pytest.mark.anyio
async def test_frames_are_encoded_once_for_all_subscribers() -> None:
    """Publish cost does not grow with subscribers: every reader gets the same bytes object."""
    stream = StreamRegistry().open(uuid.uuid4())
    subs = [stream.subscribe() for _ in range(300)]
    inits = [await sub.__anext__() for sub in subs]
    assert all(frame is inits[0] for frame in inits), "init encoded per subscriber"
    got: list[bytes] = []

    async def read_one(sub: Subscription) -> None:
        got.append(await sub.__anext__())

    async with anyio.create_task_group() as tg:
        for sub in subs:
            tg.start_soon(read_one, sub)
        await anyio.sleep(0.01)  # every reader is now waiting on the one broadcast event
        stream.publish(TextDelta("shared"))
    assert len(got) == 300
    assert all(frame is got[0] for frame in got), "frame encoded per subscriber"


def test_init_frame_matches_the_contract() -> None:
    """init_frame writes the contract's init event (used for stored rows too)."""
    mid = uuid.uuid4()
    frame = init_frame(mid, 3, "interrupted", fold(EMPTY, [TextDelta("hi")]))
    name, seq, data = parse(frame)
    payload: dict[str, Any] = json.loads(data)
    assert (name, seq) == ("init", 3)
    assert payload == {
        "message_id": str(mid),
        "seq": 3,
        "status": "interrupted",
        "blocks": [{"type": "text", "text": "hi"}],
    }


def test_stream_validates_its_arguments() -> None:
    """Negative seq or an empty ring are refused with a readable message."""
    with pytest.raises(ValueError, match="seq"):
        LiveStream(uuid.uuid4(), seq=-1)
    with pytest.raises(ValueError, match="ring_size"):
        StreamRegistry(ring_size=0)
