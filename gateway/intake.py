"""Stage 1, intake: from files seen in the outboxes to judged jobs (SPEC 4.1-4.5).

Each turn: drain the watcher's events, let settle deadlines and rescans that are due
run, plan the folders that changed (`planner.plan_folder`), claim each group (commit
the intent, rename into the job's private folder) and judge it (`judge.read_job`, the
document reader, `judge.finish_group`).
A turn does at most about `SLICE` seconds of work, so a burst of thousands of files
never starves the heartbeat; the rest waits for the next turn.

One item never stops the rest: a group whose claim fails is undone (no job row, no
folder left behind) and becomes *blocked* with a backoff; a job whose judging raises
something unexpected is blocked and judged again later.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path

from gateway import spool
from gateway.blocking import BlockedItems
from gateway.config import OutboxConfig
from gateway.docreader import DocumentReader, ReaderUnavailable
from gateway.errors import Rejected, SpoolError
from gateway.faults import crash_point
from gateway.folders import FolderGuard
from gateway.handover import HANDOVER_BYTES
from gateway.judge import (
    Accepted,
    Group,
    file_sha256,
    finish_group,
    has_destination_without_sidecar,
    read_job,
    read_sidecar,
)
from gateway.metrics import Metrics
from gateway.names import shown
from gateway.planner import Plan, plan_folder
from gateway.reload import Reload, watching_changed
from gateway.sidecar import Sidecar, is_sidecar_name
from gateway.stage import Stage
from gateway.store import Job, Phase, SourceFile, Store
from gateway.watcher import Seen, Watcher

TICK = 0.1          # the shortest wait between two turns with nothing to do now
SLICE = 0.5         # the most work one turn does before the heartbeat beats again
FOLDER_CHECK = 5.0  # how often outbox, sent and failed folders are checked (missing, unmounted)
UNFINISHED_RETRY = 1.0  # claims and judging to try again are looked at this often
FOLDER_RETRY = 2.0  # a folder whose planning or claiming raised is planned again this much later
READ_BUDGET = 1.0   # seconds a claimed batch's documents may take to be read before the rest waits a turn
READ_BATCH_BYTES = 64 << 20  # bytes of documents held at once for the reader
READABLE_TRUST = 1.0  # seconds a file found readable is not asked again while unchanged
CLAIM_BATCH = 32    # groups claimed together: one commit for their intents, one for their verdicts


def claim_problem(exc: OSError | SpoolError, folder: Path) -> str:
    """A sentence saying what to fix, for the errors a claim meets in real outboxes."""
    if isinstance(exc, SpoolError):
        return str(exc)
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM):
        return (f"the gateway's user may not move files out of {shown(folder)}: give the gateway's group "
                "write permission on that folder (see the README, 'Folder layout')")
    if code == errno.ENAMETOOLONG:
        return "the name or path is too long to move into the gateway's private folder: shorten it"
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "the filesystem is full: free some space; the file is taken once there is room"
    if code == errno.EROFS:
        return "the filesystem is read-only: remount it read-write"
    if code in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOTEMPTY):
        return f"a file or folder is in the way ({exc.strerror}): remove or rename it"
    return f"it could not be moved ({exc.strerror or exc})"


class Intake(Stage):
    name = "intake"

    def __init__(self, store: Store, outboxes: Mapping[str, OutboxConfig], metrics: Metrics, *,
                 simulate: bool, file_names: bool, paused: dict[str, str],
                 on_judged: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self.busy = False  # its last turn left work for the next at once (filing gives way meanwhile)
        self.on_idle: Callable[[], None] = lambda: None  # it took what there was (filing goes on)
        self.store, self.outboxes, self.metrics = store, dict(outboxes), metrics
        self.retired: dict[str, OutboxConfig] = {}  # removed by a reload: their jobs still finish
        self.simulate, self.file_names = simulate, file_names
        self.paused = paused  # shared with the other stages and /healthz: outbox -> why
        self.on_judged = on_judged
        # pypdf and Pillow read documents in a process of their own, with a deadline (SPEC 4.5).
        self.reader = DocumentReader()
        # Jobs just accepted, with their documents' bytes as judged, handed to the sending
        # stage so that it need not read either again.
        self.on_accepted: Callable[[list[tuple[Job, Accepted]]], None] = lambda accepted: None
        self.watcher = Watcher(file_names=file_names)
        self.watcher.breathe = self.breathe
        self.watcher.on_event = self.wake
        self.guard = FolderGuard()
        self._sidecars: dict[tuple[str, tuple], Sidecar | Rejected] = {}
        self._wake_at: dict[tuple[str, str], float] = {}  # (outbox, folder) -> plan again then
        # Folders waiting to be planned, per outbox, in turn order: a folder whose work did
        # not fit in a turn goes to the back, so a burst in one never starves the others.
        self._pending: dict[str, dict[str, None]] = {}
        # Plans made but not yet taken (a folder larger than one turn's work): taken in the
        # next turns without planning the folder again, unless it changed meanwhile.
        self._queued: dict[tuple[str, str], deque[Plan]] = {}
        self._turns = 0
        self._failing: set[tuple[str, str]] = set()
        self._next_folder_check = 0.0
        cap = self._rescan_of
        self.blocked_claims = BlockedItems(store, "claim", self.log, cap, file_names=file_names)
        self.blocked_jobs = BlockedItems(store, "intake", self.log, cap, file_names=file_names)
        self._unfinished: dict[int, str] = {}  # job -> outbox: claims or judging to try again
        # (outbox, path in it) -> job: files of claims a crash interrupted, still in the outbox
        # until the claim is finished: never planned as a job of their own meanwhile.
        self._claiming: dict[tuple[str, str], int] = {}
        self._stuck: dict[tuple[str, str, str], int] = {}  # a group whose failed claim is not undone yet

    def _rescan_of(self, outbox: str) -> float:
        ob = self.outboxes.get(outbox)
        return ob.rescan if ob else 60.0

    # -- the stage ------------------------------------------------------------------

    def start_watching(self) -> None:
        """Before READY: the watchers run (or the outbox is paused, saying why)."""
        for ob in self.outboxes.values():
            self._check_folders(ob)

    def initialize(self) -> None:
        """Claims interrupted by a crash are finished (or undone), and claimed jobs that
        were never judged are judged: each on its own, so one bad job never stops the rest."""
        for job_id in self.store.job_ids_in_phase(Phase.CLAIMING):
            self._unfinished[job_id] = ""
            job = self.store.get_job(job_id)
            for name in job.names:
                self._claiming[(job.outbox, _in_outbox(job.rel_dir, name))] = job_id
        for job_id in self.store.held_job_ids_without_recipients():
            self._unfinished[job_id] = ""
        try:
            self.reader.start()  # the first document does not wait for it to load
        except ReaderUnavailable as exc:  # asked again at the first document, and said then
            self.log.debug("the document reader did not start yet: %s", exc)

    def turn(self) -> float:
        end = time.monotonic() + SLICE
        now = time.monotonic()
        if now >= self._next_folder_check:
            self._next_folder_check = now + FOLDER_CHECK
            for ob in self.outboxes.values():
                self._check_folders(ob)
        self.watcher.drain()
        self.watcher.tick(budget=SLICE / 2)
        if self.halted() is not None:  # the database file was deleted or replaced: no claims (dbguard.py)
            self.busy = False
            return TICK
        more = self._take_all(end)
        was_busy, self.busy = self.busy, more
        if was_busy and not more:
            self.on_idle()
        return 0.0 if more else self._idle_wait()

    def _take_all(self, end: float) -> bool:
        """Plan and take what is due in every outbox, each first in turn; whether there is
        more to do at once."""
        more = self._retry_unfinished(end)
        names = list(self.outboxes)
        self._turns += 1
        start = self._turns % len(names) if names else 0
        now = self.watcher.clock()
        waking = {o for (o, _), t in self._wake_at.items() if t <= now}
        queued = {o for o, _ in self._queued}
        for name in names[start:] + names[:start]:  # each outbox goes first in turn
            ob = self.outboxes[name]
            if name in self.paused or name not in self.watcher.outboxes:
                continue
            if self.watcher.outboxes[name].dirty or self._pending.get(name) or name in waking \
                    or name in queued:  # else nothing to plan: an idle outbox costs nothing
                more |= self._plan_outbox(ob, end)
            self.metrics.files_waiting.labels(name).set(self.watcher.waiting(name))
            self.metrics.files_waiting_long.labels(name).set(self.watcher.long_waiting(name))
        return more

    def _idle_wait(self) -> float:
        """Until the next deadline: an event wakes the stage sooner (`Watcher.on_event`),
        so an idle daemon is idle instead of looking ten times a second."""
        due = [self._next_folder_check, self.watcher.next_due(), *self._wake_at.values()]
        if self._unfinished:
            due.append(time.monotonic() + UNFINISHED_RETRY)
        return min(FOLDER_CHECK, max(TICK, min(due) - time.monotonic()))

    def shutdown(self) -> None:
        self.watcher.stop()
        self.reader.close()

    def apply(self, change: Reload) -> None:
        """Outboxes added, removed or changed (SIGHUP).  Files still in an outbox were
        never claimed, so watching a folder afresh takes each of them once; jobs of a
        removed outbox are judged with its last settings (`retired`)."""
        old = self.outboxes
        self.outboxes, self.retired = dict(change.outboxes), dict(change.retired)
        names = self.file_names = change.config.log.file_names
        self.watcher.file_names = self.blocked_claims.file_names = self.blocked_jobs.file_names = names
        for name, ob in old.items():
            new = self.outboxes.get(name)
            if new is not None and not watching_changed(ob, new):
                if new != ob:  # settings only: its folders are planned again with them
                    self._forget_plans(name)
                    self.watcher.mark_all_dirty(name)
                continue
            self.watcher.remove(name)
            self._forget_plans(name)
            self.paused.pop(name, None)
            for key in self.blocked_claims.keys():
                if key[0] == name:
                    self.blocked_claims.forget(key)
            self._stuck = {k: v for k, v in self._stuck.items() if k[0] != name}
        for ob in self.outboxes.values():
            if ob.name not in self.watcher.outboxes and ob.name not in self.paused:
                self._check_folders(ob)
        self._next_folder_check = 0.0
        for job_id, outbox in self._unfinished.items():
            if outbox in self.outboxes or outbox in self.retired:
                self.blocked_jobs.forget(("job", job_id))  # judged again now, with the new settings
        self.on_judged()

    def _forget_plans(self, outbox: str) -> None:
        self._pending.pop(outbox, None)
        for key in [k for k in self._queued if k[0] == outbox]:
            del self._queued[key]
        for key in [k for k in self._wake_at if k[0] == outbox]:
            del self._wake_at[key]

    # -- planning and claiming ------------------------------------------------------

    def _plan_outbox(self, ob: OutboxConfig, end: float) -> bool:
        """Plan the folders that changed or whose wait is over; True if time ran out."""
        now = self.watcher.clock()
        if self.guard.private.problem(ob):
            return False  # checked before each claim batch; the folder check pauses the outbox
        pending = self._pending.setdefault(ob.name, {})
        for folder in sorted(self.watcher.take_dirty(ob.name)):
            self.blocked_claims.folder_changed(ob.name, folder)
            self._queued.pop((ob.name, folder), None)  # changed: planned again
            pending.setdefault(folder)
        for (o, folder), t in list(self._wake_at.items()):
            if o == ob.name and t <= now:
                del self._wake_at[(o, folder)]
                self._queued.pop((ob.name, folder), None)
                pending.setdefault(folder)
        for folder in list(pending):
            if time.monotonic() > end:
                return True
            self.breathe()
            del pending[folder]
            try:
                finished = self._plan_folder(ob, folder, now, end)
            except Exception as exc:  # e.g. the database's disk is full: try the folder again soon
                self._queued.pop((ob.name, folder), None)
                self._wake_at[(ob.name, folder)] = now + FOLDER_RETRY
                key = ("folder", type(exc).__name__)
                self._failing.add(key)
                self.problems.problem(key, "%s: planning or claiming failed, tried again: %s: %s", ob.name,
                                      type(exc).__name__, exc, exc=exc)
                continue
            for key in self._failing:
                self.problems.clear(key, "intake works again")
            self._failing.clear()
            if not finished:
                pending[folder] = None  # unfinished: to the back of the line
        return bool(pending) and time.monotonic() > end

    def _plan_folder(self, ob: OutboxConfig, folder: str, now: float, end: float) -> bool:
        """Plan one folder and take what is ready; False if time ran out before the end."""
        files = self.watcher.files_in(ob.name, folder)
        if not files:
            self._queued.pop((ob.name, folder), None)
            return True
        queue = self._queued.pop((ob.name, folder), None)
        wake = None
        if queue is None:
            root = ob.path / folder
            sidecars = {n: p for n, s in files.items() if is_sidecar_name(n) and s.ready
                        and (p := self._sidecar(ob.path, root / n, s)) is not None}
            result = plan_folder(folder, files, sidecars,
                                 readable=lambda n: _readable(root, n, files[n]),
                                 has_destination=has_destination_without_sidecar(folder, ob),
                                 sidecar_wait=ob.sidecar_wait, now=now)
            queue, wake = deque(result.plans), result.wake_at
        finished = True
        batch: list[Plan] = []
        while queue:
            if time.monotonic() > end:
                self._queued[(ob.name, folder)] = queue  # the rest next turn
                finished = False
                break
            plan = queue.popleft()
            if not all(n in files and files[n].ready for n in plan.names):
                continue  # changed since it was planned: the folder is planned again
            key = (ob.name, folder, plan.primary)
            if key in self._stuck:
                continue  # its one job row is tried again by _retry_unfinished, never a second
            if self._claiming and any((ob.name, _in_outbox(plan.rel_dir, n)) in self._claiming
                                      for n in plan.names):
                wake = _earliest(wake, now + UNFINISHED_RETRY)  # its claim is finished first
                continue
            if not self.blocked_claims.due(key):
                wake = _earliest(wake, self.blocked_claims.next_try(key))
                continue
            batch.append(plan)
            if len(batch) >= CLAIM_BATCH:
                wake = _earliest(wake, self.take(ob, batch, files, now))
                batch = []
                self.breathe()
        if batch:
            wake = _earliest(wake, self.take(ob, batch, files, now))
        if wake is not None:
            self._wake_at[(ob.name, folder)] = wake
        return finished

    def _sidecar(self, root: Path, path: Path, seen: Seen) -> Sidecar | Rejected | None:
        """Parsed sidecars are cached by signature, so a folder that waits is not re-read."""
        key = (str(path), seen.sig)
        if key not in self._sidecars:
            if len(self._sidecars) > 10000:
                self._sidecars.clear()
            try:
                self._sidecars[key] = read_sidecar(path, root=root)
            except Rejected as exc:
                self._sidecars[key] = exc
            except OSError:
                return None  # an I/O error: not ready; the next change or rescan tries again
        return self._sidecars[key]

    def take(self, ob: OutboxConfig, plans: list[Plan], files: Mapping[str, Seen],
             now_mono: float) -> float | None:
        """Claim groups of one folder as a batch: commit every intent (one commit), rename
        each group into its job's folder, sync each folder once, judge them, and commit
        that they are held and judged (one commit).  The same commit points as one group
        at a time, shared.  Returns when to try again if a claim is blocked."""
        if self.halted() is not None:  # looked at before each claim batch (SPEC 4.5); it stays halted
            return None
        wall = time.time()
        intents = []
        with self.store.batch():
            for plan in plans:
                sources = [SourceFile(n, files[n].ino, files[n].size, files[n].sig[1] if files[n].sig else 0)
                           for n in plan.names]
                rej = plan.rejection
                job_id = self.store.record_claim_intent(
                    outbox=ob.name, outbox_path=str(ob.path), rel_dir=plan.rel_dir, sources=sources,
                    documents=plan.documents, sidecar=plan.sidecar, primary=plan.primary,
                    simulated=self.simulate,
                    settled_at=wall - (now_mono - plan.settled_at) if plan.settled_at else None,
                    reason_code=rej.reason_code if rej else None, reason=rej.reason if rej else None,
                    sent_root=str(ob.sent), failed_root=str(ob.failed), private_root=str(ob.private))
                intents.append((plan, sources, job_id))
        crash_point("claim")
        taken: dict[int, list[str]] = {}  # job -> the names that were gone
        handled: set[int] = set()  # taken, or undone (or left to retry) on its own
        try:
            with spool.DirSyncs() as syncs:
                wake = self._claim_all(ob, intents, syncs, taken, handled)
                syncs.run()
        except Exception:  # e.g. a sync or the database failed: each is finished on its own later
            for _, _, job_id in intents:
                if job_id in taken or job_id not in handled:
                    self._unfinished[job_id] = ob.name
            raise
        crash_point("claimed")
        if taken:
            try:
                self._judge_all(sorted(self.store.jobs_by_ids(taken), key=lambda j: j.id), taken)
            except Exception:  # e.g. the database's disk is full: each is finished on its own later
                for job_id in taken:
                    self._unfinished[job_id] = ob.name
                raise
        return wake

    def _claim_all(self, ob: OutboxConfig, intents: list[tuple[Plan, list[SourceFile], int]],
                   syncs: spool.DirSyncs, taken: dict[int, list[str]], handled: set[int]) -> float | None:
        """The renames of a batch whose intents are committed (`taken` and `handled` fill
        as they are done); a group that cannot be claimed is undone and blocked on its own."""
        wake = None
        for plan, sources, job_id in intents:
            key = (ob.name, plan.rel_dir, plan.primary)
            try:
                taken[job_id] = spool.claim(ob.path, ob.private, job_id, plan.rel_dir, sources,
                                            crash_hook=crash_point, syncs=syncs)
            except (OSError, SpoolError) as exc:
                path = ob.path / plan.rel_dir / plan.primary
                if not self._undo_claim(job_id, ob.path, ob.private, plan.rel_dir, sources):
                    self._unfinished[job_id] = ob.name
                    self._stuck[key] = job_id
                handled.add(job_id)
                wake = _earliest(wake, self.blocked_claims.block(
                    key, outbox=ob.name, item=str(path), folder=plan.rel_dir,
                    reason=claim_problem(exc, ob.path / plan.rel_dir)))
                continue
            handled.add(job_id)
            self.breathe()
            self.blocked_claims.clear(key, "claimed")
            for n in plan.names:
                self.watcher.forget(ob.name, os.path.join(plan.rel_dir, n) if plan.rel_dir else n)
            self.metrics.count(self.metrics.files_detected, ob.name,
                               amount=len(plan.names) - len(taken[job_id]))
        return wake

    def _undo_claim(self, job_id: int, outbox_path: Path, private: Path, rel_dir: str,
                    sources: list[SourceFile]) -> bool:
        """Put back what a failed claim moved, remove its folder and its row: True if
        nothing of it is left, so that trying again never adds rows or folders."""
        try:
            spool.unclaim(outbox_path, private, job_id, rel_dir, sources)
        except (OSError, SpoolError) as exc:
            self.problems.problem(("undo", job_id), "job %s: a failed claim could not be undone yet: %s",
                                  job_id, exc)
            return False
        self.store.abandon_claim(job_id)
        return True

    def _retry_unfinished(self, end: float) -> bool:
        """Claims that stopped half-way (a crash, a failure that could not be undone) and
        jobs whose judging failed: each tried on its own, with its own backoff."""
        for job_id in list(self._unfinished):
            if time.monotonic() > end:
                return True
            key = ("job", job_id)
            if not self.blocked_jobs.due(key):
                continue
            self.breathe()
            try:
                job = self.store.get_job(job_id)
                ob = self._config_of(job.outbox)
                if job.outbox in self.paused:
                    continue
                if job.phase == Phase.CLAIMING:
                    self._finish_claim(job)
                    self._claimed_after_restart(job)
                elif job.phase == Phase.HELD and job.state == "queued" and not job.recipients:
                    if ob is None:
                        raise _Unconfigured(job.outbox)
                    self.judge(job_id, raise_errors=True)
                self._unfinished.pop(job_id, None)
                self._stuck = {k: v for k, v in self._stuck.items() if v != job_id}
                self.blocked_jobs.clear(key)
            except Exception as exc:
                self.blocked_jobs.block(key, outbox=self._outbox_of(job_id), item=f"job {job_id}",
                                        job_id=job_id, reason=_job_problem(exc))
        return False

    def _claimed_after_restart(self, job: Job) -> None:
        """Its files were moved (or put back): the watcher forgets what it saw of them, so
        that no plan of this turn takes the moved ones for new files, and they may be
        planned again once they are back."""
        for name in job.names:
            rel = _in_outbox(job.rel_dir, name)
            if self._claiming.pop((job.outbox, rel), None) is not None:
                self.watcher.forget(job.outbox, rel)

    def _outbox_of(self, job_id: int) -> str:
        try:
            return self.store.get_job(job_id).outbox
        except Exception:
            return "?"

    def _finish_claim(self, job: Job) -> None:
        """After a crash: the claim is finished; if it cannot be, it is undone."""
        try:
            missing = spool.claim(job.outbox_path, job.private_root, job.id, job.rel_dir, job.sources,
                                  resume=True)
        except (OSError, SpoolError):
            if self._undo_claim(job.id, Path(job.outbox_path), Path(job.private_root), job.rel_dir,
                                job.sources):
                self.log.info("job %s: an interrupted claim was undone; its files wait in the outbox", job.id)
                return
            raise
        self.store.mark_held(job.id, missing)
        self.log.info("job %s: claim completed after restart", job.id)
        self.judge(job.id, raise_errors=True)

    def _config_of(self, outbox: str) -> OutboxConfig | None:
        """The outbox's settings, or the last ones of an outbox removed by a reload."""
        return self.outboxes.get(outbox) or self.retired.get(outbox)

    def judge(self, job_id: int, *, raise_errors: bool = False) -> None:
        """Accept or reject a claimed job.  Anything but a rejection (an I/O error, a
        bug met by odd content) leaves it claimed and blocked, to be judged again."""
        job = self.store.get_job(job_id)
        with self.aside():  # pypdf reads what anyone may write: never in the shared turn
            verdict = self._verdict(job)
        if isinstance(verdict, Exception) and not isinstance(verdict, Rejected) and raise_errors:
            raise verdict
        self._record(job, verdict)
        self._after_verdict(job, verdict)
        self.on_judged()

    def _judge_all(self, jobs: list[Job], missing: Mapping[int, list[str]]) -> None:
        """Jobs just claimed: judged one by one (file reads only), then recorded as held
        and judged in one commit.  Waited for, though no side effect depends on it: if
        that commit failed (a full disk) unseen, the jobs would be left claimed with nobody
        to try them again before a restart."""
        with self.aside():  # pypdf reads what anyone may write: never in the shared turn
            for job in jobs:
                gone = set(missing.get(job.id, ()))
                if gone:
                    job.sources = [s for s in job.sources if s.name not in gone]
            verdicts = list(zip(jobs, self._verdicts(jobs, budget=READ_BUDGET), strict=True))
        with self.store.batch():
            for job, verdict in verdicts:
                whole = isinstance(verdict, Accepted) and not missing.get(job.id)
                if not whole:
                    self.store.mark_held(job.id, missing.get(job.id, ()))
                self._record(job, verdict, claimed=whole)
        crash_point("judged")
        for job, verdict in verdicts:
            self._after_verdict(job, verdict)
        self.on_accepted([(job, verdict) for job, verdict in verdicts if isinstance(verdict, Accepted)])
        self.on_judged()

    def _verdict(self, job: Job) -> Accepted | Rejected | Exception | None:
        """What judging says, without writing anything: None while its outbox is unknown."""
        return self._verdicts([job])[0]

    def _verdicts(self, jobs: list[Job], *, budget: float | None = None
                  ) -> list[Accepted | Rejected | Exception | None]:
        """`_verdict` for each job; their documents go to the reader together, at most
        READ_BATCH_BYTES of them held at once.  With `budget` (seconds), a job whose
        documents were not started within it (a batch of documents slow to read) gets
        None, and is judged in a later turn: the heartbeat beats between."""
        out: list[Accepted | Rejected | Exception | None] = [None] * len(jobs)
        until = None if budget is None else time.monotonic() + budget
        room = HANDOVER_BYTES  # bytes of accepted documents kept for the sending stage
        chunk: list[tuple[int, OutboxConfig, Group]] = []
        size, first = 0, True
        for i, job in enumerate(jobs):
            ob = self._config_of(job.outbox)
            if ob is None:
                continue
            try:
                if not job.sources:
                    raise Rejected("unreadable", "every file of the job disappeared before it was taken")
                group = read_job(job, ob, spool.job_dir(job.private_root, job.id) / job.rel_dir)
            except Exception as exc:
                out[i] = exc
                continue
            chunk.append((i, ob, group))
            size += sum(len(data) for data in group.data)
            if size >= READ_BATCH_BYTES:
                self._read_chunk(chunk, out, until, first=first)
                room = _keep_within(room, [out[k] for k, _, _ in chunk])
                chunk, size, first = [], 0, False
        self._read_chunk(chunk, out, until, first=first)
        _keep_within(room, [out[k] for k, _, _ in chunk])
        for job, verdict in zip(jobs, out, strict=True):
            if isinstance(verdict, Rejected):
                held = spool.job_dir(job.private_root, job.id) / job.rel_dir
                verdict.sha256 = [file_sha256(held / n) for n in job.names]  # type: ignore[attr-defined]
        return out

    def _read_chunk(self, chunk: list[tuple[int, OutboxConfig, Group]],
                    out: list[Accepted | Rejected | Exception | None], until: float | None, *,
                    first: bool) -> None:
        """The reader's answers for a chunk of groups, and each group finished with them;
        a group left unanswered (the budget) keeps None.  The first group of a batch is
        always read, so every turn gets somewhere."""
        requests: list[tuple[bytes, int]] = []
        groups_at: set[int] = set()
        for k, (_, ob, group) in enumerate(chunk):
            if k or not first:
                groups_at.add(len(requests))
            requests += group.requests(ob)
        if not requests:
            return
        budget = None if until is None else until - time.monotonic()
        try:
            infos = self.reader.inspect_all(requests, budget=budget, groups_at=groups_at)
        except Exception as exc:  # no reader (ReaderUnavailable): judged again later
            for i, _, _ in chunk:
                out[i] = exc
            return
        for i, ob, group in chunk:
            n = len(group.data)
            if len(infos) < n:
                break  # not started within the budget: judged in a later turn
            mine, infos = infos[:n], infos[n:]
            try:
                out[i] = finish_group(group, ob, mine)
            except Exception as exc:
                out[i] = exc

    def _record(self, job: Job, verdict: Accepted | Rejected | Exception | None, *,
                claimed: bool = False) -> None:
        if isinstance(verdict, Rejected):
            self.store.reject_job(job.id, verdict.reason_code, verdict.reason,
                                  sha256=getattr(verdict, "sha256", ()))
        elif isinstance(verdict, Accepted):
            send_at = verdict.options.get("send_at")
            self.store.accept_job(job.id, numbers=verdict.numbers, options=verdict.options,
                                  sha256=verdict.sha256, pages=verdict.pages, kinds=verdict.kinds,
                                  send_at=datetime.fromisoformat(send_at).timestamp() if send_at else None,
                                  claimed=claimed)
            job.options, job.sha256, job.pages, job.kinds = (verdict.options, list(verdict.sha256),
                                                             verdict.pages, list(verdict.kinds))

    def _after_verdict(self, job: Job, verdict: Accepted | Rejected | Exception | None) -> None:
        if verdict is None:
            self._unfinished[job.id] = job.outbox
        elif isinstance(verdict, Rejected):
            self.metrics.files_rejected.labels(job.outbox, verdict.reason_code).inc()
            if self.file_names:
                self.log.warning("%s: %s rejected: %s", job.outbox, shown(", ".join(job.names)),
                                 shown(verdict.reason))
            else:  # the reason may quote a name or sidecar text (SPEC 3): its code and the job say enough
                self.log.warning("%s: job %s rejected: %s", job.outbox, job.id, verdict.reason_code)
        elif not isinstance(verdict, Accepted):
            self._unfinished[job.id] = job.outbox
            self.blocked_jobs.block(("job", job.id), outbox=job.outbox, item=f"job {job.id}", job_id=job.id,
                                    reason=_job_problem(verdict))

    # -- outbox folders ---------------------------------------------------------------

    def folder_problem(self, outbox: str) -> str | None:
        ob = self.outboxes.get(outbox)
        return self.guard.problem(ob) if ob is not None else None

    def _check_folders(self, ob: OutboxConfig) -> None:
        """Pause an outbox whose folders went away, resume it when they are back."""
        problem = self.guard.problem(ob)
        if problem and ob.name not in self.paused:
            self.log.error("%s: outbox paused", problem)
            self.paused[ob.name] = problem
            self.watcher.remove(ob.name)
            self.metrics.files_waiting.labels(ob.name).set(0)
            self.metrics.outbox_paused.labels(ob.name).set(1)
        elif problem:
            self.paused[ob.name] = problem
        elif ob.name in self.paused or ob.name not in self.watcher.outboxes or self.guard.replaced(ob.path):
            if self.paused.pop(ob.name, None):
                self.log.info("outbox %s: its folders are back; resuming", ob.name)
            self.metrics.outbox_paused.labels(ob.name).set(0)
            self.watcher.remove(ob.name)
            self.watcher.add(ob.name, ob.path, settle=ob.settle, rescan=ob.rescan, polling=ob.polling,
                             private=ob.private)
            self.on_judged()


class _Unconfigured(Exception):
    def __init__(self, outbox: str) -> None:
        super().__init__(f"its outbox {outbox!r} is no longer in the configuration")


def _job_problem(exc: Exception) -> str:
    if isinstance(exc, _Unconfigured):
        return f"{exc}: add the outbox back to judge and send it"
    if isinstance(exc, OSError):
        return f"its files could not be read or moved ({exc.strerror or exc}); it is tried again"
    return f"judging it failed ({type(exc).__name__}: {exc}); it is tried again"


def _keep_within(room: int, verdicts: list[Accepted | Rejected | Exception | None]) -> int:
    """Accepted documents' bytes are kept for the sending stage only as far as it holds
    them (handover.py), not a batch of documents of up to max_file_size each: the rest
    it reads again.  Returns the room left."""
    for verdict in verdicts:
        if isinstance(verdict, Accepted):
            size = sum(len(d) for d in verdict.data)
            if size > room:
                verdict.data = []
            else:
                room -= size
    return room


def _in_outbox(rel_dir: str, name: str) -> str:
    """A file's path in its outbox, as the watcher names it."""
    return os.path.join(rel_dir, name) if rel_dir else name


def _earliest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _readable(root: Path, name: str, seen: Seen) -> bool:
    """Whether the gateway's user may read a file about to be taken.  A folder that keeps
    changing (a burst still arriving) is planned again at every turn, so a yes is kept on
    the file's entry and not asked of the kernel again (`access`) while the file's inode,
    ctime, mode and owner are those it was given for, for at most READABLE_TRUST: a change
    of permissions, owner or ACL changes the ctime (issue 12: `access` was 5.8 calls per
    document).  A no is asked again every time."""
    path = os.path.join(root, name)  # a string: no Path made per file per plan (issue 12)
    try:
        st = os.lstat(path)
    except OSError:
        return True  # gone: the claim notices
    if not stat.S_ISREG(st.st_mode):
        return True  # never opened; rejected as unsafe after the claim
    now = time.monotonic()
    key = (st.st_ino, st.st_ctime_ns, st.st_mode, st.st_uid, st.st_gid)
    if seen.readable is not None and seen.readable[0] == key and now - seen.readable[1] < READABLE_TRUST:
        return True
    ok = os.access(path, os.R_OK)
    seen.readable = (key, now) if ok else None
    return ok
