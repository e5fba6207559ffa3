"""Outbox folders that go away while the daemon runs: the outbox pauses, /healthz says
why, nothing is written where the folder was, and it resumes by itself (SPEC 4.1)."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest
from conftest import make_pdf, sent_documents, wait_for


def _job_state(tmp_path) -> str | None:
    import sqlite3
    row = sqlite3.connect(tmp_path / "jobs.db").execute("SELECT state FROM jobs").fetchone()
    return row[0] if row else None


def _status(d) -> tuple[int, dict]:
    r = httpx.get(d.url + "/healthz", timeout=5)
    return r.status_code, r.json()


def test_missing_folders_are_created_when_their_parent_exists(daemon, spool, simulator):
    for p in (spool.outbox, spool.sent, spool.failed):
        p.rmdir()
    daemon().start()
    assert spool.outbox.is_dir() and spool.sent.is_dir() and spool.failed.is_dir()


def test_outbox_removed_and_restored_while_running(daemon, spool, simulator):
    d = daemon().start()
    shutil.rmtree(spool.outbox)
    wait_for(lambda: _status(d)[0] == 503, 10, "healthz 503")
    body = _status(d)[1]
    assert any("outbox main" in r and "missing" in r for r in body["reasons"])
    assert not spool.outbox.exists(), "the gateway recreated a folder that disappeared"
    spool.outbox.mkdir()
    wait_for(lambda: _status(d)[0] == 200, 10, "healthz 200 again")
    data = make_pdf(1)
    (spool.folder("+15551231101") / "back.pdf").write_bytes(data)
    spool.wait_results(1, "sent")
    assert sent_documents(simulator) == [("+15551231101", data)]


def test_sent_folder_missing_holds_the_job_until_it_is_back(daemon, spool, simulator, tmp_path):
    d = daemon().start()
    (spool.folder("+15551231102") / "a.pdf").write_bytes(make_pdf(1))
    wait_for(lambda: simulator.requests("fax-send"), 10, "the submission")
    spool.sent.rmdir()
    wait_for(lambda: _status(d)[0] == 503, 10, "healthz 503")
    job_id = wait_for(lambda: simulator.requests("fax-send")[0]["job_id"], 10, "the simulator's jobId")
    wait_for(lambda: simulator.job(job_id)["faxStatus"] == "delivered", 10, "delivery at iFax")
    wait_for(lambda: _job_state(tmp_path) == "delivered", 10, "the gateway to see the delivery")
    wait_for(lambda: _status(d)[0] == 503, 3, "healthz still 503")  # and a filing attempt went by
    assert not spool.sent.exists()
    spool.sent.mkdir()
    [result] = spool.wait_results(1, "sent")
    assert result["state"] == "delivered"
    wait_for(lambda: _status(d)[0] == 200, 10, "healthz 200 again")


@pytest.fixture
def mounted_sent(spool):
    """sent/ on its own filesystem, like a share; unmounted by the test."""
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(spool.sent)],
                       capture_output=True, check=False)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield spool.sent
    subprocess.run(["umount", str(spool.sent)], capture_output=True, check=False)


def test_unmounted_share_is_never_written_into(daemon, spool, simulator, mounted_sent, tmp_path):
    d = daemon().start()
    (spool.folder("+15551231103") / "a.pdf").write_bytes(make_pdf(1))
    wait_for(lambda: simulator.requests("fax-send"), 10, "the submission")
    subprocess.run(["umount", str(mounted_sent)], check=True)
    wait_for(lambda: _status(d)[0] == 503, 10, "healthz 503")
    assert any("no longer mounted" in r for r in _status(d)[1]["reasons"])
    job_id = wait_for(lambda: simulator.requests("fax-send")[0]["job_id"], 10, "the simulator's jobId")
    wait_for(lambda: simulator.job(job_id)["faxStatus"] == "delivered", 10, "delivery at iFax")
    wait_for(lambda: _job_state(tmp_path) == "delivered", 10, "the gateway to see the delivery")
    wait_for(lambda: _status(d)[0] == 503, 3, "healthz still 503")  # and a filing attempt went by
    assert list(spool.sent.iterdir()) == [], "the gateway wrote into the empty mount point"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(spool.sent)], check=True)
    [result] = spool.wait_results(1, "sent")
    assert result["state"] == "delivered"
    wait_for(lambda: _status(d)[0] == 200, 10, "healthz 200 again")
