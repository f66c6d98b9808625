"""Benchmark of cross-instance live streams: one generation, S subscribers, one vs three instances.

Run: ``python bench/cluster.py [--subscribers S] [--tokens-per-second T] [--length N]``.

Three ``turnlog serve`` processes (A, B, C) on one PostgreSQL: a private ``EmbeddedPostgres``
in a temp dir, or the server of ``TURNLOG_DATABASE_URL`` (a scratch database is created
there and dropped after). In the same run, two scenarios each stream one demo generation
running on A:

- *one instance*: all S subscribers connect to A;
- *three instances*: S subscribers spread evenly over A, B and C (B and C mirror A's stream
  through one upstream each, turnlog.follow).

Subscribers are read by ``--clients`` processes (default 3). For every delta (by seq) the
reference time is when the first subscriber on A received it;
a subscriber's *lag* for that delta is its own receive time minus that reference. Reported
per scenario: deliveries/s (delta frames received by all subscribers / generation time),
and p50/p99 lag over all subscribers, and over the subscribers on B and C alone.

Target (docs/deployment.md): p99 lag of B and C subscribers <= 50 ms above the same-instance ones on
loopback. Subscribers and servers share this machine's cores: numbers are noisy under load.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import multiprocessing.pool
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import jwt
import psycopg

from turnlog.db.embedded import EmbeddedPostgres

SECRET = "bench-secret-0123456789abcdef0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def _database() -> Iterator[str]:
    external = os.environ.get("TURNLOG_DATABASE_URL")
    with tempfile.TemporaryDirectory(prefix="turnlog-bench-") as tmp:
        if external:
            name = f"bench_{uuid.uuid4().hex[:10]}"
            with psycopg.connect(external, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            try:
                yield external.rsplit("/", 1)[0] + f"/{name}"
            finally:
                with psycopg.connect(external, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        server = EmbeddedPostgres(Path(tmp) / "pg")
        try:
            yield server.ensure_running()
        finally:
            server.stop()


@contextlib.contextmanager
def _servers(url: str, n: int) -> Iterator[list[str]]:
    procs: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    with tempfile.TemporaryDirectory(prefix="turnlog-bench-srv-") as tmp:
        try:
            for i in range(n):
                port = _free_port()
                env = {k: v for k, v in os.environ.items() if not k.startswith("TURNLOG_")}
                env.update(
                    TURNLOG_DATABASE_URL=url,
                    TURNLOG_DATA_DIR=f"{tmp}/d{i}",
                    TURNLOG_JWT_SECRET=SECRET,
                    TURNLOG_LOG_LEVEL="warning",
                )
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "turnlog.cli", "serve", "--port", str(port)],
                        env=env,
                        stdout=subprocess.DEVNULL,
                    )
                )
                urls.append(f"http://127.0.0.1:{port}")
            for u in urls:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if httpx.get(f"{u}/readyz", timeout=1).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline:
                        raise SystemExit(f"server {u} did not start")
                    time.sleep(0.2)
            yield urls
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()


async def _subscribe(
    http: httpx.AsyncClient, url: str, mid: str, times: dict[int, float], started: anyio.Event
) -> None:
    """Read one message stream to its end, recording when each delta (by id) arrived."""
    buffer = bytearray()
    async with http.stream("GET", f"{url}/v1/messages/{mid}/stream") as response:
        async for chunk in response.aiter_raw():
            now = time.perf_counter()
            buffer += chunk
            while (end := buffer.find(b"\n\n")) >= 0:
                block = bytes(buffer[:end])
                del buffer[: end + 2]
                if block.startswith(b":"):
                    continue
                name = block[7 : block.index(b"\n")]
                seq = int(block.split(b"\nid: ", 1)[1].split(b"\n", 1)[0])
                if name == b"init":
                    started.set()
                elif name == b"done":
                    return
                else:
                    times[seq] = now


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _client(urls: list[str], mid: str, token: str) -> list[dict[int, float]]:
    """One client process: subscribe to ``mid`` on each of ``urls`` (one connection each)
    and return when each delta arrived, per subscriber."""

    async def run() -> list[dict[int, float]]:
        headers = {"Authorization": f"Bearer {token}"}
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        timeout = httpx.Timeout(30.0, read=120.0)
        times: list[dict[int, float]] = [{} for _ in urls]
        async with (
            httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout) as http,
            anyio.create_task_group() as tg,
        ):
            for k, url in enumerate(urls):
                tg.start_soon(_subscribe, http, url, mid, times[k], anyio.Event())
        return times

    return anyio.run(run)


def _warm() -> None:
    """Run in every client process once, so the scenarios do not time interpreter starts."""


def _scenario(
    pool: mp.pool.Pool, urls: list[str], placement: list[int], tps: float, length: int
) -> dict[str, float]:
    token = jwt.encode({"sub": "bench", "exp": int(time.time()) + 3600}, SECRET, "HS256")
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(headers=headers, timeout=30.0) as http:
        cid = http.post(f"{urls[0]}/v1/conversations", json={"model": "demo:default"}).json()["id"]
        body = {"content": "bench", "options": {"tokens_per_second": tps, "length": length}}
        r = http.post(f"{urls[0]}/v1/conversations/{cid}/messages", json=body)
        mid = r.json()["assistant_message"]["id"]
    # Subscribers split over the client processes (subscriber k in process k % P), so
    # the clients' own parsing does not become the lag being measured.
    procs = pool._processes  # type: ignore[attr-defined]
    shares = [[urls[i] for i in placement[p::procs]] for p in range(procs)]
    started = time.perf_counter()
    results = pool.starmap(_client, [(share, mid, token) for share in shares])
    elapsed = time.perf_counter() - started
    times: list[dict[int, float]] = []
    where: list[int] = []
    for p, chunk in enumerate(results):
        times += chunk
        where += placement[p::procs]
    placement = where
    reference: dict[int, float] = {}
    for k, i in enumerate(placement):
        if i == 0:
            for seq, t in times[k].items():
                reference[seq] = min(reference.get(seq, t), t)
    lags_all: list[float] = []
    lags_remote: list[float] = []
    for k, i in enumerate(placement):
        for seq, t in times[k].items():
            if seq in reference:
                lag = (t - reference[seq]) * 1000
                lags_all.append(lag)
                if i != 0:
                    lags_remote.append(lag)
    deliveries = sum(len(t) for t in times)
    return {
        "deliveries_per_s": deliveries / elapsed,
        "p50_ms": _pct(lags_all, 0.5),
        "p99_ms": _pct(lags_all, 0.99),
        "remote_p50_ms": _pct(lags_remote, 0.5),
        "remote_p99_ms": _pct(lags_remote, 0.99),
        "deliveries": deliveries,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subscribers", type=int, default=60)
    p.add_argument("--tokens-per-second", type=float, default=50.0)
    p.add_argument("--length", type=int, default=300)
    p.add_argument("--clients", type=int, default=3, help="client processes")
    args = p.parse_args()
    s = args.subscribers
    tps, length = args.tokens_per_second, args.length
    with (
        _database() as url,
        _servers(url, 3) as urls,
        mp.get_context("spawn").Pool(args.clients) as pool,
    ):
        pool.starmap(_warm, [()] * args.clients)
        one = _scenario(pool, urls, [0] * s, tps, length)
        three = _scenario(pool, urls, [k % 3 for k in range(s)], tps, length)
    print(
        f"one generation at {args.tokens_per_second:g} tokens/s x {args.length} tokens, "
        f"{s} subscribers (lag: receive time minus the first A subscriber's, per delta)"
    )
    header = ("deliveries/s", "p50 ms", "p99 ms", "B+C p50", "B+C p99")
    print(f"{'scenario':<34}{header[0]:>14}" + "".join(f"{h:>9}" for h in header[1:]))
    for name, r in (("one instance (all on A)", one), ("three instances (A, B, C)", three)):
        print(
            f"{name:<34}{r['deliveries_per_s']:>14.0f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
            f"{r['remote_p50_ms']:>9.1f}{r['remote_p99_ms']:>9.1f}"
        )


if __name__ == "__main__":
    main()
