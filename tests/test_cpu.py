"""`fax-gateway run` keeps its threads on one CPU, its intake process's on another; what
it starts gets every CPU (cpu.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from conftest import make_pdf, wait_for

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                                reason="one CPU allowed: there is nothing to keep")


def _cpus(status: Path) -> str:
    for line in status.read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no Cpus_allowed_list in {status}")


def _threads(pid: int) -> dict[str, str]:
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[task.name] = _cpus(task / "status")
        except FileNotFoundError:  # a thread that just ended
            pass
    return out


def _child(pid: int, module: bytes) -> int | None:
    """The process running `python -m <module>` whose parent is `pid`."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and module in (proc / "cmdline").read_bytes() \
                    and (proc / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(pid):
                return int(proc.name)
        except OSError:
            pass
    return None


def _start(daemon, spool, tmp_path, env=None):
    record = tmp_path / "notify-cpus.txt"
    script = tmp_path / "notify.py"
    script.write_text("lines = open('/proc/self/status')\n"
                      "line = [x for x in lines if x.startswith('Cpus_allowed_list')][0]\n"
                      f"open({str(record)!r}, 'w').write(line.split(':', 1)[1].strip())\n")
    d = daemon(env=env, extra={"notify": {"command": f"{sys.executable} {script}"}}).start()
    (spool.folder("+15551231002") / "ok.pdf").write_bytes(make_pdf(1))
    (spool.folder("+15551231003") / "empty.pdf").write_bytes(b"")  # rejected: notify.command runs
    spool.wait_results(2)
    wait_for(record.exists, 10, "the notify.command's record")
    return d, record.read_text()


def test_the_daemons_threads_share_one_cpu_and_what_it_starts_gets_every_cpu(daemon, spool, tmp_path):
    everything = _cpus(Path("/proc/self/status"))
    d, notified = _start(daemon, spool, tmp_path)
    threads = _threads(d.proc.pid)
    assert len(threads) > 5 and len(set(threads.values())) == 1  # HTTP workers, stages, watchers alike
    [one] = set(threads.values())
    assert one.isdigit() and int(one) in os.sched_getaffinity(0)
    # Intake runs in a process of its own (intakeproc.py), its threads on another CPU...
    intake = wait_for(lambda: _child(d.proc.pid, b"gateway.intakeproc"), 10, "the intake process")
    intake_threads = _threads(intake)
    assert len(intake_threads) > 2 and len(set(intake_threads.values())) == 1
    [its] = set(intake_threads.values())
    assert its.isdigit() and its != one and int(its) in os.sched_getaffinity(0)
    # ...and the document reader it starts reads beside both, on every CPU.
    reader = wait_for(lambda: _child(intake, b"gateway.docreader"), 10, "the document reader")
    assert _cpus(Path(f"/proc/{reader}/status")) == everything
    assert notified == everything
    assert f"threads kept on CPU {one} of {len(os.sched_getaffinity(0))}" in d.log.read_text()


def test_with_FAX_GATEWAY_INTAKE_PROCESS_no_intake_is_a_thread_of_the_daemon(daemon, spool, tmp_path):
    everything = _cpus(Path("/proc/self/status"))
    d, notified = _start(daemon, spool, tmp_path, env={"FAX_GATEWAY_INTAKE_PROCESS": "no"})
    assert _child(d.proc.pid, b"gateway.intakeproc") is None
    reader = wait_for(lambda: _child(d.proc.pid, b"gateway.docreader"), 10, "the document reader")
    assert _cpus(Path(f"/proc/{reader}/status")) == everything
    assert notified == everything


def test_FAX_GATEWAY_ONE_CPU_no_lets_them_spread(daemon, spool, tmp_path):
    everything = _cpus(Path("/proc/self/status"))
    d, notified = _start(daemon, spool, tmp_path, env={"FAX_GATEWAY_ONE_CPU": "no"})
    assert set(_threads(d.proc.pid).values()) == {everything}
    assert notified == everything
