"""What the end-to-end tests share: a real server process, tokens, polling, raw SSE reading.

Every test in this package talks to ``turnlog serve`` processes over real HTTP, as an outside
client would, with the reference client (``turnlog.client``) or raw httpx where the wire
itself is under test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jwt

from turnlog.client import Client, MessageFold, StreamItem

JWT_SECRET = "e2e-secret-0123456789abcdef0123456789abcdef"
DEMO = "demo:default"
FAST = {"tokens_per_second": 400, "length": 40}

T = TypeVar("T")


def make_token(user: str, *, secret: str = JWT_SECRET, ttl: float = 3600) -> str:
    """A bearer token for ``user``: HS256, claims ``sub`` and ``exp``."""
    return jwt.encode({"sub": user, "exp": int(time.time() + ttl)}, secret, algorithm="HS256")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(
    probe: Callable[[], T | None], *, timeout: float = 15.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or probe}")
        time.sleep(interval)


@dataclass
class Server:
    """One ``turnlog serve`` process on a free port, its output captured to ``log_path``."""

    database_url: str
    data_dir: Path
    log_path: Path
    env_overrides: Mapping[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    _log_file: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for name in list(env):
            if name.startswith("TURNLOG_"):
                del env[name]
        env.update(
            TURNLOG_DATABASE_URL=self.database_url,
            TURNLOG_DATA_DIR=str(self.data_dir),
            TURNLOG_JWT_SECRET=JWT_SECRET,
            TURNLOG_CHECKPOINT_S="0.5",
            TURNLOG_HEARTBEAT_S="0.5",
            # Automatic titles off: they would ask a test's (fake) model once more and add
            # a conversation event after the first answer; test_titles turns them on.
            TURNLOG_AUTO_TITLES="0",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.env_overrides)
        return env

    def start(self, *, timeout: float = 30.0, same_port: bool = False) -> Server:
        """Start the process and wait until ``/readyz`` answers 200 (``same_port``: on the
        port of its previous run, as a restarted instance behind a load balancer)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        if not (same_port and self.port):
            self.port = free_port()
        self._log_file = self.log_path.open("ab")
        self._log_file.write(f"\n===== starting on port {self.port} =====\n".encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "turnlog.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=self.env(),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"server exited with {self.proc.returncode} before ready:\n{self.log()}"
                )
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"server not ready after {timeout} s:\n{self.log()}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._close_log()

    def terminate(self, *, timeout: float = 30.0) -> float:
        """SIGTERM; returns the seconds until the process exited (SIGKILL after ``timeout``)."""
        assert self.proc is not None
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        elapsed = time.monotonic() - start
        self._close_log()
        return elapsed

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log(self, start: int = 0) -> str:
        """The captured output from byte ``start`` on."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(start)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def client(self, user: str = "alice", **kwargs: Any) -> Client:
        return Client(self.url, make_token(user), **kwargs)

    def http(self, user: str | None = "alice", **kwargs: Any) -> httpx.Client:
        """A raw httpx client, authorized as ``user`` (None: no Authorization header)."""
        headers = {} if user is None else {"Authorization": f"Bearer {make_token(user)}"}
        kwargs.setdefault("timeout", 10.0)
        return httpx.Client(base_url=self.url, headers=headers, **kwargs)


# --------------------------------------------------------------------------- streams


class Follower(threading.Thread):
    """Follows one message stream in a thread, folding it; ``items`` records every event.

    ``reconnects=0`` makes a dropped connection end the thread (``error`` holds why).
    ``snapshots`` records (monotonic time, fold text) after every event.
    """

    def __init__(self, client: Client, mid: str, *, reconnects: int = 5) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.mid = mid
        self.reconnects = reconnects
        self.fold = MessageFold()
        self.items: list[StreamItem] = []
        self.error: BaseException | None = None
        self.got_init = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        try:
            for item in self.client.stream_message(self.mid, reconnects=self.reconnects):
                with self.lock:
                    self.items.append(item)
                    self.fold.feed(item)
                self.got_init.set()
        except BaseException as e:
            self.error = e

    def text(self) -> str:
        with self.lock:
            return self.fold.text


def raw_sse_lines(response: httpx.Response) -> Iterator[str]:
    """The raw lines of an SSE response, comments included."""
    yield from response.iter_lines()


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str | None, str | None, str | None]]:
    """(event, id, data) per SSE event; a comment line yields (None, None, comment)."""
    event: str | None = None
    event_id: str | None = None
    data: list[str] = []
    for line in lines:
        if line.startswith(":"):
            yield None, None, line
            continue
        if not line:
            if event is not None or data:
                yield event or "message", event_id, "\n".join(data)
            event, event_id, data = None, None, []
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "id":
            event_id = value
        elif name == "data":
            data.append(value)


# --------------------------------------------------------------------------- rows


def find(rows: list[dict[str, Any]], mid: str) -> dict[str, Any]:
    for row in rows:
        if row["id"] == mid:
            return row
    raise AssertionError(f"message {mid} not in {[r['id'] for r in rows]}")


def blocks_json(blocks: Any) -> list[dict[str, Any]]:
    """Blocks (Structs or decoded JSON) as plain JSON dicts, for comparison."""
    import msgspec
    from turnlog_reducer import encode_blocks

    if isinstance(blocks, list) and all(isinstance(b, dict) for b in blocks):
        return blocks
    out: list[dict[str, Any]] = msgspec.json.decode(encode_blocks(blocks))
    return out


def is_prefix(stored: list[dict[str, Any]], streamed: list[dict[str, Any]]) -> bool:
    """Whether ``stored`` blocks are a prefix of ``streamed``: equal blocks, except that the
    last stored one may be a shorter text/reasoning block (or a tool call with less text)."""
    if len(stored) > len(streamed):
        return False
    if not stored:
        return True
    if stored[:-1] != streamed[: len(stored) - 1]:
        return False
    a, b = stored[-1], streamed[len(stored) - 1]
    if a == b:
        return True
    if a["type"] != b["type"]:
        return False
    if a["type"] in ("text", "reasoning"):
        return bool(b["text"].startswith(a["text"]))
    return bool(
        a["id"] == b["id"]
        and a["name"] == b["name"]
        and b["arguments_text"].startswith(a["arguments_text"])
    )


def assert_problem(response: httpx.Response, *statuses: int) -> None:
    """A 4xx answer with a JSON body holding a readable ``detail`` (never a 5xx)."""
    expected = statuses or tuple(range(400, 500))
    assert response.status_code in expected, (
        f"expected {statuses or '4xx'}, got {response.status_code}: {response.text[:500]}"
    )
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"not a JSON body: {response.text[:500]!r}") from None
    assert isinstance(body, dict), body
    assert isinstance(body.get("detail"), str | list | dict), body
    assert body["detail"], body
