"""Load benchmark: a real ``turnlog serve`` beside a bare litestar SSE baseline, same run.

Run: ``python bench/load.py`` (``make bench``), or a quick pass with smaller sizes::

    python bench/load.py --fanout 50 --gens 50 --tokens 100 --send-seconds 2

Both servers start here: ``turnlog serve`` on the embedded defaults (a temp data dir, an
ephemeral port, fsync on) and ``bench/baseline_server.py`` (the same uvicorn settings; no
database, no reducer; the same pacing and fan-out). Each scenario runs against turnlog and
then against the baseline, driven by separate client processes over loopback (raw HTTP/1.1
on asyncio with httptools, so the clients stay cheap). Scenarios:

- ``fan-out S``: one generation at 100 tokens/s, S subscribers on its stream;
- ``gens G``: G conversations each send at once (30 tokens/s, 300 tokens), one subscriber
  each; ``gens G ckpt off`` is the same against a second turnlog with
  ``TURNLOG_CHECKPOINT_S=3600`` (what checkpoints cost);
- ``sends``: 10 clients send for N seconds, each round-robin over its own conversations
  (1-token answers), counting 201s.
- with ``--remote G`` (default 500; 0 skips): ``gens G, subscribers on B``: every send to
  the first server (A), every subscriber on a second ``turnlog serve`` (B) on the same
  database, which mirrors A's streams through its one relay connection to A
  (turnlog.relay), beside the same with the subscribers on A; both servers' CPU counts in
  both rows, so the ratio is what a subscriber on another instance costs per frame
  against a local one (each generation has 300 frames either way);
- with ``--shards G`` (default 500; 0 skips): ``gens G split``: the G generations split
  over two independent servers, each conversation's send and stream on its own server
  (nothing crosses), beside one server with all G, for turnlog (a second instance on the
  same database) and for the baseline (a second baseline process): what splitting the same
  load over two processes costs on this machine, the floor under ``--workers``;
- with ``--workers N`` (default 2; 0 skips): ``fan-out`` and ``gens`` again on
  ``turnlog serve --workers N`` (same database), rows labelled ``--workers N`` beside a
  ``--workers 1`` run measured right after, ratio between them. Subscribers land on any
  worker and follow the generation's owner through the relay (docs/deployment.md). CPU and
  RSS count every worker and the supervisor.

Columns (turnlog, baseline, ratio): deliveries/s (frames of deltas received by all
subscribers), p50/p99 lag (arrival behind the demo schedule token i at start + i/tps, start
estimated from the earliest arrival), time to first delta (p99) from the moment the send is
made (``ttfd99``: it includes the wait of a send behind every other send of a burst) and
from the send's 201 (``ttfd99 201``: the server's own path from a started generation to a
subscriber's first delta, which a client can observe only after the 201), p99 gap
between consecutive deltas of one subscriber, server CPU per unit (``/proc/<pid>/stat``:
the server process plus, for turnlog, every PostgreSQL process; then the server process
alone), peak RSS of the server (the sum over its processes), database transactions and
event rows per turn (``pg_stat_database.xact_commit`` and ``events`` deltas), the largest
gap between a generating row's stored events (from one's ``at``, when it took the row's
unstored events, to the next one's insert, ``recorded_at``: what a crash could lose; from
its first checkpoint on), and the server's own count of checkpoints (and step ends) stored
later than ``TURNLOG_CHECKPOINT_S`` + 0.25 s after their oldest event was published. After
every scenario each subscriber's fold (init blocks + every delta, folded with the real
reducer) is compared with the stored row; a mismatch fails the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import functools
import multiprocessing as mp
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httptools
import msgspec
from turnlog_reducer import Blocks, apply_stream_event, decode_blocks, decode_event, encode_blocks

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# --------------------------------------------------------------------------- HTTP client


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: sequential requests, SSE bodies fed to a sink."""

    def __init__(self, host: str, token: str) -> None:
        self.host = host.encode()
        self.auth = token.encode()
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.sink: Callable[[bytes, float], None] | None = None
        self.body: list[bytes] = []
        self.now = 0.0
        self.transport: asyncio.Transport | None = None

    @classmethod
    async def open(cls, host: str, port: int, token: str) -> Conn:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: cls(host, token), host, port)
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.now = time.monotonic()
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    def on_message_begin(self) -> None:
        self.body = []

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self.sink(body, self.now)
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), b"".join(self.body)))

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        sink: Callable[[bytes, float], None] | None = None,
    ) -> tuple[int, bytes]:
        assert self.transport is not None
        payload = b"" if body is None else msgspec.json.encode(body)
        head = (
            b"%b %b HTTP/1.1\r\nHost: %b\r\nAuthorization: Bearer %b\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (method.encode(), path.encode(), self.host, self.auth, len(payload))
        )
        self.sink = sink
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(head + payload)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Sub:
    """One SSE reader's record: (arrival, event name, seq, data) per frame, pings dropped."""

    __slots__ = ("buf", "frames")

    def __init__(self) -> None:
        self.buf = b""
        self.frames: list[tuple[float, bytes, int, bytes]] = []

    def feed(self, chunk: bytes, t: float) -> None:
        *complete, self.buf = (self.buf + chunk).split(b"\n\n")
        for frame in complete:
            if frame.startswith(b":"):
                continue
            name, fid, data = frame.split(b"\n", 2)
            self.frames.append((t, name[7:], int(fid[4:]), data[6:]))


# --------------------------------------------------------------------------- client processes


def _worker(
    pipe: Connection, kind: str, host: str, ports: tuple[int, int], token: str, arg: Any
) -> None:
    try:
        result = asyncio.run(_work(pipe, kind, host, ports, token, arg))
    except BaseException as exc:  # report it: the parent waits on this pipe
        pipe.send(("error", repr(exc)))
        raise
    pipe.send(("result", result))


async def _recv(pipe: Connection) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, pipe.recv)


async def _work(
    pipe: Connection, kind: str, host: str, ports: tuple[int, int], token: str, arg: Any
) -> Any:
    # Requests go to the first port, message streams to the second (another instance in
    # the "streams on another instance" scenario; the same server everywhere else).
    port, stream_port = ports

    async def conns(n: int, port: int = port) -> list[Conn]:
        out: list[Conn] = []
        for i in range(0, n, 50):  # a few at a time: the listen backlog is finite
            out += await asyncio.gather(
                *(Conn.open(host, port, token) for _ in range(min(50, n - i)))
            )
        return out

    if kind == "fanout":
        readers = await conns(len(arg), stream_port)
        pipe.send(("ready", None))
        mid = await _recv(pipe)
        subs = [Sub() for _ in readers]
        statuses = await asyncio.gather(
            *(
                c.request("GET", f"/v1/messages/{mid}/stream", sink=s.feed)
                for c, s in zip(readers, subs, strict=True)
            )
        )
        for c in readers:
            c.close()
        return [(status, s.frames) for (status, _), s in zip(statuses, subs, strict=True)]

    if kind == "gens":
        cids: list[str] = arg
        senders, readers = await conns(len(cids)), await conns(len(cids), stream_port)
        pipe.send(("ready", None))
        await _recv(pipe)

        async def one(cid: str, sender: Conn, reader: Conn) -> Any:
            t0 = time.monotonic()
            status, body = await sender.request(
                "POST", f"/v1/conversations/{cid}/messages", {"content": "hello"}
            )
            t_sent = time.monotonic()
            if status != 201:
                return (cid, None, t0, t_sent, status, body[:200], [])
            mid = msgspec.json.decode(body)["assistant_message"]["id"]
            sub = Sub()
            await reader.request("GET", f"/v1/messages/{mid}/stream", sink=sub.feed)
            return (cid, mid, t0, t_sent, status, b"", sub.frames)

        out = await asyncio.gather(
            *(one(c, s, r) for c, s, r in zip(cids, senders, readers, strict=True))
        )
        for c in senders + readers:
            c.close()
        return out

    if kind == "sends":
        clients: list[list[str]] = arg["clients"]
        seconds: float = arg["seconds"]
        links = await conns(len(clients))
        pipe.send(("ready", None))
        await _recv(pipe)
        latencies: list[float] = []
        codes: dict[int, int] = defaultdict(int)
        deadline = time.monotonic() + seconds

        async def client(conn: Conn, cids: list[str]) -> None:
            i = 0
            while time.monotonic() < deadline:
                cid = cids[i % len(cids)]
                i += 1
                t0 = time.monotonic()
                status, _ = await conn.request(
                    "POST", f"/v1/conversations/{cid}/messages", {"content": "hi"}
                )
                codes[status] += 1
                if status == 201:
                    latencies.append(time.monotonic() - t0)

        await asyncio.gather(*(client(c, cids) for c, cids in zip(links, clients, strict=True)))
        for c in links:
            c.close()
        return {"latencies": latencies, "codes": dict(codes)}

    raise ValueError(kind)


class Workers:
    """Client processes for one scenario: start them, wait until they are connected, go."""

    def __init__(
        self,
        kind: str,
        server: Server,
        args: list[Any],
        ports: list[tuple[int, int]] | None = None,
    ) -> None:
        ctx = mp.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for i, arg in enumerate(args):
            mine, theirs = ctx.Pipe()
            # (requests, streams) per client process; the server's own by default.
            ports_i = ports[i] if ports else (server.port, server.stream_port)
            p = ctx.Process(
                target=_worker,
                args=(theirs, kind, "127.0.0.1", ports_i, server.token, arg),
                daemon=True,
            )
            p.start()
            self.pipes.append(mine)
            self.procs.append(p)
        for pipe in self.pipes:
            self._expect(pipe, "ready")

    def go(self, payload: Any = None) -> None:
        for pipe in self.pipes:
            pipe.send(payload)

    def results(self) -> list[Any]:
        out = [self._expect(pipe, "result") for pipe in self.pipes]
        for p in self.procs:
            p.join(30)
        return out

    @staticmethod
    def _expect(pipe: Connection, what: str) -> Any:
        kind, value = pipe.recv()
        if kind != what:
            raise RuntimeError(f"client process failed: {value}")
        return value


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """A server process under measurement (and, for turnlog, its PostgreSQL processes)."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], port: int, token: str) -> None:
        self.name = name
        self.proc = proc
        self.port = port
        self.token = token
        self.postmaster: int | None = None
        self.db_url: str | None = None
        self.workers = 1
        self.stream_port = port  # where clients read message streams
        self.others: list[Server] = []  # more servers measured with this one
        # Independent servers that split a `gens` scenario: a conversation's send and
        # stream both go to its own shard (this one first; `others` are the rest).
        self.shards: list[Server] = []

    def server_pids(self) -> list[int]:
        """The server's own processes: with `serve --workers N`, the supervisor and its workers."""
        pids = [self.proc.pid]
        if self.workers > 1:
            pids += _children(self.proc.pid)
        for other in self.others:
            pids += other.server_pids()
        return pids

    def pids(self) -> list[int]:
        pids = self.server_pids()
        if self.postmaster is not None:
            pids.append(self.postmaster)
            pids += _children(self.postmaster)
        return pids

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _children(ppid: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == ppid:
                out.append(int(entry.name))
    return out


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = int(fields[11]) + int(fields[12])  # utime + stime
    return out


def cpu_delta(before: dict[int, int], after: dict[int, int]) -> float:
    return sum(t - before.get(pid, 0) for pid, t in after.items()) / CLK_TCK


class RssPeak:
    """Samples the server's RSS every 50 ms while a scenario runs: the sum over its own
    processes (with ``--workers N``, the supervisor and every worker)."""

    def __init__(self, server: Server) -> None:
        self.pids = server.server_pids()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pages = 0
            for pid in self.pids:
                with contextlib.suppress(OSError):
                    pages += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
            self.peak = max(self.peak, pages * PAGE)
            self._stop.wait(0.05)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def start_turnlog(
    data_dir: Path, extra_env: dict[str, str] | None = None, *, workers: int = 1
) -> Server:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "TURNLOG_DATABASE_URL"}
    # Automatic titles off: each new conversation's first answer would start a second model
    # step that the baseline does not run, and the table compares one generation each.
    env.update({"TURNLOG_DATA_DIR": str(data_dir), "TURNLOG_AUTO_TITLES": "0", **(extra_env or {})})
    command = [str(Path(sys.executable).parent / "turnlog"), "serve", "--port", str(port)]
    # Its log (stderr) goes to serve-<port>.log beside the data dir, kept with --keep: the
    # server's own account of a run, e.g. "overloaded: checkpoints are late".
    with (data_dir.parent / f"serve-{port}.log").open("ab") as log:
        proc = subprocess.Popen(
            [*command, "--workers", str(workers)],
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
        )
    assert proc.stdout is not None
    token = None
    deadline = time.monotonic() + 180
    while token is None:
        line = proc.stdout.readline()
        if not line or time.monotonic() > deadline:
            raise RuntimeError("turnlog serve did not start")
        if line.startswith(b"bearer token"):
            token = proc.stdout.readline().decode().strip()
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # drain
    wait_port(proc, port)
    server = Server("turnlog", proc, port, token)
    server.workers = workers
    from turnlog.db.embedded import EmbeddedPostgres

    embedded = EmbeddedPostgres(data_dir)
    server.db_url = embedded.url
    server.postmaster = int((embedded.pgdata / "postmaster.pid").read_text().split()[0])
    return server


def start_baseline() -> Server:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "baseline_server.py"), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(proc, port)
    return Server("baseline", proc, port, "none")


def wait_port(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"no server started on port {port}")
        time.sleep(0.1)


# --------------------------------------------------------------------------- setup helpers


async def _setup(
    server: Server, n: int, options: dict[str, Any], model: str = "demo:default"
) -> list[str]:
    """Create ``n`` conversations of ``model`` with these options; their ids."""
    conns = [await Conn.open("127.0.0.1", server.port, server.token) for _ in range(8)]

    async def create(conn: Conn, k: int) -> list[str]:
        out = []
        for _ in range(k):
            status, body = await conn.request(
                "POST", "/v1/conversations", {"model": model, "options": options}
            )
            if status != 201:
                raise RuntimeError(f"creating a conversation: {status} {body[:200]!r}")
            out.append(msgspec.json.decode(body)["id"])
        return out

    shares = [n // 8 + (1 if i < n % 8 else 0) for i in range(8)]
    ids = [i for chunk in await asyncio.gather(*map(create, conns, shares)) for i in chunk]
    for c in conns:
        c.close()
    return ids


async def _stored(server: Server, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """The stored blocks of each (conversation, message), as JSON builtins."""
    conns = [await Conn.open("127.0.0.1", server.port, server.token) for _ in range(8)]
    out: dict[str, Any] = {}

    async def read(conn: Conn, chunk: list[tuple[str, str]]) -> None:
        for cid, mid in chunk:
            status, body = await conn.request("GET", f"/v1/conversations/{cid}/messages")
            if status != 200:
                raise RuntimeError(f"reading messages: {status} {body[:200]!r}")
            for m in msgspec.json.decode(body)["items"]:
                if m["id"] == mid:
                    out[mid] = (m["status"], m["blocks"])

    await asyncio.gather(*(read(c, pairs[i::8]) for i, c in enumerate(conns)))
    for c in conns:
        c.close()
    return out


def setup(
    server: Server, n: int, options: dict[str, Any], model: str = "demo:default"
) -> list[str]:
    return asyncio.run(_setup(server, n, options, model))


def stored(server: Server, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    return asyncio.run(_stored(server, pairs))


def split(items: list[Any], parts: int) -> list[list[Any]]:
    return [items[i::parts] for i in range(parts)]


class Db:
    """Counters of turnlog's database: committed transactions and event rows."""

    def __init__(self, server: Server) -> None:
        import psycopg

        assert server.db_url is not None
        self.conn = psycopg.connect(server.db_url, autocommit=True)

    def counters(self) -> tuple[int, int, int]:
        # Backends flush their statistics at most once a second and when idle: wait for it.
        time.sleep(1.2)
        xacts = self.conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        top = self.conn.execute("SELECT coalesce(max(position), 0), count(*) FROM events")
        position, count = top.fetchone() or (0, 0)
        assert xacts is not None
        return int(xacts[0]), int(position), int(count)

    def largest_gap(self, after_position: int) -> float:
        """The longest a generating row's published events went unstored (s): from each
        stored event's ``at`` (stamped when it took the row's unstored events) to the
        insert of the next one (``recorded_at``, its commit but for the transaction's
        end), the most a crash just before that commit could lose."""
        # Not `at` to `at`: that leaves out the time the next write took to commit, the
        # part that grows under load. From the first checkpoint on: before it the row may
        # hold nothing to lose (the send's start waits for the history read and the first
        # token). That first wait is counted by the server itself:
        # turnlog_checkpoint_deadline_misses (column misses).
        rows = self.conn.execute(
            "SELECT data->>'message_id', data->>'at', recorded_at FROM events"
            " WHERE position > %s AND type IN ('turn_checkpointed', 'step_completed',"
            " 'turn_failed', 'turn_aborted', 'turn_interrupted') ORDER BY position",
            (after_position,),
        ).fetchall()
        last: dict[str, datetime] = {}
        gap = 0.0
        for mid, at, recorded in rows:
            if mid in last:
                gap = max(gap, (recorded - last[mid]).total_seconds())
            last[mid] = datetime.fromisoformat(at)
        return gap


# --------------------------------------------------------------------------- measuring


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def fold(frames: list[tuple[float, bytes, int, bytes]]) -> tuple[Any, int]:
    """The blocks a subscriber holds after its frames (its last init + every later delta),
    as JSON builtins, and how many deltas it folded."""
    blocks: Blocks | None = None
    n = 0
    for _, name, _, data in frames:
        if name == b"init":
            raw = msgspec.json.encode(msgspec.json.decode(data)["blocks"])
            blocks = Blocks(decode_blocks(raw))
        elif name != b"done":
            assert blocks is not None, "a delta before init"
            blocks = apply_stream_event(blocks, decode_event(data))
            n += 1
    assert blocks is not None, "no init"
    return msgspec.json.decode(encode_blocks(blocks)), n


def delta_stats(
    streams: list[list[tuple[float, bytes, int, bytes]]], tps: float, shared_start: bool
) -> dict[str, list[float]]:
    """Lags (s behind the demo schedule) and gaps between consecutive deltas."""
    lags: list[float] = []
    gaps: list[float] = []

    def start_of(frames: list[tuple[float, bytes, int, bytes]]) -> float:
        return min(
            (t - (seq - 1) / tps for t, name, seq, _ in frames if name == b"text_delta"),
            default=float("inf"),
        )

    common = min(map(start_of, streams)) if shared_start else 0.0
    for frames in streams:
        start = common if shared_start else start_of(frames)
        prev = None
        for t, name, seq, _ in frames:
            if name != b"text_delta":
                continue
            lags.append(t - start - (seq - 1) / tps)
            if prev is not None:
                gaps.append(t - prev)
            prev = t
    return {"lags": lags, "gaps": gaps}


class Row(msgspec.Struct):
    deliveries_s: float = float("nan")
    lag_p50_ms: float = float("nan")
    lag_p99_ms: float = float("nan")
    ttfd_p99_ms: float = float("nan")
    ttfd_ack_p99_ms: float = float("nan")
    gap_p99_ms: float = float("nan")
    cpu_per_unit_us: float = float("nan")
    own_cpu_per_unit_us: float = float("nan")
    unit: str = ""
    rate_s: float = float("nan")  # sends/s for the send scenario
    p50_ms: float = float("nan")
    rss_mb: float = float("nan")
    xact_per_turn: float = float("nan")
    events_per_turn: float = float("nan")
    stored_gap_s: float = float("nan")
    misses: float = float("nan")
    folds_ok: str = ""


class Measure:
    """CPU, RSS and database counters around one scenario."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.db = Db(server) if server.db_url else None

    def __enter__(self) -> Measure:
        self.counters = self.db.counters() if self.db else None
        self.misses = misses(self.server) if self.db else 0.0
        self.rss = RssPeak(self.server).__enter__()
        self.ticks = cpu_ticks(self.server.pids())
        self.own = cpu_ticks(self.server.server_pids())
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        if hasattr(self, "seconds"):
            return
        self.seconds = time.monotonic() - self.t0
        self.cpu = cpu_delta(self.ticks, cpu_ticks(self.server.pids()))
        self.cpu_own = cpu_delta(self.own, cpu_ticks(self.server.server_pids()))
        self.rss.__exit__()

    def fill(self, row: Row, turns: int, units: int) -> None:
        row.rss_mb = self.rss.peak / 2**20
        row.cpu_per_unit_us = self.cpu / max(units, 1) * 1e6
        row.own_cpu_per_unit_us = self.cpu_own / max(units, 1) * 1e6
        if self.db and self.counters:
            x0, p0, n0 = self.counters
            x1, _, n1 = self.db.counters()
            row.xact_per_turn = (x1 - x0 - 1) / max(turns, 1)  # -1: our own read
            row.events_per_turn = (n1 - n0) / max(turns, 1)
            row.stored_gap_s = self.db.largest_gap(p0)
            row.misses = misses(self.server) - self.misses


def misses(server: Server) -> float:
    """turnlog's count of checkpoints stored later than TURNLOG_CHECKPOINT_S + 0.25 s."""

    async def read() -> tuple[int, bytes]:
        conn = await Conn.open("127.0.0.1", server.port, server.token)
        try:
            return await conn.request("GET", "/metrics")
        finally:
            conn.close()

    _, body = asyncio.run(read())
    for line in body.decode().splitlines():
        if line.startswith("turnlog_checkpoint_deadline_misses_total "):
            return float(line.split()[1])
    return float("nan")


def check_folds(
    server: Server, pairs: list[tuple[str, str]], subs: list[Any], *, strict: bool = True
) -> str:
    """Compare each subscriber's fold with the stored row; raise on any mismatch (not
    strict: rows that did not complete are counted, not raised on)."""
    rows = stored(server, pairs)
    failed = 0
    for (_, mid), frames in zip(pairs, subs, strict=True):
        blocks, _ = fold(frames)
        status, want = rows[mid]
        if not strict and status != "completed":
            failed += 1
            continue
        if status != "completed" or blocks != want:
            raise AssertionError(
                f"{server.name}: subscriber of {mid} folded {str(blocks)[:200]} "
                f"but the row is {status} {str(want)[:200]}"
            )
        if not frames or frames[-1][1] != b"done":
            raise AssertionError(f"{server.name}: subscriber of {mid} got no done")
    if failed:
        return f"{len(subs) - failed}/{len(subs)} ({failed} not completed)"
    return f"{len(subs)}/{len(subs)}"


def fanout(server: Server, subscribers: int, tokens: int, clients: int) -> Row:
    tps = 100.0
    (cid,) = setup(server, 1, {"tokens_per_second": tps, "length": tokens})
    workers = Workers("fanout", server, split(list(range(subscribers)), clients))
    with Measure(server) as m:
        status, body = asyncio.run(_send(server, cid))
        if status != 201:
            raise RuntimeError(f"{server.name}: send failed: {status} {body[:200]!r}")
        mid = msgspec.json.decode(body)["assistant_message"]["id"]
        workers.go(mid)
        results = [r for chunk in workers.results() for r in chunk]
        m.stop()
    streams = [frames for _, frames in results]
    stats = delta_stats(streams, tps, shared_start=True)
    deliveries = len(stats["lags"])
    row = Row(unit="frame")
    row.deliveries_s = deliveries / m.seconds
    row.lag_p50_ms = pct(stats["lags"], 50) * 1000
    row.lag_p99_ms = pct(stats["lags"], 99) * 1000
    row.gap_p99_ms = pct(stats["gaps"], 99) * 1000
    m.fill(row, 1, deliveries)
    row.folds_ok = check_folds(server, [(cid, mid)] * len(streams), streams)
    return row


async def _send(server: Server, cid: str) -> tuple[int, bytes]:
    conn = await Conn.open("127.0.0.1", server.port, server.token)
    try:
        return await conn.request("POST", f"/v1/conversations/{cid}/messages", {"content": "go"})
    finally:
        conn.close()


def gens(
    server: Server,
    g: int,
    tokens: int,
    clients: int,
    *,
    tps: float = 30.0,
    model: str = "demo:default",
    options: dict[str, Any] | None = None,
    strict: bool = True,
) -> Row:
    """G conversations of ``model`` send at once (the demo's: ``tokens`` at ``tps``)."""
    if options is None:
        options = {"tokens_per_second": tps, "length": tokens}
    shards = server.shards or [server]
    groups = [setup(s, g // len(shards), options, model) for s in shards]
    per = max(1, clients // len(shards))
    args = [chunk for cids in groups for chunk in split(cids, per)]
    ports = [(s.port, s.stream_port) for s in shards for _ in range(per)]
    where = [s for s in shards for _ in range(per)]
    workers = Workers("gens", server, args, ports)
    with Measure(server) as m:
        workers.go()
        chunks = workers.results()
        results = [r for chunk in chunks for r in chunk]
        m.stop()
    failed = [r for r in results if r[1] is None]
    if any(r[4] != 503 for r in failed):
        bad = next(r for r in failed if r[4] != 503)
        raise RuntimeError(f"{server.name}: a send failed: {bad[4]} {bad[5]!r}")
    results = [r for r in results if r[1] is not None]  # 503: refused (overloaded)
    streams = [r[6] for r in results]
    stats = delta_stats(streams, tps, shared_start=False)
    ttfd, ttfd_ack = [], []
    for _, _, t0, t_sent, _, _, frames in results:
        first = next(
            (t for t, name, _, data in frames if name == b"text_delta" or b'"text"' in data),
            None,
        )
        if first is not None:
            ttfd.append(first - t0)
            ttfd_ack.append(first - t_sent)
    row = Row(unit="gen")
    row.deliveries_s = len(stats["lags"]) / m.seconds
    row.lag_p50_ms = pct(stats["lags"], 50) * 1000
    row.lag_p99_ms = pct(stats["lags"], 99) * 1000
    row.ttfd_p99_ms = pct(ttfd, 99) * 1000
    row.ttfd_ack_p99_ms = pct(ttfd_ack, 99) * 1000
    row.gap_p99_ms = pct(stats["gaps"], 99) * 1000
    m.fill(row, len(results), len(results))
    folds = []
    for shard in shards:
        mine = [r for s, chunk in zip(where, chunks, strict=True) if s is shard for r in chunk]
        mine = [r for r in mine if r[1] is not None]
        pairs = [(r[0], r[1]) for r in mine]
        folds.append(check_folds(shard, pairs, [r[6] for r in mine], strict=strict))
    row.folds_ok = folds[0] if len(folds) == 1 else " + ".join(folds)
    if failed:
        row.folds_ok += f" ({len(failed)} refused: 503)"
    return row


def sends(server: Server, seconds: float, clients: int, procs: int) -> Row:
    per_client = 20
    cids = setup(server, clients * per_client, {"tokens_per_second": 1_000_000, "length": 1})
    groups = [cids[i * per_client : (i + 1) * per_client] for i in range(clients)]
    args = [{"clients": part, "seconds": seconds} for part in split(groups, procs)]
    workers = Workers("sends", server, args)
    with Measure(server) as m:
        workers.go()
        results = workers.results()
        m.stop()
        time.sleep(0.5)  # let the last 1-token answers end before counting transactions
    latencies = [x for r in results for x in r["latencies"]]
    codes: dict[int, int] = defaultdict(int)
    for r in results:
        for k, v in r["codes"].items():
            codes[k] += v
    row = Row(unit="send")
    row.rate_s = len(latencies) / m.seconds
    row.p50_ms = pct(latencies, 50) * 1000
    row.lag_p99_ms = pct(latencies, 99) * 1000
    m.fill(row, len(latencies), len(latencies))
    other = {k: v for k, v in codes.items() if k != 201}
    row.folds_ok = "n/a" + (f" (non-201: {other})" if other else "")
    return row


# --------------------------------------------------------------------------- the table

COLUMNS: list[tuple[str, str, str]] = [
    ("deliveries_s", "deliv/s", "{:.0f}"),
    ("rate_s", "sends/s", "{:.0f}"),
    ("p50_ms", "p50 ms", "{:.1f}"),
    ("lag_p50_ms", "lag50 ms", "{:.1f}"),
    ("lag_p99_ms", "lag99 ms", "{:.1f}"),
    ("ttfd_p99_ms", "ttfd99 ms", "{:.0f}"),
    ("ttfd_ack_p99_ms", "ttfd99 201 ms", "{:.0f}"),
    ("gap_p99_ms", "gap99 ms", "{:.0f}"),
    ("cpu_per_unit_us", "CPU/unit us", "{:.0f}"),
    ("own_cpu_per_unit_us", "(w/o PG) us", "{:.0f}"),
    ("rss_mb", "RSS MB", "{:.0f}"),
    ("xact_per_turn", "xact/turn", "{:.1f}"),
    ("events_per_turn", "events/turn", "{:.1f}"),
    ("stored_gap_s", "stored gap s", "{:.2f}"),
    ("misses", "ckpt misses", "{:.0f}"),
]


def _cell(value: float, fmt: str) -> str:
    return "-" if value != value else fmt.format(value)


Result = tuple[str, Row, Row] | tuple[str, Row, Row, tuple[str, str]]


def table(results: list[Result]) -> str:
    header = ["scenario", "server", *(title for _, title, _ in COLUMNS), "folds"]
    lines = [header]
    for name, mine, base, *named in results:
        who_is = named[0] if named else ("turnlog", "baseline")
        for who, row in zip(who_is, (mine, base), strict=True):
            cells = [_cell(getattr(row, f), fmt) for f, _, fmt in COLUMNS]
            lines.append([f"{name} (per {mine.unit})", who, *cells, row.folds_ok])
        ratio = []
        for f, _, _ in COLUMNS:
            a, b = getattr(mine, f), getattr(base, f)
            ratio.append(f"{a / b:.2f}x" if a == a and b == b and b else "-")
        lines.append(["", "ratio", *ratio, ""])
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    out = []
    for i, r in enumerate(lines):
        out.append(
            "  ".join(
                c.ljust(w) if j < 2 else c.rjust(w)
                for j, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if i == 0:
            out.append("-" * len(out[0]))
    return "\n".join(out)


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return (
        f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, "
        f"Python {platform.python_version()}; load average at the start "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


@contextlib.contextmanager
def servers(keep: bool) -> Iterator[tuple[Server, Server, Path]]:
    tmp = Path(tempfile.mkdtemp(prefix="turnlog-load-"))
    started: list[Server] = []
    try:
        turnlog = start_turnlog(tmp / "data")
        started.append(turnlog)
        baseline = start_baseline()
        started.append(baseline)
        yield turnlog, baseline, tmp
    finally:
        for s in started:
            s.stop()
        from turnlog.db.embedded import EmbeddedPostgres

        with contextlib.suppress(Exception):
            EmbeddedPostgres(tmp / "data").stop()
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    ap.add_argument("--fanout", type=ints, default=[100, 500], help="subscriber counts")
    ap.add_argument("--fanout-tokens", type=int, default=500, help="tokens of the fan-out answer")
    ap.add_argument("--gens", type=ints, default=[100, 500], help="concurrent generation counts")
    ap.add_argument("--tokens", type=int, default=300, help="tokens per concurrent generation")
    ap.add_argument("--ckpt-off", type=int, default=100, help="G for checkpoints off (0: skip)")
    ap.add_argument("--send-seconds", type=float, default=5.0)
    ap.add_argument("--send-clients", type=int, default=10, help="0: skip the send scenario")
    ap.add_argument("--clients", type=int, default=2, help="client processes per scenario")
    ap.add_argument("--only", choices=["turnlog", "both"], default="both")
    ap.add_argument("--keep", action="store_true", help="keep the temp data dir")
    ap.add_argument(
        "--shards",
        type=int,
        default=500,
        help="G split over two independent servers, for turnlog and the baseline (0: skip)",
    )
    ap.add_argument(
        "--remote",
        type=int,
        default=500,
        help="G for subscribers on another instance than their generations (0: skip)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=2,
        help="also run fan-out and gens on `turnlog serve --workers N`, beside the single "
        "process (0 or 1: skip)",
    )
    args = ap.parse_args(argv)

    print(f"machine: {machine()}", flush=True)
    results: list[Result] = []
    started = time.monotonic()
    with servers(args.keep) as (turnlog, baseline, tmp):
        print(f"turnlog pid {turnlog.proc.pid}, baseline pid {baseline.proc.pid}", flush=True)
        assert turnlog.db_url is not None

        def both(name: str, run: Callable[[Server], Row], other: Server | None = None) -> None:
            mine = run(other or turnlog)
            base = run(baseline) if args.only == "both" else Row()
            results.append((name, mine, base))
            print(f"  {name}: done ({time.monotonic() - started:.0f} s)", flush=True)

        for s in args.fanout:
            both(
                f"fan-out S={s}",
                lambda srv, s=s: fanout(srv, s, args.fanout_tokens, args.clients),
            )
        for g in args.gens:
            both(f"gens G={g}", lambda srv, g=g: gens(srv, g, args.tokens, args.clients))
        if args.send_clients:
            both(
                f"sends x{args.send_clients}",
                lambda srv: sends(srv, args.send_seconds, args.send_clients, args.clients),
            )
        if args.ckpt_off:
            # A second server beside the first: on its database as an external one (the
            # embedded database serves one `turnlog serve` per data dir).
            off = start_turnlog(
                tmp / "data",
                {"TURNLOG_CHECKPOINT_S": "3600", "TURNLOG_DATABASE_URL": turnlog.db_url},
            )
            try:
                g = args.ckpt_off
                both(
                    f"gens G={g} ckpt off",
                    lambda srv: gens(srv, g, args.tokens, args.clients),
                    other=off,
                )
            finally:
                off.stop()
        if args.remote:
            # Every generation on A (the first server), its subscriber on B, another
            # instance on the same database that follows A's streams (turnlog.follow):
            # beside the same with the subscribers on A; both servers measured in both.
            other = start_turnlog(tmp / "data", {"TURNLOG_DATABASE_URL": turnlog.db_url})
            remote, local = copy.copy(turnlog), copy.copy(turnlog)
            remote.others = local.others = [other]
            remote.stream_port = other.port
            try:
                g = args.remote
                name = f"gens G={g}, subscribers"
                run = functools.partial(gens, g=g, tokens=args.tokens, clients=args.clients)
                results.append((name, run(remote), run(local), ("on B", "on A")))
                print(f"  {name} on B and on A: done", flush=True)
            finally:
                other.stop()
        if args.shards:
            # The floor of splitting a load over two processes on this machine: G
            # generations split over two independent servers, each conversation's send and
            # stream on its own server (nothing crosses), beside one server with all G;
            # for turnlog (two instances, one database) and for the bare baseline alike.
            g = args.shards
            run = functools.partial(gens, g=g, tokens=args.tokens, clients=args.clients)
            pair = ("2 processes", "1 process")
            for one, start in ((turnlog, None), (baseline, start_baseline)):
                if one is baseline and args.only != "both":
                    continue
                two = (
                    start()
                    if start
                    else start_turnlog(tmp / "data", {"TURNLOG_DATABASE_URL": turnlog.db_url})
                )
                split_load = copy.copy(one)
                split_load.shards, split_load.others = [one, two], [two]
                try:
                    name = f"gens G={g} split ({one.name})"
                    results.append((name, run(split_load), run(one), pair))
                    print(f"  {name}: done", flush=True)
                finally:
                    two.stop()
        if args.workers > 1:
            # The same scenarios on N worker processes behind one port (same database),
            # beside the single process, measured now: subscribers land on any worker and
            # follow the generation's owner through its internal stream.
            multi = start_turnlog(
                tmp / "data", {"TURNLOG_DATABASE_URL": turnlog.db_url}, workers=args.workers
            )
            labels = (f"--workers {args.workers}", "--workers 1")
            try:
                runs: list[tuple[str, Callable[[Server], Row]]] = [
                    (
                        f"fan-out S={s}",
                        lambda srv, s=s: fanout(srv, s, args.fanout_tokens, args.clients),
                    )
                    for s in args.fanout
                ]
                runs += [
                    (f"gens G={g}", lambda srv, g=g: gens(srv, g, args.tokens, args.clients))
                    for g in args.gens
                ]
                for name, run in runs:
                    results.append((name, run(multi), run(turnlog), labels))
                    print(f"  {name} x{args.workers}: done", flush=True)
            finally:
                multi.stop()
    print()
    print(table(results))
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
