"""Where the gateway stands on "lean and fast" (issue 12, item 5): prints figures beside
the issue's targets; asserts nothing.

    python benchmarks/lean.py [--rounds 7] [--docs 1000] [--no-idle] [--no-profile]

Every phase sends to the project's simulator running in a process of its own
(`python -m gateway simulator`, as shipped: it sets TCP_NODELAY on its connections),
never inside the daemon, and
every daemon is a real `python -m gateway run` process, so CPU, RSS, context switches
and fsyncs are the daemon's own.  Everything stays on 127.0.0.1 and under one temporary folder.

Phases, in this order (the default run takes about 3 minutes on 2 cores):

1. bare clients: the same DOCS fax-send bodies the gateway sends (base64 PDF JSON, the
   gateway's headers) posted by one keep-alive `httpx.Client` from 4 threads, then by
   4 keep-alive `http.client` connections, both paced by the gateway's own RateLimiter
   at the same requests_per_minute (10^6); the better of two runs of each.  Also the
   client's own CPU per request (getrusage of this process over both runs), the floor
   under the gateway's two requests (fax-send, fax-status) per document.  The httpx
   client also runs once before the first burst round and once after each (phase 2), and
   twice more after the bursts.
2. burst rounds: one daemon, one outbox, max_in_flight 4, requests_per_minute 10^6,
   settle 0.05 s, poll.interval 5 s (--burst-poll), simulator delay 0.05 s. The interval
   is longer than the time the burst takes to be accepted, as the gateway's default (30
   s) is, so the gateway, like the bare client, makes one request per document while the
   burst is accepted (each round prints how many fax-status requests the daemon had
   made by then: its own /metrics, since the simulator keeps only its last 1,000
   requests), and polls each fax afterwards; filing, which follows the polls, comes
   after the window too. Each round drops DOCS one-page PDFs at once
   and waits until all are filed in sent/ (its docs/s to filed is bound by the poll
   interval; phase 2a shows the pipeline to filed). Documents/s are counted from the
   first file written to the DOCS-th fax-send the simulator accepted (its request log)
   and to the last result file in sent/. The ratio to the bare client (the target's
   figure) is taken round by round: each round's docs/s to accepted ÷ the faster of the
   bare httpx runs just before and just after it, and the median over the clean rounds
   is the headline. The machine's speed drifts by a third within minutes (bare httpx
   1,028/s and 1,370/s three minutes apart on 2026-12-04), so a bare run from other
   minutes says more about the machine than about the gateway. The older, harsher figure
   is printed too: the best clean round ÷ the fastest bare httpx run of all. Rounds 1,
   2 and 5 on are clean; the headline docs/s and CPU ms per document
   (/proc/PID/stat, user and system) are the best clean round's, since a shared machine
   only ever slows a round down (each round prints how busy the machine was and the
   hypervisor's steal). Round 3 runs under `py-spy record --format raw --gil` (which
   Python code holds the GIL: the CPU the pipeline spends in Python) and round 4 under
   plain `py-spy record` (threads py-spy sees as active: waits for fsync and for answers
   included).  Traced rounds are
   slowed by their tracer, so their docs/s are shown but not used; rounds 1, 2 and 5 on
   are clean.  Round 2's fsync and fdatasync calls are counted in the kernel with
   `perf stat -e syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync -p PID`, which
   stops nothing (skipped where perf or its tracepoints are missing).  RSS (VmRSS) is
   read after every round (ROUNDS, default 7, at least 3): "flat" means round 5 <=
   round 2 + 5 MB; peak RSS is VmHWM.  Each round also counts each thread's CPU
   (/proc/PID/task/TID/stat, named by `py-spy dump` after the last round; the document
   reader child is the rest of the process's CPU) and the simulator's.  From the
   simulator's CPU per document and the bare httpx rate follows the CPU budget per
   document at the ratio 0.5 on this machine: what the cores leave beside the simulator
   at half the bare rate, if the gateway's work spread over all of them, and one core's
   worth for what runs under the daemon's one interpreter lock.
2a. polled bursts (POLLED_ROUNDS, default 2): the same bursts on a daemon with
   poll.interval 0.1 s, so most faxes are also polled (fax-status) before the last fax-send
   is accepted: up to twice the bare client's requests in the same window, to the same
   simulator on the same cores.  Docs/s to accepted and to filed, the fax-status requests
   in the window, CPU ms per document, and the ratios, paired as in the rounds (a bare
   httpx run before the first polled burst and after each).
2b. fsyncs: a fresh daemon started under `strace -f --seccomp-bpf -c -e
   trace=fsync,fdatasync`, one burst of FSYNC_DOCS documents (default DOCS) with the
   burst rounds' settings, stopped; its fsync and fdatasync calls from start to exit
   (start-up and stop included), per document. --seccomp-bpf stops the daemon only at
   those two calls. Attached with -p instead, strace stops every thread at every system
   call, which slowed the burst 7 times over and halved its batches, so it counted a
   pipeline that does not run.
3. SQL statements: SQLite's statements cannot be seen from outside the process and
   gateway/store.py has no hook, so this phase runs a real `fax-gateway run` (SQL_DOCS
   documents, default 200, same settings as the burst) with a sitecustomize.py on its
   PYTHONPATH, in the benchmark only, that wraps sqlite3.connect to set a trace
   callback on every connection of each of its processes (the daemon's and its intake
   process's), each writing a file.  Statements are grouped by kind and table and by
   shape (values as ?); write transactions (each an fsynced commit with
   synchronous=FULL) are counted too.  Python reports a statement again each time it
   runs a trigger (the job_counts triggers on jobs): those repeats are counted apart,
   as trigger runs.
4. latency-bound: a second daemon, max_in_flight 8, the simulator answering every
   request after 100 ms (its `slow` fault on all endpoints), polls on (poll interval
   LATENCY_POLL, default 5 s), LATENCY_DOCS documents (default 400): achieved
   fax-send rate (first file written to the last fax-send accepted) as a fraction of
   8 / 0.1 s = 80/s.
5. idle (on by default; --no-idle skips it): a daemon watching 50 outboxes (inotify)
   with nothing to do; after a 5 s warm-up, voluntary context switches of all its
   threads over IDLE_SECONDS (default 60) per second, and its CPU %.

It also prints both durability settings: the daemon's PRAGMA synchronous (as its own
connection set it, from phase 3's trace, and with a separate sqlite3 connection, which shows only
that connection's default because the pragma is per connection) and whether folder
fsyncs are on (read from gateway/spool.py: there is no setting).

Needs perf (apt-get install linux-perf) for round 2's fsyncs, strace for 2b, and py-spy
(pip install py-spy) for rounds 3 and 4 and for naming the idle phase's threads; without
them those figures are skipped.
"""

from __future__ import annotations

import argparse
import base64
import collections
import http.client
import io
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from gateway.throttle import RateLimiter  # noqa: E402

NUMBER = "+15551234567"
RPM = 10**6
CLK_TCK = os.sysconf("SC_CLK_TCK")
MB = 1024 * 1024
TARGETS = {
    "burst ratio": "≥ 0.5", "latency-bound": "≥ 0.9", "fsyncs/doc": "≤ 3", "statements/doc": "≤ 20",
    "CPU ms/doc": "≤ 3", "idle wake-ups/s": "≤ 3", "idle CPU": "< 0.2 %", "RSS flat": "r5 ≤ r2 + 5 MB",
}


# -- small helpers -------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_pdf() -> bytes:
    from pypdf import PdfWriter
    w = PdfWriter()
    w.add_blank_page(width=612, height=792)
    buf = io.BytesIO()
    w.write(buf)
    return buf.getvalue()


def wait(condition: Any, timeout: float, what: str, every: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def own_cpu() -> float:
    """User + system CPU seconds of this process (the bare clients run in it)."""
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process (all threads, exited ones included), in ticks."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[int, int]:
    """(utime, stime) of the whole process, in ticks, with its child processes' (the
    daemon reads documents in a child, gateway/docreader.py): live ones from their own stat,
    ended ones from cutime/cstime."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    user, system = int(fields[11]) + int(fields[13]), int(fields[12]) + int(fields[14])
    for child in child_pids(pid):
        try:
            cu, cs = cpu_split(child)
        except OSError:
            continue
        user, system = user + cu, system + cs
    return user, system


def child_pids(pid: int) -> list[int]:
    """The live child processes of every thread of the process (the daemon's: its document
    reader, started by the intake's thread)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # a thread that ended meanwhile
            continue
    return out


def family(pid: int) -> list[int]:
    """The daemon and every process below it: its intake process (gateway/intakeproc.py)
    and the document readers."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += child_pids(p)
        except OSError:  # ended meanwhile
            pass
    return out


def intake_processes(pid: int) -> list[int]:
    """The daemon's intake process, if it has one (gateway/intakeproc.py)."""
    out = []
    for child in child_pids(pid):
        try:
            if b"gateway.intakeproc" in Path(f"/proc/{child}/cmdline").read_bytes():
                out.append(child)
        except OSError:
            pass
    return out


def status_kb(pid: int, key: str) -> int:
    """`key` of /proc/PID/status, summed over the daemon's processes (`family`)."""
    total = 0
    for p in family(pid):
        try:
            lines = Path(f"/proc/{p}/status").read_text().splitlines()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in lines if line.startswith(key + ":")), 0)
    return total


def tasks(pid: int) -> list[Path]:
    """Every thread of the daemon's processes (`family`)."""
    out = []
    for p in family(pid):
        try:
            out += list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            pass
    return out


def thread_totals(pid: int) -> tuple[int, int, int]:
    """(voluntary context switches, nonvoluntary ones, run time in ns) summed over the
    threads now alive of the daemon's processes."""
    vol = nonvol = run_ns = 0
    for task in tasks(pid):
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    vol += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    nonvol += int(line.split()[1])
            run_ns += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):
            pass  # a thread that ended meanwhile
    return vol, nonvol, run_ns


def machine_ticks() -> list[int]:
    """The first line of /proc/stat: user nice system idle iowait irq softirq steal ..."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def machine_share(before: list[int], after: list[int]) -> tuple[float, float]:
    """(% of all cores busy, % stolen by the hypervisor) between two machine_ticks()."""
    d = [b - a for a, b in zip(before, after, strict=False)]
    total = sum(d[:8]) or 1
    return 100.0 * (total - d[3] - d[4]) / total, 100.0 * d[7] / total


def each_cpu_ticks() -> dict[int, list[int]]:
    """/proc/stat's line of each CPU, by number."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *values = line.split()
            out[int(name[3:])] = [int(x) for x in values]
    return out


def move_threads(pid: int, cpu: int) -> None:
    """Every thread of the process to `cpu`, again until no new thread turned up meanwhile
    (its child processes keep their CPUs)."""
    moved: set[int] = set()
    while (tids := {int(t) for t in os.listdir(f"/proc/{pid}/task")}) != moved:
        for tid in tids:
            try:
                os.sched_setaffinity(tid, {cpu})
            except ProcessLookupError:  # a thread that ended meanwhile
                pass
        moved = tids


def pinned_cpu(pid: int) -> int | None:
    """The one CPU the daemon keeps its threads on (gateway/cpu.py), if it does."""
    cpus = os.sched_getaffinity(pid)
    return next(iter(cpus)) if len(cpus) == 1 else None


def cpu_split_note(pid: int, before: dict[int, list[int]], after: dict[int, list[int]]) -> str:
    """How busy the daemon's own CPU was, and the others: whether a burst was bound by the
    daemon's CPU (about 100%) or by waiting."""
    mine = pinned_cpu(pid)
    if mine is None or mine not in after:
        return ""
    def busy(cpus: list[int]) -> float:
        return machine_share([sum(before[c][i] for c in cpus) for i in range(8)],
                             [sum(after[c][i] for c in cpus) for i in range(8)])[0]
    others = [c for c in after if c != mine and c in before]
    return f"; the daemon's CPU {mine} {busy([mine]):.0f}% busy, the others {busy(others):.0f}%"


def task_switches(pid: int) -> dict[int, int]:
    """Voluntary context switches of each thread now alive."""
    out = {}
    for task in tasks(pid):
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    out[int(task.name)] = int(line.split()[1])
        except (OSError, ValueError):
            pass
    return out


def task_cpu(pid: int) -> dict[int, int]:
    """utime + stime, in ticks, of each thread now alive (of the daemon's processes)."""
    out = {}
    for task in tasks(pid):
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(task.name)] = int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            pass
    return out


def by_thread_name(ticks: dict[int, int], names: dict[int, tuple[str, str]], n: int) -> dict[str, float]:
    """CPU ms per document by Python thread name, numbered pools summed (ifax_0..3 -> ifax)."""
    out: collections.Counter[str] = collections.Counter()
    for tid, t in ticks.items():
        name = re.sub(r"[_-]\d+$", "", names.get(tid, (f"thread {tid}", ""))[0])
        out[name] += 1000.0 * t / CLK_TCK / n
    return dict(out)


def thread_names(pyspy: str | None, pid: int) -> dict[int, tuple[str, str]]:
    """Thread id -> (its Python name, the frame it is in), from `py-spy dump` of each of
    the daemon's processes; the intake process's threads are named `intake: NAME`."""
    if not pyspy:
        return {}
    out: dict[int, tuple[str, str]] = {}
    for p in family(pid):
        try:
            intake = b"gateway.intakeproc" in Path(f"/proc/{p}/cmdline").read_bytes()
        except OSError:
            continue
        for tid, (name, frame) in _dumped_threads(pyspy, p).items():
            out[tid] = (f"intake: {name}" if intake else name, frame)
    return out


def _dumped_threads(pyspy: str, pid: int) -> dict[int, tuple[str, str]]:
    text = subprocess.run([pyspy, "dump", "--pid", str(pid)], capture_output=True, text=True).stdout
    out: dict[int, tuple[str, str]] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r'^Thread (\d+) \(([^)]*)\): "(.*)"', line)
        if m:
            current = int(m[1])
            out[current] = (m[3], "")
        elif current is not None and line.startswith("    ") and not out[current][1] \
                and not re.search(r"\((threading|queue|selectors|socket)\.py:", line):
            out[current] = (out[current][0], line.strip())  # the first frame not a standard wait
    return out


def count_results(folder: Path) -> int:
    return sum(1 for e in os.scandir(folder) if e.name.endswith(".result.json"))


# -- the simulator, in its own process ---------------------------------------------

# `python -m gateway simulator` as shipped.  It sets TCP_NODELAY on the connections it
# answers: without it each answer's body waited for the client's delayed ACK (~40 ms on
# loopback), which capped any client at ~25 requests/s per connection and made the
# simulator, not the gateway, the thing measured.
class SimulatorProcess:
    def __init__(self, root: Path, delay: float) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = self.base + "/v1"
        self.log = open(root / "simulator.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "simulator", "--host", "127.0.0.1",
                                      "--port", str(self.port), "--delay", str(delay)],
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.http = httpx.Client(base_url=self.base, timeout=30)
        try:
            wait(self._up, 20, "the simulator")
        except BaseException:  # not left running behind a benchmark that gives up
            self.stop()
            raise
        self.next_id = 1000  # FIRST_JOB_ID

    def _up(self) -> bool:
        try:
            return self.http.get("/_simulator/faults").status_code == 200
        except httpx.HTTPError:
            return False

    def learn_next_id(self) -> int:
        jobs = self.http.get("/_simulator/jobs").json()
        if jobs:
            self.next_id = max(self.next_id, max(int(j["jobId"]) for j in jobs) + 1)
        return self.next_id

    def has_job(self, job_id: int) -> bool:
        return self.http.get(f"/_simulator/jobs/{job_id}").status_code == 200

    def accepted_at(self, job_id: int) -> float | None:
        """When the simulator finished answering the fax-send that made `job_id`."""
        for r in self.http.get("/_simulator/requests", params={"endpoint": "fax-send"}).json():
            if r.get("job_id") == job_id and r.get("finished"):
                return float(r["finished"])
        return None

    def requests(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        params = {"endpoint": endpoint} if endpoint else {}
        return self.http.get("/_simulator/requests", params=params).json()

    def fault(self, spec: dict[str, Any]) -> None:
        r = self.http.post("/_simulator/faults", json=spec)
        r.raise_for_status()

    def stop(self) -> None:
        self.http.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# -- gateway configurations and daemons -----------------------------------------------

def write_config(root: Path, sim: SimulatorProcess, *, outboxes: int = 1, max_in_flight: int = 4,
                 poll: str = "0.1s", settle: str = "0.05s") -> Path:
    boxes = []
    for i in range(outboxes):
        base = root / f"box{i:02d}"
        for d in ("outbox", "sent", "failed"):
            (base / d).mkdir(parents=True, exist_ok=True)
        boxes.append({"name": f"box{i:02d}", "path": str(base / "outbox"), "sent": str(base / "sent"),
                      "failed": str(base / "failed"), "number": NUMBER})
    cfg = root / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "api": {"base_url": sim.url, "key": "simulator", "max_in_flight": max_in_flight,
                "requests_per_minute": RPM},
        "database": str(root / "jobs.db"), "http": {"listen": f"127.0.0.1:{free_port()}"},
        "poll": {"interval": poll},
        "defaults": {"settle": settle, "rescan": "60s"},
        "outboxes": boxes,
    }))
    cfg.chmod(0o600)  # it holds the (simulator's) key inline
    return cfg


class Daemon:
    def __init__(self, root: Path, cfg: Path, prefix: Sequence[str] = (), *, code: Path = ROOT,
                 env: dict[str, str] | None = None, log: str = "daemon.log") -> None:
        """`code`: the source tree whose gateway runs (ab.py runs another revision's), for
        the daemon and, through PYTHONPATH, for its document reader; `env`: variables added
        to its environment."""
        self.root = root
        self.listen = yaml.safe_load(cfg.read_text())["http"]["listen"]
        self.log_path = root / log
        self.log = open(self.log_path, "wb")
        added = {**(env or {}), **({"PYTHONPATH": str(code)} if code != ROOT else {})}
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "gateway", "run", "-c", str(cfg)],
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=code,
                                     env={**os.environ, **added} if added else None)
        self.pid = self.proc.pid
        try:
            wait(self._healthy, 30, "the daemon to answer /healthz", every=0.1)
        except BaseException:  # not left running behind a benchmark that gives up
            self.proc.kill()
            self.proc.wait()
            self.log.close()
            raise
        if prefix:  # a tracer started it: the daemon is the tracer's child
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            self.pid = int(children.split()[0])

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise SystemExit("the daemon exited:\n" + self.log_path.read_text()[-3000:])
        try:
            return httpx.get(f"http://{self.listen}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def api_requests(self, endpoint: str) -> float:
        """Requests to `endpoint` the daemon has finished (its fax_gateway_api_requests_total,
        every outcome): the simulator keeps only its last 1,000 requests, fewer than a
        burst makes."""
        text = httpx.get(f"http://{self.listen}/metrics", timeout=5).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("fax_gateway_api_requests_total{") and f'endpoint="{endpoint}"' in line)

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def drop(outbox: Path, n: int, pdf: bytes, prefix: str) -> float:
    """Write n documents into the outbox; returns when the first was started (wall clock)."""
    t0 = time.time()
    for i in range(n):
        (outbox / f"{prefix}{i:05d}.pdf").write_bytes(pdf)
    return t0


def burst(sim: SimulatorProcess, box: Path, n: int, pdf: bytes, prefix: str,
          filed_before: int, daemon: Daemon | None = None) -> dict[str, Any]:
    """Drop n documents and wait for the n-th fax-send accepted and the n-th result filed.
    With the daemon: "statuses", its fax-status requests finished by the time the n-th
    fax-send was seen accepted (within 10 ms of it, plus one /metrics request)."""
    last_id = sim.learn_next_id() + n - 1
    polls0 = daemon.api_requests("fax-status") if daemon else 0.0
    t0 = drop(box / "outbox", n, pdf, prefix)
    t_written = time.time()
    wait(lambda: sim.has_job(last_id), 600, f"fax-send #{n} to be accepted", every=0.01)
    seen = time.time()
    statuses = round(daemon.api_requests("fax-status") - polls0) if daemon else None
    t_accepted = sim.accepted_at(last_id) or seen
    wait(lambda: count_results(box / "sent") >= filed_before + n, 600, f"{n} result files in sent/",
         every=0.02)
    t_filed = time.time()
    sim.next_id = last_id + 1
    return {"written": t_written - t0, "accepted": t_accepted - t0, "filed": t_filed - t0, "t0": t0,
            "statuses": statuses}


# -- phase 1: bare clients --------------------------------------------------------------

def fax_send_body(i: int, pdf: bytes) -> bytes:
    """As gateway/ifax.py's send_request builds it for a one-page PDF with default options."""
    body = {"faxNumber": NUMBER, "faxData": [{"fileName": f"bare{i:05d}.pdf",
                                              "fileData": base64.b64encode(pdf).decode("ascii")}]}
    return json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")


HEADERS = {"accessToken": "simulator", "Content-Type": "application/json", "Accept": "application/json",
           "User-Agent": "fax-gateway"}


def _threads(n_docs: int, concurrency: int, one: Any, setup: Any) -> float:
    """Run `one(state, i)` for i in range(n_docs) from `concurrency` threads; seconds taken."""
    limiter = RateLimiter(RPM)
    lock = threading.Lock()
    counter = iter(range(n_docs))
    errors: list[BaseException] = []

    def worker() -> None:
        state = setup()
        try:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                limiter.acquire()
                one(state, i)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            if hasattr(state, "close"):
                state.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"bare client failed: {errors[0]!r}")
    return took


def bare_httpx(sim: SimulatorProcess, n: int, pdf: bytes, concurrency: int = 4) -> float:
    client = httpx.Client(timeout=httpx.Timeout(30, connect=5), headers=HEADERS,
                          limits=httpx.Limits(max_connections=concurrency,
                                              max_keepalive_connections=concurrency))
    url = sim.url + "/customer/fax-send"

    def one(_: Any, i: int) -> None:
        r = client.post(url, content=fax_send_body(i, pdf))
        if r.status_code != 200 or r.json().get("status") != 1:
            raise RuntimeError(f"fax-send answered {r.status_code}: {r.text[:200]}")

    try:
        return _threads(n, concurrency, one, lambda: None)
    finally:
        client.close()


def bare_http_client(sim: SimulatorProcess, n: int, pdf: bytes, concurrency: int = 4) -> float:
    def one(conn: http.client.HTTPConnection, i: int) -> None:
        body = fax_send_body(i, pdf)
        conn.request("POST", "/v1/customer/fax-send", body=body, headers=HEADERS)
        r = conn.getresponse()
        data = r.read()
        if r.status != 200 or json.loads(data).get("status") != 1:
            raise RuntimeError(f"fax-send answered {r.status}: {data[:200]!r}")

    return _threads(n, concurrency, one,
                    lambda: http.client.HTTPConnection("127.0.0.1", sim.port, timeout=30))


# -- tracers: strace and py-spy ------------------------------------------------------------

def strace_prefix(out: Path) -> list[str]:
    """The daemon runs under strace from its start: with --seccomp-bpf only the traced
    calls stop it (that needs a tracee strace starts itself, not one attached with -p)."""
    return ["strace", "-f", "--seccomp-bpf", "-c", "-e", "trace=fsync,fdatasync", "-o", str(out)]


class PerfFsyncs:
    """fsync and fdatasync calls of a running daemon, counted in the kernel (perf's
    syscall tracepoints): nothing stops the daemon, so it runs the pipeline it runs
    untraced.  Threads that exist when it attaches are counted (after round 1: all)."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        events = "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync"
        self.proc = subprocess.Popen(["perf", "stat", "-x", ",", "-o", str(out), "-e", events,
                                      "-p", ",".join(map(str, family(pid)))],  # its intake process too
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def stop(self) -> dict[str, int]:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        calls = {}
        for line in self.out.read_text().splitlines():
            parts = line.split(",")
            if len(parts) > 2 and parts[2].startswith("syscalls:sys_enter_") and parts[0].isdigit():
                calls[parts[2].removeprefix("syscalls:sys_enter_")] = int(parts[0])
        return calls

    @staticmethod
    def works() -> bool:
        try:
            return subprocess.run(["perf", "stat", "-e", "syscalls:sys_enter_fsync", "true"],
                                  capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False


def strace_counts(out: Path) -> dict[str, int]:
    calls = {}
    for line in out.read_text().splitlines():
        parts = line.split()
        if parts and parts[-1] in ("fsync", "fdatasync"):
            # % time, seconds, usecs/call, calls, [errors,] syscall
            calls[parts[-1]] = int(parts[3])
    return calls


class PySpy:
    RATE = 100

    def __init__(self, exe: str, pid: int, out: Path, *, gil: bool) -> None:
        self.out = out
        self.proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--format", "raw",
                                      "--output", str(out), "--rate", str(self.RATE), "--threads",
                                      "--subprocesses",  # the intake process (gateway/intakeproc.py)
                                      "--function", *(["--gil"] if gil else [])],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        self.started = time.monotonic()

    def stop(self) -> list[tuple[list[str], int]]:
        self.seconds = time.monotonic() - self.started + 1.0  # it sampled during the second slept above
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(60)
        stacks = []
        for line in self.out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stacks.append((stack.split(";"), int(count)))
        return stacks


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _frame(text: str) -> str:
    m = _FRAME.match(text)
    return f"{m['func']} ({m['file']})" if m else text


def profile_summary(stacks: list[tuple[list[str], int]], top: int = 15) -> dict[str, Any]:
    total = sum(c for _, c in stacks) or 1
    own: collections.Counter[str] = collections.Counter()
    cumulative: collections.Counter[str] = collections.Counter()
    modules: collections.Counter[str] = collections.Counter()
    ours: collections.Counter[str] = collections.Counter()  # the innermost frame in gateway/
    threads: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        prefix = ""
        if frames and frames[0].startswith("process "):  # --subprocesses: which process
            if "gateway.docreader" in frames[0]:
                prefix = "reader: "
            elif "gateway.intakeproc" in frames[0]:
                prefix = "intake: "
            frames = frames[1:]
        if frames and frames[0].startswith("thread ("):
            name = frames[0].split(": ", 1)[1] if ": " in frames[0] else frames[0]
            threads[prefix + re.sub(r"[_-]?\d+$", "", name)] += count
            frames = frames[1:]
        if not frames:
            continue
        names = [_frame(f) for f in frames]
        own[names[-1]] += count
        for name in set(names):
            cumulative[name] += count
        leaf_file = _FRAME.match(frames[-1])
        modules[leaf_file["file"] if leaf_file else "?"] += count
        ours[next((n for n in reversed(names) if "(gateway/" in n), "(outside gateway/)")] += count
    return {"samples": total, "own": own.most_common(top), "total": cumulative.most_common(top),
            "modules": modules.most_common(top), "ours": ours.most_common(top),
            "threads": threads.most_common()}


# -- phase 3: SQL statements, in this process ------------------------------------------------

_TABLE_AFTER = re.compile(r"\b(?:FROM|INTO|UPDATE|TABLE|JOIN)\s+\"?([A-Za-z_][A-Za-z0-9_]*)", re.I)
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


def statement_kind(sql: str) -> str:
    text = " ".join(sql.split())
    if text.startswith("--"):
        return "-- " + " ".join(text.split()[1:3])  # a trigger's statement
    words = text.split()
    first = words[0].upper() if words else "?"
    if first in ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "END"):
        return " ".join(w.upper() for w in words[:2]) if first == "BEGIN" else first
    if first == "PRAGMA":
        return "PRAGMA " + re.split(r"[(=\s]", words[1])[0] if len(words) > 1 else "PRAGMA"
    if first == "WITH":
        first = "WITH…" + next((w.upper() for w in words if w.upper() in ("SELECT",) + _WRITES), "")
    m = _TABLE_AFTER.search(text)
    return f"{first} {m.group(1)}" if m else first


def statement_shape(sql: str) -> str:
    """The statement with its values replaced by ?, shortened."""
    text = " ".join(sql.split())
    text = re.sub(r"\bX'[0-9A-Fa-f]*'", "?", text)
    text = re.sub(r"'(?:[^']|'')*'", "?", text)
    text = re.sub(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?\b", "?", text)
    text = re.sub(r"\?(?:\s*,\s*\?)+", "?, …", text)
    return text if len(text) <= 150 else text[:147] + "…"


# Loaded by every Python process of the daemon (PYTHONPATH): each SQLite connection traces
# its statements, one JSON string a line, into a file per process.
_TRACE = """
import json, os, sqlite3
_connect = sqlite3.connect
def _traced(*args, **kwargs):
    conn = _connect(*args, **kwargs)
    path = os.path.join(os.environ["FGW_TRACE_DIR"], "statements-%d.jsonl" % os.getpid())
    out = open(path, "a", buffering=1)
    conn.set_trace_callback(lambda sql: out.write(json.dumps(sql) + "\\n"))
    return conn
sqlite3.connect = _traced
"""


def sql_phase(root: Path, sim: SimulatorProcess, n: int, pdf: bytes, poll: str) -> dict[str, Any]:
    """Statements of a real `fax-gateway run`, its intake process's too (each process
    traces its own connection, `_TRACE`), over one burst."""
    cfg = write_config(root, sim, poll=poll)
    traces = root / "trace"
    traces.mkdir()
    (traces / "sitecustomize.py").write_text(_TRACE)
    daemon = Daemon(root, cfg, env={"PYTHONPATH": str(traces), "FGW_TRACE_DIR": str(traces)})
    try:
        time.sleep(1.0)  # start-up work done
        before = {f: f.stat().st_size for f in traces.glob("statements-*.jsonl")}
        burst(sim, root / "box00", n, pdf, "sql", 0)
        time.sleep(0.3)  # the last filing transaction ends
    finally:
        daemon.stop()
    per_process, settings = [], []
    for f in sorted(traces.glob("statements-*.jsonl")):
        whole = f.read_bytes()
        settings += [json.loads(line) for line in whole.decode().splitlines() if "synchronous" in line]
        per_process.append([json.loads(line) for line in whole[before.get(f, 0):].decode().splitlines()
                            if line])
    traced: list[str] = []
    trigger_runs = commits = 0
    for raw in per_process:
        mine, runs = _issued(raw)
        traced += mine
        trigger_runs += runs
        commits += _write_commits(mine)
    kinds = collections.Counter(statement_kind(s) for s in traced)
    shapes = collections.Counter(statement_shape(s) for s in traced)
    synchronous = settings[0].split("=", 1)[1].strip().upper() if settings else "?"
    return {"n": n, "statements": len(traced), "kinds": kinds.most_common(), "write_commits": commits,
            "shapes": shapes.most_common(15), "trigger_runs": trigger_runs,
            "synchronous": {"FULL": 2, "NORMAL": 1, "OFF": 0}.get(synchronous, synchronous),
            "processes": len([p for p in per_process if p])}


def _issued(raw: list[str]) -> tuple[list[str], int]:
    """One process's statements, and how many trigger runs were left out: Python's trace
    callback reports a statement again each time it starts a trigger's subprogram (the
    job_counts triggers on jobs), as the same expanded text right after it."""
    traced: list[str] = []
    trigger_runs = 0
    for s in raw:
        if traced and s == traced[-1] and s.split(None, 1)[0].upper() in _WRITES:
            trigger_runs += 1
        else:
            traced.append(s)
    return traced, trigger_runs


def _write_commits(traced: list[str]) -> int:
    """Write transactions of one process: each is one fsynced WAL commit with synchronous=FULL."""
    commits = 0
    in_tx = wrote = False
    for s in traced:
        first = s.lstrip().split(None, 1)[0].upper() if s.strip() else ""
        if first == "BEGIN":
            in_tx, wrote = True, False
        elif first in ("COMMIT", "END"):
            commits += wrote
            in_tx = False
        elif first == "ROLLBACK":
            in_tx = False
        elif first in _WRITES:
            if in_tx:
                wrote = True
            else:
                commits += 1  # autocommit
    return commits


# -- phase 5: idle -----------------------------------------------------------------------------

def idle_phase(root: Path, sim: SimulatorProcess, outboxes: int, seconds: float,
               pyspy: str | None) -> dict[str, Any]:
    cfg = write_config(root, sim, outboxes=outboxes, poll="5s", settle="2s")
    daemon = Daemon(root, cfg)
    try:
        time.sleep(5.0)
        vol0, nonvol0, run0 = thread_totals(daemon.pid)
        per0 = task_switches(daemon.pid)
        ticks0 = cpu_ticks(daemon.pid)
        time.sleep(seconds)
        vol1, nonvol1, run1 = thread_totals(daemon.pid)
        per1 = task_switches(daemon.pid)
        ticks1 = cpu_ticks(daemon.pid)
        n_threads = len(per1)
        names = thread_names(pyspy, daemon.pid)  # after the measurement: py-spy stops the threads
    finally:
        daemon.stop()
    # Who wakes: threads grouped by name (numbers dropped) and the frame they wait in.
    by_name: collections.Counter[str] = collections.Counter()
    for tid, n in per1.items():
        name, frame = names.get(tid, ("?", ""))
        group = re.sub(r"[_-]?\d+$", "", name)
        by_name[f"{group} [{frame}]" if frame else group] += n - per0.get(tid, 0)
    return {"outboxes": outboxes, "seconds": seconds, "wakeups": (vol1 - vol0) / seconds,
            "involuntary": (nonvol1 - nonvol0) / seconds,
            "cpu_pct_ticks": 100.0 * (ticks1 - ticks0) / CLK_TCK / seconds,
            "cpu_pct_sched": 100.0 * (run1 - run0) / 1e9 / seconds, "threads": n_threads,
            "by_thread": [(k, v / seconds) for k, v in by_name.most_common() if v > 0]}


# -- the machine ------------------------------------------------------------------------------

def machine() -> dict[str, str]:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    dev = subprocess.run(["df", "--output=source,fstype", "/tmp"], capture_output=True, text=True).stdout
    source, fstype = (dev.splitlines()[-1].split() + ["?", "?"])[:2]
    kind = "?"
    block = Path(source).name
    for candidate in (block, re.sub(r"p?\d+$", "", block)):
        rot = Path(f"/sys/block/{candidate}/queue/rotational")
        if rot.exists():
            kind = "rotational" if rot.read_text().strip() == "1" else "non-rotational"
            if candidate.startswith("vd"):
                kind += " virtio disk"
            break
    return {"nproc": str(os.cpu_count()), "cpu": model, "kernel": platform.release(),
            "python": platform.python_version(), "tmp": f"{source} ({fstype}, {kind})"}


def folder_fsyncs() -> str:
    """Read from the code, since there is no setting: which functions of gateway/spool.py
    call os.fsync (claim's and filing's are on folder descriptors) and who calls fsync_dir."""
    import ast
    tree = ast.parse((ROOT / "gateway" / "spool.py").read_text())
    where: collections.Counter[str] = collections.Counter()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef):
            for node in ast.walk(fn):
                if isinstance(node, ast.Call) and ast.unparse(node.func) == "os.fsync":
                    where[fn.name] += 1
    users = sorted(p.name for p in (ROOT / "gateway").glob("*.py")
                   if p.name != "spool.py" and "fsync_dir(" in p.read_text())
    calls = ", ".join(f"{name} x{n}" if n > 1 else name for name, n in where.items())
    return (f"on, always, no setting turns them off (os.fsync in gateway/spool.py: {calls}; "
            f"fsync_dir also called from {', '.join(users) or 'nowhere'})")


# -- main ---------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=1000, help="documents per burst round (default 1000)")
    ap.add_argument("--rounds", type=int, default=7, help="burst rounds, at least 3 (default 7)")
    ap.add_argument("--fsync-docs", type=int, default=None,
                    help="documents of the fsync phase under strace (default: --docs)")
    ap.add_argument("--sql-docs", type=int, default=200, help="documents of the SQL phase (default 200)")
    ap.add_argument("--latency-docs", type=int, default=400, help="documents of the latency phase (400)")
    ap.add_argument("--latency-poll", default="5s", help="poll interval of the latency phase (5s)")
    ap.add_argument("--burst-poll", default="5s",
                    help="poll interval of the burst rounds (default 5s: longer than the accept window)")
    ap.add_argument("--polled-rounds", type=int, default=2,
                    help="bursts with most faxes also polled inside them (poll interval 0.1 s; default 2)")
    ap.add_argument("--outboxes", type=int, default=50, help="outboxes watched in the idle phase (50)")
    ap.add_argument("--idle-seconds", type=float, default=60.0, help="idle measurement (default 60 s)")
    ap.add_argument("--no-idle", action="store_true", help="skip the idle phase")
    ap.add_argument("--no-profile", action="store_true", help="no py-spy in rounds 3 and 4")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, traces)")
    args = ap.parse_args()
    if args.rounds < 3:
        ap.error("--rounds must be at least 3 (rounds 3-4 are profiled)")
    started = time.monotonic()
    pdf = make_pdf()
    tmp = Path(tempfile.mkdtemp(prefix="lean-"))
    strace_ok = shutil.which("strace") is not None
    perf_ok = shutil.which("perf") is not None and PerfFsyncs.works()
    perf_fsyncs: dict[str, int] = {}
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    pyspy_found = Path(pyspy).exists()
    pyspy_ok = not args.no_profile and pyspy_found
    m = machine()
    print(f"machine: {m['nproc']} cores, {m['cpu']}, kernel {m['kernel']}, Python {m['python']}, "
          f"/tmp on {m['tmp']}")
    sim = SimulatorProcess(tmp, delay=0.05)
    print("simulator: `python -m gateway simulator` in a process of its own, as shipped (TCP_NODELAY)")
    try:
        # -- 1. bare clients
        n = args.docs
        m0 = machine_ticks()
        c0 = own_cpu()
        t_httpx = min(bare_httpx(sim, n, pdf) for _ in range(2))  # the better of two
        c1 = own_cpu()
        t_raw = min(bare_http_client(sim, n, pdf) for _ in range(2))
        c2 = own_cpu()
        busy, steal = machine_share(m0, machine_ticks())
        print(f"\n[bare] {n} fax-send, concurrency 4 (the better of 2 runs each): httpx {n / t_httpx:.0f}/s, "
              f"http.client {n / t_raw:.0f}/s; machine busy {busy:.0f}%, steal {steal:.1f}%")
        # The client's own CPU per request (this process does nothing else meanwhile): the
        # floor the HTTP client sets under the gateway's two requests per document.
        print(f"[bare] client CPU per request: httpx {1000 * (c1 - c0) / (2 * n):.2f} ms, "
              f"http.client {1000 * (c2 - c1) / (2 * n):.2f} ms")

        # -- 2. burst rounds
        broot = tmp / "burst"
        broot.mkdir()
        daemon = Daemon(broot, write_config(broot, sim, poll=args.burst_poll))
        box = broot / "box00"
        rounds: list[dict[str, Any]] = []
        profiles: dict[int, list[tuple[list[str], int]]] = {}
        profiled_seconds: dict[int, float] = {}
        # A bare httpx run beside each round, just before and just after it: the machine's
        # speed drifts by a third within minutes, so each round is compared with the bare
        # client of the same minutes (the faster of the two runs beside it).
        beside: list[float] = []
        try:
            time.sleep(1.0)
            beside.append(bare_httpx(sim, n, pdf))
            for r in range(1, args.rounds + 1):
                tracer = None
                (user0, sys0), machine0 = cpu_split(daemon.pid), machine_ticks()
                each0 = each_cpu_ticks()
                switches0 = thread_totals(daemon.pid)[0]
                tasks0, sim0 = task_cpu(daemon.pid), cpu_ticks(sim.proc.pid)
                if r in (3, 4) and pyspy_ok:
                    tracer = PySpy(pyspy, daemon.pid, tmp / f"pyspy{r}.txt", gil=r == 3)
                counter = PerfFsyncs(daemon.pid, tmp / "perf.txt") if r == 2 and perf_ok else None
                times = burst(sim, box, n, pdf, f"r{r}-", (r - 1) * n, daemon)
                if r == args.rounds:  # before the bare run below fills the simulator's log
                    sends = sim.requests("fax-send")
                    extra_keys = sorted(set(sends[-1]["body"]) - {"faxNumber", "faxData"}) if sends else []
                if counter is not None:
                    perf_fsyncs = counter.stop()
                if tracer is not None:
                    profiles[r] = tracer.stop()
                    profiled_seconds[r] = tracer.seconds
                (user1, sys1), machine1 = cpu_split(daemon.pid), machine_ticks()
                split = cpu_split_note(daemon.pid, each0, each_cpu_ticks())
                switches = (thread_totals(daemon.pid)[0] - switches0) / n
                tasks1, sim1 = task_cpu(daemon.pid), cpu_ticks(sim.proc.pid)
                time.sleep(0.5)
                rss = status_kb(daemon.pid, "VmRSS") / 1024
                beside.append(bare_httpx(sim, n, pdf))
                note = {3: " (under py-spy --gil)", 4: " (under py-spy)"}.get(r, "") if tracer else ""
                busy, steal = machine_share(machine0, machine1)
                user = 1000.0 * (user1 - user0) / CLK_TCK / n
                system = 1000.0 * (sys1 - sys0) / CLK_TCK / n
                ratio = n / times["accepted"] / (n / min(beside[-2:]))
                rounds.append({**times, "ratio": ratio, "cpu_ms": user + system, "user_ms": user,
                               "sys_ms": system,
                               "switches": switches, "rss": rss, "note": note, "busy": busy, "steal": steal,
                               "round": r,
                               "sim_ms": 1000.0 * (sim1 - sim0) / CLK_TCK / n,
                               "tasks": {t: v - tasks0.get(t, 0) for t, v in tasks1.items()}})
                print(f"[burst {r}] {n / times['accepted']:.0f} docs/s to accepted (bare httpx beside it "
                      f"{n / beside[-2]:.0f}/s and {n / beside[-1]:.0f}/s: "
                      f"ratio {ratio:.2f}), "
                      f"{n / times['filed']:.0f} docs/s to filed (written in {times['written']:.2f}s), "
                      f"{times['statuses']} fax-status requests before the last fax-send, "
                      f"CPU {user + system:.1f} ms/doc ({user:.1f} user + {system:.1f} system), "
                      f"{switches:.0f} voluntary context switches/doc, RSS {rss:.1f} MB; "
                      f"machine busy {busy:.0f}% "
                      f"of {os.cpu_count()} cores{split}, steal {steal:.1f}%{note}")
            hwm = status_kb(daemon.pid, "VmHWM") / 1024
            names = thread_names(pyspy if pyspy_found else None, daemon.pid)  # also with --no-profile
            db = broot / "jobs.db"
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
                sync_separate = c.execute("PRAGMA synchronous").fetchone()[0]
                journal = c.execute("PRAGMA journal_mode").fetchone()[0]
        finally:
            daemon.stop()

        # -- 2a. the same bursts with most faxes polled inside them: at poll.interval 0.1 s most
        # faxes are also asked about (fax-status) before the last fax-send is accepted, so the
        # gateway makes up to twice the requests the bare client makes in the same time, all
        # to the one simulator on the same two cores.
        polled: list[dict[str, Any]] = []
        pbeside: list[float] = []
        if args.polled_rounds:
            proot = tmp / "polled"
            proot.mkdir()
            pdaemon = Daemon(proot, write_config(proot, sim, poll="0.1s"))
            try:
                time.sleep(1.0)
                pbeside = [bare_httpx(sim, n, pdf)]  # paired as the rounds above are
                for r in range(1, args.polled_rounds + 1):
                    cpu0 = sum(cpu_split(pdaemon.pid))
                    t = burst(sim, proot / "box00", n, pdf, f"p{r}-", (r - 1) * n, pdaemon)
                    cpu_ms = 1000.0 * (sum(cpu_split(pdaemon.pid)) - cpu0) / CLK_TCK / n
                    time.sleep(0.5)
                    pbeside.append(bare_httpx(sim, n, pdf))
                    ratio = n / t["accepted"] / (n / min(pbeside[-2:]))
                    polled.append({**t, "cpu_ms": cpu_ms, "ratio": ratio})
                    print(f"[polled {r}] poll interval 0.1 s: {n / t['accepted']:.0f} docs/s to accepted "
                          f"(ratio {ratio:.2f}), {n / t['filed']:.0f} docs/s to filed, "
                          f"{t['statuses']} fax-status requests before the last fax-send, "
                          f"CPU {cpu_ms:.1f} ms/doc")
            finally:
                pdaemon.stop()

        # -- the bare clients again: the machine's speed drifts within minutes (another
        # tenant, the host), so the ratio is taken against the faster of the bare runs before
        # and after the bursts: it may come out lower than the hour deserves, never higher.
        m0 = machine_ticks()
        t_httpx_after = min(bare_httpx(sim, n, pdf) for _ in range(2))
        busy, steal = machine_share(m0, machine_ticks())
        print(f"[bare, after the bursts] httpx {n / t_httpx_after:.0f}/s; machine busy {busy:.0f}%, "
              f"steal {steal:.1f}%")
        t_httpx = min(t_httpx, t_httpx_after, *beside, *pbeside)

        # -- 2b. fsyncs: a fresh daemon under strace from its start to its exit
        fsyncs: dict[str, int] = {}
        n_traced = args.fsync_docs or n
        if strace_ok:
            froot = tmp / "fsync"
            froot.mkdir()
            out = froot / "strace.txt"
            traced = Daemon(froot, write_config(froot, sim, poll=args.burst_poll), prefix=strace_prefix(out))
            try:
                time.sleep(1.0)
                times = burst(sim, froot / "box00", n_traced, pdf, "f-", 0)
            finally:
                traced.stop()
                traced.proc.wait(30)
            fsyncs = strace_counts(out)
            print(f"[fsync] {n_traced} docs under strace --seccomp-bpf: {n_traced / times['accepted']:.0f} "
                  f"docs/s to accepted; {fsyncs} from start to exit")

        # -- 3. SQL statements (in-process)
        sroot = tmp / "sql"
        sroot.mkdir()
        sql = sql_phase(sroot, sim, args.sql_docs, pdf, args.burst_poll)

        # -- 4. latency-bound
        lroot = tmp / "latency"
        lroot.mkdir()
        sim.fault({"mode": "slow", "seconds": 0.1, "endpoints": ["*"]})
        ldaemon = Daemon(lroot, write_config(lroot, sim, max_in_flight=8, poll=args.latency_poll))
        try:
            time.sleep(1.0)
            ln = args.latency_docs
            m0 = machine_ticks()
            lt = burst(sim, lroot / "box00", ln, pdf, "lat", 0, ldaemon)
            lbusy, lsteal = machine_share(m0, machine_ticks())
            polls = lt["statuses"]
        finally:
            ldaemon.stop()
            sim.fault({"mode": None})
        lrate = ln / lt["accepted"]

        # -- 5. idle
        idle = None
        if not args.no_idle:
            iroot = tmp / "idle"
            iroot.mkdir()
            idle = idle_phase(iroot, sim, args.outboxes, args.idle_seconds, pyspy if pyspy_ok else None)
    finally:
        sim.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")

    # -- report
    clean = [r for r in rounds if not r["note"]]
    best = min(clean, key=lambda r: r["accepted"])  # a shared machine only ever slows a round down
    g_acc, g_filed = n / best["accepted"], n / best["filed"]
    b_httpx, b_raw = n / t_httpx, n / t_raw
    cpu_clean = sum(r["cpu_ms"] for r in clean) / len(clean)
    paired = statistics.median(r["ratio"] for r in clean)
    per_thread = by_thread_name(best["tasks"], names, n)
    # The rest of the process's CPU (cpu_split counts its children) is the document reader's,
    # and that of any thread that ended during the round (none in a burst).
    per_thread["document reader"] = best["cpu_ms"] - sum(per_thread.values())
    # At half the bare rate the simulator takes its share of the machine's cores; what is
    # left is the gateway's, if its work spread over every core, and one core's worth for
    # what runs under the daemon's interpreter lock.
    half = 0.5 * n / t_httpx
    budget_all = (os.cpu_count() or 1) * 1000.0 / half - best["sim_ms"]
    budget_gil = 1000.0 / half
    n_fsync = sum(fsyncs.values())
    rss = [r["rss"] for r in rounds]
    flat = len(rss) >= 5 and rss[4] <= rss[1] + 5
    sync_names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    print("\n== Lean and fast (issue 12): where it stands ==")
    print(f"settings: PRAGMA synchronous = {sync_names.get(sql['synchronous'], sql['synchronous'])} on the "
          f"daemon's own connection (a separate connection reads {sync_names.get(sync_separate)}: the "
          f"pragma is per connection); journal_mode = {journal}")
    print(f"          folder fsyncs: {folder_fsyncs()}")
    print(f"fax-send body keys besides faxNumber/faxData sent by the gateway: {extra_keys or 'none'}")
    print(f"burst rounds: poll.interval {args.burst_poll}, so "
          f"{best['statuses'] / n:.2f} fax-status requests per document before the last fax-send "
          f"(the bare clients make none)")
    rows = [
        (f"burst: gateway, docs/s to accepted (best clean round: {best['round']})", f"{g_acc:.0f}", ""),
        ("burst: gateway, docs/s to filed (same round; polls start poll.interval after acceptance)",
         f"{g_filed:.0f}", ""),
        ("burst: bare httpx (1 client, 4 threads; the fastest run of all)", f"{b_httpx:.0f}", ""),
        ("burst: bare http.client (4 connections)", f"{b_raw:.0f}", ""),
        ("burst ratio to accepted, each round ÷ the faster bare httpx run beside it (median of clean)",
         " ".join(f"{r['ratio']:.2f}" for r in rounds)
         + f" ({paired:.2f})", TARGETS["burst ratio"]),
        ("burst ratio gateway ÷ bare httpx (accepted; best round ÷ fastest bare run of all)",
         f"{g_acc / b_httpx:.2f}", ""),
        ("burst ratio gateway ÷ bare httpx (filed)", f"{g_filed / b_httpx:.2f}", ""),
    ]
    if polled:
        pbest = min(polled, key=lambda r: r["accepted"])
        rows += [
            (f"polled bursts (poll interval 0.1 s, best of {len(polled)}): docs/s to accepted; to filed",
             f"{n / pbest['accepted']:.0f}; {n / pbest['filed']:.0f}", ""),
            ("  fax-status requests per document before the last fax-send (that round)",
             f"{pbest['statuses'] / n:.2f}", ""),
            ("  ratio to accepted, each round ÷ the faster bare httpx run beside it (median)",
             " ".join(f"{r['ratio']:.2f}" for r in polled)
             + f" ({statistics.median(r['ratio'] for r in polled):.2f})", ""),
            ("  ratio best round ÷ fastest bare run of all (accepted; filed)",
             f"{n / pbest['accepted'] / b_httpx:.2f}; {n / pbest['filed'] / b_httpx:.2f}", ""),
            ("  CPU ms per document (that round)", f"{pbest['cpu_ms']:.1f}", ""),
        ]
    rows += [
        (f"latency-bound: {ln} docs, 100 ms answers, 8 in flight",
         f"{lrate:.1f}/s = {lrate / 80:.2f} of 80/s", TARGETS["latency-bound"]),
        ("fsyncs per document (fsync+fdatasync, perf, round 2, untraced)",
         (f"{sum(perf_fsyncs.values()) / n:.2f} ({perf_fsyncs.get('fsync', 0) / n:.2f}+"
          f"{perf_fsyncs.get('fdatasync', 0) / n:.2f})") if perf_fsyncs else "(no perf)",
         TARGETS["fsyncs/doc"]),
        (f"fsyncs per document (fsync+fdatasync, strace, {n_traced} docs)",
         f"{n_fsync / n_traced:.2f}" + (f" ({fsyncs.get('fsync', 0) / n_traced:.2f}+"
                                        f"{fsyncs.get('fdatasync', 0) / n_traced:.2f})"
                                        if fsyncs else " (no strace)"), TARGETS["fsyncs/doc"]),
        ("SQL statements per document", f"{sql['statements'] / sql['n']:.1f}", TARGETS["statements/doc"]),
        ("SQL trigger runs per document (job_counts; not counted above)",
         f"{sql['trigger_runs'] / sql['n']:.1f}", ""),
        ("SQL write commits per document", f"{sql['write_commits'] / sql['n']:.1f}", ""),
        ("CPU ms per document (that round; mean of clean rounds)", f"{best['cpu_ms']:.1f}; {cpu_clean:.1f}",
         TARGETS["CPU ms/doc"]),
        ("  of which user; system (that round)", f"{best['user_ms']:.1f}; {best['sys_ms']:.1f}", ""),
        ("  by thread (that round; the reader: the rest, its child process)",
         ", ".join(f"{k} {v:.2f}" for k, v in sorted(per_thread.items(), key=lambda kv: -kv[1]) if v >= 0.01),
         ""),
        ("simulator CPU ms per document (that round; its 2 requests)", f"{best['sim_ms']:.2f}", ""),
        ("CPU budget per document for the ratio 0.5 here",
         f"{budget_all:.1f} ms in all; {budget_gil:.1f} ms in one interpreter lock", ""),
        ("voluntary context switches per document (that round)", f"{best['switches']:.0f}", ""),
        ("peak RSS (VmHWM)", f"{hwm:.1f} MB", ""),
        ("RSS after each round", " / ".join(f"{x:.1f}" for x in rss) + " MB",
         TARGETS["RSS flat"] + (" (needs 5 rounds)" if len(rss) < 5 else ": flat" if flat else ": NOT flat")),
    ]
    if idle:
        rows += [
            (f"idle, {idle['outboxes']} outboxes: wake-ups/s (voluntary ctx switches)",
             f"{idle['wakeups']:.1f}", TARGETS["idle wake-ups/s"]),
            ("idle CPU (schedstat; /proc/PID/stat ticks)",
             f"{idle['cpu_pct_sched']:.3f} %; {idle['cpu_pct_ticks']:.3f} %", TARGETS["idle CPU"]),
        ]
    width = max(len(r[0]) for r in rows)
    for label, value, target in rows:
        print(f"  {label:<{width}}  {value:<24} {('target ' + target) if target else ''}")
    if idle:
        print(f"  (idle daemon: {idle['threads']} threads; involuntary switches {idle['involuntary']:.1f}/s)")
        print("idle wake-ups/s by thread [where it waits]:")
        for name, rate in idle["by_thread"][:12]:
            print(f"  {rate:6.2f}  {name}")
    print(f"  latency phase: {polls} fax-status requests before the last fax-send was accepted (poll "
          f"interval {args.latency_poll}); all {ln} filed after {lt['filed']:.1f}s; machine busy "
          f"{lbusy:.0f}%, steal {lsteal:.1f}%")
    print("\nSQL statements per document, by kind:")
    for kind, count in sql["kinds"][:25]:
        print(f"  {count / sql['n']:6.2f}  {kind}")
    print("the most frequent statements (values as ?), per document:")
    for shape, count in sql["shapes"]:
        print(f"  {count / sql['n']:6.2f}  {shape}")
    for r, stacks in profiles.items():
        prof = profile_summary(stacks)
        what = "holding the GIL (--gil)" if r == 3 else "of threads py-spy sees as active"
        print(f"\npy-spy, round {r}: {prof['samples']} samples at {PySpy.RATE} Hz {what}:")
        if r == 3:
            held = 100 * prof["samples"] / (PySpy.RATE * profiled_seconds[r])
            print(f"  the GIL was held in {held:.0f}% of the {profiled_seconds[r]:.0f} s sampled (CPU spent "
                  "without it: SQLite, system calls, the kernel)")
        share = prof["samples"] / 100
        print("  by thread: " + ", ".join(f"{t} {c / share:.0f}%" for t, c in prof["threads"]))
        for title, key in (("own time", "own"), ("total time", "total"), ("own time by file", "modules"),
                           ("innermost gateway/ function (own time + the libraries it calls)", "ours")):
            print(f"  top by {title}:")
            for name, count in prof[key]:
                print(f"    {100 * count / prof['samples']:5.1f}%  {name}")
    print(f"\n(took {time.monotonic() - started:.0f}s)")


if __name__ == "__main__":
    main()
