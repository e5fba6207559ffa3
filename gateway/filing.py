"""Stage 3, filing: finished jobs move to `sent/` or `failed/` with their result file,
and failed jobs an operator sends again are taken back (SPEC 4.4, 2).

Its own loop, so a slow copy to a network share never holds up a send or a poll.  Jobs
are walked in turns with a cursor: one that cannot be filed (a folder in the way, a
full disk, a paused or removed outbox) is blocked with a backoff and never holds up
the ones behind it, however many there are.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from gateway import spool
from gateway.blocking import BlockedItems
from gateway.config import OutboxConfig
from gateway.errors import SpoolError
from gateway.faults import crash_point
from gateway.metrics import Metrics
from gateway.names import shown
from gateway.notify import Notifier
from gateway.reload import Reload
from gateway.results import result_document
from gateway.stage import Stage
from gateway.store import Job, JobState, Phase, Store

BATCH = 100
_Item = TypeVar("_Item", bound=tuple)  # a job first, then what its write needs
FILE_BATCH = 64  # jobs filed together: one commit for their intents, one for their filing
IDLE = 5.0  # the longest wait with nothing to file: a job that ends wakes the stage (on_final)
SLICE = 0.5
DEFER = 2.0  # while sends wait, filing waits at most this long between two turns of work
GATHER = 0.1  # after filing a small batch, filing lets more jobs end for this long before its next


class Filing(Stage):
    name = "filing"

    def __init__(self, store: Store, outboxes: Mapping[str, OutboxConfig], metrics: Metrics, *,
                 file_names: bool, paused: dict[str, str],
                 folder_problem: Callable[[str], str | None] = lambda outbox: None,
                 notifier: Notifier | None = None,
                 on_reopened: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self.store, self.outboxes, self.metrics = store, dict(outboxes), metrics
        self.file_names = file_names
        self.paused = paused
        self.folder_problem = folder_problem  # asked right before writing: the periodic check may be late
        self.notifier = notifier  # notify.command, if configured
        self.on_reopened = on_reopened
        self.blocked = BlockedItems(store, "filing", self.log,
                                    lambda outbox: self.outboxes[outbox].rescan if outbox in self.outboxes
                                    else 60.0, file_names=file_names)
        self._cursor = 0
        # True while faxes wait to be sent (the dispatcher) or intake has more to take at
        # once: filing, which only does bookkeeping, then works at most every DEFER
        # seconds, in larger batches (asked outside the shared turn: `holding_back`).
        self.defer: Callable[[], bool] = lambda: False
        self._deferring_since: float | None = None
        # After a small batch, the next turn waits until then for more jobs to end (GATHER).
        self._gathering_until = 0.0

    def apply(self, change: Reload) -> None:
        """Jobs are filed into the folders recorded with them, so an outbox removed or
        moved by a reload changes nothing for its jobs; notify.command takes effect for
        jobs that end from now on."""
        self.outboxes = change.known
        self.file_names = self.blocked.file_names = change.config.log.file_names
        command = change.config.notify.command
        self.notifier = Notifier(command, file_names=self.file_names) if command else None
        self._cursor = 0

    def initialize(self) -> None:
        """Notifications whose intent was committed with the filing but whose command did
        not run to its end (a crash, a stop) are carried out now: at least once."""
        for job_id in self.store.jobs_to_notify():
            job = self.store.get_job(job_id)
            if self.notifier is None:
                self.store.mark_notified(job_id, "notify.command is no longer configured")
            else:
                self.log.info("job %s: running notify.command that the last run did not finish", job_id)
                self._notify(job)

    def _notify(self, job: Job) -> None:
        assert self.notifier is not None
        self.notifier.job_ended(job_id=job.id, state=job.state, reason_code=job.reason_code,
                                outbox=job.outbox, result_path=result_path(job),
                                on_done=lambda outcome: self.store.mark_notified(job.id, outcome))

    def holding_back(self) -> float:
        now = time.monotonic()
        if self.defer():
            if self._deferring_since is None:
                self._deferring_since = now
            if now - self._deferring_since < DEFER:
                return self._deferring_since + DEFER - now
        self._deferring_since = None
        return max(0.0, self._gathering_until - now)

    def wake(self) -> None:
        """A job may have ended.  While filing gives way (`holding_back`) a wake would only
        find that it still should, and wait again: in a burst the sending stage ends
        hundreds of faxes a second, and each such wake cost the senders a switch of the
        interpreter lock (issue 12).  The wait ends at DEFER anyway; stopping and a
        reload set the event themselves."""
        if self._deferring_since is not None and self.defer():
            return
        if time.monotonic() < self._gathering_until:
            return  # the turn after the gathering files it
        super().wake()

    def turn(self) -> float:
        if self.halted() is not None:  # the database file was deleted or replaced (dbguard.py)
            return IDLE
        end = time.monotonic() + SLICE
        batch = self.store.jobs_to_file(after=self._cursor, limit=BATCH, skip_outboxes=list(self.paused))
        # Never write into a folder that is missing or an empty mount point: asked once per
        # outbox per turn, right before its files are written (a dozen system calls each).
        problems = {outbox: self.folder_problem(outbox) for outbox in {outbox for _, outbox in batch}}
        due = [job_id for job_id, outbox in batch
               if not problems[outbox] and self.blocked.due(("job", job_id))]
        jobs = sorted(self.store.jobs_by_ids(due), key=lambda j: j.id) if due else []
        filed = 0
        for i in range(0, len(jobs), FILE_BATCH):
            if time.monotonic() > end:
                return 0.0
            chunk = jobs[i:i + FILE_BATCH]
            filed += self._file_all(chunk)
            self._cursor = chunk[-1].id
            self.breathe()
        if len(batch) < BATCH:
            self._cursor = 0
            retry = self.blocked.earliest()
            wait = IDLE if retry is None else max(0.05, min(IDLE, retry - time.monotonic()))
            if 0 < filed and len(jobs) < FILE_BATCH:
                # Faxes whose polls answer one by one end one by one (every fax of a burst
                # is polled poll.interval after it was accepted, a few requests at a time).
                # Filed as they end, each would be a batch of one or two with its own
                # commit and folder syncs: 3.1-3.2 fsyncs per document instead of 2.8
                # (issue 12).  A short wait lets them gather; the wakes meanwhile are
                # not heard (`wake`), so the turn after it looks again.
                self._gathering_until = time.monotonic() + GATHER
                wait = min(wait, GATHER)
                crash_point("gathering")  # faxes that ended meanwhile wait, not yet filed
            return wait
        self._cursor = batch[-1][0]
        return 0.0

    def _file_all(self, jobs: list[Job]) -> int:
        """File a batch: every filing intent in one commit, the moves and result files,
        each destination folder synced once, then every job recorded filed in one commit.
        A job that fails is blocked alone; one whose names would meet another's in the
        same folder waits for the next batch.  Returns how many were filed."""
        firsts, ready, taken = [], [], set()
        for job in jobs:
            if job.phase == Phase.UNFILING:
                self._one(job, self.take_back)
                continue
            try:
                if job.phase == Phase.HELD:
                    firsts.append(self._destination(job))
                else:
                    ready.append(job)
            except Exception as exc:
                self._block(job, exc)
        if firsts:
            used = self.store.highest_suffixes([key for _, _, _, key in firsts])
            chosen = []
            for job, filed_to, root, key in firsts:
                names = job.names + [result_name(job)]
                try:
                    suffix = spool.choose_suffix(root, job.rel_dir, names, bases(job),
                                                 start=0 if used.get(key) is None else used[key] + 1)
                except Exception as exc:  # e.g. a folder the gateway's user may not look into
                    self._block(job, exc, folder=Path(root) / job.rel_dir)
                    continue
                self.breathe()
                mine = {(key[0], n) for n in (spool.suffixed(n, suffix, bases(job)) for n in names)}
                if mine & taken:
                    continue  # chosen before the other's files are there: it waits for the next batch
                taken |= mine
                chosen.append((job, filed_to, root, suffix, key))
            chosen = self._commit_each(chosen, lambda c: self.store.record_filing_intent(
                c[0].id, c[1], str(c[2]), c[3], suffix_key=c[4] if c[3] else None))
            for job, filed_to, root, suffix, _ in chosen:
                job.phase, job.filed_to, job.filed_root = Phase.FILING, filed_to, str(root)
                job.filed_suffix = suffix
                ready.append(job)
        moved = []
        with spool.DirSyncs() as syncs:
            for job in ready:
                try:
                    self._move(job, syncs)
                except Exception as exc:
                    self._block(job, exc)
                else:
                    moved.append(job)
                self.breathe()
            syncs.run()
        if not moved:
            return 0
        self.log.debug("filing %d job(s) in one batch", len(moved))
        notices = {job.id: self.notifier is not None and self.notifier.wants(job.state) for job in moved}
        # With the intent to notify, if any.  Only a notification is a side effect that must
        # wait for this commit: without one, a crash before it leaves the jobs `filing`, and
        # filing them again finds their files in place (the store's next commit, within
        # 20 ms, makes it durable; issue 12: one fsync less per batch).
        moved = [c[0] for c in self._commit_each(
            [(job,) for job in moved], lambda c: self.store.mark_filed(c[0].id, notify=notices[c[0].id]),
            durable=any(notices.values()))]
        crash_point("filed")
        for job in moved:
            self.blocked.clear(("job", job.id), "filed")
            if job.state != JobState.REJECTED:  # rejections are counted when judged
                self.metrics.count(self.metrics.jobs_completed, job.outbox, job.state)
            what = shown(", ".join(job.names)) if self.file_names else f"{len(job.names)} file(s)"
            self.log.info("job %s: %s, filed in %s/ (%s)", job.id, job.state, job.filed_to, what)
            if notices[job.id]:
                self._notify(job)
        return len(moved)

    def _commit_each(self, items: list[_Item], write: Callable[[_Item], None], *,
                     durable: bool = True) -> list[_Item]:
        """`write` every item (its job first) in one commit (`Store.write_all`); a job whose
        write always fails is blocked alone.  Returns the items committed."""
        done = []
        for item, result in zip(items, self.store.write_all(items, write, durable=durable), strict=True):
            if isinstance(result, Exception):
                self._block(item[0], result)
            else:
                done.append(item)
        return done

    def _one(self, job: Job, step: Callable[[Job], None]) -> None:
        try:
            step(job)
        except Exception as exc:
            self._block(job, exc)
        else:
            self.blocked.clear(("job", job.id), "filed")

    def _block(self, job: Job, exc: Exception, *, folder: Path | None = None) -> None:
        """`folder`: where it is bound, before that is recorded with the job."""
        item = f"job {job.id}: {Path(job.outbox_path) / job.rel_dir / job.primary}"
        self.blocked.block(("job", job.id), outbox=job.outbox, item=item, job_id=job.id,
                           reason=_filing_problem(exc, folder or _folder_of(job),
                                                  taking_back=job.phase == Phase.UNFILING))

    # -- filing -----------------------------------------------------------------------

    def _roots(self, job: Job) -> tuple[str, str]:
        """Where the job was told to go when it was claimed; the configuration only for
        jobs claimed before that was recorded.  Strings, as recorded: no Path is made for
        every job filed (issue 12)."""
        ob = self.outboxes.get(job.outbox)
        sent = job.sent_root or (str(ob.sent) if ob else None)
        failed = job.failed_root or (str(ob.failed) if ob else None)
        if sent is None or failed is None:
            raise SpoolError(f"its outbox {job.outbox!r} is no longer in the configuration and the job "
                             "does not record its sent/failed folders: add the outbox back to file it")
        return sent, failed

    def _destination(self, job: Job) -> tuple[Job, str, str, tuple[str, str]]:
        filed_to = "sent" if job.state == JobState.DELIVERED else "failed"
        sent, failed = self._roots(job)
        root = sent if filed_to == "sent" else failed
        return job, filed_to, root, (filed_folder(root, job.rel_dir), job.primary)

    def _move(self, job: Job, syncs: spool.DirSyncs) -> None:
        assert job.filed_root is not None and job.filed_suffix is not None
        spool.file_job(private=job.private_root, job_id=job.id, rel_dir=job.rel_dir,
                       names=job.names, bases=bases(job), dest_root=job.filed_root,
                       suffix=job.filed_suffix, result_name=result_name(job),
                       result=lambda filed: result_document(job, [shown(f) for f in filed]),
                       crash_hook=crash_point, syncs=syncs)

    # -- taking back for a resend -------------------------------------------------------

    def take_back(self, job: Job) -> None:
        """Also what finishes a take-back interrupted by a crash (phase unfiling)."""
        assert job.filed_root is not None and job.filed_suffix is not None
        spool.unfile(private=job.private_root, job_id=job.id, rel_dir=job.rel_dir, names=job.names,
                     bases=bases(job), dest_root=Path(job.filed_root), suffix=job.filed_suffix,
                     result_name=result_name(job), crash_hook=crash_point)
        n = self.store.reopen_job(job.id)
        self.log.info("job %s: taken back from failed/, sending again to %d recipient(s)", job.id, n)
        self.on_reopened()


def filed_folder(root: str, rel_dir: str) -> str:
    """`str(Path(root) / rel_dir)` for the normalised root and rel_dir a job holds, without
    the Path: the key under which the suffixes table remembers the names used there, so
    it must stay the same text from version to version."""
    return os.path.join(root, rel_dir) if rel_dir else root


def bases(job: Job) -> list[str]:
    """The names a collision suffix follows (documents first, then the sidecar)."""
    return job.documents + ([job.sidecar] if job.sidecar else [])


def result_path(job: Job) -> Path:
    """Where a filed job's result file lies."""
    assert job.filed_root is not None and job.filed_suffix is not None
    return Path(job.filed_root) / job.rel_dir / spool.suffixed(result_name(job), job.filed_suffix, bases(job))


def result_name(job: Job) -> str:
    """`NAME.EXT.result.json`, or a shortened name that fits the filesystem (SPEC 4.5)."""
    return spool.result_name(job.primary, job.id)


def _folder_of(job: Job) -> Path | None:
    """The folder a job is filed into (or taken back from), once that is recorded."""
    return Path(job.filed_root) / job.rel_dir if job.filed_root else None


def _filing_problem(exc: Exception, folder: Path | None = None, *, taking_back: bool = False) -> str:
    """A sentence saying what to fix.  The folder in `sent/` or `failed/` is named only
    when it is the culprit, looked at as the gateway's user: the same errors come from
    the private folder too, and naming the wrong folder would send the operator there."""
    if isinstance(exc, SpoolError):
        return str(exc)
    if not isinstance(exc, OSError):
        return f"filing failed ({type(exc).__name__}: {exc}); it is tried again"
    code, then = exc.errno, "the job is taken back then" if taking_back else "the job is filed then"
    where = f" ({shown(exc.filename)})" if exc.filename else ""
    if folder is not None and code in (errno.EACCES, errno.EPERM) and not _may_write(folder):
        verb = "move files out of" if taking_back else "write into"
        return (f"the gateway's user may not {verb} {shown(folder)}{where}: give the gateway's group "
                "write permission on that folder, or on the folder above it if it is missing "
                f"(see the README, 'Folder layout'); {then}")
    if folder is not None and code == errno.EROFS and _read_only(folder):
        return f"the filesystem of {shown(folder)} is read-only{where}: remount it read-write; {then}"
    if folder is not None and code == errno.ENOSPC:
        return (f"no space left on the filesystem of {shown(folder)} or of the private folder{where}: "
                f"free some space; {then}")
    if code == errno.EDQUOT:
        return f"the gateway's user has used up its disk quota{where}: raise or free it; {then}"
    between = f" between the private folder and {shown(folder)}" if folder is not None else ""
    end = "it is taken back" if taking_back else "it is filed"
    return f"its files could not be moved{between}{where}: {exc.strerror or exc}; fix that and {end}"


def _may_write(folder: Path) -> bool:
    """As the daemon runs (its effective user and capabilities): a folder missing is not
    writable.  A link is not looked through (filing never follows one: it is in the way)."""
    try:
        return os.access(folder, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids,
                         follow_symlinks=os.access not in os.supports_follow_symlinks)
    except OSError:
        return False


def _read_only(folder: Path) -> bool:
    p = folder
    while (os.path.islink(p) or not os.path.lexists(p)) and p.parent != p:
        p = p.parent  # still to be made, or a link: its filesystem is the nearest real parent's
    try:
        return bool(os.statvfs(p).f_flag & os.ST_RDONLY)
    except OSError:
        return True  # cannot tell: say what the error said
