"""The history pass: what the model sees of stored rows, for every provider alike."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from turnlog_reducer import Block, ReasoningBlock, TextBlock, ToolCallBlock

from turnlog.generation.history import NOT_RUN, build_history
from turnlog.log.projection import Message, MessageRecord
from turnlog.providers.base import ChatMessage

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CID = uuid.uuid4()


class Rows:
    """Builds a conversation's rows in seq order."""

    def __init__(self) -> None:
        self.rows: list[MessageRecord] = []
        self.question: uuid.UUID | None = None

    def _add(self, role: str, **fields: Any) -> Message:
        base: dict[str, Any] = {
            "id": uuid.uuid4(),
            "conversation_id": CID,
            "seq": len(self.rows) + 1,
            "role": role,
            "content": None,
            "blocks": (),
            "status": "completed",
            "is_generating": False,
            "interrupted": False,
            "error": None,
            "finish_reason": None,
            "usage": None,
            "model": None,
            "reply_to": None,
            "tool_call_id": None,
            "tool_name": None,
            "edited_content": None,
            "edited_at": None,
            "created_at": NOW,
            "updated_at": NOW,
            # One path: each row follows the one before it.
            "parent_id": self.rows[-1].message.id if self.rows else None,
        }
        m = Message(**{**base, **fields})
        self.rows.append(MessageRecord(message=m))
        return m

    def user(self, text: str, edited: str | None = None) -> Message:
        m = self._add("user", content=text, edited_content=edited)
        self.question = m.id
        return m

    def assistant(self, *blocks: Block, status: str = "completed") -> Message:
        return self._add("assistant", blocks=blocks, status=status, reply_to=self.question)

    def tool(self, call_id: str, content: str, name: str = "clock") -> Message:
        return self._add("tool", content=content, tool_call_id=call_id, tool_name=name)

    def history(self) -> tuple[ChatMessage, ...]:
        return build_history(self.rows, before_seq=len(self.rows) + 1)


def call(call_id: str) -> ToolCallBlock:
    return ToolCallBlock(call_id, "clock", "{}", {}, True)


def test_completed_turns_with_tools_and_edited_text() -> None:
    """User rows use their edited text; completed rows and tool results count as they are."""
    r = Rows()
    r.user("tyop", edited="typo")
    signed = ReasoningBlock("hm", signature="sig")
    r.assistant(signed, TextBlock("Checking."), call("c1"))
    r.tool("c1", "12:00")
    r.assistant(TextBlock("It is noon."))
    assert r.history() == (
        ChatMessage(role="user", content="typo"),
        ChatMessage(role="assistant", blocks=(signed, TextBlock("Checking."), call("c1"))),
        ChatMessage(role="tool", content="12:00", tool_call_id="c1", tool_name="clock"),
        ChatMessage(role="assistant", blocks=(TextBlock("It is noon."),)),
    )


def test_a_retried_row_is_replaced_and_a_failed_one_dropped() -> None:
    """A failed row drops out; its question and the next one merge into one user turn."""
    r = Rows()
    r.user("first")
    r.assistant(TextBlock("half an ans"), status="error")
    r.user("second")
    r.assistant(TextBlock("cut"), status="interrupted")
    r.assistant(TextBlock("full answer"))  # the retry of the interrupted row
    assert r.history() == (
        ChatMessage(role="user", content="first\n\nsecond"),
        ChatMessage(role="assistant", blocks=(TextBlock("full answer"),)),
    )


def test_an_aborted_row_keeps_what_the_user_saw_and_dangling_calls_get_results() -> None:
    """Text, signed reasoning and finished calls stay; each call without a result gets one."""
    r = Rows()
    r.user("go")
    unfinished = ToolCallBlock("c2", "clock", '{"time', None, True)
    r.assistant(
        ReasoningBlock("unsigned thou"),
        ReasoningBlock("", signature="enc", redacted=True),
        TextBlock("Let me check"),
        call("c1"),
        unfinished,
        status="aborted",
    )
    r.user("never mind")
    assert r.history() == (
        ChatMessage(role="user", content="go"),
        ChatMessage(
            role="assistant",
            blocks=(
                ReasoningBlock("", signature="enc", redacted=True),
                TextBlock("Let me check"),
                call("c1"),
            ),
        ),
        ChatMessage(role="tool", content=NOT_RUN, tool_call_id="c1", tool_name="clock"),
        ChatMessage(role="user", content="never mind"),
    )


def test_orphan_tool_results_are_dropped() -> None:
    """A tool result whose call is not in the history (its row failed) is left out."""
    r = Rows()
    r.user("q")
    r.assistant(call("c1"), status="error")
    r.tool("c1", "late result")
    r.user("again")
    assert r.history() == (ChatMessage(role="user", content="q\n\nagain"),)


def test_the_step_being_generated_and_later_rows_are_not_seen() -> None:
    """Only rows before the step's own seq count."""
    r = Rows()
    r.user("a")
    r.assistant(TextBlock("x"))
    r.user("b")
    mine = r.assistant(status="generating")
    r.user("later")
    assert build_history(r.rows, before_seq=mine.seq) == (
        ChatMessage(role="user", content="a"),
        ChatMessage(role="assistant", blocks=(TextBlock("x"),)),
        ChatMessage(role="user", content="b"),
    )


def test_another_providers_signatures_are_not_sent() -> None:
    """Rows of another provider lose their signatures and redacted reasoning (an API refuses
    a proof it did not issue); the same provider's rows keep them."""
    r = Rows()
    r.user("hi")
    theirs = (
        ReasoningBlock("hm", signature="their-sig"),
        ReasoningBlock("", signature="ENCRYPTED", redacted=True),
        TextBlock("Hello.", signature="text-sig"),
    )
    r._add("assistant", blocks=theirs, model="gemini:gemini-2.5-flash", reply_to=r.question)
    r.user("again")
    ours = (ReasoningBlock("ok", signature="our-sig"), TextBlock("Hi."))
    r._add("assistant", blocks=ours, model="anthropic:claude-x", reply_to=r.question)
    history = build_history(r.rows, before_seq=len(r.rows) + 1, provider="anthropic")
    assert history[1] == ChatMessage(
        role="assistant", blocks=(ReasoningBlock("hm"), TextBlock("Hello."))
    )
    assert history[3] == ChatMessage(role="assistant", blocks=ours)
    assert build_history(r.rows, before_seq=len(r.rows) + 1)[1].blocks == theirs


def test_only_the_steps_own_path_counts() -> None:
    """Other versions (a regenerated answer, an edited question) are not the step's past."""
    r = Rows()
    q = r.user("question")
    r.assistant(TextBlock("first answer"))
    second = r._add("assistant", blocks=(TextBlock("second answer"),), parent_id=q.id)
    r._add("user", content="thanks", parent_id=second.id)
    mine = r._add("assistant", status="generating", parent_id=r.rows[-1].message.id)
    assert build_history(r.rows, before_seq=mine.seq) == (
        ChatMessage(role="user", content="question"),
        ChatMessage(role="assistant", blocks=(TextBlock("second answer"),)),
        ChatMessage(role="user", content="thanks"),
    )
