"""max_faxes_per_hour: a rolling hour per outbox, resends counted; beyond it submissions
wait (nothing fails, nothing is lost across restarts), /healthz stays 200 and says so, and
fax_gateway_rate_limited{outbox} is 1 (SPEC 3, 8; issue 8 point 4)."""

from __future__ import annotations

import sqlite3

import httpx
from conftest import make_pdf, metric_value, wait_for


def _drop(spool, number: str, name: str = "doc.pdf") -> None:
    (spool.folder(number) / name).write_bytes(make_pdf(1, text=number + name))


def _health(d) -> dict:
    r = httpx.get(d.url + "/healthz", timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def test_beyond_the_cap_faxes_wait_across_restarts_and_go_once_the_hour_has_room(
        daemon, spool, simulator, tmp_path):
    d = daemon(defaults={"max_faxes_per_hour": 2}).start()
    text = d.metrics()
    assert metric_value(text, "fax_gateway_rate_limited", outbox="main") == 0  # created at 0
    for i in range(3):
        _drop(spool, f"+1555123060{i}")
    spool.wait_results(2, "sent")
    [entry] = wait_for(lambda: _health(d).get("rate_limited"), 15, "healthz to say rate_limited")
    assert entry["outbox"] == "main" and entry["max_faxes_per_hour"] == 2
    assert _health(d)["status"] == "ok"
    assert metric_value(d.metrics(), "fax_gateway_rate_limited", outbox="main") == 1
    assert len(simulator.requests("fax-send")) == 2
    db = sqlite3.connect(tmp_path / "jobs.db")
    assert db.execute("SELECT state FROM jobs ORDER BY id").fetchall()[-1] == ("queued",)

    d.kill()  # the count comes from the database: a restart does not reset the hour
    d.start()
    wait_for(lambda: _health(d).get("rate_limited"), 15, "healthz to say rate_limited after the restart")
    assert len(simulator.requests("fax-send")) == 2 and len(spool.results()) == 2

    d.kill()
    with db:  # the hour passes (for the database: the submissions were two hours ago)
        db.execute("UPDATE submissions SET at = at - 7200")
    d.start()
    spool.wait_results(3, "sent")
    assert len(simulator.requests("fax-send")) == 3
    wait_for(lambda: "rate_limited" not in _health(d), 10, "rate_limited to clear")
    assert metric_value(d.metrics(), "fax_gateway_rate_limited", outbox="main") == 0
    assert d.terminate() == 0


def test_resends_count_toward_the_cap(service, spool, simulator, tmp_path):
    svc = service(defaults={"max_faxes_per_hour": 1, "resend": {"max": 2, "delay": "0.1s"}})
    _drop(spool, "+15551230777")  # fails once; its resend would be the second fax this hour
    wait_for(lambda: svc.dispatcher.rate_limited, 15, "the resend to be held back")
    ok, body = svc.health()
    assert ok and [e["outbox"] for e in body["rate_limited"]] == ["main"]
    assert metric_value(svc.metrics.render().decode(), "fax_gateway_rate_limited", outbox="main") == 1
    assert simulator.requests("fax-resend") == [] and spool.results() == []
    db = sqlite3.connect(tmp_path / "jobs.db")
    assert db.execute("SELECT state FROM recipients").fetchone() == ("retry_wait",)


def test_each_outbox_has_its_own_cap(service, spool, simulator, tmp_path):
    other = tmp_path / "other"
    for d in ("outbox", "sent", "failed"):
        (other / d).mkdir(parents=True)
    main = {"name": "main", "path": str(spool.outbox), "sent": str(spool.sent), "failed": str(spool.failed),
            "max_faxes_per_hour": 1}
    free = {"name": "free", "path": str(other / "outbox"), "sent": str(other / "sent"),
            "failed": str(other / "failed")}
    svc = service(extra={"outboxes": [main, free]})
    for i in range(2):
        _drop(spool, f"+1555123061{i}")
        (other / "outbox" / f"+1555123062{i}").mkdir()
        (other / "outbox" / f"+1555123062{i}" / "doc.pdf").write_bytes(make_pdf(1, text=f"free{i}"))
    wait_for(lambda: len(list((other / "sent").rglob("*.result.json"))) == 2, 15, "the free outbox's faxes")
    wait_for(lambda: svc.dispatcher.rate_limited, 15, "main's second fax to be held back")
    assert list(svc.dispatcher.rate_limited) == ["main"]
    text = svc.metrics.render().decode()
    assert metric_value(text, "fax_gateway_rate_limited", outbox="main") == 1
    assert metric_value(text, "fax_gateway_rate_limited", outbox="free") == 0
    wait_for(lambda: len(spool.results()) == 1, 15, "main's first fax filed")  # it may still be sending
    assert len(simulator.requests("fax-send")) == 3  # two of free's, one of main's


def test_the_key_is_accepted_in_defaults_and_on_an_outbox(make_config):
    from gateway.config import load_config
    config = load_config(make_config(defaults={"max_faxes_per_hour": 30}, outbox={"max_faxes_per_hour": 5}))
    assert config.outboxes[0].max_faxes_per_hour == 5
    config = load_config(make_config(defaults={"max_faxes_per_hour": 30}))
    assert config.outboxes[0].max_faxes_per_hour == 30
