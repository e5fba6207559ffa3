"""/healthz and /metrics of the running daemon (SPEC 7, 8)."""

from __future__ import annotations

import sqlite3

import httpx
from conftest import make_pdf, wait_for


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} {labels}")


def test_healthz_and_metrics_count_the_straight_path(daemon, spool, simulator):
    d = daemon().start()
    health = httpx.get(d.url + "/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"

    folder = spool.folder("+15551230501")
    (folder / "a.pdf").write_bytes(make_pdf(2))
    (folder / "b.pdf").write_bytes(b"")
    spool.wait_results(2)
    text = d.metrics()
    assert _metric(text, "fax_gateway_files_detected_total", outbox="main") == 2
    assert _metric(text, "fax_gateway_files_rejected_total", outbox="main", reason="empty") == 1
    assert _metric(text, "fax_gateway_jobs_submitted_total", outbox="main") == 1
    assert _metric(text, "fax_gateway_jobs_completed_total", outbox="main", result="delivered") == 1
    assert _metric(text, "fax_gateway_pages_sent_total", outbox="main") == 2
    assert _metric(text, "fax_gateway_jobs", state="delivered") == 1
    assert _metric(text, "fax_gateway_jobs", state="rejected") == 1
    assert _metric(text, "fax_gateway_api_requests_total", endpoint="fax-send", outcome="ok") == 1
    assert _metric(text, "fax_gateway_build_info", version="0.1.0") == 1
    assert _metric(text, "fax_gateway_api_paused") == 0
    assert _metric(text, "fax_gateway_healthy") == 1
    assert "test-key" not in text
    assert d.terminate() == 0


def test_wrong_key_pauses_submissions_and_turns_healthz_503(daemon, spool, simulator):
    d = daemon(api={"key": "wrong-key"}).start()
    folder = spool.folder("+15551230502")
    (folder / "a.pdf").write_bytes(make_pdf(1))

    from conftest import wait_for
    wait_for(lambda: httpx.get(d.url + "/healthz").status_code == 503, 15, "healthz 503")
    body = httpx.get(d.url + "/healthz").json()
    assert any("refuses the account" in r for r in body["reasons"])
    assert "wrong-key" not in str(body) and "wrong-key" not in d.metrics()
    assert _metric(d.metrics(), "fax_gateway_api_paused") == 1
    assert _metric(d.metrics(), "fax_gateway_healthy") == 0
    assert spool.results() == []  # nothing failed: the job waits in the queue
    assert "wrong-key" not in d.log.read_text()
    d.terminate()


def test_webhook_with_wrong_secret_is_404(daemon):
    d = daemon().start()
    assert httpx.post(d.url + "/ifax/webhook/nope", json={}).status_code == 404
    assert httpx.get(d.url + "/nothing").status_code == 404
    d.terminate()


def test_webhook_for_a_known_job_triggers_an_immediate_poll(daemon, spool, simulator):
    from conftest import wait_for
    d = daemon(extra={"poll": {"interval": "60s"}, "webhook": {"enabled": True, "secret": "s3cr3t"}})
    d.start()
    folder = spool.folder("+15551230503")
    (folder / "a.pdf").write_bytes(make_pdf(1))
    # Recorded with its jobId once the simulator has handled it (it is listed before that).
    [req] = wait_for(lambda: [r for r in simulator.requests("fax-send") if r["job_id"]], 15, "the submission")
    wait_for(lambda: simulator.job(req["job_id"])["faxStatus"] == "delivered", 10, "delivery")
    # The body is not trusted: it claims failure, the poll reads the truth.
    r = httpx.post(d.url + "/ifax/webhook/s3cr3t", json={"jobId": req["job_id"], "faxStatus": "failed"})
    assert r.status_code == 200
    [result] = spool.wait_results(1, "sent", timeout=10)  # without the webhook: 60 s
    assert result["state"] == "delivered"
    assert httpx.post(d.url + "/ifax/webhook/s3cr3t", json={"jobId": 424242}).status_code == 200
    assert httpx.post(d.url + "/ifax/webhook/wrong", json={"jobId": req["job_id"]}).status_code == 404
    d.terminate()


def test_a_webhook_that_comes_before_the_acceptance_is_recorded_still_polls_at_once(daemon, spool,
                                                                                     simulator):
    """iFax may call the webhook before its answer to the fax-send is recorded (the answer is
    slow, or waits for the sending loop): the webhook is remembered, and the fax polled as
    soon as its acceptance is recorded, not a whole poll.interval later."""
    from conftest import wait_for
    d = daemon(extra={"poll": {"interval": "60s"}, "webhook": {"enabled": True, "secret": "s3cr3t"}})
    d.start()
    simulator.set_fault("slow", seconds=1, count=1)  # processed at once, answered a second later
    (spool.folder("+15551230507") / "a.pdf").write_bytes(make_pdf(1))
    [req] = wait_for(lambda: [r for r in simulator.requests("fax-send") if r["job_id"]], 15,
                     "iFax to have made the fax")
    assert req["finished"] is None  # its answer is still on its way
    r = httpx.post(d.url + "/ifax/webhook/s3cr3t", json={"jobId": req["job_id"]})
    assert r.status_code == 200
    [result] = spool.wait_results(1, "sent", timeout=10)  # without the memory: 60 s
    assert result["state"] == "delivered"
    assert result["recipients"][0]["ifax_job_id"] == req["job_id"]
    d.terminate()


def test_created_folders_and_result_files_take_parent_group_and_modes(service, spool, simulator):
    import stat
    service()
    folder = spool.folder("+15551230504")
    (folder / "a.pdf").write_bytes(make_pdf(1))
    [result] = spool.wait_results(1, "sent")
    made = spool.sent / "+15551230504"
    assert stat.S_IMODE(made.stat().st_mode) & 0o777 == 0o750
    assert stat.S_IMODE(result["_path"].stat().st_mode) == 0o640
    assert made.stat().st_gid == spool.sent.stat().st_gid


def test_healthz_proves_the_database_writable_without_a_commit_per_request(daemon, tmp_path):
    """/healthz and /metrics write to the database to prove it writable, at most every
    few seconds however often they are asked (a monitor polling every second must not
    add an fsync a second); a write that fails turns /healthz 503 with the reason, and
    it recovers once writes succeed again."""
    d = daemon().start()
    db = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None, timeout=10)
    db.execute("CREATE TABLE hb_writes(n INTEGER)")
    db.execute("INSERT INTO hb_writes VALUES (0)")
    db.execute("CREATE TRIGGER hb_count AFTER INSERT ON meta WHEN NEW.key='heartbeat'"
               " BEGIN UPDATE hb_writes SET n=n+1; END")
    for _ in range(30):
        assert httpx.get(d.url + "/healthz").status_code == 200
        assert httpx.get(d.url + "/metrics").status_code == 200
    assert db.execute("SELECT n FROM hb_writes").fetchone()[0] <= 2

    db.execute("CREATE TRIGGER hb_full BEFORE INSERT ON meta WHEN NEW.key='heartbeat'"
               " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    answer = wait_for(lambda: (r := httpx.get(d.url + "/healthz")).status_code == 503 and r, 15, "503")
    reasons = answer.json()["reasons"]
    assert any("database is not writable" in why and "disk is full" in why for why in reasons), reasons
    db.execute("DROP TRIGGER hb_full")
    wait_for(lambda: httpx.get(d.url + "/healthz").status_code == 200, 15, "/healthz 200 again")
    db.close()
