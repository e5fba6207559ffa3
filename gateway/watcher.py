"""Seeing files arrive and deciding when each has settled (SPEC 4.1).

Watchdog's threads only put events on a queue; the intake thread drains it and
owns all settle state, so there is no locking around it.  Events are hints: the settle
decision always re-reads the file's (size, mtime, inode) on the gateway's own monotonic
clock, and a periodic rescan finds anything the events missed.
"""

from __future__ import annotations

import errno
import fcntl
import heapq
import itertools
import logging
import os
import queue
import signal
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import ObservedWatch
from watchdog.observers.inotify import InotifyEmitter
from watchdog.observers.inotify_c import InotifyFD
from watchdog.observers.polling import PollingObserverVFS

from gateway.names import shown
from gateway.spool import LEGACY_JOB_DIR

log = logging.getLogger("gateway.watcher")

IGNORED_SUFFIXES = (".tmp", ".part", ".crdownload", ".swp")
IGNORED_NAMES = {"thumbs.db", "desktop.ini", "@eadir", "#recycle", ".ds_store"}
LONG_WAIT = 600.0  # a file waiting longer than this is logged (SPEC 4.1)
_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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
    check_at: float | None = None  # when its settle deadline comes (None: waits for an event)
    lease_holds: int = 0           # settle checks a writer without events held back
    readable: tuple[tuple[int, ...], float] | None = None  # (what it was, when) found readable (intake)

    @property
    def held_open(self) -> bool:
        return self.opens > self.closes

    @property
    def ready(self) -> bool:
        """Settled, and no process we saw open it holds it now."""
        return self.settled_at is not None and not self.held_open

    @property
    def size(self) -> int:
        return self.sig[0] if self.sig else 0

    @property
    def ino(self) -> int:
        return self.sig[2] if self.sig else 0


def relative(path: str, root: str) -> str:
    """`os.path.relpath(path, root)`, without its cost (two abspath calls and a list of
    parts, for every inotify event: issue 12) for what inotify gives: the root, a
    separator and plain names.  Anything else (a ".", "..", a doubled or trailing
    separator, a path outside the root) is left to relpath itself."""
    prefix = root.rstrip(os.sep) + os.sep
    if path.startswith(prefix):
        rel = path[len(prefix):]
        if rel and os.sep + "." not in os.sep + rel and os.sep * 2 not in os.sep + rel \
                and not rel.endswith(os.sep):
            return rel
    return os.path.relpath(path, root)


@dataclass
class WatchedOutbox:
    name: str
    root: Path
    settle: float
    rescan: float
    polling: bool
    skip: str | None = None  # the private folder, when it lies inside the outbox: never looked at
    observer: object | None = None
    next_rescan: float = 0.0
    files: dict[str, Seen] = field(default_factory=dict)  # by path relative to root
    by_folder: dict[str, dict[str, Seen]] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)  # folders whose files changed since last planned
    long_waiting: int = 0
    follow_up: bool = False  # the next rescan is the one that reads again a folder read too soon
    # Folder listings the last rescan read, so the next one reads only folders that changed (_walk).
    listings: dict[str, tuple[tuple[int, int, int], int, list[str]]] = field(default_factory=dict)

    def put(self, seen: Seen) -> None:
        self.files[seen.rel] = seen
        folder, _, name = seen.rel.rpartition(os.sep)
        self.by_folder.setdefault(folder, {})[name] = seen

    def drop(self, rel: str, *, dirty: bool = True) -> None:
        if self.files.pop(rel, None) is None:
            return
        folder, _, name = rel.rpartition(os.sep)
        files = self.by_folder.get(folder)
        if files is not None:
            files.pop(name, None)
            if not files:
                del self.by_folder[folder]
        if dirty:
            self.dirty.add(folder)


class _Enqueue(FileSystemEventHandler):
    """Runs in watchdog's thread: only enqueue, never decide."""

    def __init__(self, outbox: str, q: queue.SimpleQueue, skip: str | None = None,
                 on_event: Callable[[], None] = lambda: None) -> None:
        self.outbox, self.q, self.on_event = outbox, q, on_event
        self.skip = skip  # the private folder inside the outbox: its events are dropped here

    def dispatch(self, event: FileSystemEvent) -> None:
        if event.is_directory and event.event_type != "moved":
            return  # a folder opened (a rescan), made or changed: its files' own events say more
        if self.skip is not None and _below(event.src_path, self.skip) and \
                _below(getattr(event, "dest_path", "") or event.src_path, self.skip):
            return
        self.q.put((self.outbox, event.event_type, event.src_path, getattr(event, "dest_path", ""),
                    event.is_directory))
        self.on_event()

    def put(self, item: tuple[FileSystemEvent, ObservedWatch]) -> None:
        """As the event queue of an emitter (`_Emitter`): each event is dispatched at once."""
        self.dispatch(item[0])


GATHER = 0.005  # seconds the inotify reader lets events gather after reading some


class _GatheringInotifyFD(InotifyFD):
    """Watchdog's inotify reader, which after reading some events lets the next ones gather
    for a few milliseconds before it reads again: a folder being written fast (a burst, a
    scanner's pages) costs one wake-up of the reader and of the emitter per few
    milliseconds instead of one per event (issue 12: three of the daemon's context
    switches per document).  An idle reader waits in poll() as before; a stop is not
    delayed."""

    def run(self) -> None:
        while self.should_keep_running():
            events = self.read_events()
            for event in events:
                self.handle_event(event)
            if events:
                self.stopped_event.wait(GATHER)


class _Emitter:
    """One outbox watched by inotify: an inotify instance of its own with its reading thread
    (so that one outbox's flood of events, or a huge tree of folders made in it, holds up
    no other outbox's events), and watchdog's emitter thread, which turns them into
    watchdog's events and puts them straight on the intake's queue.  No observer thread in
    between: one thread hand-off less per event, two threads per outbox instead of three
    (issue 12)."""

    def __init__(self, root: Path, handler: _Enqueue) -> None:
        self._inotify = _GatheringInotifyFD()
        self._inotify.daemon = True
        self._inotify.start()
        self._emitter = InotifyEmitter(handler, ObservedWatch(str(root), recursive=True),
                                       inotify_fd=self._inotify)
        self._emitter.daemon = True
        try:
            self._emitter.start()  # adds the watches now: a folder that cannot be watched raises here
        except BaseException:
            self._inotify.stop()
            raise

    def stop(self) -> None:
        self._emitter.stop()
        self._inotify.stop()

    def join(self, timeout: float | None = None) -> None:
        self._emitter.join(timeout)
        self._inotify.join(timeout)

    def is_alive(self) -> bool:
        """An emitter whose folder was deleted stops itself (the folder checks pause the
        outbox); one that died otherwise is reported."""
        return self._inotify.is_alive() and (self._emitter.is_alive() or self._emitter.stopped_event.is_set())


def _below(path: str | bytes, folder: str) -> bool:
    p = os.fsdecode(path)
    return p == folder or p.startswith(folder + os.sep)


def _not_a_stop_race(record: logging.LogRecord) -> bool:
    """Watchdog logs an ERROR when an observer is stopped while its emitter reads events
    (a paused outbox, a reload): expected, and nothing was lost (a rescan follows)."""
    return "called when the thread is inactive" not in record.getMessage()


logging.getLogger("watchdog.observers.inotify").addFilter(_not_a_stop_race)


class _OverflowFlag(logging.Handler):
    """Watchdog reports a lost-events overflow only in its log; turn that into a rescan."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.tripped = False

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.tripped = True


class Watcher:
    """Work is driven by deadlines (SPEC 4.5): a waiting file is looked at when an event
    says it changed, when its settle deadline comes, or at a rescan; a file a writer holds
    open costs nothing until its writer closes it."""

    def __init__(self, clock=time.monotonic, *, file_names: bool = True) -> None:
        self.clock = clock
        self.file_names = file_names  # log.file_names: false keeps names out of the 10-minute warning
        self.outboxes: dict[str, WatchedOutbox] = {}
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self._deadlines: list[tuple[float, int, str, str]] = []  # (when, seq, outbox, rel)
        self._seq = itertools.count()
        self._next_sweep = 0.0
        # Called from watchdog's threads after an event is queued: the intake wakes for it
        # instead of looking every tenth of a second (an idle daemon stays idle).
        self.on_event: Callable[[], None] = lambda: None
        # Called between two files of a rescan or a settle check: the intake lets another
        # stage have its turn there (turns.py).
        self.breathe: Callable[[], None] = lambda: None
        self._overflow = _OverflowFlag()
        logging.getLogger("watchdog.observers.inotify_c").addHandler(self._overflow)
        logging.getLogger("watchdog.observers.inotify").addHandler(self._overflow)

    def add(self, name: str, root: Path, *, settle: float, rescan: float, polling: bool,
            private: Path | None = None) -> None:
        skip = None
        if private is not None and root in private.parents:
            skip = str(private.relative_to(root))
        wo = WatchedOutbox(name, root, settle, rescan, polling, skip)
        self.outboxes[name] = wo
        handler = _Enqueue(name, self.q, str(root / skip) if skip else None, self.on_event)
        if polling:  # lstat, so that a linked folder is never descended into (SPEC 4.5)
            interval = max(0.2, min(1.0, settle / 2))
            observer = PollingObserverVFS(os.lstat, os.scandir, polling_interval=interval)
            observer.schedule(handler, str(root), recursive=True)
            observer.daemon = True
            observer.start()
            wo.observer = observer
        else:
            wo.observer = _Emitter(root, handler)
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

    def drain(self, limit: int = 20000) -> int:
        n = 0
        while n < limit:
            try:
                outbox, kind, src, dest, is_dir = self.q.get_nowait()
            except queue.Empty:
                break
            n += 1
            self.breathe()
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
                for seen in wo.files.values():  # open/close counts may have lost their close
                    seen.opens = seen.closes = 0
        return n

    def _schedule(self, wo: WatchedOutbox, seen: Seen, when: float) -> None:
        seen.check_at = when
        heapq.heappush(self._deadlines, (when, next(self._seq), wo.name, seen.rel))

    def _touch(self, wo: WatchedOutbox, path: str, *, kind: str) -> None:
        try:
            rel = relative(path, str(wo.root))
        except ValueError:
            return
        seen = wo.files.get(rel)
        # A file already known passed these checks when it was first seen (here or in a
        # rescan); most events are of known files (issue 12).
        if seen is None and (rel.startswith("..") or rel == "." or is_ignored(rel)):
            return
        now = self.clock()
        folder = rel.rpartition(os.sep)[0]
        if kind == "gone":
            if seen is not None and not os.path.lexists(path):
                wo.drop(rel)
            return
        if seen is None:
            sig = _signature(path)
            if sig is None or stat.S_ISDIR(sig[3]):
                return
            seen = Seen(wo.name, rel, sig, now, now)
            wo.put(seen)
        if kind == "opened":
            seen.opens += 1
            seen.open_signal = True
            return  # held: looked at again when it is closed
        if kind in ("closed", "closed_write"):
            seen.closes += 1
            if seen.closes > seen.opens:  # opened before the watch began: no signal to count
                seen.opens = seen.closes = 0
            if kind == "closed":
                if seen.ready:
                    wo.dirty.add(folder)  # only read (by us or anyone): still settled
                elif not seen.held_open and seen.check_at is None:
                    self._schedule(wo, seen, max(now, seen.changed_at + wo.settle))
                return
        seen.changed_at = now
        if seen.settled_at is not None:
            seen.settled_at = None
            wo.dirty.add(folder)
        if not seen.held_open:
            self._schedule(wo, seen, now + wo.settle)

    # -- rescans and settling -------------------------------------------------------

    def rescan(self, wo: WatchedOutbox) -> None:
        now = self.clock()
        wo.next_rescan = now + wo.rescan
        follow_up, wo.follow_up = wo.follow_up, False
        found: set[str] = set()
        for rel, sig in _walk(wo.root, wo.skip, wo.listings):
            self.breathe()
            found.add(rel)
            seen = wo.files.get(rel)
            if seen is None:
                seen = Seen(wo.name, rel, sig, now, now)
                wo.put(seen)
                self._schedule(wo, seen, now + wo.settle)
            elif sig != seen.sig and seen.check_at is None and not seen.held_open:
                self._schedule(wo, seen, now)  # changed without an event: the check sees it
        for rel in [r for r in wo.files if r not in found]:
            if not os.path.lexists(wo.root / rel):
                wo.drop(rel)
        # Every folder is planned again once per rescan: whatever a lost event or a failed
        # turn left waiting is taken within one rescan period (SPEC 4.1).
        wo.dirty.update(wo.by_folder)
        if not follow_up and any(listed - max(key[1], key[2]) <= TRUST_AFTER_NS
                                 for key, listed, _ in wo.listings.values()):
            # A folder changed just before it was read (at start: the private folder's probe):
            # read once more soon, so the rescans after it need not read it (_walk).
            wo.next_rescan = min(wo.next_rescan, now + TRUST_AFTER_NS / 1e9 + 0.2)
            wo.follow_up = True

    def tick(self, budget: float = 0.2) -> None:
        """Rescans that are due, then settle deadlines that have come, for at most about
        `budget` seconds: what is left waits for the next call."""
        now = self.clock()
        for wo in self.outboxes.values():
            if now >= wo.next_rescan - (0.0 if wo.follow_up else RESCAN_EARLY):  # due together: one wake-up
                self.rescan(wo)
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_EVERY
            self._sweep_long_waiting(now)
        end = time.monotonic() + budget
        while self._deadlines and self._deadlines[0][0] <= now:
            when, _, outbox, rel = heapq.heappop(self._deadlines)
            wo = self.outboxes.get(outbox)
            seen = wo.files.get(rel) if wo else None
            if wo is None or seen is None or seen.check_at != when:
                continue  # stale: rescheduled or gone since
            seen.check_at = None
            self._check(wo, seen, now)
            self.breathe()
            if time.monotonic() > end:
                break

    def _check(self, wo: WatchedOutbox, seen: Seen, now: float) -> None:
        folder = seen.rel.rpartition(os.sep)[0]
        path = os.path.join(wo.root, seen.rel)  # a string: no Path made per look (issue 12)
        sig = _signature(path)
        if sig is None or stat.S_ISDIR(sig[3]):
            wo.drop(seen.rel)
            return
        if sig != seen.sig:
            if sig[2] != seen.ino:  # a new file under the same name
                seen.opens = seen.closes = 0
            seen.sig, seen.changed_at = sig, now
            if seen.settled_at is not None:
                seen.settled_at = None
                wo.dirty.add(folder)
            if not seen.held_open:
                self._schedule(wo, seen, now + wo.settle)
            return
        if seen.held_open or seen.settled_at is not None:
            return
        if now - seen.changed_at < wo.settle:
            self._schedule(wo, seen, seen.changed_at + wo.settle)
            return
        if open_for_writing(path, sig):
            # A writer we had no event for still holds it: look again later, less often
            # the longer it stays open, so that many such files cost little.
            seen.lease_holds += 1
            self._schedule(wo, seen, now + min(wo.rescan, wo.settle * 2 ** min(seen.lease_holds, 16)))
            return
        seen.lease_holds = 0
        seen.settled_at = now
        wo.dirty.add(folder)

    def _sweep_long_waiting(self, now: float) -> None:
        for wo in self.outboxes.values():
            late = [s for s in wo.files.values() if now - s.first_seen > LONG_WAIT]
            wo.long_waiting = len(late)
            new = [s for s in late if not s.warned]
            for s in new:
                s.warned = True
            if new:
                held = sum(1 for s in new if s.held_open)
                examples = f", e.g. {', '.join(shown(s.rel) for s in new[:3])}" if self.file_names else ""
                log.warning("%s: %d file(s) have waited more than 10 minutes (%d still open by their writer, "
                            "the others still changing or waiting for a sidecar or destination)%s",
                            wo.name, len(new), held, examples)

    def next_deadline(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None

    def next_due(self) -> float:
        """When `tick` next has something to do (on `clock`), events aside."""
        due = [self._next_sweep, *(wo.next_rescan for wo in self.outboxes.values())]
        if self._deadlines:
            due.append(self._deadlines[0][0])
        return min(due)

    def forget(self, outbox: str, rel: str) -> None:
        """Called when a file has been claimed: a file later found at this name is new."""
        wo = self.outboxes.get(outbox)
        if wo is not None:
            wo.drop(rel, dirty=False)

    def take_dirty(self, outbox: str) -> set[str]:
        """Folders whose files changed since the last call: the ones worth planning again."""
        wo = self.outboxes[outbox]
        dirty, wo.dirty = wo.dirty, set()
        return dirty

    def mark_all_dirty(self, outbox: str) -> None:
        """Every folder with waiting files is planned again (the outbox's settings changed)."""
        wo = self.outboxes.get(outbox)
        if wo is not None:
            wo.dirty.update(wo.by_folder)

    def files_in(self, outbox: str, folder: str) -> dict[str, Seen]:
        return self.outboxes[outbox].by_folder.get(folder, {})

    def folders(self, outbox: str) -> Iterator[tuple[str, dict[str, Seen]]]:
        """The files seen, grouped by folder (relative to the outbox root)."""
        yield from list(self.outboxes[outbox].by_folder.items())

    def waiting(self, outbox: str) -> int:
        return len(self.outboxes[outbox].files)

    def long_waiting(self, outbox: str) -> int:
        return self.outboxes[outbox].long_waiting


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


def open_for_writing(path: str | Path, sig: tuple[int, int, int, int]) -> bool:
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


RESCAN_EARLY = 1.0  # seconds a rescan may come early to share a wake-up with another outbox's
SWEEP_EVERY = 30.0  # how often files waiting over ten minutes are counted
_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
TRUST_AFTER_NS = 1_000_000_000  # a listing is reused only if its folder had not changed for this long


Listings = dict[str, tuple[tuple[int, int, int], int, list[str]]]


def _walk(root: Path, skip: str | None = None,
          listings: Listings | None = None) -> Iterator[tuple[str, tuple[int, int, int, int]]]:
    """Every file below root with its signature.  Folders are opened with O_NOFOLLOW from
    the root down and listed by descriptor, so a link never leads the walk out (SPEC 4.5).

    `listings` (rel_dir -> (inode, mtime, ctime), when listed, names) lets a rescan skip
    reading a folder whose entries cannot have changed: its mtime and ctime (which no
    writer can set back) are those of the last listing, made more than a second after
    them.  Such a folder is only opened with O_PATH and its files stat'ed, which raises
    no inotify event: an idle daemon's rescans then wake none of the watcher's threads."""
    try:
        top = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    stack = [("", top)]
    found: set[str] = set()
    try:
        while stack:
            rel_dir, fd = stack.pop()
            found.add(rel_dir)
            names = _names(fd, rel_dir, listings)
            for name in names:
                rel = os.path.join(rel_dir, name) if rel_dir else name
                if name == LEGACY_JOB_DIR or is_ignored(rel) or rel == skip:
                    continue
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    try:
                        stack.append((rel, os.open(name, _PATH_DIR, dir_fd=fd)))
                    except OSError:
                        pass
                    continue
                yield rel, (st.st_size, st.st_mtime_ns, st.st_ino, st.st_mode)
            os.close(fd)
    finally:
        for _rel, fd in stack:
            os.close(fd)
    if listings is not None:
        for gone in listings.keys() - found:
            del listings[gone]


def _names(fd: int, rel_dir: str, listings: Listings | None) -> list[str]:
    try:
        st = os.fstat(fd)
        key = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        known = listings.get(rel_dir) if listings is not None else None
        changed = max(st.st_mtime_ns, st.st_ctime_ns)
        if known is not None and known[0] == key and known[1] - changed > TRUST_AFTER_NS:
            return known[2]
        listed_at = time.time_ns()
        rfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
        try:
            with os.scandir(rfd) as it:
                names = [e.name for e in it]
        finally:
            os.close(rfd)
    except OSError:
        return []
    if listings is not None:
        listings[rel_dir] = (key, listed_at, names)
    return names
