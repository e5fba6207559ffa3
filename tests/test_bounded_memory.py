"""What the daemon keeps in memory per job is kept only while the job goes on, so a
daemon that has finished a million jobs holds no more than one that has finished ten
(issue 12: RSS flat).  The real service in this process, real folders, the simulator."""

from __future__ import annotations

import sqlite3

from conftest import make_pdf, run_cli, wait_for


def test_jobs_that_ended_leave_no_recipient_count_behind(service, spool, simulator):
    """The store keeps each job's number of recipients to change a one-recipient job's
    state without reading it; a job that ends (delivered, failed, with one recipient or
    two) is dropped from it."""
    svc = service(defaults={"resend": {"max": 0}})
    for i in range(12):
        (spool.folder("+15551230906") / f"d{i:02d}.pdf").write_bytes(make_pdf(1))
    (spool.folder("+15551230666") / "busy.pdf").write_bytes(make_pdf(1))  # fails: USER_BUSY
    (spool.outbox / "two.pdf.yaml").write_text("to: [+15551230907, +15551230908]\n")
    (spool.outbox / "two.pdf").write_bytes(make_pdf(1))
    sent = spool.wait_results(13, "sent")
    [failed] = spool.wait_results(1, "failed")
    assert {r["state"] for r in sent} == {"delivered"} and failed["state"] == "failed"
    wait_for(lambda: not svc.store._recipient_counts, 5, "the ended jobs' counts dropped")


def test_a_job_sent_again_after_it_ended_ends_right_and_leaves_nothing(make_config, service, spool,
                                                                        simulator, tmp_path):
    """Dropped once the job ended, its count is found again (the long way) when an
    operator sends it again, and the job's state still follows its recipient's."""
    cfg = make_config(defaults={"resend": {"max": 0}})
    svc = service(cfg)
    (spool.folder("+15551230777") / "again.pdf").write_bytes(make_pdf(1))  # fails once
    [failed] = spool.wait_results(1, "failed")
    wait_for(lambda: not svc.store._recipient_counts, 5, "the ended job's count dropped")
    p = run_cli("resend", "-c", str(cfg), str(failed["job"]))
    assert p.returncode == 0, p.stderr
    [result] = spool.wait_results(1, "sent")
    assert result["job"] == failed["job"] and result["state"] == "delivered"
    db = sqlite3.connect(tmp_path / "jobs.db")
    assert db.execute("SELECT state FROM jobs WHERE id=?", (failed["job"],)).fetchone() == ("delivered",)
    db.close()
    wait_for(lambda: not svc.store._recipient_counts, 5, "its count dropped again")
