"""Answers to a turn's questions: the user's or the client's result of an interactive tool
call, the user's yes or no to a call that waits for approval, and withdrawing the questions
left unanswered (cancel). Each result is a tool row; the last one answered starts the turn's
next step, as a server tool's result does (``turnlog.generation.tools.orchestration``).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import structlog
from turnlog_reducer import ToolCallBlock

from turnlog.bodies import ToolApprovalIn, ToolResultIn
from turnlog.errors import BadRequest, Conflict, NotFound, NotGenerating
from turnlog.generation.tools.execution import idempotency_key, run_tool
from turnlog.generation.tools.registry import ToolContext
from turnlog.generation.tools.running import INTERRUPTED_CALL
from turnlog.generation.turn import Turn
from turnlog.log import events as ev
from turnlog.log.projection import Message, MessageRecord
from turnlog.log.store import Appended

log = structlog.get_logger("turnlog.tools")

if TYPE_CHECKING:
    from turnlog.commands import Chat

__all__ = ["WITHDRAWN", "ToolAnswers", "unanswered"]

# The result a withdrawn question gets: the model reads it in the history like any answer.
WITHDRAWN = "cancelled: the user withdrew this question without answering"


class ToolAnswers:
    """The answers to a turn's waiting tool calls, checked and stored by ``chat``'s rules."""

    def __init__(self, chat: Chat) -> None:
        self.chat = chat
        # Approvals being answered here (a second answer of the same call is refused).
        self._approving: set[tuple[uuid.UUID, str]] = set()

    async def withdraw(self, owner: str, mid: uuid.UUID) -> Message:
        """Withdraw the unanswered questions of ``mid``: each gets a tool row with a
        cancelled result, and the conversation is idle again (no next step starts)."""

        async def attempt() -> Appended:
            row, conv = await self.chat.message(owner, mid)
            waiting = unanswered(row)
            if not waiting:
                raise NotGenerating(f"message {mid} has no question waiting for an answer")
            names = {b.id: b.name for b in row.message.blocks if isinstance(b, ToolCallBlock)}
            now = self.chat.now()
            return await self.chat.store.append(
                conv.conversation.id,
                [
                    ev.ToolResultRecorded(
                        at=now,
                        message_id=uuid.uuid4(),
                        seq=conv.last_seq + 1 + i,
                        reply_to=mid,
                        tool_call_id=call_id,
                        tool_name=names.get(call_id, "ask_user"),
                        content=WITHDRAWN,
                    )
                    for i, call_id in enumerate(waiting)
                ],
                expected_version=conv.conversation.version,
                actor=owner,
            )

        await self.chat.store.retrying(attempt)
        after = await self.chat.store.get_message(mid)
        if after is None:
            raise NotFound(f"message {mid} not found")
        return after.message

    def needs_approval(self, row: MessageRecord, call_id: str) -> ToolCallBlock | None:
        """The call ``call_id`` of ``row`` if its tool waits for the user's approval."""
        call = next(
            (b for b in row.message.blocks if isinstance(b, ToolCallBlock) and b.id == call_id),
            None,
        )
        tool = None if call is None else self.chat.engine.tools.get(call.name)
        if tool is None or tool.descriptor.kind != "server" or not tool.descriptor.approval:
            return None
        return call

    async def tool_approval(
        self, owner: str, mid: uuid.UUID, body: ToolApprovalIn
    ) -> Message | None:
        """Answer a call waiting for approval: approved, its tool runs with exactly the
        stored arguments (never ones generated again); denied, the model reads
        ``denied: <reason>``. Either result resumes the turn like a tool result."""
        if body.reason is not None:
            self.chat._text("reason", body.reason, limit=2000)
        row, conv = await self.chat.message(owner, mid)
        self._waiting(row, mid, body.tool_call_id)
        call = self.needs_approval(row, body.tool_call_id)
        if call is None:
            raise BadRequest(
                f"tool call {body.tool_call_id!r} of message {mid} does not wait for approval;"
                " answer it with tool-results"
            )
        key = (mid, body.tool_call_id)
        if key in self._approving:
            raise Conflict(f"tool call {body.tool_call_id!r} is being answered already")
        self._approving.add(key)
        try:
            if body.approved:
                content = await self._run_approved(owner, conv.conversation.id, mid, call)
            else:
                content = f"denied: {body.reason or 'the user did not approve this call'}"
            _, assistant = await self.tool_result(
                owner, mid, ToolResultIn(tool_call_id=call.id, content=content), approval=True
            )
        finally:
            self._approving.discard(key)
        return assistant

    async def _run_approved(
        self, owner: str, cid: uuid.UUID, mid: uuid.UUID, call: ToolCallBlock
    ) -> str:
        """Run an approved call with its stored arguments; its result text. Its start is
        stored first (``ApprovedCallStarted``): if this process dies before the result is
        stored, the call waits again, and approving it again never runs a side effect twice
        (read-only and idempotent calls run again, under the same idempotency key)."""
        tool = self.chat.engine.tools.get(call.name)
        assert tool is not None
        store = self.chat.store
        ctx = ToolContext(
            user=owner,
            conversation_id=str(cid),
            message_id=str(mid),
            tool_call_id=call.id,
            idempotency_key=idempotency_key(str(mid), call.id),
        )
        effect = tool.descriptor.effect
        before = await store.approved_started(cid, mid, call.id)
        if before is not None and before.effect == "side_effect":
            log.warning(
                "not running an approved side-effect call again after a crash",
                tool=call.name,
                tool_call_id=call.id,
                idempotency_key=before.idempotency_key,
            )
            return INTERRUPTED_CALL
        if before is None:
            started = ev.StartedCall(
                tool_call_id=call.id,
                tool_name=call.name,
                idempotency_key=ctx.idempotency_key,
                effect=effect,
            )
            event = ev.ApprovedCallStarted(at=self.chat.now(), message_id=mid, call=started)
            await store.append(cid, [event], actor=owner)
        out = await run_tool(tool, call.arguments, ctx, metrics=self.chat.engine.metrics)
        return out.content

    def _waiting(self, row: MessageRecord, mid: uuid.UUID, call_id: str) -> None:
        if call_id not in row.awaiting_user or call_id not in row.open_tool_calls:
            raise BadRequest(
                f"message {mid} has no question {call_id!r} waiting for an answer"
                + (f"; waiting: {', '.join(row.open_tool_calls)}" if row.open_tool_calls else "")
            )

    async def tool_result(
        self, owner: str, mid: uuid.UUID, body: ToolResultIn, *, approval: bool = False
    ) -> tuple[Message, Message | None]:
        self.chat._text("content", body.content)
        self.chat._may_start()
        turn: Turn | None = None

        async def attempt() -> Appended:
            nonlocal turn
            turn = None
            row, conv = await self.chat.message(owner, mid)
            if not approval and self.needs_approval(row, body.tool_call_id) is not None:
                raise Conflict(
                    f"tool call {body.tool_call_id!r} waits for the user's approval: answer it"
                    f" with POST /v1/messages/{mid}/tool-approvals"
                )
            if body.tool_call_id not in row.awaiting_user or (
                body.tool_call_id not in row.open_tool_calls
            ):
                raise BadRequest(
                    f"message {mid} has no question {body.tool_call_id!r} waiting for an "
                    "answer"
                    + (
                        f"; waiting: {', '.join(row.open_tool_calls)}"
                        if row.open_tool_calls
                        else ""
                    )
                )
            c = conv.conversation
            call = next(
                (b for b in row.message.blocks if getattr(b, "id", None) == body.tool_call_id),
                None,
            )
            now = self.chat.now()
            batch: list[ev.DomainEvent] = [
                ev.ToolResultRecorded(
                    at=now,
                    message_id=uuid.uuid4(),
                    seq=conv.last_seq + 1,
                    reply_to=mid,
                    tool_call_id=body.tool_call_id,
                    tool_name=getattr(call, "name", "ask_user"),
                    content=body.content,
                )
            ]
            still_open = [t for t in row.open_tool_calls if t != body.tool_call_id]
            if not still_open:
                turn = Turn.new(c.id, conv.last_seq + 2, c.model, reply_to=row.message.reply_to)
                batch.append(turn.started(now))
            return await self.chat.store.append(
                c.id,
                batch,
                expected_version=c.version,
                actor=owner,
                instance_id=self.chat.engine.instance_id,
            )

        async with self.chat.limits.admit(owner, send=False):
            done = await self.chat.store.retrying(attempt)
        if turn is not None:
            self.chat.engine.start(turn, done.conversation)
        by_role = {r.message.role: r.message for r in done.messages}
        return by_role["tool"], by_role.get("assistant") if turn is not None else None


def unanswered(row: MessageRecord) -> list[str]:
    """The interactive tool calls of ``row`` still waiting for the user."""
    return [t for t in row.awaiting_user if t in row.open_tool_calls]
