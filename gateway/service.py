"""The daemon: wiring, recovery at start, the intake loop, the main loop and shutdown.

Threads: watchdog observers (enqueue events only), one intake thread (settling, pairing,
claiming, judging), the dispatcher's scheduler and its HTTP workers, and the HTTP
server.  Signal handlers only set flags; the main thread acts on them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway import spool
from gateway.config import Config, OutboxConfig
from gateway.dblock import DatabaseLock
from gateway.dispatcher import Dispatcher
from gateway.errors import GatewayError, Rejected, UsageError
from gateway.faults import crash_point
from gateway.folders import FolderGuard
from gateway.ifax import IFaxClient
from gateway.intake import FolderPlanner, Plan, evaluate, file_sha256
from gateway.metrics import Metrics
from gateway.notify import Notifier
from gateway.store import Job, SourceFile, Store
from gateway.systemd import notify
from gateway.watcher import Watcher
from gateway.web import WebServer

log = logging.getLogger("gateway.service")

TICK = 0.1  # how often waiting files are looked at: settle times are measured to this grain
FOLDER_CHECK = 1.0  # how often outbox, sent and failed folders are checked (missing, unmounted)


class StartupError(GatewayError):
    """The daemon cannot start (a folder, the database, the key); the message says why."""


class Service:
    def __init__(self, config: Config, *, simulate: bool = False, api_key: str | None = None,
                 base_url: str | None = None) -> None:
        self.config = config
        self.simulate = simulate
        self.outboxes: dict[str, OutboxConfig] = {o.name: o for o in config.outboxes}
        self.metrics = Metrics(list(self.outboxes))
        self._base_url = base_url
        self._api_key = api_key
        self.simulator: Any = None
        self.store: Store | None = None
        self.watcher: Watcher | None = None
        self.dispatcher: Dispatcher | None = None
        self.web: WebServer | None = None
        self.planner = FolderPlanner()
        self.guard = FolderGuard()
        self.paused: dict[str, str] = {}
        self._lock = DatabaseLock(config.database)
        self._stop = threading.Event()
        self._intake_thread: threading.Thread | None = None
        self._intake_heartbeat = time.monotonic()
        self._signal: int | None = None

    # -- start ----------------------------------------------------------------------

    def start(self) -> None:
        if threading.current_thread() is threading.main_thread():
            # Lease breaks arrive as SIGIO, which would kill us (see watcher.open_for_writing).
            signal.signal(signal.SIGIO, signal.SIG_IGN)
        self._lock.acquire()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        cfg = self.config
        self.store = Store(cfg.database)
        if self.simulate and self.store.has_real_jobs():
            raise UsageError(f"--simulate refuses database {cfg.database}: it holds jobs sent to a "
                               "real API; use another database for simulated runs")
        self.metrics.watch_store(self.store.count_by_state, self.store.oldest_active_created_at)
        for ob in cfg.outboxes:
            for path in (ob.path, ob.sent, ob.failed):
                self._ensure_folder(ob.name, path)
        self.web = WebServer(cfg.http.host, cfg.http.port, self)
        self.web.start()
        base_url, key = self._api_endpoint()
        client = IFaxClient(base_url, key, timeout=cfg.api.timeout, max_in_flight=cfg.api.max_in_flight,
                            observer=self.metrics.api_request)
        self.dispatcher = Dispatcher(self.store, client, outboxes=self.outboxes, metrics=self.metrics,
                                     max_in_flight=cfg.api.max_in_flight,
                                     requests_per_minute=cfg.api.requests_per_minute,
                                     poll_interval=cfg.poll.interval,
                                     give_up_after=cfg.poll.give_up_after, file_names=cfg.log.file_names,
                                     on_finished=self._notifier())
        self.recover()
        self.dispatcher.paused_outboxes = self.paused
        self.dispatcher.folder_problem = self._folder_problem
        self.watcher = Watcher()
        for ob in cfg.outboxes:
            self._check_folders(ob)
        _check_inotify_limits(len(cfg.outboxes))
        self._intake_thread = threading.Thread(target=self._intake_loop, name="intake", daemon=True)
        self._intake_thread.start()
        self.dispatcher.start()
        log.info("fax-gateway running: %d outbox(es), API %s%s, http://%s/", len(cfg.outboxes),
                 base_url, " (simulated)" if self.simulate else "", cfg.http.listen)
        notify("READY=1")

    def _notifier(self) -> Callable[[Job, Path | None], None] | None:
        if not self.config.notify.command:
            return None
        notifier = Notifier(self.config.notify.command)

        def finished(job: Job, result_path: Path | None) -> None:
            if result_path is not None:
                notifier.job_ended(job_id=job.id, state=job.state, reason_code=job.reason_code,
                                   outbox=job.outbox, result_path=result_path)
        return finished

    def _api_endpoint(self) -> tuple[str, str]:
        if self.simulate:
            from gateway.simulator import Simulator
            self.simulator = Simulator("127.0.0.1", 0, key="simulator", delay=1.0).start()
            return self.simulator.url, "simulator"
        key = self._api_key or (self.config.api.key.reveal() if self.config.api.key else None)
        if not key:
            raise StartupError("no iFax API key: set api.key_file (or api.key) in the configuration, or "
                               "IFAX_API_KEY in the environment; or try it with --simulate")
        return self._base_url or self.config.api.base_url, key

    def _ensure_folder(self, outbox: str, path: Path) -> None:
        """Missing at start-up: created if its parent exists, else the outbox is paused."""
        if path.is_dir() or not path.parent.is_dir():
            return
        spool.make_dirs(path, path.parent)
        log.info("outbox %s: created %s", outbox, path)

    def _folder_problem(self, outbox: str) -> str | None:
        ob = self.outboxes.get(outbox)
        return self.guard.problem(ob) if ob is not None else None

    def _check_folders(self, ob: OutboxConfig) -> None:
        """Pause an outbox whose folders went away, resume it when they are back."""
        assert self.watcher is not None
        problem = self.guard.problem(ob)
        if problem and ob.name not in self.paused:
            log.error("%s: outbox paused", problem)
            self.paused[ob.name] = problem
            self.watcher.remove(ob.name)
            self.metrics.files_waiting.labels(ob.name).set(0)
        elif problem:
            self.paused[ob.name] = problem
        elif ob.name in self.paused or ob.name not in self.watcher.outboxes or self.guard.replaced(ob.path):
            if self.paused.pop(ob.name, None):
                log.info("outbox %s: its folders are back; resuming", ob.name)
            self.watcher.remove(ob.name)
            self.watcher.add(ob.name, ob.path, settle=ob.settle, rescan=ob.rescan, polling=ob.polling)
            if self.dispatcher:
                self.dispatcher.wake()

    def recover(self) -> None:
        """Put every job interrupted by a crash back where it can be finished (6.3)."""
        assert self.store is not None
        for job in self.store.jobs_in_phase("claiming"):
            missing = spool.claim(job.outbox_path, job.id, job.rel_dir, job.sources)
            self.store.mark_held(job.id, missing)
            log.info("job %s: claim completed after restart", job.id)
        for job in self.store.held_jobs_without_recipients():
            self.judge(job.id)
        assert self.dispatcher is not None
        for rec in self.store.interrupted_submissions():
            log.error("job %s: the gateway stopped while sending to %s", rec.job_id, rec.number)
            job = self.store.get_job(rec.job_id)
            self.store.mark_submit_uncertain(rec.id, "the gateway stopped while the request was being sent",
                                             resend=self.dispatcher.resend_uncertain(job.outbox))
        self.store.forget_poll_clocks()
        for job in self.store.jobs_in_phase("unfiling"):
            self.dispatcher.resume_unfiling(job)

    # -- intake ---------------------------------------------------------------------

    def _intake_loop(self) -> None:
        assert self.watcher is not None
        next_check = 0.0
        while not self._stop.is_set():
            self._intake_heartbeat = time.monotonic()
            try:
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + FOLDER_CHECK
                    for ob in self.outboxes.values():
                        self._check_folders(ob)
                self.watcher.drain()
                self.watcher.tick()
                now = self.watcher.clock()
                for name, ob in self.outboxes.items():
                    if name in self.paused or name not in self.watcher.outboxes:
                        continue
                    for folder, files in self.watcher.folders(name):
                        if not any(s.settled_at is not None for s in files.values()):
                            continue
                        for plan in self.planner.plan_folder(ob, folder, files, now):
                            self.take(ob, plan, files, now)
                    self.metrics.files_waiting.labels(name).set(self.watcher.waiting(name))
            except Exception:
                log.exception("intake step failed; carrying on")
            self._stop.wait(TICK)

    def take(self, ob: OutboxConfig, plan: Plan, files: dict, now_mono: float) -> None:
        """Claim a group: commit the intent, rename into .fax-gateway/<job>/, then judge it."""
        assert self.store is not None and self.watcher is not None
        sources = [SourceFile(n, files[n].ino, files[n].size, files[n].sig[1]) for n in plan.names]
        settled_wall = time.time() - (now_mono - plan.settled_at) if plan.settled_at else None
        rej = plan.rejection
        job_id = self.store.record_claim_intent(
            outbox=ob.name, outbox_path=str(ob.path), rel_dir=plan.rel_dir, sources=sources,
            documents=plan.documents, sidecar=plan.sidecar, primary=plan.primary,
            simulated=self.simulate, settled_at=settled_wall,
            reason_code=rej.reason_code if rej else None, reason=rej.reason if rej else None)
        crash_point("claim")
        missing = spool.claim(ob.path, job_id, plan.rel_dir, sources, crash_hook=crash_point)
        for n in plan.names:
            self.watcher.forget(ob.name, os.path.join(plan.rel_dir, n) if plan.rel_dir else n)
        self.metrics.files_detected.labels(ob.name).inc(len(plan.names) - len(missing))
        self.store.mark_held(job_id, missing)
        crash_point("claimed")
        self.judge(job_id)

    def judge(self, job_id: int) -> None:
        assert self.store is not None
        job = self.store.get_job(job_id)
        ob = self.outboxes.get(job.outbox)
        if ob is None:
            return
        held = spool.job_dir(job.outbox_path, job.id) / job.rel_dir
        try:
            if not job.sources:
                raise Rejected("unreadable", "every file of the job disappeared before it was taken")
            accepted = evaluate(job, ob, held)
        except Rejected as exc:
            self.store.reject_job(job.id, exc.reason_code, exc.reason,
                                  sha256=[file_sha256(held / n) for n in job.names])
            what = ", ".join(job.names) if self.config.log.file_names else f"job {job.id}"
            log.warning("%s: %s rejected: %s", ob.name, what, exc.reason)
        else:
            send_at = accepted.options.get("send_at")
            self.store.accept_job(job.id, numbers=accepted.numbers, options=accepted.options,
                                  sha256=accepted.sha256, pages=accepted.pages,
                                  send_at=datetime.fromisoformat(send_at).timestamp() if send_at else None)
        if self.dispatcher:
            self.dispatcher.wake()

    def webhook(self, body: bytes) -> None:
        """A webhook only says 'look now': its body is not trusted, the poll decides (6.4)."""
        assert self.store is not None
        try:
            doc = json.loads(body or b"{}")
        except ValueError:
            return
        data = doc.get("data") if isinstance(doc, dict) and isinstance(doc.get("data"), dict) else doc
        job_id = data.get("jobId") if isinstance(data, dict) else None
        if job_id is None:
            return
        rec = self.store.find_recipient_by_ifax_job(str(job_id).strip())
        if rec is not None:
            self.store.poll_now(rec.id)
            if self.dispatcher:
                self.dispatcher.wake()

    # -- running --------------------------------------------------------------------

    def _threads_alive(self) -> bool:
        return (self.watcher is not None and self.watcher.alive()
                and self._intake_thread is not None and self._intake_thread.is_alive()
                and time.monotonic() - self._intake_heartbeat < 30
                and self.dispatcher is not None and self.dispatcher.alive()
                and time.monotonic() - self.dispatcher.heartbeat < 60)

    def health(self) -> tuple[bool, dict[str, Any]]:
        problems = []
        if self.watcher is None or not self.watcher.alive():
            problems.append("the folder watchers are not running")
        if self._intake_thread is None or not self._intake_thread.is_alive():
            problems.append("the intake loop is not running")
        elif time.monotonic() - self._intake_heartbeat > 30:
            problems.append("the intake loop is stuck")
        if self.dispatcher is None or not self.dispatcher.alive():
            problems.append("the dispatcher is not running")
        elif self.dispatcher.paused_reason:
            problems.append("iFax refuses the account: " + self.dispatcher.paused_reason)
        problems.extend(self.paused.values())
        try:
            if self.store is None:
                raise GatewayError("no database")
            self.store.check_writable()
        except Exception as exc:
            problems.append(f"the database is not writable: {exc}")
        body: dict[str, Any] = {"status": "ok" if not problems else "unhealthy",
                                "simulated": self.simulate}
        if problems:
            body["reasons"] = problems
        return not problems, body

    def run_forever(self) -> int:
        """Runs until SIGTERM/SIGINT; returns the exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)  # handlers only record the signal: see the loop
        watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        interval = watchdog_usec / 2e6 if watchdog_usec else 5.0
        next_ping = 0.0
        while not self._stop.is_set():
            if self._signal in (signal.SIGTERM, signal.SIGINT):
                break
            if self._signal == signal.SIGHUP:
                self._signal = None
                log.warning("SIGHUP: reloading the configuration is not supported yet by this version; "
                            "restart the service to apply changes")
            now = time.monotonic()
            if now >= next_ping:
                # Only a stuck or dead thread withholds the ping: an API pause or a paused
                # outbox is reported by /healthz, and a restart would not cure it.
                if self._threads_alive():
                    notify("WATCHDOG=1")
                next_ping = now + interval
            self._stop.wait(0.2)
        log.info("stopping")
        notify("STOPPING=1")
        self.stop()
        return 0

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signal = signum

    def request_stop(self) -> None:
        self._signal = signal.SIGTERM
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._intake_thread:
            self._intake_thread.join(10)
        if self.watcher:
            self.watcher.stop()
        if self.dispatcher:
            self.dispatcher.stop(timeout=self.config.api.timeout + 1)
            self.dispatcher.client.close()
        if self.web:
            self.web.stop()
        if self.simulator:
            self.simulator.stop()
        if self.store:
            self.store.close()
        self._lock.release()


def _check_inotify_limits(n_outboxes: int) -> None:
    try:
        instances = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
        watches = int(Path("/proc/sys/fs/inotify/max_user_watches").read_text())
    except (OSError, ValueError):
        return
    if instances < n_outboxes + 8 or watches < 8192:
        log.warning("inotify limits are low (max_user_instances=%d, max_user_watches=%d): raise them with "
                    "sysctl fs.inotify.max_user_instances / max_user_watches, or files may be noticed "
                    "only at the next rescan", instances, watches)
