"""Process death and shutdown mid-answer: SIGKILL loses at most the checkpoint window,
SIGTERM loses nothing and exits within its bound (docs/operations.md)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from turnlog import replay
from turnlog.client import Init, text_of

from .pgproxy import LostAnswers
from .support import DEMO, FAST, Follower, Server, blocks_json, find, is_prefix, wait_until

pytestmark = pytest.mark.slow

CHECKPOINT_S = 0.5
TPS = 20
# These tests are about what a crash or a shutdown leaves stored, with recovery off (a row
# then reads interrupted); continuing the row is tests/e2e/test_recovery.py's.
INTERRUPT = {"TURNLOG_RECOVERY": "interrupt"}


def _stored(c: Any, cid: str, mid: str) -> dict[str, Any]:
    return find(c.list_messages(cid), mid)


def _wait_two_checkpoints(c: Any, cid: str, mid: str) -> list[Any]:
    """Poll the stored row until its blocks changed twice (two checkpoints landed)."""
    seen: list[Any] = []

    def changed_twice() -> bool:
        blocks = _stored(c, cid, mid)["blocks"]
        if blocks and (not seen or seen[-1] != blocks):
            seen.append(blocks)
        return len(seen) >= 2

    wait_until(changed_twice, timeout=15, interval=0.1, what="two checkpoints of the row")
    return seen


def _assert_answered_at_once(server: Server, mid: str, status: str, blocks: Any) -> None:
    """The stream of a finished row: init with the stored blocks, then done, immediately."""
    with server.client() as c:
        start = time.monotonic()
        items = list(c.stream_message(mid, reconnects=0))
        elapsed = time.monotonic() - start
    assert elapsed < 2.0, f"stream of a finished row took {elapsed:.2f} s"
    assert [i.event for i in items] == ["init", "done"]
    init = items[0].data
    assert isinstance(init, Init)
    assert init.status == status
    assert blocks_json(init.blocks) == blocks
    assert getattr(items[1].data, "status", None) == status


def test_sigkill_mid_answer_loses_at_most_the_checkpoint_window(
    spawn: Callable[..., Server],
) -> None:
    """SIGKILL after two checkpoints, restart: the row is interrupted with a prefix of the
    streamed blocks missing at most (checkpoint + 0.5 s) of tokens; stream answers init+done
    at once; retry completes a new row."""
    srv = spawn(env={**INTERRUPT, "TURNLOG_CHECKPOINT_S": str(CHECKPOINT_S)}).start()
    with srv.client() as c:
        conv = c.create_conversation(model=DEMO, options={"tokens_per_second": TPS, "length": 300})
        cid = conv["id"]
        mid = c.send(cid, "a long answer please")["assistant_message"]["id"]
        follower = Follower(srv.client(), mid, reconnects=0)
        follower.start()
        _wait_two_checkpoints(c, cid, mid)
    srv.kill()
    follower.join(10)
    assert not follower.is_alive()
    assert follower.fold.done is None, "the stream cannot have finished: the process died"
    streamed = blocks_json(follower.fold.blocks)

    srv.start()  # same database, same data dir
    with srv.client() as c:
        row = _stored(c, cid, mid)
        assert row["status"] == "interrupted"
        assert row["interrupted"] is True
        assert row["is_generating"] is False
        assert row["blocks"], "two checkpoints were stored before the kill"
        assert is_prefix(row["blocks"], streamed), (row["blocks"], streamed)
        missing = text_of(streamed)[len(text_of(row["blocks"])) :]
        budget = (CHECKPOINT_S + 0.5) * TPS
        assert len(missing.split()) <= budget, f"lost {len(missing.split())} tokens: {missing!r}"
        assert c.get_conversation(cid)["conversation"]["state"] == "idle"

        _assert_answered_at_once(srv, mid, "interrupted", row["blocks"])

        c.patch_conversation(cid, options=FAST)
        r = c.http.post(f"/v1/messages/{mid}/retry")
        assert r.status_code == 201, r.text
        new = r.json()["assistant_message"]
        fold = c.follow(new["id"])
        assert fold.done is not None
        assert fold.done.status == "completed"
        rows = c.list_messages(cid, every_version=True)
        assert [(r["seq"], r["role"], r["status"]) for r in rows] == [
            (1, "user", "completed"),
            (2, "assistant", "interrupted"),
            (3, "assistant", "completed"),
        ]
        assert rows[2]["blocks"] == blocks_json(fold.blocks)
        # The retry is a new version of the answer, the active one.
        assert [r["seq"] for r in c.list_messages(cid)] == [1, 3]


def test_orphan_repaired_by_another_process_stream_endpoint(
    spawn: Callable[..., Server],
) -> None:
    """Two processes on one database; the generating one is killed: the other's stream
    endpoint repairs the orphan to interrupted and answers init + done (never waits forever)."""
    a = spawn(env={**INTERRUPT, "TURNLOG_CHECKPOINT_S": str(CHECKPOINT_S)}).start()
    b = spawn(
        env={**INTERRUPT, "TURNLOG_CHECKPOINT_S": str(CHECKPOINT_S)}, database_url=a.database_url
    )
    b.start()
    with a.client() as c:
        conv = c.create_conversation(model=DEMO, options={"tokens_per_second": TPS, "length": 300})
        cid = conv["id"]
        mid = c.send(cid, "orphan me")["assistant_message"]["id"]
        _wait_two_checkpoints(c, cid, mid)
    a.kill()
    with b.client(stream_read_timeout=60.0) as c:
        start = time.monotonic()
        items = list(c.stream_message(mid, reconnects=0))
        elapsed = time.monotonic() - start
        assert items[0].event == "init"
        assert items[-1].event == "done"
        assert getattr(items[-1].data, "status", None) == "interrupted"
        row = _stored(c, cid, mid)
        assert row["status"] == "interrupted"
        assert row["blocks"]
        assert elapsed < 45, f"the orphan took {elapsed:.1f} s to be repaired"


@pytest.mark.parametrize(
    ("length", "grace", "expected"),
    [(300, 2.0, "interrupted"), (30, 5.0, "completed")],
    ids=["past-grace", "within-grace"],
)
def test_sigterm_mid_answer_exits_within_grace_and_loses_nothing(
    spawn: Callable[..., Server], length: int, grace: float, expected: str
) -> None:
    """SIGTERM with a subscriber connected: exit within the grace + 2 s, the subscriber gets
    done, and after restart the row holds exactly what was streamed (completed or interrupted)."""
    srv = spawn(
        env={
            **INTERRUPT,
            "TURNLOG_CHECKPOINT_S": str(CHECKPOINT_S),
            "TURNLOG_SHUTDOWN_GRACE_S": str(grace),
        }
    ).start()
    with srv.client() as c:
        conv = c.create_conversation(
            model=DEMO, options={"tokens_per_second": TPS, "length": length}
        )
        cid = conv["id"]
        mid = c.send(cid, "shut down while answering")["assistant_message"]["id"]
        follower = Follower(srv.client(stream_read_timeout=30.0), mid, reconnects=0)
        follower.start()
        wait_until(lambda: len(follower.text().split()) >= 10, what="10 streamed tokens")
    elapsed = srv.terminate(timeout=grace + 20)
    assert elapsed <= grace + 2.0, f"exit took {elapsed:.2f} s with a {grace} s grace"
    follower.join(5)
    assert not follower.is_alive()
    assert follower.fold.done is not None, f"no done before the stream closed: {follower.error}"
    assert follower.fold.done.status == expected
    streamed = blocks_json(follower.fold.blocks)

    srv.start()
    with srv.client() as c:
        row = _stored(c, cid, mid)
        assert row["status"] == expected
        assert row["blocks"] == streamed, "the stored row must hold all that was streamed"
        if expected == "completed":
            assert len(text_of(row["blocks"]).split()) == length
        _assert_answered_at_once(srv, mid, expected, row["blocks"])


@pytest.mark.parametrize("times", [1, 3])
def test_a_checkpoint_whose_answer_is_lost_is_stored_once(
    spawn: Callable[..., Server], databases: Any, tmp_path: Path, times: int
) -> None:
    """The database commits a checkpoint but its answer never reaches the server (the
    proxy drops the connection in place of the final ReadyForQuery). The server cannot
    tell whether the write landed; it sends the very same checkpoint again, the store
    recognises the repeat, and the answer is stored exactly as streamed: nothing doubled,
    nothing lost, and the generation carries on to completion."""
    direct = databases.create()
    proxy = LostAnswers(
        direct, tmp_path / "proxy", marker=b"turn_checkpointed", times=times
    ).start()
    try:
        srv = spawn(
            env={"TURNLOG_CHECKPOINT_S": "0.2"},
            database_url=proxy.url(urlsplit(direct).path.lstrip("/")),
        ).start()
        with srv.client() as c:
            conv = c.create_conversation(
                model=DEMO, options={"tokens_per_second": 40, "length": 80}
            )
            cid = conv["id"]
            mid = c.send(cid, "lose my answers")["assistant_message"]["id"]
            fold = c.follow(mid)
            assert fold.done is not None
            assert fold.done.status == "completed"
            row = _stored(c, cid, mid)
        assert proxy.fired == times, "the proxy lost fewer answers than planned"
        assert srv.log().count("checkpoint failed; will retry") == times
        assert row["status"] == "completed"
        assert row["blocks"] == blocks_json(fold.blocks)
        assert replay.verify(direct).ok
    finally:
        proxy.stop()


def test_a_step_end_whose_answer_is_lost_still_starts_the_next_step(
    spawn: Callable[..., Server], databases: Any, tmp_path: Path
) -> None:
    """A server-tool step ends in one write: the step's completion, the tool's result and
    the next step's row. That write commits but its answer is lost. The server's retry is
    refused (the row has ended), and it must see that its own write ended it: the next
    step runs to completion instead of being left generating with no generation."""
    direct = databases.create()
    proxy = LostAnswers(direct, tmp_path / "proxy", marker=b"step_completed", times=1).start()
    try:
        srv = spawn(database_url=proxy.url(urlsplit(direct).path.lstrip("/"))).start()
        with srv.client() as c:
            conv = c.create_conversation(model=DEMO, options={**FAST, "tool": "clock"})
            cid = conv["id"]
            first = c.send(cid, "what time is it")["assistant_message"]["id"]
            c.follow(first)

            def settled() -> list[dict[str, Any]] | None:
                state = c.get_conversation(cid)
                rows: list[dict[str, Any]] = state["messages"]
                done = state["conversation"]["state"] == "idle" and len(rows) == 4
                return rows if done and not any(r["is_generating"] for r in rows) else None

            rows = wait_until(settled, timeout=20, what="the tool step and the next step")
        assert proxy.fired == 1
        assert [(r["role"], r["status"]) for r in rows] == [
            ("user", "completed"),
            ("assistant", "completed"),
            ("tool", "completed"),
            ("assistant", "completed"),
        ]
        assert rows[3]["blocks"], "the next step streamed its answer"
        assert replay.verify(direct).ok
    finally:
        proxy.stop()
