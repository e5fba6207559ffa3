"""SIGHUP reloads the configuration (SPEC 10, issue 9): outboxes added, removed, renamed
and changed under load, with nothing lost and nothing sent twice; a file that cannot be
applied is refused in one log line and the running configuration kept."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Daemon, free_port, make_pdf, sent_documents, wait_for

from gateway.config import load_config
from gateway.reload import ReloadRefused, plan_reload, watching_changed


def _outbox(root: Path, name: str, folder: str | None = None, **extra: Any) -> dict[str, Any]:
    base = root / (folder or name)
    for sub in ("outbox", "sent", "failed"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    return {"name": name, "path": str(base / "outbox"), "sent": str(base / "sent"),
            "failed": str(base / "failed"), **extra}


def _write(config: Path, doc: dict[str, Any]) -> None:
    tmp = config.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.chmod(0o600)
    tmp.replace(config)


def _hup_and_wait(d: Daemon, text: str, count: int = 1) -> None:
    """SIGHUP, then wait for the `count`-th log line containing `text`."""
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: d.log.read_text().count(text) >= count, 20, f"{count} x {text!r} in the log")


def _results(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.result.json"))


@pytest.fixture
def base(tmp_path: Path, simulator) -> dict[str, Any]:
    return {
        "api": {"base_url": simulator.url, "key": "test-key", "timeout": "5s", "max_in_flight": 4,
                "requests_per_minute": 6000},
        "database": str(tmp_path / "jobs.db"),
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "poll": {"interval": "0.2s"},
        "defaults": {"settle": "0.3s", "rescan": "2s", "sidecar_wait": "1.5s"},
        "outboxes": [],
    }


def test_reload_under_load_loses_and_doubles_nothing(tmp_path: Path, base, simulator, daemon):
    root = tmp_path / "spool"
    a, b = _outbox(root, "alpha"), _outbox(root, "beta")
    base["outboxes"] = [a, b]
    config = tmp_path / "config.yaml"
    _write(config, base)
    simulator.set_fault("slow", endpoints=("fax-send",), seconds=0.7)  # submissions stay in flight
    d = daemon(config).start()

    documents: dict[bytes, Path] = {}  # content -> where its result must appear

    def drop(ob: dict[str, Any], number: str, n: int, tag: str) -> None:
        folder = Path(ob["path"]) / number
        folder.mkdir(exist_ok=True)
        for i in range(n):
            data = make_pdf(1, text=f"{tag}-{i}")
            (folder / f"{tag}-{i}.pdf").write_bytes(data)
            documents[data] = Path(ob["sent"])

    drop(a, "+15551239001", 6, "a1")
    drop(b, "+15551239002", 6, "b1")
    wait_for(lambda: len(simulator.requests("fax-send")) >= 2, 20, "faxes in flight")

    # 1. beta removed, alpha renamed to alpha2 (same folders), gamma added, defaults changed.
    c = _outbox(root, "gamma")
    renamed = {**a, "name": "alpha2"}
    base["outboxes"] = [renamed, c]
    base["defaults"] = {**base["defaults"], "max_pages": 50, "quality": "HD"}
    _write(config, base)
    _hup_and_wait(d, "configuration reloaded")
    drop(renamed, "+15551239003", 4, "a2")
    drop(c, "+15551239004", 4, "c1")

    # 2. An invalid file in between: refused in one line, the running configuration kept.
    config.write_text("outboxes: [\n")
    _hup_and_wait(d, "reload refused")
    drop(c, "+15551239005", 2, "c2")
    # Files still waiting in a folder that stops being an outbox stay there: wait for the claims.
    wait_for(lambda: not [p for p in Path(c["path"]).rglob("*") if p.is_file()], 20, "gamma's claims")

    # 3. beta comes back, gamma's folders move (the same name, a new path).
    moved = _outbox(root, "gamma", folder="gamma-moved")
    base["outboxes"] = [renamed, moved, b]
    _write(config, base)
    _hup_and_wait(d, "configuration reloaded", 2)
    drop(moved, "+15551239006", 3, "g2")
    drop(b, "+15551239007", 3, "b2")

    simulator.set_fault(None)
    expected = Counter(str(folder) for folder in documents.values())
    wait_for(lambda: all(len(_results(Path(f))) >= n for f, n in expected.items()), 90,
             "every document filed")
    sent = Counter(data for _, data in sent_documents(simulator))
    assert set(sent) == set(documents), "a document was lost"
    assert max(sent.values()) == 1, "a document was sent twice"
    for folder, n in expected.items():
        assert len(_results(Path(folder))) == n, folder  # each filed where its outbox said
    for ob in (a, b, c, moved):
        assert list(Path(ob["failed"]).iterdir()) == []
        assert [p for p in Path(ob["path"]).rglob("*") if p.is_file()] == []
    log = d.log.read_text()
    [refused] = [line for line in log.splitlines() if "reload refused" in line]
    assert "config.yaml" in refused and "line" in refused  # which file, which line
    assert "Traceback" not in log
    metrics = d.metrics()
    assert 'outbox="alpha2"' in metrics and 'fax_gateway_files_waiting{outbox="alpha"}' not in metrics
    assert d.terminate() == 0


def test_changes_that_need_a_restart_are_refused(tmp_path: Path, base, simulator, daemon):
    a = _outbox(tmp_path / "spool", "main")
    base["outboxes"] = [a]
    config = tmp_path / "config.yaml"
    _write(config, base)
    d = daemon(config).start()
    for key, value, says in (("database", str(tmp_path / "other.db"), "database changed"),
                             ("http", {"listen": f"127.0.0.1:{free_port()}"}, "http.listen changed"),
                             ("http", {**base["http"], "status_listen": f"127.0.0.1:{free_port()}"},
                              "http.status_listen changed from null")):
        _write(config, {**base, key: value, "defaults": {**base["defaults"], "settle": "5s"}})
        _hup_and_wait(d, says)
    assert not (tmp_path / "other.db").exists()
    # Nothing of the refused files was applied: settle is still 0.3 s, the port the same.
    folder = Path(a["path"]) / "+15551239101"
    folder.mkdir()
    (folder / "x.pdf").write_bytes(make_pdf(1))
    wait_for(lambda: len(_results(Path(a["sent"]))) == 1, 20, "the fax sent with the old settings")
    assert d.healthy()
    assert d.log.read_text().count("reload refused") == 3
    assert d.terminate() == 0


def test_reload_tells_systemd_reloading_then_ready(tmp_path: Path, base, simulator, daemon):
    base["outboxes"] = [_outbox(tmp_path / "spool", "main")]
    config = tmp_path / "config.yaml"
    _write(config, base)
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(20)
    try:
        def next_message() -> str:
            while (message := sock.recv(4096).decode()).startswith("WATCHDOG"):
                pass
            return message

        d = daemon(config, env={"NOTIFY_SOCKET": address}).start()
        assert next_message() == "READY=1"
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        reloading = next_message()
        assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=")
        usec = int(reloading.split("MONOTONIC_USEC=")[1])
        assert abs(usec / 1e6 - time.monotonic()) < 30  # CLOCK_MONOTONIC, as systemd wants it
        assert next_message() == "READY=1"
        assert d.terminate() == 0
    finally:
        sock.close()


def test_the_unit_checks_the_file_before_it_signals():
    unit = (Path(__file__).parent.parent / "systemd" / "fax-gateway.service").read_text()
    reloads = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecReload=")]
    assert len(reloads) == 2
    assert "check-config" in reloads[0] and "-c /etc/fax-gateway/config.yaml" in reloads[0]
    assert reloads[1] == "/bin/kill -HUP $MAINPID"


# -- the plan, as a pure function -------------------------------------------------------


def _config(tmp_path: Path, base: dict[str, Any], outboxes: list[dict[str, Any]], **top: Any):
    path = tmp_path / "plan.yaml"
    _write(path, {**base, "outboxes": outboxes, **top})
    return load_config(path)


def test_plan_names_what_was_added_removed_and_changed(tmp_path: Path, base):
    root = tmp_path / "spool"
    a, b, c = _outbox(root, "a"), _outbox(root, "b"), _outbox(root, "c")
    old = _config(tmp_path, base, [a, b])
    current = {o.name: o for o in old.outboxes}
    new = _config(tmp_path, base, [{**a, "number": "+15551230000"}, c])
    plan = plan_reload(old, new, current, {}, lambda o: o)
    assert (plan.added, plan.removed, plan.changed) == (("c",), ("b",), ("a",))
    assert plan.retired == {"b": current["b"]} and set(plan.known) == {"a", "b", "c"}
    assert not plan.api_changed
    assert not watching_changed(current["a"], plan.outboxes["a"])  # a number needs no new watcher
    # b comes back: no longer retired, and its jobs take its new settings.
    again = plan_reload(new, old, plan.outboxes, plan.retired, lambda o: o)
    assert again.added == ("b",) and again.retired == {"c": plan.outboxes["c"]}


def test_plan_refuses_database_and_listen_and_sees_api_changes(tmp_path: Path, base):
    ob = _outbox(tmp_path / "spool", "a")
    old = _config(tmp_path, base, [ob])
    with pytest.raises(ReloadRefused, match="database changed"):
        plan_reload(old, _config(tmp_path, base, [ob], database=str(tmp_path / "x.db")), {}, {}, lambda o: o)
    with pytest.raises(ReloadRefused, match="http.listen changed"):
        plan_reload(old, _config(tmp_path, base, [ob], http={"listen": "127.0.0.1:1"}), {}, {}, lambda o: o)
    with pytest.raises(ReloadRefused, match="http.status_listen changed from null to 127.0.0.1:1"):
        plan_reload(old, _config(tmp_path, base, [ob], http={**base["http"], "status_listen": "127.0.0.1:1"}),
                    {}, {}, lambda o: o)
    faster = _config(tmp_path, base, [ob], api={**base["api"], "timeout": "9s"})
    assert plan_reload(old, faster, {}, {}, lambda o: o).api_changed


def test_a_new_key_by_reload_resumes_a_paused_account(tmp_path: Path, base, simulator, daemon):
    """The key is read again at each reload (a rotated credential); a pause for a refused
    account is probed at once with the new one."""
    ob = _outbox(tmp_path / "spool", "main")
    key_file = tmp_path / "api-key"
    key_file.write_text("wrong-key\n")
    key_file.chmod(0o600)
    base["api"] = {**base["api"], "key": None, "key_file": str(key_file)}
    base["outboxes"] = [ob]
    config = tmp_path / "config.yaml"
    _write(config, base)
    d = daemon(config).start(wait_healthy=False)
    folder = Path(ob["path"]) / "+15551239301"
    folder.mkdir()
    (folder / "x.pdf").write_bytes(make_pdf(1))
    wait_for(lambda: "submissions paused" in d.log.read_text(), 20, "the account refused")
    key_file.write_text("test-key\n")
    _hup_and_wait(d, "configuration reloaded")
    wait_for(lambda: len(_results(Path(ob["sent"]))) == 1, 20, "the fax sent with the new key")
    log = d.log.read_text()
    assert "wrong-key" not in log and "test-key" not in log
    assert d.terminate() == 0


def test_a_reload_with_a_new_rate_grants_no_fresh_burst(service, spool, simulator, make_config):
    """requests_per_minute changed by a reload: what was spent under the old rate stays
    spent, so the requests that just left and those right after the reload together keep
    to the rate (a new, full bucket would let a second's worth more leave at once)."""
    config = make_config(api={"requests_per_minute": 6})  # a bucket of one, refilled every 10 s
    svc = service(config)
    (spool.folder("+15551230740") / "a.pdf").write_bytes(make_pdf(1))
    wait_for(lambda: len(simulator.requests("fax-send")) == 1, 15, "the fax sent, spending the token")
    config.write_text(config.read_text().replace("requests_per_minute: 6\n", "requests_per_minute: 12\n"))
    assert svc.reload()
    assert svc.dispatcher.limiter.rate == pytest.approx(12 / 60)
    assert svc.dispatcher.limiter.try_acquire() > 0  # still spent: the next request waits for the new pace


def test_the_workers_a_reload_replaced_still_take_what_was_handed_to_them(service, make_config):
    """The sending loop takes its pool, then hands it a request (its intent committed): a
    reload that swaps the pool in between must not leave that request "not sent" and its
    round stranded.  The replaced workers stay open until the daemon stops."""
    config = make_config(api={"timeout": "5s"})
    svc = service(config)
    old = svc.dispatcher._pool
    config.write_text(config.read_text().replace("timeout: 5s\n", "timeout: 6s\n"))  # a new client
    assert svc.reload()
    assert svc.dispatcher._pool is not old
    ran = threading.Event()
    old.submit(ran.set)  # what a launch that took the old pool just before the swap does next
    assert ran.wait(5)
    svc.stop()
    assert not any(t.is_alive() for t in old._threads)  # closed and joined at the stop
