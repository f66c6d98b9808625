"""A turn survives a crash by itself: real processes, SIGKILL, restarts, a second instance.

After its process dies a generating row is taken over (at the next start, or by another
instance that sees the owner's liveness lock go) and continued from its stored checkpoint:
its readers get ``init`` at the checkpoint, ``recovering``, then the rest, and the demo
provider's continued answer equals the never-killed one exactly. Budgets stop a row that
keeps killing its process, or one nobody has waited for too long.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from turnlog_reducer import Done

from turnlog import replay
from turnlog.client import Client

from .support import DEMO, Follower, Server, blocks_json, find, wait_until

pytestmark = pytest.mark.slow

ANSWER = {"tokens_per_second": 20, "length": 120}
QUESTION = "tell me about event sourcing"
ARTIFACTS = Path(os.environ.get("TURNLOG_TEST_ARTIFACTS", "test-artifacts"))


def reference_text(c: Client, length: int = ANSWER["length"], question: str = QUESTION) -> str:
    """The text of the same question answered without any crash (the demo is deterministic)."""
    cid = c.create_conversation(model=DEMO, options={"tokens_per_second": 2000, "length": length})[
        "id"
    ]
    fold = c.follow(c.send(cid, question)["assistant_message"]["id"])
    assert fold.done is not None
    assert fold.done.status == "completed"
    return fold.text


def start_answer(c: Client, **options: Any) -> tuple[str, str]:
    """A conversation answering QUESTION slowly: (cid, assistant message id)."""
    cid = c.create_conversation(model=DEMO, options={**ANSWER, **options})["id"]
    return cid, c.send(cid, QUESTION)["assistant_message"]["id"]


def stored(c: Client, cid: str, mid: str) -> dict[str, Any]:
    return find(c.list_messages(cid), mid)


def wait_stored_seq_past(c: Client, cid: str, mid: str, chars: int) -> None:
    """Until the stored row holds more than ``chars`` characters of text."""
    wait_until(
        lambda: sum(len(b.get("text", "")) for b in stored(c, cid, mid)["blocks"]) > chars,
        timeout=30,
        interval=0.1,
        what=f"a checkpoint past {chars} characters",
    )


def stored_text(row: dict[str, Any]) -> str:
    return "".join(b.get("text", "") for b in row["blocks"] if b["type"] == "text")


class TimedFollower(Follower):
    """A follower that also notes when each item arrived (monotonic seconds)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrived: list[float] = []

    def run(self) -> None:
        try:
            for item in self.client.stream_message(self.mid, reconnects=self.reconnects):
                with self.lock:
                    self.items.append(item)
                    self.arrived.append(time.monotonic())
                    self.fold.feed(item)
                self.got_init.set()
        except BaseException as e:
            self.error = e

    def first_delta_after(self, mark: int) -> float | None:
        """When the first text delta after a ``recovering`` beyond item ``mark`` came."""
        with self.lock:
            seen = False
            for item, at in zip(self.items[mark:], self.arrived[mark:], strict=True):
                if item.event == "recovering":
                    seen = True
                elif seen and item.event == "text_delta":
                    return at
        return None


def done_of(follower: Follower) -> Done:
    follower.join(90)
    assert not follower.is_alive(), "the follower never saw done"
    assert follower.error is None, follower.error
    assert follower.fold.done is not None
    return follower.fold.done


def test_a_killed_answer_goes_on_by_itself_after_a_restart(
    spawn: Callable[..., Server],
) -> None:
    """SIGKILL mid-answer, start again: no retry; the row is continued where its last
    checkpoint left it, a reader that stayed gets init (back at the checkpoint),
    ``recovering`` and the rest, and the answer equals the never-killed one."""
    srv = spawn().start()
    with srv.client() as c:
        expected = reference_text(c)
        cid, mid = start_answer(c)
        follower = Follower(srv.client(), mid, reconnects=200)
        follower.start()
        wait_stored_seq_past(c, cid, mid, 80)
    srv.kill()
    srv.start(same_port=True)
    done = done_of(follower)
    assert done.status == "completed"
    assert done.recovered == 1
    assert follower.fold.recoveries >= 1
    assert follower.fold.text == expected
    events = [i.event for i in follower.items]
    assert events.index("recovering") == events.index("init", 1) + 1  # right after its init
    with srv.client() as c:
        row = stored(c, cid, mid)
    assert row["status"] == "completed"
    assert row["blocks"] == blocks_json(follower.fold.blocks)
    assert replay.verify(srv.database_url).ok


def test_an_answer_handed_over_at_shutdown_goes_on_at_the_next_start(
    spawn: Callable[..., Server],
) -> None:
    """SIGTERM with a short grace: what the answer had is stored and the row left to be
    continued (not interrupted); the next start finishes it, equal to the uncut answer."""
    srv = spawn(env={"TURNLOG_SHUTDOWN_GRACE_S": "0.2"}).start()
    with srv.client() as c:
        expected = reference_text(c)
        cid, mid = start_answer(c)
        wait_stored_seq_past(c, cid, mid, 40)
    srv.terminate()
    srv.start(same_port=True)
    with srv.client() as c:
        fold = c.follow(mid)
        row = stored(c, cid, mid)
    assert fold.done is not None
    assert fold.done.status == "completed"
    assert row["status"] == "completed"
    assert stored_text(row) == expected
    assert "generation handed over" in srv.log()


def test_another_instance_takes_over_when_the_owner_dies(
    spawn: Callable[..., Server],
) -> None:
    """Two instances on one database: the one running the answer is SIGKILLed and never
    restarted; the other sees its liveness lock go, continues the row, and a reader that
    followed through it (a mirror) is brought back to the checkpoint and sees the end."""
    a = spawn().start()
    b = spawn(database_url=a.database_url).start()
    with a.client() as c:
        expected = reference_text(c)
        cid, mid = start_answer(c)
    follower = Follower(b.client(), mid, reconnects=200)
    follower.start()
    with b.client() as c:
        wait_stored_seq_past(c, cid, mid, 60)
    a.kill()
    done = done_of(follower)
    assert done.status == "completed"
    assert done.recovered == 1
    assert follower.fold.text == expected
    with b.client() as c:
        row = stored(c, cid, mid)
    assert stored_text(row) == expected
    assert "continuing an orphaned row" in b.log()


def test_a_row_that_keeps_killing_its_process_stops_at_the_attempt_limit(
    spawn: Callable[..., Server],
) -> None:
    """TURNLOG_RECOVERY_MAX_ATTEMPTS=2: killed while continued twice more, the row is not
    continued a third time; it reads interrupted with its stored text, and the reason is
    in the log."""
    srv = spawn(env={"TURNLOG_RECOVERY_MAX_ATTEMPTS": "2"}).start()
    with srv.client() as c:
        cid, mid = start_answer(c, length=400)
        wait_stored_seq_past(c, cid, mid, 30)
    for kills in range(3):
        srv.kill()
        srv.start(same_port=True)
        with srv.client() as c:
            row = stored(c, cid, mid)
            if kills < 2:
                assert row["status"] == "generating", f"not continued after kill {kills + 1}"
                wait_stored_seq_past(c, cid, mid, len(stored_text(row)) + 20)
    assert row["status"] == "interrupted"
    assert "TURNLOG_RECOVERY_MAX_ATTEMPTS=2" in srv.log()


def test_an_orphan_older_than_the_max_age_is_interrupted(spawn: Callable[..., Server]) -> None:
    """TURNLOG_RECOVERY_MAX_AGE_S=1: a row whose process died longer ago is not continued."""
    srv = spawn(env={"TURNLOG_RECOVERY_MAX_AGE_S": "1"}).start()
    with srv.client() as c:
        cid, mid = start_answer(c)
        wait_stored_seq_past(c, cid, mid, 20)
    srv.kill()
    time.sleep(2.0)  # the age the budget is about, not a wait for something to happen
    srv.start(same_port=True)
    with srv.client() as c:
        row = stored(c, cid, mid)
    assert row["status"] == "interrupted"
    assert "TURNLOG_RECOVERY_MAX_AGE_S=1" in srv.log()


def test_a_sigkill_loop_ends_every_turn_with_the_uncrashed_text(
    spawn: Callable[..., Server],
) -> None:
    """Several turns, the server killed at random moments and started again, five times:
    every turn ends completed with exactly the text of an uncrashed run, every reader that
    reconnected folds to the stored blocks, and replay verifies the log. The figures go to
    test-artifacts/recovery-loop.json."""
    rng = random.Random(20261204)
    # Each turn may be killed every time: more attempts than kills (the limit has its test).
    srv = spawn(env={"TURNLOG_RECOVERY_MAX_ATTEMPTS": "10"}).start()
    turns = 4
    with srv.client() as c:
        expected = reference_text(c, length=160)
        sent = [start_answer(c, length=160, tokens_per_second=25) for _ in range(turns)]
    followers = [TimedFollower(srv.client(), mid, reconnects=400) for _, mid in sent]
    for f in followers:
        f.start()
    pending: list[tuple[float, dict[int, int]]] = []
    kills = 0
    for _ in range(5):
        time.sleep(rng.uniform(0.6, 1.8))
        with srv.client() as c:
            if all(stored(c, cid, mid)["status"] != "generating" for cid, mid in sent):
                break
        srv.kill()
        kills += 1
        marks = {id(f): len(f.items) for f in followers}
        restarted = time.monotonic()
        srv.start(same_port=True)
        pending.append((restarted, marks))
    for f in followers:
        done = done_of(f)
        assert done.status == "completed"
    # Time from each restart to the first continued delta each reader saw after it.
    first_delta_s = [
        at - restarted
        for restarted, marks in pending
        for f in followers
        if (at := f.first_delta_after(marks[id(f)])) is not None
    ]
    with srv.client() as c:
        rows = [stored(c, cid, mid) for cid, mid in sent]
    identical = sum(stored_text(r) == expected for r in rows)
    for f, row in zip(followers, rows, strict=True):
        assert row["status"] == "completed"
        assert row["blocks"] == blocks_json(f.fold.blocks)
    assert identical == turns
    assert replay.verify(srv.database_url).ok
    figures = {
        "turns": turns,
        "kills": kills,
        "completed": sum(r["status"] == "completed" for r in rows),
        "identical_to_uncrashed": identical,
        "restart_to_first_continued_delta_s": {
            "n": len(first_delta_s),
            "median": round(statistics.median(first_delta_s), 3) if first_delta_s else None,
            "max": round(max(first_delta_s), 3) if first_delta_s else None,
        },
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "recovery-loop.json").write_text(json.dumps(figures, indent=2))
    assert kills >= 1
