"""Where a burst's time goes, phase by phase (issue 12): prints figures; asserts nothing.

    python benchmarks/timeline.py [--rounds 5] [--docs 1000]

`lean.py` gives one figure per burst round: documents per second from the first file
written to the last fax-send accepted.  That one figure cannot say which stage holds the
window.  So while a round runs, a read-only connection to the daemon's database reads, every
5 ms, the job counts by state (`job_counts`, kept by triggers) and how many jobs are still
being claimed (`phase = 'claiming'`, by its index), and /proc the CPU of the daemon's own
threads, of its document reader and of the simulator.  Each round prints:

- start: from the first file written to the first job row (the settle time, 0.05 s
  here, and the first claim intent);
- intake: documents claimed and judged per second, from the first job row to the moment
  every document of the round is past its claim (phase past `claiming`: judged, or, for
  one whose reading ran out of its turn's budget, left for the next turn; not seen with
  one-page PDFs), counting only those that were not yet in the first sample;
- sending meanwhile: jobs whose fax-send was accepted (state past `queued` and
  `submitting`) per second over the same time; and sending after it, from that moment to
  the last fax-send the simulator accepted: only the sending loop is left then;
- the CPU of the daemon's threads (it keeps them on one CPU, gateway/cpu.py), of its
  document reader (a process of its own) and of the simulator, each as a share of one
  CPU, while intake runs and after (/proc ticks are 10 ms: the shorter "after" phase is
  the rougher figure);
- a bare httpx client's rate (lean.py's: one keep-alive client, 4 threads, to the same
  simulator) before the first round and after each, for scale.

Same settings as lean.py's burst rounds: a real `python -m gateway run`, the simulator in
its own process, one outbox, max_in_flight 4, settle 0.05 s, poll.interval 5 s (the polls
and the filing come after the window).  A round takes about 10 s with its bare run (the
polls wait 5 s).  The sampling costs this process a few reads every 5 ms, on the same two
CPUs.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lean


@dataclass(frozen=True)
class Sample:
    at: float                 # wall clock
    counts: dict[str, int]    # jobs by state (all rounds')
    claiming: int             # jobs whose claim is not judged yet
    daemon: float             # CPU seconds of the daemon's own threads
    reader: float             # of its document reader (its child processes)
    sim: float                # of the simulator


CLAIMING = "SELECT COUNT(*) FROM jobs WHERE phase = 'claiming'"


def _own_seconds(pid: int) -> float:
    """utime + stime of the process's threads, its children not included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / lean.CLK_TCK


def _sample(db: Path, pids: tuple[int, int], stop: threading.Event, out: list[Sample],
            failed: list[BaseException]) -> None:
    """The sampler thread.  A busy database (a checkpoint) skips one look; anything else
    ends the sampling and is reported by the round, not lost in a thread."""
    daemon, sim = pids
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            while not stop.is_set():
                try:
                    counts = dict(conn.execute("SELECT state, n FROM job_counts").fetchall())
                    claiming = conn.execute(CLAIMING).fetchone()[0]
                except sqlite3.OperationalError:
                    time.sleep(0.005)
                    continue
                own = _own_seconds(daemon)
                out.append(Sample(time.time(), counts, claiming, own,
                                  lean.cpu_ticks(daemon) / lean.CLK_TCK - own, _own_seconds(sim)))
                time.sleep(0.005)
        finally:
            conn.close()
    except BaseException as exc:  # handed to the round
        failed.append(exc)


def _first(samples: list[Sample], test: Callable[[Sample], bool]) -> Sample:
    for s in samples:
        if test(s):
            return s
    raise SystemExit("the sampling missed a phase of the round (too few samples)")


def round_phases(root: Path, sim: lean.SimulatorProcess, daemon: lean.Daemon, pdf: bytes, *, n: int,
                 prefix: str, jobs_before: int) -> dict[str, float]:
    """One burst of n documents (lean.burst), cut into its phases."""
    samples: list[Sample] = []
    failed: list[BaseException] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sample, args=(root / "jobs.db", (daemon.pid, sim.proc.pid), stop,
                                                     samples, failed))
    sampler.start()
    try:
        r = lean.burst(sim, root / "box00", n, pdf, prefix, jobs_before)
    finally:
        stop.set()
        sampler.join()
    if failed:
        raise SystemExit(f"sampling failed: {failed[0]!r}")
    t0, t_acc = r["t0"], r["t0"] + r["accepted"]

    def recorded(s: Sample) -> int:
        return sum(s.counts.values()) - jobs_before

    def accepted(s: Sample) -> int:
        return recorded(s) - s.counts.get("queued", 0) - s.counts.get("submitting", 0) \
            - s.counts.get("rejected", 0)

    first = _first(samples, lambda s: recorded(s) >= 1)
    done = _first(samples, lambda s: recorded(s) >= n and s.claiming == 0)
    before_end = [s for s in samples if done.at < s.at <= t_acc]
    if not before_end:  # intake ended within 5 ms of the last acceptance: no phase to measure
        raise SystemExit(f"round {prefix}: no sample between the end of intake and the last acceptance "
                         "(too few documents?)")
    end = before_end[-1]
    intake_s = max(done.at - first.at, 1e-3)
    after_s = t_acc - done.at  # both positive: `end` lies between them
    cpu_after_s = end.at - done.at
    return {
        "accepted": r["accepted"], "start": first.at - t0, "intake_rate": (n - recorded(first)) / intake_s,
        "send_during": (accepted(done) - accepted(first)) / intake_s,
        "send_after": (n - accepted(done)) / after_s, "after_s": after_s,
        "daemon_during": (done.daemon - first.daemon) / intake_s,
        "daemon_after": (end.daemon - done.daemon) / cpu_after_s,
        "reader_during": (done.reader - first.reader) / intake_s,
        "sim_during": (done.sim - first.sim) / intake_s, "sim_after": (end.sim - done.sim) / cpu_after_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--docs", type=int, default=1000)
    args = ap.parse_args()
    if args.rounds < 1 or args.docs < 1:
        ap.error("--rounds and --docs must be at least 1")
    pdf = lean.make_pdf()
    with tempfile.TemporaryDirectory(prefix="fgw-timeline-") as tmp:
        root = Path(tmp)
        sim = lean.SimulatorProcess(root, 0.05)
        daemon = None
        try:
            daemon = lean.Daemon(root, lean.write_config(root, sim, poll="5s"))
            lean.burst(sim, root / "box00", args.docs, pdf, "warm", 0)  # the reader and the caches warm up
            done = args.docs
            bare = [args.docs / lean.bare_httpx(sim, args.docs, pdf)]
            rows = []
            for i in range(args.rounds):
                rows.append(round_phases(root, sim, daemon, pdf, n=args.docs, prefix=f"t{i}",
                                         jobs_before=done))
                done += args.docs
                bare.append(args.docs / lean.bare_httpx(sim, args.docs, pdf))
        finally:
            if daemon is not None:
                daemon.stop()
            sim.stop()
    print(f"{args.docs} one-page PDFs a round; bare httpx before the first round and after each: "
          + ", ".join(f"{b:.0f}/s" for b in bare))
    print(f"{'round':>5} {'docs/s':>7} {'start':>6} {'intake':>7} {'send during':>12} {'send after':>11}"
          f" {'after':>6} {'CPU during: daemon reader sim':>30} {'after: daemon sim':>18}")
    for i, p in enumerate(rows, 1):
        print(f"{i:>5} {args.docs / p['accepted']:>7.0f} {p['start']:>5.2f}s {p['intake_rate']:>5.0f}/s"
              f" {p['send_during']:>10.0f}/s {p['send_after']:>9.0f}/s {p['after_s']:>5.2f}s"
              f" {100 * p['daemon_during']:>20.0f}% {100 * p['reader_during']:>4.0f}%"
              f" {100 * p['sim_during']:>3.0f}% {100 * p['daemon_after']:>13.0f}%"
              f" {100 * p['sim_after']:>3.0f}%")
    med = {k: statistics.median(p[k] for p in rows) for k in rows[0]}
    print(f"median: {args.docs / med['accepted']:.0f} docs/s to accepted; start {med['start']:.2f} s; intake "
          f"{med['intake_rate']:.0f}/s while sending {med['send_during']:.0f}/s (the daemon's threads "
          f"{100 * med['daemon_during']:.0f}% of a CPU); sending alone afterwards {med['send_after']:.0f}/s "
          f"over {med['after_s']:.2f} s (bare httpx median {statistics.median(bare):.0f}/s)")


if __name__ == "__main__":
    main()
