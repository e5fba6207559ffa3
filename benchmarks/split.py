"""Would intake in a process of its own make bursts faster?  A measured answer, from a
prototype; prints figures, asserts nothing.

    python benchmarks/split.py [--rounds 8] [--docs 1000]

Why: with one process, intake and sending share one interpreter lock, and a burst is
accepted at about half the bare client's rate (benchmarks/RESULTS.md).  The way out put
to the issue's owner in the seventeenth session was to claim and judge in a process of
their own, handing jobs over through the database.  Before anyone builds that, this
measures what it would give.

The prototype is `split-prototype.diff`, applied to a `git archive` of BASE (default
547c088, the last commit with intake in the daemon's process: the prototype's diff is for
that `service.py`; since then `fax-gateway run` has the real thing, gateway/intakeproc.py,
which ab.py compares with BASE) in a temporary folder (the repository is untouched).
With FGW_ROLE=intake, `fax-gateway run` starts only
the intake stage; with FGW_ROLE=send, only sending, filing and retention, without the
database lock or its guard, and with a thread that reads the job counts (every 2 ms while
they change, every 20 ms while they do not) and wakes the sending loop when they change
(intake's hand-over, through the database).  So
the two processes are the real stages, sharing the real database (SQLite's own locking,
WAL, busy timeout 10 s).  It is a prototype, not a design: the send process takes no lock,
and nothing of the service's crash or reload handling is split.

Four set-ups run at once, started in the order one, split, split, one (as in ab.py: the
order of starting alone changes the figures), each with a simulator of its own: "one" is the
patched tree without FGW_ROLE, which is BASE's daemon; "split" is the two processes.
lean.py's burst rounds (one outbox, max_in_flight 4, settle 0.05 s, poll.interval 5 s,
1,000 one-page PDFs, docs/s from the first file written to the last fax-send accepted)
take turns, the order turned by one each round.  Printed: each set-up's docs/s per round,
and split ÷ one as the geometric mean of sqrt(S1 * S2 / (O1 * O2)) over the rounds, with a
rough 95% interval.  A daemon keeps its threads on the CPU it started on (gateway/cpu.py),
and the two CPUs of a virtual machine need not be equally fast, so where each runs is
chosen: O1 on the first CPU allowed, O2 on the second; S1's intake on the first and its
sending on the second, S2's the other way round (left where they started, the two
processes of a split read 0.78 of one; benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

import lean
import yaml
from ab import extract, geo

PATCH = Path(__file__).with_name("split-prototype.diff")
BASE = "547c088"  # the last commit whose daemon ran intake in a thread


def start(root: Path, code: Path, name: str, sims: dict[str, lean.SimulatorProcess],
          daemons: dict[str, list[lean.Daemon]]) -> None:
    """One set-up, each process recorded as soon as it runs (so that a failed start stops
    what did start).  O1 on the first CPU allowed, O2 on the second; S1's intake on the
    first and its sending on the second, S2's the other way round."""
    sims[name] = sim = lean.SimulatorProcess(root, 0.05)
    group = daemons[name] = []
    cfg = lean.write_config(root, sim, poll="5s")
    cpus = sorted(os.sched_getaffinity(0))
    first = second = None
    if len(cpus) > 1:
        first, second = (cpus[0], cpus[1]) if name in ("O1", "S1") else (cpus[1], cpus[0])
    if name.startswith("O"):
        group.append(lean.Daemon(root, cfg, code=code))
        placed = [(group[0], first)]
    else:
        doc = yaml.safe_load(cfg.read_text())
        doc["http"]["listen"] = f"127.0.0.1:{lean.free_port()}"
        cfg_send = root / "config-send.yaml"
        cfg_send.write_text(yaml.safe_dump(doc))
        cfg_send.chmod(0o600)
        group.append(lean.Daemon(root, cfg, code=code, env={"FGW_ROLE": "intake"}, log="daemon-intake.log"))
        group.append(lean.Daemon(root, cfg_send, code=code, env={"FGW_ROLE": "send"}, log="daemon-send.log"))
        placed = [(group[0], first), (group[1], second)]
    # Moved once the document reader has started: the thread that starts it puts its own
    # CPU back afterwards (gateway/cpu.py).
    lean.wait(lambda: lean.child_pids(group[0].pid), 30, "the document reader")
    for daemon, cpu in placed:
        if cpu is not None:
            lean.move_threads(daemon.pid, cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--base", default=BASE, help=f"the revision the prototype applies to (default {BASE})")
    args = ap.parse_args()
    if args.rounds < 2 or args.docs < 1:
        ap.error("--rounds must be at least 2 and --docs at least 1")
    pdf = lean.make_pdf()
    names = ("O1", "S1", "S2", "O2")
    rates: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="fgw-split-") as tmp:
        base = Path(tmp)
        code = extract(args.base, base / "code")
        subprocess.run(["git", "apply", str(PATCH)], cwd=code, check=True)
        if "FGW_ROLE" not in (code / "gateway" / "service.py").read_text():
            raise SystemExit(f"{PATCH.name} did not apply to {args.base}'s gateway/service.py")
        sims: dict[str, lean.SimulatorProcess] = {}
        daemons: dict[str, list[lean.Daemon]] = {}
        done = dict.fromkeys(names, 0)
        try:
            for name in names:
                root = base / name
                root.mkdir()
                start(root, code, name, sims, daemons)
            for name in names:
                lean.burst(sims[name], base / name / "box00", args.docs, pdf, "warm", 0)
                done[name] = args.docs
            for rnd in range(args.rounds):
                for name in names[rnd % 4:] + names[:rnd % 4]:
                    r = lean.burst(sims[name], base / name / "box00", args.docs, pdf, f"r{rnd}", done[name])
                    done[name] += args.docs
                    rates[name].append(args.docs / r["accepted"])
                print(f"round {rnd + 1}: " + ", ".join(f"{n} {rates[n][-1]:.0f}/s" for n in names),
                      flush=True)
        finally:
            for stop in [d.stop for group in daemons.values() for d in reversed(group)] \
                    + [sim.stop for sim in sims.values()]:
                try:
                    stop()
                except Exception as exc:  # the others are stopped all the same
                    print(f"stopping: {exc!r}")
    n = len(rates["O1"])
    print(f"\none = {args.base}'s daemon, split = intake and sending in two processes; "
          f"{n} rounds of {args.docs} documents on each of 4 set-ups")
    for name in names:
        print(f"  {name}: docs/s to accepted, median {statistics.median(rates[name]):.0f}")
    pairs = [math.sqrt(rates["S1"][i] * rates["S2"][i] / (rates["O1"][i] * rates["O2"][i])) for i in range(n)]
    print(f"split ÷ one, docs/s to accepted: {geo(pairs)}")


if __name__ == "__main__":
    main()
