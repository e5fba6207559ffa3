"""What happens once a job has ended: fax-delete after delivery, notify.command otherwise."""

from __future__ import annotations

import json
import sys

from conftest import make_pdf, wait_for


def test_delete_after_delivery_deletes_every_attempt(service, spool, simulator):
    service(defaults={"delete_after_delivery": True, "resend": {"max": 1, "delay": "0.2s"}})
    (spool.folder("+15551231777") / "a.pdf").write_bytes(make_pdf(1))
    [result] = spool.wait_results(1, "sent")
    send, resend = simulator.requests("fax-send")[0], simulator.requests("fax-resend")[0]
    def two_deletes():
        found = simulator.requests("fax-delete")
        return found if len(found) >= 2 else None
    deleted = wait_for(two_deletes, 10, "two fax-delete requests")
    assert sorted(r["body"]["jobId"] for r in deleted) == sorted([send["job_id"], resend["job_id"]])
    assert simulator.job(resend["job_id"]) is None
    assert result["state"] == "delivered"


def test_delete_refused_is_logged_and_the_job_stays_delivered(service, spool, simulator, caplog):
    service(defaults={"delete_after_delivery": True})
    simulator.set_fault("refuse_all", endpoints=("fax-delete",), message="Cannot delete")
    (spool.folder("+15551231001") / "a.pdf").write_bytes(make_pdf(1))
    [result] = spool.wait_results(1, "sent")
    wait_for(lambda: simulator.requests("fax-delete"), 10, "the fax-delete attempt")
    wait_for(lambda: "fax-delete of iFax job" in caplog.text, 5, "the log line")
    assert result["state"] == "delivered"


def test_notify_command_runs_for_jobs_not_delivered(service, spool, simulator, tmp_path, monkeypatch):
    monkeypatch.setenv("IFAX_API_KEY", "env-secret")  # must not reach the command
    log = tmp_path / "notified.jsonl"
    script = tmp_path / "notify.py"
    script.write_text(
        "import json, os, sys\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(json.dumps({'path': sys.argv[-1], 'state': os.environ['FAX_GATEWAY_STATE'],\n"
        "        'code': os.environ['FAX_GATEWAY_REASON_CODE'],\n"
        "        'key': os.environ.get('IFAX_API_KEY')}) + '\\n')\n")
    service(extra={"notify": {"command": f"{sys.executable} {script}"}},
            defaults={"resend": {"max": 0}})
    (spool.folder("+15551231002") / "ok.pdf").write_bytes(make_pdf(1))
    (spool.folder("+15551231666") / "bad.pdf").write_bytes(make_pdf(1))
    (spool.folder("+15551231003") / "empty.pdf").write_bytes(b"")
    spool.wait_results(3)
    def two_lines():
        found = log.read_text().splitlines() if log.exists() else []
        return found if len(found) >= 2 else None
    lines = wait_for(two_lines, 10, "two notifications")
    got = sorted((json.loads(x)["state"], json.loads(x)["code"]) for x in lines)
    assert got == [("failed", ""), ("rejected", "empty")]
    for x in lines:
        doc = json.loads(x)
        assert json.loads(open(doc["path"]).read())["state"] == doc["state"]
        assert doc["key"] is None


def test_failing_notify_command_never_blocks(service, spool, simulator, caplog):
    service(extra={"notify": {"command": "/bin/sh -c 'sleep 0.2; exit 3'"}})
    for i in range(3):
        (spool.folder("+15551231004") / f"e{i}.pdf").write_bytes(b"")
    (spool.folder("+15551231005") / "ok.pdf").write_bytes(make_pdf(1))
    spool.wait_results(4)
    wait_for(lambda: caplog.text.count("notify.command exited with 3") == 3, 10, "three logged failures")
