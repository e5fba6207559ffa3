"""Fixtures that start real things: the iFax simulator on loopback, real folders, a real
SQLite file, and the gateway either in-process (`service`) or as a `fax-gateway run`
process (`daemon`) that tests may SIGKILL and restart."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.config import load_config
from gateway.service import Service
from gateway.simulator import Simulator

REPO = Path(__file__).resolve().parent.parent


def wait_for(condition: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll with a deadline instead of sleeping a guessed amount."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


_ports_given: set[int] = set()


def free_port() -> int:
    """A port free now, and never one handed out before in this run: the kernel may give
    the same port to two binds in a row, and a configuration then asks for it twice."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port


def make_pdf(pages: int = 1, *, text: str = "") -> bytes:
    from pypdf import PdfWriter
    w = PdfWriter()
    for _ in range(pages):
        w.add_blank_page(width=612, height=792)
    if text:
        w.add_metadata({"/Title": text})
    buf = io.BytesIO()
    w.write(buf)
    return buf.getvalue()


def make_png(color: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buf, "PNG")
    return buf.getvalue()


def make_tiff(frames: int = 2) -> bytes:
    from PIL import Image
    imgs = [Image.new("1", (80, 60), i % 2) for i in range(frames)]
    buf = io.BytesIO()
    imgs[0].save(buf, "TIFF", save_all=True, append_images=imgs[1:])
    return buf.getvalue()


class Spool:
    """The folders of one outbox, and what the gateway left in them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.outbox, self.sent, self.failed = root / "outbox", root / "sent", root / "failed"
        self.private = root / ".fax-gateway-main"  # the outbox `main`'s private folder (SPEC 4.4)

    def folder(self, name: str) -> Path:
        """A (number) folder in the outbox, created as a scanner would."""
        path = self.outbox / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def results(self, where: str = "both") -> list[dict[str, Any]]:
        dirs = {"sent": [self.sent], "failed": [self.failed], "both": [self.sent, self.failed]}[where]
        out = []
        for d in dirs:
            for p in sorted(d.rglob("*.result.json")):
                doc = json.loads(p.read_text())
                doc["_path"] = p
                out.append(doc)
        return out

    def wait_results(self, n: int, where: str = "both", timeout: float = 20.0) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]] | None:
            found = self.results(where)
            return found if len(found) >= n else None
        return wait_for(enough, timeout, f"{n} result file(s) in {where}")

    def outbox_files(self) -> list[str]:
        """Visible files left in the outbox."""
        return sorted(str(p.relative_to(self.outbox)) for p in self.outbox.rglob("*")
                      if p.is_file() and ".fax-gateway" not in p.parts)


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    sim = Simulator("127.0.0.1", 0, key="test-key", delay=0.2).start()
    yield sim
    sim.stop()


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    s = Spool(tmp_path / "spool")
    for d in (s.outbox, s.sent, s.failed):
        d.mkdir(parents=True)
    return s


@pytest.fixture
def make_config(tmp_path: Path, spool: Spool, simulator: Simulator) -> Callable[..., Path]:
    """Writes a configuration for the test spool; keyword arguments override sections."""

    def make(*, api: dict | None = None, defaults: dict | None = None, outbox: dict | None = None,
             extra: dict | None = None, name: str = "config.yaml") -> Path:
        cfg: dict[str, Any] = {
            "api": {"base_url": simulator.url, "key": "test-key", "timeout": "5s",
                    "max_in_flight": 4, "requests_per_minute": 6000, **(api or {})},
            "database": str(tmp_path / "jobs.db"),
            "http": {"listen": f"127.0.0.1:{free_port()}"},
            "poll": {"interval": "0.2s"},
            "defaults": {"settle": "0.3s", "rescan": "2s", "sidecar_wait": "1.5s", **(defaults or {})},
            "outboxes": [{"name": "main", "path": str(spool.outbox), "sent": str(spool.sent),
                          "failed": str(spool.failed), **(outbox or {})}],
        }
        cfg.update(extra or {})
        path = tmp_path / name
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        path.chmod(0o600)
        return path

    return make


@pytest.fixture
def service(make_config: Callable[..., Path]) -> Iterator[Callable[..., Service]]:
    """The real service, in this process (fast); started on demand with a config."""
    started: list[Service] = []

    def start(config_path: Path | None = None, **overrides: Any) -> Service:
        svc = Service(load_config(config_path or make_config(**overrides)))
        svc.start()
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.stop()


class Daemon:
    """A `fax-gateway run` process."""

    def __init__(self, config: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = (),
                 prefix: tuple[str, ...] = ()) -> None:
        self.config = config
        self.prefix = prefix  # e.g. setpriv, to run the daemon with fewer privileges
        self.env = {**os.environ, **(env or {})}
        self.args = args
        self.proc: subprocess.Popen | None = None
        cfg = yaml.safe_load(config.read_text())
        self.url = "http://" + cfg["http"]["listen"]
        self.log = config.with_suffix(".log")

    def start(self, *, wait_healthy: bool = True, crash_at: str | None = None) -> Daemon:
        env = dict(self.env)
        env.pop("FAX_GATEWAY_CRASH_AT", None)
        if crash_at:
            env["FAX_GATEWAY_CRASH_AT"] = crash_at
        out = open(self.log, "ab")
        self.proc = subprocess.Popen([*self.prefix, sys.executable, "-m", "gateway", "run", "-c",
                                      str(self.config), *self.args],
                                     stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        out.close()
        if wait_healthy:
            wait_for(self.healthy, 20, "the daemon's /healthz")
        return self

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log.read_text()}")
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_exit(self, timeout: float = 20) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=5).text


@pytest.fixture
def daemon(make_config: Callable[..., Path]) -> Iterator[Callable[..., Daemon]]:
    made: list[Daemon] = []

    def make(config_path: Path | None = None, env: dict[str, str] | None = None,
             args: tuple[str, ...] = (), prefix: tuple[str, ...] = (), **overrides: Any) -> Daemon:
        d = Daemon(config_path or make_config(**overrides), env, args, prefix)
        made.append(d)
        return d

    yield make
    for d in made:
        d.kill()


def without_root_file_access() -> tuple[str, ...]:
    """Root reads and writes every file; without these two capabilities it obeys file modes
    like the unprivileged service user does (SPEC 4.5: test as the service user runs)."""
    import shutil
    if os.geteuid() != 0:
        return ()
    if not shutil.which("setpriv"):
        pytest.skip("setpriv is needed to drop root's file-access override")
    return ("setpriv", "--bounding-set=-dac_override,-dac_read_search")


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small filesystem of its own at `path` (made if missing), unmounted afterwards."""
    path.mkdir(exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, check=False)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def job_rows(db: Path) -> int:
    import sqlite3
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    finally:
        conn.close()


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None if it is not there."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name + ("{" + want + "}" if want else " ")):
            return float(line.rsplit(" ", 1)[1])
    return None


def run_cli(*args: str, env: dict[str, str] | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=REPO, timeout=timeout)


def sent_documents(sim: Simulator) -> list[tuple[str, bytes]]:
    """(number, decoded bytes of the first attachment) for every fax-send the API accepted."""
    import base64
    out = []
    for r in sim.requests("fax-send"):
        body = r["body"] or {}
        if r.get("job_id") is None:
            continue
        for att in body.get("faxData", []):
            out.append((body.get("faxNumber"), base64.b64decode(att["fileData"])))
    return out
