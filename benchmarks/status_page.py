"""Does the status page cost more with a longer history?  (issue 11)

    python benchmarks/status_page.py [N ...]     # default: 1000 1000000

For each N, a database is filled as benchmarks/history.py fills it (N finished, filed
jobs, every one `scan.pdf` to +15551234567, plus 20 still sending: the worst case for
a search, since every job matches), the daemon is started in-process with
`http.status_listen`, and the median and slowest of RUNS answers are measured for `/`,
`/?q=` by job id, by number, by whole file name, by a part of a name that matches
nothing (the longest walk: NAME_SEARCH_WITHIN rows), and `/jobs/<id>`.  Also measured:
the first start after an upgrade, which builds the two indexes the page's search needs.
Prints a table and writes it into benchmarks/RESULTS.md (its own section); asserts nothing.
"""

from __future__ import annotations

import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]
from conftest import free_port  # noqa: E402
from history import fill  # noqa: E402
from results_md import write_section  # noqa: E402

from gateway.config import load_config  # noqa: E402
from gateway.service import Service  # noqa: E402
from gateway.simulator import Simulator  # noqa: E402
from gateway.status import NAME_SEARCH_WITHIN  # noqa: E402

RUNS = 20
SECTION = "# The status page"


def _timed(client: httpx.Client, path: str, params: dict[str, str] | None = None) -> tuple[float, float]:
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        r = client.get(path, params=params)
        times.append(time.perf_counter() - t0)
        assert r.status_code == 200, (path, params, r.status_code)
    return statistics.median(times), max(times)


def measure(n: int) -> dict[str, object]:
    sim = Simulator(delay=3600).start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            for d in ("outbox", "sent", "failed"):
                (root / d).mkdir()
            db = root / "jobs.db"
            t0 = time.perf_counter()
            fill(db, n, root / "outbox")
            filled = time.perf_counter() - t0
            # As a database of the previous version: without the page's two indexes.
            conn = sqlite3.connect(db)
            conn.execute("DROP INDEX idx_recipients_number_job_id")
            conn.execute("DROP INDEX idx_jobs_primary_name")
            conn.close()
            status = f"127.0.0.1:{free_port()}"
            cfg = root / "config.yaml"
            cfg.write_text(yaml.safe_dump({
                "api": {"base_url": sim.url, "key": "simulator", "requests_per_minute": 10**6},
                "database": str(db), "http": {"listen": f"127.0.0.1:{free_port()}", "status_listen": status},
                "poll": {"interval": "1h"},
                "outboxes": [{"name": "main", "path": str(root / "outbox"), "sent": str(root / "sent"),
                              "failed": str(root / "failed")}],
            }))
            t0 = time.perf_counter()
            svc = Service(load_config(cfg))
            svc.start()
            started = time.perf_counter() - t0
            middle = n // 2 or 1
            try:
                with httpx.Client(base_url=f"http://{status}", timeout=60) as client:
                    client.get("/")  # warm-up: the first answer opens the page's files
                    rows = {
                        "/": _timed(client, "/"),
                        "/?q=<job id>": _timed(client, "/", {"q": str(middle)}),
                        "/?q=<number>": _timed(client, "/", {"q": "+1 555 123 4567"}),
                        "/?q=<whole name>": _timed(client, "/", {"q": "scan.pdf"}),
                        "/?q=<part, no match>": _timed(client, "/", {"q": "no-such-name"}),
                        "/jobs/<id>": _timed(client, f"/jobs/{middle}"),
                    }
            finally:
                svc.stop()
            size = db.stat().st_size
    finally:
        sim.stop()
    return {"fill": filled, "start": started, "mb": size / 1e6, "rows": rows}


def main(sizes: list[int]) -> None:
    results = []
    for n in sizes:
        r = measure(n)
        results.append((n, r))
        print(f"{n:>9} jobs ({r['mb']:.0f} MB, filled in {r['fill']:.0f} s), first start building the "
              f"indexes {r['start'] * 1000:.0f} ms:", flush=True)
        for path, (median, worst) in r["rows"].items():  # type: ignore[union-attr]
            print(f"    {path:<22} median {median * 1000:6.1f} ms   max {worst * 1000:6.1f} ms", flush=True)
    paths = list(results[0][1]["rows"])  # type: ignore[arg-type]
    lines = [SECTION, "",
             f"`python benchmarks/status_page.py {' '.join(map(str, sizes))}` on a 2-core machine: the "
             "daemon in-process with `http.status_listen`, one kept-alive client, median (and slowest) of "
             f"{RUNS} answers. The database holds N finished jobs, every one `scan.pdf` to +15551234567 "
             "(so every search matches them all), plus 20 still sending. A part of a name is looked for "
             f"among the newest {NAME_SEARCH_WITHIN:,} jobs; one that matches nothing walks all of them.",
             "", "| finished jobs | " + " | ".join(f"`{p}`" for p in paths) + " | first start (builds the "
             "search indexes) |", "|---:|" + "---:|" * (len(paths) + 1)]
    for n, r in results:
        cells = [f"{m * 1000:.1f} ms ({w * 1000:.0f})" for m, w in r["rows"].values()]  # type: ignore[union-attr]
        lines.append(f"| {n:,} | " + " | ".join(cells) + f" | {r['start'] * 1000:.0f} ms |")
    lines += ["", f"Below {NAME_SEARCH_WITHIN:,} jobs a search walks fewer rows for a part of a name; from "
              f"{NAME_SEARCH_WITHIN:,} on it walks at most that many, so a larger history costs no more. The "
              "first start after upgrading builds the two search indexes once, before READY (a database "
              "made by this version has them from the start)."]
    write_section(lines)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1000, 1_000_000])
