"""The iFax simulator, spoken to over real HTTP the way the gateway speaks to iFax."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from pypdf import PdfWriter

from gateway.simulator import Simulator

KEY = "test-key"
DELAY = 0.2
HEADERS = {"accessToken": KEY, "Accept": "application/json"}


def _pdf(pages: int) -> bytes:
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=612, height=792)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _image(fmt: str, frames: int = 1) -> bytes:
    images = [Image.new("L", (200, 100), 255) for _ in range(frames)]
    out = io.BytesIO()
    images[0].save(out, fmt, save_all=frames > 1, append_images=images[1:])
    return out.getvalue()


PDF3 = _pdf(3)
TIFF2 = _image("TIFF", 2)


def attachment(data: bytes = PDF3, name: str = "invoice.pdf") -> dict[str, str]:
    return {"fileName": name, "fileData": base64.b64encode(data).decode()}


def http_client(url: str, **kw: Any) -> httpx.Client:
    """A client like the gateway's; no TLS context, since the simulator speaks plain HTTP."""
    return httpx.Client(base_url=url, verify=False, **{"headers": HEADERS, "timeout": 5, **kw})


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator(key=KEY, delay=DELAY) as simulator:
        yield simulator


@pytest.fixture(autouse=True)
def _clean(sim: Simulator) -> None:
    sim.reset()


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx.Client]:
    with http_client(sim.url) as http:
        yield http


def call(client: httpx.Client, endpoint: str, body: Any = None, **kw: Any) -> dict[str, Any]:
    response = client.post(f"/customer/{endpoint}", json=body, **kw)
    assert response.status_code == 200, response.text
    return response.json()


def send(client: httpx.Client, number: str = "+15551234567", *files: dict[str, str]) -> int:
    answer = call(client, "fax-send", {"faxNumber": number, "faxData": list(files) or [attachment()]})
    assert answer["status"] == 1, answer
    assert answer["message"] == "Fax processed for sending"
    return answer["data"]["jobId"]


def status(client: httpx.Client, job_id: int | str) -> dict[str, Any]:
    answer = call(client, "fax-status", {"jobId": job_id})
    assert answer["status"] == 1, answer
    assert answer["message"] == "Fax status response"
    return answer["data"]


def wait_until(check: Callable[[], Any], timeout: float = 3.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.02)


def wait_final(client: httpx.Client, job_id: int) -> dict[str, Any]:
    return wait_until(lambda: (fax := status(client, job_id))["faxStatus"] != "sending" and fax)


def refusal(answer: dict[str, Any], *words: str) -> None:
    assert answer["status"] == 0, answer
    assert "data" not in answer
    for word in words:
        assert word.lower() in answer["message"].lower(), answer["message"]


# -- lifecycle ---------------------------------------------------------------------

def test_job_ids_start_at_1000_and_increase() -> None:
    with Simulator(key=KEY, delay=DELAY) as fresh, \
            http_client(fresh.url) as http:
        assert [send(http), send(http), send(http)] == [1000, 1001, 1002]


def test_plain_number_is_sending_then_delivered(client: httpx.Client) -> None:
    job_id = send(client, "+15551234567")
    fax = status(client, job_id)
    assert fax["faxStatus"] == "sending"
    assert "faxCallEnd" not in fax
    assert isinstance(fax["faxCallStart"], int)
    fax = wait_final(client, job_id)
    assert fax == {
        "jobId": job_id, "fromNumber": fax["fromNumber"], "toNumber": "+15551234567",
        "faxCallLength": fax["faxCallEnd"] - fax["faxCallStart"],
        "faxCallStart": fax["faxCallStart"], "faxCallEnd": fax["faxCallEnd"],
        "faxTotalPages": 3, "faxTransferredPages": 3, "pricePerPage": 0.11, "actualCost": 0.33,
        "faxStatus": "delivered", "retryAttempt": 0, "message": "NORMAL_CLEARING", "code": 0,
    }
    assert fax["faxCallEnd"] >= fax["faxCallStart"] > time.time() - 60


def test_666_fails_busy_and_fails_again_on_resend(client: httpx.Client) -> None:
    job_id = send(client, "+15551234666")
    fax = wait_final(client, job_id)
    assert (fax["faxStatus"], fax["code"], fax["message"]) == ("failed", 17, "USER_BUSY")
    assert (fax["faxTransferredPages"], fax["actualCost"]) == (0, 0)
    answer = call(client, "fax-resend", {"jobId": job_id, "faxData": [attachment()]})
    assert answer["status"] == 1
    assert wait_final(client, answer["data"]["jobId"])["faxStatus"] == "failed"


def test_777_fails_first_and_is_delivered_when_resent(client: httpx.Client, sim: Simulator) -> None:
    job_id = send(client, "+15551234777")
    assert wait_final(client, job_id)["faxStatus"] == "failed"
    answer = call(client, "fax-resend", {"jobId": job_id, "faxData": [attachment(TIFF2, "scan.tif")]})
    assert answer["status"] == 1 and answer["message"] == "Fax processed for sending"
    new_id = answer["data"]["jobId"]
    assert new_id != job_id
    fax = wait_final(client, new_id)
    assert (fax["faxStatus"], fax["toNumber"], fax["faxTotalPages"]) == ("delivered", "+15551234777", 2)
    assert fax["retryAttempt"] == 1
    assert sim.job(new_id)["resentFrom"] == job_id
    assert status(client, job_id)["faxStatus"] == "failed"  # the old attempt stays as it was


def test_888_stays_sending_until_canceled(client: httpx.Client) -> None:
    job_id = send(client, "+15551234888")
    time.sleep(DELAY * 2)
    assert status(client, job_id)["faxStatus"] == "sending"
    assert call(client, "fax-cancel", {"jobId": job_id}) == {"status": 1,
                                                             "message": "Fax canceled successfully"}
    fax = status(client, job_id)
    assert fax["faxStatus"] == "canceled"
    assert "faxCallEnd" in fax and fax["actualCost"] == 0
    refusal(call(client, "fax-cancel", {"jobId": job_id}), "canceled")


@pytest.mark.parametrize(("suffix", "word", "code", "message", "transferred", "cost"), [
    ("661", "blocked", 21, "CALL_REJECTED", 0, 0),
    ("662", "failed_chargeable", 41, "TEMPORARY_FAILURE", 0, 0.33),
    ("663", "partially_cancelled", 487, "ORIGINATOR_CANCEL", 2, 0.22),
    ("664", "canceled", 487, "ORIGINATOR_CANCEL", 0, 0),
])
def test_final_failure_statuses_by_number_suffix(client: httpx.Client, suffix: str, word: str, code: int,
                                                 message: str, transferred: int, cost: float) -> None:
    job_id = send(client, "+15551234" + suffix)  # three pages
    fax = wait_final(client, job_id)
    assert (fax["faxStatus"], fax["code"], fax["message"]) == (word, code, message)
    assert (fax["faxTransferredPages"], fax["actualCost"]) == (transferred, cost)
    answer = call(client, "fax-resend", {"jobId": job_id, "faxData": [attachment()]})
    assert answer["status"] == 1  # a person may still ask; the outcome is the same
    assert wait_final(client, answer["data"]["jobId"])["faxStatus"] == word


def test_665_fails_charged_first_and_is_delivered_when_resent(client: httpx.Client) -> None:
    job_id = send(client, "+15551234665")
    fax = wait_final(client, job_id)
    assert (fax["faxStatus"], fax["code"], fax["actualCost"]) == ("failed", 38, 0.33)
    answer = call(client, "fax-resend", {"jobId": job_id, "faxData": [attachment()]})
    fax = wait_final(client, answer["data"]["jobId"])
    assert (fax["faxStatus"], fax["actualCost"]) == ("delivered", 0.33)


def test_canceled_fax_can_be_resent(client: httpx.Client) -> None:
    job_id = send(client, "+15551234888")
    call(client, "fax-cancel", {"jobId": job_id})
    answer = call(client, "fax-resend", {"jobId": job_id, "faxData": [attachment()]})
    assert answer["status"] == 1 and answer["data"]["jobId"] != job_id


def test_cancel_of_a_final_fax_is_refused(client: httpx.Client) -> None:
    job_id = send(client)
    wait_final(client, job_id)
    refusal(call(client, "fax-cancel", {"jobId": job_id}), "delivered")


def test_delete_removes_a_final_fax_but_not_a_sending_one(client: httpx.Client) -> None:
    job_id = send(client)
    refusal(call(client, "fax-delete", {"jobId": job_id}), "sending")
    wait_final(client, job_id)
    assert call(client, "fax-delete", {"jobId": job_id}) == {"status": 1,
                                                             "message": "Fax deleted successfully"}
    refusal(call(client, "fax-status", {"jobId": job_id}), "Fax not found")
    refusal(call(client, "fax-delete", {"jobId": job_id}), "Fax not found")


def test_resend_of_a_fax_that_did_not_fail_is_refused(client: httpx.Client) -> None:
    sending = send(client, "+15551234888")
    refusal(call(client, "fax-resend", {"jobId": sending, "faxData": [attachment()]}), "sending")
    delivered = send(client)
    wait_final(client, delivered)
    refusal(call(client, "fax-resend", {"jobId": delivered, "faxData": [attachment()]}), "delivered")
    refusal(call(client, "fax-resend", {"jobId": 999999, "faxData": [attachment()]}), "Fax not found")


def test_resend_needs_fax_data(client: httpx.Client) -> None:
    job_id = send(client, "+15551234666")
    wait_final(client, job_id)
    refusal(call(client, "fax-resend", {"jobId": job_id}), "faxData")


def test_send_at_in_the_future_keeps_the_fax_sending(client: httpx.Client) -> None:
    answer = call(client, "fax-send", {"faxNumber": "+15551234567", "faxData": [attachment()],
                                       "send_at": "2099-01-01T08:00:00.000Z"})
    time.sleep(DELAY * 2)
    assert status(client, answer["data"]["jobId"])["faxStatus"] == "sending"
    refusal(call(client, "fax-send", {"faxNumber": "+15551234567", "faxData": [attachment()],
                                      "send_at": "tomorrow"}), "send_at")


# -- job ids -------------------------------------------------------------------------

def test_job_id_is_accepted_as_number_or_digit_string(client: httpx.Client) -> None:
    job_id = send(client)
    assert status(client, str(job_id))["jobId"] == job_id
    assert status(client, job_id)["jobId"] == job_id


@pytest.mark.parametrize("job_id", ["12a", "", None, 1.5, True, [1000], "-1"])
def test_malformed_job_id_is_refused(client: httpx.Client, job_id: Any) -> None:
    refusal(call(client, "fax-status", {"jobId": job_id}), "jobId")


def test_unknown_job_id_is_not_found(client: httpx.Client) -> None:
    for endpoint in ("fax-status", "fax-cancel", "fax-delete"):
        refusal(call(client, endpoint, {"jobId": 123}), "Fax not found")


# -- request checks ------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{"accessToken": "wrong"}, {}])
def test_wrong_or_missing_key_is_401(sim: Simulator, headers: dict[str, str]) -> None:
    with http_client(sim.url, headers={"Accept": "application/json", **headers}) as http:
        response = http.post("/customer/fax-send", json={"faxNumber": "+15551234567",
                                                          "faxData": [attachment()]})
    assert response.status_code == 401
    assert response.json() == {"status": 0, "message": "Unauthorized"}
    assert sim.jobs() == []


def test_missing_content_type_is_refused(client: httpx.Client) -> None:
    response = client.post("/customer/fax-status", content=b'{"jobId": 1}')
    assert response.status_code == 200
    refusal(response.json(), "Content-Type")
    response = client.post("/customer/fax-status", content=b'{"jobId": 1}',
                           headers={"Content-Type": "text/plain"})
    refusal(response.json(), "Content-Type")


@pytest.mark.parametrize("accept", [None, "text/html"])
def test_missing_or_wrong_accept_header_is_refused(client: httpx.Client, accept: str | None) -> None:
    request = client.build_request("POST", "/customer/fax-status", json={"jobId": 1})
    del request.headers["Accept"]
    if accept:
        request.headers["Accept"] = accept
    response = client.send(request)
    assert response.status_code == 200
    refusal(response.json(), "Accept")


def test_json_content_type_with_charset_is_fine(client: httpx.Client) -> None:
    job_id = send(client)
    response = client.post("/customer/fax-status", content=f'{{"jobId": {job_id}}}'.encode(),
                           headers={"Content-Type": "application/json; charset=utf-8"})
    assert response.json()["status"] == 1


@pytest.mark.parametrize(("body", "says"), [
    (b"{not json", "Invalid JSON"),
    (b"", "empty"),
    (b"[1, 2]", "JSON object"),
])
def test_bad_json_is_refused(client: httpx.Client, body: bytes, says: str) -> None:
    response = client.post("/customer/fax-send", content=body,
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    refusal(response.json(), says)


@pytest.mark.parametrize(("body", "says"), [
    ({"faxData": [attachment()]}, "faxNumber"),
    ({"faxNumber": "+15551234567"}, "faxData"),
    ({"faxNumber": "+15551234567", "faxData": []}, "faxData"),
    ({"faxNumber": "+15551234567", "faxData": "x"}, "faxData"),
    ({"faxNumber": "+15551234567", "faxData": [{"fileData": attachment()["fileData"]}]}, "fileName"),
    ({"faxNumber": "+15551234567", "faxData": [{"fileName": "a.pdf"}]}, "fileData"),
    ({"faxNumber": "+15551234567", "faxData": [{"fileName": "a.pdf", "fileUrl": "https://x/a.pdf"}]},
     "fileUrl"),
    ({"faxNumber": "+15551234567", "faxData": [attachment()], "faxQuality": "Ultra"}, "faxQuality"),
    ({"faxNumber": "+15551234567", "faxData": [attachment()], "callerId": "555"}, "callerId"),
])
def test_missing_or_wrong_fields_are_refused(client: httpx.Client, body: dict[str, Any], says: str) -> None:
    refusal(call(client, "fax-send", body), says)


def test_bad_base64_is_refused(client: httpx.Client) -> None:
    body = {"faxNumber": "+15551234567", "faxData": [{"fileName": "a.pdf", "fileData": "JVBERi0x!!"}]}
    refusal(call(client, "fax-send", body), "base64")


@pytest.mark.parametrize("number", ["5551234567", "+0123456789", "+1 555 123 4567", "+12345",
                                    "+1234567890123456", "0015551234567", 15551234567])
def test_number_that_is_not_e164_is_refused(client: httpx.Client, number: Any) -> None:
    refusal(call(client, "fax-send", {"faxNumber": number, "faxData": [attachment()]}), "faxNumber")


@pytest.mark.parametrize(("data", "says"), [
    (b"PK\x03\x04" + b"\x00" * 40, "ZIP"),
    (b"just some text\n", "text"),
    (PDF3[: len(PDF3) // 2], "damaged PDF"),
])
def test_file_that_is_not_a_faxable_document_is_refused(client: httpx.Client, sim: Simulator,
                                                        data: bytes, says: str) -> None:
    body = {"faxNumber": "+15551234567", "faxData": [attachment(), attachment(data, "b.pdf")]}
    refusal(call(client, "fax-send", body), "b.pdf", says)
    assert sim.jobs() == []


def test_every_faxable_type_is_accepted_and_pages_are_summed(client: httpx.Client,
                                                             sim: Simulator) -> None:
    files = [attachment(PDF3, "a.pdf"), attachment(TIFF2, "b.tif"),
             attachment(_image("PNG"), "c.png"), attachment(_image("JPEG"), "d.dat")]
    job_id = send(client, "+442079460958", *files)
    assert status(client, job_id)["faxTotalPages"] == 3 + 2 + 1 + 1
    assert sim.job(job_id)["files"] == ["a.pdf", "b.tif", "c.png", "d.dat"]


# -- _method ---------------------------------------------------------------------------

def test_method_in_json_may_only_say_post(client: httpx.Client) -> None:
    job_id = send(client)
    assert call(client, "fax-status", {"jobId": job_id, "_method": "POST"})["status"] == 1
    refusal(call(client, "fax-status", {"jobId": job_id, "_method": "DELETE"}), "_method")


def test_method_as_form_field_may_only_say_post(client: httpx.Client) -> None:
    job_id = send(client)
    ok = client.post("/customer/fax-status", data={"_method": "POST", "jobId": str(job_id)})
    assert ok.json()["status"] == 1 and ok.json()["data"]["jobId"] == job_id
    multipart = client.post("/customer/fax-status", data={"_method": "POST", "jobId": str(job_id)},
                            files={"unused": ("x.txt", b"x")})
    assert multipart.json()["status"] == 1
    refusal(client.post("/customer/fax-status", data={"_method": "PUT", "jobId": str(job_id)}).json(),
            "_method")
    refusal(client.post("/customer/fax-status", data={"_method": "GET"},
                        files={"unused": ("x.txt", b"x")}).json(), "_method")


# -- routing -----------------------------------------------------------------------------

def test_unknown_path_is_404_and_other_methods_405(client: httpx.Client, sim: Simulator) -> None:
    assert client.post("/customer/fax-teleport", json={}).status_code == 404
    assert client.post("/fax-send", json={}).status_code == 404
    with http_client(sim.url.removesuffix("/v1")) as root:
        assert root.post("/customer/fax-send", json={}).status_code == 404
    response = client.get("/customer/fax-send")
    assert response.status_code == 405 and response.headers["Allow"] == "POST"


# -- recording ---------------------------------------------------------------------------

def test_every_request_is_recorded_with_its_body(client: httpx.Client, sim: Simulator) -> None:
    job_id = send(client)
    client.post("/customer/fax-status", json={"jobId": job_id}, headers={"accessToken": "bad"})
    sim.set_fault("error", count=1)
    client.post("/customer/fax-send", json={"faxNumber": "+15551234567", "faxData": [attachment()]})
    records = sim.requests()
    assert [(r["endpoint"], r["http_status"], r["job_id"], r["fault"]) for r in records] == [
        ("fax-send", 200, job_id, None), ("fax-status", 401, None, None), ("fax-send", 500, None, "error")]
    assert records[0]["body"]["faxData"][0]["fileData"] == attachment()["fileData"]
    assert records[0]["time"] <= records[1]["time"] <= records[2]["time"]
    assert [r["endpoint"] for r in sim.requests("fax-status")] == ["fax-status"]


def test_admin_endpoints_work_without_a_key(sim: Simulator, client: httpx.Client) -> None:
    job_id = send(client)
    admin = http_client(sim.url.removesuffix("/v1"), headers={})
    with admin:
        recorded = admin.get("/_simulator/requests", params={"endpoint": "fax-send"}).json()
        assert [r["job_id"] for r in recorded] == [job_id]
        assert admin.get(f"/_simulator/jobs/{job_id}").json()["toNumber"] == "+15551234567"
        assert [j["jobId"] for j in admin.get("/_simulator/jobs").json()] == [job_id]
        assert admin.get("/_simulator/jobs/1").status_code == 404
        answer = admin.post("/_simulator/faults", json={"mode": "down", "endpoints": ["fax-status"],
                                                        "count": 1})
        assert answer.json()["fault"]["mode"] == "down"
        assert client.post("/customer/fax-status", json={"jobId": job_id}).status_code == 503
        assert status(client, job_id)["jobId"] == job_id
        assert admin.post("/_simulator/faults", json={"mode": "explode"}).status_code == 400
        assert admin.post("/_simulator/faults", json={"mode": None}).json()["fault"] is None
        assert admin.post("/_simulator/reset").json() == {"status": 1}
        assert admin.get("/_simulator/requests").json() == []
        assert sim.job(job_id) is None


# -- faults --------------------------------------------------------------------------------

def _send_raw(client: httpx.Client) -> httpx.Response:
    return client.post("/customer/fax-send", json={"faxNumber": "+15551234567", "faxData": [attachment()]})


@pytest.mark.parametrize(("mode", "http_status", "processed"), [
    ("error", 500, False),
    ("bad_gateway", 502, True),
    ("rate_limit", 429, False),
    ("down", 503, False),
])
def test_http_error_faults(client: httpx.Client, sim: Simulator, mode: str, http_status: int,
                           processed: bool) -> None:
    sim.set_fault(mode)
    response = _send_raw(client)
    assert response.status_code == http_status
    if mode == "rate_limit":
        assert response.headers["Retry-After"] == "1"
    assert len(sim.jobs()) == (1 if processed else 0)
    assert (sim.requests()[0]["job_id"] is not None) == processed
    assert call(client, "fax-status", {"jobId": 1})["message"] == "Fax not found"  # status unaffected


@pytest.mark.parametrize(("mode", "processed"), [("drop_before", False), ("drop_after", True)])
def test_dropped_connection_faults(client: httpx.Client, sim: Simulator, mode: str,
                                   processed: bool) -> None:
    sim.set_fault(mode, count=1)
    with pytest.raises(httpx.RemoteProtocolError):
        _send_raw(client)
    assert len(sim.jobs()) == (1 if processed else 0)
    assert sim.requests()[0]["http_status"] is None
    assert _send_raw(client).json()["status"] == 1  # the same client recovers on a new connection


def test_slow_fault_answers_late_but_processes(client: httpx.Client, sim: Simulator) -> None:
    sim.set_fault("slow", seconds=0.4)
    started = time.monotonic()
    assert _send_raw(client).json()["status"] == 1
    assert time.monotonic() - started >= 0.4
    with pytest.raises(httpx.ReadTimeout):
        client.post("/customer/fax-send", json={"faxNumber": "+15551234567", "faxData": [attachment()]},
                    timeout=0.1)
    assert len(sim.jobs()) == 2  # a timed-out request may still have been taken: the gateway's problem


def test_refuse_all_refuses_every_document_with_the_same_message(client: httpx.Client,
                                                                 sim: Simulator) -> None:
    sim.set_fault("refuse_all", message="Insufficient balance")
    for data in (PDF3, TIFF2, _image("PNG")):
        answer = call(client, "fax-send", {"faxNumber": "+15551234567", "faxData": [attachment(data)]})
        assert answer == {"status": 0, "message": "Insufficient balance"}
    assert sim.jobs() == []
    bad_key = client.post("/customer/fax-send", json={}, headers={"accessToken": "nope"})
    assert bad_key.status_code == 401


def test_fault_count_and_endpoints_limit_what_is_affected(client: httpx.Client, sim: Simulator) -> None:
    sim.set_fault("down", count=2)
    assert client.post("/customer/fax-status", json={"jobId": 1}).status_code == 200
    assert [_send_raw(client).status_code for _ in range(3)] == [503, 503, 200]
    sim.set_fault("error", endpoints=("*",))
    assert client.post("/customer/fax-status", json={"jobId": 1}).status_code == 500
    sim.set_fault(None)
    assert _send_raw(client).status_code == 200
    assert sim.fault() is None


def test_unknown_fault_mode_is_an_error(sim: Simulator) -> None:
    with pytest.raises(ValueError, match="unknown fault mode"):
        sim.set_fault("explode")
    with pytest.raises(ValueError, match="endpoint"):
        sim.set_fault("down", endpoints=("fax-teleport",))


# -- connections and threads -----------------------------------------------------------------

def test_one_client_reuses_one_connection(client: httpx.Client, sim: Simulator) -> None:
    job_id = send(client)
    for _ in range(5):
        status(client, job_id)
    client.post("/customer/fax-status", json={"jobId": job_id}, headers={"accessToken": "bad"})
    refusal(call(client, "fax-send", {"faxNumber": "bad", "faxData": [attachment()]}))
    assert len({r["connection"] for r in sim.requests()}) == 1


def test_concurrent_sends_get_distinct_job_ids(sim: Simulator) -> None:
    ids: list[int] = []

    def worker() -> None:
        with http_client(sim.url) as http:
            ids.extend(send(http) for _ in range(3))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == len(set(ids)) == 18


def test_stop_closes_pooled_connections_and_start_comes_back_on_the_same_port() -> None:
    simulator = Simulator(key=KEY, delay=DELAY).start()
    try:
        url = simulator.url
        with http_client(url, timeout=2) as http:
            job_id = send(http)
            simulator.stop()
            with pytest.raises(httpx.TransportError):
                status(http, job_id)
            simulator.start()
            assert simulator.url == url
            assert status(http, job_id)["jobId"] == job_id
    finally:
        simulator.stop()


def test_serve_prints_its_url_and_stops_on_sigterm() -> None:
    code = ("from gateway.simulator import serve; "
            "serve('127.0.0.1', 0, key='k', delay=0.2)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                          env=env) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert "accessToken: k" in line
            url = line.split(" on ", 1)[1].split()[0]
            response = httpx.post(f"{url}/customer/fax-status", json={"jobId": 1},
                                  headers={"accessToken": "k", "Accept": "application/json"})
            assert response.json()["message"] == "Fax not found"
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=5) == 0
        finally:
            if process.poll() is None:
                process.kill()
