"""Stage 2, sending: submit queued recipients, poll those sending, resend, cancel (SPEC 6).

One scheduler thread (the stage's loop) decides what to start and does every write
to the store.  It makes most HTTP requests itself: written without waiting on an idle
keep-alive connection, their answers read as they come (`awaiting.py`).  What must wait
(a new connection, a large fax, an unusual answer, a proxy, the fax-cancel after giving
up) goes on in a pool of `max_in_flight` worker threads, with the same code: a request's
steps are a generator (`httpconn.run`) that either runs.  Every step commits its intent
in the store before its side effect, so a restart can tell what may have happened.
Filing is the next stage's work (`filing.py`).
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from gateway import spool
from gateway.awaiting import Awaiting
from gateway.config import OutboxConfig
from gateway.doctypes import safe_file_name, sniff
from gateway.errors import (
    ApiError,
    AuthFailed,
    JobNotFound,
    Refused,
    Rejected,
    RequestNotEncodable,
    Transient,
    Uncertain,
)
from gateway.faults import crash_point
from gateway.filing import bases
from gateway.handover import Handover
from gateway.httpconn import AnswerBroken, Call, Pending, Step, Steps, TransportError, run
from gateway.ifax import Attachment, FaxStatus, IFaxClient, PreparedRequest
from gateway.judge import Accepted, read_in
from gateway.metrics import Metrics
from gateway.reload import Reload
from gateway.stage import Stage
from gateway.store import ACTIVE_ORDER, Job, JobState, Phase, Recipient, Store
from gateway.throttle import Backoff, RateLimiter, Ticket
from gateway.waker import Waker
from gateway.workers import Workers, WorkersClosed

log = logging.getLogger("gateway.dispatcher")

PROBE_INTERVAL = 60.0
IDLE = 2.0  # the longest wait: work wakes the stage
REQUESTS_EVERY = 0.5  # cancel and resend requests of the CLI are looked for at most this often
JOB_CACHE = 4096  # jobs kept in memory while their recipients are sent and polled
DUE_BATCH = 64  # due submissions read at once
DUE_FRESH = 1.0  # seconds they are kept before they are read again
POLL_AHEAD = 0.25  # polls due within this are read together (at most a quarter of poll.interval)
PREPARED_AHEAD = 8 << 20  # bytes of requests encoded ahead while every worker is busy
SCHEDULE_TRUST = 1.0  # seconds the loop trusts what it knows of the queue without asking the store
SAME_REFUSALS_TO_PAUSE = 3
EARLY_WEBHOOKS = 256  # jobIds of webhooks that came before their fax's acceptance was recorded
EARLY_WEBHOOK_FOR = 60.0  # seconds such a webhook is remembered

# What a worker brings back: the write that records its request's outcome, run in the
# loop's thread, returning what to do once it is written (metrics, logs) or None.
Write = Callable[[], "Callable[[], None] | None"]


@dataclass(eq=False)
class _Flight:
    """One request's steps, from their launch until what they brought back is handed to
    the loop (`_land`), in this thread or a worker's."""
    kind: str
    rec: Recipient
    ticket: Ticket
    steps: Steps[Write | None]
    pool: Workers


class Dispatcher(Stage):
    name = "dispatcher"
    served_first = True  # answers are recorded, and the next requests start, without waiting a quantum

    def __init__(self, store: Store, client: IFaxClient, *, outboxes: Mapping[str, OutboxConfig],
                 metrics: Metrics, max_in_flight: int, requests_per_minute: int,
                 poll_interval: float, give_up_after: float = 6 * 3600, file_names: bool = True,
                 on_unfile: Callable[[], None] = lambda: None,
                 on_final: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self._wake = Waker()  # the loop waits for it and for answers in one select (`_idle`)
        self._awaiting: Awaiting[_Flight] = Awaiting(self._wake)
        self.store, self.client, self.metrics = store, client, metrics
        self.outboxes = dict(outboxes)  # with outboxes removed by a reload: their jobs still run
        self.configured = set(outboxes)  # the outboxes in the configuration now (metrics)
        self.max_in_flight = max_in_flight
        self.max_polls = max(1, max_in_flight // 2)
        self.poll_interval = poll_interval
        self.give_up_after = give_up_after
        self.file_names = file_names
        self.on_unfile = on_unfile  # the filing stage takes documents back for a resend
        self.on_final = on_final    # a job may have ended: the filing stage looks now
        self.limiter = RateLimiter(requests_per_minute)
        self.backoff = Backoff()
        self._pool = Workers(max_in_flight, "ifax")
        self._retired: list[tuple[Workers, IFaxClient]] = []  # replaced by a reload
        self._lock = threading.Lock()
        self._inflight: set[int] = set()
        self._running = {"submit": 0, "poll": 0}
        self.paused_reason: str | None = None
        self.paused_outboxes: dict[str, str] = {}  # set by the service: outbox -> why
        # Asked right before files are written: the periodic check may be a second late.
        self.folder_problem: Callable[[str], str | None] = lambda outbox: None
        self._next_probe = 0.0
        self._refusals: list[tuple[str, int]] = []  # (message, job id) of consecutive refusals
        # max_faxes_per_hour: outbox -> when it may submit again, for outboxes at their cap,
        # and those of them that hold submissions back right now (/healthz, the metric).
        self.capped: dict[str, float] = {}
        self.rate_limited: dict[str, float] = {}
        self._next_requests = 0.0
        self._caps_seen = False
        # What a submission and a final poll need of a job (outbox, documents, options) does
        # not change once it is judged: read once, not once per request.
        self._jobs: dict[int, Job] = {}
        self.handover = Handover()  # their documents as intake judged them, sent from memory
        # (recipient, kind, write) of requests that ended, for the loop to record.
        self._finished: collections.deque[tuple[Recipient, str, Write | None]] = collections.deque()
        self._deletes: collections.deque[tuple[int, list[str]]] = collections.deque()
        self._token_at: float | None = None  # held back by requests_per_minute until then
        self._due: collections.deque[Recipient] = collections.deque()  # read ahead (_read_due)
        self._due_until = 0.0
        # Encoded while every worker was busy, so a worker that comes free starts at once.
        self._prepared: collections.deque[tuple[Recipient, Job, PreparedRequest]] = collections.deque()
        # No submission (poll) is due before this, as far as this process's writes tell;
        # None: ask the store.  Every write here that makes one due sooner lowers it
        # (`_soon`); a change from another stage comes with `wake` (submissions) or
        # `poll_soon` (a webhook).  So a burst asks the store what is due once per intake
        # slice, not once per turn (issue 12).
        self._next: dict[str, float | None] = {"submit": None, "poll": None}
        self._polls: collections.deque[Recipient] = collections.deque()  # read ahead (_read_polls)
        self._news = {"submit": False, "poll": False}
        self._early: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._known_at = 0.0
        self.sends_waiting = False  # read by the filing stage, which gives way meanwhile

    # -- the stage ------------------------------------------------------------------

    def initialize(self) -> None:
        """A submission whose request may have left when the process died is uncertain
        (6.3); the time the gateway was down does not count toward giving up."""
        for rec in self.store.interrupted_submissions():
            try:
                log.error("job %s: the gateway stopped while sending to %s", rec.job_id, rec.number)
                job = self.store.get_job(rec.job_id)
                self.store.mark_submit_uncertain(
                    rec.id, "the gateway stopped while the request was being sent",
                    resend=self.resend_uncertain(job.outbox))
            except Exception as exc:
                self.problems.problem(("recover", rec.id), "job %s: recovery failed: %s", rec.job_id, exc,
                                      exc=exc)
        self.store.forget_poll_clocks()

    def turn(self) -> float:
        if self.halted() is not None:  # the database file was deleted or replaced (dbguard.py)
            self._settle()  # answers still go to the file the store has open (dbguard saves it)
            return 1.0
        self._token_at = None
        if time.monotonic() - self._known_at >= SCHEDULE_TRUST:
            self._forget_schedule()
        for kind, news in self._news.items():
            if news:  # cleared before the store is asked: a change after it wakes again
                self._news[kind] = False
                self._forget(kind)
        if time.monotonic() >= self._due_until:
            self._drop_read_ahead()
        if time.monotonic() >= self._next_requests:
            self._next_requests = time.monotonic() + REQUESTS_EVERY
            self._drop_read_ahead()  # a cancel or a resend may change what is due
            self._handle_requests()
        self._check_hourly_caps()
        # A poll a whole poll.interval overdue goes before any send (never later than
        # that); other polls yield to sends while those take every worker (issue 12).
        # While the API is down the probe is a submission instead (see _start_submissions).
        polls_full = not self.backoff.down and self._start_polls(late=self.poll_interval)
        submissions_full = sends_waiting = False
        if self.paused_reason:
            self._probe()
        else:
            submissions_full, sends_waiting = self._start_submissions()
        # Answers are recorded after the next requests left: a free worker never waits
        # for the last one's bookkeeping (each answer's recipient stays in flight until then).
        self._settle()
        self.sends_waiting = sends_waiting
        if not sends_waiting and not polls_full:
            polls_full = self._start_polls(late=0.0)
        return self._sleep_time(submissions_full, polls_full)

    def wake(self) -> None:
        """Another stage changed what is to be submitted (a job accepted or taken back)."""
        self._news["submit"] = True
        super().wake()

    def poll_soon(self) -> None:
        """A fax that is sending is to be polled sooner (a webhook)."""
        self._news["poll"] = True
        super().wake()

    def webhook_before_acceptance(self, ifax_job_id: str) -> None:
        """A webhook for a jobId no recipient has yet: iFax may answer it before the fax-send
        that made it is recorded (a worker's answer waits for the loop).  The fax is polled
        at once when its acceptance is recorded, instead of a whole poll.interval later.
        Bounded: at most EARLY_WEBHOOKS remembered, each for EARLY_WEBHOOK_FOR seconds."""
        with self._lock:
            self._early.pop(ifax_job_id, None)
            self._early[ifax_job_id] = time.monotonic() + EARLY_WEBHOOK_FOR
            while len(self._early) > EARLY_WEBHOOKS:
                self._early.popitem(last=False)

    def _webhook_came(self, ifax_job_id: str) -> bool:
        if not self._early:
            return False
        with self._lock:
            until = self._early.pop(ifax_job_id, None)
            now = time.monotonic()
            while self._early and next(iter(self._early.values())) < now:
                self._early.popitem(last=False)
        return until is not None and until >= now

    def _forget(self, kind: str) -> None:
        self._next[kind] = None
        if kind == "poll":
            self._polls.clear()

    def _forget_schedule(self) -> None:
        self._forget("submit")
        self._forget("poll")
        self._known_at = time.monotonic()

    def _soon(self, kind: str, at: float) -> None:
        """A write of this loop made a submission or poll due at `at`."""
        known = self._next[kind]
        if known is not None and at < known:
            self._next[kind] = at

    def _may_be_due(self, kind: str, now: float) -> bool:
        known = self._next[kind]
        return known is None or known <= now

    def shutdown(self) -> None:
        """No new request starts; requests under way finish (or time out) first, and what
        they brought back is recorded.  Every request handed out has a worker of its own,
        so none waits in a queue (one whose intent is committed is sent or undone)."""
        try:
            while self._awaiting:  # each ends within api.timeout
                self._wake.clear()  # else every wait after the first answer would spin
                self._pump(1.0)
        finally:
            self._awaiting.close()
        self._pool.shutdown()
        for pool, client in self._retired:
            pool.shutdown()
            client.close()
        self._retired.clear()
        self._settle()

    def apply(self, change: Reload) -> None:
        """New settings (SIGHUP) for requests started from now on."""
        cfg = change.config
        self._drop_read_ahead()
        self._forget_schedule()
        self.outboxes, self.configured = change.known, set(change.outboxes)
        self.poll_interval, self.give_up_after = cfg.poll.interval, cfg.poll.give_up_after
        self.file_names = cfg.log.file_names
        if cfg.api.requests_per_minute * 1.0 / 60 != self.limiter.rate:
            self.limiter.set_rate(cfg.api.requests_per_minute)  # what was spent stays spent
        for name in self.rate_limited.keys() - self.configured:
            del self.rate_limited[name]

    def replace_client(self, client: IFaxClient, max_in_flight: int) -> None:
        """A new key, URL, timeout or concurrency (SIGHUP).  Requests under way finish
        with the client and workers they started with, which close at shutdown.  A pause
        for a refused account is probed again at once: the new key may cure it."""
        pool = Workers(max_in_flight, "ifax")  # made first: if it cannot start, nothing changed
        with self._lock:
            # The old pool stays open until shutdown: `_launch` may have taken it just before
            # this swap and hand it a request after (closing it here once made that request
            # "not sent" and stranded its round's committed intents).
            self._retired.append((self._pool, self.client))
            self._pool = pool
            self.client = client
            self.max_in_flight, self.max_polls = max_in_flight, max(1, max_in_flight // 2)
            self._next_probe = 0.0
        self._wake.set()

    def _sleep_time(self, submissions_full: bool = False, polls_full: bool = False) -> float:
        """Every worker of a kind busy: the end of one wakes the loop, so when the next of
        that kind is due need not be asked (two queries per turn saved in a burst)."""
        now = time.time()
        # While the API is down, work that is due waits for the backoff: wake when it lets
        # the probe through, not at each due time (that would spin) and not later.  While
        # the probe is out its end wakes the loop (`_run`).
        gate = now + self.backoff.wait()
        # Paused, submissions wait for the account probe (polls go on).
        held = max(gate, now + self._next_probe - time.monotonic()) if self.paused_reason else gate
        nxt = [now + IDLE, *self.capped.values()]  # operator requests: read at least every IDLE
        if self._token_at is not None:  # due work waits for requests_per_minute
            nxt.append(self._token_at)
        if not submissions_full:
            nxt.append(max(self._next_time("submit"), held))
        if not polls_full:
            nxt.append(max(self._next_time("poll") + (self.poll_interval if submissions_full else 0.0), gate))
        return max(0.01, min(nxt) - now)

    def _next_time(self, kind: str) -> float:
        """When the next submission (poll) is due, math.inf if none: what is read ahead,
        else what the loop knows, else the store asked once."""
        if kind == "submit" and (self._due or self._prepared):
            return time.time()
        known = self._next[kind]
        if known is None:
            found = (self.store.next_submission_time(skip_outboxes=list(self.capped)) if kind == "submit"
                     else self.store.next_poll_time())
            known = self._next[kind] = math.inf if found is None else found
        if kind == "poll" and self._polls:
            known = min(known, self._polls[0].next_action_at or 0.0)
        return known

    # -- submitting -----------------------------------------------------------------
    #
    # Workers make HTTP requests and nothing else: this thread prepares a round of
    # submissions, commits their intents in one transaction, hands each to a worker that
    # is free at once (so an intent never waits behind other requests: one that never
    # left is never called uncertain, SPEC 6.3), and records what the workers brought
    # back, a turn's answers in one transaction.  No worker waits for SQLite or for
    # another worker's commit (issue 12: they spent half their time doing so).

    def _start_submissions(self) -> tuple[bool, bool]:
        """Started before polls, so while the API is down the probe is the next due
        submission: real work, and one that gets "not now" certainly never left (6.2).
        Returns whether every worker is busy afterwards, and whether sends are waiting
        (then polls that are not a whole interval overdue wait too: a worker that comes
        free during this turn goes to the next send, not to them)."""
        free = self._free("submit")
        if free <= 0:
            self._prepare_ahead()
            return True, True
        if self.backoff.wait() > 0:
            return False, False
        ready: list[tuple[Recipient, Job, PreparedRequest, Ticket]] = []
        read = False
        # A worker that comes free while this round is prepared joins it: one commit for more
        # intents, and still only requests that start at once (issue 12: fewer fsyncs).
        while len(ready) < max(free, self._free("submit")):
            if not self._prepared:
                if not self._due:
                    if read or not self._may_be_due("submit", time.time()):
                        break
                    self._read_due(free, taken={item[0].id for item in ready})
                    read = True
                    continue
                if not self._prepare_next(settle=True):
                    continue
            item = self._prepared.popleft()
            ticket = self.backoff.admit() if self._token() else None
            if ticket is None:
                self._prepared.appendleft(item)
                break
            ready.append((*item, ticket))
        self._send_all(ready)
        full = self._free("submit") <= 0
        if full:
            self._prepare_ahead()
        return full, full or bool(self._due) or bool(self._prepared)

    def _prepare_next(self, *, settle: bool) -> bool:
        """Read and encode the next due recipient into `_prepared`; False if it is not to
        be sent now (what happened is recorded) or fails (it waits a minute)."""
        rec = self._due.popleft()
        if rec.id in self._inflight:
            return False
        try:
            prepared = self._prepare(rec)
        except Exception as exc:  # this one waits a minute; the others go on
            self._failed(rec, "submit", exc)
            return False
        finally:
            # Answers that came while a document was read and encoded are recorded now, not
            # after the whole round (50 ms).
            if settle and (self._finished or self._awaiting):
                self._settle()
        if prepared is None:
            return False
        self._prepared.append((rec, *prepared))
        return True

    def _prepare_ahead(self) -> None:
        """While every worker is busy, the next requests are read and encoded (up to one
        per worker and PREPARED_AHEAD bytes), so a worker that comes free gets one at once
        instead of waiting for that (issue 12: the latency-bound case).  Nothing is
        committed: a request prepared ahead is an intent's only after its commit."""
        while (self._due and len(self._prepared) < self.max_in_flight and self._free("submit") <= 0
               and not self._stop.is_set()
               and sum(len(r.content) for _, _, r in self._prepared) < PREPARED_AHEAD):
            self._prepare_next(settle=False)

    def _drop_read_ahead(self) -> None:
        self._due.clear()
        self._prepared.clear()

    def _read_due(self, free: int, taken: set[int]) -> None:
        """Due recipients are read DUE_BATCH at a time (a burst reads the queue once per
        batch, not once per free worker), and kept at most DUE_FRESH seconds: a canceled
        one is caught by its intent, an outbox at its cap by `record_submit_intent`, a
        paused one by `_prepare`."""
        limit = max(DUE_BATCH, free + len(self._inflight))
        rows = self.store.due_submissions(time.time(), limit, skip_outboxes=list(self.capped))
        if len(rows) < limit:
            self._next["submit"] = None  # all that is due was read: when the next is, is asked once
        taken = taken | {rec.id for rec, _, _ in self._prepared}
        self._due = collections.deque(r for r in rows if r.id not in self._inflight and r.id not in taken)
        self._due_until = time.monotonic() + DUE_FRESH
        # Their jobs, in two statements, not two each: jobs intake did not hand over (one
        # in a process of its own, intakeproc.py; any after a restart).
        missing = {r.job_id for r in self._due if r.job_id not in self._jobs}
        if len(missing) > 1:
            if len(self._jobs) + len(missing) > JOB_CACHE:
                self._jobs.clear()
            for job in self.store.jobs_by_ids(missing):
                self._jobs[job.id] = job

    def _token(self) -> bool:
        """A request may start now (requests_per_minute); if not, the loop sleeps until it may."""
        wait = self.limiter.try_acquire()
        if wait > 0:
            self._token_at = time.time() + wait
        return wait == 0

    def _prepare(self, rec: Recipient) -> tuple[Job, PreparedRequest] | None:
        """Read and encode before the intent: a request that cannot be built never left
        (SPEC 4.5).  None if it is not to be sent now (what happened is recorded)."""
        job = self._job(rec.job_id)
        if job.outbox in self.paused_outboxes:  # its claimed files are on the missing share
            self.store.reschedule(rec.id, time.time() + 2.0)
            self._soon("submit", time.time() + 2.0)
            return None
        try:
            attachments = self._attachments(job)
        except Rejected as exc:
            self.store.mark_submit_refused(rec.id, f"the claimed document could not be read: {exc.reason}")
            return None
        options = {k: v for k, v in job.options.items() if k != "reference"}
        try:
            if rec.ifax_job_id:  # iFax knows this fax: resend it under its jobId (SPEC 6.2)
                request = self.client.resend_request(rec.ifax_job_id, attachments)
            else:
                request = self.client.send_request(rec.number, attachments, **options)
        except RequestNotEncodable as exc:
            self.store.mark_submit_refused(rec.id, f"the request could not be built: {exc}")
            return None
        return job, request

    def _send_all(self, ready: list[tuple[Recipient, Job, PreparedRequest, Ticket]]) -> None:
        # Stopping, paused, the database changed (dbguard.py: from a look at most 0.2 s
        # old) or the API went down meanwhile: still queued, nothing committed.
        held = bool(ready) and (self._stop.is_set() or self.paused_reason is not None
                                or self.halted() is not None)
        for *_, ticket in ready:
            if held or not self.backoff.current(ticket):
                self.backoff.release(ticket)
        ready = [item for item in ready if not item[3].settled]
        if not ready:
            return
        # Committing the intents waits for the disk (an fsync): the other stages use the
        # turn meanwhile (issue 12: intake, which bounds a burst, waited for it), and the
        # requests start right after the commit, not once the turn is back.
        with self.aside():
            allowed = self._record_intents(ready)
            for rec, job, request, ticket in ready:
                if rec.id not in allowed:  # canceled meanwhile, or the outbox reached its hourly cap
                    self.backoff.release(ticket)
                    self._wake.set()
                    continue
                crash_point("resubmit" if rec.ifax_job_id else "submit")
                self._launch("submit", rec, self._send(rec, job, request, ticket), ticket)

    def _record_intents(self, ready: list[tuple[Recipient, Job, PreparedRequest, Ticket]]) -> set[int]:
        """One commit for the round's intents.  If it fails, each is tried alone, so one
        recipient whose write always fails waits a minute and holds up nobody else."""
        def intent(item: tuple[Recipient, Job, PreparedRequest, Ticket]) -> bool:
            rec, job = item[0], item[1]
            ob = self.outboxes.get(job.outbox)
            return self.store.record_submit_intent(rec.id, per_hour=ob.max_faxes_per_hour if ob else None,
                                                   outbox=job.outbox)
        allowed = set()
        for (rec, *_), result in zip(ready, self.store.write_all(ready, intent), strict=True):
            if isinstance(result, Exception):
                self._failed(rec, "submit", result)
            elif result:
                allowed.add(rec.id)
        return allowed

    def _check_hourly_caps(self) -> None:
        """max_faxes_per_hour (a rolling hour, resends counted), from the database, so a
        restart forgets nothing: an outbox at its cap submits nothing until the hour has
        room; its faxes wait, none fails.  `record_submit_intent` enforces the cap
        exactly; this only keeps such an outbox from being handed out and says so."""
        if not self._caps_seen and not any(ob.max_faxes_per_hour for ob in self.outboxes.values()):
            return
        self._caps_seen = True  # once an outbox had a cap, its metric is kept up to date
        now = time.time()
        capped = {}
        for name, ob in self.outboxes.items():
            if ob.max_faxes_per_hour is not None:
                until = self.store.hourly_cap_until(name, ob.max_faxes_per_hour, now)
                if until is not None:
                    capped[name] = until
        holding = self.store.outboxes_with_due_submissions(now, list(capped)) if capped else set()
        limited = {name: until for name, until in capped.items()
                   if name in holding and name in self.configured}  # a removed outbox is not shown
        for name in limited.keys() - self.rate_limited.keys():
            log.warning("outbox %s: max_faxes_per_hour (%d) reached; its faxes wait until %s UTC", name,
                        self.outboxes[name].max_faxes_per_hour,
                        time.strftime("%H:%M:%S", time.gmtime(limited[name])))
        for name in self.rate_limited.keys() - limited.keys():
            log.info("outbox %s: no longer held back by max_faxes_per_hour", name)
        for name in self.configured:
            self.metrics.rate_limited.labels(name).set(1 if name in limited else 0)
        if capped.keys() != self.capped.keys():
            self._next["submit"] = None  # what is due was asked without the outboxes at their cap
        self.capped, self.rate_limited = capped, limited

    def _free(self, kind: str) -> int:
        """Workers this kind may still use: all requests share max_in_flight, polls at
        most half of it (SPEC 6.1)."""
        with self._lock:
            limit = self.max_in_flight if kind == "submit" else self.max_polls
            total = self._running["submit"] + self._running["poll"]
            return min(limit - self._running[kind], self.max_in_flight - total)

    def _launch(self, kind: str, rec: Recipient, steps: Steps[Write | None], ticket: Ticket) -> None:
        """One request, started now: by this thread if it can go out without waiting,
        else by a worker that is free now.  The recipient stays in flight (never handed
        out twice) until what it brought back is recorded by `_settle`."""
        with self._lock:
            self._inflight.add(rec.id)
            self._running[kind] += 1
            pool = self._pool
        if pool.closed:  # the pool is shut down: the request never starts
            steps.close()
            self.backoff.release(ticket)
            with self._lock:
                self._inflight.discard(rec.id)
                self._running[kind] -= 1
            if kind == "submit":
                self.store.mark_submit_not_sent(rec.id, "not sent: the gateway is stopping",
                                                retry_at=time.time())
                self._soon("submit", time.time())
            raise WorkersClosed("ifax: the workers were closed")
        self._advance(_Flight(kind, rec, ticket, steps, pool), None, first=True)

    def _advance(self, flight: _Flight, outcome: object, *, first: bool = False) -> None:
        """A flight's steps, run in this thread from `outcome` (an answer, or the error of
        a request that got none) to their next request: awaited here if it went out
        without waiting, else handed to a worker with the steps that follow."""
        step: Step
        try:
            if first:
                step = next(flight.steps)
            elif isinstance(outcome, TransportError):
                step = flight.steps.throw(outcome)
            else:
                step = flight.steps.send(outcome)
            if isinstance(step, Call):
                pending = step.poster.start(step.path, step.content)
                if pending is not None and pending.written:
                    try:
                        self._awaiting.add(pending, flight)
                    except Exception as exc:  # written: it may have reached iFax, so uncertain
                        pending.close()
                        self._advance(flight, AnswerBroken(f"{type(exc).__name__}: {exc}"[:200]))
                    return
                step = pending or step  # partly written: a worker sends the rest
        except StopIteration as stop:
            self._land(flight, stop.value)
            return
        except Exception as exc:
            self._land(flight, partial(self._failed, flight.rec, flight.kind, exc))
            return
        self._to_worker(flight, step)

    def _to_worker(self, flight: _Flight, step: Step) -> None:
        try:
            flight.pool.submit(self._work, flight, step)
        except WorkersClosed:  # stopping (shutdown): finished here
            self._work(flight, step)

    def _pump(self, timeout: float) -> bool:
        """Answers that came (waiting at most `timeout` for one, or for the waker), each
        flight taken on from there; True if any came."""
        ended = self._awaiting.wait(timeout)
        for flight, outcome in ended:
            if isinstance(outcome, Pending):  # unusual: a worker reads the rest
                self._to_worker(flight, outcome)
            else:
                self._advance(flight, outcome)
        return bool(ended)

    def _idle(self, seconds: float) -> None:
        """Between turns the loop waits for its waker and for the answers it awaits."""
        until = time.monotonic() + seconds
        while self._awaiting and not self._wake.is_set():
            left = until - time.monotonic()
            try:
                if left <= 0 or self._pump(left):
                    return
            except Exception as exc:  # the last net: the loop goes on, after a pause
                self.problems.problem("answers", "reading answers failed: %s: %s", type(exc).__name__,
                                      self._described(exc), exc=exc)
                break
        if not self._wake.is_set():
            self._wake.wait(max(0.0, until - time.monotonic()))

    def _work(self, flight: _Flight, step: Step) -> None:
        """A worker: the flight's steps from `step` on, waiting for each request, then
        what they brought back handed to the loop."""
        write: Write | None
        try:
            write = run(flight.steps, step)
        except Exception as exc:
            write = partial(self._failed, flight.rec, flight.kind, exc)
        self._land(flight, write)

    def _land(self, flight: _Flight, write: Write | None) -> None:
        self.backoff.release(flight.ticket)  # if nothing settled it: the request never started
        with self._lock:
            self._finished.append((flight.rec, flight.kind, write))
            self._running[flight.kind] -= 1  # free; the recipient is in flight until recorded
        # The loop looks again before it sleeps: a turn that found every worker busy sleeps
        # until one comes free, and this one may have come free in that very turn (`_settle`).
        self._wake.set()

    def _settle(self) -> None:
        """Record what the workers brought back: a turn's answers in one transaction,
        committed within the store's GROUP_WAIT (never held for a slower answer: those
        are recorded in a later turn).  If that fails, each is recorded alone."""
        if self._awaiting:
            self._pump(0.0)
        done = []
        while self._finished:
            done.append(self._finished.popleft())
        if not done:
            return
        afters: list[Callable[[], None] | None] = []
        results = self.store.write_all(done, lambda item: item[2]() if item[2] else None, durable=False)
        for (rec, kind, _), result in zip(done, results, strict=True):
            if isinstance(result, Exception):
                self._failed(rec, kind, result)
                result = None
            afters.append(result)
        with self._lock:
            for rec, _, _ in done:
                self._inflight.discard(rec.id)
        for after in afters:
            if after is not None:
                try:
                    after()
                except Exception as exc:
                    self.problems.problem(("after", type(exc).__name__), "after a request: %s: %s",
                                          type(exc).__name__, exc, exc=exc)
        self.on_final()

    def _failed(self, rec: Recipient, kind: str, exc: Exception) -> None:
        """Never spin on one recipient: it is looked at again after a pause.  Keyed by what
        went wrong, not by recipient: a full disk is one problem, not one per queued fax."""
        self.problems.problem((kind, type(exc).__name__, str(exc)[:80]),
                              "job %s: %s failed unexpectedly: %s: %s", rec.job_id, kind,
                              type(exc).__name__, exc, exc=exc)
        try:
            self.store.reschedule(rec.id, time.time() + 60.0)
        except Exception:
            pass
        self._soon("submit" if kind == "submit" else "poll", time.time() + 60.0)

    def _attachments(self, job: Job) -> list[Attachment]:
        contents = self.handover.get(job.id)
        if contents is None or len(contents) != len(job.documents):  # not held: read as it lies
            held = spool.job_dir(job.private_root, job.id) / job.rel_dir
            contents = tuple(read_in(held, name) for name in job.documents)
        out = []
        for i, (name, data) in enumerate(zip(job.documents, contents, strict=True)):
            kind = job.kinds[i] if i < len(job.kinds) else sniff(data[:16]) or "pdf"  # as judged
            out.append(Attachment(safe_file_name(name, kind), data))
        return out

    def _send(self, rec: Recipient, job: Job, request: PreparedRequest, ticket: Ticket) -> Steps[Write]:
        """Steps (`_advance`): fax-send or fax-resend, its intent already committed."""
        if self._stop.is_set() or not self.backoff.current(ticket):
            # Stopping, or the API went down since the intent: it never left.
            return partial(self._requeue, rec, "not sent: the request did not start")
        try:
            ifax_id = yield from self.client.submit_steps(request)
        except Transient as exc:
            delay = self.backoff.failure(ticket, exc.retry_after)
            return partial(self._not_sent, rec, job, str(exc), delay)
        except AuthFailed as exc:
            self.backoff.success(ticket)  # it answered: the API is up, the account is not
            return partial(self._account_refused, rec, str(exc))
        except Refused as exc:
            self.backoff.success(ticket)
            return partial(self._refused, rec, job, exc.message, exc.code)
        except Uncertain as exc:
            return partial(self._uncertain, rec, job, str(exc))
        crash_point("resubmitted" if rec.ifax_job_id else "submitted")
        self.backoff.success(ticket)
        return partial(self._accepted, rec, job, ifax_id)

    # What a submission brought back, recorded in the loop's thread (`_settle`); each
    # returns what to do once it is written (metrics, logs), or None.

    def _requeue(self, rec: Recipient, detail: str, at: float | None = None) -> None:
        """Not sent: queued again.  By default it keeps its place in the queue."""
        at = at if at is not None else rec.next_action_at or time.time()
        self.store.mark_submit_not_sent(rec.id, detail, retry_at=at)
        self._soon("submit", at)

    def _not_sent(self, rec: Recipient, job: Job, detail: str, delay: float) -> Callable[[], None]:
        # It keeps its place in the queue: the backoff, not the recipient, says when the
        # next try starts, and the first in the queue is the next probe.
        self._requeue(rec, detail)
        self._polls_wait()
        return lambda: log.warning("job %s: iFax not reachable, trying again in %.1fs: %s", job.id, delay,
                                   detail)

    def _account_refused(self, rec: Recipient, detail: str) -> Callable[[], None]:
        self._requeue(rec, detail, time.time())
        return lambda: self._pause(detail)

    def _refused(self, rec: Recipient, job: Job, message: str, code: object) -> Callable[[], None] | None:
        if self._note_refusal(message, job.id):
            self._requeue(rec, f"refused by iFax: {message}", time.time())
            return None
        self.store.mark_submit_refused(rec.id, message, code)
        self.handover.release(rec.job_id)
        return lambda: log.warning("job %s: iFax refused the fax to %s: %s", job.id, rec.number, message)

    def _uncertain(self, rec: Recipient, job: Job, detail: str) -> Callable[[], None]:
        self.store.mark_submit_uncertain(rec.id, detail, resend=self.resend_uncertain(job.outbox))
        self._soon("submit", time.time())  # queued again if its outbox resends uncertain ones
        return lambda: log.error("job %s: submission to %s uncertain: %s", job.id, rec.number, detail)

    def _accepted(self, rec: Recipient, job: Job, ifax_id: str) -> Callable[[], None]:
        self._refusals.clear()
        next_poll = time.time() + self.poll_interval
        self.store.mark_submit_accepted(rec.id, ifax_id, next_poll_at=next_poll)
        self._soon("poll", next_poll)
        # Asked after the write: a webhook that looked for this fax before it could be found
        # has left its jobId here (`Service.webhook` looks again after leaving it).
        if self._webhook_came(ifax_id) and self.store.poll_now(rec.id):
            self._soon("poll", time.time())
        crash_point("accepted")  # written, not yet committed: the store's committer does that

        def after() -> None:
            self.metrics.count(self.metrics.jobs_submitted, job.outbox)
            if job.settled_at:
                self.metrics.submit_delay.observe(max(0.0, time.time() - job.settled_at))
            log.info("job %s: accepted by iFax as %s for %s", job.id, ifax_id, rec.number)
        return after
    def _polls_wait(self) -> None:
        """After a "not now" answer polls wait for the backoff too, so the time until each
        sending fax's next good poll must not count toward giving up on it (SPEC 6.2)."""
        self.store.forget_poll_clocks()

    def resend_uncertain(self, outbox: str) -> bool:
        ob = self.outboxes.get(outbox)
        return ob is not None and ob.on_uncertain == "resend"

    def _note_refusal(self, message: str, job_id: int) -> bool:
        """The same refusal for several documents in a row is the account, not the documents."""
        if self._refusals and self._refusals[-1][0] != message:
            self._refusals.clear()
        if not any(j == job_id for _, j in self._refusals):
            self._refusals.append((message, job_id))
        if len(self._refusals) >= SAME_REFUSALS_TO_PAUSE:
            self._pause(f"iFax refused {len(self._refusals)} different documents in a row with "
                        f"the same message: {message}")
            return True
        return False

    def _pause(self, reason: str) -> None:
        if self.paused_reason is None:
            log.error("submissions paused: %s", reason)
        self.paused_reason = reason
        self.metrics.api_paused.set(1)
        self._next_probe = time.monotonic() + PROBE_INTERVAL

    def _probe(self) -> None:
        if time.monotonic() < self._next_probe or self.backoff.wait() > 0 or not self._token():
            return
        self._next_probe = time.monotonic() + PROBE_INTERVAL
        try:
            with self.aside():  # a request, up to api.timeout: never in the shared turn
                self.client.status("0")
        except AuthFailed:
            return
        except Refused:
            pass  # the account answered: an unknown job is not an account problem
        except ApiError:
            return
        log.info("iFax answers again: submissions resume")
        self.paused_reason = None
        # The refusals that paused it are kept: a status answer cannot show that the balance
        # was topped up, so the first document refused with the same message pauses again
        # and stays queued, instead of two more failing each minute.  An acceptance clears them.
        self.metrics.api_paused.set(0)

    # -- polling --------------------------------------------------------------------

    def _start_polls(self, *, late: float) -> bool:
        """Polls at least `late` overdue.  True if no poll can start now for want of a worker."""
        self._start_deletes()
        free = self._free("poll")
        if free <= 0:
            return True
        if self.backoff.wait() > 0:
            return False
        now = time.time()
        if self._may_be_due("poll", now - late):  # one not read ahead yet may be due
            self._read_polls(now)
        while free > 0 and self._polls and self._is_due(self._polls[0], now - late):
            rec = self._polls.popleft()
            if rec.id in self._inflight:
                continue
            if not self._token():
                self._polls.appendleft(rec)
                break
            ticket = self.backoff.admit()
            if ticket is None:
                self._polls.appendleft(rec)
                break
            self._launch("poll", rec, self._ask(rec, ticket), ticket)
            free -= 1
        return self._free("poll") <= 0

    @staticmethod
    def _is_due(rec: Recipient, at: float) -> bool:
        return (rec.next_action_at or 0.0) <= at

    def _read_polls(self, now: float) -> None:
        """Polls due within POLL_AHEAD are read at once, each started when it is due: in a
        burst, polls come due one after another, and the store is asked once per batch,
        not once per poll.  Forgotten with what the loop knows (`_forget_schedule`), so a
        webhook or a cancel is seen at once."""
        until = now + min(POLL_AHEAD, self.poll_interval / 4)
        rows = self.store.due_polls(until, DUE_BATCH)
        self._polls = collections.deque(r for r in rows if r.id not in self._inflight)
        # When the first poll not held now is due (a whole batch: perhaps right after its last).
        nxt = rows[-1].next_action_at if len(rows) == DUE_BATCH else self.store.next_poll_time(after=until)
        self._next["poll"] = math.inf if nxt is None else nxt

    def _start_deletes(self) -> None:
        """delete_after_delivery, once "delivered" is committed: a fax iFax forgot could
        never be polled again after a crash.  It takes a polling worker."""
        if not self._deletes or self.backoff.wait() > 0:
            return
        self.store.flush()
        while self._deletes and self._free("poll") > 0:
            if not self._token():  # fax-delete shares requests_per_minute (SPEC 6.1)
                break
            job_id, ids = self._deletes.popleft()
            with self._lock:
                self._running["poll"] += 1
                pool = self._pool
            try:
                pool.submit(self._delete_at_ifax, job_id, ids)
            except RuntimeError:
                with self._lock:
                    self._running["poll"] -= 1
                raise
    def remember(self, accepted: list[tuple[Job, Accepted]]) -> None:
        """Jobs intake just accepted, as it knows them, and their documents as it read
        them: their first submission reads no row and no file."""
        if len(self._jobs) + len(accepted) > JOB_CACHE:
            self._jobs.clear()
        for job, verdict in accepted:
            self._jobs[job.id] = job
            if verdict.data:
                self.handover.put(job.id, verdict.data, recipients=len(verdict.numbers))

    def _job(self, job_id: int) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            if len(self._jobs) >= JOB_CACHE:
                self._jobs.clear()
            job = self._jobs[job_id] = self.store.get_job(job_id)
        return job

    def _ask(self, rec: Recipient, ticket: Ticket) -> Steps[Write | None]:
        """Steps (`_advance`): fax-status, and what it means.  Polls share the API's backoff with
        submissions (SPEC 6.1): while it is down they wait, and one may be the probe when
        no submission is due."""
        if self._stop.is_set() or not self.backoff.current(ticket):
            return None  # stopping, or the API went down since it was handed out: it stays due
        assert rec.ifax_job_id is not None
        now = time.time()
        try:
            st = yield from self.client.status_steps(rec.ifax_job_id)
        except ApiError as exc:
            if isinstance(exc, Transient):
                delay = self.backoff.failure(ticket, exc.retry_after)
                return partial(self._poll_failed, rec, now, "transient", str(exc), delay)
            if isinstance(exc, AuthFailed):
                self.backoff.success(ticket)
                return partial(self._poll_failed, rec, now, "account", str(exc), 0.0)
            if isinstance(exc, Refused):  # a refusal answered; an uncertain failure says nothing of the API
                self.backoff.success(ticket)
            return partial(self._poll_failed, rec, now, "other", str(exc), 0.0)
        self.backoff.success(ticket)
        self.metrics.last_poll.set(now)
        final, awaiting_fresh = st.final_state, rec.awaiting_fresh
        if awaiting_fresh:  # resent under the same jobId: is this status the new attempt's?
            new_call = st.call_start is not None and st.call_start != rec.stale_call_start
            if st.status == "sending" or new_call:
                awaiting_fresh = False
            elif final == JobState.FAILED:
                final = None
        seconds = rec.sending_seconds
        if rec.last_ok_poll_at is not None:  # only time between two good polls counts (6.2)
            counted_from = max(rec.last_ok_poll_at, rec.send_at or 0.0)
            seconds += max(0.0, now - counted_from)
        new_state = JobState(final) if final else None
        next_at, message, given_up = now + self.poll_interval, st.message, False
        job = self._job(rec.job_id) if final else None
        ob = self.outboxes.get(job.outbox) if job else None
        if job and new_state == JobState.FAILED:
            # Only `failed` is resent; blocked, failed_chargeable and partially_cancelled are
            # final failures that another attempt cannot cure and would pay for again (6.2).
            if st.resendable and ob is not None and rec.attempts - 1 < ob.resend.max:
                new_state, next_at = JobState.RETRY_WAIT, now + ob.resend.delay
                log.info("job %s: fax to %s failed (%s); resending in %.0fs", job.id, rec.number,
                         st.message, ob.resend.delay)
            elif not st.resendable:
                log.info("job %s: fax to %s ended %s (%s): final, not resent", job.id, rec.number,
                         st.status, st.message)
        elif final is None and seconds >= self.give_up_after:
            new_state, given_up = JobState.FAILED, True
            message = (f"iFax gave no final status after {_human(self.give_up_after)} of polling, so "
                       "the gateway gave up and canceled it; it may have been sent: check the iFax "
                       "dashboard before sending it again")
            # A request like any other (SPEC 6.1): its token is reserved and waited for here, in
            # a worker (at most once per fax, after give_up_after).  Stopping meanwhile,
            # nothing is recorded: the fax is still due, given up and canceled after the restart.
            yield None  # what follows waits: a worker goes on with it
            wait = self.limiter.reserve()
            if wait > 0 and self._stop.wait(wait):
                return None
            try:
                self.client.cancel(rec.ifax_job_id)
            except ApiError as exc:
                log.warning("job %s: fax-cancel after giving up failed: %s", rec.job_id, exc)
            log.error("job %s: gave up on iFax job %s for %s", rec.job_id, rec.ifax_job_id, rec.number)
        # A lagging status of the previous attempt (same jobId) says nothing of this one's cost.
        cost = None if awaiting_fresh else st.cost
        return partial(self._polled, rec, st, now, new_state=new_state, next_at=next_at, message=message,
                       cost=cost, seconds=seconds, awaiting_fresh=awaiting_fresh, given_up=given_up)

    def _poll_failed(self, rec: Recipient, now: float, kind: str, detail: str,
                     delay: float) -> Callable[[], None]:
        """A poll that failed: time until the next good one does not count toward giving up."""
        self.store.record_poll_failure(rec.id, now + self.poll_interval)
        self._soon("poll", now + self.poll_interval)
        if kind == "transient":
            self._polls_wait()
            return lambda: log.warning("job %s: fax-status for %s failed, asking again in %.1fs at the "
                                       "earliest: %s", rec.job_id, rec.ifax_job_id,
                                       max(delay, self.poll_interval), detail)
        if kind == "account":
            return lambda: self._pause(detail)
        return lambda: log.warning("job %s: fax-status for %s failed, will ask again: %s", rec.job_id,
                                   rec.ifax_job_id, detail)

    def _polled(self, rec: Recipient, st: FaxStatus, now: float, *, new_state: JobState | None,
                next_at: float, message: str | None, cost: float | None, seconds: float,
                awaiting_fresh: bool, given_up: bool) -> Callable[[], None] | None:
        self.store.record_status(rec.id, new_state=new_state, next_action_at=next_at,
                                 transferred_pages=st.transferred_pages, cost=cost, code=st.code,
                                 message=message, ifax_status=st.status, call_start=st.call_start,
                                 sending_seconds=seconds, polled_at=now, awaiting_fresh=awaiting_fresh,
                                 given_up=given_up)
        if new_state is None:
            self._soon("poll", next_at)
            return None
        if new_state == JobState.RETRY_WAIT:
            self._soon("submit", next_at)
        crash_point("polled")  # an answer that ends the attempt, written, not yet committed

        def after() -> None:
            job = self._job(rec.job_id)
            if cost:  # every attempt that ends, a resent one too (SPEC 4.4)
                self.metrics.count(self.metrics.cost, job.outbox, amount=cost)
            if new_state not in (JobState.DELIVERED, JobState.FAILED, JobState.CANCELED):
                return
            self._jobs.pop(job.id, None)
            self.handover.release(job.id)
            if new_state == JobState.DELIVERED:
                self.metrics.count(self.metrics.pages_sent, job.outbox,
                                   amount=st.transferred_pages or rec.pages or 0)
            if rec.accepted_at:
                self.metrics.delivery_duration.observe(max(0.0, now - rec.accepted_at))
            log.info("job %s: %s for %s", job.id, new_state, rec.number)
            ob = self.outboxes.get(job.outbox)
            if new_state == JobState.DELIVERED and ob is not None and ob.delete_after_delivery:
                # one request each (every attempt's jobId), each taking its own token
                self._deletes.extend((job.id, [i]) for i in rec.all_ifax_job_ids or [rec.ifax_job_id])
        return after

    def _delete_at_ifax(self, job_id: int, ifax_job_ids: list[str]) -> None:
        """delete_after_delivery: best effort.  A refusal is logged; the fax was delivered."""
        try:
            for ifax_id in ifax_job_ids:
                try:
                    self.client.delete(ifax_id)
                except ApiError as exc:
                    log.warning("job %s: fax-delete of iFax job %s failed (the fax was delivered): %s",
                                job_id, ifax_id, exc)
        finally:
            with self._lock:
                self._running["poll"] -= 1
            self._wake.set()


    # -- operator requests ----------------------------------------------------------

    def _handle_requests(self) -> None:
        for req in self.store.pending_requests():
            self._forget_schedule()  # a cancel or a resend changes what is due
            try:
                job = self.store.get_job(req["job_id"])
                if req["action"] == "cancel":
                    self._cancel(req["id"], job)
                elif req["action"] == "resend":
                    self._resend(req["id"], job)
                else:
                    self.store.finish_request(req["id"], False, f"unknown action {req['action']!r}")
            except JobNotFound as exc:
                self.store.finish_request(req["id"], False, str(exc))
            self.on_final()

    def _cancel(self, request_id: int, job: Job) -> None:
        """Queued or waiting: canceled here.  Sending: fax-cancel.  Submitting: wait for the
        answer (the request stays pending), then cancel what iFax accepted."""
        if job.state not in ACTIVE_ORDER:
            self.store.finish_request(request_id, False, f"job {job.id} is {job.state}: only a job that is "
                                      "still queued, waiting or sending can be canceled")
            return
        self.store.cancel_waiting(job.id, "canceled by the operator")
        waiting, refusals = False, []
        for r in self.store.get_job(job.id).recipients:
            if r.state == "submitting" or r.id in self._inflight:
                waiting = True
            elif r.state == "sending" and r.ifax_job_id:
                if not self._token():  # fax-cancel shares requests_per_minute (SPEC 6.1)
                    waiting = True
                    continue
                try:
                    with self.aside():  # a request, up to api.timeout: never in the shared turn
                        self.client.cancel(r.ifax_job_id)
                except Refused as exc:  # already final at iFax: the next poll says how it ended
                    refusals.append(f"{r.number}: {exc.message}")
                    self.store.poll_now(r.id)
                except ApiError as exc:
                    log.warning("job %s: fax-cancel failed, will try again: %s", job.id, exc)
                    waiting = True
                else:
                    crash_point("canceled")
                    self.store.mark_canceled(r.id, f"canceled by the operator (fax-cancel of iFax job "
                                             f"{r.ifax_job_id})")
        if waiting:
            return
        if refusals:
            self.store.finish_request(request_id, False, "iFax refused to cancel: " + "; ".join(refusals))
        else:
            self.store.finish_request(request_id, True, f"job {job.id} canceled")
        self.wake()

    def _resend(self, request_id: int, job: Job) -> None:
        if job.state == JobState.REJECTED:
            self.store.finish_request(request_id, False, f"job {job.id} was rejected and never sent "
                                      f"({job.reason_code}): fix the document and drop it again")
            return
        if job.state not in (JobState.FAILED, JobState.CANCELED):
            self.store.finish_request(request_id, False, f"job {job.id} is {job.state}: only a finished "
                                      "job that was not delivered can be sent again")
            return
        if job.phase in (Phase.HELD, Phase.FILING) or job.outbox in self.paused_outboxes or \
                self.folder_problem(job.outbox):
            return  # still being filed, or its folders are away: taken back later
        self.handover.discard(job.id)  # sent again as it is in failed/ now (a fix made there goes out)
        if job.phase == Phase.FILED:
            assert job.filed_root is not None and job.filed_suffix is not None
            held = spool.job_dir(job.private_root, job.id) / job.rel_dir
            paths = spool.filed_paths(Path(job.filed_root), job.rel_dir, job.documents, bases(job),
                                      job.filed_suffix)
            gone = [str(p) for n, p in zip(job.documents, paths, strict=True)
                    if not p.exists() and not (held / n).exists()]
            if gone:
                self.store.finish_request(request_id, False, "the documents are gone from failed/ ("
                                          + ", ".join(gone) + "): drop them into the outbox again")
                return
            self.store.record_unfiling_intent(job.id)
        self.on_unfile()  # the filing stage takes them back and reopens the job


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
