"""Intake in a process of its own, beside the sending loop (issue 12).

Why: a process's threads share one interpreter lock, so intake (claim, judge, record)
and sending took turns with it, and a burst's rate followed the CPU both spent per
document.  With intake in a process of its own, on a CPU of its own, the two overlap:
measured with benchmarks/split.py, a burst is taken about a fifth faster (RESULTS.md).
`fax-gateway run` starts it (FAX_GATEWAY_INTAKE_PROCESS=no keeps intake in a thread, as
the in-process `Service` of the tests and of library use always does).

The two processes share the database (SQLite's locks take their writes in turn; every
commit is as durable as before), the outboxes' private folders, and a socket:

- daemon to intake (pickled: the daemon is the trusted side): the configuration at
  start and at each reload, without secrets (intake needs none), and the private folders
  the daemon prepared;
- intake to daemon (JSON: the side that reads what anyone may write sends only data):
  reports of its loop (that it turns, its watchers, paused outboxes, whether it has more
  to take at once, intake's metrics), and "judged", which wakes the sending and filing
  loops as the in-process intake does.

Nothing is lost or sent twice when either dies: each claim is committed before its
rename, as in one process, and a restarted intake finishes what was half done.  The
intake process never outlives the daemon: it dies with it (PR_SET_PDEATHSIG), leaves
when its socket closes, and holds the descriptor that carries the database lock, so no
new daemon starts while it still runs.  A crash point (faults.py) in it kills the daemon
too, as a power cut would.  One that dies is started again, with a backoff, and
/healthz says so meanwhile.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Mapping
from multiprocessing.connection import Connection
from typing import Any

from gateway import cpu, faults
from gateway.config import Config, OutboxConfig
from gateway.dbguard import halted_when_moved
from gateway.intake import Intake
from gateway.logs import set_level, setup_logging
from gateway.metrics import Metrics
from gateway.quietlog import Problems
from gateway.reload import Reload
from gateway.store import Store

log = logging.getLogger("gateway.intake")

START_WAIT = 60.0     # start-up waits this long for intake to watch the outboxes before READY
REPORT_EVERY = 5.0    # an idle intake reports this often (its loop turns at least every 5 s)
METRICS_EVERY = 0.2   # in a burst, intake's metrics go to the daemon at most this often
RESTART_FIRST = 1.0   # a process that died is started again after this, doubling...
RESTART_MAX = 30.0    # ...up to this
STABLE_AFTER = 60.0   # one that ran this long starts again after RESTART_FIRST
STOP_WAIT = 8.0       # at a stop, how long its last turn may take before it is killed
APPLY_WAIT = 10.0     # how long the intake process waits for its loop to take a reload
SECRETS = ("IFAX_API_KEY", "CREDENTIALS_DIRECTORY")  # never in its environment
SYSTEMD = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")  # the daemon alone talks to systemd

COUNTERS = ("files_detected", "files_rejected")
GAUGES = ("files_waiting", "files_waiting_long", "outbox_paused")


# -- the daemon's side --------------------------------------------------------------------


class IntakeProcess:
    """Starts the intake process, serves its reports, starts it again when it dies, and
    stops it.  `paused` and `metrics` are the daemon's, kept as intake reports them."""

    name = "intake"

    def __init__(self, *, lock_fd: int, metrics: Metrics, paused: dict[str, str],
                 folders: Callable[[], dict[str, Any]], on_judged: Callable[[], None],
                 on_idle: Callable[[], None], cpus: tuple[int, Collection[int]] | None = None) -> None:
        # What a new process starts with (`start`): the configuration in use (a reload
        # changes it, under `_send_lock`, so a process started meanwhile gets the new one).
        self._setup: dict[str, Any] = {}
        self._launched: tuple[subprocess.Popen[bytes], Connection] | None = None
        self._lock_fd, self._metrics = lock_fd, metrics
        self._paused = paused
        self._folders = folders  # what the daemon's folder guard knows (FolderGuard.known), at each start
        self._on_judged, self._on_idle = on_judged, on_idle
        self._cpus = cpus  # (its CPU, every CPU the daemon may use), as cpu.py keeps them
        self.busy = False  # its last turn left work for the next at once (filing gives way meanwhile)
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._send_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._first = threading.Event()
        self._reported_at = 0.0
        self._watching = False
        self._down: str | None = "it is starting"  # why it does not run, or None
        self._reloads: dict[int, threading.Event] = {}
        self._generation = 0
        self._problems = Problems(log)  # a report that keeps failing is logged once, not 5 times a second

    def launch(self) -> None:
        """The first process, early in the daemon's start: it loads Python and the gateway
        (half a second) on its own CPU while the daemon sets up the rest, and waits for
        `start`.  Called from the thread that lives as long as the daemon (the main
        thread): PR_SET_PDEATHSIG follows the thread that started the process."""
        try:
            self._launched = self._launch()
        except Exception as exc:  # tried again by `start`'s loop, with its backoff
            log.error("the intake process could not be started: %s", exc)

    def start(self, setup: dict[str, Any], wait: float = START_WAIT) -> None:
        """`setup`: what it starts with (config, outboxes, retired, simulate, debug; what
        the daemon's folder guard knows is added at each start).  Returns once intake
        watches the outboxes (its "started" report), or once its first process ended
        without it, or after `wait`."""
        with self._send_lock:
            self._setup = {**setup, "config": without_secrets(setup["config"])}
        self._thread = threading.Thread(target=self._run, name="intake-process", daemon=True)
        self._thread.start()
        if not self._first.wait(wait):
            log.error("the intake process did not report within %.0f s; the daemon goes on, and "
                      "/healthz says what is wrong", wait)

    def _run(self) -> None:
        delay = RESTART_FIRST
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                proc, conn = self._launched or self._launch()
                self._launched = None
            except Exception as exc:
                self._down = f"it could not be started: {exc}"
                self._first.set()  # start-up waits no longer: /healthz says it
            else:
                try:
                    self._begin(proc, conn)
                except Exception as exc:  # (not its death: _serve sees that) its start could not be sent
                    log.error("the intake process could not be given its configuration: %s: %s",
                              type(exc).__name__, exc)
                    proc.kill()
                self._serve(conn)
                code = proc.wait()
                with self._send_lock:
                    conn.close()
                    self._conn, self.busy = None, False
                    for done in self._reloads.values():  # the next process starts with them
                        done.set()
                    self._reloads.clear()
                self._first.set()
                if self._stop.is_set():
                    break
                self._down = f"it {_ended(code)}"
            if time.monotonic() - started >= STABLE_AFTER:
                delay = RESTART_FIRST
            log.error("the intake process is not running (%s); it is started again in %.0f s",
                      self._down, delay)
            self._down += f"; it is started again within {delay:.0f} s"
            self._stop.wait(delay)
            delay = min(RESTART_MAX, delay * 2)

    def _launch(self) -> tuple[subprocess.Popen[bytes], Connection]:
        ours, theirs = socket.socketpair()
        env = {k: v for k, v in os.environ.items() if k not in SECRETS + SYSTEMD}
        cmd = [sys.executable, "-P", "-m", "gateway.intakeproc", "--parent", str(os.getpid()),
               "--socket", str(theirs.fileno()), "--lock", str(self._lock_fd)]
        if self._cpus is not None:
            cmd += ["--cpu", str(self._cpus[0]), "--cpus", ",".join(map(str, sorted(self._cpus[1])))]
        try:
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, close_fds=True,
                                    pass_fds=(theirs.fileno(), self._lock_fd))
        finally:
            theirs.close()
        self._proc = proc  # (`request_stop` ends it, even before `start`)
        if self._cpus is not None:  # its own CPU from the start: it loads beside the daemon
            try:
                os.sched_setaffinity(proc.pid, {self._cpus[0]})
            except OSError:
                pass  # it keeps to its CPU itself once started (cpu.keep_on)
        return proc, Connection(ours.detach())

    def _begin(self, proc: subprocess.Popen[bytes], conn: Connection) -> None:
        with self._send_lock:  # no reload between: the first message is "start", with the latest
            self._conn = conn
            try:
                conn.send(("start", {**self._setup, "folders": self._folders()}))
            except (OSError, ValueError):
                pass  # it died at once: _serve sees the end
        if self._stop.is_set():  # stopped while it was being started
            proc.terminate()

    def _serve(self, conn: Connection) -> None:
        while True:
            try:
                message = conn.recv_bytes()
            except (EOFError, OSError):
                return
            try:
                self._take(json.loads(message))
            except Exception as exc:  # never a reason to stop serving it: its next report may do
                self._problems.problem("report", "a report of the intake process could not be used: %s: %s",
                                       type(exc).__name__, exc)
            else:
                self._problems.clear("report", "the intake process's reports are used again")

    def _take(self, report: dict[str, Any]) -> None:
        if not report["applied"]:  # (an answer to a reload says nothing of the loop)
            self._reported_at, self._down = time.monotonic(), None
        self._watching = report["watching"]
        paused: dict[str, str] = report["paused"]
        changed = paused != self._paused
        if changed:
            for name in [n for n in self._paused if n not in paused]:
                self._paused.pop(name, None)
            self._paused.update(paused)
        self._apply_metrics(report["metrics"])
        was, self.busy = self.busy, report["busy"]
        for generation in report["applied"]:
            done = self._reloads.pop(generation, None)
            if done is not None:
                done.set()
        if report["started"]:
            self._first.set()
        if report["judged"] or changed:
            self._on_judged()
        if was and not self.busy:
            self._on_idle()

    def _apply_metrics(self, changes: Mapping[str, list[list[Any]]]) -> None:
        """What changed in the intake process since its last report (`_Relay.take`)."""
        for family, labels, amount in changes["counters"]:
            if family in COUNTERS:
                self._metrics.count(getattr(self._metrics, family), *map(str, labels), amount=float(amount))
        known = self._metrics.outboxes  # (a reload adds before it reaches intake, removes after)
        for family, labels, value in changes["gauges"]:
            if family in GAUGES and labels and labels[0] in known:  # (not an outbox a reload removed)
                getattr(self._metrics, family).labels(*map(str, labels)).set(float(value))

    # -- what the service asks --------------------------------------------------------

    def problems(self, stuck_after: float) -> list[str]:
        """As the in-process stage's (service.py): its loop, its watchers."""
        down = self._down
        if down is not None:
            return [f"the intake loop is not running ({down})"]
        problems = []
        if not self._watching:
            problems.append("the folder watchers are not running")
        quiet = time.monotonic() - self._reported_at
        if quiet > stuck_after:
            problems.append(f"the intake loop is stuck (no progress for {quiet:.0f}s)")
        return problems

    def reconfigure(self, change: Reload) -> threading.Event:
        """A reload for the intake process; the event is set once its loop applied it, or
        once the process ended (the next one starts with this configuration)."""
        done = threading.Event()
        change = without_secrets(change)
        with self._send_lock:
            self._setup = {**self._setup, "config": change.config, "outboxes": change.outboxes,
                           "retired": change.retired}
            self._generation += 1
            self._reloads[self._generation] = done  # (before: its answer may come at once)
            try:
                if self._conn is None:
                    raise OSError("the intake process is not running")
                self._conn.send(("reload", self._generation, change))
            except (OSError, ValueError):
                self._reloads.pop(self._generation, None)
                done.set()
        return done

    def request_stop(self) -> None:
        """Take nothing more: its turn under way ends, then the process."""
        self._stop.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                proc.terminate()
            except OSError:
                pass

    def join(self, timeout: float) -> None:
        proc = self._proc
        if proc is not None:
            try:
                proc.wait(max(0.0, timeout))
            except subprocess.TimeoutExpired:
                log.error("the intake process did not stop within %.0f s; it is killed", timeout)
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(2.0)


def without_secrets(value: Any) -> Any:
    """A configuration (or a reload's) for the intake process: it needs no key."""
    if isinstance(value, Reload):
        return dataclasses.replace(value, config=without_secrets(value.config))
    assert isinstance(value, Config)
    return dataclasses.replace(value, api=dataclasses.replace(value.api, key=None),
                               webhook=dataclasses.replace(value.webhook, secret=None))


def _ended(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


# -- the intake process -------------------------------------------------------------------


class _Reporting(Intake):
    """Intake whose every turn (and every judged batch) may report to the daemon."""

    report: Callable[..., None] = staticmethod(lambda **kw: None)  # type: ignore[assignment]

    def turn(self) -> float:
        try:
            return super().turn()
        finally:
            self.report()


class _Child:
    def __init__(self, conn: Connection, lock_fd: int, setup: dict[str, Any], wake_fd: int) -> None:
        self.conn, self.setup, self.wake_fd = conn, setup, wake_fd
        self._send_lock = threading.Lock()
        self._sent_at = float("-inf")
        self._last: tuple[Any, ...] | None = None
        config: Config = setup["config"]
        self.outboxes: dict[str, OutboxConfig] = setup["outboxes"]
        self.store = Store(config.database, migrate=False)
        self.store.clear_all_blocked(stages=("claim", "intake"))  # found again at their first try
        self.metrics = _Relay()
        self.paused: dict[str, str] = {}
        self.intake = _Reporting(self.store, self.outboxes, self.metrics, simulate=setup["simulate"],
                                 file_names=config.log.file_names, paused=self.paused,
                                 on_judged=lambda: self.report(judged=True))
        self.intake.retired = dict(setup["retired"])
        self.intake.report = self.report
        self.intake.file_names = config.log.file_names
        self.intake.halted = halted_when_moved(config.database, os.fstat(lock_fd))
        self.intake.guard.assume(setup["folders"])

    def run(self, wake_r: int) -> int:
        """Until SIGTERM (the signal's wake-up byte) or the end of the socket."""
        intake = self.intake
        try:
            intake.start_watching()
            self.report(started=True)
            intake.start()
            threading.Thread(target=self._listen, name="intake-socket", daemon=True).start()
            select.select([wake_r], [], [])
        finally:
            intake.request_stop()
            intake.join(STOP_WAIT)
            self.store.close()
        return 0

    def stop(self) -> None:
        """From any thread (a signal handler must not take a lock: the wake-up byte)."""
        try:
            os.write(self.wake_fd, b"\0")
        except OSError:
            pass

    def _listen(self) -> None:
        """Reloads from the daemon; the end of the socket (the daemon is gone) stops it."""
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                self.stop()
                return
            if message[0] != "reload":
                continue
            _, generation, change = message
            try:
                self._reload(change)
            except Exception as exc:  # the daemon's message; its next reload may do
                log.error("intake: a reload could not be applied: %s: %s", type(exc).__name__, exc)
            finally:
                self.report(applied=(generation,))  # answered either way: the daemon stops waiting

    def _reload(self, change: Reload) -> None:
        # Their gauges are made afresh (at 0) in the daemon: what was reported counts no more.
        self.metrics.forget({*change.added, *change.removed, *change.changed})
        done = self.intake.reconfigure(change)
        done.wait(APPLY_WAIT)
        self.outboxes = change.outboxes
        set_level(change.config.log.level, change.config.log.format)

    def report(self, *, judged: bool = False, applied: tuple[int, ...] = (), started: bool = False) -> None:
        """To the daemon: at once when something it acts on changed (a batch judged, an
        outbox paused, busy or idle), changed metrics at most every METRICS_EVERY, and
        at least every REPORT_EVERY, which tells it the loop turns."""
        intake = self.intake
        now = time.monotonic()
        state = (intake.watcher.alive(), intake.busy, dict(self.paused))
        with self._send_lock:
            since = now - self._sent_at
            if not (started or judged or applied or state != self._last or since >= REPORT_EVERY
                    or (since >= METRICS_EVERY and self.metrics.changed)):
                return
            self._last, self._sent_at = state, now
            report = {"watching": state[0], "busy": state[1], "paused": state[2],
                      "metrics": self.metrics.take(), "judged": judged, "applied": list(applied),
                      "started": started}
            try:
                self.conn.send_bytes(json.dumps(report).encode())
            except (OSError, ValueError):
                self.stop()  # the daemon is gone


class _Relay:
    """Intake's metrics in the intake process, as `Metrics` offers them to it: what
    changed since the last report goes with the next one, and the daemon's `Metrics`
    serves them.  Why not a registry of its own, read at each report: an idle turn sets
    two gauges per outbox to what they were (a dict look-up here), and reading and
    sending a registry of 50 outboxes took more CPU than the rest of an idle daemon."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, tuple[str, ...]], float] = {}
        self._gauges: dict[tuple[str, tuple[str, ...]], float] = {}  # set since the last report
        self._sent: dict[tuple[str, tuple[str, ...]], float] = {}    # gauges as last reported
        for family in COUNTERS + GAUGES:
            setattr(self, family, _Family(self, family))

    @property
    def changed(self) -> bool:
        return bool(self._counts or self._gauges)

    def count(self, family: _Family, *labels: str, amount: float = 1.0) -> None:
        self.add(family.name, labels, amount)

    def add(self, family: str, labels: tuple[str, ...], amount: float) -> None:
        key = (family, labels)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0.0) + amount

    def set(self, family: str, labels: tuple[str, ...], value: float) -> None:
        key = (family, labels)
        with self._lock:
            if self._sent.get(key) != value:
                self._gauges[key] = value
            else:
                self._gauges.pop(key, None)

    def forget(self, outboxes: Collection[str]) -> None:
        """Gauges of these outboxes are sent again, whatever was sent before."""
        with self._lock:
            self._sent = {k: v for k, v in self._sent.items() if not (k[1] and k[1][0] in outboxes)}

    def take(self) -> dict[str, list[list[Any]]]:
        with self._lock:
            counts, gauges = self._counts, self._gauges
            self._counts, self._gauges = {}, {}
            self._sent.update(gauges)
        return {"counters": [[f, list(labels), n] for (f, labels), n in counts.items()],
                "gauges": [[f, list(labels), v] for (f, labels), v in gauges.items()]}


class _Family:
    def __init__(self, relay: _Relay, name: str) -> None:
        self.relay, self.name = relay, name

    def labels(self, *labels: str) -> _Series:
        return _Series(self.relay, self.name, labels)


class _Series:
    __slots__ = ("relay", "family", "labels")

    def __init__(self, relay: _Relay, family: str, labels: tuple[str, ...]) -> None:
        self.relay, self.family, self.labels = relay, family, labels

    def inc(self, amount: float = 1.0) -> None:
        self.relay.add(self.family, self.labels, amount)

    def set(self, value: float) -> None:
        self.relay.set(self.family, self.labels, value)


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the daemon ends, however it ends; and never run on if it already did."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the socket's end stops it
    if os.getppid() != parent:
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway.intakeproc", description="fax-gateway's intake process "
                                     "(started by `fax-gateway run`, not by hand)")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--socket", type=int, required=True)
    parser.add_argument("--lock", type=int, required=True)
    parser.add_argument("--cpu", type=int)
    parser.add_argument("--cpus", default="")
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    faults.kill_also(args.parent)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGIO):  # a Ctrl-C or SIGHUP is the daemon's to act on
        signal.signal(sig, signal.SIG_IGN)
    for fd in (args.socket, args.lock):  # not for the document reader it starts
        os.set_inheritable(fd, False)
    conn = Connection(args.socket)
    try:
        kind, setup = conn.recv()  # (until it comes, SIGTERM ends it: nothing is under way)
    except (EOFError, OSError):
        return 0
    if kind != "start":
        return 2
    wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    signal.set_wakeup_fd(wake_w)  # SIGTERM: its byte wakes the main thread, no lock taken
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    config: Config = setup["config"]
    setup_logging(config.log.level, config.log.format, forced_debug=setup.get("debug", False))
    if args.cpu is not None:
        cpu.keep_on(args.cpu, {int(c) for c in args.cpus.split(",") if c})
    return _Child(conn, args.lock, setup, wake_w).run(wake_r)


if __name__ == "__main__":
    raise SystemExit(main())
