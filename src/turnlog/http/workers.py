"""``turnlog serve --workers N``: N server processes on one port, one machine, one database.

One Python process is bound to one core. The supervisor (this module) uses them all: it
resolves the database once (starting the embedded PostgreSQL if there is no
TURNLOG_DATABASE_URL, so N workers never race to start it), makes the JWT secret once, binds
the public socket once and starts N ``turnlog serve --worker-fd FD`` processes that inherit
it. The kernel hands each new connection to whichever worker accepts it first. The
supervisor holds the data dir (its pid in serve.pid, turnlog.pidfile) for them all.

Every worker is a full instance (docs/deployment.md): its own pool, liveness lock, stream
registry and internal socket, so a subscriber on one worker follows a generation on another
exactly as across machines. A worker that dies is replaced; its generations are handled
like any dead instance's (followers see its lock free, the rows read ``interrupted``).

SIGTERM or Ctrl-C is passed on to every worker, each drains as ``turnlog serve`` does; a
second signal is passed on too (the workers then stop at once).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

import httpx

from turnlog import logs
from turnlog.config import Settings
from turnlog.db.embedded import resolve_database_url
from turnlog.db.schema import apply_schema
from turnlog.http.auth import load_secret
from turnlog.http.serve import DataDirServed, banner, bind, holding_data_dir, preflight

# A worker that dies sooner than this after its start is restarted only after a pause, so a
# worker that cannot start does not spin.
QUICK_DEATH_S = 5.0


def supervise(settings: Settings, *, host: str, port: int, workers: int) -> int:
    """Run ``workers`` server processes on ``host:port`` until a signal; the exit status."""
    logs.configure()
    if not preflight(settings):
        return 2
    try:
        with holding_data_dir(settings) as pid_line:
            return _supervise(settings, host=host, port=port, workers=workers, pid_line=pid_line)
    except DataDirServed as exc:
        print(exc, file=sys.stderr)
        return 1


def _supervise(settings: Settings, *, host: str, port: int, workers: int, pid_line: str) -> int:
    url, _ = resolve_database_url(settings)
    apply_schema(url)
    secret = load_secret(settings)
    sock = bind(host, port)
    sock.set_inheritable(True)
    env = dict(os.environ, TURNLOG_DATABASE_URL=url)
    if not settings.jwt_secret:
        # The workers read the secret file this process made; say where it came from.
        env.pop("TURNLOG_JWT_SECRET", None)
    command = [sys.executable, "-m", "turnlog.cli", "serve", "--host", host, "--port", str(port)]
    command += ["--worker-fd", str(sock.fileno())]

    def start() -> tuple[subprocess.Popen[bytes], float]:
        proc = subprocess.Popen(command, env=env, pass_fds=(sock.fileno(),))
        return proc, time.monotonic()

    signals: list[int] = []

    def on_signal(sig: int, frame: FrameType | None) -> None:
        signals.append(sig)
        for proc, _ in running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    running = {i: start() for i in range(workers)}
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    base = f"http://{host}:{port}"
    announced = False
    try:
        while running:
            time.sleep(0.2)
            if not announced and not signals:
                announced = _ready(base)
                if announced:
                    notes = [f"{pid_line}, supervising {workers} workers"]
                    print(banner(settings, secret, base, notes), flush=True)
            for i, (proc, started) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                if signals:
                    del running[i]
                    continue
                print(
                    f"turnlog: worker {proc.pid} exited with {code}; starting another",
                    file=sys.stderr,
                    flush=True,
                )
                if time.monotonic() - started < QUICK_DEATH_S:
                    time.sleep(1.0)
                running[i] = start()
    finally:
        for proc, _ in running.values():
            if proc.poll() is None:
                proc.kill()
        sock.close()
    return 0


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
