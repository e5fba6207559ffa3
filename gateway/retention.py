"""Stage 4, retention (SPEC 3): what the gateway filed in `sent/` and `failed/` is deleted
once `retention.sent` / `retention.failed` have passed since its job completed, and
finished jobs leave the database after `retention.jobs` once none of their files is left.

Its own loop, off the sending path: a slow share or a large file to hash never holds up
a send, a poll or a filing.  What is due comes from the database (the jobs it filed,
an indexed range by `completed_at`), never from walking `sent/`: the gateway deletes
only what it knows it filed, and trusts no result file someone else may have written.
Each file is deleted only while its sha256 is still the one recorded when it was taken,
reached without following a link (spool.delete_filed).

A *run* walks the due jobs in small batches (a cursor, a time slice per turn, so the
heartbeat beats), then gives freed pages back to the filesystem (incremental vacuum),
then logs one summary line.  It starts at start-up and then every tenth of the shortest
limit (at least every second, at most hourly).  A job is marked swept in the database
only after its files were dealt with, so a run cut short by a crash is finished by the
next one: what was deleted is simply no longer there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway import spool
from gateway.faults import crash_point
from gateway.filing import bases, result_name
from gateway.metrics import Metrics
from gateway.reload import Reload
from gateway.stage import Stage
from gateway.store import Job, Phase, Store

BATCH = 50
SLICE = 0.5
IDLE = 10.0  # the longest wait: a reload wakes the stage, and a stage that waits 30 s looks stuck
RUN_EVERY_MIN = 1.0
RUN_EVERY_MAX = 3600.0
SHRINK_PAGES = 256  # pages given back per step: each step holds the store's lock for milliseconds


@dataclass
class _Run:
    steps: list[tuple[str, float]]         # (what, completed before), in order
    cursor: tuple[float, int] = (0.0, 0)  # (completed_at, id) last looked at in the current step
    deleted: dict[str, int] = field(default_factory=lambda: {"sent": 0, "failed": 0, "jobs": 0})
    kept: int = 0       # files of the gateway's jobs left alone: changed or replaced since filed
    skipped: int = 0    # jobs left for the next run: a folder missing or unmounted, an error


class Retention(Stage):
    name = "retention"

    def __init__(self, store: Store, metrics: Metrics, *, sent: float | None, failed: float | None,
                 jobs: float | None, paused: Mapping[str, str],
                 folder_problem: Callable[[str], str | None] = lambda outbox: None) -> None:
        super().__init__()
        self.store, self.metrics = store, metrics
        self.paused = paused
        self.folder_problem = folder_problem
        self._set_limits(sent=sent, failed=failed, jobs=jobs)
        self._run: _Run | None = None
        self._next = 0.0
        self._said_no_shrink = False

    def _set_limits(self, *, sent: float | None, failed: float | None, jobs: float | None) -> None:
        self.limits = {"sent": sent, "failed": failed, "jobs": jobs}
        configured = [v for v in self.limits.values() if v is not None]
        self.period = min(RUN_EVERY_MAX, max(RUN_EVERY_MIN, min(configured) / 10)) if configured else 0.0

    def apply(self, change: Reload) -> None:
        """New limits (SIGHUP) count from the next run; a run under way ends first."""
        r = change.config.retention
        if (r.sent, r.failed, r.jobs) != (self.limits["sent"], self.limits["failed"], self.limits["jobs"]):
            self._set_limits(sent=r.sent, failed=r.failed, jobs=r.jobs)
            self._next = 0.0

    @property
    def enabled(self) -> bool:
        return self.period > 0

    def turn(self) -> float:
        if not self.enabled or self.halted() is not None:  # halted: the database was replaced
            return IDLE
        now = time.monotonic()
        if self._run is None:
            if now < self._next:
                return min(IDLE, self._next - now)
            wall = time.time()
            self._run = _Run([(what, wall - limit) for what, limit in self.limits.items()
                              if limit is not None])
        end = now + SLICE
        while time.monotonic() < end:
            if not self._step(self._run, end):
                self._finish(self._run)
                self._run = None
                self._next = time.monotonic() + self.period
                return IDLE
        return 0.0

    # -- one step of a run ------------------------------------------------------------

    def _step(self, run: _Run, end: float) -> bool:
        """One batch of the current step; False once the run has nothing left."""
        if not run.steps:
            if run.deleted["jobs"] and self.store.give_back_pages(SHRINK_PAGES) > 0:
                return True
            return False
        what, before = run.steps[0]
        if what == "jobs":
            batch = self.store.old_filed_jobs(before=before, after=run.cursor, limit=BATCH)
        else:
            batch = self.store.jobs_to_sweep(what, before=before, after=run.cursor, limit=BATCH)
        gone = []
        for completed_at, job_id in batch:
            if time.monotonic() > end:
                break  # the cursor stays before this job: the next turn starts with it
            if what == "jobs":
                if self._nothing_left(job_id):
                    gone.append(job_id)
            else:
                self._sweep(run, what, job_id)
            run.cursor = (completed_at, job_id)
        else:
            if len(batch) < BATCH:
                run.steps.pop(0)
                run.cursor = (0.0, 0)
        if gone:
            removed = self.store.delete_jobs(gone, before=before)
            run.deleted["jobs"] += len(removed)
            self.metrics.retention_deleted.labels("jobs").inc(len(removed))
            crash_point("retention_jobs")
        return True

    def _usable(self, job: Job) -> bool:
        """Never judge a folder that is missing or an unmounted share: its files would look
        gone.  The job waits for the next run."""
        if job.filed_root is None or job.filed_suffix is None:
            return False
        if job.outbox in self.paused or self.folder_problem(job.outbox):
            return False
        return Path(job.filed_root).is_dir()

    def _sweep(self, run: _Run, what: str, job_id: int) -> None:
        job = self.store.get_job(job_id)
        if job.phase != Phase.FILED or job.filed_to != what:
            return  # taken back for a resend meanwhile
        if not self._usable(job):
            run.skipped += 1
            return
        assert job.filed_root is not None and job.filed_suffix is not None
        b = bases(job)
        files = [(spool.suffixed(name, job.filed_suffix, b), job.sha256[i] if i < len(job.sha256) else None)
                 for i, name in enumerate(job.names)]
        try:
            deleted, kept = spool.delete_filed(
                dest_root=Path(job.filed_root), rel_dir=job.rel_dir, files=files,
                result=spool.suffixed(result_name(job), job.filed_suffix, b), job_id=job.id,
                crash_hook=crash_point)
        except Exception as exc:
            run.skipped += 1
            self.problems.problem(("sweep", what), "retention: files of job %s in %s/ could not be "
                                  "deleted (%s: %s); tried again at the next run", job_id, what,
                                  type(exc).__name__, exc, exc=exc)
            return
        self.problems.clear(("sweep", what), "retention: deleting in %s/ works again", what)
        detail = f"retention: {deleted} file(s) deleted from {what}/"
        if kept:
            detail += f"; {kept} kept (changed or replaced since filed)"
        self.store.mark_swept(job.id, detail)
        run.deleted[what] += deleted
        run.kept += kept
        self.metrics.retention_deleted.labels(what).inc(deleted)

    def _nothing_left(self, job_id: int) -> bool:
        """A job leaves the database only when none of its files lies in sent/failed any
        more, and no folder of it is left in the private folder (a job folder the database
        does not know would stop the next start: dbguard.py)."""
        job = self.store.get_job(job_id)
        if job.phase != Phase.FILED or not self._usable(job):
            return False
        assert job.filed_root is not None and job.filed_suffix is not None
        if os.path.lexists(spool.job_dir(job.private_root, job.id)):
            return False
        b = bases(job)
        names = [spool.suffixed(n, job.filed_suffix, b) for n in job.names]
        names.append(spool.suffixed(result_name(job), job.filed_suffix, b))
        return spool.files_left(dest_root=Path(job.filed_root), rel_dir=job.rel_dir, names=names) is False

    # -- the end of a run ---------------------------------------------------------------

    def _finish(self, run: _Run) -> None:
        d = run.deleted
        note = ""
        if d["jobs"] and not self.store.shrinks() and not self._said_no_shrink:
            self._said_no_shrink = True
            note = (f"; {self.store.path} was made by an older version and does not shrink: "
                    "switch it once (README, 'Retention')")
        self.log.info("retention: deleted %d file(s) from sent/, %d from failed/ and %d finished job(s) "
                      "from the database; %d file(s) kept (changed since filed), %d job(s) left for the "
                      "next run%s", d["sent"], d["failed"], d["jobs"], run.kept, run.skipped, note)
