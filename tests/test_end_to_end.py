"""Documents dropped into an outbox are faxed once, complete, and filed with a result."""

from __future__ import annotations

import hashlib

from conftest import make_pdf, make_png, sent_documents, wait_for


def test_pdf_in_number_folder_is_delivered_and_filed(service, spool, simulator):
    service()
    folder = spool.folder("+15551230001")
    data = make_pdf(3)
    (folder / "invoice.pdf").write_bytes(data)

    [result] = spool.wait_results(1, "sent")
    assert result["_path"] == spool.sent / "+15551230001" / "invoice.pdf.result.json"
    assert (spool.sent / "+15551230001" / "invoice.pdf").read_bytes() == data
    assert result["state"] == "delivered"
    assert result["reason"] is None and result["reason_code"] is None
    assert result["simulated"] is False
    assert result["outbox"] == "main"
    assert result["files"] == ["invoice.pdf"]
    assert result["sha256"] == [hashlib.sha256(data).hexdigest()]
    assert result["created_at"].endswith("Z") and result["completed_at"].endswith("Z")
    [r] = result["recipients"]
    assert r["to"] == "+15551230001"
    assert r["state"] == "delivered"
    assert r["attempts"] == 1
    assert r["pages"] == 3
    assert r["transferred_pages"] == 3
    assert r["ifax_job_id"] == simulator.requests("fax-send")[0]["job_id"]
    assert r["cost"] == simulator.job(r["ifax_job_id"])["actualCost"]
    assert sent_documents(simulator) == [("+15551230001", data)]
    assert spool.outbox_files() == []


def test_png_in_formatted_number_folder_is_normalised(service, spool, simulator):
    service()
    folder = spool.folder("+1 (555) 123-0002")
    data = make_png()
    (folder / "scan.png").write_bytes(data)
    [result] = spool.wait_results(1, "sent")
    assert result["_path"].parent == spool.sent / "+1 (555) 123-0002"
    assert result["recipients"][0]["to"] == "+15551230002"
    assert sent_documents(simulator) == [("+15551230002", data)]
    body = simulator.requests("fax-send")[0]["body"]
    assert body["faxData"][0]["fileName"] == "scan.png"


def test_bare_number_sidecar_at_outbox_root(service, spool, simulator):
    service()
    (spool.outbox / "letter.yaml").write_text("+15551230003\n")
    data = make_pdf(1)
    (spool.outbox / "letter.pdf").write_bytes(data)
    [result] = spool.wait_results(1, "sent")
    assert result["files"] == ["letter.pdf", "letter.yaml"]
    assert (spool.sent / "letter.yaml").read_text() == "+15551230003\n"
    assert result["recipients"][0]["to"] == "+15551230003"
    assert sent_documents(simulator) == [("+15551230003", data)]


def test_detected_type_names_the_upload_and_headers_are_sent(service, spool, simulator):
    service()
    folder = spool.folder("+15551230004")
    (folder / "Überweisung März.dat").write_bytes(make_pdf(1))
    spool.wait_results(1, "sent")
    [req] = simulator.requests("fax-send")
    assert req["body"]["faxData"][0]["fileName"].endswith(".pdf")
    assert req["body"]["faxData"][0]["fileName"].isascii()


def test_sidecar_with_two_recipients_and_cover_fields(service, spool, simulator):
    service()
    (spool.outbox / "memo.pdf.yaml").write_text(
        "to: [+15551230005, '(555) 123-0006']\nsubject: Quarterly\nreference: PO-77\n")
    (spool.outbox / "memo.pdf").write_bytes(make_pdf(2))
    [result] = spool.wait_results(1, "sent")
    assert [r["to"] for r in result["recipients"]] == ["+15551230005", "+15551230006"]
    assert result["reference"] == "PO-77"
    bodies = [r["body"] for r in simulator.requests("fax-send")]
    assert sorted(b["faxNumber"] for b in bodies) == ["+15551230005", "+15551230006"]
    assert all(b["subject"] == "Quarterly" for b in bodies)
    assert all("reference" not in b for b in bodies)


def test_name_collision_in_sent_takes_lowest_free_suffix(service, spool, simulator):
    (spool.sent / "+15551230007").mkdir()
    (spool.sent / "+15551230007" / "scan.pdf").write_bytes(b"older")
    (spool.sent / "+15551230007" / "scan-1.pdf.result.json").write_text("{}")
    service()
    folder = spool.folder("+15551230007")
    data = make_pdf(1)
    (folder / "scan.pdf").write_bytes(data)
    wait_for(lambda: (spool.sent / "+15551230007" / "scan-2.pdf.result.json").exists(), 20,
             "the result under suffix 2")
    assert (spool.sent / "+15551230007" / "scan.pdf").read_bytes() == b"older"
    assert (spool.sent / "+15551230007" / "scan-2.pdf").read_bytes() == data


def test_failed_fax_goes_to_failed_with_the_api_message(service, spool, simulator):
    service(defaults={"resend": {"max": 0}})
    folder = spool.folder("+15551230666")
    (folder / "doc.pdf").write_bytes(make_pdf(1))
    [result] = spool.wait_results(1, "failed")
    assert result["state"] == "failed"
    r = result["recipients"][0]
    assert r["state"] == "failed" and r["message"] == "USER_BUSY" and r["code"] == 17
    assert "USER_BUSY" in result["reason"]


def test_files_present_at_startup_are_taken(make_config, service, spool, simulator):
    folder = spool.folder("+15551230008")
    (folder / "early.pdf").write_bytes(make_pdf(1))
    service()
    [result] = spool.wait_results(1, "sent")
    assert result["files"] == ["early.pdf"]


def test_outbox_number_is_the_fallback_destination(service, spool, simulator):
    service(outbox={"number": "+15551230009"})
    (spool.outbox / "plain.pdf").write_bytes(make_pdf(1))
    [result] = spool.wait_results(1, "sent")
    assert result["recipients"][0]["to"] == "+15551230009"


def test_collision_renames_document_sidecar_and_result_alike(service, spool, simulator):
    (spool.sent / "memo.pdf").write_bytes(b"older")
    service()
    (spool.outbox / "memo.pdf.yaml").write_text("+15551230011\n")
    (spool.outbox / "memo.pdf").write_bytes(make_pdf(1))
    [result] = spool.wait_results(1, "sent")
    assert result["_path"].name == "memo-1.pdf.result.json"
    assert sorted(result["files"]) == ["memo-1.pdf", "memo-1.pdf.yaml"]
    assert (spool.sent / "memo-1.pdf.yaml").read_text() == "+15551230011\n"
