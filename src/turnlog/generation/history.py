"""The model's view of a conversation, built from stored rows only (pure).

One pass for every provider makes a history any chat API accepts; each adapter then maps it
to its own wire shape. The rules (``docs/providers.md`` says why):

- user rows count with their edited text; consecutive user turns are merged into one (some
  APIs refuse two user turns in a row, and a user turn whose answer was dropped leaves one);
- ``completed`` assistant rows count as they are, signatures and redacted reasoning included;
- an ``aborted`` or ``interrupted`` row that nobody retried counts with what the user saw of
  it: its text, its signed reasoning and its finished tool calls (unsigned reasoning is cut
  off mid-thought and some APIs refuse it unsigned);
- a row a later step of the same question replaced (a retry), a ``error`` row and a still
  ``generating`` row do not count;
- signatures and redacted reasoning only go back to the provider that made them: on the rows
  of another provider (the conversation's model was changed) they are dropped, the reasoning
  text kept unsigned, since an API refuses a signature it did not issue;
- tool rows count as the results of their calls; a result whose call is not in the history
  is dropped, and a call without a result (its step was stopped before the tool ran) gets a
  synthetic one, so every call is answered as the APIs require.

:func:`build_request` puts that history into a step's request beside the options, which
take precedence in this order: the conversation's, then the user message's, then a retry's
(a retry's replace the message's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import msgspec
from turnlog_reducer import Block, ReasoningBlock, TextBlock, ToolCallBlock

from turnlog.generation.turn import Turn
from turnlog.log.projection import ConversationRecord, Message, MessageRecord
from turnlog.providers.base import ChatMessage, Continuation, ModelRequest, ToolSpec

__all__ = ["NOT_RUN", "build_history", "build_request", "step_options"]

NOT_RUN: Final = "(not run: the answer was stopped before this tool call ran)"


def build_request(
    turn: Turn,
    conv: ConversationRecord,
    rows: Sequence[MessageRecord],
    *,
    model: str,
    tools: tuple[ToolSpec, ...],
) -> ModelRequest:
    """The request of ``turn``'s step: ``conv``'s system prompt, the history of ``rows``
    (in seq order) before the turn, the options by precedence; ``model``: the name part of
    ``turn.model`` the provider is asked for."""
    return ModelRequest(
        model=model,
        system_prompt=conv.conversation.system_prompt,
        messages=build_history(rows, before_seq=turn.seq, provider=turn.model.partition(":")[0]),
        options=step_options(turn, conv, rows),
        tools=tools,
        continuation=_continuation(turn, rows),
    )


def _continuation(turn: Turn, rows: Sequence[MessageRecord]) -> Continuation | None:
    """What a recovered turn's row holds, for the model to go on from (None otherwise).
    Its blocks are sent back as a stopped row's are: reasoning cut mid-thought unsigned is
    left out (some APIs refuse it), and so is a tool call whose arguments never finished."""
    if not turn.recovery:
        return None
    mine = next((r for r in reversed(rows) if r.message.id == turn.message_id), None)
    if mine is None:
        return None
    blocks = tuple(mine.message.blocks)
    return Continuation(
        blocks=blocks,
        stream_seq=mine.stream_seq,
        settled=tuple(b for b in blocks if _settled(b)),
    )


def step_options(
    turn: Turn, conv: ConversationRecord, rows: Sequence[MessageRecord]
) -> dict[str, Any]:
    """The options of ``turn``'s step: the conversation's, updated by a retry's options
    (stored on the turn's own row) if it has any, else by the user message's."""
    options = dict(conv.conversation.options)
    # From the end: the turn's own rows are the last ones (a long history is not scanned).
    asked = next((r for r in reversed(rows) if r.message.id == turn.reply_to), None)
    mine = next((r for r in reversed(rows) if r.message.id == turn.message_id), None)
    if mine is not None and mine.options is not None:
        options.update(mine.options)  # a retry's options replace the message's
    elif asked is not None and asked.options:
        options.update(asked.options)
    return options


def build_history(
    rows: Sequence[MessageRecord], *, before_seq: int, provider: str | None = None
) -> tuple[ChatMessage, ...]:
    """The history a step at ``before_seq`` answers, from ``rows`` in seq order (as the
    store gives them: no sort per generation), for a model of ``provider`` (the part of
    ``provider:name`` before the colon; None: keep every signature). Only the step's own
    path counts: the rows it follows, parent by parent (other versions are not its past)."""
    ordered = _lineage(rows, before_seq)
    replaced = _replaced(ordered)
    out: list[ChatMessage] = []
    # The calls (id -> name) of the last assistant message still without a result; kept
    # as ``out`` grows, so each row costs the same however long the history is.
    open_calls: dict[str, str] = {}
    # A prompt command's expansion is what the model reads (the row keeps what was typed).
    expanded = {r.message.id: r.prompt for r in rows if r.prompt is not None}
    for m in ordered:
        if m.seq >= before_seq:
            break
        role = m.role
        if role == "user":
            # An edit as written; else a prompt command's expansion; else what was typed.
            if m.edited_content is not None:
                text = m.edited_content
            else:
                text = (expanded.get(m.id) if expanded else None) or m.content or ""
            _answer_dangling(out, open_calls)
            if out and out[-1].role == "user":
                out[-1] = ChatMessage(role="user", content=f"{out[-1].content}\n\n{text}")
            else:
                out.append(ChatMessage(role="user", content=text))
        elif role == "assistant" and not (replaced and m.id in replaced):
            blocks = _kept_blocks(m)
            if provider is not None and _provider_of(m) not in (None, provider):
                blocks = _unsigned(blocks)
            if blocks:
                _answer_dangling(out, open_calls)
                out.append(ChatMessage(role="assistant", blocks=blocks))
                for b in blocks:
                    if isinstance(b, ToolCallBlock):
                        open_calls[b.id] = b.name
        elif role == "tool" and m.tool_call_id is not None and m.tool_call_id in open_calls:
            del open_calls[m.tool_call_id]
            out.append(
                ChatMessage(
                    role="tool",
                    content=m.content or "",
                    tool_call_id=m.tool_call_id,
                    tool_name=m.tool_name,
                )
            )
    _answer_dangling(out, open_calls)
    return tuple(out)


def _lineage(rows: Sequence[MessageRecord], before_seq: int) -> list[Message]:
    """The ancestors of the row at ``before_seq``, first row first (every row before it
    when it is not among ``rows``: a caller asking for a step not yet stored)."""
    step = next((r.message for r in reversed(rows) if r.message.seq == before_seq), None)
    if step is None:
        return [r.message for r in rows]
    by_id = {r.message.id: r.message for r in rows}
    out: list[Message] = []
    at = by_id.get(step.parent_id) if step.parent_id is not None else None
    while at is not None:
        out.append(at)
        at = by_id.get(at.parent_id) if at.parent_id is not None else None
    out.reverse()
    return out


def _replaced(ordered: list[Message]) -> set[object]:
    """Ids of unfinished assistant rows that a later assistant row answering the same user
    message replaced (a retry; the later steps of a turn follow completed rows only)."""
    replaced: set[object] = set()
    # Only an unfinished row with a later assistant row can be replaced; the usual history
    # has none (the last row may be the running one), so no id is hashed per row.
    after = False
    for m in reversed(ordered):
        if m.role == "assistant":
            if after and m.status != "completed":
                break
            after = True
    else:
        return replaced
    later: set[object] = set()
    for m in reversed(ordered):
        if m.role != "assistant":
            continue
        if m.status != "completed" and m.reply_to in later:
            replaced.add(m.id)
        later.add(m.reply_to)
    return replaced


def _kept_blocks(m: Message) -> tuple[Block, ...]:
    if m.status == "completed":
        return tuple(m.blocks)
    if m.status not in ("aborted", "interrupted"):
        return ()  # error: the failure is not an answer; generating: nothing settled yet
    return tuple(b for b in m.blocks if _settled(b))


def _provider_of(m: Message) -> str | None:
    return m.model.partition(":")[0] if m.model else None


def _unsigned(blocks: tuple[Block, ...]) -> tuple[Block, ...]:
    """``blocks`` without another provider's proofs: no signatures, no redacted reasoning."""
    out: list[Block] = []
    for block in blocks:
        if isinstance(block, ReasoningBlock) and block.redacted is True:
            continue
        if isinstance(block.signature, str):
            block = msgspec.structs.replace(block, signature=msgspec.UNSET)
        out.append(block)
    return tuple(out)


def _settled(block: Block) -> bool:
    """Whether a block of a stopped row is whole: text, signed reasoning, a finished call."""
    match block:
        case TextBlock(text=text):
            return bool(text)
        case ReasoningBlock(signature=signature):
            return isinstance(signature, str)
        case ToolCallBlock(ready=ready, arguments=arguments):
            return ready and arguments is not None
    return False


def _answer_dangling(out: list[ChatMessage], open_calls: dict[str, str]) -> None:
    """Give every still unanswered call of the last assistant message a synthetic result."""
    for call_id, name in open_calls.items():
        out.append(ChatMessage(role="tool", content=NOT_RUN, tool_call_id=call_id, tool_name=name))
    open_calls.clear()
