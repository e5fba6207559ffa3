"""One daemon per database (SPEC 2)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from gateway.errors import DaemonRunning


class DatabaseLock:
    """One daemon per database: an advisory lock on `<database>.lock` that the kernel
    releases when the process dies, however it dies."""

    def __init__(self, db_path: Path) -> None:
        self.path = db_path.with_name(db_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DaemonRunning(f"database {self.path.with_suffix('')} is in use by another "
                                f"fax-gateway daemon (process {holder}); stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def held_by_another(self) -> bool:
        """True while a daemon holds the database.  Taking the lock for an instant is the
        only test the kernel answers truthfully: a stale PID in the file proves nothing."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing releases a lock we took
        return False

