"""How soon the queue moves again after an API outage (issue 9): N one-page faxes queued
while the built-in simulator answers every request with 503 for `outage` seconds, one
fax sending throughout (its polls share the outage), max_in_flight 4.  Prints, per run,
the seconds from the API's return to the first fax-send it accepted and to the last one
(the queue drained), and how many requests reached the API while it was down.
Asserts nothing.

    python benchmarks/outage.py [N] [outage seconds] [runs]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from conftest import free_port, make_pdf  # noqa: E402

from gateway.config import load_config  # noqa: E402
from gateway.service import Service  # noqa: E402
from gateway.simulator import Simulator  # noqa: E402


def _accepted(sim: Simulator) -> list[float]:
    return sorted(r["time"] for r in sim.requests("fax-send") if r["job_id"] is not None)


def _wait(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.02)


def run(n: int, outage: float) -> tuple[float, float, int]:
    sim = Simulator(delay=outage + 2, key="simulator").start()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("outbox", "sent", "failed"):
            (root / d).mkdir()
        cfg = root / "config.yaml"
        cfg.write_text(yaml.safe_dump({
            "api": {"base_url": sim.url, "key": "simulator", "max_in_flight": 4,
                    "requests_per_minute": 6000},
            "database": str(root / "jobs.db"), "http": {"listen": f"127.0.0.1:{free_port()}"},
            "poll": {"interval": "1s"},
            "defaults": {"settle": "0.1s", "rescan": "60s"},
            "outboxes": [{"name": "main", "path": str(root / "outbox"), "sent": str(root / "sent"),
                          "failed": str(root / "failed"), "number": "+15551234567"}],
        }))
        cfg.chmod(0o600)
        svc = Service(load_config(cfg))
        svc.start()
        try:
            (root / "outbox" / "sending.pdf").write_bytes(make_pdf(1, text="sending"))
            _wait(lambda: _accepted(sim), 15)
            sim.delay = 0.05
            sim.set_fault("down", endpoints=("*",))
            down_at = time.time()
            for i in range(n):
                (root / "outbox" / f"doc{i:03d}.pdf").write_bytes(make_pdf(1, text=str(i)))
            time.sleep(outage)
            sim.set_fault(None)
            back_at = time.time()
            _wait(lambda: len(_accepted(sim)) >= n + 1, 120)
            after = [t for t in _accepted(sim) if t >= back_at]
            during = sum(1 for r in sim.requests() if down_at <= r["time"] < back_at)
        finally:
            svc.stop()
            sim.stop()
    return after[0] - back_at, after[-1] - back_at, during


def main(n: int, outage: float, runs: int) -> None:
    print(f"{n} faxes queued during a {outage:g}s outage (every request 503), max_in_flight 4")
    firsts, drained = [], []
    for i in range(runs):
        first, last, during = run(n, outage)
        firsts.append(first)
        drained.append(last)
        print(f"run {i + 1}: first fax-send accepted {first:.2f}s after the API came back, "
              f"queue drained after {last:.2f}s; {during} requests reached the API while it was down")
    if runs > 1:
        print(f"first fax-send: median {statistics.median(firsts):.2f}s, max {max(firsts):.2f}s; "
              f"drained: median {statistics.median(drained):.2f}s, max {max(drained):.2f}s")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args else 20, float(args[1]) if len(args) > 1 else 15.0,
         int(args[2]) if len(args) > 2 else 1)
