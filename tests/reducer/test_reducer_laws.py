"""The reducer's laws (docs/protocol.md, "Laws"), one property test each: they are its spec."""

from __future__ import annotations

import copy
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from turnlog_reducer import (
    EMPTY,
    Blocks,
    ReasoningBlock,
    ReasoningDelta,
    ReasoningRedacted,
    Signature,
    StreamEvent,
    StreamProtocolError,
    TextBlock,
    TextDelta,
    ToolCallBlock,
    ToolCallDelta,
    ToolCallReady,
    ToolCallStarted,
    apply_stream_event,
    decode_blocks,
    decode_event,
    encode_blocks,
    encode_event,
    fold,
)

from tests.strategies import (
    event_sequences,
    events,
    invalid_streams,
    is_sealed,
    reference_fold,
    split_sequences,
    streams,
    texts,
    unknown_type_event_json,
    wrong_type_event_json,
)


@given(streams)
def test_fold_follows_the_effect_table(evs: list[StreamEvent]) -> None:
    """Folding a valid stream gives what the contract's table says, block for block."""
    assert fold(EMPTY, evs) == reference_fold(evs)


@given(split_sequences())
def test_purity_input_unchanged_and_output_determined(case: tuple[list[StreamEvent], int]) -> None:
    """apply_stream_event never changes its input, and equal inputs give equal outputs."""
    evs, k = case
    state = fold(EMPTY, evs[:k])
    before, before_json = copy.deepcopy(state), encode_blocks(state)
    as_list = list(state)
    for event in evs[k:]:
        first = apply_stream_event(state, event)
        again = apply_stream_event(state, event)
        from_list = apply_stream_event(as_list, event)
        assert first == again == from_list
        assert state == before
        assert encode_blocks(state) == before_json
        assert as_list == list(before)
        state, before, before_json = first, copy.deepcopy(first), encode_blocks(first)
        as_list = list(first)


@given(split_sequences(), streams)
def test_purity_under_forks(case: tuple[list[StreamEvent], int], other: list[StreamEvent]) -> None:
    """Two different streams folded step by step from one shared state never disturb each other."""
    evs, k = case
    prefix, left, right = evs[:k], evs[k:], _continuation(evs[:k], other)
    base = fold(EMPTY, prefix)
    a = b = base
    for i in range(max(len(left), len(right))):
        # Alternate the branches so each one appends to chunk lists the other also holds.
        if i < len(left):
            a = apply_stream_event(a, left[i])
        if i < len(right):
            b = apply_stream_event(b, right[i])
        # A third fork from the shared base at every step.
        apply_stream_event(base, TextDelta("x"))
        apply_stream_event(base, ReasoningDelta("y"))
    assert base == reference_fold(prefix)
    assert a == reference_fold(prefix + left)
    assert b == reference_fold(prefix + right)


def _continuation(prefix: list[StreamEvent], other: list[StreamEvent]) -> list[StreamEvent]:
    """``other`` made valid after ``prefix``: ids the prefix started are renamed apart.

    Ids not in the prefix stay as drawn, so the two branches often start the same id.
    """
    taken = {e.id for e in prefix if isinstance(e, ToolCallStarted)}
    renamed: list[StreamEvent] = []
    for e in other:
        if isinstance(e, ToolCallStarted | ToolCallDelta | ToolCallReady) and e.id in taken:
            e = msgspec.structs.replace(e, id="fork-" + e.id)
        renamed.append(e)
    return renamed


@given(streams)
def test_snapshot_at_k_through_json_plus_replay_is_full_replay(evs: list[StreamEvent]) -> None:
    """Decoding the encoded fold of ev[:K], then folding ev[K:] on it, equals fold(EMPTY, ev)."""
    full = fold(EMPTY, evs)
    for k in range(len(evs) + 1):
        snapshot = decode_blocks(encode_blocks(fold(EMPTY, evs[:k])))
        assert fold(snapshot, evs[k:]) == full


@given(streams)
def test_append_only_indices_are_stable(evs: list[StreamEvent]) -> None:
    """A block keeps its index and kind; only the last text/reasoning block and tool args grow."""
    prev: Blocks = EMPTY
    for event in evs:
        nxt = apply_stream_event(prev, event)
        assert len(prev) <= len(nxt) <= len(prev) + 1
        for i, (old, new) in enumerate(zip(prev, nxt, strict=False)):
            assert type(old) is type(new)
            if isinstance(old, ToolCallBlock):
                assert isinstance(new, ToolCallBlock)
                assert (new.id, new.name) == (old.id, old.name)
                assert new.arguments_text.startswith(old.arguments_text)
                assert new.ready or not old.ready
            elif i < len(prev) - 1:
                assert new == old, "a text/reasoning block before the last must not change"
            elif is_sealed(old):
                assert new.text == old.text, "a signed or redacted block never grows"
                assert is_sealed(new)
            else:
                assert isinstance(new, TextBlock | ReasoningBlock)
                assert isinstance(old, TextBlock | ReasoningBlock)
                assert new.text.startswith(old.text)
        prev = nxt


@given(streams, st.data())
def test_empty_deltas_leave_the_state_equal(evs: list[StreamEvent], data: st.DataObject) -> None:
    """An empty text, reasoning or (known-id) argument delta leaves the state equal."""
    state = EMPTY
    for event in evs:
        state = apply_stream_event(state, event)
        known = [b.id for b in state if isinstance(b, ToolCallBlock)]
        empties: list[StreamEvent] = [TextDelta(""), ReasoningDelta("")]
        empties += [ToolCallDelta(i, "") for i in known]
        empty = data.draw(st.sampled_from(empties))
        after = apply_stream_event(state, empty)
        assert after == state
        assert len(after) == len(state)


@given(events)
def test_event_json_round_trip(event: StreamEvent) -> None:
    """decode_event(encode_event(e)) == e, from bytes and from str."""
    raw = encode_event(event)
    assert decode_event(raw) == event
    assert decode_event(raw.decode()) == event


@given(streams)
def test_blocks_json_round_trip(evs: list[StreamEvent]) -> None:
    """decode_blocks(encode_blocks(b)) == b, and re-encoding gives the same bytes."""
    state = fold(EMPTY, evs)
    raw = encode_blocks(state)
    assert decode_blocks(raw) == state
    assert encode_blocks(decode_blocks(raw.decode())) == raw


@given(st.one_of(wrong_type_event_json(), unknown_type_event_json()))
def test_invalid_event_json_raises_validation_error(obj: dict[str, Any]) -> None:
    """An unknown ``type`` or a field of the wrong type raises msgspec.ValidationError."""
    with pytest.raises(msgspec.ValidationError):
        decode_event(msgspec.json.encode(obj))


@given(invalid_streams())
def test_invalid_tool_call_events_raise_stream_protocol_error(
    case: tuple[list[StreamEvent], StreamEvent, str],
) -> None:
    """Unknown-id delta/ready and a reused started id raise StreamProtocolError naming the id."""
    prefix, bad, tool_id = case
    state = fold(EMPTY, prefix)
    before = copy.deepcopy(state)
    with pytest.raises(StreamProtocolError, match=repr(tool_id)) as caught:
        apply_stream_event(state, bad)
    assert isinstance(caught.value, ValueError)
    assert state == before


@given(streams)
def test_blocks_without_new_keys_encode_as_before(evs: list[StreamEvent]) -> None:
    """Only blocks that were signed or redacted carry ``signature``/``redacted`` in their JSON."""
    for block in json.loads(encode_blocks(fold(EMPTY, evs))):
        fields = {"text"} if block["type"] != "tool_call" else set(_TOOL_FIELDS)
        extra = set(block) - fields - {"type"}
        assert extra <= {"signature", "redacted"}
        assert "redacted" not in extra or block["type"] == "reasoning"


_TOOL_FIELDS = ("id", "name", "arguments_text", "arguments", "ready")


@given(event_sequences(), texts)
def test_signed_blocks_are_sealed(evs: list[StreamEvent], text: str) -> None:
    """After a signature or a redaction, a delta of the same kind starts a new block."""
    for sealing in (Signature("s"), ReasoningRedacted("enc")):
        state = fold(EMPTY, [*evs, TextDelta("x"), ReasoningDelta("r"), sealing])
        after = apply_stream_event(state, ReasoningDelta(text or "y"))
        assert len(after) == len(state) + 1
        assert after[: len(state)] == state


@given(texts)
def test_signature_without_a_block_raises(signature: str) -> None:
    """A ``signature`` on an empty state raises StreamProtocolError and changes nothing."""
    with pytest.raises(StreamProtocolError, match="no block to sign"):
        apply_stream_event(EMPTY, Signature(signature))
    with pytest.raises(StreamProtocolError):
        apply_stream_event([], Signature(signature))
    assert len(EMPTY) == 0
