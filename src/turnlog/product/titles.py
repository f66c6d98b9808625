"""Automatic titles: after a conversation's first completed answer, if no one set a title,
the server asks a model for one and stores it as a ``TitleGenerated`` event.

- The trigger is the store's after-commit hook (:meth:`Titler.on_append`): an append whose
  step completed an answer (no tool call left open) on an untitled, idle conversation. So
  exactly the instance that stored the answer titles it.
- The model is ``TURNLOG_TITLE_MODEL`` if set, else the conversation's own; it is sent the
  conversation's first user message with an instruction, and its answer is cut to one short
  line. The ``demo`` provider titles from the message's first words (its ``title`` option).
- A title a user sets always wins: the event is appended on the locked way, where the
  projection refuses it if the conversation has a title by then (even one set while the
  model was writing). A failure (the model, a timeout, an empty answer) is logged and
  counted, and the conversation stays untitled; no user ever sees an error from it.
- ``TURNLOG_AUTO_TITLES=0`` turns it off (the hook is then not installed).

Titling runs in :meth:`Titler.run`, a task of the server's lifespan task group: at most
``CONCURRENCY`` at once, the rest queued (up to ``QUEUE``; beyond it a title is skipped and
logged, never a send slowed down).
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable
from datetime import datetime

import anyio
import structlog
from turnlog_reducer import TextDelta

from turnlog.config import Settings
from turnlog.errors import DomainError
from turnlog.log import events as ev
from turnlog.log.projection import MessageRecord
from turnlog.log.store import Appended, Store
from turnlog.metrics import Metrics
from turnlog.providers import get_provider
from turnlog.providers.base import ChatMessage, ModelRequest, Provider, StepEnd

log = structlog.get_logger("turnlog.titles")

INSTRUCTION = (
    "You write titles for chat conversations. Reply with a title of at most six words for "
    "a conversation that begins with the user's message below: no quotes, no final period, "
    "nothing else."
)
MAX_TITLE_CHARS = 80
MAX_PROMPT_CHARS = 2_000  # of the first user message sent to the titling model
TIMEOUT_S = 30.0
CONCURRENCY = 4
QUEUE = 1_000


def clean(text: str) -> str:
    """A model's answer as a title: its first non-empty line, without a ``Title:`` label,
    quotes or a final period, at most MAX_TITLE_CHARS (cut at a word)."""
    line = next((x.strip() for x in text.splitlines() if x.strip()), "")
    if line.lower().startswith("title:"):
        line = line[6:].strip()
    for _ in range(2):  # '"Title."' and "'Title'." alike
        line = line.strip("\"'“”‘’`*# ").rstrip(".")
    line = " ".join(line.split())
    if len(line) > MAX_TITLE_CHARS:
        line = line[: MAX_TITLE_CHARS + 1].rsplit(" ", 1)[0].rstrip(",;:") + "…"
    return line


def answers(rows: list[MessageRecord]) -> list[MessageRecord]:
    """The completed answers (assistant rows ending a turn, no tool call open), in order."""
    return [
        r
        for r in rows
        if r.message.role == "assistant"
        and r.message.status == "completed"
        and not r.open_tool_calls
    ]


class Titler:
    """Writes the titles; see the module docstring."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        metrics: Metrics,
        *,
        now: Callable[[], datetime],
        provider_for: Callable[[str, Settings], tuple[Provider, str]] = get_provider,
    ) -> None:
        self.store = store
        self.provider_for = provider_for
        self.settings = settings
        self.metrics = metrics
        self.now = now
        self._queue: deque[tuple[uuid.UUID, uuid.UUID]] = deque()
        self._wake = anyio.Event()
        self._queued: set[uuid.UUID] = set()  # queued or being titled

    def on_append(self, appended: Appended) -> None:
        """The store's after-commit hook: queue a conversation whose first answer may have
        just completed (the worker checks that it was the first)."""
        conv = appended.conversation
        if conv is None or conv.conversation.title is not None:
            return
        if conv.conversation.state != "idle":
            return
        for _, event in appended.events:
            if not isinstance(event, ev.StepCompleted):
                continue
            row = next((r for r in appended.messages if r.message.id == event.message_id), None)
            if row is None or row.open_tool_calls or appended.conversation_id in self._queued:
                continue
            if len(self._queue) >= QUEUE:
                cid = str(appended.conversation_id)
                log.warning("title skipped: queue full", conversation_id=cid)
                self.metrics.child(self.metrics.titles, "failed").inc()
                return
            self._queue.append((appended.conversation_id, event.message_id))
            self._queued.add(appended.conversation_id)
            self._wake.set()
            return

    async def run(self) -> None:
        """Title queued conversations until cancelled (at most CONCURRENCY at once)."""
        limiter = anyio.Semaphore(CONCURRENCY)
        async with anyio.create_task_group() as tg:
            while True:
                if not self._queue:
                    # Made anew before waiting (a set Event stays set); on_append runs on
                    # this loop's thread, so none can land between the test and the wait.
                    self._wake = anyio.Event()
                    await self._wake.wait()
                    continue
                await limiter.acquire()
                cid, mid = self._queue.popleft()
                tg.start_soon(self._title_then_release, limiter, cid, mid)

    async def _title_then_release(
        self, limiter: anyio.Semaphore, cid: uuid.UUID, mid: uuid.UUID
    ) -> None:
        try:
            with structlog.contextvars.bound_contextvars(
                conversation_id=str(cid), message_id=str(mid)
            ):
                outcome = await self.title(cid, mid)
            self.metrics.child(self.metrics.titles, outcome).inc()
        finally:
            self._queued.discard(cid)
            limiter.release()

    async def title(self, cid: uuid.UUID, mid: uuid.UUID) -> str:
        """Title ``cid`` if ``mid`` is its first completed answer and it has no title;
        return the outcome: ``written``, ``skipped`` or ``failed`` (logged)."""
        conv = await self.store.get_conversation(cid)
        if conv is None or conv.conversation.title is not None:
            return "skipped"
        rows = await self.store.list_messages(cid)
        done = answers(rows)
        if not done or done[0].message.id != mid:
            return "skipped"
        first = next((r for r in rows if r.message.role == "user"), None)
        if first is None:
            return "skipped"
        text = first.message.content or ""
        model = self.settings.title_model or conv.conversation.model
        try:
            with anyio.fail_after(TIMEOUT_S):
                title = clean(await self._ask(model, text[:MAX_PROMPT_CHARS]))
            if not title:
                raise ValueError("the model answered with no title")
        except Exception as exc:
            log.warning("title failed; left untitled", model=model, error=str(exc)[:500])
            return "failed"
        try:
            await self.store.append(cid, [ev.TitleGenerated(at=self.now(), title=title)])
        except DomainError as exc:
            # A title was set meanwhile (the user's wins), or the conversation is gone.
            log.info("title not written", reason=str(exc))
            return "skipped"
        log.info("title written", model=model)
        return "written"

    async def _ask(self, model: str, text: str) -> str:
        """The titling model's answer to the first user message ``text``."""
        provider, name = self.provider_for(model, self.settings)
        kind = self.settings.models.resolve(model)[0].kind
        request = ModelRequest(
            model=name,
            system_prompt=INSTRUCTION,
            messages=(ChatMessage(role="user", content=text),),
            # The demo model titles from the first words (its own option); the others
            # follow the instruction, with their configured defaults.
            options={"title": True, "tokens_per_second": 1_000_000} if kind == "demo" else {},
            tools=(),
        )
        parts: list[str] = []
        stream = provider.stream(request)
        try:
            async for item in stream:
                if isinstance(item, TextDelta):
                    parts.append(item.text)
                    if sum(map(len, parts)) > 4 * MAX_TITLE_CHARS:
                        break  # enough for one line; the rest is never read
                elif isinstance(item, StepEnd):
                    break
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()  # the provider's connection is closed now, not at GC
        return "".join(parts)


__all__ = ["INSTRUCTION", "Titler", "answers", "clean"]
