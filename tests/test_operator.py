"""`fax-gateway cancel` and `fax-gateway resend`: recorded by the command, carried out by
the running daemon, outcome reported within 10 seconds (SPEC 2)."""

from __future__ import annotations

import sqlite3

from conftest import make_pdf, run_cli, sent_documents, wait_for


def _drop(spool, number: str, name: str = "doc.pdf") -> bytes:
    data = make_pdf(1, text=name)
    (spool.folder(number) / name).write_bytes(data)
    return data


def _job_id(tmp_path, state: str | None = None, timeout: float = 15) -> int:
    db = sqlite3.connect(tmp_path / "jobs.db")
    sql = "SELECT id FROM jobs" + (" WHERE state=?" if state else "")

    def found():
        try:
            row = db.execute(sql, (state,) if state else ()).fetchone()
        except sqlite3.OperationalError:
            return None
        return row[0] if row else None
    return wait_for(found, timeout, f"a job in state {state}")


def test_cancel_a_sending_fax_uses_fax_cancel(make_config, service, spool, simulator, tmp_path):
    cfg = make_config()
    service(cfg)
    _drop(spool, "+15551230888")
    job = _job_id(tmp_path, "sending")
    p = run_cli("cancel", "-c", str(cfg), str(job))
    assert p.returncode == 0, p.stderr
    assert "canceled" in p.stdout
    [cancel] = simulator.requests("fax-cancel")
    [result] = spool.wait_results(1, "failed")
    assert result["state"] == "canceled" and result["recipients"][0]["state"] == "canceled"
    assert cancel["body"]["jobId"] == result["recipients"][0]["ifax_job_id"]
    assert simulator.requests("fax-resend") == []


def test_cancel_a_queued_fax_locally_never_sends_it(make_config, service, spool, simulator, tmp_path):
    cfg = make_config()
    simulator.set_fault("down", endpoints=("*",))
    service(cfg)
    _drop(spool, "+15551230901")
    job = _job_id(tmp_path, "queued")
    wait_for(lambda: simulator.requests("fax-send"), 10, "an attempt during the outage")
    p = run_cli("cancel", "-c", str(cfg), str(job))
    assert p.returncode == 0, p.stderr
    simulator.set_fault(None)
    [result] = spool.wait_results(1, "failed")
    assert result["state"] == "canceled" and result["recipients"][0]["attempts"] == 0
    assert sent_documents(simulator) == []
    assert simulator.requests("fax-cancel") == []


def test_cancel_a_delivered_job_is_refused(make_config, service, spool, simulator, tmp_path):
    cfg = make_config()
    service(cfg)
    _drop(spool, "+15551230902")
    spool.wait_results(1, "sent")
    p = run_cli("cancel", "-c", str(cfg), str(_job_id(tmp_path)))
    assert p.returncode == 1 and "delivered" in p.stderr


def test_commands_without_a_daemon_do_nothing_and_say_so(make_config, service, spool, simulator, tmp_path):
    cfg = make_config()
    svc = service(cfg)
    _drop(spool, "+15551230888")
    job = _job_id(tmp_path, "sending")
    svc.stop()
    p = run_cli("cancel", "-c", str(cfg), str(job))
    assert p.returncode == 1 and "no fax-gateway daemon is running" in p.stderr
    db = sqlite3.connect(tmp_path / "jobs.db")
    assert db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 0
    p = run_cli("resend", "-c", str(cfg), "x1")
    assert p.returncode == 2


def test_resend_takes_the_documents_back_from_failed(make_config, service, spool, simulator, tmp_path):
    cfg = make_config(defaults={"resend": {"max": 0}})
    service(cfg)
    data = _drop(spool, "+15551230777")
    [failed] = spool.wait_results(1, "failed")
    p = run_cli("resend", "-c", str(cfg), str(failed["job"]))
    assert p.returncode == 0, p.stderr
    [result] = spool.wait_results(1, "sent")
    assert result["job"] == failed["job"]
    [resend] = simulator.requests("fax-resend")
    assert resend["body"]["jobId"] == failed["recipients"][0]["ifax_job_id"]
    assert result["recipients"][0]["attempts"] == 2
    assert (spool.sent / "+15551230777" / "doc.pdf").read_bytes() == data
    assert spool.results("failed") == [] and not (spool.failed / "+15551230777" / "doc.pdf").exists()


def test_resend_goes_only_to_recipients_that_did_not_get_it(make_config, service, spool, simulator):
    cfg = make_config(defaults={"resend": {"max": 0}})
    service(cfg)
    (spool.outbox / "two.pdf.yaml").write_text("to: ['+15551230903', '+15551230777']\n")
    (spool.outbox / "two.pdf").write_bytes(make_pdf(1))
    [failed] = spool.wait_results(1, "failed")
    p = run_cli("resend", "-c", str(cfg), str(failed["job"]))
    assert p.returncode == 0, p.stderr
    [result] = spool.wait_results(1, "sent")
    assert [r["state"] for r in result["recipients"]] == ["delivered", "delivered"]
    assert [r["attempts"] for r in result["recipients"]] == [1, 2]
    assert len(simulator.requests("fax-send")) == 2 and len(simulator.requests("fax-resend")) == 1


def test_resend_of_a_fax_ifax_never_accepted_uses_fax_send(make_config, service, spool, simulator):
    cfg = make_config()
    service(cfg)
    simulator.set_fault("refuse_all", endpoints=("fax-send",), count=1, message="Invalid fax number")
    data = _drop(spool, "+15551230904")
    [failed] = spool.wait_results(1, "failed")
    assert failed["recipients"][0]["message"] == "Invalid fax number"
    p = run_cli("resend", "-c", str(cfg), str(failed["job"]))
    assert p.returncode == 0, p.stderr
    spool.wait_results(1, "sent")
    assert simulator.requests("fax-resend") == []
    assert sent_documents(simulator) == [("+15551230904", data)]


def test_resend_refusals(make_config, service, spool, simulator):
    cfg = make_config(defaults={"resend": {"max": 0}})
    service(cfg)
    _drop(spool, "+15551230666")
    (spool.folder("+15551230905") / "empty.pdf").write_bytes(b"")
    results = spool.wait_results(2, "failed")
    rejected = next(r for r in results if r["state"] == "rejected")
    failed = next(r for r in results if r["state"] == "failed")
    p = run_cli("resend", "-c", str(cfg), str(rejected["job"]))
    assert p.returncode == 1 and "rejected" in p.stderr
    (spool.failed / "+15551230666" / "doc.pdf").unlink()
    p = run_cli("resend", "-c", str(cfg), str(failed["job"]))
    assert p.returncode == 1 and "gone from failed/" in p.stderr
    assert simulator.requests("fax-resend") == []
    p = run_cli("resend", "-c", str(cfg), "999")
    assert p.returncode == 1 and "no job 999" in p.stderr


# -- kill and restart ------------------------------------------------------------------

def test_sigkill_while_taking_documents_back_from_failed(daemon, make_config, spool, simulator):
    cfg = make_config(defaults={"resend": {"max": 0}})
    d = daemon(cfg)
    d.start(crash_at="unfiling")
    (spool.outbox / "pair.pdf.yaml").write_text("+15551230777\n")
    (spool.outbox / "pair.pdf").write_bytes(make_pdf(1))
    [failed] = spool.wait_results(1, "failed")
    run_cli("resend", "-c", str(cfg), str(failed["job"]))
    assert d.wait_exit(timeout=30) == -9
    d.start()
    [result] = spool.wait_results(1, "sent")
    assert sorted(result["files"]) == ["pair.pdf", "pair.pdf.yaml"]
    assert len(simulator.requests("fax-resend")) == 1 and len(simulator.requests("fax-send")) == 1
    assert list(spool.failed.iterdir()) == [] and spool.outbox_files() == []


def test_sigkill_after_fax_cancel_before_it_was_stored(daemon, make_config, spool, simulator, tmp_path):
    cfg = make_config()
    d = daemon(cfg)
    d.start(crash_at="canceled")
    _drop(spool, "+15551230888")
    job = _job_id(tmp_path, "sending")
    run_cli("cancel", "-c", str(cfg), str(job))
    assert d.wait_exit(timeout=30) == -9
    d.start()
    [result] = spool.wait_results(1, "failed")
    assert result["state"] == "canceled"
    assert len(simulator.requests("fax-send")) == 1
