"""Idle connections: what an open browser tab costs one instance, beside the bare baseline.

Run: ``python bench/idle.py`` (``make bench``); ``--conns 2000`` for a quick pass. Loopback
only; the file limit is raised to its hard limit here (the servers inherit it).

One ``turnlog serve`` (embedded PostgreSQL, as ``bench/load.py`` starts it) and
``bench/baseline_server.py`` (no database; heartbeats on) hold, one scenario at a time:

- ``live``: N idle ``/v1/conversations/{id}/live`` feeds (spread over ``--convs``
  conversations): a snapshot, then only heartbeats;
- ``stream``: N idle ``/v1/messages/{id}/stream`` readers of one generating row (a demo
  answer paced so slowly that nothing comes during the measurement): ``init``, then only
  heartbeats.

Both servers send a heartbeat (``: ping``) after ``--heartbeat`` idle seconds (turnlog's
``TURNLOG_HEARTBEAT_S``, the baseline's ``BASELINE_HEARTBEAT_S``; 1 s here, 15 s by default
in production, so that a short window holds many). Columns: the time to open all N (each
connection counted open at its first byte of body) from one client process; the server's
RSS growth per open connection (``/proc/<pid>/statm``, after the opening settled, over the
same server before it); heartbeat CPU per connection-minute (the server process's CPU over
a ``--window`` of idle seconds, per connection and minute of holding it; for turnlog, with
and without its PostgreSQL processes); and how many heartbeats each connection got.

Targets (issue 24): RSS per idle connection <= 1.3x the baseline's; heartbeat CPU <= 1.5x.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import shutil
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load  # (bench/load.py: servers, CPU, setup helpers)

PAGE = load.PAGE
LINGER_RST = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT port per connection


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return total


class Overloaded(Exception):
    """The server answered 503 (with a Retry-After)."""


class Idle(asyncio.Protocol):
    """One idle SSE reader: opened at its first body byte, then counts heartbeats."""

    __slots__ = ("opened", "pings", "transport")

    def __init__(self, opened: asyncio.Future[None]) -> None:
        self.opened = opened
        self.pings = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST
        )

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            if data.startswith(b"HTTP/1.1 503"):
                self.opened.set_exception(Overloaded())
            elif data.startswith(b"HTTP/1.1") and b" 200 " not in data[:16]:
                self.opened.set_exception(RuntimeError(data[:200].decode("latin-1")))
            elif not data.startswith(b"HTTP/1.1") or not data.endswith(b"\r\n\r\n"):
                self.opened.set_result(None)  # body bytes came (after the headers or alone)
        self.pings += data.count(b": ping")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed before its first byte: {exc}"))


async def open_all(port: int, token: str, paths: list[str], deadline_s: float) -> list[Idle]:
    """Open one reader per path, 200 at a time; all open (first body byte) or raise."""
    loop = asyncio.get_running_loop()
    readers: list[Idle] = []
    deadline = loop.time() + deadline_s

    refused = 0

    async def one(path: str) -> Idle:
        nonlocal refused
        while True:
            opened: asyncio.Future[None] = loop.create_future()
            _, proto = await loop.create_connection(
                lambda opened=opened: Idle(opened), "127.0.0.1", port
            )
            assert proto.transport is not None
            proto.transport.write(
                b"GET %b HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %b\r\n"
                b"Accept: text/event-stream\r\n\r\n" % (path.encode(), token.encode())
            )
            try:
                await asyncio.wait_for(opened, max(1.0, deadline - loop.time()))
            except Overloaded:
                # 503 + Retry-After (the server sheds load while it catches up): a browser
                # would come back after the wait; so does this reader.
                proto.transport.close()
                refused += 1
                await asyncio.sleep(2.0)
                continue
            return proto

    for i in range(0, len(paths), 200):
        readers += await asyncio.gather(*(one(p) for p in paths[i : i + 200]))
    if refused:
        print(f"    ({refused} opens refused with 503 and retried)", flush=True)
    return readers


class Row(msgspec.Struct):
    conns: int = 0
    open_s: float = float("nan")
    rss_per_conn_kb: float = float("nan")
    cpu_per_conn_min_us: float = float("nan")
    own_cpu_per_conn_min_us: float = float("nan")
    pings_per_conn: float = float("nan")


async def hold(server: load.Server, paths: list[str], window_s: float) -> Row:
    """Open the readers, let them settle, measure an idle window, close them."""
    own = server.server_pids()
    rss0 = rss(own)
    t0 = time.monotonic()
    readers = await open_all(server.port, server.token, paths, deadline_s=300)
    row = Row(conns=len(readers), open_s=time.monotonic() - t0)
    await asyncio.sleep(2.0)  # the opening's garbage collected, buffers settled
    row.rss_per_conn_kb = (rss(own) - rss0) / len(readers) / 1024
    pings0 = sum(r.pings for r in readers)
    ticks, own_ticks = load.cpu_ticks(server.pids()), load.cpu_ticks(own)
    started = time.monotonic()
    await asyncio.sleep(window_s)
    seconds = time.monotonic() - started
    cpu = load.cpu_delta(ticks, load.cpu_ticks(server.pids()))
    own_cpu = load.cpu_delta(own_ticks, load.cpu_ticks(own))
    conn_minutes = len(readers) * seconds / 60
    row.cpu_per_conn_min_us = cpu / conn_minutes * 1e6
    row.own_cpu_per_conn_min_us = own_cpu / conn_minutes * 1e6
    row.pings_per_conn = (sum(r.pings for r in readers) - pings0) / len(readers)
    for r in readers:
        if r.transport is not None:
            r.transport.close()
    await asyncio.sleep(1.0)
    return row


def live_paths(server: load.Server, conns: int, convs: int) -> list[str]:
    cids = load.setup(server, convs, {})
    return [f"/v1/conversations/{cids[i % len(cids)]}/live" for i in range(conns)]


def stream_paths(server: load.Server, conns: int) -> list[str]:
    # A generating row with nothing to send for hours: 2 tokens at one per 10,000 s.
    (cid,) = load.setup(server, 1, {"tokens_per_second": 0.0001, "length": 2})
    status, body = asyncio.run(load._send(server, cid))
    if status != 201:
        raise RuntimeError(f"{server.name}: send failed: {status} {body[:200]!r}")
    mid = msgspec.json.decode(body)["assistant_message"]["id"]
    return [f"/v1/messages/{mid}/stream"] * conns


COLUMNS = [
    ("conns", "conns", "{:.0f}"),
    ("open_s", "open s", "{:.2f}"),
    ("rss_per_conn_kb", "RSS/conn KB", "{:.1f}"),
    ("cpu_per_conn_min_us", "hb CPU/conn-min us", "{:.0f}"),
    ("own_cpu_per_conn_min_us", "(w/o PG) us", "{:.0f}"),
    ("pings_per_conn", "pings/conn", "{:.1f}"),
]


def table(results: list[tuple[str, Row, Row]]) -> str:
    header = ["scenario", "server", *(t for _, t, _ in COLUMNS)]
    lines = [header]
    for name, mine, base in results:
        for who, row in (("turnlog", mine), ("baseline", base)):
            lines.append([name, who, *(fmt.format(getattr(row, f)) for f, _, fmt in COLUMNS)])
        ratio = []
        for f, _, _ in COLUMNS:
            a, b = getattr(mine, f), getattr(base, f)
            ratio.append(f"{a / b:.2f}x" if b and a == a and b == b else "-")
        lines.append(["", "ratio", *ratio])
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", type=int, default=10_000, help="idle connections per scenario")
    ap.add_argument("--convs", type=int, default=500, help="conversations the feeds watch")
    ap.add_argument("--heartbeat", type=float, default=1.0, help="heartbeat seconds, both")
    ap.add_argument("--window", type=float, default=20.0, help="idle seconds measured")
    args = ap.parse_args(argv)
    limit = raise_fd_limit()
    if limit < args.conns + 500:
        print(f"the file limit ({limit}) is too low for {args.conns} connections")
        return 1
    print(f"machine: {load.machine()}; file limit {limit}", flush=True)
    os.environ["BASELINE_HEARTBEAT_S"] = str(args.heartbeat)
    tmp = Path(tempfile.mkdtemp(prefix="turnlog-idle-"))
    results: list[tuple[str, Row, Row]] = []
    try:
        for name, make in (
            (f"live x{args.conns}", lambda s: live_paths(s, args.conns, args.convs)),
            (f"stream x{args.conns}", lambda s: stream_paths(s, args.conns)),
        ):
            # Fresh servers per scenario: one's memory must not be another's free heap.
            rows = []
            for start in (
                lambda: load.start_turnlog(
                    tmp / "data", {"TURNLOG_HEARTBEAT_S": str(args.heartbeat)}
                ),
                load.start_baseline,
            ):
                server = start()
                try:
                    paths = make(server)
                    rows.append(asyncio.run(hold(server, paths, args.window)))
                finally:
                    server.stop()
                print(f"  {name} {server.name}: done", flush=True)
            results.append((name, rows[0], rows[1]))
    finally:
        from turnlog.db.embedded import EmbeddedPostgres

        with contextlib.suppress(Exception):
            EmbeddedPostgres(tmp / "data").stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(table(results))
    missed = []
    for name, mine, base in results:
        rss_ratio = mine.rss_per_conn_kb / base.rss_per_conn_kb
        cpu_ratio = mine.own_cpu_per_conn_min_us / base.own_cpu_per_conn_min_us
        for what, ratio, target in (("RSS", rss_ratio, 1.3), ("heartbeat CPU", cpu_ratio, 1.5)):
            verdict = "met" if ratio <= target else "MISSED"
            line = f"{name}: {what} per connection {ratio:.2f}x the baseline's: {verdict}"
            print(f"{line} (<= {target}x)")
            if verdict == "MISSED":
                missed.append(line)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
