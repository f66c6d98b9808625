"""``turnlog serve``: uvicorn around the app, with a graceful drain on SIGTERM / Ctrl-C.

On the first signal the server stops taking turns, gives running generations
TURNLOG_SHUTDOWN_GRACE_S to finish, interrupts the rest with their last events stored, ends
every stream and feed with ``done``, and only then lets uvicorn close the connections. A
second signal skips the wait.

Besides the public socket, every instance listens on an internal one (TURNLOG_INTERNAL_HOST,
a port of its own) where the other instances follow its live streams (turnlog.follow); a
worker of ``serve --workers N`` shares the public socket with its siblings but not that one.
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

import structlog
import uvicorn

from turnlog import logs
from turnlog.config import Settings
from turnlog.http.app import Runtime, create_app
from turnlog.http.auth import make_token, secret_source
from turnlog.http.protocol import with_head_timeout
from turnlog.pidfile import ServePid, serving_pid
from turnlog.providers import UnknownModel, check_at_start

log = structlog.get_logger("turnlog.serve")

DEMO_USER = "demo-user"


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, rt: Runtime) -> None:
        super().__init__(config)
        self.rt = rt
        self.signals = 0
        rt.on_drained = self._drained

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # First signal: drain. Second: interrupt the generations now (their subscribers
        # still get done). Third, or any before the server is ready: uvicorn's own exit.
        self.signals += 1
        if self.rt.ready and self.signals == 1:
            self.rt.request_drain()
            return
        if self.rt.ready and self.signals == 2:
            self.rt.request_force()
            return
        super().handle_exit(sig, frame)

    def _drained(self) -> None:
        self.should_exit = True


# Garbage collection: a server allocates a young object or two per frame and per event, and
# with the default thresholds (700, 10, 10) the collector ran every few hundred frames and
# took 20-25% of the CPU at 500 generations, with ~145 ms full collections
# (docs/performance.md). Young collections every 50,000 allocations, and startup's objects
# frozen out of every scan.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Raise the collector's thresholds; call ``freeze_startup_objects`` once started."""
    gc.set_threshold(*GC_THRESHOLDS)


def freeze_startup_objects() -> None:
    """Move everything alive now (modules, routes, the app) out of the collector's reach."""
    gc.collect()
    gc.freeze()


def banner(settings: Settings, secret: str, base: str, notes: Sequence[str] = ()) -> str:
    """What ``serve`` prints once it is ready: where, which database, a demo token, the
    ``notes`` (its pid), and last, on the embedded defaults, the signed-in web chat URL."""
    token = make_token(secret, DEMO_USER, 30 * 24 * 3600)
    where = (
        "external PostgreSQL"
        if settings.database_url
        else (f"embedded PostgreSQL under {settings.data_dir}")
    )
    lines = [
        f"turnlog is serving on {base} ({where})",
        f"tokens are signed with {secret_source(settings)}",
        f"bearer token for user {DEMO_USER!r} (30 days):",
        token,
        f"try:  curl -s -X POST {base}/v1/conversations -H 'Authorization: Bearer {token}'",
        *notes,
    ]
    if not settings.database_url:
        # The fragment never leaves the browser: the page moves it to session storage.
        lines.append(f"web chat, signed in as {DEMO_USER!r}: {base}/#token={token}")
    return "\n".join(lines)


def preflight(settings: Settings) -> bool:
    """The checks before a server starts anything: False (said on stderr) if the default
    model cannot be used; each configured provider that cannot be used now is logged."""
    try:
        problems = check_at_start(settings)
    except UnknownModel as exc:
        print(f"turnlog serve: {exc}", file=sys.stderr)
        return False
    for problem in problems:
        log.warning("provider unavailable", reason=problem)
    return True


@contextlib.contextmanager
def holding_data_dir(settings: Settings) -> Iterator[str]:
    """Hold the data dir's serve.pid while the block runs; yields the line that says so.
    Raises ``DataDirServed`` if another server runs there on the embedded database."""
    hold = ServePid.take(settings.data_dir)
    if hold is None:
        other = serving_pid(settings.data_dir)
        path = Path(settings.data_dir) / "serve.pid"
        if settings.database_url is None:
            raise DataDirServed(
                f"turnlog serve: data dir {settings.data_dir} is already served by pid {other} "
                f"(see {path}): one server per data dir on the embedded database. Stop it "
                f"first (kill {other}), or give this one another TURNLOG_DATA_DIR"
            )
        # An external database: servers may share a data dir; serve.pid names the first.
        yield f"pid {os.getpid()} ({path} names pid {other}, the first server here)"
        return
    try:
        yield f"pid {os.getpid()} (in {hold.path})"
    finally:
        hold.release()


class DataDirServed(Exception):
    """Another ``turnlog serve`` runs on this data dir with the embedded database."""


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def run_server(settings: Settings, *, host: str, port: int, worker_fd: int | None = None) -> int:
    logs.configure()
    if worker_fd is None and not preflight(settings):  # a worker's supervisor checked
        return 2
    if worker_fd is not None:  # a worker's supervisor holds the data dir
        return _serve(settings, host=host, port=port, worker_fd=worker_fd, pid_line="")
    try:
        with holding_data_dir(settings) as pid_line:
            return _serve(settings, host=host, port=port, worker_fd=None, pid_line=pid_line)
    except DataDirServed as exc:
        print(exc, file=sys.stderr)
        return 1


def _serve(
    settings: Settings, *, host: str, port: int, worker_fd: int | None, pid_line: str
) -> int:
    tune_gc()
    rt = Runtime(settings)
    base = f"http://{host}:{port}"

    def ready(rt: Runtime) -> None:
        freeze_startup_objects()
        if worker_fd is None:  # a worker's supervisor prints it once for all
            # The pid, so that this server and only this one can be stopped:
            # kill $(cat DATA_DIR/serve.pid)
            print(banner(settings, rt.secret, base, [pid_line]), flush=True)

    rt.on_ready = ready
    try:
        public = bind(host, port) if worker_fd is None else socket.socket(fileno=worker_fd)
    except OSError as exc:
        print(
            f"turnlog serve: cannot listen on {host}:{port}: {exc.strerror}. Another "
            "program there? Choose another port with --port",
            file=sys.stderr,
        )
        return 1
    internal = bind(settings.internal_host, 0)
    internal_host = settings.internal_host
    if ":" in internal_host:
        internal_host = f"[{internal_host}]"
    rt.internal_url = f"http://{internal_host}:{internal.getsockname()[1]}"
    config = uvicorn.Config(
        create_app(settings, rt),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        # Streams and feeds are ended by the drain; this only bounds stragglers.
        timeout_graceful_shutdown=2,
        # A request head must arrive within TURNLOG_HEADER_TIMEOUT_S (half-open connections).
        http=with_head_timeout(settings.header_timeout_s),
    )
    server = _Server(config, rt)
    try:
        server.run(sockets=[public, internal])
    except KeyboardInterrupt:
        return 130
    if not server.started:
        print("turnlog: the server did not start (see the log above)", file=sys.stderr)
        return 1
    return 0
