"""The model's view of a conversation, built from stored rows only (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from turnlog.log.projection import MessageRecord
from turnlog.providers.base import ChatMessage


def build_history(rows: Sequence[MessageRecord], *, before_seq: int) -> tuple[ChatMessage, ...]:
    """The history a step at ``before_seq`` answers, in canonical (seq) order.

    A user row counts with its edited text if it was edited. Only ``completed`` assistant
    rows count: a generating row has no settled content, and an interrupted, failed or
    aborted one is what a retry replaces. Tool rows count as the results they carry.
    """
    out: list[ChatMessage] = []
    for record in sorted(rows, key=lambda r: r.message.seq):
        m = record.message
        if m.seq >= before_seq:
            break
        match m.role:
            case "user":
                text = m.edited_content if m.edited_content is not None else m.content
                out.append(ChatMessage(role="user", content=text or ""))
            case "assistant" if m.status == "completed" and m.blocks:
                out.append(ChatMessage(role="assistant", blocks=m.blocks))
            case "tool":
                out.append(
                    ChatMessage(
                        role="tool",
                        content=m.content or "",
                        tool_call_id=m.tool_call_id,
                        tool_name=m.tool_name,
                    )
                )
            case _:
                pass
    return tuple(out)
