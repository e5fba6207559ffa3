"""One daemon per database (SPEC 2, 4.5).

The lock is an `flock` on a descriptor of the database file itself, opened before SQLite
opens it and kept open for the life of the process.  Locking the file, not a name beside
it, means that every path leading to it (a symlink, another configuration) meets the
same lock, and the kernel releases it when the process dies, however it dies.

Two kinds of lock live side by side on Linux: `flock` (ours) and POSIX `fcntl` locks
(SQLite's).  They never conflict, but closing *any* descriptor of a file drops all of the
process's POSIX locks on it.  So this descriptor is never closed while SQLite has the
file open, and nothing else in the daemon opens the database file (see
`held_by_another` for the command line).  Not for network filesystems: NFS emulates
`flock` with POSIX locks, and SQLite should not run there anyway.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from gateway.errors import DaemonRunning, StartupError
from gateway.spool import make_dirs_synced

LOCK_WAIT = 3.0  # seconds a start waits for a daemon that is ending to let go of the database


class DatabaseLock:
    """`path` is the database file, resolved once (an administrator may reach it through a
    link); `<path>.lock` only holds the owner's PID, for the message a second daemon gives."""

    def __init__(self, db_path: Path) -> None:
        self.configured = Path(db_path)
        self.path = Path(os.path.realpath(db_path))
        self.pid_file = self.path.with_name(self.path.name + ".lock")
        self._fd: int | None = None

    @property
    def fd(self) -> int:
        """The locked descriptor of the database file (for its device and inode)."""
        if self._fd is None:
            raise RuntimeError("the database lock is not held")
        return self._fd

    def acquire(self) -> None:
        try:
            make_dirs_synced(self.path.parent)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)  # SQLite's default mode
        except OSError as exc:
            raise StartupError(f"cannot open database {self.configured}: {exc.strerror or exc}") from exc
        try:
            self._lock(fd)
        except BlockingIOError:
            os.close(fd)  # SQLite has not opened the file in this process yet: no lock of its to drop
            name = str(self.configured) + (f" (that is {self.path})" if self.path != self.configured else "")
            raise DaemonRunning(f"database {name} is in use by another fax-gateway daemon "
                                f"(process {self._holder()}); stop it first") from None
        self._fd = fd
        self._write_pid()

    @staticmethod
    def _lock(fd: int) -> None:
        """A daemon that was just killed may hold it a moment longer: its intake process
        (intakeproc.py), which holds the same lock, dies with it but may first have to
        finish a system call (an fsync)."""
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def release(self) -> None:
        """Only after the store is closed: closing this descriptor drops SQLite's locks too."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def held_by_another(self) -> bool:
        """True while a daemon holds the database.  Taking the lock for an instant is the
        only test the kernel answers truthfully: a stale PID in the file proves nothing.

        Call it before this process opens the database with SQLite: the probe's descriptor
        is closed again, which would drop the locks SQLite holds on the file."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing releases a lock we took
        return False

    def _write_pid(self) -> None:
        """Best effort: the lock is what excludes; the PID only makes the message useful."""
        try:
            fd = os.open(self.pid_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
                         0o644)
        except OSError:
            return
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass
        finally:
            os.close(fd)

    def _holder(self) -> str:
        try:
            with open(self.pid_file, "rb") as f:
                text = f.read(32).decode(errors="replace").strip()
        except OSError:
            text = ""
        return text if text.isdigit() else "unknown"
