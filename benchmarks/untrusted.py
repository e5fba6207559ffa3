"""What an untrusted outbox can cost the gateway (SPEC 4.5): prints figures, asserts nothing.

    python benchmarks/untrusted.py idle [N]    # CPU of a daemon while a writer holds N files open
    python benchmarks/untrusted.py burst [N]   # N files dropped at once: /healthz sampled throughout
    python benchmarks/untrusted.py rounds [N]  # five rounds of N documents: RSS after each, log bytes

Both run a real `fax-gateway run` process against the built-in simulator on loopback.
`idle` measures the daemon's CPU time (from /proc) over 20 s once the files are open,
next to the same daemon with no files.  `burst` drops N documents into a folder whose
name is not a valid number (each is claimed, judged, rejected and filed, so the
figures are the gateway's own pipeline, not the API's), samples /healthz every 0.25 s
until every one is filed, and reports any answer that was not 200.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from conftest import free_port, make_pdf  # noqa: E402

from gateway.simulator import Simulator  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def _daemon(root: Path, sim: Simulator) -> tuple[subprocess.Popen, str]:
    for d in ("outbox", "sent", "failed"):
        (root / d).mkdir(exist_ok=True)
    port = free_port()
    cfg = root / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "api": {"base_url": sim.url, "key": "simulator", "requests_per_minute": 10**6},
        "database": str(root / "jobs.db"), "http": {"listen": f"127.0.0.1:{port}"},
        "defaults": {"settle": "1s", "rescan": "60s"},
        "outboxes": [{"name": "main", "path": str(root / "outbox"), "sent": str(root / "sent"),
                      "failed": str(root / "failed")}],
    }))
    log = open(root / "daemon.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(cfg)], stdout=log,
                            stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("the daemon did not become healthy; see " + str(root / "daemon.log"))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def _measure_cpu(pid: int, seconds: float) -> float:
    start, t0 = _cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (_cpu_seconds(pid) - start) / (time.monotonic() - t0)


def idle(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1000), hard))
    sim = Simulator(delay=0.05).start()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        proc, _ = _daemon(root, sim)
        try:
            time.sleep(2)
            print(f"daemon with no files:            {_measure_cpu(proc.pid, 20) * 100:5.2f}% of a core")
            folder = root / "outbox" / "+15551234567"
            folder.mkdir()
            handles = []
            for i in range(n):
                f = open(folder / f"open{i:05d}.pdf", "wb")
                f.write(b"%PDF-1.4\n")  # a writer that paused: open, part written
                f.flush()
                handles.append(f)
            time.sleep(5)  # the events are drained and every deadline has passed
            cpu = _measure_cpu(proc.pid, 20)
            print(f"daemon while {n} files are held open: {cpu * 100:5.2f}% of a core")
            rss = int(Path(f"/proc/{proc.pid}/status").read_text().split("VmRSS:")[1].split()[0]) // 1024
            print(f"daemon RSS: {rss} MiB")
            for f in handles:
                f.close()
        finally:
            proc.terminate()
            proc.wait(20)
    sim.stop()


def burst(n: int) -> None:
    sim = Simulator(delay=0.05).start()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        proc, url = _daemon(root, sim)
        try:
            folder = root / "outbox" / "555-1234"  # not a valid number: each is rejected and filed
            folder.mkdir()
            pdf = make_pdf(1)
            t0 = time.monotonic()
            for i in range(n):
                (folder / f"b{i:05d}.pdf").write_bytes(pdf)
            written = time.monotonic() - t0
            statuses: list[int] = []
            slowest = 0.0
            failed = root / "failed" / "555-1234"
            while True:
                s0 = time.monotonic()
                try:
                    statuses.append(httpx.get(url + "/healthz", timeout=10).status_code)
                except httpx.HTTPError:
                    statuses.append(0)
                slowest = max(slowest, time.monotonic() - s0)
                done = len(list(failed.glob("*.result.json"))) if failed.is_dir() else 0
                if done >= n:
                    break
                time.sleep(0.25)
            total = time.monotonic() - t0
            bad = [s for s in statuses if s != 200]
            print(f"{n} files written in {written:.1f}s; all claimed, judged and filed after {total:.1f}s "
                  f"({n / total:.0f} files/s)")
            print(f"/healthz sampled {len(statuses)} times: {len(bad)} not 200; "
                  f"slowest answer {slowest:.2f}s")
            print(f"daemon CPU over the burst: {_cpu_seconds(proc.pid):.1f}s")
        finally:
            proc.terminate()
            proc.wait(30)
    sim.stop()


def _rss_mib(pid: int) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0]) // 1024


def rounds(n: int, count: int = 5) -> None:
    """Memory that stays and log volume: each round drops N documents and waits until all
    are filed; the private folder's events never reach the watcher, so neither grows."""
    sim = Simulator(delay=0.05).start()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        proc, _ = _daemon(root, sim)
        try:
            folder = root / "outbox" / "555-1234"
            folder.mkdir()
            pdf = make_pdf(1)
            failed = root / "failed" / "555-1234"
            print(f"idle RSS before: {_rss_mib(proc.pid)} MiB")
            for r in range(count):
                log_before = (root / "daemon.log").stat().st_size
                t0 = time.monotonic()
                for i in range(n):
                    (folder / f"r{r}-{i:05d}.pdf").write_bytes(pdf)
                while not failed.is_dir() or len(list(failed.glob("*.result.json"))) < n * (r + 1):
                    time.sleep(0.2)
                logged = (root / "daemon.log").stat().st_size - log_before
                print(f"round {r + 1}: {n} documents in {time.monotonic() - t0:.1f}s, "
                      f"RSS {_rss_mib(proc.pid)} MiB, log {logged / n:.0f} bytes/document")
        finally:
            proc.terminate()
            proc.wait(30)
    sim.stop()


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "idle"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else {"idle": 10_000, "burst": 20_000, "rounds": 1000}[what]
    {"idle": idle, "burst": burst, "rounds": rounds}[what](count)
