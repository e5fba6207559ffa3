"""The job database: the only module with SQL, and the only one that changes job state.

Every state change is written in one transaction together with its event, and every
step that has a side effect outside the database (renaming files, calling iFax) first
commits its intent here.  After a crash, the rows say exactly which side effects may
have happened and `recover` puts each job back where it can be finished.

Times are Unix seconds (UTC) as REAL; they are formatted only at the edges.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import orjson
import sqlite_utils

from gateway.errors import InvalidTransition, JobNotFound, StoreError
from gateway.names import shown
from gateway.spool import make_dirs_synced

log = logging.getLogger("gateway.store")

SCHEMA_VERSION = 4
VACUUM_AT_START_MAX = 64 * 2**20  # bytes: an older database up to this size switches to incremental vacuum
HOUR = 3600.0  # max_faxes_per_hour's rolling window
EVENTS_PER_INSERT = 200  # rows of one INSERT: 1,000 values, far below SQLite's limit
_T = TypeVar("_T")
_R = TypeVar("_R")
RECIPIENT_COUNTS = 100_000  # jobs whose recipient count is kept in memory (a few MB at most)
GROUP_WAIT = 0.02  # seconds a finished write waits at most for writers joining its commit
COMMITTER_QUIET = 5  # looks with nothing to commit before the committer waits to be woken

# Schema 4: AUTOINCREMENT, so that a job id is never given twice, not even the id of a row
# that was deleted (an abandoned claim, retention): an id names the job's folder and its
# result file, and a reused one could pick up another job's documents (SPEC 4.5).
_JOBS_DDL = """CREATE TABLE {if_not_exists}"{name}" (
   "id" INTEGER PRIMARY KEY AUTOINCREMENT,
   "outbox" TEXT NOT NULL,
   "outbox_path" TEXT,
   "state" TEXT NOT NULL,
   "phase" TEXT NOT NULL,
   "reason" TEXT,
   "reason_code" TEXT,
   "simulated" INTEGER,
   "rel_dir" TEXT,
   "sources" TEXT,
   "documents" TEXT,
   "sidecar" TEXT,
   "primary_name" TEXT,
   "options" TEXT,
   "sha256" TEXT,
   "pages" INTEGER,
   "created_at" REAL,
   "settled_at" REAL,
   "completed_at" REAL,
   "filed_to" TEXT,
   "filed_root" TEXT,
   "filed_suffix" INTEGER,
   "sent_root" TEXT,
   "failed_root" TEXT,
   "kinds" TEXT,
   "private_root" TEXT,
   "swept_at" REAL,
   "notify_pending" INTEGER
)"""


class JobState(StrEnum):
    """States of SPEC 5.  A StrEnum, so that the database, JSON and comparisons with the
    spec's words all see the plain word."""

    QUEUED = "queued"
    SUBMITTING = "submitting"
    RETRY_WAIT = "retry_wait"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELED = "canceled"
    REJECTED = "rejected"


S = JobState
# Recipient states, least advanced first (a job shows its least advanced one).
ACTIVE_ORDER = (S.QUEUED, S.SUBMITTING, S.RETRY_WAIT, S.SENDING)
RECIPIENT_FINAL = (S.DELIVERED, S.FAILED, S.CANCELED)
JOB_STATES = ACTIVE_ORDER + RECIPIENT_FINAL + (S.REJECTED,)
JOB_FINAL = RECIPIENT_FINAL + (S.REJECTED,)

# Every change a recipient may make.  Anything else is a bug and raises, in the same
# transaction, so the database never records an impossible history.
RECIPIENT_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.QUEUED: frozenset({S.SUBMITTING, S.CANCELED, S.FAILED}),
    S.SUBMITTING: frozenset({S.SENDING, S.QUEUED, S.RETRY_WAIT, S.FAILED}),
    S.RETRY_WAIT: frozenset({S.SUBMITTING, S.CANCELED, S.FAILED}),
    S.SENDING: frozenset({S.DELIVERED, S.FAILED, S.CANCELED, S.RETRY_WAIT}),
    S.FAILED: frozenset({S.QUEUED, S.RETRY_WAIT}),      # sent again at the operator's request
    S.CANCELED: frozenset({S.QUEUED, S.RETRY_WAIT}),
    S.DELIVERED: frozenset(),
}
# A job's state follows from its recipients; these are the changes that can follow.
_ANY_ACTIVE_OR_ENDED = frozenset(ACTIVE_ORDER + RECIPIENT_FINAL)
JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.QUEUED: _ANY_ACTIVE_OR_ENDED | {S.REJECTED},
    S.SUBMITTING: _ANY_ACTIVE_OR_ENDED,
    S.RETRY_WAIT: _ANY_ACTIVE_OR_ENDED,
    S.SENDING: _ANY_ACTIVE_OR_ENDED,
    S.FAILED: frozenset(ACTIVE_ORDER),
    S.CANCELED: frozenset(ACTIVE_ORDER),
    S.DELIVERED: frozenset(),
    S.REJECTED: frozenset(),
}


def check_transition(table: dict[JobState, frozenset[JobState]], old: str, new: str, what: str) -> None:
    if old == new:
        return
    # A state's text finds its member (a StrEnum hashes and compares as its value), so no
    # JobState is built: several checks a document (issue 12).  A text that is no state
    # is in no set: refused as a transition that cannot be (it was a ValueError before).
    if new not in table.get(old, ()):  # type: ignore[call-overload]
        raise InvalidTransition(f"{what} cannot go from {old} to {new}")


class Phase(StrEnum):
    """Where a job's files are: in the outbox (claiming), in its private folder (held),
    being moved to sent/ or failed/ (filing), there with their result file (filed), or
    being taken back from failed/ to be sent again (unfiling)."""

    CLAIMING = "claiming"
    HELD = "held"
    FILING = "filing"
    FILED = "filed"
    UNFILING = "unfiling"


PHASES = tuple(Phase)
STAGES = ("intake", "claim", "filing")


def _name_in(name: str | None) -> bytes | None:
    """Names are bytes (SPEC 4.5): stored as BLOBs so any name round-trips exactly."""
    return None if name is None else os.fsencode(name)


def _name_out(value: Any) -> Any:
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _shown(text: str | None) -> str | None:
    """Free text for people (reasons, event details) never carries raw control
    characters or undecodable bytes, whatever names it quotes."""
    return None if text is None else shown(text)


@dataclass(frozen=True)
class Blocked:
    """An item a stage cannot act on yet (SPEC 4.5), as the CLI and /healthz show it."""

    outbox: str
    stage: str
    item: str          # the path as shown (escaped)
    reason: str
    since: float
    job_id: int | None


@dataclass(frozen=True)
class SourceFile:
    """A file as it was seen in the outbox when its claim was decided."""

    name: str
    ino: int
    size: int
    mtime_ns: int


@dataclass
class Recipient:
    id: int
    job_id: int
    number: str
    state: str
    attempts: int
    ifax_job_id: str | None
    pages: int | None
    transferred_pages: int | None
    cost: float | None
    code: Any
    message: str | None
    accepted_at: float | None
    next_action_at: float | None
    send_at: float | None = None
    call_start: float | None = None       # faxCallStart of the last status read
    stale_call_start: float | None = None  # a reused jobId's old faxCallStart (SPEC 6.2)
    awaiting_fresh: bool = False           # resent under the same jobId, not yet seen anew
    last_ok_poll_at: float | None = None
    sending_seconds: float = 0.0           # successful-polling time counted for give_up_after
    given_up: bool = False
    all_ifax_job_ids: list[str] = field(default_factory=list)  # every attempt's, for fax-delete


@dataclass
class Job:
    id: int
    outbox: str
    outbox_path: str
    state: str
    phase: str
    reason: str | None
    reason_code: str | None
    simulated: bool
    rel_dir: str
    sources: list[SourceFile]
    documents: list[str]
    sidecar: str | None
    primary: str
    options: dict[str, Any]
    sha256: list[str | None]
    pages: int | None
    created_at: float
    settled_at: float | None
    completed_at: float | None
    filed_to: str | None
    filed_root: str | None
    filed_suffix: int | None
    sent_root: str | None = None     # recorded at the claim, so a job outlives its outbox's config
    failed_root: str | None = None
    private_root: str = ""           # the private folder its files wait in (SPEC 4.4)
    kinds: list[str] = field(default_factory=list)  # each document's detected type
    recipients: list[Recipient] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """Every file of the job in its folder: documents, then the sidecar."""
        return [s.name for s in self.sources]


def _now() -> float:
    return time.time()


class _Write:
    """A write of the store (`Store.transaction`, `Store.batch`): joins the transaction
    other writers share, or begins one, and on leaving commits it or waits for its commit
    (see "transactions: group commit" in Store).  A class, not a generator: it is entered
    about ten times per document, and the generator's own machinery cost more than the
    bookkeeping it does (issue 12)."""

    __slots__ = ("store", "durable", "batch", "gen", "joined")

    def __init__(self, store: Store, durable: bool, *, batch: bool) -> None:
        self.store, self.durable, self.batch = store, durable, batch

    def __enter__(self) -> sqlite3.Connection:
        s = self.store
        with s._entry:
            s._waiting += 1
        s._lock.acquire()
        try:
            with s._entry:
                s._waiting -= 1
            if not s._open:
                s.conn.execute("BEGIN IMMEDIATE")
                s._open, s._opened_at, s._members = True, time.monotonic(), 0
                s._gen += 1
            self.gen, self.joined = s._gen, s._members > 0
            s._members += 1
            if self.joined:
                s.conn.execute("SAVEPOINT joined")
        except BaseException:
            s._lock.release()
            raise
        s._events = []
        if self.batch:
            s._local.batch = True
        return s.conn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        s = self.store
        try:
            if self.batch:
                s._local.batch = False
            if exc is not None:
                s._events = None
                s._undo(self.gen, self.joined, exc)
                return  # the block's exception goes on
            try:
                s._flush_events()
            except BaseException as failed:
                s._events = None
                s._undo(self.gen, self.joined, failed)  # in here: an error of its own chains to this one
                raise
            s._events = None
            if self.joined:
                s.conn.execute("RELEASE joined")
            if self.durable:
                s._await_commit(self.gen)
            else:
                s._commit_soon()
        finally:
            s._lock.release()


class Store:
    """SQLite job store.  One connection, serialised by a lock: SQLite allows one writer
    at a time anyway, and a single connection keeps every transaction's view simple."""

    def __init__(self, path: str | Path, *, readonly: bool = False, immutable: bool = False,
                 migrate: bool = True) -> None:
        """`readonly` opens with `mode=ro`; `immutable` (read-only too) tells SQLite that
        nobody changes the file, so it needs no lock and no -shm: see `open_for_reading`.
        `migrate=False`: the daemon already brought the schema up to date (intakeproc.py)."""
        self.path = Path(path)
        self.readonly = readonly or immutable
        self._lock = threading.RLock()
        # Group commit (`_Write`): the transaction writers share, and who waits for it.
        self._done = threading.Condition(self._lock)
        self._entry = threading.Lock()
        self._local = threading.local()
        self._waiting = 0      # writers waiting to get in: the last one in commits
        self._open = False
        self._opened_at = 0.0
        self._members = 0
        self._gen = 0          # the number of the open (or last) transaction
        self._completed = 0    # the last transaction committed or rolled back
        self._failures: dict[int, BaseException] = {}
        self._kick = threading.Condition(self._lock)  # wakes the committer (`_commit_soon`)
        self._commit_due: float | None = None
        self._committer: threading.Thread | None = None
        self._committer_idle = False  # it waits for a notify, not for its next look (`_commit_later`)
        self._closing = False
        self._pruned: dict[str, float] = {}  # outbox -> when its old submissions rows go next
        # job id -> how many recipients it has (fixed once accepted): a job with one has
        # that recipient's state, so changing it needs no read to derive the job's.  A job
        # is dropped when it ends, so the daemon's memory does not grow with the jobs it has
        # finished (a job sent again is counted again; a missing count only costs a read).
        self._recipient_counts: dict[int, int] = {}
        # Events of the write under way (it holds the lock), inserted together at its end.
        self._events: list[tuple[Any, ...]] | None = None
        try:
            if self.readonly:
                if not self.path.exists():
                    raise StoreError(f"database {self.path} does not exist yet: start the daemon first")
                mode = "immutable=1" if immutable else "mode=ro"
                conn = sqlite3.connect(f"file:{urllib.parse.quote(str(self.path))}?{mode}", uri=True,
                                       isolation_level=None, check_same_thread=False, timeout=10)
                try:
                    # SQLite opens lazily: this read is where a database this user may not read fails.
                    conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
                except sqlite3.Error:
                    conn.close()
                    raise
            else:
                make_dirs_synced(self.path.parent)
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=10)
                # Takes effect only in a new, empty database; an older one is switched by
                # `_switch_to_incremental_vacuum` (retention frees pages: the file must shrink).
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                # The savepoint journals of shared transactions (`_Write`) stay in memory:
                # on disk, each one was a temporary file created, written and deleted in
                # /var/tmp, a dozen system calls per document (issue 12).  They are small:
                # the pages one transaction changes.
                conn.execute("PRAGMA temp_store=MEMORY")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from exc
        conn.row_factory = sqlite3.Row
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        if not self.readonly and migrate:
            self._migrate()

    @classmethod
    def open_for_reading(cls, path: str | Path) -> Store:
        """For the commands that only read (`jobs`, `show`): never writes, never needs the daemon.

        `mode=ro` first: it sees what a running daemon has committed (through its -wal and
        -shm).  For a user who may only read, it fails once the daemon has stopped cleanly,
        because SQLite would have to create the -wal and -shm beside the database.  Then, and
        only if no daemon holds the database and no -wal file exists (so the database file
        alone is the whole truth and nobody changes it), `immutable=1` reads the file as it
        is.  The lock probe runs with no connection of ours open: closing its descriptor
        would drop the POSIX locks SQLite holds on the file (dblock.py)."""
        try:
            return cls(path, readonly=True)
        except StoreError as exc:
            if not Path(path).exists():
                raise
            first = exc
        from gateway.dblock import DatabaseLock
        if DatabaseLock(Path(path)).held_by_another():
            raise StoreError(f"cannot read database {path} while the daemon runs ({first.__cause__}): "
                             "run as a user who may read the database and its -wal and -shm files")
        if Path(os.path.realpath(path) + "-wal").exists():  # SQLite keeps it beside the real file
            raise StoreError(f"cannot read database {path}: the daemon stopped without closing it, and "
                             "its -wal file can only be read by a user who may write beside it; start the "
                             "daemon, or run this as its user")
        return cls(path, immutable=True)

    @property
    def has_jobs_table(self) -> bool:
        """False for a database file the daemon created but never set up (its start failed)."""
        return self.has_table("jobs")

    def has_table(self, name: str) -> bool:
        """For readers of a database an older version wrote (no `blocked` table yet)."""
        with self._lock:
            return self.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                                     (name,)).fetchone() is not None

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._kick.notify_all()
            self.flush()
            self.conn.close()

    # -- schema ---------------------------------------------------------------------

    def _migrate(self) -> None:
        db = self.db
        db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
        self._refuse_newer_schema()
        self.conn.execute(_JOBS_DDL.format(if_not_exists="IF NOT EXISTS ", name="jobs"))
        db["recipients"].create({
            "id": int, "job_id": int, "position": int, "number": str, "state": str,
            "attempts": int, "ifax_job_id": str, "pages": int, "transferred_pages": int,
            "cost": float, "code": str, "message": str, "accepted_at": float,
            "next_action_at": float, "updated_at": float,
        }, pk="id", foreign_keys=[("job_id", "jobs", "id")], if_not_exists=True,
            defaults={"attempts": 0})
        db["events"].create({
            "id": int, "job_id": int, "recipient_id": int, "at": float, "state": str,
            "detail": str,
        }, pk="id", foreign_keys=[("job_id", "jobs", "id")], if_not_exists=True)
        have = {c.name for c in db["recipients"].columns}
        for name, kind in (("send_at", float), ("call_start", float), ("stale_call_start", float),
                           ("awaiting_fresh", int), ("last_ok_poll_at", float),
                           ("sending_seconds", float), ("given_up", int), ("ifax_job_ids", str),
                           ("prior_cost", float)):
            if name not in have:  # schema 1 databases
                db["recipients"].add_column(name, kind)
        have = {c.name for c in db["jobs"].columns}
        for name, kind in (("sent_root", str), ("failed_root", str), ("kinds", str), ("private_root", str),
                           ("swept_at", float), ("notify_pending", int)):
            if name not in have:  # schema 2 and 3 databases; swept_at (retention.py), notify_pending
                db["jobs"].add_column(name, kind)
        if "AUTOINCREMENT" not in (db["jobs"].schema or "").upper():  # schema 3 databases
            self._rebuild_jobs_with_autoincrement()
        db["blocked"].create({
            "id": int, "outbox": str, "stage": str, "item": str, "reason": str, "since": float,
            "job_id": int,
        }, pk="id", if_not_exists=True)
        db["blocked"].create_index(["outbox", "stage", "item"], unique=True, if_not_exists=True)
        self._maintain_job_counts()
        # Start-up asks for jobs claimed before private folders (private.py): without this
        # partial index that question scans every job ever kept (a second at a million).
        self.conn.execute("CREATE INDEX IF NOT EXISTS jobs_legacy_private ON jobs(outbox, id)"
                          " WHERE private_root IS NULL")
        # The highest collision suffix used per folder and name (SPEC 4.4): the next filing of
        # a name filed 10,000 times starts there instead of trying every earlier N.
        self.conn.execute("CREATE TABLE IF NOT EXISTS suffixes (folder BLOB NOT NULL, name BLOB NOT NULL,"
                          " n INTEGER NOT NULL, PRIMARY KEY (folder, name))")
        db["requests"].create({
            "id": int, "job_id": int, "action": str, "created_at": float, "done_at": float,
            "ok": int, "outcome": str,
        }, pk="id", if_not_exists=True)
        db["requests"].create_index(["done_at"], if_not_exists=True)
        # Submissions of the last hour per outbox, for max_faxes_per_hour: a row per request
        # that iFax accepted or may have accepted (resends too), pruned as it leaves the hour,
        # so counting never costs more than the cap itself.
        db["submissions"].create({"id": int, "outbox": str, "recipient_id": int, "at": float},
                                 pk="id", if_not_exists=True)
        db["submissions"].create_index(["outbox", "at"], if_not_exists=True)
        db["submissions"].create_index(["recipient_id"], if_not_exists=True)
        # Indexes keep the daemon's hot queries proportional to the active jobs, never to
        # the history kept in the database (SPEC 6.4, 8).
        db["jobs"].create_index(["state"], if_not_exists=True)
        db["jobs"].create_index(["phase"], if_not_exists=True)
        # Which jobs were simulated never changes: an index with the state in it (the first
        # version's) changed with every state change of every job (issue 12).
        self.conn.execute("DROP INDEX IF EXISTS idx_jobs_simulated_state")
        db["jobs"].create_index(["simulated"], if_not_exists=True)
        db["recipients"].create_index(["state", "next_action_at"], if_not_exists=True)
        db["recipients"].create_index(["job_id"], if_not_exists=True)
        db["recipients"].create_index(["ifax_job_id"], if_not_exists=True)
        db["events"].create_index(["job_id"], if_not_exists=True)
        # The status page's search (status.py): a number finds its newest jobs, and a file name
        # typed whole finds the jobs named after it, by index, however long the history.  No
        # new schema version: an index changes no table, and an older fax-gateway reads and
        # writes the database as before.
        db["recipients"].create_index(["number", "job_id"], if_not_exists=True)
        db["jobs"].create_index(["primary_name"], if_not_exists=True)
        # Retention (retention.py) finds what is old enough from these, never by walking
        # sent/ or failed/: only filed jobs are in them, and swept ones leave the first.
        self.conn.execute("CREATE INDEX IF NOT EXISTS jobs_to_sweep ON jobs(filed_to, completed_at)"
                          " WHERE phase='filed' AND swept_at IS NULL")
        self.conn.execute("CREATE INDEX IF NOT EXISTS jobs_filed_completed ON jobs(completed_at)"
                          " WHERE phase='filed'")
        # Partial: only notifications still owed are in it, so finding them costs nothing
        # however many jobs were filed.
        self.conn.execute("CREATE INDEX IF NOT EXISTS idx_jobs_notify_pending ON jobs(id)"
                          " WHERE notify_pending=1")
        self.conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                          (str(SCHEMA_VERSION),))
        version = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
        if int(version) > SCHEMA_VERSION:
            raise StoreError(f"database {self.path} was written by a newer fax-gateway "
                             f"(schema {version}); upgrade fax-gateway")
        self.conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
        self._switch_to_incremental_vacuum()

    def _switch_to_incremental_vacuum(self) -> None:
        """A database made before retention has `auto_vacuum=NONE`: pages that deleted jobs
        free would stay in the file for ever.  Switching needs one full VACUUM, which
        rewrites the file; done here, at start-up, only while the file is small enough
        that it takes well under a second.  A larger one keeps working and is switched by
        the operator (README, "Retention"), since a long VACUUM would delay start-up."""
        if self.conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 0:
            return
        try:
            size = self.path.stat().st_size
        except OSError:
            return
        if size <= VACUUM_AT_START_MAX:
            try:
                self.conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
                self.conn.execute("VACUUM")
            except sqlite3.OperationalError:
                pass  # busy (a daemon is writing it): switched at the daemon's next start

    def shrinks(self) -> bool:
        """Whether freed pages can be given back to the filesystem (incremental vacuum)."""
        with self._lock:
            return bool(self.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2)

    def give_back_pages(self, pages: int) -> int:
        """Return up to `pages` free pages to the filesystem, a short step at a time so the
        other stages wait at most milliseconds; returns how many free pages remain.  In WAL
        mode the file shrinks once the log is checkpointed, done when none remain."""
        with self._lock:
            self.flush()  # PRAGMAs below must not run inside the writers' shared transaction
            if not self.shrinks():
                return 0
            self.conn.execute(f"PRAGMA incremental_vacuum({int(pages)})").fetchall()
            left = int(self.conn.execute("PRAGMA freelist_count").fetchone()[0])
            if left == 0:
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            return left

    def _maintain_job_counts(self) -> None:
        """fax_gateway_jobs must be exact and cost the same with a million jobs as with ten
        (SPEC 8): a small table of counts, kept by triggers in the same transaction as every
        insert, state change and delete of a job, whichever code path makes it.  Filled from
        the jobs once when it is new (or its triggers were lost with a rebuilt table).

        Every state has its row, so the triggers only add and subtract: an upsert per
        change (the first version) made a job's state change cost half again as much
        (issue 12).  Triggers of that version are replaced; the counts they kept stand."""
        c = self.conn
        have = {r[0]: r[1] or "" for r in c.execute(
            "SELECT name, sql FROM sqlite_master WHERE type IN ('table','trigger')")}
        triggers = ("jobs_count_insert", "jobs_count_update", "jobs_count_delete")
        fresh = "job_counts" not in have or any(t not in have for t in triggers)
        upserts = not fresh and any("ON CONFLICT" in have[t].upper() for t in triggers)
        # A state without its row is not counted by these triggers (an earlier version may
        # have rebuilt the table from the states it had seen): each is counted once below.
        missing = fresh or not {str(s) for s in JOB_STATES} <= {
            r[0] for r in c.execute("SELECT state FROM job_counts")}
        if not upserts and not missing:
            return
        with self.transaction():
            c.execute("CREATE TABLE IF NOT EXISTS job_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL)")
            if fresh:
                c.execute("DELETE FROM job_counts")
                c.execute("INSERT INTO job_counts(state, n) SELECT state, COUNT(*) FROM jobs GROUP BY state")
            for state in JOB_STATES:  # a row kept stays; a missing one is counted (by the index)
                c.execute("INSERT OR IGNORE INTO job_counts(state, n)"
                          " SELECT ?, COUNT(*) FROM jobs WHERE state=?", (str(state), str(state)))
            for t in triggers:
                c.execute(f"DROP TRIGGER IF EXISTS {t}")
            c.execute("CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN"
                      " UPDATE job_counts SET n = n + 1 WHERE state = NEW.state; END")
            c.execute("CREATE TRIGGER jobs_count_update AFTER UPDATE OF state ON jobs"
                      " WHEN OLD.state IS NOT NEW.state BEGIN"
                      " UPDATE job_counts SET n = n - 1 WHERE state = OLD.state;"
                      " UPDATE job_counts SET n = n + 1 WHERE state = NEW.state; END")
            c.execute("CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN"
                      " UPDATE job_counts SET n = n - 1 WHERE state = OLD.state; END")

    def _refuse_newer_schema(self) -> None:
        """Before anything changes: a database of a newer version is left as it is."""
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise StoreError(f"database {self.path} was written by a newer fax-gateway "
                             f"(schema {row[0]}); upgrade fax-gateway")

    def _rebuild_jobs_with_autoincrement(self) -> None:
        """Schema 3 to 4.  SQLite cannot add AUTOINCREMENT to a table, so `jobs` is built
        again in one transaction (SQLite's documented way: new table, copy, drop, rename,
        indexes), with foreign keys off meanwhile, since recipients and events refer to
        `jobs` by name.  The sequence starts at the highest id, so no id is given twice."""
        c = self.conn
        c.execute("PRAGMA foreign_keys=OFF")  # only outside a transaction does this take effect
        try:
            with self.transaction():
                indexes = [r[0] for r in c.execute("SELECT sql FROM sqlite_master WHERE type='index'"
                                                   " AND tbl_name='jobs' AND sql IS NOT NULL")]
                old = {r[1] for r in c.execute('PRAGMA table_info("jobs")')}
                c.execute('DROP TABLE IF EXISTS "jobs_rebuilt"')
                c.execute(_JOBS_DDL.format(if_not_exists="", name="jobs_rebuilt"))
                cols = ", ".join(f'"{r[1]}"' for r in c.execute('PRAGMA table_info("jobs_rebuilt")')
                                 if r[1] in old)
                c.execute(f'INSERT INTO "jobs_rebuilt" ({cols}) SELECT {cols} FROM "jobs"')
                c.execute('DROP TABLE "jobs"')
                c.execute('ALTER TABLE "jobs_rebuilt" RENAME TO "jobs"')
                for sql in indexes:
                    c.execute(sql)
                c.execute("DELETE FROM sqlite_sequence WHERE name IN ('jobs', 'jobs_rebuilt')")
                c.execute("INSERT INTO sqlite_sequence(name, seq)"
                          " SELECT 'jobs', COALESCE(MAX(id), 0) FROM jobs")
        finally:
            c.execute("PRAGMA foreign_keys=ON")

    # -- transactions: group commit ---------------------------------------------------
    #
    # Each write is a transaction that is durable when the call returns (synchronous=FULL),
    # as before; but writers that come while a commit is being synced join one transaction
    # and share the next commit (its fsync), instead of each paying their own.  A write
    # that joins runs in a savepoint, so one that raises undoes only itself.  A write
    # waits for the commit that holds it at most GROUP_WAIT beyond its own work: the last
    # writer in commits at once.  An answer from iFax (`durable=False`) does not wait at
    # all: the store's committer thread commits it within GROUP_WAIT, or the next durable
    # write does, so the sending workers never wait for a commit but their intents'.

    def transaction(self, *, durable: bool = True) -> AbstractContextManager[sqlite3.Connection]:
        """One write, committed (durably) before this returns.  BEGIN IMMEDIATE, so that a
        transaction never fails half-way on a lock upgrade.  Inside `batch()` of the same
        thread it is part of the batch's transaction.

        `durable=False` returns once the change is written, and it is committed within
        GROUP_WAIT.  Only for what the next step never depends on being on disk: an answer
        recorded after its request's intent, which a crash before the commit makes as
        unknown as a crash before the answer came (SPEC 6.3), and every later durable
        write commits it first (one connection: commits keep their order)."""
        if getattr(self._local, "batch", False):
            return nullcontext(self.conn)
        return _Write(self, durable, batch=False)

    def batch(self, *, durable: bool = True) -> AbstractContextManager[Any]:
        """Several writes of one thread that commit together, all or none: a slice of
        claims or a batch of filings costs one commit instead of one each.  Only writes
        belong inside (no file I/O): other writers wait for it.  An exception from any
        write inside must leave the block, and undoes all of them.  `durable=False` as for
        `transaction`: for a batch of answers from iFax."""
        if getattr(self._local, "batch", False):
            return nullcontext()
        return _Write(self, durable, batch=True)

    def write_all(self, items: Sequence[_T], write: Callable[[_T], _R], *,
                  durable: bool = True) -> list[_R | Exception]:
        """`write` every item in one commit.  If that fails, each in a commit of its own,
        so that one item whose write always fails holds up none of the others.  Returns,
        per item, what `write` returned or the exception its own commit ended with."""
        try:
            with self.batch(durable=durable):
                return [write(item) for item in items]
        except Exception:
            pass
        out: list[_R | Exception] = []
        for item in items:
            try:
                with self.batch(durable=durable):
                    out.append(write(item))
            except Exception as exc:
                out.append(exc)
        return out

    def _commit_soon(self) -> None:
        """Under the lock: the open transaction is committed GROUP_WAIT from now at the latest.
        The committer is woken only from its idle wait: while writes come, it looks every
        GROUP_WAIT by itself.  Waking it for each commit window cost the writer a tenth of
        its time in a burst (issue 12): the woken thread ran at once, found the store's lock
        held, and waited again."""
        if not self._open or self._commit_due is not None:
            return
        self._commit_due = time.monotonic() + GROUP_WAIT
        if self._committer is None:
            self._committer = threading.Thread(target=self._commit_later, name="store-commit", daemon=True)
            self._committer.start()
        if self._committer_idle:
            self._kick.notify()

    def _commit_later(self) -> None:
        """The committer thread: idle (no wake-up) once nothing was left to commit for
        COMMITTER_QUIET looks in a row; until then it looks every GROUP_WAIT."""
        with self._lock:
            quiet = 0
            while not self._closing:
                if self._commit_due is None:
                    if quiet >= COMMITTER_QUIET:
                        self._committer_idle = True
                        try:
                            self._kick.wait()
                        finally:
                            self._committer_idle = False
                        quiet = 0
                    else:
                        quiet += 1
                        self._kick.wait(GROUP_WAIT)
                    continue
                quiet = 0
                delay = self._commit_due - time.monotonic()
                if delay > 0:
                    self._kick.wait(delay)
                    continue
                self._commit_due = None
                if self._open:
                    self._commit()
                    failure = self._failures.get(self._gen)
                    if failure is not None:
                        log.error("database %s: answers from iFax could not be committed (%s); they "
                                  "count as unknown, as after a crash", self.path, failure)

    def _undo(self, gen: int, joined: bool, exc: BaseException) -> None:
        if not self.conn.in_transaction:  # SQLite rolled back everything itself (a full disk, I/O)
            self._open = False
            self._complete(gen, exc)
        elif joined:
            self.conn.execute("ROLLBACK TO joined")
            self.conn.execute("RELEASE joined")
            self._members -= 1
            self._await_commit(gen)  # the others' writes still commit
        else:  # alone in it (nobody joins while a write runs: it holds the lock)
            self.conn.execute("ROLLBACK")
            self._open = False
            self._complete(gen, None)

    def _await_commit(self, gen: int) -> None:
        """Commit now unless another writer is about to join; else wait for its commit."""
        if self._open and self._gen == gen and (
                self._waiting == 0 or time.monotonic() - self._opened_at >= GROUP_WAIT):
            self._commit()
        while self._completed < gen:
            self._done.wait(GROUP_WAIT)
            if self._completed < gen and self._open and self._gen == gen:
                self._commit()  # the writer that was to join has not: commit without it
        failure = self._failures.get(gen)
        if failure is not None:
            raise StoreError(f"database {self.path}: the change could not be committed: {failure}") \
                from failure

    def _commit(self) -> None:
        failure = None
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            failure = exc
            if self.conn.in_transaction:
                try:
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
        self._open = False
        self._commit_due = None
        self._complete(self._gen, failure)

    def _complete(self, gen: int, failure: BaseException | None) -> None:
        if failure is not None:
            if len(self._failures) > 100:
                self._failures.pop(min(self._failures))
            self._failures[gen] = failure
        self._completed = gen
        self._done.notify_all()

    def flush(self) -> None:
        """Commit a transaction that writers share now, before what must not run inside
        one (a backup, a checkpoint, closing)."""
        with self._lock:
            if self._open:
                self._commit()

    def _event(self, c: sqlite3.Connection, job_id: int, state: str, detail: str | None = None,
               recipient_id: int | None = None, at: float | None = None) -> None:
        """Kept until the end of the write (one INSERT for all of a batch's events)."""
        row = (job_id, recipient_id, at or _now(), str(state), _shown(detail))
        if self._events is None:  # not inside a write (`_Write`)
            c.execute("INSERT INTO events(job_id, recipient_id, at, state, detail) VALUES (?,?,?,?,?)", row)
        else:
            self._events.append(row)

    def _flush_events(self) -> None:
        """Under the lock, in the write's transaction: before it ends, and before anything
        deletes events (so none is left behind for a deleted job)."""
        if not self._events:
            return
        rows, self._events = self._events, []
        for i in range(0, len(rows), EVENTS_PER_INSERT):
            chunk = rows[i:i + EVENTS_PER_INSERT]
            self.conn.execute("INSERT INTO events(job_id, recipient_id, at, state, detail) VALUES "
                              + ",".join(["(?,?,?,?,?)"] * len(chunk)), [v for row in chunk for v in row])

    # -- claiming -------------------------------------------------------------------

    def record_claim_intent(self, *, outbox: str, outbox_path: str, rel_dir: str,
                            sources: Sequence[SourceFile], documents: Sequence[str],
                            sidecar: str | None, primary: str, simulated: bool,
                            settled_at: float | None, reason_code: str | None = None,
                            reason: str | None = None, sent_root: str | None = None,
                            failed_root: str | None = None, private_root: str | None = None) -> int:
        """Commit which files are about to be renamed into the job's folder, before renaming.
        The job's sent/ and failed/ are recorded with it, so that it is filed where its
        outbox said even after the outbox left the configuration."""
        now = _now()
        with self.transaction() as c:
            cur = c.execute(
                "INSERT INTO jobs(outbox, outbox_path, state, phase, simulated, rel_dir, sources,"
                " documents, sidecar, primary_name, options, sha256, created_at, settled_at,"
                " reason_code, reason, sent_root, failed_root, private_root)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (outbox, outbox_path, S.QUEUED, Phase.CLAIMING, int(simulated), _name_in(rel_dir),
                 _dumps([s.__dict__ for s in sources]), _dumps(list(documents)),
                 _name_in(sidecar), _name_in(primary), "{}", "[]", now, settled_at, reason_code,
                 _shown(reason), sent_root, failed_root, private_root))
            job_id = int(cur.lastrowid)
            self._event(c, job_id, "claiming", ", ".join(s.name for s in sources), at=now)
        return job_id

    def abandon_claim(self, job_id: int) -> None:
        """A claim that failed before any file moved (or whose moves were undone) leaves no
        trace: the files are still in the outbox, and trying again must not add rows."""
        with self.transaction() as c:
            row = c.execute("SELECT phase FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None or row["phase"] != Phase.CLAIMING:
                raise StoreError(f"job {job_id} is not being claimed; it cannot be abandoned")
            self._flush_events()
            c.execute("DELETE FROM events WHERE job_id=?", (job_id,))
            c.execute("DELETE FROM jobs WHERE id=?", (job_id,))

    def mark_held(self, job_id: int, missing: Sequence[str] = ()) -> None:
        """The claim's renames are done: the files are in .fax-gateway/<job>/."""
        with self.transaction() as c:
            if missing:
                rows = c.execute("SELECT sources FROM jobs WHERE id=?", (job_id,)).fetchone()
                kept = [s for s in json.loads(rows[0]) if s["name"] not in set(missing)]
                c.execute("UPDATE jobs SET sources=? WHERE id=?", (_dumps(kept), job_id))
            c.execute("UPDATE jobs SET phase=? WHERE id=? AND phase=?", (Phase.HELD, job_id, Phase.CLAIMING))
            detail = "gone before it was taken: " + ", ".join(missing) if missing else None
            self._event(c, job_id, "claimed", detail)

    def accept_job(self, job_id: int, *, numbers: Sequence[str], options: dict[str, Any],
                   sha256: Sequence[str | None], pages: int, send_at: float | None = None,
                   kinds: Sequence[str] = (), claimed: bool = False) -> None:
        """The documents are valid and have destinations: one queued recipient per number.
        `claimed`: its claim's renames are done too, all of its files taken (`mark_held` in
        the same statement)."""
        now = _now()
        with self.transaction() as c:
            if claimed:
                c.execute("UPDATE jobs SET phase=?, options=?, sha256=?, pages=?, kinds=?"
                          " WHERE id=? AND phase=?",
                          (Phase.HELD, _dumps(options), _dumps(list(sha256)), pages,
                           _dumps(list(kinds)), job_id, Phase.CLAIMING))
                self._event(c, job_id, "claimed", None, at=now)
            else:
                c.execute("UPDATE jobs SET options=?, sha256=?, pages=?, kinds=? WHERE id=?",
                          (_dumps(options), _dumps(list(sha256)), pages, _dumps(list(kinds)),
                           job_id))
            for pos, number in enumerate(numbers):
                cur = c.execute(
                    "INSERT INTO recipients(job_id, position, number, state, attempts, pages,"
                    " next_action_at, updated_at, send_at) VALUES (?,?,?,?,?,?,?,?,?)",
                    (job_id, pos, number, S.QUEUED, 0, pages, now, now, send_at))
                self._event(c, job_id, S.QUEUED, number, recipient_id=int(cur.lastrowid), at=now)
            # The job was queued with no recipients, and every recipient is queued: its state
            # stays queued, so there is nothing to refresh.
            self._count_recipients(job_id, len(numbers))

    def reject_job(self, job_id: int, reason_code: str, reason: str, *,
                   numbers: Sequence[str] = (), sha256: Sequence[str | None] = (),
                   options: dict[str, Any] | None = None) -> None:
        """A job refused before sending: never sent, so recipients have attempts 0."""
        now = _now()
        reason = shown(reason)
        with self.transaction() as c:
            row = c.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(f"no job {job_id} in {self.path}")
            check_transition(JOB_TRANSITIONS, row["state"], S.REJECTED, f"job {job_id}")
            for pos, number in enumerate(numbers):
                c.execute("INSERT INTO recipients(job_id, position, number, state, attempts, updated_at)"
                          " VALUES (?,?,?,?,?,?)", (job_id, pos, number, S.FAILED, 0, now))
            c.execute("UPDATE jobs SET state=?, reason=?, reason_code=?, completed_at=?,"
                      " sha256=?, options=? WHERE id=?",
                      (S.REJECTED, reason, reason_code, now, _dumps(list(sha256)),
                       _dumps(options or {}), job_id))
            self._event(c, job_id, S.REJECTED, f"{reason_code}: {reason}", at=now)

    # -- submitting -----------------------------------------------------------------

    def due_submissions(self, now: float, limit: int, *,
                        skip_outboxes: Sequence[str] = ()) -> list[Recipient]:
        """Recipients waiting to be submitted whose time has come, except those of outboxes
        that may not submit now (max_faxes_per_hour)."""
        skip = _not_in("j.outbox", skip_outboxes)
        with self._lock:
            rows = self.conn.execute(
                "SELECT r.* FROM recipients r JOIN jobs j ON j.id=r.job_id WHERE r.state IN"
                " ('queued','retry_wait') AND r.next_action_at<=?" + skip +
                " ORDER BY r.next_action_at, r.id LIMIT ?", (now, *skip_outboxes, limit)).fetchall()
        return [_recipient(r) for r in rows]

    def next_submission_time(self, *, skip_outboxes: Sequence[str] = ()) -> float | None:
        if not skip_outboxes:
            with self._lock:
                row = self.conn.execute(
                    "SELECT MIN(next_action_at) FROM recipients WHERE state IN ('queued','retry_wait')"
                ).fetchone()
            return row[0]
        with self._lock:
            row = self.conn.execute(
                "SELECT MIN(r.next_action_at) FROM recipients r JOIN jobs j ON j.id=r.job_id WHERE"
                " r.state IN ('queued','retry_wait')" + _not_in("j.outbox", skip_outboxes),
                tuple(skip_outboxes)).fetchone()
        return row[0]

    def outboxes_with_due_submissions(self, now: float, outboxes: Sequence[str]) -> set[str]:
        """Which of these outboxes have a recipient whose submission is due (held back)."""
        found = set()
        with self._lock:
            for outbox in outboxes:
                if self.conn.execute(
                        "SELECT 1 FROM recipients r JOIN jobs j ON j.id=r.job_id WHERE r.state IN"
                        " ('queued','retry_wait') AND r.next_action_at<=? AND j.outbox=? LIMIT 1",
                        (now, outbox)).fetchone():
                    found.add(outbox)
        return found

    def hourly_cap_until(self, outbox: str, per_hour: int, now: float | None = None) -> float | None:
        """When `outbox` may submit again under max_faxes_per_hour = `per_hour` (a rolling
        hour, resends counted), or None if it may now.  Reads at most `per_hour` index
        entries, whatever the history."""
        now = _now() if now is None else now
        with self._lock:
            row = self.conn.execute(
                "SELECT at FROM submissions WHERE outbox=? AND at>? ORDER BY at DESC LIMIT 1 OFFSET ?",
                (outbox, now - HOUR, per_hour - 1)).fetchone()
        return None if row is None else row[0] + HOUR

    def record_submit_intent(self, recipient_id: int, *, per_hour: int | None = None,
                             outbox: str | None = None) -> bool:
        """Commit that the request (fax-send, or fax-resend for a recipient iFax knows) is
        about to leave, and count it toward its outbox's hour.  False if the recipient is
        no longer waiting (canceled meanwhile) or its outbox reached `per_hour` submissions
        in the last hour, so the caller must not send; checked in the same transaction, so
        the cap holds however many workers submit at once.  `outbox`: the recipient's, if
        the caller knows it (one read less)."""
        now = _now()
        with self.transaction() as c:
            if outbox is None:
                r = c.execute("SELECT j.outbox FROM recipients r JOIN jobs j ON j.id=r.job_id WHERE r.id=?",
                              (recipient_id,)).fetchone()
                if r is None:
                    return False
                outbox = str(r[0])
            if now >= self._pruned.get(outbox, 0.0):  # rows that left the hour: once a minute
                self._pruned[outbox] = now + 60.0
                c.execute("DELETE FROM submissions WHERE outbox=? AND at<=?", (outbox, now - HOUR))
            if per_hour is not None:
                (n,) = c.execute("SELECT COUNT(*) FROM submissions WHERE outbox=? AND at>?",
                                 (outbox, now - HOUR)).fetchone()
                if n >= per_hour:
                    return False
            # Only if it is still waiting (queued or retry_wait: both may be submitted): one
            # statement that checks, changes and says whose it is.
            r = c.execute("UPDATE recipients SET state=?, updated_at=? WHERE id=? AND state IN (?,?)"
                          " RETURNING job_id, ifax_job_id", (S.SUBMITTING, now, recipient_id, S.QUEUED,
                                                             S.RETRY_WAIT)).fetchone()
            if r is None:
                return False
            c.execute("INSERT INTO submissions(outbox, recipient_id, at) VALUES (?,?,?)",
                      (outbox, recipient_id, now))
            detail = f"fax-resend of iFax job {r['ifax_job_id']}" if r["ifax_job_id"] else None
            self._recipient_changed(c, recipient_id, r["job_id"], (S.QUEUED, S.RETRY_WAIT), S.SUBMITTING,
                                    detail, now)
        return True

    def _uncount_submission(self, c: sqlite3.Connection, recipient_id: int) -> None:
        """A request that certainly sent no fax does not count toward max_faxes_per_hour."""
        row = c.execute("SELECT state FROM recipients WHERE id=?", (recipient_id,)).fetchone()
        if row is not None and row["state"] == S.SUBMITTING:
            c.execute("DELETE FROM submissions WHERE id=(SELECT MAX(id) FROM submissions"
                      " WHERE recipient_id=?)", (recipient_id,))

    def mark_submit_accepted(self, recipient_id: int, ifax_job_id: str, *, next_poll_at: float) -> None:
        """A new attempt: its give-up clock starts now.  If iFax answered a resend with the
        same jobId, the old final status must not be read as this attempt's (SPEC 6.2)."""
        now = _now()
        with self.transaction(durable=False) as c:  # an answer: see transaction()
            # One statement while it is submitting (SET reads the row as it was): the same
            # jobId again means a resend that iFax answered under the old id; the id is
            # added to those of every attempt.  `cost` is the sum over every attempt (SPEC
            # 4.4): what earlier attempts were charged stays, in prior_cost, and this
            # attempt's actualCost is added to it.
            r = c.execute(
                "UPDATE recipients SET state=?, updated_at=?, next_action_at=?, attempts=attempts+1,"
                " ifax_job_id=?, accepted_at=?, awaiting_fresh=(ifax_job_id IS ?),"
                " stale_call_start=CASE WHEN ifax_job_id IS ? THEN call_start END, last_ok_poll_at=?,"
                " sending_seconds=0, transferred_pages=NULL, prior_cost=cost, code=NULL, message=NULL,"
                " ifax_job_ids=CASE WHEN EXISTS(SELECT 1 FROM json_each(COALESCE(ifax_job_ids, '[]'))"
                " WHERE value=?) THEN ifax_job_ids ELSE json_insert(COALESCE(ifax_job_ids, '[]'), '$[#]', ?)"
                " END WHERE id=? AND state=? RETURNING job_id",
                (S.SENDING, now, next_poll_at, ifax_job_id, now, ifax_job_id, ifax_job_id, now, ifax_job_id,
                 ifax_job_id, recipient_id, S.SUBMITTING)).fetchone()
            if r is None:  # not submitting: say what it is
                row = c.execute("SELECT job_id, state FROM recipients WHERE id=?", (recipient_id,)).fetchone()
                if row is None:
                    raise JobNotFound(f"no recipient {recipient_id}")
                check_transition(RECIPIENT_TRANSITIONS, row["state"], S.SENDING,
                                 f"recipient {recipient_id} of job {row['job_id']}")
                raise StoreError(f"recipient {recipient_id} changed while its answer was recorded")
            self._recipient_changed(c, recipient_id, r["job_id"], (S.SUBMITTING,), S.SENDING,
                                    f"iFax job {ifax_job_id}", now)

    def mark_submit_not_sent(self, recipient_id: int, detail: str, *, retry_at: float) -> None:
        """The request certainly did not reach iFax: back to waiting, nothing counted."""
        with self.transaction() as c:
            r = c.execute("SELECT job_id, ifax_job_id FROM recipients WHERE id=?", (recipient_id,)).fetchone()
            self._uncount_submission(c, recipient_id)
            self._set_recipient(c, recipient_id, r["job_id"], S.RETRY_WAIT if r["ifax_job_id"] else S.QUEUED,
                                detail, next_action_at=retry_at)

    def mark_submit_refused(self, recipient_id: int, message: str, code: Any = None) -> None:
        with self.transaction() as c:
            job_id = self._job_of(c, recipient_id)
            self._uncount_submission(c, recipient_id)
            c.execute("UPDATE recipients SET message=?, code=? WHERE id=?",
                      (message, _text(code), recipient_id))
            self._set_recipient(c, recipient_id, job_id, S.FAILED, f"refused by iFax: {message}")

    def mark_submit_uncertain(self, recipient_id: int, detail: str, *, resend: bool = False) -> None:
        """iFax may have accepted the fax: it counts as an attempt.  With on_uncertain: fail
        it ends failed, saying so; with resend it is submitted again at once (6.3)."""
        with self.transaction() as c:
            r = c.execute("SELECT job_id, ifax_job_id FROM recipients WHERE id=?", (recipient_id,)).fetchone()
            if resend:
                c.execute("UPDATE recipients SET attempts=attempts+1 WHERE id=?", (recipient_id,))
                self._set_recipient(c, recipient_id, r["job_id"],
                                    S.RETRY_WAIT if r["ifax_job_id"] else S.QUEUED,
                                    f"outcome unknown ({detail}); submitting again (on_uncertain: resend)",
                                    next_action_at=_now())
                return
            message = (f"the outcome of the submission is unknown ({detail}); iFax may have sent it: "
                       "check the iFax dashboard before sending it again")
            c.execute("UPDATE recipients SET attempts=attempts+1, message=? WHERE id=?",
                      (message, recipient_id))
            self._set_recipient(c, recipient_id, r["job_id"], S.FAILED, message)

    # -- polling --------------------------------------------------------------------

    def due_polls(self, now: float, limit: int) -> list[Recipient]:
        with self._lock:
            rows = self.conn.execute(
                "SELECT * FROM recipients WHERE state='sending' AND next_action_at<=?"
                " ORDER BY next_action_at, id LIMIT ?", (now, limit)).fetchall()
        return [_recipient(r) for r in rows]

    def next_poll_time(self, *, after: float | None = None) -> float | None:
        """The earliest poll due, or (`after`) the earliest one due later than that."""
        with self._lock:
            row = self.conn.execute(
                "SELECT MIN(next_action_at) FROM recipients WHERE state='sending' AND next_action_at>?",
                (-math.inf if after is None else after,)).fetchone()
        return row[0]

    def record_status(self, recipient_id: int, *, new_state: str | None, next_action_at: float,
                      transferred_pages: int | None, cost: float | None, code: Any,
                      message: str | None, ifax_status: str, call_start: float | None,
                      sending_seconds: float, polled_at: float, awaiting_fresh: bool,
                      given_up: bool = False) -> None:
        """Store what a successful poll read.  `new_state` (delivered, failed, canceled, or
        retry_wait for a resend) ends this attempt; None keeps polling.  `cost` is this
        attempt's actualCost: the recipient's cost is it plus what earlier attempts cost
        (null only while iFax has reported none for any attempt)."""
        with self.transaction(durable=False) as c:  # an answer: see transaction()
            # Only while it is still sending (a cancel may have ended it meanwhile): one statement
            # that checks, writes (the new state too, if the attempt ended: every end may follow
            # `sending`) and says whose it is.
            if new_state:
                check_transition(RECIPIENT_TRANSITIONS, S.SENDING, new_state, f"recipient {recipient_id}")
            now = _now()
            row = c.execute("UPDATE recipients SET state=COALESCE(?, state), transferred_pages=?,"
                            " cost=CASE WHEN ? IS NULL THEN prior_cost"
                            " ELSE ROUND(COALESCE(prior_cost, 0) + ?, 6) END, code=?, message=?,"
                            " next_action_at=?, updated_at=?, call_start=COALESCE(?, call_start),"
                            " sending_seconds=?, last_ok_poll_at=?, awaiting_fresh=?, given_up=?"
                            " WHERE id=? AND state='sending' RETURNING job_id",
                            (new_state and str(new_state), transferred_pages, cost, cost, _text(code),
                             message, next_action_at, now, call_start, sending_seconds, polled_at,
                             int(awaiting_fresh), int(given_up), recipient_id)).fetchone()
            if row is not None and new_state:
                detail = message if given_up else (
                    f"iFax status {ifax_status}" + (f": {message}" if message else ""))
                self._recipient_changed(c, recipient_id, row["job_id"], (S.SENDING,), new_state, detail, now)

    def record_poll_failure(self, recipient_id: int, next_poll_at: float) -> None:
        """A poll that failed: time until the next good one does not count toward giving up."""
        with self.transaction() as c:
            c.execute("UPDATE recipients SET next_action_at=?, last_ok_poll_at=NULL"
                      " WHERE id=? AND state='sending'", (next_poll_at, recipient_id))

    def find_recipient_by_ifax_job(self, ifax_job_id: str) -> Recipient | None:
        with self._lock:
            row = self.conn.execute("SELECT * FROM recipients WHERE ifax_job_id=? ORDER BY id DESC",
                                    (ifax_job_id,)).fetchone()
        return _recipient(row) if row else None

    def reschedule(self, recipient_id: int, at: float) -> None:
        """When to look at a recipient again; not a state change, so no event."""
        with self.transaction() as c:
            c.execute("UPDATE recipients SET next_action_at=? WHERE id=?", (at, recipient_id))

    def poll_now(self, recipient_id: int) -> bool:
        """Poll a recipient that is `sending` at once (a webhook, a refused fax-cancel).  Only
        that wait is shortened: a recipient waiting to be resent keeps its `resend.delay`,
        whatever a webhook says (SPEC 6.4).  True if it was sending."""
        with self.transaction() as c:
            cur = c.execute("UPDATE recipients SET next_action_at=? WHERE id=? AND state='sending'",
                            (_now(), recipient_id))
            return cur.rowcount > 0

    # -- filing ---------------------------------------------------------------------

    def jobs_to_file(self, *, after: int = 0, limit: int = 100,
                     skip_outboxes: Sequence[str] = ()) -> list[tuple[int, str]]:
        """(id, outbox) of finished jobs whose files still lie in their private folder (or
        half moved), or are being taken back for a resend, from `after` on.  The caller
        walks the whole list in turns (a cursor), so jobs it cannot file yet never hold
        up the ones behind them, however many there are."""
        skip = _not_in("outbox", skip_outboxes)
        with self._lock:
            rows = self.conn.execute(
                "SELECT id, outbox FROM jobs WHERE ((phase IN ('held','filing') AND state IN"
                " ('delivered','failed','canceled','rejected')) OR phase='unfiling') AND id>?" + skip +
                " ORDER BY id LIMIT ?", (after, *skip_outboxes, limit)).fetchall()
        return [(r[0], r[1]) for r in rows]

    def highest_suffixes(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """`highest_suffix` for a batch of (folder, name): one query per folder."""
        by_folder: dict[str, set[str]] = {}
        for folder, name in keys:
            by_folder.setdefault(folder, set()).add(name)
        found: dict[tuple[str, str], int] = {}
        with self._lock:
            for folder, names in by_folder.items():
                wanted = sorted(names)
                for chunk in range(0, len(wanted), 500):
                    part = [_name_in(n) for n in wanted[chunk:chunk + 500]]
                    marks = ",".join("?" * len(part))
                    rows = self.conn.execute(
                        f"SELECT name, n FROM suffixes WHERE folder=? AND name IN ({marks})",
                        (_name_in(folder), *part)).fetchall()
                    found.update({(folder, _name_out(r[0])): r[1] for r in rows})
        return found

    def record_filing_intent(self, job_id: int, filed_to: str, filed_root: str, suffix: int,
                             suffix_key: tuple[str, str] | None = None) -> None:
        """Commit where the files go before the first one moves, so a restart repeats the
        same move instead of choosing another name.  `suffix_key` (folder, name) remembers
        the suffix as the highest used for that name."""
        with self.transaction() as c:
            if suffix_key is not None:
                c.execute("INSERT INTO suffixes(folder, name, n) VALUES (?,?,?) ON CONFLICT(folder, name)"
                          " DO UPDATE SET n = MAX(n, excluded.n)",
                          (_name_in(suffix_key[0]), _name_in(suffix_key[1]), suffix))
            c.execute("UPDATE jobs SET phase=?, filed_to=?, filed_root=?, filed_suffix=?"
                      " WHERE id=? AND phase=?", (Phase.FILING, filed_to, filed_root, suffix, job_id,
                                                  Phase.HELD))
            self._event(c, job_id, "filing", f"to {filed_to}/" + (f" as -{suffix}" if suffix else ""))

    def mark_filed(self, job_id: int, *, notify: bool = False) -> None:
        """The files are in sent/ or failed/.  With `notify`, the intent to run
        notify.command is committed in the same transaction, so a crash before the
        command ran never loses it: it is carried out at the next start (at least once)."""
        with self.transaction() as c:
            c.execute("UPDATE jobs SET phase=?, notify_pending=? WHERE id=?",
                      (Phase.FILED, 1 if notify else None, job_id))
            self._event(c, job_id, "filed")

    # -- retention (retention.py) -----------------------------------------------------

    def jobs_to_sweep(self, filed_to: str, *, before: float, after: tuple[float, int] = (0.0, 0),
                      limit: int = 50) -> list[tuple[float, int]]:
        """(completed_at, id) of jobs filed in `filed_to` that completed before `before` and
        whose files retention has not looked at yet, from `after` on, oldest first.  An
        indexed range: its cost follows what is due, not the history kept.  A job with an
        operator's request pending (a resend takes its files back) waits."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT completed_at, id FROM jobs INDEXED BY jobs_to_sweep WHERE phase='filed'"
                " AND swept_at IS NULL AND filed_to=? AND completed_at<? AND (completed_at, id)>(?, ?)"
                " AND NOT EXISTS (SELECT 1 FROM requests WHERE job_id=jobs.id AND done_at IS NULL)"
                " ORDER BY completed_at, id LIMIT ?", (filed_to, before, *after, limit)).fetchall()
        return [(r[0], r[1]) for r in rows]

    def mark_swept(self, job_id: int, detail: str) -> None:
        """Retention deleted what was still the gateway's of this job; it never looks again."""
        with self.transaction() as c:
            c.execute("UPDATE jobs SET swept_at=? WHERE id=? AND phase='filed'", (_now(), job_id))
            self._event(c, job_id, "swept", detail)

    def old_filed_jobs(self, *, before: float, after: tuple[float, int] = (0.0, 0),
                       limit: int = 50) -> list[tuple[float, int]]:
        """(completed_at, id) of filed jobs that completed before `before`, from `after` on."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT completed_at, id FROM jobs INDEXED BY jobs_filed_completed WHERE phase='filed'"
                " AND completed_at<? AND (completed_at, id)>(?, ?) ORDER BY completed_at, id LIMIT ?",
                (before, *after, limit)).fetchall()
        return [(r[0], r[1]) for r in rows]

    def delete_jobs(self, job_ids: Sequence[int], *, before: float) -> list[int]:
        """Remove finished, filed jobs with their recipients, events, requests and blocked
        rows, in one transaction; a job that changed meanwhile (taken back for a resend, or
        with a request pending) stays.  Ids are never given again (AUTOINCREMENT keeps
        the highest in sqlite_sequence).  Returns the ids removed."""
        removed = []
        with self.transaction() as c:
            self._flush_events()
            for job_id in job_ids:
                row = c.execute("SELECT 1 FROM jobs WHERE id=? AND phase='filed' AND completed_at<? AND NOT"
                                " EXISTS (SELECT 1 FROM requests WHERE job_id=jobs.id AND done_at IS NULL)"
                                " AND notify_pending IS NULL",  # a notification still owed keeps it
                                (job_id, before)).fetchone()
                if row is None:
                    continue
                for table in ("events", "recipients", "requests", "blocked"):
                    c.execute(f"DELETE FROM {table} WHERE job_id=?", (job_id,))
                c.execute("DELETE FROM jobs WHERE id=?", (job_id,))
                removed.append(job_id)
        return removed
    def jobs_to_notify(self) -> list[int]:
        """Filed jobs whose notify.command has not run to its end yet (a crash, a stop)."""
        with self._lock:
            return [r[0] for r in self.conn.execute(
                "SELECT id FROM jobs WHERE notify_pending=1 ORDER BY id")]

    def mark_notified(self, job_id: int, detail: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE jobs SET notify_pending=NULL WHERE id=? AND notify_pending=1", (job_id,))
            self._event(c, job_id, "notified", detail)

    # -- operator requests (cancel, resend) -----------------------------------------

    def add_request(self, job_id: int, action: str) -> int:
        """Recorded by the CLI, carried out by the daemon: the key stays with the service
        and the two never race on the same job."""
        with self.transaction() as c:
            cur = c.execute("INSERT INTO requests(job_id, action, created_at) VALUES (?,?,?)",
                            (job_id, action, _now()))
            self._event(c, job_id, f"{action} requested")
            return int(cur.lastrowid)

    def pending_requests(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self.conn.execute("SELECT * FROM requests WHERE done_at IS NULL ORDER BY id").fetchall()
        return [dict(r) for r in rows]

    def get_request(self, request_id: int) -> dict[str, Any]:
        with self._lock:
            row = self.conn.execute("SELECT * FROM requests WHERE id=?", (request_id,)).fetchone()
        return dict(row)

    def finish_request(self, request_id: int, ok: bool, outcome: str) -> None:
        with self.transaction() as c:
            self._finish_request(c, request_id, ok, outcome)

    def _finish_request(self, c: sqlite3.Connection, request_id: int, ok: bool, outcome: str) -> None:
        c.execute("UPDATE requests SET done_at=?, ok=?, outcome=? WHERE id=? AND done_at IS NULL",
                  (_now(), int(ok), outcome, request_id))

    def cancel_waiting(self, job_id: int, detail: str) -> None:
        """Recipients not yet handed to iFax (queued, waiting to resend) end here and now."""
        with self.transaction() as c:
            for r in c.execute("SELECT id FROM recipients WHERE job_id=? AND state IN"
                               " ('queued','retry_wait')", (job_id,)).fetchall():
                self._set_recipient(c, r["id"], job_id, S.CANCELED, detail)

    def mark_canceled(self, recipient_id: int, detail: str) -> None:
        """A sending fax that iFax confirmed canceled (fax-cancel)."""
        with self.transaction() as c:
            r = c.execute("SELECT job_id, state FROM recipients WHERE id=?", (recipient_id,)).fetchone()
            if r is not None and r["state"] == S.SENDING:
                self._set_recipient(c, recipient_id, r["job_id"], S.CANCELED, detail)

    def record_unfiling_intent(self, job_id: int) -> None:
        """Commit that the job's files are about to be taken back from failed/."""
        with self.transaction() as c:
            c.execute("UPDATE jobs SET phase=? WHERE id=? AND phase=?", (Phase.UNFILING, job_id, Phase.FILED))
            self._event(c, job_id, "unfiling", "documents taken back from failed/ to send again")

    def reopen_job(self, job_id: int) -> int:
        """The files are back in .fax-gateway/<job>/: every recipient that did not get the
        fax waits to be sent again (fax-resend where iFax knows it).  Pending resend
        requests for the job are done in the same transaction.  Returns how many."""
        now = _now()
        with self.transaction() as c:
            rows = c.execute("SELECT id, ifax_job_id FROM recipients WHERE job_id=? AND state IN"
                             " ('failed','canceled')", (job_id,)).fetchall()
            c.execute("UPDATE jobs SET phase=?, filed_to=NULL, filed_root=NULL, filed_suffix=NULL,"
                      " completed_at=NULL, reason=NULL, reason_code=NULL, swept_at=NULL WHERE id=?",
                      (Phase.HELD, job_id))
            for r in rows:
                c.execute("UPDATE recipients SET given_up=0, awaiting_fresh=0, message=NULL, code=NULL"
                          " WHERE id=?", (r["id"],))
                self._set_recipient(c, r["id"], job_id, S.RETRY_WAIT if r["ifax_job_id"] else S.QUEUED,
                                    "sent again at the operator's request", next_action_at=now)
            for q in c.execute("SELECT id FROM requests WHERE job_id=? AND action='resend' AND"
                               " done_at IS NULL", (job_id,)).fetchall():
                self._finish_request(c, q["id"], True, f"job {job_id}: sending again to "
                                     f"{len(rows)} recipient(s)")
        return len(rows)

    # -- blocked items (SPEC 4.5) ----------------------------------------------------

    def set_blocked(self, *, outbox: str, stage: str, item: str, reason: str,
                    job_id: int | None = None) -> None:
        """One row per blocked item, written when it becomes blocked or its reason changes
        (never per try), so the CLI, /healthz and the metric show the same set."""
        item, reason = shown(item), shown(reason)
        with self.transaction() as c:
            row = c.execute("SELECT id, reason FROM blocked WHERE outbox=? AND stage=? AND item=?",
                            (outbox, stage, item)).fetchone()
            if row is None:
                c.execute("INSERT INTO blocked(outbox, stage, item, reason, since, job_id) VALUES"
                          " (?,?,?,?,?,?)", (outbox, stage, item, reason, _now(), job_id))
            elif row["reason"] != reason:
                c.execute("UPDATE blocked SET reason=?, job_id=? WHERE id=?", (reason, job_id, row["id"]))

    def clear_blocked(self, *, outbox: str, stage: str, item: str) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM blocked WHERE outbox=? AND stage=? AND item=?",
                      (outbox, stage, shown(item)))

    def clear_all_blocked(self, stages: Sequence[str] | None = None) -> None:
        """At start-up (of the daemon, or of its intake process: its `stages`): each stage
        finds its blocked items again on its first try."""
        with self.transaction() as c:
            if stages is None:
                c.execute("DELETE FROM blocked")
            else:
                c.executemany("DELETE FROM blocked WHERE stage = ?", [(s,) for s in stages])

    def list_blocked(self, limit: int | None = None) -> list[Blocked]:
        sql = "SELECT * FROM blocked ORDER BY since, id" + (" LIMIT ?" if limit else "")
        with self._lock:
            rows = self.conn.execute(sql, (limit,) if limit else ()).fetchall()
        return [Blocked(outbox=r["outbox"], stage=r["stage"], item=r["item"], reason=r["reason"],
                        since=r["since"], job_id=r["job_id"]) for r in rows]

    def count_blocked(self) -> dict[tuple[str, str], int]:
        with self._lock:
            rows = self.conn.execute("SELECT outbox, stage, COUNT(*) FROM blocked GROUP BY outbox, stage")
            return {(r[0], r[1]): r[2] for r in rows}

    # -- recovery -------------------------------------------------------------------

    def job_ids_with_legacy_private(self, outbox: str) -> list[int]:
        """Jobs claimed before private folders, whose folder may still lie in the outbox."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT id FROM jobs WHERE outbox=? AND private_root IS NULL ORDER BY id", (outbox,))
            return [r[0] for r in rows]

    def set_private_root(self, job_id: int, private_root: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE jobs SET private_root=? WHERE id=?", (private_root, job_id))

    def job_ids_in_phase(self, phase: str) -> list[int]:
        with self._lock:
            rows = self.conn.execute("SELECT id FROM jobs WHERE phase=? ORDER BY id", (phase,))
            return [r[0] for r in rows]

    def held_job_ids_without_recipients(self) -> list[int]:
        with self._lock:
            return [r[0] for r in self.conn.execute(
                "SELECT id FROM jobs WHERE phase='held' AND state='queued' AND NOT EXISTS"
                " (SELECT 1 FROM recipients WHERE job_id=jobs.id) ORDER BY id")]

    def forget_poll_clocks(self) -> None:
        """After a restart the time the gateway was down does not count toward giving up."""
        with self.transaction() as c:
            c.execute("UPDATE recipients SET last_ok_poll_at=NULL WHERE state='sending'")

    def interrupted_submissions(self) -> list[Recipient]:
        """Recipients whose request may have left when the process died (6.3)."""
        with self._lock:
            rows = self.conn.execute("SELECT * FROM recipients WHERE state='submitting'").fetchall()
        return [_recipient(r) for r in rows]

    def has_real_jobs(self) -> bool:
        with self._lock:
            return self.conn.execute(
                "SELECT 1 FROM jobs WHERE simulated=0 LIMIT 1").fetchone() is not None

    # -- reading --------------------------------------------------------------------

    def get_job(self, job_id: int) -> Job:
        with self._lock:
            row = self.conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(f"no job {job_id} in {self.path}")
            recips = self.conn.execute("SELECT * FROM recipients WHERE job_id=? ORDER BY position",
                                       (job_id,)).fetchall()
        job = _job(row)
        job.recipients = [_recipient(r) for r in recips]
        return job

    def list_jobs(self, *, state: str | None = None, limit: int = 1000) -> list[Job]:
        sql, args = "SELECT * FROM jobs", []
        if state:
            sql += " WHERE state=?"
            args.append(state)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            return self._with_recipients(self.conn.execute(sql, args).fetchall())

    def jobs_by_ids(self, ids: Iterable[int]) -> list[Job]:
        """These jobs (those that exist), newest first, with their recipients."""
        wanted = sorted({i for i in ids if 0 < i < 2**63}, reverse=True)
        rows: list[sqlite3.Row] = []
        with self._lock:
            for chunk in range(0, len(wanted), 500):
                part = wanted[chunk:chunk + 500]
                marks = ",".join("?" * len(part))
                rows += self.conn.execute(f"SELECT * FROM jobs WHERE id IN ({marks}) ORDER BY id DESC", part)
            return self._with_recipients(rows)

    def _with_recipients(self, rows: Sequence[sqlite3.Row]) -> list[Job]:
        ids = [r["id"] for r in rows]
        recips: dict[int, list[Recipient]] = {i: [] for i in ids}
        for chunk in range(0, len(ids), 500):
            part = ids[chunk:chunk + 500]
            marks = ",".join("?" * len(part))
            for r in self.conn.execute(f"SELECT * FROM recipients WHERE job_id IN ({marks})"
                                       " ORDER BY job_id, position", part):
                recips[r["job_id"]].append(_recipient(r))
        jobs = []
        for row in rows:
            job = _job(row)
            job.recipients = recips[job.id]
            jobs.append(job)
        return jobs

    # The status page's questions (status.py): each reads a bounded number of index entries
    # or rows, so a page costs the same with a million jobs kept as with a thousand.

    def job_ids_by_number(self, number: str, limit: int) -> list[int]:
        """The newest jobs with a recipient at this E.164 number (index on number, job_id)."""
        with self._lock:
            rows = self.conn.execute("SELECT DISTINCT job_id FROM recipients WHERE number=?"
                                     " ORDER BY job_id DESC LIMIT ?", (number, limit)).fetchall()
        return [r[0] for r in rows]

    def job_ids_by_name(self, name: str, limit: int) -> list[int]:
        """The newest jobs named after this file (the name their result file takes), exactly
        as written.  Names are BLOBs; a row an older version wrote as TEXT is found too."""
        found: list[int] = []
        with self._lock:
            for value in (_name_in(name), name):
                found += [r[0] for r in self.conn.execute(
                    "SELECT id FROM jobs WHERE primary_name=? ORDER BY id DESC LIMIT ?", (value, limit))]
        return sorted(set(found), reverse=True)[:limit]

    def job_ids_by_name_part(self, part: str, *, within: int, limit: int) -> list[int]:
        """The newest jobs among the last `within` that have a file whose name (as shown to
        people) contains `part`, in any case: a bounded walk back from the newest id."""
        with self._lock:
            cursor = self.conn.cursor()
            cursor.row_factory = None  # plain tuples: this walk is the page's longest
            rows = cursor.execute("SELECT id, sources, primary_name FROM jobs ORDER BY id DESC LIMIT ?",
                                  (within,)).fetchall()
        needle = part.casefold()
        found = []
        for job_id, sources, primary in rows:
            if _names_contain(needle, sources or "[]", primary):
                found.append(job_id)
                if len(found) >= limit:
                    break
        return found

    def active_counts_by_outbox(self) -> dict[str, dict[str, int]]:
        """Active jobs per outbox and state: read through the state index, so the cost
        follows the queue, never the finished history."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT outbox, state, COUNT(*) FROM jobs WHERE state IN"
                " ('queued','submitting','retry_wait','sending') GROUP BY outbox, state").fetchall()
        counts: dict[str, dict[str, int]] = {}
        for outbox, state, n in rows:
            counts.setdefault(outbox, {})[state] = n
        return counts

    def events(self, job_id: int) -> list[dict[str, Any]]:
        with self._lock:
            rows = self.conn.execute(
                "SELECT e.at, e.state, e.detail, r.number FROM events e LEFT JOIN recipients r"
                " ON r.id=e.recipient_id WHERE e.job_id=? ORDER BY e.id", (job_id,)).fetchall()
        return [{"at": r["at"], "state": r["state"], "recipient": r["number"], "detail": r["detail"]}
                for r in rows]

    def count_by_state(self) -> dict[str, int]:
        """Exact counts per state, read from the counts the triggers keep: the cost does
        not grow with the history kept in the database."""
        with self._lock:
            rows = self.conn.execute("SELECT state, n FROM job_counts").fetchall()
        counts = {s: 0 for s in JOB_STATES}
        counts.update({r[0]: r[1] for r in rows if r[1]})
        return counts

    def oldest_active_created_at(self) -> float | None:
        with self._lock:
            row = self.conn.execute(
                "SELECT MIN(created_at) FROM jobs WHERE state IN"
                " ('queued','submitting','retry_wait','sending')").fetchone()
        return row[0]

    def existing_job_ids(self, ids: Iterable[int]) -> set[int]:
        """Which of these job ids have a row (at start-up: job folders the database knows)."""
        wanted = sorted({i for i in ids if 0 < i < 2**63})
        found: set[int] = set()
        with self._lock:
            for chunk in range(0, len(wanted), 500):
                part = wanted[chunk:chunk + 500]
                marks = ",".join("?" * len(part))
                rows = self.conn.execute(f"SELECT id FROM jobs WHERE id IN ({marks})", part)
                found.update(r[0] for r in rows)
        return found

    def backup(self, target: str | Path) -> None:
        """An online copy with SQLite's backup API: consistent while the stages run (they wait
        for the store's lock), and a single file (rollback journal, not WAL) that opens
        anywhere without its -wal beside it."""
        try:
            dst = sqlite3.connect(target)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot create {target}: {exc}") from exc
        try:
            with self._lock:
                self.flush()
                self.conn.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot copy database {self.path} to {target}: {exc}") from exc
        finally:
            dst.close()

    def check_writable(self) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('heartbeat', ?)", (str(_now()),))

    # -- internals ------------------------------------------------------------------

    def _job_of(self, c: sqlite3.Connection, recipient_id: int) -> int:
        row = c.execute("SELECT job_id FROM recipients WHERE id=?", (recipient_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"no recipient {recipient_id}")
        return int(row[0])

    def _set_recipient(self, c: sqlite3.Connection, recipient_id: int, job_id: int, state: str,
                       detail: str | None = None, *, next_action_at: float | None = None,
                       old: str | None = None) -> None:
        """`old`: the state the caller read in this same transaction, so it is not read again."""
        now = _now()
        if old is None:
            row = c.execute("SELECT state FROM recipients WHERE id=?", (recipient_id,)).fetchone()
            if row is None:
                raise JobNotFound(f"no recipient {recipient_id}")
            old = row["state"]
        check_transition(RECIPIENT_TRANSITIONS, old, state, f"recipient {recipient_id} of job {job_id}")
        if next_action_at is None:
            c.execute("UPDATE recipients SET state=?, updated_at=? WHERE id=?", (state, now, recipient_id))
        else:
            c.execute("UPDATE recipients SET state=?, updated_at=?, next_action_at=? WHERE id=?",
                      (state, now, next_action_at, recipient_id))
        self._recipient_changed(c, recipient_id, job_id, (old,), state, detail, now)

    def _recipient_changed(self, c: sqlite3.Connection, recipient_id: int, job_id: int,
                           olds: tuple[str, ...], new: str, detail: str | None, at: float) -> None:
        """After a recipient's row changed from one of `olds` to `new`: its event, and its
        job's state.  A job with one recipient had that recipient's old state, so it is
        changed with one guarded UPDATE and no read (issue 12); if the guard finds the
        job otherwise (a count not known, or wrong), the state is derived the long way."""
        self._event(c, job_id, new, detail, recipient_id=recipient_id, at=at)
        if self._recipient_counts.get(job_id) == 1 and new != S.FAILED and new not in olds:
            for old in olds:
                check_transition(JOB_TRANSITIONS, old, new, f"job {job_id}")
            ended = new not in ACTIVE_ORDER
            reason = "the fax was canceled before it was delivered" if new == S.CANCELED else None
            cur = c.execute(f"UPDATE jobs SET state=?, completed_at=?, reason=?, reason_code=NULL"
                            f" WHERE id=? AND state IN ({','.join('?' * len(olds))})",
                            (new, at if ended else None, reason, job_id, *olds))
            if cur.rowcount == 1:
                if ended:
                    self._event(c, job_id, new, reason, at=at)
                    self._recipient_counts.pop(job_id, None)  # only jobs still going are counted
                return
        self._refresh_job_state(c, job_id)

    def _count_recipients(self, job_id: int, n: int) -> None:
        if len(self._recipient_counts) >= RECIPIENT_COUNTS:
            self._recipient_counts.clear()
        self._recipient_counts[job_id] = n

    def _refresh_job_state(self, c: sqlite3.Connection, job_id: int) -> None:
        """The job's state follows from its recipients (SPEC 5); kept in a column so that
        listing and counting by state is an index lookup."""
        rows = c.execute("SELECT j.state, r.state FROM jobs j LEFT JOIN recipients r ON r.job_id=j.id"
                         " WHERE j.id=?", (job_id,)).fetchall()
        states = [r[1] for r in rows if r[1] is not None]
        if not states or rows[0][0] == "rejected":
            return
        job = {"state": rows[0][0]}
        active = [s for s in states if s in ACTIVE_ORDER]
        if active:
            self._count_recipients(job_id, len(states))
            new = min(active, key=ACTIVE_ORDER.index)
            completed = None
        elif all(s == "delivered" for s in states):
            new, completed = S.DELIVERED, _now()
        elif all(s == "canceled" for s in states):
            new, completed = S.CANCELED, _now()
        else:
            new, completed = S.FAILED, _now()
        if not active:  # it ended: counts are kept for jobs still going only (bounded memory)
            self._recipient_counts.pop(job_id, None)
        if new == job["state"]:
            return
        check_transition(JOB_TRANSITIONS, job["state"], new, f"job {job_id}")
        reason = reason_code = None
        if new == S.FAILED:
            msgs = [f"{r['number']}: {r['message'] or r['state']}" for r in c.execute(
                "SELECT number, state, message FROM recipients WHERE job_id=? AND state!='delivered'",
                (job_id,))]
            reason = shown("the fax was not delivered to " + "; ".join(msgs))
        elif new == S.CANCELED:
            reason = "the fax was canceled before it was delivered"
        c.execute("UPDATE jobs SET state=?, completed_at=?, reason=?, reason_code=? WHERE id=?",
                  (new, completed, reason, reason_code, job_id))
        if completed:
            self._event(c, job_id, new, reason)


_PLAIN_TEXT = re.compile(r'[\x20-\x21\x23-\x5b\x5d-\x7e]*')  # printable ASCII, no quote or backslash
_PLAIN_JSON = re.compile(r'[\x20-\x5b\x5d-\x7e]*')  # printable ASCII, no backslash: no escape in it
_PLAIN_NAME = re.compile(rb'[\x20-\x7e]*')  # a name that names.shown leaves as it is


def _names_contain(needle: str, sources: str, primary: Any) -> bool:
    """Whether a job's file names, as people see them (names.shown), contain `needle`
    (casefolded).  Most rows are plain: printable ASCII whose JSON holds no escape, so
    every name stands in it as shown.  There a row without the needle anywhere can be
    passed over without decoding anything, and a walk of 5,000 rows takes a few
    milliseconds instead of twenty; any other row (and any row with the needle, which
    may just be a JSON key) is decided on the decoded names."""
    if (_PLAIN_TEXT.fullmatch(needle) and _PLAIN_JSON.fullmatch(sources)
            and isinstance(primary, bytes) and _PLAIN_NAME.fullmatch(primary)
            and needle not in sources.lower() and needle.encode() not in primary.lower()):
        return False
    names = [s.get("name", "") for s in json.loads(sources)]
    names.append(_name_out(primary) or "")
    return any(needle in shown(n).casefold() for n in names)


def _not_in(column: str, values: Sequence[str]) -> str:
    """` AND column NOT IN (?,...)` for the values passed as parameters, or nothing."""
    return f" AND {column} NOT IN ({','.join('?' * len(values))})" if values else ""


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


_STATES = {str(s): s for s in JobState}
_PHASES = {str(p): p for p in Phase}
_raw_decode = json.JSONDecoder().raw_decode


def _state(value: str) -> JobState:
    """A dict lookup; anything else is refused by the enum, which says what it got."""
    return _STATES.get(value) or JobState(value)


def _phase(value: str) -> Phase:
    return _PHASES.get(value) or Phase(value)


def _dumps(value: Any) -> str:
    """A column's JSON.  orjson writes a job's few lists in well under a microsecond where
    json took 3 to 6 (issue 12: five a document); what it refuses goes to json as before: a
    name holding an undecodable byte (a lone surrogate), an integer beyond 64 bits, a key
    that is no text.  Both are read back the same by `_loads`."""
    try:
        # Passthrough: a date or a dataclass is refused by orjson as by json, not written.
        return orjson.dumps(value, option=orjson.OPT_PASSTHROUGH_DATETIME
                            | orjson.OPT_PASSTHROUGH_DATACLASS).decode()
    except TypeError:
        return json.dumps(value)


def _loads(text: str | None, empty: str) -> Any:
    """`json.loads` of a column this module wrote with `json.dumps`.  Rows are turned into
    objects for every document several times (issue 12), and `json.loads` costs five times
    what its scanner does: the common empty values are not parsed at all, the rest go
    straight to the scanner, and only text with anything around the value (never written
    here) takes the long way."""
    if not text or text == empty:  # "" too, as json.loads(text or "[]") read it
        return [] if empty == "[]" else {}
    try:
        value, end = _raw_decode(text)
    except ValueError:
        return json.loads(text)  # raises its own, clearer error
    return value if end == len(text) else json.loads(text)


def _recipient(r: sqlite3.Row) -> Recipient:
    return Recipient(id=r["id"], job_id=r["job_id"], number=r["number"], state=_state(r["state"]),
                     attempts=r["attempts"] or 0, ifax_job_id=r["ifax_job_id"], pages=r["pages"],
                     transferred_pages=r["transferred_pages"], cost=r["cost"], code=r["code"],
                     message=r["message"], accepted_at=r["accepted_at"],
                     next_action_at=r["next_action_at"], send_at=r["send_at"], call_start=r["call_start"],
                     stale_call_start=r["stale_call_start"], awaiting_fresh=bool(r["awaiting_fresh"]),
                     last_ok_poll_at=r["last_ok_poll_at"], sending_seconds=r["sending_seconds"] or 0.0,
                     given_up=bool(r["given_up"]), all_ifax_job_ids=_loads(r["ifax_job_ids"], "[]"))


def _job(r: sqlite3.Row) -> Job:
    return Job(id=r["id"], outbox=r["outbox"], outbox_path=r["outbox_path"], state=_state(r["state"]),
               phase=_phase(r["phase"]), reason=r["reason"], reason_code=r["reason_code"],
               simulated=bool(r["simulated"]), rel_dir=_name_out(r["rel_dir"]) or "",
               sources=[SourceFile(**s) for s in _loads(r["sources"], "[]")],
               documents=_loads(r["documents"], "[]"), sidecar=_name_out(r["sidecar"]),
               primary=_name_out(r["primary_name"]), options=_loads(r["options"], "{}"),
               sha256=_loads(r["sha256"], "[]"), pages=r["pages"], created_at=r["created_at"],
               settled_at=r["settled_at"], completed_at=r["completed_at"], filed_to=r["filed_to"],
               filed_root=r["filed_root"], filed_suffix=r["filed_suffix"], sent_root=r["sent_root"],
               failed_root=r["failed_root"], kinds=_loads(r["kinds"], "[]"),
               private_root=r["private_root"] or str(Path(r["outbox_path"]) / ".fax-gateway"))
