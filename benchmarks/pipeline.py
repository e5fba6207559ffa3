"""End-to-end throughput of the gateway's own pipeline: N one-page PDFs dropped at once
into an outbox, through claim, judge, fax-send, fax-status and filing, against the
built-in simulator on loopback.  Prints figures; asserts nothing.

    python benchmarks/pipeline.py [N]
"""

from __future__ import annotations

import resource
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


def main(n: int) -> None:
    sim = Simulator(delay=0.05).start()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("outbox", "sent", "failed"):
            (root / d).mkdir()
        cfg = root / "config.yaml"
        cfg.write_text(yaml.safe_dump({
            "api": {"base_url": sim.url, "key": "simulator", "max_in_flight": 4,
                    "requests_per_minute": 10**6},
            "database": str(root / "jobs.db"), "http": {"listen": f"127.0.0.1:{free_port()}"},
            "poll": {"interval": "0.1s"},
            "defaults": {"settle": "0.05s", "rescan": "60s"},
            "outboxes": [{"name": "main", "path": str(root / "outbox"), "sent": str(root / "sent"),
                          "failed": str(root / "failed"), "number": "+15551234567"}],
        }))
        svc = Service(load_config(cfg))
        svc.start()
        pdf = make_pdf(1)
        t0 = time.monotonic()
        for i in range(n):
            (root / "outbox" / f"doc{i:05d}.pdf").write_bytes(pdf)
        t_written = time.monotonic()
        while len(list((root / "sent").glob("*.result.json"))) < n:
            time.sleep(0.05)
        t_done = time.monotonic()
        sends = len(sim.requests("fax-send"))
        reqs = sim.requests()
        send_times = [r["time"] for r in reqs if r["endpoint"] == "fax-send"]
        polls = sum(1 for r in reqs if r["endpoint"] == "fax-status")
        svc.stop()
    sim.stop()
    total = t_done - t0
    print(f"documents: {n}  fax-send requests: {sends}")
    print(f"fax-send spread over {max(send_times) - min(send_times):.2f}s "
          f"({sends / max(1e-9, max(send_times) - min(send_times)):.0f}/s); fax-status requests: {polls}")
    print(f"written in {t_written - t0:.2f}s; all filed in sent/ after {total:.2f}s")
    print(f"end-to-end: {n / total:.1f} documents/s (includes settle 0.05s, poll 0.1s, fax delay 0.05s)")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)
