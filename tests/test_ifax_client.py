"""The iFax client against the simulator over real HTTP: every failure is classified by
whether iFax could have acted on the request (SPEC 6.2)."""

from __future__ import annotations

import pytest
from conftest import make_pdf

from gateway.errors import AuthFailed, Refused, Transient, Uncertain
from gateway.ifax import Attachment, IFaxClient, parse_status, parse_time


@pytest.fixture
def client(simulator):
    c = IFaxClient(simulator.url, "test-key", timeout=2, max_in_flight=2)
    yield c
    c.close()


def _doc():
    return [Attachment("a.pdf", make_pdf(1))]


def test_send_and_status(client, simulator):
    job = client.send("+15551230601", _doc())
    assert job.isdigit()
    st = client.status(job)
    assert st.status == "sending" and st.final_state is None
    [req] = simulator.requests("fax-send")
    assert req["body"]["faxNumber"] == "+15551230601"


@pytest.mark.parametrize("mode,exc", [
    ("rate_limit", Transient), ("down", Transient), ("error", Uncertain), ("bad_gateway", Uncertain),
    ("drop_after", Uncertain), ("refuse_all", Refused),
])
def test_faults_are_classified(client, simulator, mode, exc):
    simulator.set_fault(mode, count=1)
    with pytest.raises(exc):
        client.send("+15551230602", _doc())


def test_slow_answer_times_out_as_uncertain(simulator):
    c = IFaxClient(simulator.url, "test-key", timeout=0.3, max_in_flight=1)
    simulator.set_fault("slow", seconds=2, count=1)
    with pytest.raises(Uncertain):
        c.send("+15551230603", _doc())
    c.close()


def test_rate_limit_carries_retry_after(client, simulator):
    simulator.set_fault("rate_limit", count=1)
    with pytest.raises(Transient) as info:
        client.send("+15551230604", _doc())
    assert info.value.retry_after == 1


def test_no_server_is_transient(simulator):
    from conftest import free_port
    c = IFaxClient(f"http://127.0.0.1:{free_port()}/v1", "k", timeout=1, max_in_flight=1)
    with pytest.raises(Transient):
        c.send("+15551230605", _doc())
    c.close()


def test_wrong_key_and_wrong_base_url_refuse_the_account(simulator):
    c = IFaxClient(simulator.url, "wrong", timeout=2, max_in_flight=1)
    with pytest.raises(AuthFailed):
        c.status("1000")
    c.close()
    c = IFaxClient(simulator.url.removesuffix("/v1"), "test-key", timeout=2, max_in_flight=1)
    with pytest.raises(AuthFailed) as info:
        c.send("+15551230606", _doc())
    assert "/v1" in str(info.value)
    c.close()


def test_key_never_in_errors_or_repr(simulator):
    c = IFaxClient(simulator.url, "very-secret", timeout=2, max_in_flight=1)
    try:
        c.status("1")
    except Exception as exc:
        assert "very-secret" not in str(exc) and "very-secret" not in repr(exc)
    assert "very-secret" not in repr(c)
    c.close()


def test_reading_is_liberal_about_both_api_versions():
    old = parse_status({"jobId": "12345", "faxStatus": "Cancelled", "faxCallStart": "2020-04-29 14:29:59 UTC",
                        "faxTransferredPages": "3", "actualCost": 2, "errorMessage": "failed", "code": 12007})
    assert old.status == "canceled" and old.final_state == "canceled"
    assert old.call_start == 1588170599.0 and old.transferred_pages == 3 and old.cost == 2.0
    assert old.message == "failed"
    new = parse_status({"jobId": 1, "faxStatus": "delivered", "faxCallStart": 1588170599, "message": "ok"})
    assert new.final_state == "delivered" and new.call_start == 1588170599.0 and new.cost is None
    for word, final in [("failed_chargeable", "failed"), ("blocked", "failed"),
                        ("partially_cancelled", "failed"), ("queued", None), ("sending", None)]:
        assert parse_status({"faxStatus": word}).final_state == final
    assert parse_time("garbage") is None


def test_only_failed_is_a_resendable_final_failure():
    for word, final in [("failed", "failed"), ("blocked", "failed"), ("failed_chargeable", "failed"),
                        ("partially_cancelled", "failed"), ("cancelled", "canceled"),
                        ("canceled", "canceled"), ("delivered", "delivered"), ("sending", None)]:
        st = parse_status({"faxStatus": word})
        assert st.final_state == final and st.resendable == (word == "failed"), word
