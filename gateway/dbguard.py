"""A lost or replaced database never means a second fax (SPEC 4.5, "A lost database").

Job ids name the job folders in the private folders.  A database that is deleted or
replaced under a running daemon goes on being written (the daemon still holds the old
file open) and is gone at the next start; the new database then gives ids again from 1,
and the new job 1 would find the old job 1's folder and fax its documents.  Two guards:

- at start-up, `refuse_unknown_job_folders`: a job folder the database has no row for
  means the database was lost or replaced, and the daemon refuses to start;
- while running, `DatabaseGuard.check`: the database path must still name the file that
  was opened (device and inode).  Once it does not, the stages stop (intake, sending,
  filing), the open database is saved with SQLite's backup API beside the database as
  `<database>.orphaned-<UTC time>`, and /healthz says what happened and what to do.
  The open database's own `-wal` and `-shm` files are removed from beside the database
  path: SQLite leaves them there when its file was moved, and the next start would
  apply that write-ahead log to whatever file then lies at the path (a new database
  would "know" some old jobs, half of them).  Their content stays reachable through the
  descriptors SQLite holds, and is in the copy.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

from gateway.errors import StartupError
from gateway.names import shown
from gateway.spool import fsync_dir

log = logging.getLogger("gateway.dbguard")

README_SECTION = "see the README, section 'A lost database'"
SAVE_RETRY = 1.0  # a copy that could not be saved is tried again this much later
RECENT = 0.2      # seconds a look at the path answers `recent` (the stages that ask at every turn)


def orphaned_name(database: Path, when: float) -> Path:
    stamp = datetime.fromtimestamp(when, UTC).strftime("%Y%m%dT%H%M%SZ")
    return database.with_name(f"{database.name}.orphaned-{stamp}")


def orphaned_copies(database: Path) -> list[Path]:
    """Copies saved by earlier runs, beside the resolved database path, newest last (the
    UTC time in the name sorts); a copy still being written (`.tmp-<pid>`) is not one."""
    real = Path(os.path.realpath(database))
    stamp = re.compile(re.escape(real.name) + r"\.orphaned-\d{8}T\d{6}Z")
    try:
        return sorted(p for p in real.parent.iterdir() if stamp.fullmatch(p.name))
    except OSError:
        return []


# -- at start-up --------------------------------------------------------------------------

def job_folder_ids(private_folders: Iterable[Path]) -> dict[int, Path]:
    """Every job folder (a name of digits) in the private folders, by job id.  Any entry
    with such a name counts, whatever it is: its id must never be given again."""
    found: dict[int, Path] = {}
    for folder in private_folders:
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name.isascii() and entry.name.isdigit():
                        found.setdefault(int(entry.name), Path(folder) / entry.name)
        except (FileNotFoundError, NotADirectoryError):
            continue  # no private folder yet: no job folders
        except OSError as exc:
            why = exc.strerror or exc
            raise StartupError(f"cannot list the job folders in {shown(str(folder))} ({why}): the "
                               "gateway's user must be able to read it") from exc
    return found


def refuse_unknown_job_folders(private_folders: Iterable[Path], known: Callable[[Iterable[int]], set[int]],
                               database: Path) -> None:
    """Raise StartupError if a job folder exists that the database has no row for.

    `known` answers which of the given ids the database has (`Store.existing_job_ids`;
    `lambda ids: set()` for a database file that does not exist)."""
    folders = job_folder_ids(private_folders)
    unknown = sorted(set(folders) - known(folders))
    if not unknown:
        return
    first = folders[unknown[0]]
    more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
    copies = orphaned_copies(database)
    restore = (f"restore the database from the copy the gateway saved ({copies[-1]})" if copies
               else "restore the database from a backup")
    raise StartupError(
        f"job folder {shown(str(first))}{more} is not in the database {database}: the database was lost or "
        f"replaced, and starting would fax its documents again; {restore} and start again ({README_SECTION})")


# -- while running ------------------------------------------------------------------------

class DatabaseGuard:
    """Compares the database path with the file that was opened; once they differ, says
    why for ever after (`check` returns the reason) and saves the open database.

    `path` is the configured database path (followed, as SQLite did); `opened` is the
    `os.stat_result` of the open file (fstat of the lock's descriptor); `save(target)`
    writes an online copy of the open database (`Store.backup`); `beside` is the file
    the copy is named after (the resolved database path, where the gateway may write).
    Thread-safe: every stage asks it, and only the first to see the change saves."""

    def __init__(self, path: Path, opened: os.stat_result, save: Callable[[Path], None], *,
                 beside: Path | None = None, recent: float = RECENT) -> None:
        self.path = Path(path)
        self.recent_for = recent
        self.beside = Path(beside or path)
        self._identity = (opened.st_dev, opened.st_ino)
        # SQLite names them after the file it opened (links resolved); they keep their inode
        # while it has the database open.
        self._own_files = {p: _identity(p) for p in (self.beside.with_name(self.beside.name + "-wal"),
                                                      self.beside.with_name(self.beside.name + "-shm"))}
        self._mode = opened.st_mode & 0o777
        self._save = save
        self._lock = threading.Lock()     # the change from running to halted
        self._saving = threading.Lock()   # one copy at a time
        self._reason: str | None = None
        self._what = ""                 # "deleted" or "replaced by another file"
        self.copy: Path | None = None   # where the open database is saved
        self._saved = False
        self._save_error: str | None = None
        self._next_save = 0.0
        self._looked_at = float("-inf")  # monotonic time of the last look at the path

    def recent(self) -> str | None:
        """As `check`, from a look at the path at most RECENT seconds old.  The sending,
        filing and retention loops ask at every turn, several times per document in a burst, and each
        stat handed the interpreter lock to another thread (issue 12: 2.6% of the sending
        loop's time).  SPEC 4.5 asks for a look every second (the service's loop) and before
        each claim batch (intake asks `check`)."""
        if self._reason is None and time.monotonic() - self._looked_at < self.recent_for:
            return None
        return self.check()

    def check(self) -> str | None:
        """None while the path names the open file; else why the daemon stopped working."""
        if self._reason is None:
            self._looked_at = time.monotonic()
            what = self._changed()
            if what is None:
                return None
            with self._lock:
                first = self._reason is None
                if first:
                    self._what = what
                    self.copy = orphaned_name(self.beside, time.time())
                    self._reason = self._compose()  # from now on every stage stops
                    self._remove_own_files()
            if first:
                self._save_copy(wait=True)
                log.error("%s", self._reason)
                return self._reason
        if not self._saved and time.monotonic() >= self._next_save:
            self._save_copy(wait=False)
        return self._reason

    def save_again(self) -> None:
        """At shutdown, after the stages stopped: the answers to requests that were under
        way when the file changed are in the open database; the copy gets them too."""
        if self._reason is not None:
            self._saved = False
            self._save_copy(wait=True)
            if not self._saved:
                log.error("%s", self._reason)

    # -- internals ------------------------------------------------------------------------

    def _changed(self) -> str | None:
        try:
            st = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return "deleted"
        except OSError as exc:
            return f"made unreachable ({exc.strerror or exc})"
        if (st.st_dev, st.st_ino) != self._identity:
            return "replaced by another file"
        return None

    def _remove_own_files(self) -> None:
        """Only the files SQLite has open (same inode as at start), never another database's."""
        for path, ident in self._own_files.items():
            if ident is not None and _identity(path) == ident:
                try:
                    os.unlink(path)
                except OSError as exc:
                    log.error("could not remove %s, which belongs to the open database, not to what now "
                              "lies at %s: remove it before the next start (%s)", path, self.path, exc)

    def _save_copy(self, *, wait: bool) -> None:
        """Only one thread saves; the others go on (halted) without waiting for it."""
        if not self._saving.acquire(blocking=wait):
            return
        try:
            if self._saved or self.copy is None:
                return
            try:
                self._write_copy(self.copy)
            except Exception as exc:
                self._save_error = str(exc)
                self._next_save = time.monotonic() + SAVE_RETRY
            else:
                if self._save_error is not None:
                    log.warning("the open database was saved to %s at last", self.copy)
                self._saved, self._save_error = True, None
            self._reason = self._compose()
        finally:
            self._saving.release()

    def _write_copy(self, target: Path) -> None:
        """Written under a temporary name, synced, then renamed: the copy is never half there."""
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        try:
            self._save(tmp)
            os.chmod(tmp, self._mode)  # as readable as the database was, no more
            fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)  # another file than the database: no lock of SQLite's to drop
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        fsync_dir(target.parent)

    def _compose(self) -> str:
        head = (f"the database file {self.path} was {self._what} while the daemon ran, so it stopped taking, "
                "sending, polling and filing faxes (a new database would give job ids again and could fax a "
                "document twice)")
        if self._saved:
            return (f"{head}; the open database was saved to {self.copy}: stop the daemon, put that copy in "
                    f"place of {self.path} and start it again ({README_SECTION})")
        if self._save_error is not None:
            return (f"{head}; saving the open database to {self.copy} failed ({self._save_error}) and is "
                    "tried again every second: make room or fix the folder, and do not stop the daemon "
                    f"before the copy is saved, or the jobs under way are lost ({README_SECTION})")
        return f"{head}; the open database is being saved to {self.copy} ({README_SECTION})"


def halted_when_moved(path: Path, opened: os.stat_result) -> Callable[[], str | None]:
    """For the intake process (intakeproc.py): why it takes nothing more, once the path
    no longer names the open database.  The daemon's own `DatabaseGuard` saves the copy
    and says what to do."""
    identity = (opened.st_dev, opened.st_ino)
    reason: list[str] = []

    def halted() -> str | None:
        if not reason:
            try:
                st = os.stat(path)
            except OSError:
                st = None
            if st is None or (st.st_dev, st.st_ino) != identity:
                reason.append(f"the database file {path} was deleted or replaced: intake takes nothing more "
                              "(see /healthz)")
        return reason[0] if reason else None
    return halted


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
