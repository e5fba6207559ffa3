"""Filing (result files, moves to sent/ and failed/) gives way while intake has more to
take at once or faxes wait to be sent, for at most filing.DEFER, and goes on as soon as
intake has taken what there was.  The real service in this process, real folders, the
simulator over HTTP."""

from __future__ import annotations

import sqlite3

from conftest import make_pdf, wait_for

from gateway import filing


def _state(tmp_path) -> str | None:
    row = sqlite3.connect(tmp_path / "jobs.db").execute("SELECT state FROM jobs").fetchone()
    return row[0] if row else None


def test_a_job_that_ends_while_intake_is_busy_is_filed_once_intake_has_taken_everything(
        service, spool, simulator, tmp_path, monkeypatch):
    monkeypatch.setattr(filing, "DEFER", 30.0)  # far beyond this test: only intake going idle files it
    simulator.delay = 2.0  # sending for 2 s: time to stop intake's thread before it ends
    svc = service()
    (spool.folder("+15551230901") / "a.pdf").write_bytes(make_pdf(1))
    wait_for(lambda: _state(tmp_path) in ("submitting", "sending"), 10, "the job taken and being sent")
    svc.intake.request_stop()  # intake's own thread ends; this test plays its turns
    svc.intake.join(5)
    svc.intake.busy = True     # as after a turn that left more to take at once
    wait_for(lambda: _state(tmp_path) == "delivered", 10, "the fax delivered")
    assert spool.results() == []  # filing gives way: nothing filed while intake is busy
    assert svc.filing.defer()
    svc.intake.turn()  # nothing left to take: intake is idle now, and says so
    assert not svc.intake.busy
    [result] = spool.wait_results(1, "sent", timeout=10)
    assert result["state"] == "delivered"


def test_filing_gives_way_while_told_to_for_at_most_its_deferral(service, spool, tmp_path, monkeypatch):
    monkeypatch.setattr(filing, "DEFER", 1.0)
    svc = service()
    svc.filing.defer = lambda: True  # as while faxes wait to be sent, for ever
    (spool.folder("+15551230902") / "b.pdf").write_bytes(make_pdf(1))
    [result] = spool.wait_results(1, "sent", timeout=15)  # filed all the same, within DEFER of ending
    assert result["state"] == "delivered"
