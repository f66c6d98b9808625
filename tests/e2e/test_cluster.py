"""Many instances on one PostgreSQL behind a real nginx (docs/deployment.md): any instance
answers any request the same way — live deltas, feeds, cancel, owner death, a rolling
restart, and ``serve --workers N``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from turnlog.client import ApiError, Client, Done, text_of

from .conftest import Databases
from .nginx import NGINX, Nginx
from .support import (
    DEMO,
    JWT_SECRET,
    Follower,
    Server,
    blocks_json,
    find,
    free_port,
    make_token,
    wait_until,
)

pytestmark = pytest.mark.slow

SLOW = {"tokens_per_second": 40, "length": 400}


def _server(databases: Databases, tmp: Path, url: str, name: str) -> Server:
    data_dir = tmp / name
    data_dir.mkdir()
    return Server(database_url=url, data_dir=data_dir, log_path=data_dir / "server.log")


class Trio:
    """Three instances on one database, and nginx in front of them."""

    def __init__(self, servers: list[Server], lb: Nginx) -> None:
        self.servers = servers
        self.lb = lb

    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def client(self, i: int | None = None) -> Client:
        url = self.lb.url if i is None else self.servers[i].url
        return Client(url, make_token("alice"))

    def logs(self) -> str:
        return "\n".join(f"----- {s.url}\n{s.log()[-6000:]}" for s in self.servers)


def _trio(databases: Databases, tmp: Path) -> Iterator[Trio]:
    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed (make test installs it with apt-get)")
    url = databases.create()
    servers = [_server(databases, tmp, url, f"i{i}") for i in range(3)]
    lb: Nginx | None = None
    try:
        for s in servers:
            s.start()
        lb = Nginx(tmp, [s.port for s in servers]).start()
        yield Trio(servers, lb)
    finally:
        if lb is not None:
            lb.stop()
        for s in servers:
            s.kill()


@pytest.fixture(scope="module")
def trio(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trio]:
    """Three instances for the tests that do not kill any."""
    yield from _trio(databases, tmp_path_factory.mktemp("trio"))


@pytest.fixture
def own_trio(databases: Databases, tmp_path: Path) -> Iterator[Trio]:
    """Three instances owned by one test (it kills or restarts them)."""
    yield from _trio(databases, tmp_path)


def _follow(trio: Trio, i: int, mid: str) -> Follower:
    f = Follower(trio.client(i), mid)
    f.start()
    return f


def _deltas(f: Follower) -> int:
    return sum(1 for item in f.items if item.event not in ("init", "done"))


def _finished(followers: list[Follower], timeout: float = 30.0) -> None:
    for f in followers:
        f.join(timeout)
        assert not f.is_alive(), "a subscriber was left waiting"
        assert f.error is None, f.error
        assert f.fold.finished


def _stored(c: Client, cid: str, mid: str) -> dict[str, Any]:
    return find(c.list_messages(cid), mid)


def test_subscribers_on_every_instance_fold_to_the_stored_blocks(trio: Trio) -> None:
    """One generation on A; subscribers on A, B, C and through nginx get init, then live
    deltas (not checkpoints), then done, and all fold to the stored blocks."""
    with trio.client(0) as a:
        cid = a.create_conversation(model=DEMO)["id"]
        sent = a.send(cid, "tell me all", options={"tokens_per_second": 60, "length": 150})
        mid = sent["assistant_message"]["id"]
        followers = [_follow(trio, i, mid) for i in (0, 1, 1, 2, 2)]
        followers.append(Follower(trio.client(), mid))
        followers[-1].start()
        _finished(followers)
        stored = _stored(a, cid, mid)
    assert stored["status"] == "completed"
    for f in followers:
        assert blocks_json(f.fold.blocks) == stored["blocks"]
    # Followers on B and C were fed deltas as they came, not a fresh init per checkpoint.
    for f in followers[1:5]:
        assert f.fold.inits == 1, [i.event for i in f.items][:10]
        assert _deltas(f) > 0


def _gauge(server: Server, name: str) -> float:
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_a_mirror_nobody_reads_is_dropped_and_a_later_reader_follows_again(trio: Trio) -> None:
    """A reader on B leaves: B drops its mirror and A stops relaying the stream; a new
    reader on B follows it again from a fresh snapshot and ends with the stored blocks."""
    a_srv, b_srv = trio.servers[0], trio.servers[1]
    with trio.client(0) as a:
        cid = a.create_conversation(model=DEMO)["id"]
        sent = a.send(cid, "go on", options={"tokens_per_second": 20, "length": 1000})
        mid = sent["assistant_message"]["id"]
        headers = {"Authorization": f"Bearer {make_token('alice')}"}
        with httpx.stream(
            "GET", f"{b_srv.url}/v1/messages/{mid}/stream", headers=headers, timeout=30
        ) as response:
            lines = response.iter_lines()
            assert next(lines) == "event: init"
            wait_until(lambda: _gauge(a_srv, "turnlog_relayed_streams") == 1, what="a tap")
        # Nobody reads it on B now: dropped after 5 s unread, and A is told.
        wait_until(lambda: _gauge(b_srv, "turnlog_mirrors_open") == 0, timeout=30, what="the drop")
        wait_until(lambda: _gauge(a_srv, "turnlog_relayed_streams") == 0, timeout=10, what="untap")
        again = _follow(trio, 1, mid)
        wait_until(lambda: _deltas(again) > 0, what="deltas through a new mirror")
        a.cancel(mid)
        _finished([again])
        stored = _stored(a, cid, mid)
    assert stored["status"] == "aborted"
    assert blocks_json(again.fold.blocks) == stored["blocks"]
    assert again.fold.inits == 1


def test_feed_on_c_shows_changes_through_a_and_b_in_version_order(trio: Trio) -> None:
    """The conversation feed on C shows what A and B commit, ids never decreasing, each row
    ending as stored."""
    with trio.client(0) as a, trio.client(1) as b, trio.client(2) as c:
        cid = a.create_conversation(model=DEMO)["id"]
        seen: list[tuple[str, int, Any]] = []
        ready = threading.Event()
        stop = threading.Event()

        def read() -> None:
            with Client(trio.servers[2].url, make_token("alice")) as reader:
                for item in reader.live(cid):
                    seen.append(item)
                    ready.set()
                    if stop.is_set():
                        return

        t = threading.Thread(target=read, daemon=True)
        t.start()
        assert ready.wait(15)
        a.patch_conversation(cid, title="through A")
        mid = b.send(cid, "hello from B", options={"tokens_per_second": 200, "length": 30})
        mid = mid["assistant_message"]["id"]
        wait_until(lambda: _stored(c, cid, mid)["status"] == "completed", timeout=20)
        b.patch_conversation(cid, title="through B")
        final = {m["id"]: m for m in c.list_messages(cid)}

        def caught_up() -> bool:
            rows = {d["message"]["id"]: d["message"] for e, _, d in seen if e == "message"}
            titles = [d["conversation"]["title"] for e, _, d in seen if e == "conversation"]
            return rows == final and bool(titles) and titles[-1] == "through B"

        wait_until(caught_up, timeout=15, what="the feed on C to show every change")
        stop.set()
        a.patch_conversation(cid, title="done")  # wakes the reader so it can stop
    ids = [v for _, v, _ in seen]
    assert ids == sorted(ids), ids
    assert seen[0][0] == "snapshot"


def test_cancel_through_b_of_a_generation_on_a(trio: Trio) -> None:
    """Cancel through B stops A's generation within about a second, and every subscriber's
    fold equals the stored partial answer."""
    with trio.client(0) as a, trio.client(1) as b:
        cid = a.create_conversation(model=DEMO)["id"]
        mid = a.send(cid, "a long one", options=SLOW)["assistant_message"]["id"]
        followers = [_follow(trio, i, mid) for i in (0, 1, 2)]
        wait_until(lambda: all(len(f.text()) > 20 for f in followers), timeout=20)
        started = time.monotonic()
        row = b.cancel(mid)
        elapsed = time.monotonic() - started
        _finished(followers)
        stored = _stored(a, cid, mid)
    assert row["status"] == "aborted"
    assert stored["status"] == "aborted"
    assert row["blocks"] == stored["blocks"]
    assert elapsed < 5.0, f"cancel through B took {elapsed:.2f} s"
    for f in followers:
        assert f.fold.status == "aborted"
        assert blocks_json(f.fold.blocks) == stored["blocks"]


def test_delete_through_b_stops_a_generation_on_a(trio: Trio) -> None:
    """Deleting the conversation through B ends A's generation within a few seconds: A's
    subscriber gets done and the conversation is gone everywhere."""
    with trio.client(0) as a, trio.client(1) as b:
        cid = a.create_conversation(model=DEMO)["id"]
        mid = a.send(cid, "delete me", options=SLOW)["assistant_message"]["id"]
        follower = _follow(trio, 0, mid)
        wait_until(lambda: len(follower.text()) > 10, timeout=20)
        b.delete_conversation(cid)
        deleted = time.monotonic()
        _finished([follower], timeout=15)
        took = time.monotonic() - deleted
        assert took < 5.0, f"A streamed for {took:.1f} s after the delete"
        for i in range(3):
            with trio.client(i) as c, pytest.raises(ApiError) as gone:
                c.get_conversation(cid)
            assert gone.value.status == 404


@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    send_on=st.integers(0, 3),
    subscribe_on=st.lists(st.integers(0, 3), min_size=1, max_size=3),
    reconnect_on=st.integers(0, 3),
    cancel_on=st.none() | st.integers(0, 3),
    retry_on=st.none() | st.integers(0, 3),
)
def test_any_instance_per_request(
    trio: Trio,
    send_on: int,
    subscribe_on: list[int],
    reconnect_on: int,
    cancel_on: int | None,
    retry_on: int | None,
) -> None:
    """Whichever instance (3: through nginx) each request goes to — send, subscribe,
    reconnect with Last-Event-ID, cancel, retry — every final fold equals the stored blocks."""

    def client(i: int) -> Client:
        return trio.client(None if i == 3 else i)

    with client(send_on) as sender:
        cid = sender.create_conversation(model=DEMO)["id"]
        opts = {"tokens_per_second": 60, "length": 40}
        mid = sender.send(cid, "pick any", options=opts)["assistant_message"]["id"]
    followers = [_follow(trio, i, mid) if i < 3 else Follower(client(3), mid) for i in subscribe_on]
    for f in followers:
        if f.ident is None:
            f.start()
    wait_until(lambda: all(f.got_init.is_set() for f in followers), timeout=15)
    # A reconnect mid-answer: Last-Event-ID of what the first subscriber has seen.
    with client(reconnect_on) as r:
        with followers[0].lock:
            last = followers[0].fold.seq
        rejoined = r.follow(mid, last_event_id=last)
    if cancel_on is not None:
        with client(cancel_on) as c:
            try:
                c.cancel(mid)
            except ApiError as exc:
                status = exc.status  # 409: it had finished already
            else:
                status = 200
            assert status in (200, 409)
    _finished(followers)
    with client(0) as c:
        stored = _stored(c, cid, mid)
        for fold in [f.fold for f in followers] + [rejoined]:
            assert fold.status == stored["status"]
            assert blocks_json(fold.blocks) == stored["blocks"]
        if retry_on is not None and stored["status"] == "aborted":
            with client(retry_on) as rc:
                again = rc.retry(mid)["assistant_message"]["id"]
                fold = rc.follow(again)
            assert blocks_json(fold.blocks) == _stored(c, cid, again)["blocks"]


def test_sigkill_of_the_owner_is_continued_by_another_instance(own_trio: Trio) -> None:
    """SIGKILL of the owner, never restarted: another instance sees its liveness lock go and
    continues the row; subscribers on B and C are brought back to the stored checkpoint,
    see ``recovering`` and the rest, and end with the stored blocks, the demo's answer as
    if nothing had happened."""
    trio = own_trio
    with trio.client(1) as b:
        cid = b.create_conversation(model=DEMO)["id"]
        uncut = b.create_conversation(model=DEMO)["id"]
        fast = {**SLOW, "tokens_per_second": 4000}
        expected = text_of(
            b.follow(b.send(uncut, "then die", options=fast)["assistant_message"]["id"]).blocks
        )
        with trio.client(0) as a:
            mid = a.send(cid, "then die", options=SLOW)["assistant_message"]["id"]
        followers = [_follow(trio, i, mid) for i in (1, 2)]
        wait_until(lambda: all(_deltas(f) > 5 for f in followers), timeout=20)
        trio.servers[0].kill()
        _finished(followers, timeout=60)
        stored = _stored(b, cid, mid)
        assert stored["status"] == "completed"
        assert text_of(stored["blocks"]) == expected
        for f in followers:
            done = f.items[-1].data
            assert isinstance(done, Done)
            assert done.status == "completed"
            assert done.recovered == 1
            assert f.fold.recoveries >= 1
            assert blocks_json(f.fold.blocks) == stored["blocks"]
        logs = trio.servers[1].log() + trio.servers[2].log()
        assert logs.count("continuing an orphaned row") == 1, "continued exactly once"


def test_rolling_sigterm_loses_nothing_and_replay_verifies(own_trio: Trio) -> None:
    """SIGTERM each instance in turn (restarting it) while generations run through nginx:
    every subscriber ends with the stored blocks, no row is left generating, and
    ``turnlog replay verify`` passes."""
    trio = own_trio
    mids: list[tuple[str, str]] = []
    followers: list[Follower] = []
    with trio.client() as lb:
        for round_ in range(3):
            for _ in range(2):
                cid = lb.create_conversation(model=DEMO)["id"]
                mid = lb.send(cid, f"round {round_}", options=SLOW)["assistant_message"]["id"]
                mids.append((cid, mid))
                followers.append(Follower(trio.client(), mid, reconnects=20))
                followers[-1].start()
            wait_until(lambda: all(f.got_init.is_set() for f in followers), timeout=15)
            server = trio.servers[round_]
            server.env_overrides = {"TURNLOG_SHUTDOWN_GRACE_S": "0.5"}
            server.terminate(timeout=30)
            server.start(same_port=True)
        _finished(followers, timeout=60)
        for (cid, mid), f in zip(mids, followers, strict=True):
            stored = _stored(lb, cid, mid)
            assert stored["status"] in ("completed", "interrupted"), stored["status"]
            assert blocks_json(f.fold.blocks) == stored["blocks"], (mid, text_of(f.fold.blocks))
    env = dict(os.environ, TURNLOG_DATABASE_URL=trio.servers[0].database_url)
    result = subprocess.run(
        [sys.executable, "-m", "turnlog.cli", "replay", "verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _children(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return set()
    return {int(p) for p in text.split()}


def test_serve_workers_shares_one_port_and_replaces_a_dead_worker(
    databases: Databases, tmp_path: Path
) -> None:
    """``serve --workers 2``: two processes behind one port; a subscriber on either worker
    folds the answer; a SIGKILLed worker is replaced and its row reads interrupted."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNLOG_")}
    env.update(
        TURNLOG_DATABASE_URL=databases.create(),
        TURNLOG_DATA_DIR=str(tmp_path / "data"),
        TURNLOG_JWT_SECRET=JWT_SECRET,
        TURNLOG_CHECKPOINT_S="0.5",
        TURNLOG_HEARTBEAT_S="0.5",
    )
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "turnlog.cli", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: len(_children(proc.pid)) == 2, timeout=20, what="two workers")

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=30, what="the workers to be ready")
        first = _children(proc.pid)
        with Client(url, make_token("alice")) as c:
            cid = c.create_conversation(model=DEMO)["id"]
            mid = c.send(cid, "two workers", options={"tokens_per_second": 100, "length": 50})
            mid = mid["assistant_message"]["id"]
            # Fresh connections land on either worker; all fold to the stored row.
            folds = [Client(url, make_token("alice")).follow(mid) for _ in range(4)]
            stored = _stored(c, cid, mid)
            for fold in folds:
                assert blocks_json(fold.blocks) == stored["blocks"]
            victim = min(first)
            os.kill(victim, signal.SIGKILL)
            wait_until(
                lambda: len(_children(proc.pid)) == 2 and victim not in _children(proc.pid),
                timeout=20,
                what="a replacement worker",
            )
            wait_until(ready, timeout=30)
            assert c.create_conversation(model=DEMO)["id"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            for child in _children(proc.pid):
                os.kill(child, signal.SIGKILL)
        log.close()
    assert proc.returncode == 0, (tmp_path / "serve.log").read_text()[-5000:]
