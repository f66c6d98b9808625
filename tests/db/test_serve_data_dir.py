"""One `turnlog serve` per data dir on the embedded database: serve.pid names it while it
runs, a second one refuses, and `turnlog db stop` will not stop the database under it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.support import free_port, wait_until
from turnlog.db.embedded import EmbeddedPostgres

pytestmark = pytest.mark.slow


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNLOG_")}
    return {**env, "TURNLOG_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}


def _turnlog(data_dir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "turnlog.cli", *args],
        env=_env(data_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class _Serve:
    """A `turnlog serve` process in the background, its output in a file."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        self.port = free_port()
        self.out = data_dir.parent / f"serve-{self.port}.out"
        with self.out.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "turnlog.cli", "serve", "--port", str(self.port), *args],
                env=_env(data_dir),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def text(self) -> str:
        return self.out.read_text()

    def ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self) -> None:
        def probe() -> bool:
            assert self.proc.poll() is None, self.text()
            return self.ready() and "#token=" in self.text()

        wait_until(probe, timeout=120, interval=0.2, what=f"serve ready:\n{self.text()}")

    def wait_exit(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"still running after {timeout} s:\n{self.text()}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _assert_banner_ends_with_the_url(output: str, pid: int) -> None:
    """What serve printed names its pid, and the signed-in web chat URL comes last (the
    request log's JSON lines aside)."""
    printed = [line for line in output.splitlines() if not line.startswith("{")]
    assert any(f"pid {pid}" in line for line in printed), output
    assert "#token=" in printed[-1], output


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data"
    yield path
    EmbeddedPostgres(path).stop()


def test_a_second_serve_refuses_and_db_stop_refuses_under_a_server(data_dir: Path) -> None:
    """The first server writes its pid to serve.pid and prints the signed-in URL last; a
    second one on the same data dir exits 1 naming the first's pid and leaves serve.pid
    alone; `db stop` exits 1 naming that pid and stops nothing, `db stop --force` says what
    it does and stops it; serve.pid goes when its server stops."""
    first = _Serve(data_dir)
    try:
        first.wait_ready()
        pid_file = data_dir / "serve.pid"
        assert pid_file.read_text().strip() == str(first.proc.pid)
        _assert_banner_ends_with_the_url(first.text(), first.proc.pid)

        second = _Serve(data_dir)
        assert second.wait_exit() == 1
        assert f"pid {first.proc.pid}" in second.text()
        assert str(data_dir) in second.text()
        assert pid_file.read_text().strip() == str(first.proc.pid)
        assert first.ready()

        done = _turnlog(data_dir, "db", "stop")
        assert done.returncode == 1, done
        assert f"pid {first.proc.pid}" in done.stderr
        assert "--force" in done.stderr
        assert EmbeddedPostgres(data_dir).is_running()
        assert first.ready()

        done = _turnlog(data_dir, "db", "stop", "--force")
        assert done.returncode == 0, done
        assert f"pid {first.proc.pid}" in done.stdout
        assert "503" in done.stdout
        assert not EmbeddedPostgres(data_dir).is_running()
        first.stop()
        assert not pid_file.exists()
    finally:
        first.stop()


def test_workers_write_and_print_the_supervisor_pid(data_dir: Path) -> None:
    """`serve --workers 2` prints the supervisor's pid and writes it to serve.pid (a second
    server names it); the file goes when the supervisor stops."""
    supervisor = _Serve(data_dir, "--workers", "2")
    try:
        supervisor.wait_ready()
        _assert_banner_ends_with_the_url(supervisor.text(), supervisor.proc.pid)
        pid_file = data_dir / "serve.pid"
        assert pid_file.read_text().strip() == str(supervisor.proc.pid)
        second = _Serve(data_dir)
        assert second.wait_exit() == 1
        assert f"pid {supervisor.proc.pid}" in second.text()
        supervisor.stop()
        deadline = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_file.exists()
    finally:
        supervisor.stop()
