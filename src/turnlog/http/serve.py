"""``turnlog serve``: uvicorn around the app, with a graceful drain on SIGTERM / Ctrl-C.

On the first signal the server stops taking turns, gives running generations
TURNLOG_SHUTDOWN_GRACE_S to finish, interrupts the rest with their last events stored, ends
every stream and feed with ``done``, and only then lets uvicorn close the connections. A
second signal skips the wait.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from types import FrameType

import uvicorn

from turnlog import logs
from turnlog.config import Settings
from turnlog.http.app import Runtime, create_app
from turnlog.http.auth import make_token, secret_source

DEMO_USER = "demo-user"


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, rt: Runtime) -> None:
        super().__init__(config)
        self.rt = rt
        rt.on_drained = self._drained

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.rt.ready and not self.rt.drain_requested.is_set():
            self.rt.request_drain()
            return
        super().handle_exit(sig, frame)

    def _drained(self) -> None:
        self.should_exit = True


def run_server(settings: Settings, *, host: str, port: int) -> int:
    logs.configure()
    rt = Runtime(settings)
    base = f"http://{host}:{port}"
    pid_file = Path(settings.data_dir) / "serve.pid"

    def ready(rt: Runtime) -> None:
        token = make_token(rt.secret, DEMO_USER, 30 * 24 * 3600)
        where = (
            "external PostgreSQL"
            if settings.database_url
            else (f"embedded PostgreSQL under {settings.data_dir}")
        )
        print(
            f"turnlog is serving on {base} ({where})\n"
            f"tokens are signed with {secret_source(settings)}\n"
            f"bearer token for user {DEMO_USER!r} (30 days):\n{token}\n"
            f"try:  curl -s -X POST {base}/v1/conversations -H 'Authorization: Bearer {token}'",
            flush=True,
        )
        if not settings.database_url:
            # The fragment never leaves the browser: the page moves it to session storage.
            print(f"web chat, signed in as {DEMO_USER!r}: {base}/#token={token}", flush=True)
        # So that this server, and only this one, can be stopped: kill $(cat DATA_DIR/serve.pid)
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{os.getpid()}\n", encoding="utf-8")
        print(f"pid {os.getpid()} (in {pid_file})", flush=True)

    rt.on_ready = ready
    config = uvicorn.Config(
        create_app(settings, rt),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        # Streams and feeds are ended by the drain; this only bounds stragglers.
        timeout_graceful_shutdown=2,
    )
    server = _Server(config, rt)
    try:
        server.run()
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
