"""The UI message stream mapping (turnlog.uichat.mapping): live and stored turns cannot disagree."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from turnlog_reducer import (
    Done,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallReady,
    ToolCallStarted,
    fold,
)

from tests.strategies import split_sequences
from turnlog import uichat
from turnlog.log.projection import Message, MessageRecord
from turnlog.uichat import StepEncoder

AT = datetime(2026, 1, 1, tzinfo=UTC)
CID = uuid.UUID(int=1)

# The fields `ai` 5.0.0 allows per chunk type (it validates with z.strictObject, the
# strictest of 5, 6 and 7): a chunk with any other field kills that client's stream.
STRICT_FIELDS: dict[str, set[str]] = {
    "start": {"messageId", "messageMetadata"},
    "start-step": set(),
    "finish-step": set(),
    "text-start": {"id", "providerMetadata"},
    "text-delta": {"id", "delta", "providerMetadata"},
    "text-end": {"id", "providerMetadata"},
    "reasoning-start": {"id", "providerMetadata"},
    "reasoning-delta": {"id", "delta", "providerMetadata"},
    "reasoning-end": {"id", "providerMetadata"},
    "tool-input-start": {"toolCallId", "toolName", "providerExecuted", "dynamic"},
    "tool-input-delta": {"toolCallId", "inputTextDelta"},
    "tool-input-available": {
        "toolCallId",
        "toolName",
        "input",
        "providerExecuted",
        "providerMetadata",
        "dynamic",
    },
    "tool-output-available": {"toolCallId", "output", "providerExecuted", "dynamic"},
    "message-metadata": {"messageMetadata"},
    "finish": {"messageMetadata"},
    "abort": set(),
    "error": {"errorText"},
}
REQUIRED = {"text-delta": {"id", "delta"}, "tool-input-available": {"toolCallId", "toolName"}}


def wire(chunks: list[uichat.Chunk]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [msgspec.json.decode(uichat.encode_chunk(c)) for c in chunks]
    return out


def row(
    role: str,
    seq: int,
    *,
    status: str = "completed",
    blocks: tuple[Any, ...] = (),
    content: str | None = None,
    reply_to: uuid.UUID | None = None,
    tool_call_id: str | None = None,
    tool_name: str | None = None,
    finish_reason: str | None = None,
    error: str | None = None,
    client_message_id: str | None = None,
) -> MessageRecord:
    m = Message(
        id=uuid.UUID(int=1000 + seq),
        conversation_id=CID,
        seq=seq,
        role=role,  # type: ignore[arg-type]
        content=content,
        blocks=blocks,
        status=status,  # type: ignore[arg-type]
        is_generating=status == "generating",
        interrupted=status == "interrupted",
        error=error,
        finish_reason=finish_reason,
        usage=None,
        model="demo:default",
        reply_to=reply_to,
        tool_call_id=tool_call_id,
        tool_name=tool_name,
        edited_content=None,
        edited_at=None,
        created_at=AT,
        updated_at=AT,
    )
    return MessageRecord(message=m, client_message_id=client_message_id)


def step_chunks(evs: list[StreamEvent], k: int) -> list[uichat.Chunk]:
    """A client joining a step after ``k`` events: the snapshot, then the live rest."""
    encoder = StepEncoder("r")
    out = encoder.load(fold((), evs[:k]))
    for ev in evs[k:]:
        out += encoder.event(ev)
    return out + encoder.close()


@given(split_sequences())
def test_snapshot_then_live_assembles_like_the_stored_step(case: tuple[list[Any], int]) -> None:
    """Joining at any K (snapshot at K, events after K) assembles what the stored row does."""
    evs = [e for e in case[0] if not isinstance(e, Done)]
    k = min(case[1], len(evs))
    stored = StepEncoder("r")
    stored_chunks = stored.load(fold((), evs)) + stored.close()
    expected = uichat.assemble(stored_chunks)
    assert uichat.assemble(step_chunks(evs, k)) == expected
    assert uichat.assemble(step_chunks(evs, 0)) == expected


@given(split_sequences(), st.data())
def test_a_resync_mid_step_assembles_like_the_stored_step(
    case: tuple[list[Any], int], data: st.DataObject
) -> None:
    """A reader that fell behind and jumps to a later snapshot (a resync) loses nothing."""
    evs = [e for e in case[0] if not isinstance(e, Done)]
    k = min(case[1], len(evs))
    j = data.draw(st.integers(k, len(evs)))
    enc = StepEncoder("r")
    chunks = enc.load(fold((), evs[:k]))
    for ev in evs[k:j]:
        chunks += enc.event(ev)
    later = data.draw(st.integers(j, len(evs)))
    chunks += enc.load(fold((), evs[:later]))
    for ev in evs[later:]:
        chunks += enc.event(ev)
    chunks += enc.close()
    stored = StepEncoder("r")
    assert uichat.assemble(chunks) == uichat.assemble(stored.load(fold((), evs)) + stored.close())


@given(split_sequences())
def test_every_chunk_is_one_the_strictest_client_accepts(case: tuple[list[Any], int]) -> None:
    """Only chunk types and fields that ai 5.0.0's strict schema knows are ever produced."""
    evs = [e for e in case[0] if not isinstance(e, Done)]
    for chunk in wire(step_chunks(evs, case[1])):
        kind = chunk.pop("type")
        assert kind in STRICT_FIELDS
        assert set(chunk) <= STRICT_FIELDS[kind], (kind, chunk)
        assert REQUIRED.get(kind, set()) <= set(chunk)


def test_text_parts_stay_open_until_a_new_block_starts() -> None:
    """A text part grows with deltas on one id and ends when a tool call starts."""
    enc = StepEncoder("r")
    chunks = enc.event(TextDelta("Hel")) + enc.event(TextDelta("lo"))
    chunks += enc.event(ToolCallStarted("c1", "clock"))
    chunks += enc.event(ToolCallDelta("c1", '{"a"'))
    chunks += enc.event(ToolCallReady("c1", {"a": 1}))
    assert wire(chunks) == [
        {"type": "text-start", "id": "r:0"},
        {"type": "text-delta", "id": "r:0", "delta": "Hel"},
        {"type": "text-delta", "id": "r:0", "delta": "lo"},
        {"type": "text-end", "id": "r:0"},
        {
            "type": "tool-input-start",
            "toolCallId": "c1",
            "toolName": "clock",
            "providerExecuted": True,
        },
        {"type": "tool-input-delta", "toolCallId": "c1", "inputTextDelta": '{"a"'},
        {
            "type": "tool-input-available",
            "toolCallId": "c1",
            "toolName": "clock",
            "input": {"a": 1},
            "providerExecuted": True,
        },
    ]


def tool_turn(last_status: str = "completed") -> list[MessageRecord]:
    user = row("user", 1, content="What time is it?", client_message_id="ui-1")
    call = ToolCallStarted("c1", "clock"), ToolCallReady("c1", {"timezone": "UTC"})
    step1 = row(
        "assistant",
        2,
        blocks=tuple(fold((), call)),
        reply_to=user.message.id,
        finish_reason="tool_calls",
    )
    result = row(
        "tool",
        3,
        content="2026-01-01T00:00:00+00:00",
        reply_to=step1.message.id,
        tool_call_id="c1",
        tool_name="clock",
    )
    step2 = row(
        "assistant",
        4,
        status=last_status,
        blocks=tuple(fold((), [TextDelta("The clock says 2026.")])),
        reply_to=user.message.id,
        finish_reason="stop" if last_status == "completed" else None,
        error="provider failed" if last_status == "error" else None,
    )
    return [user, step1, result, step2]


def test_a_tool_loop_is_one_ui_message_of_two_steps() -> None:
    """Step rows and the tool row between them become one assistant UIMessage."""
    user, answer = uichat.ui_messages(tool_turn())
    question = [{"type": "text", "text": "What time is it?"}]
    assert user == {"id": "ui-1", "role": "user", "parts": question}
    assert answer["id"] == str(uuid.UUID(int=1002))
    assert answer["metadata"] == {"status": "completed", "finishReason": "stop"}
    assert answer["parts"] == [
        {"type": "step-start"},
        {
            "type": "tool-clock",
            "toolCallId": "c1",
            "state": "output-available",
            "providerExecuted": True,
            "input": {"timezone": "UTC"},
            "output": "2026-01-01T00:00:00+00:00",
        },
        {"type": "step-start"},
        {"type": "text", "text": "The clock says 2026.", "state": "done"},
    ]


@pytest.mark.parametrize(
    ("status", "last"),
    [
        (
            "completed",
            {"type": "finish", "messageMetadata": {"status": "completed", "finishReason": "stop"}},
        ),
        ("aborted", {"type": "abort"}),
        ("error", {"type": "error", "errorText": "provider failed"}),
        ("interrupted", {"type": "error", "errorText": uichat.INTERRUPTED_TEXT}),
    ],
)
def test_a_turn_ends_with_the_terminal_chunk_of_its_status(
    status: str, last: dict[str, Any]
) -> None:
    """completed -> finish, aborted -> abort, error and interrupted -> error; status in metadata."""
    turn = uichat.group_turns(tool_turn(status))[1]
    assert isinstance(turn, uichat.UITurn)
    chunks = wire(uichat.turn_chunks(turn))
    assert chunks[0] == {"type": "start", "messageId": str(uuid.UUID(int=1002))}
    assert chunks[-1] == last
    assert uichat.assemble(uichat.turn_chunks(turn))["metadata"]["status"] == status


def test_a_generating_turn_is_left_to_the_resume() -> None:
    """GET …/messages leaves out a turn still generating (the resume stream delivers it)."""
    assert [m["role"] for m in uichat.ui_messages(tool_turn("generating"))] == ["user"]


def test_a_retried_step_replaces_the_one_it_retried() -> None:
    """An ended, not completed step followed by another step of its turn is left out."""
    user = row("user", 1, content="hi")
    failed = row("assistant", 2, status="interrupted", reply_to=user.message.id)
    retry = row("assistant", 3, blocks=tuple(fold((), [TextDelta("ok")])), reply_to=user.message.id)
    turn = uichat.group_turns([user, failed, retry])[1]
    assert isinstance(turn, uichat.UITurn)
    assert [s.seq for s in turn.steps] == [3]
    assert turn.message_id == str(retry.message.id)


def test_a_continuation_assembles_onto_the_message_the_client_holds() -> None:
    """After an ask_user answer, the new chunks extend the same UIMessage."""
    user = row("user", 1, content="Plan")
    call = ToolCallStarted("q1", "ask_user"), ToolCallReady("q1", {"question": "?"})
    asking = row("assistant", 2, blocks=tuple(fold((), call)), reply_to=user.message.id)
    before = uichat.ui_messages([user, asking])[1]
    assert before["parts"][1]["state"] == "input-available"
    assert "providerExecuted" not in before["parts"][1]
    answer = row(
        "tool",
        3,
        content="durability",
        reply_to=asking.message.id,
        tool_call_id="q1",
        tool_name="ask_user",
    )
    reply = row(
        "assistant",
        4,
        blocks=tuple(fold((), [TextDelta("You answered")])),
        reply_to=user.message.id,
        finish_reason="stop",
    )
    rows = [user, asking, answer, reply]
    turn = uichat.group_turns(rows)[1]
    assert isinstance(turn, uichat.UITurn)
    enc = StepEncoder(str(reply.message.id))
    continuation = [
        uichat.Start(message_id=turn.message_id),
        *uichat.tool_outputs([answer.message]),
        uichat.StartStep(),
        *enc.load(reply.message.blocks),
        *uichat.step_end(enc, []),
        *uichat.terminal(reply.message),
    ]
    assert uichat.assemble(continuation, before) == uichat.ui_messages(rows)[1]


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ("stop", "stop"),
        ("tool_calls", "tool-calls"),
        ("length", "length"),
        ("content_filter", "content-filter"),
        ("weird", "other"),
        (None, None),
    ],
)
def test_finish_reasons_use_the_ai_sdk_names(ours: str | None, theirs: str | None) -> None:
    """Finish reasons are named as the AI SDK's enum does (anything unknown is "other")."""
    assert uichat.finish_reason(ours) == theirs
