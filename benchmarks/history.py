"""Does the gateway's cost grow with the history kept in its database?  (SPEC 6.4, 8)

    python benchmarks/history.py [N ...]     # default: 1000 1000000

For each N, a database is filled with N finished, filed jobs (one recipient and three
events each, as the daemon leaves them) plus 20 jobs still sending, and then measured:
the daemon's start-up until READY (in-process, against the simulator), one poll cycle's
queries, a /metrics scrape, and `fax-gateway jobs --limit 50`.  Prints a table and
writes it into benchmarks/RESULTS.md (its own section); asserts nothing.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]
from conftest import free_port  # noqa: E402
from results_md import write_section  # noqa: E402

from gateway.config import load_config  # noqa: E402
from gateway.service import Service  # noqa: E402
from gateway.simulator import Simulator  # noqa: E402
from gateway.store import Store  # noqa: E402

SENDING = 20


def fill(db: Path, n: int, outbox: Path) -> None:
    """N finished jobs written straight into a database the store created (its schema,
    its triggers), in batches: what a year of faxing leaves behind."""
    Store(db).close()
    conn = sqlite3.connect(db)
    now = time.time()
    batch = 20_000
    sources = json.dumps([{"name": "scan.pdf", "ino": 1, "size": 1000, "mtime_ns": 1}])
    for start in range(0, n + SENDING, batch):
        jobs, recips, events = [], [], []
        for i in range(start, min(start + batch, n + SENDING)):
            job_id = i + 1
            done = i < n
            state = "delivered" if done else "sending"
            jobs.append((job_id, "main", str(outbox), state, "filed" if done else "held", 1, b"", sources,
                         '["scan.pdf"]', b"scan.pdf", "{}", "[]", 1, now - 86400, now - 86400,
                         now - 86000 if done else None, "sent" if done else None,
                         str(outbox.parent / "sent") if done else None, 0 if done else None,
                         str(outbox.parent / ".fax-gateway-main")))
            recips.append((job_id, job_id, 0, "+15551234567", state, 1, str(1000 + job_id), 1,
                           now - 86300, now + (10**9 if done else 3600), now))
            for e in ("claiming", "queued", state):
                events.append((job_id, now - 86400, e))
        conn.executemany(
            "INSERT INTO jobs(id, outbox, outbox_path, state, phase, simulated, rel_dir, sources, documents,"
            " primary_name, options, sha256, pages, created_at, settled_at, completed_at, filed_to,"
            " filed_root, filed_suffix, private_root) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", jobs)
        conn.executemany(
            "INSERT INTO recipients(id, job_id, position, number, state, attempts, ifax_job_id, pages,"
            " accepted_at, next_action_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)", recips)
        conn.executemany("INSERT INTO events(job_id, at, state) VALUES (?,?,?)", events)
        conn.commit()
    conn.close()


def _best(fn, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(n: int) -> dict[str, float]:
    sim = Simulator(delay=3600).start()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("outbox", "sent", "failed"):
            (root / d).mkdir()
        t0 = time.perf_counter()
        fill(root / "jobs.db", n, root / "outbox")
        filled = time.perf_counter() - t0
        cfg = root / "config.yaml"
        cfg.write_text(yaml.safe_dump({
            "api": {"base_url": sim.url, "key": "simulator", "requests_per_minute": 10**6},
            "database": str(root / "jobs.db"), "http": {"listen": f"127.0.0.1:{free_port()}"},
            "poll": {"interval": "1h"},
            "outboxes": [{"name": "main", "path": str(root / "outbox"), "sent": str(root / "sent"),
                          "failed": str(root / "failed")}],
        }))
        config = load_config(cfg)
        t0 = time.perf_counter()
        svc = Service(config)
        svc.start()
        started = time.perf_counter() - t0
        try:
            store = svc.store
            assert store is not None
            poll = _best(lambda: (store.due_polls(time.time() + 7200, 10), store.next_poll_time(),
                                  store.next_submission_time(), store.due_submissions(time.time(), 10)))
            url = f"http://{config.http.listen}/metrics"
            scrape = _best(lambda: httpx.get(url, timeout=30).raise_for_status())
        finally:
            svc.stop()
        command = [sys.executable, "-m", "gateway", "jobs", "-c", str(cfg), "--limit", "50"]
        jobs = _best(lambda: subprocess.run(command, check=True, capture_output=True, cwd=ROOT), runs=3)
        size = (root / "jobs.db").stat().st_size
    sim.stop()
    return {"fill": filled, "start": started, "poll": poll, "scrape": scrape, "jobs": jobs, "mb": size / 1e6}


def main(sizes: list[int]) -> None:
    rows = []
    for n in sizes:
        r = measure(n)
        rows.append((n, r))
        print(f"{n:>9} jobs ({r['mb']:.0f} MB, filled in {r['fill']:.0f}s): "
              f"start {r['start'] * 1000:.0f} ms, "
              f"poll cycle {r['poll'] * 1000:.2f} ms, /metrics {r['scrape'] * 1000:.1f} ms, "
              f"jobs --limit 50 {r['jobs'] * 1000:.0f} ms", flush=True)
    lines = ["# Cost growth with history", "",
             "`python benchmarks/history.py " + " ".join(map(str, sizes)) + "` on a 2-core machine "
             "(medians). The database holds N finished, filed jobs plus 20 still sending.", "",
             "| finished jobs | database | start to READY | poll cycle (queries) | /metrics scrape |"
             " `jobs --limit 50` |", "|---:|---:|---:|---:|---:|---:|"]
    for n, r in rows:
        lines.append(f"| {n:,} | {r['mb']:.0f} MB | {r['start'] * 1000:.0f} ms | {r['poll'] * 1000:.2f} ms | "
                     f"{r['scrape'] * 1000:.1f} ms | {r['jobs'] * 1000:.0f} ms |")
    write_section(lines)  # its own section; the other benchmarks' are kept


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1000, 1_000_000])
