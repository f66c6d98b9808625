"""``DATA_DIR/serve.pid``: the one ``turnlog serve`` a data dir serves, while it runs.

The server (or the supervisor of ``serve --workers N``) takes an exclusive ``flock`` on the
file and writes its pid into it for as long as it runs. The kernel drops the lock when the
process ends, however it ends (kill -9 included), so:

- a locked file names a live server: a second ``serve`` on the embedded database refuses to
  start naming it, and ``turnlog db stop`` refuses to stop the database under it;
- an unlocked file is what a killed server left behind: the next server takes it over.

Only the process that wrote the file removes it. The lock is never inherited: the embedded
PostgreSQL and the workers are started with their descriptors closed, so it cannot outlive
its server in a child.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

__all__ = ["ServePid", "serving_pid"]

NAME = "serve.pid"


class ServePid:
    """This process's hold on its data dir's ``serve.pid``."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def take(cls, data_dir: Path) -> ServePid | None:
        """Lock ``data_dir``'s serve.pid and write this process's pid into it; None if a
        running server holds it (``serving_pid`` says which)."""
        path = Path(data_dir) / NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if serving_pid(data_dir) is not None:
                    return None  # a server holds it
                continue  # only `serving_pid` looking, for an instant (a shared lock)
            # Its last holder may have removed the file between our open and our lock: then
            # we hold a lock on a file nobody else can find; open the path again.
            try:
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return cls(path, fd)

    def release(self) -> None:
        """Remove the file (still ours: nobody else writes it while we hold the lock) and
        drop the lock."""
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            if self.path.read_text(encoding="utf-8").strip() == str(os.getpid()):
                self.path.unlink()
        os.close(self._fd)
        self._fd = -1


def serving_pid(data_dir: Path) -> int | None:
    """The pid of the server running on ``data_dir`` (its serve.pid locked), else None.

    A pid is 0 in the instant between a server's lock and its write (never seen in
    practice; the message then says "pid 0")."""
    path = Path(data_dir) / NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            # Shared and at once: held by no server, this takes nothing from anyone.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        return None
    finally:
        os.close(fd)
