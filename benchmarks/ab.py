"""Is revision B faster than revision A on a burst?  Prints figures; asserts nothing.

    python benchmarks/ab.py REV_A REV_B [--rounds 8] [--docs 1000]

Why a script of its own: on the 2-core machines we measure on, one burst round differs
from the next by up to 20% (the machine drifts within minutes), so two runs of lean.py,
one per revision, cannot show a change worth 5%.  Here both revisions run at once and take
turns, so each round compares them over the same minute.  And the order the daemons were
started in matters by itself (a one-off rig of two daemons read the same change as 1.063
started second and 0.906 started first; benchmarks/RESULTS.md, seventeenth session), so
there are four daemons, started A, B, B, A, each round's figure is
sqrt(B1 * B2 / (A1 * A2)), and all four are moved to the CPU the first one chose (a daemon
keeps its threads on the CPU it started on, gateway/cpu.py, and the two CPUs of a virtual
machine need not be equally fast).

Each revision is taken with `git archive` into a temporary folder (nothing in the
repository changes) and runs as a real `python -m gateway run` from there, its document
reader too (PYTHONPATH), each daemon with a simulator of its own from this tree: lean.py's
burst rounds (one outbox, max_in_flight 4, settle 0.05 s, poll.interval 5 s, 1,000
one-page PDFs, docs/s from the first file written to the last fax-send accepted).  Every
daemon warms up with one burst; then each round runs one burst on each daemon, the order
turned by one each round.  Printed: each daemon's docs/s and CPU ms per document per
round, and B ÷ A for both, as the geometric mean over the rounds with a rough 95%
interval (two standard errors of the mean of the logarithms).  The daemons' CPU is the
steadier figure: it does not wait on the machine's other processes.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import tarfile
import tempfile
from pathlib import Path

import lean


def extract(rev: str, into: Path) -> Path:
    """The revision's tree, as committed."""
    into.mkdir(parents=True)
    archive = into.with_suffix(".tar")
    with open(archive, "wb") as out:
        subprocess.run(["git", "-C", str(lean.ROOT), "archive", "--format=tar", rev], stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    archive.unlink()
    return into


def geo(ratios: list[float]) -> str:
    logs = [math.log(r) for r in ratios]
    mean = statistics.fmean(logs)
    half = 2 * statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else float("nan")
    return f"{math.exp(mean):.3f} (95%: {math.exp(mean - half):.3f}-{math.exp(mean + half):.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rev_a")
    ap.add_argument("rev_b")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--docs", type=int, default=1000)
    args = ap.parse_args()
    if args.rounds < 2 or args.docs < 1:
        ap.error("--rounds must be at least 2 (a multiple of 4 turns the order through every daemon)"
                 " and --docs at least 1")
    pdf = lean.make_pdf()
    names = ("A1", "B1", "B2", "A2")
    rates: dict[str, list[float]] = {n: [] for n in names}
    cpus: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="fgw-ab-") as tmp:
        base = Path(tmp)
        code = {"A": extract(args.rev_a, base / "code-a"), "B": extract(args.rev_b, base / "code-b")}
        sims: dict[str, lean.SimulatorProcess] = {}
        daemons: dict[str, lean.Daemon] = {}
        done = dict.fromkeys(names, 0)
        try:
            for name in names:  # started in this order: A, B, B, A
                root = base / name
                root.mkdir()
                sims[name] = lean.SimulatorProcess(root, 0.05)
                daemons[name] = lean.Daemon(root, lean.write_config(root, sims[name], poll="5s"),
                                            code=code[name[0]])
            cpus_at_start = {n: lean.pinned_cpu(d.pid) for n, d in daemons.items()}
            same = cpus_at_start["A1"]
            if same is not None:  # every daemon on the same CPU: which one it picked weighs too
                other = min(os.sched_getaffinity(0) - {same}, default=same)
                for daemon in daemons.values():
                    lean.move_threads(daemon.pid, same)
                    for intake in lean.intake_processes(daemon.pid):  # its own CPU (intakeproc.py)
                        lean.move_threads(intake, other)
            print("daemons' CPUs at start: " + ", ".join(f"{n} {c}" for n, c in cpus_at_start.items())
                  + (f"; all moved to CPU {same}, intake processes to the other" if same is not None else ""),
                  flush=True)
            for name in names:
                lean.burst(sims[name], base / name / "box00", args.docs, pdf, "warm", 0)
                done[name] = args.docs
            for rnd in range(args.rounds):
                order = names[rnd % 4:] + names[:rnd % 4]
                for name in order:
                    before = lean.cpu_ticks(daemons[name].pid)
                    r = lean.burst(sims[name], base / name / "box00", args.docs, pdf, f"r{rnd}", done[name])
                    done[name] += args.docs
                    rates[name].append(args.docs / r["accepted"])
                    cpus[name].append((lean.cpu_ticks(daemons[name].pid) - before) / lean.CLK_TCK * 1000
                                      / args.docs)
                print(f"round {rnd + 1}: " + ", ".join(f"{n} {rates[n][-1]:.0f}/s {cpus[n][-1]:.2f} ms"
                                                      for n in names), flush=True)
        finally:
            for daemon in daemons.values():
                daemon.stop()
            for sim in sims.values():
                sim.stop()

    def pair(series: dict[str, list[float]], i: int) -> float:
        return math.sqrt(series["B1"][i] * series["B2"][i] / (series["A1"][i] * series["A2"][i]))

    n = len(rates["A1"])
    print(f"\nA = {args.rev_a}, B = {args.rev_b}; {n} rounds of {args.docs} documents on each of 4 daemons")
    for name in names:
        print(f"  {name}: docs/s to accepted, median {statistics.median(rates[name]):.0f}; "
              f"CPU ms per document, median {statistics.median(cpus[name]):.2f}")
    print(f"B ÷ A, docs/s to accepted: {geo([pair(rates, i) for i in range(n)])}")
    print(f"B ÷ A, CPU per document:   {geo([pair(cpus, i) for i in range(n)])} (below 1: B spends less)")


if __name__ == "__main__":
    main()
