"""PostgreSQL killed, restarted and paused under a running server, and signals while it is
gone. turnlog is never restarted in these tests; its database is.

What must hold: while the database is gone every request that needs it is a 503 with
Retry-After within a few seconds (never a 500, never a 30 s wait) and /readyz says so;
generations keep streaming and their answers complete once it is back, with nothing lost;
a running answer is never taken for an orphan (a send to its conversation is 409, on this
instance and on another one); SIGTERM exits in bounded time with the database gone; a
second SIGTERM still gives every subscriber its ``done``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from turnlog.db.embedded import EmbeddedPostgres

from .conftest import Databases
from .support import DEMO, Follower, Server, blocks_json, find, parse_sse, wait_until

pytestmark = pytest.mark.slow

LONG = {"tokens_per_second": 20, "length": 400}  # about 20 s of answer
# "Within about 2 s" (TURNLOG_DB_TIMEOUT_S), with room for two busy shared cores.
ANSWER_BOUND_S = 6.0


@pytest.fixture(scope="module")
def own_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this module's own, to kill and pause."""
    pg = EmbeddedPostgres(tmp_path_factory.mktemp("own-pg"), fsync=False)
    pg.ensure_running()
    yield pg
    resume(pg)
    pg.stop()


@pytest.fixture
def db(own_pg: EmbeddedPostgres) -> Iterator[str]:
    own_pg.ensure_running()
    dbs = Databases(own_pg._url("postgres"))
    yield dbs.create()
    own_pg.ensure_running()
    resume(own_pg)
    dbs.drop_all()


# -- the database's processes ---------------------------------------------------------------


def postmaster(pg: EmbeddedPostgres) -> int:
    return int((pg.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])


def cluster_pids(pg: EmbeddedPostgres) -> list[int]:
    """The postmaster and its children (backends and workers)."""
    top = postmaster(pg)
    pids = [top]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == top:
            pids.append(int(stat.parent.name))
    return pids


def kill(pg: EmbeddedPostgres) -> None:
    os.kill(postmaster(pg), signal.SIGKILL)
    wait_until(lambda: not pg.is_running(), timeout=15, what="the postmaster to die")


def pause(pg: EmbeddedPostgres) -> list[int]:
    pids = cluster_pids(pg)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    return pids


def resume(pg: EmbeddedPostgres) -> None:
    try:
        pids = cluster_pids(pg)
    except (FileNotFoundError, ValueError):
        return
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


# -- helpers -------------------------------------------------------------------------------


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def assert_unavailable(srv: Server, cid: str) -> None:
    """Requests that need the database: 503 with Retry-After, soon; /readyz 503 too."""
    with srv.http(timeout=30) as http:
        for call in (
            lambda: http.get("/v1/conversations"),
            lambda: http.get(f"/v1/conversations/{cid}/messages"),
            lambda: http.post(
                f"/v1/conversations/{cid}/messages",
                json={"content": "while the database is gone", "client_message_id": "gone-1"},
            ),
            lambda: http.get("/readyz"),
        ):
            r, seconds = timed(call)
            print(f"{r.request.method} {r.request.url.path}: {r.status_code} in {seconds:.2f} s")
            assert r.status_code == 503, (r.status_code, r.text)
            assert r.json()["detail"]
            assert seconds < ANSWER_BOUND_S, f"{r.request.url} took {seconds:.1f} s"
            if r.request.url.path != "/readyz":
                assert r.headers["Retry-After"].isdigit()
        assert http.get("/healthz").status_code == 200


def wait_ready(srv: Server) -> float:
    started = time.monotonic()
    wait_until(
        lambda: httpx.get(f"{srv.url}/readyz", timeout=10).status_code == 200,
        timeout=30,
        interval=0.2,
        what="/readyz to answer 200 again",
    )
    return time.monotonic() - started


def start_answers(srv: Server, n: int) -> list[tuple[str, str, Follower]]:
    """``n`` long answers, each in its own conversation, each followed from its stream."""
    out = []
    with srv.client() as c:
        for i in range(n):
            cid = c.create_conversation(model=DEMO, options=LONG)["id"]
            mid = c.send(cid, f"a long answer {i}")["assistant_message"]["id"]
            follower = Follower(srv.client(), mid, reconnects=0)
            follower.start()
            out.append((cid, mid, follower))
    for _, _, follower in out:
        wait_until(lambda f=follower: f.text(), timeout=15, what="the answer to start")
    return out


def assert_completed_and_stored(srv: Server, answers: list[tuple[str, str, Follower]]) -> None:
    """Every answer ended `completed` for its subscriber, and the stored row holds exactly
    the blocks the subscriber saw (nothing lost)."""
    for cid, mid, follower in answers:
        follower.join(90)
        assert not follower.is_alive(), "the answer never ended"
        assert follower.error is None, follower.error
        assert follower.fold.done is not None
        assert follower.fold.done.status == "completed"
        with srv.client() as c:
            row = find(c.list_messages(cid), mid)
        assert row["status"] == "completed"
        assert row["blocks"] == blocks_json(follower.fold.blocks)


def replay_verify(url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "turnlog.cli", "replay", "verify"],
        env={**os.environ, "TURNLOG_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def first_stream_status(srv: Server, mid: str) -> str:
    """The status in the first (init) frame of a message's stream."""
    import json

    with (
        srv.http(timeout=30) as http,
        http.stream("GET", f"/v1/messages/{mid}/stream") as r,
    ):
        assert r.status_code == 200, r.read()
        for event, _, data in parse_sse(r.iter_lines()):
            if event == "init":
                status: str = json.loads(data or "{}")["status"]
                return status
    raise AssertionError("no init frame")


def assert_busy(srv: Server, cid: str) -> None:
    """A send to the conversation is 409: its answer is still running. Right after the
    outage the server may first say it is overloaded (503: checkpoints fell behind while
    the database was gone) until they caught up; that is an honest answer, not this one."""

    def answer() -> httpx.Response | None:
        with srv.http() as http:
            r = http.post(f"/v1/conversations/{cid}/messages", json={"content": "me too"})
        return None if r.status_code == 503 and "overloaded" in r.text else r

    r = wait_until(answer, timeout=20, interval=0.2, what="an answer other than overloaded")
    assert r.status_code == 409, (r.status_code, r.text)


# -- tests -----------------------------------------------------------------------------------


def test_postgres_killed_and_restarted_while_answers_run(
    spawn: Callable[..., Server], db: str, own_pg: EmbeddedPostgres
) -> None:
    """SIGKILL of the postmaster mid-answer: 503s within seconds while it is gone; once it
    is back (no turnlog restart) the answers complete with nothing lost, their
    conversations stay busy (409 here and on a second instance, whose stream request does
    not take them for orphans), and replay verify is clean."""
    a = spawn(database_url=db).start()
    b = spawn(database_url=db).start()
    answers = start_answers(a, 2)
    cid, mid, _ = answers[0]

    kill(own_pg)
    assert_unavailable(a, cid)
    own_pg.ensure_running()
    print(f"ready again {wait_ready(a):.1f} s after the restart")

    assert_busy(a, cid)
    assert_busy(b, cid)
    assert first_stream_status(b, mid) == "generating"
    assert_completed_and_stored(a, answers)
    assert a.proc is not None
    assert a.proc.poll() is None, "turnlog itself was never restarted"
    with a.client() as c:
        assert c.get_conversation(cid)["conversation"]["state"] == "idle"
    replay_verify(db)


def test_postgres_paused_and_resumed_while_answers_run(
    spawn: Callable[..., Server], db: str, own_pg: EmbeddedPostgres
) -> None:
    """SIGSTOP of every PostgreSQL process (a frozen server: sockets open, no answers):
    503s within seconds rather than a hang; after SIGCONT the answers complete with nothing
    lost and a send to a busy conversation is 409."""
    a = spawn(database_url=db).start()
    answers = start_answers(a, 2)
    cid = answers[0][0]
    pause(own_pg)
    try:
        assert_unavailable(a, cid)
    finally:
        resume(own_pg)
    print(f"ready again {wait_ready(a):.1f} s after SIGCONT")
    assert_busy(a, cid)
    assert_completed_and_stored(a, answers)
    replay_verify(db)


def test_sigterm_with_the_database_gone_exits_in_bounded_time(
    spawn: Callable[..., Server], db: str, own_pg: EmbeddedPostgres
) -> None:
    """SIGTERM while PostgreSQL is down: the process exits within the grace period plus a
    few seconds, every subscriber gets `done`; after a restart the rows read interrupted."""
    grace = 2.0
    # Recovery off: the rows are to read interrupted (handing them over is test_recovery's).
    a = spawn(
        database_url=db,
        env={"TURNLOG_SHUTDOWN_GRACE_S": str(grace), "TURNLOG_RECOVERY": "interrupt"},
    ).start()
    answers = start_answers(a, 2)
    kill(own_pg)
    took = a.terminate(timeout=60)
    print(f"exited {took:.1f} s after SIGTERM (grace {grace} s)")
    assert took < grace + 10, f"took {took:.1f} s to exit"
    for _, _, follower in answers:
        follower.join(10)
        assert follower.fold.done is not None, "a subscriber got no done"
        assert follower.fold.done.status == "interrupted"
    own_pg.ensure_running()
    a.start()
    with a.client() as c:
        for cid, mid, _ in answers:
            assert find(c.list_messages(cid), mid)["status"] == "interrupted"
    replay_verify(db)


def test_double_sigterm_still_gives_every_subscriber_done(
    spawn: Callable[..., Server], db: str
) -> None:
    """A second SIGTERM (the forced stop) cuts the 30 s grace short, and still every
    stream subscriber gets its `done` before the connections close."""
    a = spawn(
        database_url=db, env={"TURNLOG_SHUTDOWN_GRACE_S": "30", "TURNLOG_RECOVERY": "interrupt"}
    )
    a.start()
    answers = start_answers(a, 3)
    assert a.proc is not None
    started = time.monotonic()
    a.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    a.proc.send_signal(signal.SIGTERM)
    a.proc.wait(30)
    a.kill()  # reaped already: closes its log
    print(f"exited {time.monotonic() - started:.1f} s after the first SIGTERM")
    for _, _, follower in answers:
        follower.join(10)
        assert follower.fold.done is not None, "a subscriber got no done"
        assert follower.fold.done.status == "interrupted"
    a.start()
    with a.client() as c:
        for cid, mid, follower in answers:
            row = find(c.list_messages(cid), mid)
            assert row["status"] == "interrupted"
            assert row["blocks"] == blocks_json(follower.fold.blocks)
