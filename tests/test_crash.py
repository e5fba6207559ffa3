"""SIGKILL the real daemon at each step that moves files or changes job state, restart
it, and check that every document ends exactly once in sent/ or failed/ and that no
document was submitted twice (SPEC 6.3)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from conftest import make_pdf, sent_documents, wait_for


def _drop(spool, number: str, names=("a.pdf",), sidecar: str | None = None):
    folder = spool.folder(number)
    if sidecar:
        (folder / sidecar[0]).write_text(sidecar[1])
    datas = {}
    for name in names:
        datas[name] = make_pdf(1, text=name)
        (folder / name).write_bytes(datas[name])
    return datas


def _pdfs(root) -> list[Path]:
    """Every PDF below root; a folder the daemon removes meanwhile is skipped (os.walk)."""
    return [Path(d) / f for d, _, files in os.walk(root) for f in files if f.endswith(".pdf")]


def _everything_filed_once(spool, datas: dict[str, bytes], where: str):
    """Each document lies in exactly one place: its final folder, with one result file.
    Looked at once filing has removed the job's folder (the result file comes first)."""
    wait_for(lambda: not _pdfs(spool.private), 15, "the filed jobs' folders removed")
    everywhere = _pdfs(spool.root)
    for name, data in datas.items():
        copies = [p for p in everywhere if p.read_bytes() == data]
        assert len(copies) == 1, f"{name} found {len(copies)} times: {copies}"
        assert getattr(spool, where) in copies[0].parents, f"{name} is in {copies[0]}"
    assert spool.outbox_files() == []
    assert not _pdfs(spool.private)


@pytest.mark.parametrize("point", ["claim", "claim_partial", "claimed", "judged"])
def test_sigkill_during_claim_loses_nothing_and_sends_once(daemon, spool, simulator, point):
    d = daemon()
    d.start(crash_at=point)
    datas = _drop(spool, "+15551230201", sidecar=("a.pdf.yaml", "subject: crash\n"))
    assert d.wait_exit() == -9, "the daemon did not reach the crash point"
    assert simulator.requests("fax-send") == []
    d.start()
    [result] = spool.wait_results(1, "sent")
    assert result["state"] == "delivered"
    assert sorted(result["files"]) == ["a.pdf", "a.pdf.yaml"]
    assert sent_documents(simulator) == [("+15551230201", datas["a.pdf"])]
    _everything_filed_once(spool, datas, "sent")


@pytest.mark.parametrize("point", ["claim", "claim_partial", "claimed", "judged", "filing", "filed"])
def test_sigkill_in_the_middle_of_a_batch_loses_nothing_and_sends_once(daemon, spool, simulator, point,
                                                                       tmp_path):
    """Six documents of one folder are claimed in one batch and filed in one batch (one
    commit for the intents, renames, one commit for the outcome): a kill at any step of
    the batch leaves each document delivered once and filed once after the restart.
    They are there before the daemon starts, so its first scan finds them together."""
    d = daemon()
    names = tuple(f"b{i}.pdf" for i in range(6))
    datas = _drop(spool, "+15551230209", names=names)
    d.start(crash_at=point, wait_healthy=False)
    assert d.wait_exit(timeout=30) == -9, "the daemon did not reach the crash point"
    if point == "claim":  # all six intents were committed together, before the first rename
        db = sqlite3.connect(tmp_path / "jobs.db")
        assert db.execute("SELECT phase, COUNT(*) FROM jobs GROUP BY phase").fetchall() == [("claiming", 6)]
        db.close()
    d.start()
    results = spool.wait_results(len(names), "sent")
    assert sorted(f for r in results for f in r["files"]) == sorted(names)
    assert sorted(data for _, data in sent_documents(simulator)) == sorted(datas.values())
    _everything_filed_once(spool, datas, "sent")


def test_sigkill_while_filing_lets_ended_faxes_gather_files_each_once(daemon, spool, simulator,
                                                                      tmp_path):
    """Faxes whose polls answer one by one end one by one; after a small batch filing
    waits filing.GATHER for more (issue 12).  Killed there, with some faxes filed, some
    ended and waiting, and some still being polled: after the restart each is filed once
    and none is sent again."""
    simulator.set_fault("slow", endpoints=("fax-status",), seconds=0.03)
    d = daemon()
    names = tuple(f"g{i:02d}.pdf" for i in range(24))
    datas = _drop(spool, "+15551230210", names=names)
    d.start(crash_at="gathering", wait_healthy=False)
    assert d.wait_exit(timeout=30) == -9, "the daemon did not reach the crash point"
    db = sqlite3.connect(tmp_path / "jobs.db")
    held = db.execute("SELECT COUNT(*) FROM jobs WHERE phase = 'held'").fetchone()[0]
    db.close()
    assert 0 < held < len(names)  # one small batch went to filing; the rest were left
    d.start()
    results = spool.wait_results(len(names), "sent")
    assert all(r["state"] == "delivered" for r in results)
    assert sorted(f for r in results for f in r["files"]) == sorted(names)
    assert sorted(data for _, data in sent_documents(simulator)) == sorted(datas.values())
    _everything_filed_once(spool, datas, "sent")


def test_sigkill_before_the_request_leaves_never_sends_twice(daemon, spool, simulator):
    d = daemon()
    d.start(crash_at="submit")
    datas = _drop(spool, "+15551230202")
    assert d.wait_exit() == -9
    d.start()
    [result] = spool.wait_results(1, "failed")
    # The intent was committed: the gateway cannot know whether the request left, so it
    # says so instead of sending again (on_uncertain: fail).
    assert result["state"] == "failed"
    assert "unknown" in result["recipients"][0]["message"]
    assert len(simulator.requests("fax-send")) == 0
    _everything_filed_once(spool, datas, "failed")


def test_sigkill_while_the_request_is_in_flight_is_uncertain_not_resent(daemon, spool, simulator):
    simulator.set_fault("slow", endpoints=("fax-send",), seconds=30, count=1)
    d = daemon()
    d.start()
    datas = _drop(spool, "+15551230203")
    wait_for(lambda: simulator.requests("fax-send"), 15, "the request to reach the API")
    d.kill()
    d.start()
    [result] = spool.wait_results(1, "failed")
    assert result["state"] == "failed"
    [r] = result["recipients"]
    assert r["attempts"] == 1
    assert "iFax may have sent it" in r["message"]
    assert len(simulator.requests("fax-send")) == 1
    _everything_filed_once(spool, datas, "failed")


def test_sigkill_after_the_answer_before_it_was_stored(daemon, spool, simulator):
    d = daemon()
    d.start(crash_at="submitted")
    datas = _drop(spool, "+15551230204")
    assert d.wait_exit() == -9
    assert len(simulator.requests("fax-send")) == 1
    d.start()
    [result] = spool.wait_results(1, "failed")
    assert "unknown" in result["recipients"][0]["message"]
    assert len(simulator.requests("fax-send")) == 1
    _everything_filed_once(spool, datas, "failed")


def _killed_with_recipient(daemon, spool, tmp_path, point: str, number: str, state: str):
    """Drop a document, let the daemon kill itself at `point`, and check that the
    database shows the recipient still `state`: the answer written was not committed."""
    d = daemon()
    d.start(crash_at=point)
    datas = _drop(spool, number)
    assert d.wait_exit(timeout=30) == -9, "the daemon did not reach the crash point"
    db = sqlite3.connect(tmp_path / "jobs.db")
    try:
        assert db.execute("SELECT state FROM recipients").fetchall() == [(state,)]
    finally:
        db.close()
    return d, datas


def test_sigkill_between_acceptance_and_its_commit_is_uncertain_not_resent(daemon, spool, simulator,
                                                                          tmp_path):
    """iFax's acceptance is written but not committed yet (answers are committed within
    GROUP_WAIT, not waited for): after the kill the recipient is still submitting, which
    the restart reports as uncertain (SPEC 6.3), never submitted again."""
    d, datas = _killed_with_recipient(daemon, spool, tmp_path, "accepted", "+15551230208", "submitting")
    d.start()
    [result] = spool.wait_results(1, "failed")
    assert "unknown" in result["recipients"][0]["message"]
    assert len(simulator.requests("fax-send")) == 1
    _everything_filed_once(spool, datas, "failed")


def test_sigkill_between_a_final_status_and_its_commit_polls_again(daemon, spool, simulator, tmp_path):
    """The answer that says "delivered" is written but not committed when the process dies:
    after the restart the fax is still sending, is polled again, and ends delivered and
    filed once, never sent twice."""
    d, datas = _killed_with_recipient(daemon, spool, tmp_path, "polled", "+15551230207", "sending")
    polls = len(simulator.requests("fax-status"))
    d.start()
    [result] = spool.wait_results(1, "sent")
    assert result["state"] == "delivered"
    assert len(simulator.requests("fax-status")) > polls
    assert sent_documents(simulator) == [("+15551230207", datas["a.pdf"])]
    _everything_filed_once(spool, datas, "sent")


def test_sigkill_during_the_final_move(daemon, spool, simulator):
    d = daemon()
    d.start(crash_at="filing")
    datas = _drop(spool, "+15551230205", names=("a.pdf",), sidecar=("a.pdf.yaml", "reference: R1\n"))
    assert d.wait_exit(timeout=30) == -9
    d.start()
    [result] = spool.wait_results(1, "sent")
    assert result["reference"] == "R1"
    assert sorted(result["files"]) == ["a.pdf", "a.pdf.yaml"]
    assert (spool.sent / "+15551230205" / "a.pdf.yaml").read_text() == "reference: R1\n"
    assert sent_documents(simulator) == [("+15551230205", datas["a.pdf"])]
    _everything_filed_once(spool, datas, "sent")


def test_sigkill_while_sending_keeps_polling_after_restart(daemon, spool, simulator, tmp_path):
    """A fax accepted before the kill is polled after the restart, never submitted again."""
    d = daemon()
    d.start()
    datas = _drop(spool, "+15551230888")  # stays sending until canceled
    wait_for(lambda: simulator.requests("fax-status"), 15, "the first poll")
    d.kill()
    d.start()
    n = len(simulator.requests("fax-status"))
    wait_for(lambda: len(simulator.requests("fax-status")) > n, 15, "polls after the restart")
    assert len(simulator.requests("fax-send")) == 1
    db = sqlite3.connect(tmp_path / "jobs.db")
    [(state,)] = db.execute("SELECT state FROM jobs").fetchall()
    assert state == "sending"
    assert spool.outbox_files() == [] and datas


def test_many_kills_in_a_row_still_file_each_document_once(daemon, spool, simulator):
    points = ["claim", "claimed", "filing"]
    d = daemon()
    datas = {}
    for i, point in enumerate(points):
        d.start(crash_at=point)
        datas.update(_drop(spool, f"+1555123030{i}", names=(f"d{i}.pdf",)))
        d.wait_exit(timeout=30)
    d.start()
    results = spool.wait_results(len(points), "sent")
    assert all(r["state"] == "delivered" for r in results)
    assert sorted(d for _, d in sent_documents(simulator)) == sorted(datas.values())
    _everything_filed_once(spool, datas, "sent")
    json.dumps(results, default=str)


def test_sigkill_between_filing_and_notify_command_still_notifies(daemon, spool, simulator, tmp_path):
    """The intent to notify is committed with the filing: at least once (issue 8)."""
    import sys
    log = tmp_path / "notified.txt"
    script = tmp_path / "notify.py"
    script.write_text(f"import sys\nopen({str(log)!r}, 'a').write(sys.argv[-1] + '\\n')\n")
    d = daemon(extra={"notify": {"command": f"{sys.executable} {script}"}},
               defaults={"resend": {"max": 0}})
    d.start(crash_at="filed")
    datas = _drop(spool, "+15551230666")
    assert d.wait_exit(timeout=30) == -9, "the daemon did not reach the crash point"
    [result] = spool.results("failed")
    assert not log.exists()
    d.start()
    wait_for(log.exists, 15, "the notification after the restart")
    wait_for(lambda: sqlite3.connect(tmp_path / "jobs.db").execute(
        "SELECT 1 FROM events WHERE state='notified'").fetchone(), 10, "the notification recorded")
    assert log.read_text().splitlines() == [str(result["_path"])]
    _everything_filed_once(spool, datas, "failed")
    assert d.terminate() == 0
    d.start()  # a notification that ran is not repeated at the next start
    d.terminate()
    assert log.read_text().splitlines() == [str(result["_path"])]


def test_many_claims_cut_short_are_finished_before_their_files_are_planned_again(daemon, spool, simulator):
    """A kill between a batch's intents and its renames leaves dozens of claims to finish
    at the restart, over several turns: meanwhile their files, still in the outbox, are
    never planned as new jobs (which found them gone and filed empty rejections beside
    the documents that were sent)."""
    d = daemon(defaults={"settle": "0.05s"})  # ready again at once after the restart
    datas = _drop(spool, "+15551230230", [f"c{i:02d}.pdf" for i in range(32)])  # one claim batch
    d.start(crash_at="claim", wait_healthy=False)
    assert d.wait_exit() == -9
    d.start()
    results = spool.wait_results(32, timeout=60)
    assert all(r["state"] == "delivered" for r in results), [r["reason"] for r in results if r["reason"]]
    assert sorted(f for r in results for f in r["files"]) == sorted(datas)
    assert sorted(data for _, data in sent_documents(simulator)) == sorted(datas.values())
    _everything_filed_once(spool, datas, "sent")
