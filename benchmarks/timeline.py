"""Where a burst's time goes, phase by phase (issue 12): prints figures; asserts nothing.

    python benchmarks/timeline.py [--rounds 5] [--docs 1000]

`lean.py` gives one figure per burst round: documents per second from the first file
written to the last fax-send accepted.  This splits that window.  While a round runs, a
read-only connection to the daemon's database reads the job counts (`job_counts`, kept
by triggers: one small SELECT) every 5 ms, and /proc the daemon's and the simulator's
CPU, so each round prints:

- start: from the first file written to the first job recorded (the settle time, 0.05 s
  here, and the first claim);
- intake: jobs recorded (claimed and judged) per second, from the first to the last;
- sending while intake runs: jobs past `queued` (their fax-send intent committed) per
  second over the same time, and sending after it: from the last job recorded to the
  last fax-send the simulator accepted;
- the daemon's CPU (all its threads: it keeps them on one CPU, see gateway/cpu.py) and
  the simulator's, as a share of one CPU, in each of the two phases;
- a bare httpx client's rate (the one of lean.py: one keep-alive client, 4 threads, to
  the same simulator) before the first round and after each, for scale.

Same settings as lean.py's burst rounds: a real `python -m gateway run`, the simulator in
its own process, one outbox, max_in_flight 4, settle 0.05 s, poll.interval 5 s (the polls
and the filing come after the window).  A round takes about 10 s with its bare run (the
polls wait 5 s).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import lean

Sample = tuple[float, dict, float, float]  # when, job counts by state, daemon CPU s, simulator CPU s


def _sample(db: Path, pids: tuple[int, int], stop: threading.Event, out: list[Sample]) -> None:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        while not stop.is_set():
            try:
                counts = dict(conn.execute("SELECT state, n FROM job_counts").fetchall())
            except sqlite3.Error:  # a checkpoint or a writer in the way: the next look
                continue
            out.append((time.time(), counts, *(lean.cpu_ticks(p) / lean.CLK_TCK for p in pids)))
            time.sleep(0.005)
    finally:
        conn.close()


def _first(samples: list[Sample], test: Any) -> tuple[float, dict, float, float]:
    for s in samples:
        if test(s[1]):
            return s
    return samples[-1]


def round_phases(root: Path, sim: lean.SimulatorProcess, daemon: lean.Daemon, box: Path, n: int,
                 pdf: bytes, prefix: str, filed_before: int, jobs_before: int) -> dict[str, float]:
    samples: list[Sample] = []
    stop = threading.Event()
    pids = (daemon.pid, sim.proc.pid)
    sampler = threading.Thread(target=_sample, args=(root / "jobs.db", pids, stop, samples))
    sampler.start()
    try:
        r = lean.burst(sim, box, n, pdf, prefix, filed_before)
    finally:
        stop.set()
        sampler.join()
    t0, t_acc = r["t0"], r["t0"] + r["accepted"]

    def recorded(c: dict) -> int:
        return sum(c.values()) - jobs_before

    def past(c: dict) -> int:
        return recorded(c) - c.get("queued", 0)

    first = _first(samples, lambda c: recorded(c) >= 1)
    done = _first(samples, lambda c: recorded(c) >= n)
    end = min(samples, key=lambda s: abs(s[0] - t_acc))
    intake_s = max(done[0] - first[0], 1e-3)
    after_s = max(t_acc - done[0], 1e-3)
    return {
        "accepted": r["accepted"], "start": first[0] - t0, "intake_rate": n / intake_s,
        "send_during": past(done[1]) / intake_s, "send_after": (n - past(done[1])) / after_s,
        "after_s": after_s,
        "daemon_during": (done[2] - first[2]) / intake_s, "daemon_after": (end[2] - done[2]) / after_s,
        "sim_during": (done[3] - first[3]) / intake_s, "sim_after": (end[3] - done[3]) / after_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--docs", type=int, default=1000)
    args = ap.parse_args()
    pdf = lean.make_pdf()
    with tempfile.TemporaryDirectory(prefix="fgw-timeline-") as tmp:
        root = Path(tmp)
        sim = lean.SimulatorProcess(root, 0.05)
        daemon = None
        try:
            daemon = lean.Daemon(root, lean.write_config(root, sim, poll="5s"))
            box = root / "box00"
            lean.burst(sim, box, args.docs, pdf, "warm", 0)  # the reader and the caches warm up
            done = args.docs
            bare = [args.docs / lean.bare_httpx(sim, args.docs, pdf)]
            rows = []
            for i in range(args.rounds):
                rows.append(round_phases(root, sim, daemon, box, args.docs, pdf, f"t{i}", done, done))
                done += args.docs
                bare.append(args.docs / lean.bare_httpx(sim, args.docs, pdf))
        finally:
            if daemon is not None:
                daemon.stop()
            sim.stop()
    print(f"{args.docs} one-page PDFs a round; bare httpx before the first round and after each: "
          + ", ".join(f"{b:.0f}/s" for b in bare))
    print(f"{'round':>5} {'docs/s':>7} {'start':>6} {'intake':>7} {'send during':>12} {'send after':>11}"
          f" {'after':>6} {'daemon CPU during/after':>24} {'simulator CPU during/after':>27}")
    for i, p in enumerate(rows, 1):
        print(f"{i:>5} {args.docs / p['accepted']:>7.0f} {p['start']:>5.2f}s {p['intake_rate']:>5.0f}/s"
              f" {p['send_during']:>10.0f}/s {p['send_after']:>9.0f}/s {p['after_s']:>5.2f}s"
              f" {100 * p['daemon_during']:>15.0f}% / {100 * p['daemon_after']:>3.0f}%"
              f" {100 * p['sim_during']:>18.0f}% / {100 * p['sim_after']:>3.0f}%")
    med = {k: statistics.median(p[k] for p in rows) for k in rows[0]}
    print(f"median: {args.docs / med['accepted']:.0f} docs/s to accepted; start {med['start']:.2f} s; intake "
          f"{med['intake_rate']:.0f}/s while sending {med['send_during']:.0f}/s; sending alone afterwards "
          f"{med['send_after']:.0f}/s (bare httpx median {statistics.median(bare):.0f}/s)")


if __name__ == "__main__":
    main()
