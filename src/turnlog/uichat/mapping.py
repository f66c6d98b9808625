"""The Vercel AI SDK "UI message stream" view of turnlog (docs/ui-chat.md), pure.

One assistant *turn* (every step row answering one user message, with the tool rows between
them) is one UI message. This module maps turnlog's rows and stream events to the AI SDK's
UI message chunks; it reads no clock, touches no database and makes no ids. The adapter
(``turnlog.uichat.chat``) feeds it stored rows and live stream events; a stored turn and a
live one go through the same :class:`StepEncoder`, so they cannot disagree.

General layout::

    Chunk (tagged Structs)   the chunk types sent; only those AI SDK 5, 6 and 7 all accept
    StepEncoder              one step row -> chunks, from events (live) or blocks (stored)
    step_end / terminal      the chunks that close a step and a turn
    group_turns              rows -> user rows and turns (superseded attempts dropped)
    turn_chunks              a stored turn -> its whole chunk list
    assemble / ui_messages   chunks -> the UIMessage the AI SDK client builds from them

Which chunks, and which fields: ``ai`` 5.0.0 validates chunks with ``z.strictObject``, so a
field it does not know kills the client's stream as surely as an unknown chunk type. Hence
``finish`` carries no ``finishReason`` and ``abort`` no ``reason`` (both came in later
releases); the finish reason travels in the message metadata instead
(``{"status": …, "finishReason": …}``), which every release accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import msgspec
from turnlog_reducer import (
    EMPTY,
    Block,
    Blocks,
    ReasoningBlock,
    ReasoningDelta,
    StreamEvent,
    TextBlock,
    TextDelta,
    ToolCallBlock,
    ToolCallDelta,
    ToolCallReady,
    apply_stream_event,
)

from turnlog.generation.tools import INTERACTIVE
from turnlog.log.projection import Message, MessageRecord

__all__ = [
    "INTERRUPTED_TEXT",
    "Chunk",
    "Start",
    "StartStep",
    "StepEncoder",
    "UITurn",
    "assemble",
    "encode_chunk",
    "finish_reason",
    "group_turns",
    "metadata",
    "step_end",
    "terminal",
    "tool_outputs",
    "turn_chunks",
    "ui_messages",
]

# -- the chunks ----------------------------------------------------------------------------


class _Chunk(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    tag_field="type",
    omit_defaults=True,
    rename="camel",
):
    """Base of the UI message chunks (camelCase on the wire); ``None`` optionals are left
    out, since a strict client rejects a field it does not know."""


class Start(_Chunk, frozen=True, tag="start"):
    message_id: str


class StartStep(_Chunk, frozen=True, tag="start-step"):
    pass


class FinishStep(_Chunk, frozen=True, tag="finish-step"):
    pass


class TextStart(_Chunk, frozen=True, tag="text-start"):
    id: str


class TextDeltaChunk(_Chunk, frozen=True, tag="text-delta"):
    id: str
    delta: str


class TextEnd(_Chunk, frozen=True, tag="text-end"):
    id: str


class ReasoningStart(_Chunk, frozen=True, tag="reasoning-start"):
    id: str


class ReasoningDeltaChunk(_Chunk, frozen=True, tag="reasoning-delta"):
    id: str
    delta: str


class ReasoningEnd(_Chunk, frozen=True, tag="reasoning-end"):
    id: str


class ToolInputStart(_Chunk, frozen=True, tag="tool-input-start"):
    tool_call_id: str
    tool_name: str
    provider_executed: bool | None = None


class ToolInputDelta(_Chunk, frozen=True, tag="tool-input-delta"):
    tool_call_id: str
    input_text_delta: str


class ToolInputAvailable(_Chunk, frozen=True, tag="tool-input-available"):
    tool_call_id: str
    tool_name: str
    input: Any
    provider_executed: bool | None = None


class ToolOutputAvailable(_Chunk, frozen=True, tag="tool-output-available"):
    tool_call_id: str
    output: Any
    provider_executed: bool | None = None


class ToolApprovalRequest(_Chunk, frozen=True, tag="tool-approval-request"):
    """AI SDK 6+: the call waits for the user's yes (``addToolApprovalResponse``)."""

    approval_id: str
    tool_call_id: str


class ToolOutputDenied(_Chunk, frozen=True, tag="tool-output-denied"):
    """AI SDK 6+: the user said no; the call never ran."""

    tool_call_id: str


class MessageMetadata(_Chunk, frozen=True, tag="message-metadata"):
    message_metadata: dict[str, Any]


class Finish(_Chunk, frozen=True, tag="finish"):
    message_metadata: dict[str, Any] | None = None


class Abort(_Chunk, frozen=True, tag="abort"):
    pass


class Error(_Chunk, frozen=True, tag="error"):
    error_text: str


Chunk = (
    Start
    | StartStep
    | FinishStep
    | TextStart
    | TextDeltaChunk
    | TextEnd
    | ReasoningStart
    | ReasoningDeltaChunk
    | ReasoningEnd
    | ToolInputStart
    | ToolInputDelta
    | ToolInputAvailable
    | ToolOutputAvailable
    | ToolApprovalRequest
    | ToolOutputDenied
    | MessageMetadata
    | Finish
    | Abort
    | Error
)

_encoder = msgspec.json.Encoder()


def encode_chunk(chunk: Chunk) -> bytes:
    """One chunk as compact JSON (what follows ``data: `` on the wire)."""
    return _encoder.encode(chunk)


# -- one step ------------------------------------------------------------------------------

INTERRUPTED_TEXT: Final = (
    "the answer was interrupted: the server generating it stopped before it finished; "
    "regenerate it to try again"
)

# turnlog keeps a provider's finish reason; the AI SDK knows these (any other is "other").
_FINISH_REASONS: Final = {
    "stop": "stop",
    "end_turn": "stop",
    "tool_calls": "tool-calls",
    "tool_use": "tool-calls",
    "length": "length",
    "max_tokens": "length",
    "content_filter": "content-filter",
}


def finish_reason(reason: str | None) -> str | None:
    """turnlog's finish reason as the AI SDK names it (``None`` stays ``None``)."""
    if reason is None:
        return None
    return _FINISH_REASONS.get(reason, "other")


class ToolKinds:
    """What the server's tool registry says of a tool name, for the chunks: whether the
    client answers its calls (interactive and client tools) and whether they wait for
    approval. Set once by the app (``configure``); by default only the built-ins."""

    answered: Callable[[str], bool] = staticmethod(lambda name: name in INTERACTIVE)
    approval: Callable[[str], bool] = staticmethod(lambda name: False)


def configure(answered: Callable[[str], bool], approval: Callable[[str], bool]) -> None:
    """Tell the mapping which tools the client answers and which wait for approval."""
    ToolKinds.answered = staticmethod(answered)
    ToolKinds.approval = staticmethod(approval)


def _provider_executed(tool_name: str) -> bool | None:
    """Server tools ran here: to the client they are "provider executed" (so its
    ``onToolCall`` is not asked to run them). Interactive and client ones wait for the
    client."""
    return None if ToolKinds.answered(tool_name) else True


# A denied call's result (turnlog.commands.Chat.tool_approval).
_DENIED = "denied:"


class StepEncoder:
    """The chunks of one step row, fed live events or whole snapshots of its blocks.

    Part ids are ``<row id>:<block index>``: block indices never change (reducer law 3), so
    a part has the same id whether it came live, from a resume prefix or from the store.
    The text or reasoning part of the last block stays open (no ``*-end``) until a new block
    starts or the step ends, because only the last block can grow. A tool call's input
    streams until it is ready (``tool-input-available``); a stored ready call is sent as
    start and available alone, which a client assembles the same way.
    """

    def __init__(self, row_id: str) -> None:
        self.row_id = row_id
        self.blocks: Blocks = EMPTY
        self._open: tuple[type[TextEnd] | type[ReasoningEnd], str] | None = None
        self._tool_names: dict[str, str] = {}
        self._ready: set[str] = set()

    def event(self, event: StreamEvent) -> list[Chunk]:
        """The chunks of one live stream event (``Done`` is not one: see :func:`step_end`)."""
        before = self.blocks
        after = apply_stream_event(before, event)
        self.blocks = after
        if len(after) > len(before):
            return self._opened(len(before), after[-1])
        match event:
            case TextDelta(text=text) | ReasoningDelta(text=text) if text and self._open:
                delta = TextDeltaChunk if isinstance(event, TextDelta) else ReasoningDeltaChunk
                return [delta(id=self._open[1], delta=text)]
            case ToolCallDelta(id=call_id, arguments_delta=text) if text:
                if call_id in self._ready:
                    return []  # its input is settled; a stored row shows the same
                return [ToolInputDelta(tool_call_id=call_id, input_text_delta=text)]
            case ToolCallReady(id=call_id, arguments=arguments):
                return [self._available(call_id, arguments)]
            case _:
                return []  # an empty delta, a signature: nothing a client shows changes

    def load(self, blocks: Sequence[Block]) -> list[Chunk]:
        """The chunks that take the step from its current blocks to ``blocks``, a later
        state of the same step (a snapshot: the resume prefix, a resync, a stored row)."""
        before = self.blocks
        out: list[Chunk] = []
        for index, block in enumerate(blocks):
            if index >= len(before):
                out += self._opened(index, block)
                continue
            old = before[index]
            if old == block:
                continue
            match old, block:
                case (TextBlock() | ReasoningBlock(), TextBlock() | ReasoningBlock()):
                    grown = block.text[len(old.text) :]
                    if grown and self._open is not None and self._open[1] == self._id(index):
                        delta = (
                            TextDeltaChunk if isinstance(block, TextBlock) else ReasoningDeltaChunk
                        )
                        out.append(delta(id=self._open[1], delta=grown))
                case (ToolCallBlock(), ToolCallBlock()):
                    grown = block.arguments_text[len(old.arguments_text) :]
                    if grown and not old.ready:
                        out.append(ToolInputDelta(tool_call_id=block.id, input_text_delta=grown))
                    if block.ready and (not old.ready or old.arguments != block.arguments):
                        out.append(self._available(block.id, block.arguments))
                case _:
                    pass
        self.blocks = blocks if isinstance(blocks, Blocks) else Blocks(blocks)
        return out

    def close(self) -> list[Chunk]:
        """End the open text or reasoning part, if any."""
        if self._open is None:
            return []
        end, part_id = self._open
        self._open = None
        return [end(id=part_id)]

    def _id(self, index: int) -> str:
        return f"{self.row_id}:{index}"

    def _opened(self, index: int, block: Block) -> list[Chunk]:
        """A new block at ``index``: close the part before it, open its own."""
        out = self.close()
        part_id = self._id(index)
        match block:
            case TextBlock(text=text):
                out.append(TextStart(id=part_id))
                if text:
                    out.append(TextDeltaChunk(id=part_id, delta=text))
                self._open = (TextEnd, part_id)
            case ReasoningBlock(redacted=True):
                pass  # a provider's encrypted reasoning: nothing to show
            case ReasoningBlock(text=text):
                out.append(ReasoningStart(id=part_id))
                if text:
                    out.append(ReasoningDeltaChunk(id=part_id, delta=text))
                self._open = (ReasoningEnd, part_id)
            case ToolCallBlock():
                self._tool_names[block.id] = block.name
                out.append(
                    ToolInputStart(
                        tool_call_id=block.id,
                        tool_name=block.name,
                        provider_executed=_provider_executed(block.name),
                    )
                )
                if (text := block.arguments_text) and not block.ready:
                    out.append(ToolInputDelta(tool_call_id=block.id, input_text_delta=text))
                if block.ready:
                    out.append(self._available(block.id, block.arguments))
        return out

    def _available(self, call_id: str, arguments: Any) -> ToolInputAvailable:
        self._ready.add(call_id)
        name = self._tool_names.get(call_id, "")
        return ToolInputAvailable(
            tool_call_id=call_id,
            tool_name=name,
            input=arguments,
            provider_executed=_provider_executed(name),
        )


def tool_outputs(tool_rows: Iterable[Message]) -> list[Chunk]:
    """``tool-output-available`` for each tool row (a result the server stored);
    ``tool-output-denied`` for a call the user did not approve."""
    out: list[Chunk] = []
    for t in tool_rows:
        name, content = t.tool_name or "", t.content or ""
        if content.startswith(_DENIED) and ToolKinds.approval(name):
            out.append(ToolOutputDenied(tool_call_id=t.tool_call_id or ""))
            continue
        out.append(
            ToolOutputAvailable(
                tool_call_id=t.tool_call_id or "",
                output=content,
                provider_executed=_provider_executed(name),
            )
        )
    return out


def approval_requests(blocks: Sequence[Block], tool_rows: Iterable[Message]) -> list[Chunk]:
    """``tool-approval-request`` for each ready call of a step that waits for approval
    (its tool needs it and no result is stored). The approval id is the call id."""
    answered = {t.tool_call_id for t in tool_rows}
    return [
        ToolApprovalRequest(approval_id=b.id, tool_call_id=b.id)
        for b in blocks
        if isinstance(b, ToolCallBlock)
        and b.ready
        and b.id not in answered
        and ToolKinds.approval(b.name)
    ]


def step_end(encoder: StepEncoder, tool_rows: Iterable[Message]) -> list[Chunk]:
    """The chunks that end a step: its open part, its tools' results, its calls waiting
    for approval, ``finish-step``."""
    rows = list(tool_rows)
    return [
        *encoder.close(),
        *approval_requests(encoder.blocks, rows),
        *tool_outputs(rows),
        FinishStep(),
    ]


def metadata(row: Message) -> dict[str, Any]:
    """A turn's message metadata, from its last step row: status, finish reason, error."""
    meta: dict[str, Any] = {"status": row.status}
    reason = finish_reason(row.finish_reason)
    if reason is not None:
        meta["finishReason"] = reason
    if row.error is not None:
        meta["error"] = row.error
    return meta


def terminal(row: Message) -> list[Chunk]:
    """The chunks that end a turn whose last step row is ``row`` (no longer generating).

    completed -> ``finish``; aborted -> ``abort``; error and interrupted -> ``error`` (the
    client's ``useChat`` then reads ``status: "error"`` and can regenerate). Metadata comes
    first, so the message carries its status whichever way it ended.
    """
    meta = metadata(row)
    match row.status:
        case "completed":
            return [Finish(message_metadata=meta)]
        case "aborted":
            return [MessageMetadata(message_metadata=meta), Abort()]
        case "error":
            return [MessageMetadata(message_metadata=meta), Error(error_text=row.error or "error")]
        case _:
            return [MessageMetadata(message_metadata=meta), Error(error_text=INTERRUPTED_TEXT)]


# -- turns ---------------------------------------------------------------------------------


class UITurn(msgspec.Struct, frozen=True):
    """One assistant turn: the user row it answers (``None`` before any) and its rows.

    ``steps`` are its assistant rows without the superseded ones (an ended, not completed
    row that a later row of the turn replaced: a retry); ``tools`` its tool rows.
    """

    user: MessageRecord | None
    steps: tuple[Message, ...]
    tools: tuple[Message, ...]

    @property
    def message_id(self) -> str:
        """The UI message id: its first step row's id."""
        return str(self.steps[0].id)

    @property
    def generating(self) -> bool:
        return any(s.status == "generating" for s in self.steps)

    def tools_of(self, step: Message) -> list[Message]:
        return [t for t in self.tools if t.reply_to == step.id]


def group_turns(rows: Sequence[MessageRecord]) -> list[MessageRecord | UITurn]:
    """Rows in seq order as user rows and turns (each turn after the user row it answers)."""
    out: list[MessageRecord | UITurn] = []
    user: MessageRecord | None = None
    steps: list[Message] = []
    tools: list[Message] = []

    def flush() -> None:
        # A step row that ended without completing was replaced when a later one follows.
        kept = tuple(
            s
            for i, s in enumerate(steps)
            if s.status in ("completed", "generating") or i == len(steps) - 1
        )
        if kept:
            out.append(UITurn(user, kept, tuple(tools)))
        steps.clear()
        tools.clear()

    for record in sorted(rows, key=lambda r: r.message.seq):
        m = record.message
        if m.role == "user":
            flush()
            user = record
            out.append(record)
        elif m.role == "assistant":
            steps.append(m)
        elif m.role == "tool":
            tools.append(m)
    flush()
    return out


def turn_chunks(turn: UITurn) -> list[Chunk]:
    """A stored turn (none of its rows generating) as the whole stream a client would get."""
    out: list[Chunk] = [Start(message_id=turn.message_id)]
    for step in turn.steps:
        encoder = StepEncoder(str(step.id))
        out.append(StartStep())
        out += encoder.load(step.blocks)
        out += step_end(encoder, turn.tools_of(step))
    out += terminal(turn.steps[-1])
    return out


def user_message(record: MessageRecord) -> dict[str, Any]:
    """A user row as a UIMessage; its id is the client's own id for it when it sent one."""
    m = record.message
    text = m.edited_content if m.edited_content is not None else (m.content or "")
    return {
        "id": record.client_message_id or str(m.id),
        "role": "user",
        "parts": [{"type": "text", "text": text}],
    }


def ui_messages(rows: Sequence[MessageRecord]) -> list[dict[str, Any]]:
    """The conversation as ``UIMessage[]`` for hydrating ``useChat``.

    A turn still generating is left out: resuming (``GET …/stream``) delivers it whole, from
    its start, and a client holding part of it already would otherwise show it twice.
    """
    out: list[dict[str, Any]] = []
    for item in group_turns(rows):
        if isinstance(item, UITurn):
            if not item.generating:
                out.append(assemble(turn_chunks(item)))
        else:
            out.append(user_message(item))
    return out


# -- the client's fold, for the chunks above --------------------------------------------------


def assemble(chunks: Iterable[Chunk], message: dict[str, Any] | None = None) -> dict[str, Any]:
    """The UIMessage the AI SDK client builds from ``chunks`` (its ``processUIMessageStream``,
    for the chunk types this module sends), onto ``message`` if given (a continuation).

    Keys the client leaves ``undefined`` are left out, as ``JSON.stringify`` does.
    """
    msg: dict[str, Any] = message or {"id": "", "role": "assistant", "parts": []}
    parts: list[dict[str, Any]] = msg["parts"]
    by_id: dict[str, dict[str, Any]] = {}
    tools: dict[str, dict[str, Any]] = {}
    for part in parts:
        if "toolCallId" in part:
            tools[part["toolCallId"]] = part
    for chunk in chunks:
        match chunk:
            case Start(message_id=mid):
                msg["id"] = mid
            case StartStep():
                parts.append({"type": "step-start"})
            case TextStart(id=pid):
                by_id[pid] = {"type": "text", "text": "", "state": "streaming"}
                parts.append(by_id[pid])
            case ReasoningStart(id=pid):
                by_id[pid] = {"type": "reasoning", "id": pid, "text": "", "state": "streaming"}
                parts.append(by_id[pid])
            case TextDeltaChunk(id=pid, delta=d) | ReasoningDeltaChunk(id=pid, delta=d):
                by_id[pid]["text"] += d
            case TextEnd(id=pid) | ReasoningEnd(id=pid):
                by_id.pop(pid)["state"] = "done"
            case ToolInputStart(tool_call_id=cid, tool_name=name, provider_executed=pe):
                tools[cid] = {"type": f"tool-{name}", "toolCallId": cid}
                tools[cid]["state"] = "input-streaming"
                if pe is not None:
                    tools[cid]["providerExecuted"] = pe
                parts.append(tools[cid])
            case ToolInputDelta(tool_call_id=cid, input_text_delta=d):
                part = tools[cid]
                part["rawInput"] = part.get("rawInput", "") + d
            case ToolInputAvailable(tool_call_id=cid, input=value):
                part = tools[cid]
                part.pop("rawInput", None)
                part.update(state="input-available", input=value)
            case ToolOutputAvailable(tool_call_id=cid, output=value):
                part = tools[cid]
                part.pop("errorText", None)
                part.update(state="output-available", output=value)
            case ToolApprovalRequest(approval_id=aid, tool_call_id=cid):
                tools[cid].update(state="approval-requested", approval={"id": aid})
            case ToolOutputDenied(tool_call_id=cid):
                tools[cid]["state"] = "output-denied"
            case MessageMetadata(message_metadata=meta) | Finish(message_metadata=meta):
                if meta is not None:
                    msg["metadata"] = {**msg.get("metadata", {}), **meta}
            case _:
                pass
    return msg
