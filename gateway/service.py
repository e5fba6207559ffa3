"""The daemon: wiring only.  It opens the database, creates the folders, starts the
stages (intake, sending, filing, and retention off the sending path) and the HTTP
server (and the status page's, on its own port), says READY, and stops them.

Threads: watchdog observers (enqueue events only), one thread per stage (`Intake`,
`Dispatcher` with its HTTP workers, `Filing`, `Retention`), and the HTTP server.  Work left by a
crash is picked up by each stage's `initialize`, after READY, so that start-up never
waits for it.  Signal handlers only set flags; the main thread acts on them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import select
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from gateway import spool
from gateway.config import Config, OutboxConfig, load_config, read_api_key
from gateway.dbguard import DatabaseGuard, refuse_unknown_job_folders
from gateway.dblock import DatabaseLock
from gateway.dispatcher import Dispatcher
from gateway.errors import GatewayError, StartupError, UsageError
from gateway.faults import crash_point
from gateway.filing import Filing
from gateway.folders import FolderGuard
from gateway.ifax import IFaxClient
from gateway.intake import Intake
from gateway.intakeproc import IntakeProcess
from gateway.logs import set_level
from gateway.metrics import Metrics
from gateway.notify import Notifier
from gateway.private import move_legacy_jobs
from gateway.reload import plan_reload
from gateway.retention import Retention
from gateway.stage import Stage
from gateway.status import status_server
from gateway.store import Store
from gateway.systemd import notify
from gateway.turns import Turns
from gateway.web import WebServer, connection_cap

log = logging.getLogger("gateway.service")

MAIN_IDLE = 5.0  # the main loop's longest wait: signals wake it at once (set_wakeup_fd)
RELOAD_WAIT = 10.0  # how long a reload waits for each stage to take the new configuration
STAGE_STOP = 8.0  # the longest a stage other than the dispatcher is waited for at a stop
STUCK_AFTER = 30.0  # a stage whose loop has not turned for this long is stuck (healthz, watchdog)
BLOCKED_SHOWN = 20
WRITABLE_EVERY = 5.0  # /healthz, /metrics and the status page prove the database writable this often


class Service:
    """`intake_apart`: intake runs in a process of its own (intakeproc.py), as `fax-gateway
    run` starts it; else in a thread, as the tests and library use start it.  `cpus`: the
    intake process's CPU and every CPU the daemon may use (cpu.other_cpu)."""

    def __init__(self, config: Config, *, simulate: bool = False, api_key: str | None = None,
                 base_url: str | None = None, intake_apart: bool = False,
                 cpus: tuple[int, set[int]] | None = None, debug: bool = False) -> None:
        self.config = config
        self.simulate = simulate
        self.intake_apart, self._cpus, self._debug = intake_apart, cpus, debug
        self.outboxes: dict[str, OutboxConfig] = {o.name: _resolved(o) for o in config.outboxes}
        self.retired: dict[str, OutboxConfig] = {}  # removed by a reload; their jobs still finish
        self.metrics = Metrics(list(self.outboxes))
        self._base_url = base_url
        self._endpoint: tuple[str, str] | None = None  # the API's URL and key in use
        self._api_key = api_key
        self.simulator: Any = None
        self.store: Store | None = None
        self.intake: Intake | None = None  # intake in a thread; or:
        self.intake_process: IntakeProcess | None = None  # intake in a process of its own
        self._folders: FolderGuard | None = None  # with intake apart: the folder checks of filing and sending
        self.dispatcher: Dispatcher | None = None
        self.filing: Filing | None = None
        self.retention: Retention | None = None
        self.turns: Turns | None = None  # the turn the pipeline stages share (turns.py)
        self.web: WebServer | None = None
        self.status_web: WebServer | None = None  # the status page (status.py), on http.status_listen
        self.guard: DatabaseGuard | None = None  # a deleted or replaced database file (dbguard.py)
        self.paused: dict[str, str] = {}  # outbox -> why; shared by the stages
        self._lock = DatabaseLock(config.database)
        self._stop = threading.Event()
        self._signal: int | None = None
        self._wake_main: socket.socket | None = None  # wakes run_forever's loop (signals, request_stop)
        self._writable: tuple[float, str | None] = (float("-inf"), None)  # (when, why not) (_check_writable)

    @property
    def stages(self) -> list[Stage]:
        return [s for s in (self.intake, self.dispatcher, self.filing, self.retention) if s is not None]

    # -- start ----------------------------------------------------------------------

    def start(self) -> None:
        if threading.current_thread() is threading.main_thread():
            # Lease breaks arrive as SIGIO, which would kill us (see watcher.open_for_writing).
            signal.signal(signal.SIGIO, signal.SIG_IGN)
        if not self._lock.path.exists():  # a lost database, refused before an empty one is made (dbguard.py)
            refuse_unknown_job_folders(self._private_folders(), lambda ids: set(), self.config.database)
        self._lock.acquire()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        cfg = self.config
        self.store = store = Store(cfg.database)
        if self.simulate and store.has_real_jobs():
            raise UsageError(f"--simulate refuses database {cfg.database}: it holds jobs sent to a "
                               "real API; use another database for simulated runs")
        # A lost or replaced database (dbguard.py): job folders it does not know refuse the
        # start; from now on the file is watched, and the stages stop if it changes.
        refuse_unknown_job_folders(self._private_folders(), store.existing_job_ids, cfg.database)
        self.guard = DatabaseGuard(cfg.database, os.fstat(self._lock.fd), store.backup,
                                   beside=self._lock.path)
        store.clear_all_blocked()
        if self.intake_apart:  # loading while the rest is set up; it starts at `start`
            self.intake_process = IntakeProcess(
                lock_fd=self._lock.fd, metrics=self.metrics, paused=self.paused,
                folders=lambda: self._folders.known() if self._folders else {"mounted": {}, "private": {}},
                on_judged=self._wake_all, on_idle=lambda: self.filing.wake() if self.filing else None,
                cpus=self._cpus)
            self.intake_process.launch()
        self.metrics.watch_store(store.count_by_state, store.oldest_active_created_at, store.count_blocked)
        for ob in self.outboxes.values():
            for path in (ob.path, ob.sent, ob.failed):
                self._ensure_folder(ob.name, path)
        self._start_web(cfg)
        self._endpoint = base_url, key = self._api_endpoint()
        client = self._client(base_url, key, cfg)
        if self.intake_apart:
            # The intake process has its own guard; this one, for filing and sending, learns
            # now which folders are mount points (asked first after an unmount, it would
            # take the empty mount point for the folder).
            self._folders = FolderGuard()
            folder_problem = self._folder_problem
            for ob in self.outboxes.values():
                self._folders.problem(ob)
        else:
            self.intake = Intake(store, self.outboxes, self.metrics, simulate=self.simulate,
                                 file_names=cfg.log.file_names, paused=self.paused,
                                 on_judged=self._wake_all)
            folder_problem = self.intake.folder_problem
        self.filing = Filing(store, self.outboxes, self.metrics, file_names=cfg.log.file_names,
                             paused=self.paused, folder_problem=folder_problem,
                             notifier=(Notifier(cfg.notify.command, file_names=cfg.log.file_names)
                                       if cfg.notify.command else None),
                             on_reopened=lambda: self.dispatcher.wake() if self.dispatcher else None)
        self.dispatcher = Dispatcher(store, client, outboxes=self.outboxes, metrics=self.metrics,
                                     max_in_flight=cfg.api.max_in_flight,
                                     requests_per_minute=cfg.api.requests_per_minute,
                                     poll_interval=cfg.poll.interval,
                                     give_up_after=cfg.poll.give_up_after, file_names=cfg.log.file_names,
                                     on_unfile=self.filing.wake, on_final=self.filing.wake)
        self.dispatcher.paused_outboxes = self.paused
        self.filing.defer = lambda: self._intake_busy() or self.dispatcher.sends_waiting
        self.dispatcher.folder_problem = folder_problem
        if self.intake is not None:
            self.intake.on_idle = self.filing.wake
            self.intake.on_accepted = self.dispatcher.remember  # (the intake process reads from the folder)
        self.retention = Retention(store, self.metrics, sent=cfg.retention.sent, failed=cfg.retention.failed,
                                   jobs=cfg.retention.jobs, paused=self.paused,
                                   folder_problem=folder_problem)
        for stage in self.stages:  # intake looks before each claim batch; the others at most every RECENT
            stage.halted = self.guard.check if stage is self.intake else self.guard.recent
            stage.file_names = cfg.log.file_names
        # The pipeline stages take turns (turns.py); retention, off the sending path and
        # with long turns of its own, runs beside them as before.
        self.turns = Turns()
        for stage in (self.intake, self.dispatcher, self.filing):
            if stage is not None:
                stage.turns = self.turns
        if self.intake is not None:
            self.intake.start_watching()
        for ob in self.outboxes.values():  # job folders of an older version move into the private folder
            if ob.name not in self.paused and (self._folders is None or self._folders.problem(ob) is None):
                try:
                    move_legacy_jobs(store, ob, crash_point)
                except Exception as exc:
                    log.error("outbox %s: moving old job folders failed (%s); they are tried again at the "
                              "next start", ob.name, exc)
        _check_inotify_limits(len(cfg.outboxes))
        if self.intake_process is not None and self._folders is not None:
            # It watches the outboxes, then reports: READY waits for that.
            self.intake_process.start({"config": cfg, "outboxes": self.outboxes, "retired": self.retired,
                                       "simulate": self.simulate, "debug": self._debug})
        for stage in self.stages:
            stage.start()
        log.info("fax-gateway running: %d outbox(es), API %s%s, http://%s/", len(cfg.outboxes),
                 base_url, " (simulated)" if self.simulate else "", cfg.http.listen)
        notify("READY=1")

    def _start_web(self, cfg: Config) -> None:
        """http.listen, and the status page on http.status_listen when it is set.  Two
        listeners split the connections the descriptor limit allows: the status page, for a
        few people in the office, takes a quarter."""
        cap = connection_cap()
        status_cap = max(16, cap // 4) if cfg.http.status_listen else 0
        self.web = WebServer(cfg.http.host, cfg.http.port, self, max_connections=max(16, cap - status_cap))
        self.web.start()
        if cfg.http.status_listen:
            assert cfg.http.status_host is not None and cfg.http.status_port is not None
            self.status_web = status_server(self, cfg.http.status_host, cfg.http.status_port,
                                            max_connections=status_cap)
            self.status_web.start()
            log.info("status page on http://%s/", cfg.http.status_listen)

    def _private_folders(self) -> list[Path]:
        """Where job folders lie (dbguard.py): each outbox's private folder.  Not the old
        `OUTBOX/.fax-gateway/`: writers can reach that one, and a folder planted there must
        never keep the daemon from starting (its known jobs are moved out at start)."""
        return [ob.private for ob in self.outboxes.values()]

    def _folder_problem(self, outbox: str) -> str | None:
        ob = self.outboxes.get(outbox)
        return self._folders.problem(ob) if ob is not None and self._folders is not None else None

    def _intake_busy(self) -> bool:
        intake = self.intake or self.intake_process
        return intake.busy if intake is not None else False

    def _wake_all(self) -> None:
        for stage in (self.dispatcher, self.filing):
            if stage is not None:
                stage.wake()

    def _api_endpoint(self, config: Config | None = None) -> tuple[str, str]:
        config = config or self.config
        if self.simulate:
            if self.simulator is None:
                from gateway.simulator import Simulator
                self.simulator = Simulator("127.0.0.1", 0, key="simulator", delay=1.0).start()
            return self.simulator.url, "simulator"
        secret = None if self._api_key else read_api_key(config)
        key = self._api_key or (secret.reveal() if secret else None)
        if not key:
            raise StartupError("no iFax API key: set api.key_file (or api.key) in the configuration, or "
                               "IFAX_API_KEY in the environment; or try it with --simulate")
        return self._base_url or config.api.base_url, key

    def _client(self, base_url: str, key: str, config: Config) -> IFaxClient:
        return IFaxClient(base_url, key, timeout=config.api.timeout, max_in_flight=config.api.max_in_flight,
                          observer=self.metrics.api_request)

    def _ensure_folder(self, outbox: str, path: Path) -> None:
        """Missing at start-up: created if its parent exists, else the outbox is paused."""
        if path.is_dir() or not path.parent.is_dir():
            return
        spool.make_dirs(path, path.parent)
        log.info("outbox %s: created %s", outbox, path)

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
        ifax_job_id = str(job_id).strip()
        rec = self.store.find_recipient_by_ifax_job(ifax_job_id)
        if rec is None and self.dispatcher and ifax_job_id:
            # Maybe accepted, its answer not yet recorded: it is polled once it is.  Looked for
            # again after, in case it was recorded meanwhile (before it could see the jobId).
            self.dispatcher.webhook_before_acceptance(ifax_job_id)
            rec = self.store.find_recipient_by_ifax_job(ifax_job_id)
        if rec is None:
            return
        # Only a fax that is sending is polled sooner; one waiting to be resent keeps its delay.
        if self.store.poll_now(rec.id) and self.dispatcher:
            self.dispatcher.poll_soon()

    # -- running --------------------------------------------------------------------

    def _stage_problems(self) -> list[str]:
        problems = []
        if self.intake_process is not None:
            problems.extend(self.intake_process.problems(STUCK_AFTER))
        elif self.intake is None or not self.intake.watcher.alive():
            problems.append("the folder watchers are not running")
        loops = [self.dispatcher, self.filing, self.retention]
        if self.intake_process is None:
            loops.insert(0, self.intake)
        for stage in loops:
            if stage is None or not stage.alive():
                problems.append(f"the {stage.name if stage else 'pipeline'} loop is not running")
            elif stage.stuck_for() > STUCK_AFTER:
                problems.append(f"the {stage.name} loop is stuck (no progress for {stage.stuck_for():.0f}s)")
        return problems

    def health(self) -> tuple[bool, dict[str, Any]]:
        problems = self._stage_problems()
        if self.dispatcher is not None and self.dispatcher.paused_reason:
            problems.append("iFax refuses the account: " + self.dispatcher.paused_reason)
        problems.extend(self.paused.values())
        halted = self.guard.check() if self.guard is not None else None
        if halted:  # the database file was deleted or replaced (dbguard.py)
            problems.append(halted)
        blocked: list[dict[str, Any]] = []
        n_blocked = 0
        try:
            if self.store is None:
                raise GatewayError("no database")
            if not halted:  # the open file is no longer the database: writing it proves nothing
                self._check_writable()
            n_blocked = sum(self.store.count_blocked().values())
            blocked = [{"outbox": b.outbox, "stage": b.stage, "item": b.item, "reason": b.reason}
                       for b in self.store.list_blocked(limit=BLOCKED_SHOWN)]
        except Exception as exc:
            problems.append(f"the database is not writable: {exc}")
        body: dict[str, Any] = {"status": "ok" if not problems else "unhealthy",
                                "simulated": self.simulate,
                                "blocked": {"count": n_blocked, "items": blocked}}
        if self.dispatcher is not None and self.dispatcher.rate_limited:
            # Not a problem (200): the operator chose the cap; the faxes wait, none fails.
            body["rate_limited"] = [
                {"outbox": name, "max_faxes_per_hour": self.outboxes[name].max_faxes_per_hour,
                 "until": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until)),
                 "reason": f"max_faxes_per_hour ({self.outboxes[name].max_faxes_per_hour}) reached: "
                           "its faxes wait until the hour has room"}
                for name, until in sorted(self.dispatcher.rate_limited.items())
                if name in self.outboxes]  # (a reload may be under way)
        if problems:
            body["reasons"] = problems
        return not problems, body

    def _check_writable(self) -> None:
        """A write (a durable commit: an fsync) at most every WRITABLE_EVERY seconds,
        however often /healthz, /metrics and the status page are asked: a monitor polling
        every second must not add a commit a second.  Until the next one its outcome
        (a failure too) is reported again."""
        now = time.monotonic()
        checked_at, failure = self._writable
        if now - checked_at >= WRITABLE_EVERY:
            assert self.store is not None
            try:
                self.store.check_writable()
                failure = None
            except Exception as exc:
                failure = str(exc)
            self._writable = (now, failure)
        if failure is not None:
            raise GatewayError(failure)

    def run_forever(self) -> int:
        """Runs until SIGTERM/SIGINT; returns the exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)  # handlers only record the signal: see the loop
        # A signal wakes the loop at once (not at its next 0.2 s tick): from SIGTERM on, no
        # new request may start (SPEC 10).
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno())
        self._wake_main = wake_w
        watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        interval = watchdog_usec / 2e6 if watchdog_usec else 5.0
        next_ping = 0.0
        while not self._stop.is_set():
            if self._signal in (signal.SIGTERM, signal.SIGINT):
                break
            if self._signal == signal.SIGHUP:
                self._signal = None
                self.reload()
            if self.guard is not None:
                self.guard.check()  # at least every second (dbguard.py)
            now = time.monotonic()
            if now >= next_ping:
                # Only a stuck or dead thread withholds the ping: an API pause or a paused
                # outbox is reported by /healthz, and a restart would not cure it.
                if not self._stage_problems():
                    notify("WATCHDOG=1")
                next_ping = now + interval
            # The stages ask the database guard at each turn; this loop only pings the watchdog.
            if select.select([wake_r], [], [], max(0.05, min(MAIN_IDLE, next_ping - time.monotonic())))[0]:
                try:
                    wake_r.recv(64)
                except BlockingIOError:
                    pass
        signal.set_wakeup_fd(-1)
        self._wake_main = None
        wake_r.close()
        wake_w.close()
        log.info("stopping")
        notify("STOPPING=1")
        self.stop()
        return 0

    # -- reloading (SIGHUP) -----------------------------------------------------------

    def reload(self) -> bool:
        """Read the configuration file again and apply it (SPEC 10), or keep the running
        one, saying why in one line.  Each stage applies it between two of its turns."""
        notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            return self._reload()
        finally:
            notify("READY=1")

    def _reload(self) -> bool:
        try:
            new = load_config(self.config.path)
            change = plan_reload(self.config, new, self.outboxes, self.retired, _resolved)
            endpoint = self._api_endpoint(new)  # the key file is read again: a key may be rotated
            renewed = change.api_changed or endpoint != self._endpoint
            client = self._client(*endpoint, new) if renewed else None
        except GatewayError as exc:
            log.error("reload refused, the running configuration is kept: %s", exc)
            return False
        for w in new.warnings:
            log.warning(w)
        for name in (*change.added, *change.changed):
            ob = change.outboxes[name]
            self.metrics.add_outbox(name)
            for path in (ob.path, ob.sent, ob.failed):
                try:
                    self._ensure_folder(name, path)
                except OSError as exc:  # the outbox pauses, saying why (intake's folder check)
                    log.error("outbox %s: %s could not be created: %s", name, path, exc.strerror)
            if self._folders is not None:  # which of its folders are mount points, as at start
                self._folders.problem(ob)
        if client is not None and self.dispatcher is not None:
            self.dispatcher.replace_client(client, new.api.max_in_flight)
            self._endpoint = endpoint
        applied: list[tuple[Stage | IntakeProcess, threading.Event]] = [
            (stage, stage.reconfigure(change)) for stage in self.stages]
        if self.intake_process is not None:
            applied.append((self.intake_process, self.intake_process.reconfigure(change)))
        late = [stage.name for stage, done in applied if not done.wait(RELOAD_WAIT)]
        self.config, self.outboxes, self.retired = new, change.outboxes, change.retired
        for name in change.removed:  # (after: the intake process's reports skip them from now on)
            self.metrics.remove_outbox(name)
        set_level(new.log.level, new.log.format)
        log.info("configuration reloaded from %s: %s%s", new.path, change.summary(),
                 f" (still being applied by: {', '.join(late)})" if late else "")
        return True

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signal = signum

    def request_stop(self) -> None:
        self._signal = signal.SIGTERM
        self._stop.set()
        wake = self._wake_main
        if wake is not None:
            try:
                wake.send(b"\0")
            except OSError:
                pass

    def stop(self) -> None:
        """SIGTERM (SPEC 10): every stage is told at once, so no new request starts from
        this moment; the requests under way finish (or time out), and the whole stop fits
        in max(10 s, api.timeout + 2 s), the unit's TimeoutStopSec."""
        self._stop.set()
        start = time.monotonic()
        stages: list[Stage | IntakeProcess] = [
            s for s in (self.dispatcher, self.intake, self.intake_process, self.filing, self.retention)
            if s is not None]
        for stage in stages:
            stage.request_stop()
        for stage in stages:  # the dispatcher's requests may take api.timeout; the others a turn
            budget = self.config.api.timeout + 0.5 if stage is self.dispatcher else STAGE_STOP
            stage.join(start + max(STAGE_STOP, budget) - time.monotonic())
        if self.dispatcher:
            self.dispatcher.client.close()
        if self.status_web:
            self.status_web.stop()
        if self.web:
            self.web.stop()
        if self.simulator:
            self.simulator.stop()
        if self.guard:
            self.guard.save_again()  # with what requests under way wrote after the change (dbguard.py)
        if self.store:
            self.store.close()
        self._lock.release()  # only after the store closed: it would drop SQLite's locks (dblock.py)


def _resolved(ob: OutboxConfig) -> OutboxConfig:
    """The configured folders, resolved once at start: an administrator may reach them
    through a link; below them nothing is followed (SPEC 4.5)."""
    real = {k: Path(os.path.realpath(getattr(ob, k))) for k in ("path", "sent", "failed", "private")}
    return dataclasses.replace(ob, **real)


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
