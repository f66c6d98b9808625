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
from pathlib import Path
from types import FrameType

import uvicorn

from turnlog import logs
from turnlog.config import Settings
from turnlog.http.app import Runtime, create_app
from turnlog.http.auth import make_token, secret_source
from turnlog.http.protocol import with_head_timeout

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
# took 20-25% of the CPU at 500 generations, with ~145 ms full collections (issue 14). Young
# collections every 50,000 allocations, and startup's objects frozen out of every scan.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Raise the collector's thresholds; call ``freeze_startup_objects`` once started."""
    gc.set_threshold(*GC_THRESHOLDS)


def freeze_startup_objects() -> None:
    """Move everything alive now (modules, routes, the app) out of the collector's reach."""
    gc.collect()
    gc.freeze()


def banner(settings: Settings, secret: str, base: str) -> str:
    """What ``serve`` prints once it is ready: where, which database, a demo token."""
    token = make_token(secret, DEMO_USER, 30 * 24 * 3600)
    where = (
        "external PostgreSQL"
        if settings.database_url
        else (f"embedded PostgreSQL under {settings.data_dir}")
    )
    text = (
        f"turnlog is serving on {base} ({where})\n"
        f"tokens are signed with {secret_source(settings)}\n"
        f"bearer token for user {DEMO_USER!r} (30 days):\n{token}\n"
        f"try:  curl -s -X POST {base}/v1/conversations -H 'Authorization: Bearer {token}'"
    )
    if not settings.database_url:
        # The fragment never leaves the browser: the page moves it to session storage.
        text += f"\nweb chat, signed in as {DEMO_USER!r}: {base}/#token={token}"
    return text


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
    tune_gc()
    rt = Runtime(settings)
    base = f"http://{host}:{port}"
    pid_file = Path(settings.data_dir) / "serve.pid"

    def ready(rt: Runtime) -> None:
        freeze_startup_objects()
        if worker_fd is None:  # a worker's supervisor prints it once for all
            print(banner(settings, rt.secret, base), flush=True)
            # So that this server, and only this one, can be stopped:
            # kill $(cat DATA_DIR/serve.pid)
            pid_file.parent.mkdir(parents=True, exist_ok=True)
            pid_file.write_text(f"{os.getpid()}\n", encoding="utf-8")
            print(f"pid {os.getpid()} (in {pid_file})", flush=True)

    rt.on_ready = ready
    try:
        public = bind(host, port) if worker_fd is None else socket.socket(fileno=worker_fd)
    except OSError as exc:
        print(
            f"turnlog serve: cannot listen on {host}:{port}: {exc.strerror}. Another server "
            f"there? (this data dir's last one wrote its pid to {pid_file}); "
            "or choose another port with --port",
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
    finally:
        # Only our own: another server may have written its pid since.
        with contextlib.suppress(OSError):
            if pid_file.read_text(encoding="utf-8").strip() == str(os.getpid()):
                pid_file.unlink()
    if not server.started:
        print("turnlog: the server did not start (see the log above)", file=sys.stderr)
        return 1
    return 0
