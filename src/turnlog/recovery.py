"""Recovery: a generating row whose process died is taken over and continued, not lost.

Who finds such a row (an *orphan*: its lease's instance is gone or its liveness lock is
free, see ``turnlog.log.liveness``): this instance at start-up (:meth:`Recovery.sweep`), its
watch for other instances' deaths (:meth:`Recovery.watch`), a subscriber or a send that
meets it (:meth:`Recovery.repair_if_orphan`), or a mirror whose owner died (``turnlog.follow``).
Each calls :meth:`Recovery.take_over`, which decides:

* continue: append ``TurnResumed`` (a new attempt, written only on top of the dead one's
  attempt and stored stream seq, so of two instances that find the same orphan one wins and
  the other is fenced), then the engine runs the turn again from the stored blocks; the
  provider is asked to go on from them (``ModelRequest.continuation``), its readers get
  ``init`` at the stored checkpoint, then ``recovering``, then the new events;
* or interrupt, as before recovery existed, when ``TURNLOG_RECOVERY=interrupt``, when the
  row was continued ``TURNLOG_RECOVERY_MAX_ATTEMPTS`` times already (a turn that kills its
  process every time must not take the fleet down with it), or when its last stored write
  is older than ``TURNLOG_RECOVERY_MAX_AGE_S`` (nobody waits for it any more).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Literal

import anyio
import structlog

from turnlog.config import Settings
from turnlog.errors import (
    Fenced,
    InvalidEvent,
    NotFound,
)
from turnlog.generation.engine import Engine
from turnlog.generation.turn import Clock, Turn
from turnlog.log import events as ev
from turnlog.log.pool import DatabaseUnavailable
from turnlog.log.projection import MessageRecord
from turnlog.log.store import Store

__all__ = ["FoundBy", "Recovery"]

log = structlog.get_logger("turnlog.recovery")

# How often an instance looks for rows of instances that died (plus up to half of it at
# random, so that instances started together do not all look at the same moment).
WATCH_S = 2.0

# An instance id no process has: a sweep takes only other processes' rows.
NOBODY = uuid.UUID(int=0)

FoundBy = Literal["startup", "watch", "subscriber", "send", "mirror"]
Interrupt = Callable[[MessageRecord, str], Awaitable[None]]


class Recovery:
    """Takes over orphaned generating rows: continues them here, or interrupts them."""

    def __init__(
        self,
        store: Store,
        engine: Engine,
        settings: Settings,
        *,
        interrupt: Interrupt,
        now: Clock,
    ) -> None:
        self.store = store
        self.engine = engine
        self.settings = settings
        self._interrupt = interrupt
        self._now = now

    async def sweep(self, found_by: FoundBy = "startup") -> int:
        """Take over every orphan of another (dead) process now; how many there were."""
        # Rows leased to this process are left to their own checks (take_over's running
        # test, a reader's or a send's is_orphan): a sweep's query races this process's
        # sends, whose rows can commit between reading the running ids and the query.
        # A process at start-up holds no lease yet, so it misses nothing of its own.
        rows = await self.store.orphans(me=NOBODY, mine=self.engine.running_ids())
        for row in rows:
            await self.take_over(row, found_by)
        return len(rows)

    async def repair_if_orphan(
        self, row: MessageRecord, found_by: FoundBy = "subscriber"
    ) -> MessageRecord:
        """If ``row`` is generating with no living generation, take it over: continued here
        (it stays generating, now under this instance) or interrupted (:meth:`take_over`)."""
        mid = row.message.id
        if row.message.status != "generating":
            return row
        mine = self.engine.running(mid) is not None
        if not await self.store.is_orphan(mid, me=self.engine.instance_id, mine=mine):
            return row
        return await self.take_over(row, found_by)

    async def repair_orphans(self, cid: uuid.UUID) -> bool:
        """Take over the orphans of conversation ``cid`` (a send found it generating);
        whether one of them ended (the conversation may be idle now)."""
        repaired = False
        for row in await self.store.list_messages(cid):
            if row.message.status == "generating":
                after = await self.repair_if_orphan(row, "send")
                repaired = repaired or after.message.status != "generating"
        return repaired

    async def sweep_at_startup(self) -> int:
        """At startup: take over every generating row whose process is gone. Right after a
        database restart that cannot be told yet (LIVENESS_GRACE_S): wait it out first."""
        unsettled = await self.store.liveness_unsettled_s()
        if unsettled > 0:
            await anyio.sleep(unsettled)
        return await self.sweep("startup")

    async def watch(self) -> None:
        """Forever: find the rows of instances that died meanwhile and take them over (run in
        the app's task group). A failed look is logged and tried again at the next one."""
        while True:
            await anyio.sleep(WATCH_S * (1 + random.random() / 2))
            if self.engine.draining:
                return
            try:
                await self.sweep("watch")
            except DatabaseUnavailable as exc:
                log.info("could not look for orphaned rows", error=str(exc))
            except Exception:
                # A bug here must not take the server down; the next look tries again.
                log.exception("looking for orphaned rows failed")

    async def take_over(self, row: MessageRecord, found_by: FoundBy) -> MessageRecord:
        """Continue ``row`` (an orphan) here, or interrupt it when recovery does not apply;
        the row as it is afterwards (another instance may have taken it first)."""
        m = row.message
        on = self.settings.recovery == "continue"
        done = await self.store.resumptions(m.conversation_id, m.id) if on else 0
        if self.engine.running(m.id) is not None:
            # This process runs it: no orphan. A sweep reads the running ids before its
            # query, so a turn whose rows committed in between (a send here, started just
            # after its append) looks orphaned to it; taking it over fenced the live
            # generation off and then failed to open its stream again (StreamAlreadyOpen),
            # leaving the row generating with nobody writing it.
            return row
        why_not = self._why_not(row, done)
        if why_not is not None:
            kind, reason = why_not
            log.warning(
                "not continuing an orphaned row",
                message_id=str(m.id),
                conversation_id=str(m.conversation_id),
                reason=reason,
            )
            self.engine.metrics.child(self.engine.metrics.recoveries, "given_up", kind).inc()
            await self._interrupt(row, f"its process died; not continued: {reason}")
            return await self.store.get_message(m.id) or row
        if self.engine.draining:
            return row  # this instance is going away too: another one (or the next start) will
        recovery = done + 1
        turn = Turn(
            conversation_id=m.conversation_id,
            message_id=m.id,
            attempt=uuid.uuid4(),
            seq=m.seq,
            model=m.model or self.settings.default_model,
            reply_to=m.reply_to,
            options=row.options,
            recovery=recovery,
        )
        event = ev.TurnResumed(
            at=self._now(),
            message_id=m.id,
            attempt=turn.attempt,
            previous_attempt=row.attempt,
            stream_seq=row.stream_seq,
            recovery=recovery,
        )
        try:
            appended = await self.store.append(
                m.conversation_id, [event], instance_id=self.engine.instance_id
            )
        except (Fenced, InvalidEvent, NotFound) as exc:
            # Taken over by another instance first, ended, or deleted meanwhile.
            log.info("orphaned row taken elsewhere", message_id=str(m.id), detail=str(exc))
            return await self.store.get_message(m.id) or row
        resumed = next(r for r in appended.messages if r.message.id == m.id)
        # Its server calls had started (the model's part was done): judged call by call.
        started = await self.store.started_calls(m.conversation_id, m.id, row.stream_seq)
        log.info(
            "continuing an orphaned row",
            message_id=str(m.id),
            conversation_id=str(m.conversation_id),
            recovery=recovery,
            stream_seq=row.stream_seq,
            found_by=found_by,
            started_calls=None if started is None else [c.tool_call_id for c in started],
        )
        self.engine.metrics.child(self.engine.metrics.recoveries, "started", found_by).inc()
        self.engine.resume(turn, resumed, appended.conversation, started_calls=started)
        return resumed

    def _why_not(self, row: MessageRecord, done: int) -> tuple[str, str] | None:
        """(metric label, reason) when ``row``, continued ``done`` times so far, is not to be
        continued again; None when it is."""
        s = self.settings
        if s.recovery != "continue":
            return "off", "recovery is off (TURNLOG_RECOVERY=interrupt)"
        age = (self._now() - row.message.updated_at).total_seconds()
        if age > s.recovery_max_age_s:
            return "max_age", (
                f"its last write was {age:.0f} s ago, over TURNLOG_RECOVERY_MAX_AGE_S="
                f"{s.recovery_max_age_s:g}"
            )
        if done >= s.recovery_max_attempts:
            return "max_attempts", (
                f"it was continued {done} times already "
                f"(TURNLOG_RECOVERY_MAX_ATTEMPTS={s.recovery_max_attempts})"
            )
        return None
