"""What idle clients cost the daemon's HTTP port (issue 9): prints figures, asserts nothing.

    python benchmarks/http_edge.py [IDLE] [SECONDS]

Runs a real `fax-gateway run` process (with 1,024 descriptors, under prlimit) against
the built-in simulator on loopback and prints /healthz latency (p50, p99, max) with no
other client and with IDLE (default 1,000) idle connections held open, half of them
stopped halfway through a request line, both over one kept-alive connection and with a
new connection per request; then /metrics requests per second from 1 and 4 concurrent
kept-alive clients for SECONDS (default 5) each. Every request goes to 127.0.0.1 and the
run stops by itself.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from conftest import free_port  # noqa: E402

from gateway.simulator import Simulator  # noqa: E402

SAMPLES = 400
# As systemd starts a service by default (LimitNOFILE=1024:524288, soft 1,024): the
# connection cap is then 768, so 1,000 idle clients make the daemon close the oldest.
LIMIT = ("prlimit", "--nofile=1024:1024") if shutil.which("prlimit") else ()


def _daemon(root: Path, sim: Simulator) -> tuple[subprocess.Popen, str]:
    for d in ("outbox", "sent", "failed"):
        (root / d).mkdir(exist_ok=True)
    port = free_port()
    cfg = root / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "api": {"base_url": sim.url, "key": "simulator"},
        "database": str(root / "jobs.db"), "http": {"listen": f"127.0.0.1:{port}"},
        "outboxes": [{"name": "main", "path": str(root / "outbox"), "sent": str(root / "sent"),
                      "failed": str(root / "failed")}],
    }))
    log = open(root / "daemon.log", "wb")
    proc = subprocess.Popen([*LIMIT, sys.executable, "-m", "gateway", "run", "-c", str(cfg)], stdout=log,
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
    proc.kill()
    raise SystemExit("the daemon did not become healthy:\n" + (root / "daemon.log").read_text())


def _percentiles(samples: list[float]) -> str:
    s = sorted(samples)
    p50, p99 = s[len(s) // 2], s[min(len(s) - 1, int(len(s) * 0.99))]
    return f"p50 {p50 * 1000:6.2f} ms   p99 {p99 * 1000:6.2f} ms   max {s[-1] * 1000:6.2f} ms"


def _healthz_latency(url: str, label: str) -> None:
    with httpx.Client(timeout=5) as client:
        times = []
        for _ in range(SAMPLES):
            t = time.perf_counter()
            assert client.get(url + "/healthz").status_code == 200
            times.append(time.perf_counter() - t)
    print(f"  /healthz, {label}, kept alive:     {_percentiles(times)}")
    host, port = url.removeprefix("http://").rsplit(":", 1)
    times = []
    for _ in range(SAMPLES):
        t = time.perf_counter()
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            got = b""
            while chunk := s.recv(65536):
                got += chunk
        assert got.startswith(b"HTTP/1.1 200 "), got[:100]
        times.append(time.perf_counter() - t)
    print(f"  /healthz, {label}, new connection: {_percentiles(times)}")


def _metrics_rate(url: str, clients: int, seconds: float) -> None:
    counts = [0] * clients
    stop = time.monotonic() + seconds

    def run(i: int) -> None:
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < stop:
                assert client.get(url + "/metrics").status_code == 200
                counts[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rate = sum(counts) / (time.monotonic() - started)
    print(f"  /metrics, {clients} concurrent client(s): {rate:7.0f} requests/s")


def main() -> None:
    idle = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < idle + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, idle + 256), hard))
    sim = Simulator("127.0.0.1", 0, key="simulator", delay=0.2).start()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = _daemon(Path(tmp), sim)
        try:
            limit = Path(f"/proc/{proc.pid}/limits").read_text().split("Max open files")[1].split()[0]
            print(f"fax-gateway HTTP edge, {os.cpu_count()} CPUs, daemon descriptor limit {limit}")
            _healthz_latency(url, "no other client")
            host, port = url.removeprefix("http://").rsplit(":", 1)
            held = []
            for i in range(idle):
                s = socket.create_connection((host, int(port)), timeout=5)
                if i % 2:
                    s.sendall(b"GET /healthz HT")
                held.append(s)
            time.sleep(0.5)
            fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
            threads = len(os.listdir(f"/proc/{proc.pid}/task"))
            print(f"  {idle} idle connections opened: the daemon has {fds} descriptors, {threads} threads")
            _healthz_latency(url, f"{idle} idle")
            for s in held:
                s.close()
            _metrics_rate(url, 1, seconds)
            _metrics_rate(url, 4, seconds)
        finally:
            proc.terminate()
            proc.wait(20)
            sim.stop()


if __name__ == "__main__":
    main()
