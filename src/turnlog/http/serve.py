"""``turnlog serve``: uvicorn around the app, with a graceful drain on SIGTERM / Ctrl-C.

On the first signal the server stops taking turns, gives running generations
TURNLOG_SHUTDOWN_GRACE_S to finish, interrupts the rest with their last events stored, ends
every stream and feed with ``done``, and only then lets uvicorn close the connections. A
second signal skips the wait.
"""

from __future__ import annotations

import sys
from types import FrameType

import uvicorn

from turnlog import logs
from turnlog.config import Settings
from turnlog.http.app import Runtime, create_app
from turnlog.http.auth import make_token
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


def run_server(settings: Settings, *, host: str, port: int) -> int:
    logs.configure()
    rt = Runtime(settings)
    base = f"http://{host}:{port}"

    def ready(rt: Runtime) -> None:
        token = make_token(rt.secret, DEMO_USER, 30 * 24 * 3600)
        where = (
            "external PostgreSQL"
            if settings.database_url
            else (f"embedded PostgreSQL under {settings.data_dir}")
        )
        print(
            f"turnlog is serving on {base} ({where})\n"
            f"bearer token for user {DEMO_USER!r} (30 days):\n{token}\n"
            f"try:  curl -s -X POST {base}/v1/conversations -H 'Authorization: Bearer {token}'",
            flush=True,
        )
        if not settings.database_url:
            # The fragment never leaves the browser: the page moves it to session storage.
            print(f"web chat, signed in as {DEMO_USER!r}: {base}/#token={token}", flush=True)

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
        # A request head must arrive within TURNLOG_HEADER_TIMEOUT_S (half-open connections).
        http=with_head_timeout(settings.header_timeout_s),
    )
    server = _Server(config, rt)
    try:
        server.run()
    except KeyboardInterrupt:
        return 130
    if not server.started:
        print("turnlog: the server did not start (see the log above)", file=sys.stderr)
        return 1
    return 0
