"""`fax-gateway run` takes documents in an intake process of its own (intakeproc.py):
it dies with the daemon, is started again when it dies alone, is stopped with it, gets
reloads and no secrets, and reports its health, paused outboxes and metrics to the
daemon's /healthz and /metrics.  Every test drives the real two-process daemon."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import make_pdf, metric_value, sent_documents, wait_for, without_root_file_access


@pytest.fixture(autouse=True)
def _apart(monkeypatch):
    """Two processes here even where `run` would not make them (one CPU allowed)."""
    monkeypatch.setenv("FAX_GATEWAY_INTAKE_PROCESS", "yes")


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(b")", 1)[1].split()
        if int(fields[1]) == pid and b"gateway.intakeproc" in cmdline and fields[0] != b"Z":
            out.append(int(entry))
    return out


def _with_outbox(d, root: Path, name: str, *, made: bool = True) -> Path:
    """The daemon's configuration file with one more outbox, in root/outbox, sent, failed
    (folders `made`), for the next reload."""
    if made:
        for sub in ("outbox", "sent", "failed"):
            (root / sub).mkdir(parents=True)
    cfg = yaml.safe_load(d.config.read_text())
    cfg["outboxes"].append({"name": name, "path": str(root / "outbox"), "sent": str(root / "sent"),
                            "failed": str(root / "failed")})
    d.config.write_text(yaml.safe_dump(cfg))
    return root


def _intake_of(d) -> int:
    return wait_for(lambda: (_children(d.proc.pid) or [None])[0], 15, "the intake process")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in (b"Z", b"X")


def _health(d) -> tuple[int, dict]:
    r = httpx.get(d.url + "/healthz", timeout=5)
    return r.status_code, r.json()


def _drop(spool, number: str, names: list[str]) -> dict[str, bytes]:
    folder = spool.folder(number)
    datas = {}
    for name in names:
        datas[name] = make_pdf(1, text=f"{number} {name}")
        (folder / name).write_bytes(datas[name])
    return datas


def _sent_once(simulator, datas: dict[str, bytes]) -> None:
    sent = [data for _, data in sent_documents(simulator)]
    for name, data in datas.items():
        assert sent.count(data) == 1, f"{name} was sent {sent.count(data)} times"


def test_intake_runs_in_a_process_of_its_own_that_ends_with_the_daemon(daemon, spool, simulator):
    d = daemon().start()
    child = _intake_of(d)
    assert child != d.proc.pid
    datas = _drop(spool, "+15551230401", ["a.pdf"])
    [result] = spool.wait_results(1, "sent")
    assert result["state"] == "delivered"
    _sent_once(simulator, datas)
    # Its documents are claimed by the child: its threads, not the daemon's, took them.
    assert d.terminate() == 0
    wait_for(lambda: not _alive(child), 10, "the intake process to end with the daemon")


def test_sigkill_of_the_daemon_takes_its_intake_process_with_it(daemon, spool, simulator):
    d = daemon().start()
    child = _intake_of(d)
    datas = _drop(spool, "+15551230402", [f"d{i}.pdf" for i in range(30)])
    wait_for(lambda: len(list(spool.private.rglob("*.pdf"))) > 0 or spool.results(), 15, "a claim")
    d.kill()
    wait_for(lambda: not _alive(child), 5, "the intake process to die with the daemon")
    d.start()
    # Each document filed once; one whose request was under way is uncertain, never sent
    # again (SPEC 6.3), and filed in failed/.
    results = spool.wait_results(30, timeout=60)
    assert sorted(f for r in results for f in r["files"]) == sorted(datas)
    assert all(r["state"] == "delivered" or "outcome of the submission is unknown" in r["reason"]
               for r in results)
    sent = [data for _, data in sent_documents(simulator)]
    assert all(sent.count(data) <= 1 for data in datas.values())
    assert spool.outbox_files() == []


def test_an_intake_process_killed_alone_is_started_again_and_loses_nothing(daemon, spool, simulator):
    d = daemon().start()
    first = _intake_of(d)
    datas = _drop(spool, "+15551230403", [f"k{i}.pdf" for i in range(40)])
    wait_for(lambda: len(list(spool.private.rglob("*.pdf"))) > 0 or spool.results(), 15, "a claim")
    os.kill(first, signal.SIGKILL)

    def reported():
        code, body = _health(d)
        return body if code == 503 else None
    body = wait_for(reported, 10, "/healthz to say intake is down")
    assert any("the intake loop is not running" in r and "killed by SIGKILL" in r for r in body["reasons"])
    second = wait_for(lambda: [c for c in _children(d.proc.pid) if c != first] or None, 15,
                      "a new intake process")[0]
    wait_for(lambda: _health(d)[0] == 200, 15, "healthy again")
    assert d.proc.poll() is None, "the daemon itself went on"
    more = _drop(spool, "+15551230404", ["after.pdf"])
    spool.wait_results(41, "sent", timeout=60)
    _sent_once(simulator, {**datas, **more})
    assert _alive(second)
    assert "the intake process is not running (it was killed by SIGKILL)" in d.log.read_text()


def test_a_crash_point_in_the_intake_process_kills_the_whole_daemon(daemon, spool, simulator):
    d = daemon()
    d.start(crash_at="judged")
    child = _intake_of(d)
    datas = _drop(spool, "+15551230405", ["a.pdf"])
    assert d.wait_exit() == -9, "the daemon did not die with its intake process"
    wait_for(lambda: not _alive(child), 5, "the intake process gone")
    d.start()
    spool.wait_results(1, "sent")
    _sent_once(simulator, datas)


def test_the_intake_process_gets_no_secret(daemon, spool, simulator, tmp_path):
    d = daemon(env={"IFAX_API_KEY": "test-key"}, api={"key": None}).start()  # the simulator's key
    child = _intake_of(d)
    environ = Path(f"/proc/{child}/environ").read_bytes()
    assert b"IFAX_API_KEY" not in environ and b"test-key" not in environ
    assert b"test-key" not in Path(f"/proc/{child}/cmdline").read_bytes()
    assert b"NOTIFY_SOCKET" not in environ
    _drop(spool, "+15551230406", ["a.pdf"])
    spool.wait_results(1, "sent")
    assert "test-key" not in d.log.read_text()


def test_sigterm_stops_the_intake_process_first_and_a_reload_reaches_it(daemon, spool, simulator, tmp_path):
    d = daemon().start()
    child = _intake_of(d)
    second = _with_outbox(d, tmp_path / "second", "second")
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in d.log.read_text(), 10, "the reload")
    folder = second / "outbox" / "+15551230407"
    folder.mkdir()
    data = make_pdf(1, text="second outbox")
    (folder / "a.pdf").write_bytes(data)
    wait_for(lambda: list((second / "sent").rglob("*.result.json")), 20, "the new outbox's document sent")
    assert sent_documents(simulator) == [("+15551230407", data)]
    assert _children(d.proc.pid) == [child], "a reload does not start another intake process"
    assert d.terminate() == 0
    assert not _alive(child)


def test_intakes_metrics_and_paused_outboxes_reach_the_daemon(daemon, spool, simulator):
    d = daemon().start()
    _intake_of(d)
    (spool.folder("+15551230408") / "bad.pdf").write_bytes(b"not a pdf at all")
    _drop(spool, "+15551230408", ["good.pdf"])
    spool.wait_results(2)
    text = d.metrics()
    assert metric_value(text, "fax_gateway_files_detected_total", outbox="main") == 2
    assert metric_value(text, "fax_gateway_files_rejected_total", outbox="main",
                        reason="unsupported_type") == 1
    spool.sent.rename(spool.sent.with_name("sent-gone"))

    def paused():
        code, body = _health(d)
        return body if code == 503 and any("sent folder" in r for r in body.get("reasons", ())) else None
    wait_for(paused, 15, "/healthz to report the paused outbox")
    assert metric_value(d.metrics(), "fax_gateway_outbox_paused", outbox="main") == 1
    spool.sent.with_name("sent-gone").rename(spool.sent)
    wait_for(lambda: _health(d)[0] == 200, 15, "resumed")


def test_the_two_processes_run_as_the_service_user(daemon, spool, simulator, tmp_path):
    prefix = without_root_file_access()
    if not prefix:
        pytest.skip("runs as root only: it drops root's file-access override")
    d = daemon(prefix=prefix).start()
    child = _intake_of(d)
    caps = Path(f"/proc/{child}/status").read_text()
    bounding = int(next(line for line in caps.splitlines() if line.startswith("CapBnd:")).split()[1], 16)
    assert not bounding & (1 << 1 | 1 << 2), "the intake process kept the DAC capabilities"
    (spool.folder("+15551230409") / "locked.pdf").write_bytes(make_pdf(1))
    os.chmod(spool.folder("+15551230409") / "locked.pdf", 0o000)
    datas = _drop(spool, "+15551230410", ["open.pdf"])
    spool.wait_results(1, "sent")
    _sent_once(simulator, datas)
    # Root's intake process would read it: the service user's rejects it (SPEC 4.5).
    [rejected] = spool.wait_results(1, "failed")
    assert rejected["files"] == ["locked.pdf"] and rejected["reason_code"] == "unreadable"
    more = _drop(spool, "+15551230411", ["next.pdf"])
    spool.wait_results(2, "sent")
    _sent_once(simulator, more)


def _syscalls(names: list[str]) -> set[str]:
    """System calls named, `@groups` expanded by systemd's own `systemd-analyze`."""
    import shutil
    import subprocess
    tool = shutil.which("systemd-analyze")
    if not tool:
        pytest.skip("systemd-analyze is needed to expand the unit's system call groups")
    out: set[str] = set()
    for name in names:
        if not name.startswith("@"):
            out.add(name)
            continue
        text = subprocess.run([tool, "syscall-filter", name], capture_output=True, text=True,
                              check=True).stdout
        for line in text.splitlines()[1:]:
            word = line.strip()
            if word and not word.startswith("#"):
                out |= _syscalls([word]) if word.startswith("@") else {word}
    return out


def test_the_unit_lets_both_processes_make_the_calls_they_need():
    """SystemCallFilter= as systemd.exec(5) merges it: the first line is an allow list,
    a later `~` line removes from it, a later plain line adds back."""
    unit = (Path(__file__).resolve().parent.parent / "systemd" / "fax-gateway.service").read_text()
    allowed: set[str] = set()
    lines = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("SystemCallFilter=")]
    for value in lines:
        deny = value.startswith("~")
        names = _syscalls(value.lstrip("~").split())
        allowed = allowed - names if deny else allowed | names
    # the intake process: a socket to the daemon, dying with it, its own CPU
    assert {"socketpair", "prctl", "sched_setaffinity", "sched_getaffinity", "execve", "clone"} <= allowed
    assert not {"setrlimit", "setpriority", "mount", "reboot"} & allowed  # still denied


def test_what_the_intake_process_is_given_holds_no_secret(make_config):
    import pickle

    from gateway.config import load_config
    from gateway.intakeproc import without_secrets
    from gateway.reload import Reload
    config = load_config(make_config(api={"key": "sk-never-in-intake-7c1d"},
                                     extra={"webhook": {"enabled": True, "secret": "whsec-never-4e2b"}}))
    assert b"sk-never-in-intake-7c1d" in pickle.dumps(config)  # (the test would see one)
    for given in (without_secrets(config), without_secrets(Reload(config, {}, {}))):
        data = pickle.dumps(given)
        assert b"sk-never-in-intake-7c1d" not in data and b"whsec-never-4e2b" not in data
    assert without_secrets(config).outboxes == config.outboxes


def test_a_reload_while_the_intake_process_is_down_reaches_the_next_one(daemon, spool, simulator, tmp_path):
    d = daemon().start()
    first = _intake_of(d)
    second = _with_outbox(d, tmp_path / "second", "second")
    os.kill(first, signal.SIGKILL)
    d.proc.send_signal(signal.SIGHUP)  # before a new intake process starts (1 s later)
    wait_for(lambda: "configuration reloaded" in d.log.read_text(), 15, "the reload")
    wait_for(lambda: [c for c in _children(d.proc.pid) if c != first] or None, 15, "a new intake process")
    folder = second / "outbox" / "+15551230412"
    folder.mkdir()
    data = make_pdf(1, text="after the restart")
    (folder / "a.pdf").write_bytes(data)
    wait_for(lambda: list((second / "sent").rglob("*.result.json")), 20, "the new outbox's document sent")
    assert sent_documents(simulator) == [("+15551230412", data)]


def test_intakes_metrics_travel_as_changes_and_add_up_in_the_daemon():
    """The intake process sends what changed since its last report (intakeproc._Relay);
    the daemon's Metrics adds counters up and sets gauges, not those of unknown outboxes."""
    from gateway.intakeproc import IntakeProcess, _Relay
    from gateway.metrics import Metrics
    metrics = Metrics(["main"])
    daemon_side = IntakeProcess(lock_fd=-1, metrics=metrics, paused={}, folders=dict,
                                on_judged=lambda: None, on_idle=lambda: None)
    relay = _Relay()
    relay.count(relay.files_detected, "main", amount=3)
    relay.files_rejected.labels("main", "unreadable").inc()
    relay.files_waiting.labels("main").set(5)
    relay.files_waiting.labels("gone").set(7)
    daemon_side._apply_metrics(relay.take())
    relay.files_waiting.labels("main").set(5)  # as reported: nothing to send
    relay.count(relay.files_detected, "main", amount=2)
    second = relay.take()
    assert second["gauges"] == [] and not relay.changed
    daemon_side._apply_metrics(second)
    text = metrics.render().decode()
    assert metric_value(text, "fax_gateway_files_detected_total", outbox="main") == 5
    assert metric_value(text, "fax_gateway_files_rejected_total", outbox="main", reason="unreadable") == 1
    assert metric_value(text, "fax_gateway_files_waiting", outbox="main") == 5
    assert metric_value(text, "fax_gateway_files_waiting", outbox="gone") is None


def test_gauges_of_an_outbox_a_reload_adds_reach_the_daemon(daemon, spool, simulator, tmp_path):
    """The intake process sets the new outbox's gauges once the daemon has made them:
    an outbox added with a missing folder is paused in /metrics as in /healthz."""
    d = daemon().start()
    _intake_of(d)
    _with_outbox(d, tmp_path / "late", "late", made=False)  # its folders' parent does not exist: it pauses
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: any("late" in r for r in _health(d)[1].get("reasons", ())), 15, "the new outbox paused")
    wait_for(lambda: metric_value(d.metrics(), "fax_gateway_outbox_paused", outbox="late") == 1, 15,
             "the paused gauge of the new outbox")


def test_reports_that_cannot_be_used_are_logged_once_not_each_time(caplog):
    """The daemon serves its intake process's reports whatever they hold: one it cannot
    use is logged once (quietlog), however often it comes, and serving goes on."""
    import socket
    from multiprocessing.connection import Connection

    from gateway.intakeproc import IntakeProcess
    from gateway.metrics import Metrics
    ours, theirs = socket.socketpair()
    served = IntakeProcess(lock_fd=-1, metrics=Metrics(["main"]), paused={}, folders=dict,
                           on_judged=lambda: None, on_idle=lambda: None)
    sender = Connection(theirs.detach())
    for _ in range(50):
        sender.send_bytes(b'{"not": "a report"}')
    sender.close()
    with caplog.at_level("ERROR", logger="gateway.intake"):
        served._serve(Connection(ours.detach()))  # returns at the end of the socket
    assert len([r for r in caplog.records if "could not be used" in r.getMessage()]) == 1
