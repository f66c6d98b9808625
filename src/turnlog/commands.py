"""Commands: what a user can ask of turnlog, owner-gated, as domain events.

Their request bodies are in ``turnlog.bodies`` (importable from here too); the answers to a
turn's questions (tool results, approvals, withdrawing) in ``turnlog.tool_answers``; finding
and taking over orphaned rows in ``turnlog.recovery``.

Each command reads the rows it decides on, makes its ids and timestamps, and appends events
with the version it read (retrying a lost version race a few times). The HTTP layer maps the
errors: ``NotFound`` 404, ``ConversationBusy``/``Fenced``/``VersionConflict``/``NotGenerating``
409, ``BadRequest``/``InvalidEvent`` 400, ``TooLarge`` 413, ``Unavailable`` 503.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import msgspec
import psycopg

from turnlog.bodies import (
    ConversationIn,
    ConversationPatch,
    EditIn,
    MessageIn,
    RetryIn,
    ToolApprovalIn,
    ToolResultIn,
)
from turnlog.config import Settings
from turnlog.errors import (
    BadRequest,
    Conflict,
    ConversationBusy,
    Fenced,
    Forbidden,
    InvalidEvent,
    NotFound,
    NotGenerating,
    Overloaded,
    TooLarge,
    Unavailable,
    VersionConflict,
)
from turnlog.generation.engine import Engine
from turnlog.generation.tools.registry import ToolForbidden, UnknownTool
from turnlog.generation.turn import Turn, utcnow
from turnlog.limits import Limits
from turnlog.log import events as ev
from turnlog.log import tree
from turnlog.log.projection import Conversation, ConversationRecord, Message, MessageRecord
from turnlog.log.store import Appended, Store
from turnlog.product import agents, metadata, search
from turnlog.product.config import Agent
from turnlog.product.prompts import Prompts
from turnlog.providers import ModelForbidden, check_model
from turnlog.recovery import FoundBy, Recovery
from turnlog.streams import interrupt_events
from turnlog.tool_answers import ToolAnswers, unanswered

MAX_TITLE_CHARS = 500
MAX_CLIENT_ID_CHARS = 200
MAX_PAGE = 100


class Sent(msgspec.Struct, frozen=True):
    user_message: Message
    assistant_message: Message
    created: bool


class Chat:
    """The commands, bound to one store and engine."""

    def __init__(
        self,
        store: Store,
        engine: Engine,
        settings: Settings,
        limits: Limits | None = None,
        *,
        cancel_elsewhere: Callable[[MessageRecord], Awaitable[bool]] | None = None,
    ) -> None:
        self.store = store
        self.engine = engine
        self.settings = settings
        self.limits = limits or Limits(Settings())  # the default: unlimited
        self.prompts = Prompts(store.pool, settings.models.product.prompts)
        # Asks the living instance that runs a row to cancel it (turnlog.cluster); False
        # when this one has to end the row itself.
        self.cancel_elsewhere = cancel_elsewhere
        self.answers = ToolAnswers(self)
        self.recovery = Recovery(store, engine, settings, interrupt=self.interrupt, now=self.now)

    def now(self) -> datetime:
        return self.engine.now()

    # -- checks ----------------------------------------------------------------------------

    def _may_start(self) -> None:
        """Refuse a command that starts a generation while the server drains (shutting
        down) or is overloaded (503 either way)."""
        if self.engine.draining:
            raise Unavailable("the server is shutting down; try again in a moment")
        wait = self.engine.overloaded()
        if wait is not None:
            raise Overloaded(
                "the server is overloaded: its running answers are not being stored as "
                "often as promised; try again in a moment",
                wait,
            )

    def _text(self, name: str, value: str, *, limit: int | None = None) -> None:
        limit = self.settings.max_message_chars if limit is None else limit
        if len(value) > limit:
            raise TooLarge(f"{name} is {len(value)} characters; the limit is {limit}")
        _no_nul(name, value)

    def _content(self, value: str) -> None:
        if not value.strip():
            raise BadRequest("content must not be empty")
        self._text("content", value)

    def _model(self, owner: str, model: str, options: dict[str, Any]) -> None:
        _no_nul("model", model)
        _no_nul("options", options)
        try:
            check_model(self.settings.models, owner, model, options)  # the model first
        except ModelForbidden as exc:
            raise Forbidden(str(exc)) from None
        except ValueError as exc:
            raise BadRequest(str(exc)) from None

    def _agent(self, owner: str, name: str) -> Agent:
        try:
            return agents.check(self.settings.models, owner, name, self.settings.default_model)
        except agents.AgentForbidden as exc:
            raise Forbidden(str(exc)) from None
        except agents.UnknownAgent as exc:
            raise BadRequest(str(exc)) from None

    def _tools(self, owner: str, tools: list[str] | None) -> tuple[str, ...] | None:
        """A conversation's ``tools`` checked: unknown 400, forbidden 403."""
        if tools is None:
            return None
        _no_nul("tools", tools)
        if len(tools) > 100:
            raise BadRequest(f"tools names {len(tools)} entries; at most 100")
        try:
            self.engine.tools.check(owner, tools)
        except ToolForbidden as exc:
            raise Forbidden(str(exc)) from None
        except UnknownTool as exc:
            raise BadRequest(str(exc)) from None
        return tuple(dict.fromkeys(tools))

    async def conversation(self, owner: str, cid: uuid.UUID) -> ConversationRecord:
        record = await self.store.get_conversation(cid)
        # Another user's conversation is "not found": its existence is not revealed.
        if record is None or record.owner != owner:
            raise NotFound(f"conversation {cid} not found")
        return record

    async def message(self, owner: str, mid: uuid.UUID) -> tuple[MessageRecord, ConversationRecord]:
        found = await self.store.get_message_in_conversation(mid)
        if found is None:
            raise NotFound(f"message {mid} not found")
        row, conv = found
        if conv is None or conv.owner != owner:
            raise NotFound(f"message {mid} not found")
        return row, conv

    # -- conversations ---------------------------------------------------------------------

    async def create_conversation(
        self, owner: str, body: ConversationIn, *, cid: uuid.UUID | None = None
    ) -> Conversation:
        """A new conversation; ``cid`` names it when the caller derived its id (a UI chat)."""
        preset = None if body.agent is None else self._agent(owner, body.agent)
        model = body.model or (preset and preset.model) or self.settings.default_model
        options = body.options or {}
        self._model(owner, model, {**(preset.options if preset else {}), **options})
        if body.title is not None:
            self._text("title", body.title, limit=MAX_TITLE_CHARS)
        if body.system_prompt is not None:
            self._text("system_prompt", body.system_prompt)
        metadata = _metadata(body.metadata or {})
        tools = self._tools(owner, body.tools)
        if tools is None and preset is not None:
            self._tools(owner, preset.tools)  # the agent's tools, checked as a conversation's
        cid = cid or uuid.uuid4()
        done = await self.store.append(
            cid,
            [
                ev.ConversationCreated(
                    at=self.now(),
                    conversation_id=cid,
                    owner=owner,
                    title=body.title,
                    model=model,
                    options=options,
                    system_prompt=body.system_prompt,
                    metadata=metadata,
                    agent=body.agent,
                    tools=tools,
                )
            ],
            expected_version=0,
            actor=owner,
        )
        assert done.conversation is not None
        return done.conversation.conversation

    async def list_conversations(
        self,
        owner: str,
        *,
        limit: int,
        cursor: str | None,
        q: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> tuple[list[Conversation], str | None]:
        """Newest first; with ``q``, the ones matching it, best first (``search.Found``,
        paged by offset); ``metadata``: pairs every one listed must hold."""
        if not 1 <= limit <= MAX_PAGE:
            raise BadRequest(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
        wanted = _metadata(metadata or {})
        try:
            return await search.page(
                self.store, owner, limit=limit, cursor=cursor, q=q, metadata=wanted
            )
        except search.BadQuery as exc:
            raise BadRequest(str(exc)) from None

    async def update_conversation(
        self, owner: str, cid: uuid.UUID, patch: ConversationPatch
    ) -> Conversation:
        if isinstance(patch.title, str):
            self._text("title", patch.title, limit=MAX_TITLE_CHARS)
        if isinstance(patch.system_prompt, str):
            self._text("system_prompt", patch.system_prompt)
        if isinstance(patch.metadata, dict):
            _metadata(patch.metadata)
        tools = (
            patch.tools
            if isinstance(patch.tools, msgspec.UnsetType)
            else self._tools(owner, patch.tools)
        )

        async def attempt() -> Appended:
            conv = await self.conversation(owner, cid)
            c = conv.conversation
            model = c.model if isinstance(patch.model, msgspec.UnsetType) else patch.model
            options = c.options if isinstance(patch.options, msgspec.UnsetType) else patch.options
            name = c.agent if isinstance(patch.agent, msgspec.UnsetType) else patch.agent
            if isinstance(patch.agent, str):
                # A name kept from before is not judged again; a new one with its tools.
                chosen = self._agent(owner, patch.agent)
                own = c.tools if isinstance(patch.tools, msgspec.UnsetType) else patch.tools
                if own is None:
                    self._tools(owner, chosen.tools)
            preset = self.settings.models.product.agents.get(name) if name else None
            self._model(owner, model, {**(preset.options if preset else {}), **options})
            return await self.store.append(
                cid,
                [
                    ev.ConversationUpdated(
                        at=self.now(),
                        title=patch.title,
                        model=patch.model,
                        options=patch.options,
                        system_prompt=patch.system_prompt,
                        metadata=patch.metadata,
                        agent=patch.agent,
                        tools=tools,
                    )
                ],
                expected_version=c.version,
                actor=owner,
            )

        done = await self.store.retrying(attempt)
        assert done.conversation is not None
        return done.conversation.conversation

    async def delete_conversation(self, owner: str, cid: uuid.UUID) -> None:
        async def attempt() -> Appended:
            conv = await self.conversation(owner, cid)
            return await self.store.append(
                cid,
                [ev.ConversationDeleted(at=self.now())],
                expected_version=conv.conversation.version,
                actor=owner,
            )

        await self.store.retrying(attempt)
        self.engine.cancel_conversation(cid)

    # -- messages --------------------------------------------------------------------------

    def check_message(self, body: MessageIn) -> None:
        """The checks of ``send`` that need no stored row (content and client id), for a
        caller that must not write anything for a message it would refuse."""
        self._content(body.content)
        if body.client_message_id is not None:
            if not body.client_message_id:
                raise BadRequest("client_message_id must not be empty")
            self._text("client_message_id", body.client_message_id, limit=MAX_CLIENT_ID_CHARS)

    def check_model(self, owner: str, model: str, options: dict[str, Any]) -> None:
        """400 unless ``model`` takes ``options``; 403 if ``owner`` may not use it."""
        self._model(owner, model, options)

    async def send(self, owner: str, cid: uuid.UUID, body: MessageIn) -> Sent:
        self.check_message(body)
        # The conversation as this process last wrote it, if it was idle then: the append's
        # version guard re-checks it, so a stale one costs a retry (which reads afresh).
        # Anything it would refuse (not found, busy, a model) is judged on a fresh read.
        known = self.store.known_idle(cid)
        remembered = known is not None and known.owner == owner
        conv = known if known is not None and remembered else await self.conversation(owner, cid)
        if body.client_message_id is not None:
            again = await self._sent_before(cid, body.client_message_id, body.content)
            if again is not None:
                return again
        # Always: the configuration may have changed since the conversation chose its model.
        try:
            self._send_model(owner, conv, body)
        except (BadRequest, Forbidden):
            if not remembered:
                raise
            conv = await self.conversation(owner, cid)
            self._send_model(owner, conv, body)
        self._may_start()
        # `/NAME rest` naming a prompt: expanded now (its date is the send's), stored with it.
        command = None
        if body.content.startswith("/"):
            command = await self.prompts.command(owner, body.content, at=self.now())
            if command is not None and len(command[1]) > 2 * self.settings.max_message_chars:
                raise TooLarge(
                    f"/{command[0].name} expands to {len(command[1])} characters; the limit "
                    f"is {2 * self.settings.max_message_chars}"
                )

        turn: Turn | None = None
        # The first try decides on the row read above (the append's expected version still
        # guards it); only a lost version race reads it again. One round trip less per send.
        fresh: ConversationRecord | None = conv

        async def attempt() -> Appended:
            nonlocal turn, fresh
            conv = fresh or await self.conversation(owner, cid)
            fresh = None
            c = conv.conversation
            if c.state == "generating" and await self.recovery.repair_orphans(cid):
                conv = await self.conversation(owner, cid)
                c = conv.conversation
            if c.state != "idle":
                raise ConversationBusy(
                    f"conversation {cid} is {c.state.replace('_', ' ')}; "
                    "wait for it, cancel the running answer or answer the pending question"
                )
            now = self.now()
            user_id = uuid.uuid4()
            turn = Turn.new(cid, conv.last_seq + 2, c.model, reply_to=user_id)
            return await self.store.append(
                cid,
                [
                    ev.UserMessageSent(
                        at=now,
                        message_id=user_id,
                        seq=conv.last_seq + 1,
                        content=body.content,
                        client_message_id=body.client_message_id,
                        options=body.options,
                        command=None if command is None else command[0],
                        prompt=None if command is None else command[1],
                    ),
                    turn.started(now),
                ],
                expected_version=c.version,
                actor=owner,
                instance_id=self.engine.instance_id,
            )

        try:
            async with self.limits.admit(owner, send=True):
                done = await self.store.retrying(attempt)
        except (psycopg.errors.UniqueViolation, ConversationBusy, VersionConflict):
            # The same client_message_id sent several times at once: one of them got in,
            # and the others find the conversation busy with it, lose the version race to
            # it, or hit the unique key. Each of them is answered with its rows (the busy
            # state was read after that send committed, so its rows are visible now).
            again = None
            if body.client_message_id is not None:
                again = await self._sent_before(cid, body.client_message_id, body.content)
            if again is None:
                raise
            return again
        assert turn is not None
        self.engine.start(turn, done.conversation)
        user, assistant = done.messages
        return Sent(user.message, assistant.message, created=True)

    def _send_model(self, owner: str, conv: ConversationRecord, body: MessageIn) -> None:
        c = agents.effective(conv, self.settings.models).conversation
        self._model(owner, c.model, {**c.options, **(body.options or {})})

    async def _sent_before(
        self, cid: uuid.UUID, client_message_id: str, content: str
    ) -> Sent | None:
        found = await self.store.find_sent(cid, client_message_id)
        if found is None:
            return None
        user, assistant = found
        if user.message.content != content:
            # Not a repeat of the same request: answering with the old rows would hide that
            # this text was never sent.
            raise Conflict(
                f"client_message_id {client_message_id!r} was already used for another "
                "message in this conversation; use a new id for new content"
            )
        if assistant is None:
            return None
        return Sent(user.message, assistant.message, created=False)

    async def list_messages(
        self, owner: str, cid: uuid.UUID, *, every_version: bool = False
    ) -> list[Message]:
        return (await self.conversation_with_messages(owner, cid, every_version=every_version))[1]

    async def conversation_with_messages(
        self, owner: str, cid: uuid.UUID, *, every_version: bool = False
    ) -> tuple[Conversation, list[Message]]:
        """The owner-gated conversation and its messages in seq order: the active path
        (turnlog.log.tree), or every row of every version."""
        conv = await self.conversation(owner, cid)
        rows = await self.store.list_messages(cid)
        if not every_version:
            rows = tree.active(conv, rows)
        return conv.conversation, [r.message for r in rows]

    async def edit(self, owner: str, cid: uuid.UUID, mid: uuid.UUID, body: EditIn) -> Message:
        self._content(body.content)

        async def attempt() -> Appended:
            conv = await self.conversation(owner, cid)
            row = await self.store.get_message(mid)
            if row is None or row.message.conversation_id != cid:
                raise NotFound(f"message {mid} not found")
            if row.message.role != "user":
                raise BadRequest(
                    f"message {mid} is an {row.message.role} message; "
                    "only user messages can be edited"
                )
            return await self.store.append(
                cid,
                [ev.UserMessageEdited(at=self.now(), message_id=mid, content=body.content)],
                expected_version=conv.conversation.version,
                actor=owner,
            )

        done = await self.store.retrying(attempt)
        return done.messages[0].message

    async def cancel(self, owner: str, mid: uuid.UUID) -> Message:
        row, _ = await self.message(owner, mid)
        if row.message.status == "completed" and unanswered(row):
            return await self.answers.withdraw(owner, mid)
        if row.message.status != "generating":
            raise NotGenerating(f"message {mid} is {row.message.status}, not generating")
        if not await self.engine.cancel(mid) and (
            self.cancel_elsewhere is None or not await self.cancel_elsewhere(row)
        ):
            # Nobody living runs it (or its owner did not act in time): end it in the
            # store; the old worker, if any, is fenced off from then on.
            await self._end_elsewhere(row, aborted=True, reason="cancelled")
        after = await self.store.get_message(mid)
        if after is None:
            raise NotFound(f"message {mid} not found")
        if after.message.status != "aborted":
            raise NotGenerating(f"message {mid} is {after.message.status}, not generating")
        return after.message

    async def retry(self, owner: str, mid: uuid.UUID, body: RetryIn | None = None) -> Message:
        """Since versions, the same as regenerate: a new version of the turn ``mid`` ends."""
        # Imported here: turnlog.versioning builds on this module.
        from turnlog.versioning import RegenerateIn, regenerate

        options = None if body is None else body.options
        return await regenerate(self, owner, mid, RegenerateIn(options=options))

    async def tool_approval(
        self, owner: str, mid: uuid.UUID, body: ToolApprovalIn
    ) -> Message | None:
        """Answer a call waiting for approval (``ToolAnswers.tool_approval``)."""
        return await self.answers.tool_approval(owner, mid, body)

    async def tool_result(
        self, owner: str, mid: uuid.UUID, body: ToolResultIn, *, approval: bool = False
    ) -> tuple[Message, Message | None]:
        """Answer a question waiting for the user or the client (``ToolAnswers.tool_result``)."""
        return await self.answers.tool_result(owner, mid, body, approval=approval)

    # -- recovery --------------------------------------------------------------------------

    async def interrupt(self, row: MessageRecord, reason: str) -> None:
        """End a generating row whose generation is gone, keeping its stored blocks."""
        await self._end_elsewhere(row, aborted=False, reason=reason)

    async def _end_elsewhere(self, row: MessageRecord, *, aborted: bool, reason: str) -> None:
        """End a generating row from outside its generation (cancel, recovery), closing
        its unfinished tool calls. If it ended meanwhile, or its conversation was deleted,
        there is nothing left to do: the outcome is the same."""
        current: MessageRecord | None = row
        for _ in range(5):
            if current is None or current.message.status != "generating":
                return
            closing = interrupt_events(current)
            common: dict[str, Any] = {
                "at": self.now(),
                "message_id": current.message.id,
                "attempt": None,
                "events": closing,
                "stream_seq": current.stream_seq + len(closing),
                # Exactly on top of what we read: a checkpoint landing in between is
                # refused (InvalidEvent) and we read again.
                "from_seq": current.stream_seq,
            }
            event = (
                ev.TurnAborted(**common) if aborted else ev.TurnInterrupted(**common, reason=reason)
            )
            try:
                await self.store.append(current.message.conversation_id, [event])
                return
            except (Fenced, NotFound):
                return
            except InvalidEvent:
                # A checkpoint landed after we read the row (its stream seq moved on):
                # read it again and close what it holds now.
                current = await self.store.get_message(row.message.id)
        raise ConversationBusy(f"message {row.message.id} kept changing; try again")

    async def repair_if_orphan(
        self, row: MessageRecord, found_by: FoundBy = "subscriber"
    ) -> MessageRecord:
        """``row``, taken over first if it is an orphan (``Recovery.repair_if_orphan``)."""
        return await self.recovery.repair_if_orphan(row, found_by)

    async def sweep(self) -> int:
        """At startup: take over every orphan (``Recovery.sweep_at_startup``)."""
        return await self.recovery.sweep_at_startup()


def _metadata(value: dict[str, str]) -> dict[str, str]:
    try:
        return metadata.check(value)
    except metadata.BadMetadata as exc:
        raise BadRequest(str(exc)) from None


def _no_nul(name: str, value: Any) -> None:
    """PostgreSQL text and jsonb cannot hold U+0000: refuse it here (400) rather than fail
    at the append (a 500 and nothing stored)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise BadRequest(f"{name} must not contain NUL (U+0000) characters")
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_nul(name, key)
            _no_nul(name, item)
    elif isinstance(value, list):
        for item in value:
            _no_nul(name, item)


__all__ = [
    "BadRequest",
    "Chat",
    "Conflict",
    "ConversationIn",
    "ConversationPatch",
    "EditIn",
    "Forbidden",
    "MessageIn",
    "NotGenerating",
    "RetryIn",
    "Sent",
    "TooLarge",
    "ToolApprovalIn",
    "ToolResultIn",
    "Unavailable",
    "unanswered",
    "utcnow",
]
