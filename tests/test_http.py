"""/healthz and /metrics of the running daemon (SPEC 7, 8)."""

from __future__ import annotations

import httpx

from conftest import make_pdf


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

    folder = spool.outbox / "+15551230501"
    folder.mkdir()
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
    assert "test-key" not in text
    assert d.terminate() == 0


def test_wrong_key_pauses_submissions_and_turns_healthz_503(daemon, spool, simulator):
    d = daemon(api={"key": "wrong-key"}).start()
    folder = spool.outbox / "+15551230502"
    folder.mkdir()
    (folder / "a.pdf").write_bytes(make_pdf(1))

    from conftest import wait_for
    wait_for(lambda: httpx.get(d.url + "/healthz").status_code == 503, 15, "healthz 503")
    body = httpx.get(d.url + "/healthz").json()
    assert any("refuses the account" in r for r in body["reasons"])
    assert "wrong-key" not in str(body) and "wrong-key" not in d.metrics()
    assert _metric(d.metrics(), "fax_gateway_api_paused") == 1
    assert spool.results() == []  # nothing failed: the job waits in the queue
    assert "wrong-key" not in d.log.read_text()
    d.terminate()


def test_webhook_with_wrong_secret_is_404(daemon):
    d = daemon().start()
    assert httpx.post(d.url + "/ifax/webhook/nope", json={}).status_code == 404
    assert httpx.get(d.url + "/nothing").status_code == 404
    d.terminate()
