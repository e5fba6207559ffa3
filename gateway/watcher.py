"""Seeing files arrive and deciding when each has settled (SPEC 4.1).

Watchdog's observer threads only put events on a queue; the intake thread drains it and
owns all settle state, so there is no locking around it.  Events are hints: the settle
decision always re-reads the file's (size, mtime, inode) on the gateway's own monotonic
clock, and a periodic rescan finds anything the events missed.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import queue
import signal
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from gateway.spool import JOB_DIR

log = logging.getLogger("gateway.watcher")

IGNORED_SUFFIXES = (".tmp", ".part", ".crdownload", ".swp")
IGNORED_NAMES = {"thumbs.db", "desktop.ini", "@eadir", "#recycle", ".ds_store"}
LONG_WAIT = 600.0  # a file waiting longer than this is logged (SPEC 4.1)


def is_ignored(rel: str) -> bool:
    """Temporary files, desktop junk and anything below a dot-folder are never touched."""
    parts = rel.split(os.sep)
    for part in parts:
        if not part or part.startswith((".", "~")) or part.lower() in IGNORED_NAMES:
            return True
    return parts[-1].lower().endswith(IGNORED_SUFFIXES)


@dataclass
class Seen:
    """What the gateway knows of one file in an outbox."""

    outbox: str
    rel: str
    sig: tuple[int, int, int, int] | None  # size, mtime_ns, inode, mode
    changed_at: float
    first_seen: float
    settled_at: float | None = None
    opens: int = 0
    closes: int = 0
    open_signal: bool = False
    warned: bool = False

    @property
    def held_open(self) -> bool:
        return self.opens > self.closes

    @property
    def size(self) -> int:
        return self.sig[0] if self.sig else 0

    @property
    def ino(self) -> int:
        return self.sig[2] if self.sig else 0


@dataclass
class WatchedOutbox:
    name: str
    root: Path
    settle: float
    rescan: float
    polling: bool
    observer: object | None = None
    next_rescan: float = 0.0
    files: dict[str, Seen] = field(default_factory=dict)  # by path relative to root


class _Enqueue(FileSystemEventHandler):
    """Runs in watchdog's thread: only enqueue, never decide."""

    def __init__(self, outbox: str, q: queue.SimpleQueue) -> None:
        self.outbox, self.q = outbox, q

    def dispatch(self, event: FileSystemEvent) -> None:
        self.q.put((self.outbox, event.event_type, event.src_path, getattr(event, "dest_path", ""),
                    event.is_directory))


class _OverflowFlag(logging.Handler):
    """Watchdog reports a lost-events overflow only in its log; turn that into a rescan."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.tripped = False

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.tripped = True


class Watcher:
    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.outboxes: dict[str, WatchedOutbox] = {}
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self._overflow = _OverflowFlag()
        logging.getLogger("watchdog.observers.inotify_c").addHandler(self._overflow)
        logging.getLogger("watchdog.observers.inotify").addHandler(self._overflow)

    def add(self, name: str, root: Path, *, settle: float, rescan: float, polling: bool) -> None:
        wo = WatchedOutbox(name, root, settle, rescan, polling)
        self.outboxes[name] = wo
        observer = PollingObserver(timeout=max(0.2, min(1.0, settle / 2))) if polling else Observer()
        observer.schedule(_Enqueue(name, self.q), str(root), recursive=True)
        observer.daemon = True
        observer.start()
        wo.observer = observer
        self.rescan(wo)  # files already present at start-up are taken too

    def remove(self, name: str) -> None:
        """Stop watching an outbox (paused); its waiting files are forgotten and found
        again by the start-up scan of `add` when it comes back."""
        wo = self.outboxes.pop(name, None)
        if wo is not None and wo.observer is not None:
            wo.observer.stop()
            wo.observer.join(timeout=5)

    def stop(self) -> None:
        for wo in self.outboxes.values():
            if wo.observer is not None:
                wo.observer.stop()
        for wo in self.outboxes.values():
            if wo.observer is not None:
                wo.observer.join(timeout=5)
        logging.getLogger("watchdog.observers.inotify_c").removeHandler(self._overflow)
        logging.getLogger("watchdog.observers.inotify").removeHandler(self._overflow)

    def alive(self) -> bool:
        return all(wo.observer is not None and wo.observer.is_alive() for wo in self.outboxes.values())

    # -- events ---------------------------------------------------------------------

    def drain(self) -> int:
        n = 0
        while True:
            try:
                outbox, kind, src, dest, is_dir = self.q.get_nowait()
            except queue.Empty:
                break
            n += 1
            wo = self.outboxes.get(outbox)
            if wo is None or is_dir and kind != "moved":
                continue
            if kind == "moved":
                self._touch(wo, src, kind="gone")
                if dest:
                    if is_dir:
                        wo.next_rescan = 0.0  # a folder moved in: its files must be found now
                    else:
                        self._touch(wo, dest, kind="changed")
                continue
            self._touch(wo, src, kind={"opened": "opened", "closed": "closed_write",
                                       "closed_no_write": "closed", "deleted": "gone"}.get(kind, "changed"))
        if self._overflow.tripped:
            self._overflow.tripped = False
            log.warning("filesystem events were lost (inotify queue overflow): rescanning every outbox now")
            for wo in self.outboxes.values():
                wo.next_rescan = 0.0
        return n

    def _touch(self, wo: WatchedOutbox, path: str, *, kind: str) -> None:
        try:
            rel = os.path.relpath(path, wo.root)
        except ValueError:
            return
        if rel.startswith("..") or rel == "." or is_ignored(rel):
            return
        now = self.clock()
        seen = wo.files.get(rel)
        if kind == "gone":
            if seen is not None and not os.path.lexists(path):
                del wo.files[rel]
            return
        if seen is None:
            sig = _signature(path)
            if sig is None or stat.S_ISDIR(sig[3]):
                return
            seen = wo.files[rel] = Seen(wo.name, rel, sig, now, now)
        if kind == "opened":
            seen.opens += 1
            seen.open_signal = True
        elif kind in ("closed", "closed_write"):
            seen.closes += 1
            if seen.closes > seen.opens:  # opened before the watch began: no signal to count
                seen.opens = seen.closes = 0
            if kind == "closed_write":
                seen.changed_at = now
        else:
            seen.changed_at = now

    # -- rescans and settling -------------------------------------------------------

    def rescan(self, wo: WatchedOutbox) -> None:
        now = self.clock()
        wo.next_rescan = now + wo.rescan
        found = set()
        for rel in _walk(wo.root):
            found.add(rel)
            if rel not in wo.files:
                sig = _signature(wo.root / rel)
                if sig is not None:
                    wo.files[rel] = Seen(wo.name, rel, sig, now, now)
        for rel in list(wo.files):
            if rel not in found and not os.path.lexists(wo.root / rel):
                del wo.files[rel]

    def tick(self) -> None:
        """Re-read every waiting file; a changed signature restarts its settle time."""
        now = self.clock()
        for wo in self.outboxes.values():
            if now >= wo.next_rescan:
                self.rescan(wo)
            for rel, seen in list(wo.files.items()):
                sig = _signature(wo.root / rel)
                if sig is None:
                    del wo.files[rel]
                    continue
                if sig != seen.sig:
                    if sig[2] != seen.ino:  # a new file under the same name
                        seen.opens = seen.closes = 0
                    seen.sig, seen.changed_at, seen.settled_at = sig, now, None
                if seen.held_open or now - seen.changed_at < wo.settle:
                    seen.settled_at = None
                elif seen.settled_at is None:
                    if open_for_writing(wo.root / rel, sig):
                        seen.changed_at = now  # a writer we had no event for still holds it
                        continue
                    seen.settled_at = now
                if not seen.warned and now - seen.first_seen > LONG_WAIT:
                    seen.warned = True
                    log.warning("%s: %s has waited more than 10 minutes (%s)", wo.name, rel,
                                "still open by its writer" if seen.held_open else "still changing or "
                                "waiting for its sidecar or destination")

    def forget(self, outbox: str, rel: str) -> None:
        """Called when a file has been claimed: a file later found at this name is new."""
        self.outboxes[outbox].files.pop(rel, None)

    def folders(self, outbox: str) -> Iterator[tuple[str, dict[str, Seen]]]:
        """The files seen, grouped by folder (relative to the outbox root)."""
        groups: dict[str, dict[str, Seen]] = {}
        for rel, seen in self.outboxes[outbox].files.items():
            folder, _, name = rel.rpartition(os.sep)
            groups.setdefault(folder, {})[name] = seen
        yield from groups.items()

    def waiting(self, outbox: str) -> int:
        return len(self.outboxes[outbox].files)

    def long_waiting(self, outbox: str) -> int:
        now = self.clock()
        return sum(1 for s in self.outboxes[outbox].files.values() if now - s.first_seen > LONG_WAIT)


_F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)
_F_UNLCK = getattr(fcntl, "F_UNLCK", 2)
_F_RDLCK = getattr(fcntl, "F_RDLCK", 0)


def leases_usable() -> bool:
    """A lease break is signalled with SIGIO, whose default action kills the process: the
    service ignores SIGIO at start-up, and only then may leases be taken."""
    try:
        return signal.getsignal(signal.SIGIO) == signal.SIG_IGN
    except (AttributeError, ValueError):
        return False


def open_for_writing(path: Path, sig: tuple[int, int, int, int]) -> bool:
    """True if some process holds the file open for writing.

    The kernel refuses a read lease (EAGAIN) while any writer has the file open.  This
    covers writers the events cannot show: a file opened before its folder was watched
    (a scanner creating a folder and its file at once).  Where a lease is not permitted
    (another user's file without CAP_LEASE), settle alone decides, as SPEC 4.1 allows.
    """
    if not stat.S_ISREG(sig[3]) or not leases_usable():
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.fcntl(fd, _F_SETLEASE, _F_RDLCK)
    except OSError as exc:
        return exc.errno in (errno.EAGAIN, errno.EBUSY)
    else:
        fcntl.fcntl(fd, _F_SETLEASE, _F_UNLCK)
        return False
    finally:
        os.close(fd)


def _signature(path: str | Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_mode)


def _walk(root: Path) -> Iterator[str]:
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            entries = list(os.scandir(root / rel_dir))
        except OSError:
            continue
        for e in entries:
            rel = os.path.join(rel_dir, e.name) if rel_dir else e.name
            if e.name == JOB_DIR or is_ignored(rel):
                continue
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append(rel)
                    continue
            except OSError:
                continue
            yield rel
