"""Filing (result files, moves to sent/ and failed/) gives way while intake has more to
take at once or faxes wait to be sent, for at most filing.DEFER, and goes on as soon as
intake has taken what there was.  The real service in this process, real folders, the
simulator over HTTP."""

from __future__ import annotations

import logging
import sqlite3
import time

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


def _voluntary_switches(native_id: int) -> int:
    for line in open(f"/proc/self/task/{native_id}/status"):
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches line")


def test_faxes_that_end_while_filing_gives_way_do_not_wake_it(service, monkeypatch):
    """In a burst the sending stage ends hundreds of faxes a second, and tells filing each
    time; while filing gives way those wakes would only make it wait again, costing the
    senders a switch each (issue 12).  Counted as the filing thread's context switches."""
    monkeypatch.setattr(filing, "DEFER", 30.0)
    svc = service()
    svc.filing.defer = lambda: True
    svc.filing.wake()  # its loop asks holding_back, and starts to give way
    wait_for(lambda: svc.filing._deferring_since is not None, 5, "filing to give way")
    thread = svc.filing._thread
    assert thread is not None and thread.native_id is not None
    before = _voluntary_switches(thread.native_id)
    for _ in range(200):
        svc.filing.wake()  # as the sending stage does for each fax that ends
        time.sleep(0.001)  # apart, as faxes end: each would be a wake-up of its own
    assert _voluntary_switches(thread.native_id) - before < 20
    svc.filing.defer = lambda: False  # sends no longer wait: the next wake is heard
    svc.filing.wake()
    wait_for(lambda: svc.filing._deferring_since is None, 5, "filing to stop giving way")


def _filing_batches(caplog) -> list[int]:
    return [int(r.args[0]) for r in caplog.records
            if r.name == "gateway.filing" and r.msg == "filing %d job(s) in one batch"]


def test_faxes_that_end_one_by_one_are_filed_together(service, spool, simulator, caplog):
    """Each fax of a burst is polled poll.interval after it was accepted, a few requests at
    a time, so the faxes end one by one.  Filed as each ends, every one would be a batch of
    its own, with its own commit and folder syncs (issue 12: 3.2 fsyncs per document
    instead of 2.8).  Filing lets them gather for filing.GATHER after a small batch."""
    caplog.set_level(logging.DEBUG, logger="gateway.filing")
    simulator.set_fault("slow", endpoints=("fax-status",), seconds=0.03)  # answers trickle in
    service()
    folder = spool.folder("+15551230903")
    for i in range(24):
        (folder / f"t{i:02d}.pdf").write_bytes(make_pdf(1))
    results = spool.wait_results(24, "sent", timeout=30)
    assert all(r["state"] == "delivered" for r in results)
    batches = _filing_batches(caplog)
    assert sum(batches) == 24  # each filed once
    assert len(simulator.requests("fax-send")) == 24
    # At ~60 endings a second a batch every GATHER holds about six (5 batches here on an
    # idle machine); one at a time they were 20-24.  Half that leaves room for a slow one.
    assert len(batches) <= 12, batches


def test_a_filing_that_fails_starts_no_gathering(service, spool, tmp_path):
    """Only a turn that filed something waits for more to gather: a blocked job tried
    again and failing again is no reason for another turn 0.1 s later."""
    svc = service()
    svc.filing.request_stop()  # this test plays filing's turns
    svc.filing.join(5)
    (spool.sent / "+15551230904").write_text("a file where the number's folder goes")
    (spool.folder("+15551230904") / "c.pdf").write_bytes(make_pdf(1))
    wait_for(lambda: _state(tmp_path) == "delivered", 15, "the fax delivered")
    assert svc.filing.turn() > filing.GATHER  # tried and blocked: back when its retry is due
    blocked = sqlite3.connect(tmp_path / "jobs.db").execute(
        "SELECT stage FROM blocked").fetchall()
    assert blocked == [("filing",)]
    assert svc.filing._gathering_until == 0.0
    assert spool.results() == []
