"""Failed faxes are resent with fax-resend; faxes with no final status are given up;
uncertain submissions follow on_uncertain (SPEC 6.2, 6.3)."""

from __future__ import annotations

import base64
import sqlite3
from datetime import UTC

import pytest
from conftest import make_pdf, wait_for


def _drop(spool, number: str, name: str = "doc.pdf", pages: int = 1) -> bytes:
    data = make_pdf(pages, text=name)
    (spool.folder(number) / name).write_bytes(data)
    return data


def test_fails_once_then_delivered_on_resend(service, spool, simulator):
    service(defaults={"resend": {"max": 2, "delay": "0.3s"}})
    data = _drop(spool, "+15551230777")
    [result] = spool.wait_results(1, "sent")
    [send] = simulator.requests("fax-send")
    [resend] = simulator.requests("fax-resend")
    assert resend["body"]["jobId"] == send["job_id"]
    assert base64.b64decode(resend["body"]["faxData"][0]["fileData"]) == data
    [r] = result["recipients"]
    assert r["state"] == "delivered" and r["attempts"] == 2
    assert r["ifax_job_id"] == resend["job_id"] != send["job_id"]
    assert r["message"] == "NORMAL_CLEARING" and r["transferred_pages"] == 1


def test_always_failing_fax_is_resent_at_most_resend_max_times(service, spool, simulator):
    service(defaults={"resend": {"max": 2, "delay": "0.2s"}})
    _drop(spool, "+15551230666")
    [result] = spool.wait_results(1, "failed")
    assert len(simulator.requests("fax-send")) == 1
    resends = simulator.requests("fax-resend")
    assert len(resends) == 2
    assert resends[1]["body"]["jobId"] == resends[0]["job_id"]  # names the last attempt
    [r] = result["recipients"]
    assert r["attempts"] == 3 and r["code"] == 17 and r["message"] == "USER_BUSY"
    assert r["ifax_job_id"] == resends[1]["job_id"]


def test_resend_delay_is_counted_from_the_failure(service, spool, simulator):
    service(defaults={"resend": {"max": 1, "delay": "1.5s"}})
    _drop(spool, "+15551230778")  # 777-style only for the last three digits: this one delivers
    _drop(spool, "+15551231777", name="late.pdf")
    spool.wait_results(2, timeout=30)
    failed_seen = [r["time"] for r in simulator.requests("fax-status")
                   if r["response"] and r["response"].get("data", {}).get("faxStatus") == "failed"]
    [resend] = simulator.requests("fax-resend")
    assert resend["time"] - failed_seen[0] >= 1.4


@pytest.fixture
def reusing_simulator(simulator):
    simulator.reuse_job_id_on_resend = True
    simulator.delay = 0.6
    return simulator


def test_resend_under_the_same_job_id_ignores_the_stale_failure(service, spool, reusing_simulator):
    sim = reusing_simulator
    service(defaults={"resend": {"max": 2, "delay": "0.1s"}}, extra={"poll": {"interval": "0.1s"}})
    _drop(spool, "+15551230777")
    [result] = spool.wait_results(1, "sent", timeout=30)
    [send] = sim.requests("fax-send")
    [resend] = sim.requests("fax-resend")  # the stale 'failed' did not cause a second resend
    assert resend["job_id"] == send["job_id"]
    stale = [r for r in sim.requests("fax-status") if r["time"] > resend["time"]
             and r["response"]["data"]["faxStatus"] == "failed"]
    assert stale, "the simulator did not lag: the test proves nothing"
    [r] = result["recipients"]
    assert r["state"] == "delivered" and r["attempts"] == 2


def test_no_final_status_is_given_up_canceled_and_not_resent(service, spool, simulator):
    service(defaults={"resend": {"max": 2, "delay": "0.1s"}},
            extra={"poll": {"interval": "0.2s", "give_up_after": "1s"}})
    _drop(spool, "+15551230888")
    [result] = spool.wait_results(1, "failed")
    [r] = result["recipients"]
    assert r["state"] == "failed" and r["attempts"] == 1
    assert "gave up" in r["message"] and "check" in r["message"]
    [cancel] = simulator.requests("fax-cancel")
    assert cancel["body"]["jobId"] == r["ifax_job_id"]
    assert simulator.requests("fax-resend") == []


def test_outage_does_not_count_toward_giving_up(service, spool, simulator, tmp_path):
    service(extra={"poll": {"interval": "0.2s", "give_up_after": "1.5s"}})
    _drop(spool, "+15551230888")
    wait_for(lambda: simulator.requests("fax-status"), 10, "the first poll")
    simulator.set_fault("down", endpoints=("fax-status",))
    failing = len(simulator.requests("fax-status"))
    # Polls obey the API's backoff (issue 9): four failed ones span at least 0.5+1+2 s,
    # more than twice give_up_after.
    wait_for(lambda: len(simulator.requests("fax-status")) > failing + 3, 15, "polls during the outage")
    db = sqlite3.connect(tmp_path / "jobs.db")
    assert db.execute("SELECT state FROM jobs").fetchone()[0] == "sending"
    assert simulator.requests("fax-cancel") == [] and spool.results() == []
    simulator.set_fault(None)
    [result] = spool.wait_results(1, "failed")
    assert "gave up" in result["recipients"][0]["message"]


def test_uncertain_submission_is_sent_again_with_on_uncertain_resend(service, spool, simulator):
    service(defaults={"on_uncertain": "resend"})
    simulator.set_fault("drop_after", endpoints=("fax-send",), count=1)
    _drop(spool, "+15551230801")
    [result] = spool.wait_results(1, "sent")
    assert len(simulator.requests("fax-send")) == 2
    assert result["recipients"][0]["attempts"] == 2


def test_uncertain_submission_fails_by_default(service, spool, simulator):
    service()
    simulator.set_fault("drop_after", endpoints=("fax-send",), count=1)
    _drop(spool, "+15551230802")
    [result] = spool.wait_results(1, "failed")
    assert len(simulator.requests("fax-send")) == 1
    assert "iFax may have sent it" in result["recipients"][0]["message"]


# -- kill and restart ------------------------------------------------------------------

def test_sigkill_while_waiting_to_resend_resends_once(daemon, spool, simulator, tmp_path):
    d = daemon(defaults={"resend": {"max": 2, "delay": "2s"}}).start()
    _drop(spool, "+15551230777")
    db = sqlite3.connect(tmp_path / "jobs.db")
    wait_for(lambda: db.execute("SELECT 1 FROM jobs WHERE state='retry_wait'").fetchone(), 15, "retry_wait")
    d.kill()
    d.start()
    [result] = spool.wait_results(1, "sent")
    assert len(simulator.requests("fax-send")) == 1
    assert len(simulator.requests("fax-resend")) == 1
    assert result["recipients"][0]["attempts"] == 2


@pytest.mark.parametrize("point", ["resubmit", "resubmitted"])
def test_sigkill_around_a_resend_never_resends_twice(daemon, spool, simulator, point):
    d = daemon(defaults={"resend": {"max": 2, "delay": "0.2s"}})
    d.start(crash_at=point)
    _drop(spool, "+15551230777")
    assert d.wait_exit(timeout=30) == -9
    d.start()
    [result] = spool.wait_results(1, "failed")
    assert len(simulator.requests("fax-send")) == 1
    assert len(simulator.requests("fax-resend")) == (1 if point == "resubmitted" else 0)
    [r] = result["recipients"]
    assert "iFax may have sent it" in r["message"] and r["attempts"] == 2




def test_give_up_counts_from_send_at_when_it_is_later(service, spool, simulator):
    import time
    from datetime import datetime
    service(extra={"poll": {"interval": "0.2s", "give_up_after": "1s"}})
    send_at = time.time() + 3
    stamp = datetime.fromtimestamp(send_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    (spool.outbox / "later.pdf.yaml").write_text(f"to: '+15551230888'\nsend_at: '{stamp}'\n")
    (spool.outbox / "later.pdf").write_bytes(make_pdf(1))
    [result] = spool.wait_results(1, "failed", timeout=20)
    assert "gave up" in result["recipients"][0]["message"]
    [cancel] = simulator.requests("fax-cancel")
    whole_second = int(send_at)  # the sidecar's time has whole seconds
    assert cancel["time"] >= whole_second + 1.0
    assert simulator.requests("fax-send")[0]["body"]["send_at"].startswith(stamp[:19])


# -- sending policy: only `failed` is resent (SPEC 6.2) ----------------------------------

@pytest.mark.parametrize(("suffix", "word", "state"), [
    ("661", "blocked", "failed"),
    ("662", "failed_chargeable", "failed"),
    ("663", "partially_cancelled", "failed"),
    ("664", "canceled", "canceled"),
])
def test_final_failures_other_than_failed_are_never_resent(service, spool, simulator, suffix, word, state):
    service(defaults={"resend": {"max": 2, "delay": "0.1s"}})
    _drop(spool, "+1555123" + "0" + suffix)
    [result] = spool.wait_results(1, "failed")
    assert simulator.requests("fax-resend") == []
    [send] = simulator.requests("fax-send")
    assert simulator.job(send["job_id"])["faxStatus"] == word
    [r] = result["recipients"]
    assert (result["state"], r["state"], r["attempts"]) == (state, state, 1)


def test_webhook_for_a_fax_waiting_to_be_resent_keeps_the_resend_delay(service, spool, simulator, tmp_path):
    import json
    import time

    import httpx
    svc = service(defaults={"resend": {"max": 2, "delay": "1h"}},
                  extra={"webhook": {"enabled": True, "secret": "s3cr3t"}})
    _drop(spool, "+15551230777")
    db = sqlite3.connect(tmp_path / "jobs.db")
    wait_for(lambda: db.execute("SELECT 1 FROM recipients WHERE state='retry_wait'").fetchone(), 15,
             "retry_wait")
    [(due,)] = db.execute("SELECT next_action_at FROM recipients").fetchall()
    assert due > time.time() + 3000
    [send] = simulator.requests("fax-send")
    body = json.dumps({"jobId": send["job_id"], "faxStatus": "failed"}).encode()
    url = f"http://{svc.config.http.listen}/ifax/webhook/s3cr3t"
    assert httpx.post(url, content=body).status_code == 200
    svc.webhook(body)  # the same, synchronously: the HTTP handler answers before it acts
    assert db.execute("SELECT next_action_at, state FROM recipients").fetchone() == (due, "retry_wait")
    assert simulator.requests("fax-resend") == []


def test_cost_sums_every_attempt_including_a_charged_failure_that_was_resent(service, spool, simulator):
    from conftest import metric_value
    svc = service(defaults={"resend": {"max": 1, "delay": "0.1s"}})
    _drop(spool, "+15551230665", pages=2)  # fails charged (0.22), then delivered (0.22)
    [result] = spool.wait_results(1, "sent")
    [r] = result["recipients"]
    assert (r["state"], r["attempts"], r["cost"]) == ("delivered", 2, 0.44)
    assert metric_value(svc.metrics.render().decode(), "fax_gateway_cost_total", outbox="main") == 0.44



def test_sigkill_after_a_charged_failure_keeps_its_cost(daemon, spool, simulator, tmp_path):
    d = daemon(defaults={"resend": {"max": 1, "delay": "2s"}}).start()
    _drop(spool, "+15551230665")  # fails charged (0.11), delivered on resend (0.11)
    db = sqlite3.connect(tmp_path / "jobs.db")
    wait_for(lambda: db.execute("SELECT 1 FROM jobs WHERE state='retry_wait'").fetchone(), 15, "retry_wait")
    d.kill()
    d.start()
    [result] = spool.wait_results(1, "sent")
    [r] = result["recipients"]
    assert (r["attempts"], r["cost"]) == (2, 0.22)
    assert len(simulator.requests("fax-resend")) == 1


def test_a_stop_while_the_give_up_cancel_waits_for_its_token_records_nothing(daemon, spool, simulator,
                                                                             tmp_path):
    """At 12 requests a minute the fax-cancel sent on giving up waits about 5 s for its
    token.  A SIGTERM meanwhile must not record the give-up without the cancel: the fax is
    still sending, and after the restart it is given up and canceled once."""
    d = daemon(api={"requests_per_minute": 12}, extra={"poll": {"interval": "0.2s", "give_up_after": "1s"}})
    d.start()
    _drop(spool, "+15551230888")  # stays `sending` until canceled
    # The first poll (its token comes 5 s after the fax-send's) finds it still sending after
    # give_up_after: it gives up, and its cancel waits 5 s for a token.
    wait_for(lambda: simulator.requests("fax-status"), 30, "the poll that gives up")
    assert d.terminate() == 0
    db = sqlite3.connect(tmp_path / "jobs.db")
    assert db.execute("SELECT state FROM recipients").fetchall() == [("sending",)]
    db.close()
    assert simulator.requests("fax-cancel") == [] and spool.results() == []
    d.start()
    [result] = spool.wait_results(1, "failed", timeout=30)
    assert "gave up" in result["recipients"][0]["message"]
    assert len(simulator.requests("fax-cancel")) == 1
