"""Documents that cannot be faxed end in failed/ with a result a person can act on."""

from __future__ import annotations

import os

import pytest
from conftest import make_pdf, make_tiff, without_root_file_access


def _reject(service, spool, simulator, rel: str, data: bytes, **overrides):
    service(**overrides)
    path = spool.outbox / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    [result] = spool.wait_results(1, "failed")
    assert result["state"] == "rejected"
    assert simulator.requests("fax-send") == []
    assert all(r["attempts"] == 0 and r["ifax_job_id"] is None for r in result["recipients"])
    assert spool.outbox_files() == []
    return result


def test_empty_file(service, spool, simulator):
    r = _reject(service, spool, simulator, "+15551230401/empty.pdf", b"")
    assert r["reason_code"] == "empty"
    assert (spool.failed / "+15551230401" / "empty.pdf").exists()


def test_unsupported_type_by_content_not_name(service, spool, simulator):
    r = _reject(service, spool, simulator, "+15551230402/notes.pdf", b"just some text, not a PDF\n")
    assert r["reason_code"] == "unsupported_type"
    assert "PDF, TIFF, PNG and JPEG" in r["reason"]
    assert r["reason"].count("not a faxable document") == 1 and "notes.pdf" in r["reason"]


def test_too_large_by_size(service, spool, simulator):
    r = _reject(service, spool, simulator, "+15551230403/big.pdf", make_pdf(2),
                defaults={"max_file_size": 100})
    assert r["reason_code"] == "too_large"


def test_too_large_by_pages(service, spool, simulator):
    r = _reject(service, spool, simulator, "+15551230404/long.tif", make_tiff(3),
                defaults={"max_pages": 2})
    assert r["reason_code"] == "too_large" and "3 pages" in r["reason"]


def test_no_destination_after_sidecar_wait(service, spool, simulator):
    r = _reject(service, spool, simulator, "lonely.pdf", make_pdf(1))
    assert r["reason_code"] == "no_destination"
    assert "folder named after the fax number" in r["reason"]
    assert (spool.failed / "lonely.pdf.result.json").exists()


def test_invalid_number_folder_never_falls_through_to_outbox_number(service, spool, simulator):
    r = _reject(service, spool, simulator, "555-1234/local.pdf", make_pdf(1),
                outbox={"number": "+15551230499"})
    assert r["reason_code"] == "invalid_number"
    assert (spool.failed / "555-1234" / "local.pdf").exists()


def test_denied_number(service, spool, simulator):
    r = _reject(service, spool, simulator, "+19005550100/x.pdf", make_pdf(1),
                defaults={"deny": ["+1900"]})
    assert r["reason_code"] == "denied_number"


def test_broken_sidecar_rejects_its_document(service, spool, simulator):
    service(outbox={"number": "+15551230498"})
    (spool.outbox / "x.pdf.yaml").write_text("to: [unclosed\n")
    (spool.outbox / "x.pdf").write_bytes(make_pdf(1))
    [result] = spool.wait_results(1, "failed")
    assert result["reason_code"] == "bad_sidecar" and "x.pdf.yaml" in result["reason"]
    assert sorted(result["files"]) == ["x.pdf", "x.pdf.yaml"]
    assert simulator.requests("fax-send") == []


def test_duplicated_sidecars_reject(service, spool, simulator):
    service()
    (spool.outbox / "d.pdf.yaml").write_text("+15551230405\n")
    (spool.outbox / "d.yaml").write_text("+15551230406\n")
    (spool.outbox / "d.pdf").write_bytes(make_pdf(1))
    [result] = spool.wait_results(1, "failed")
    assert result["reason_code"] == "bad_sidecar" and "more than one sidecar" in result["reason"]
    assert sorted(result["files"]) == ["d.pdf", "d.pdf.yaml", "d.yaml"]
    assert simulator.requests("fax-send") == []


def test_ambiguous_sidecar_rejects_every_document_it_could_apply_to(service, spool, simulator):
    service()
    (spool.outbox / "scan.yaml").write_text("+15551230407\n")
    (spool.outbox / "scan.pdf").write_bytes(make_pdf(1))
    (spool.outbox / "scan.tif").write_bytes(make_tiff(1))
    [result] = spool.wait_results(1, "failed")
    assert result["reason_code"] == "bad_sidecar"
    assert sorted(result["files"]) == ["scan.pdf", "scan.tif", "scan.yaml"]


def test_sidecar_whose_document_never_comes(service, spool, simulator):
    service()
    (spool.outbox / "late.yaml").write_text("+15551230408\n")
    [result] = spool.wait_results(1, "failed")
    assert result["reason_code"] == "bad_sidecar"
    assert result["_path"].name == "late.yaml.result.json"


def test_sidecar_files_job_sends_all_documents_in_order(service, spool, simulator):
    service()
    (spool.outbox / "batch.yaml").write_text("to: '+15551230409'\nfiles: [b.pdf, a.pdf]\n")
    a, b = make_pdf(1, text="a"), make_pdf(2, text="b")
    (spool.outbox / "a.pdf").write_bytes(a)
    (spool.outbox / "b.pdf").write_bytes(b)
    [result] = spool.wait_results(1, "sent")
    [req] = simulator.requests("fax-send")
    import base64
    assert [base64.b64decode(f["fileData"]) for f in req["body"]["faxData"]] == [b, a]
    assert result["recipients"][0]["pages"] == 3


def test_sidecar_files_missing_one_is_rejected_naming_it(service, spool, simulator):
    service()
    (spool.outbox / "batch.yaml").write_text("to: '+15551230410'\nfiles: [here.pdf, missing.pdf]\n")
    (spool.outbox / "here.pdf").write_bytes(make_pdf(1))
    [result] = spool.wait_results(1, "failed")
    assert result["reason_code"] == "bad_sidecar" and "missing.pdf" in result["reason"]
    assert simulator.requests("fax-send") == []


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo"])
def test_links_and_fifos_are_never_opened(service, spool, simulator, tmp_path, kind):
    secret = tmp_path / "outside.pdf"
    secret.write_bytes(make_pdf(1))
    service()
    folder = spool.folder("+15551230411")
    target = folder / "x.pdf"
    if kind == "symlink":
        os.symlink(secret, target)
    elif kind == "hardlink":
        os.link(secret, target)
    else:
        os.mkfifo(target)
    [result] = spool.wait_results(1, "failed")
    assert result["reason_code"] == "unsafe_file"
    if kind == "fifo":
        assert result["sha256"] == [None]
    assert simulator.requests("fax-send") == []


def test_unreadable_file_is_rejected_and_one_made_readable_is_sent(daemon, spool, simulator):
    d = daemon(prefix=without_root_file_access()).start()
    folder = spool.folder("+15551230412")
    locked, late = folder / "locked.pdf", folder / "late.pdf"
    for path in (locked, late):
        path.write_bytes(make_pdf(1, text=path.name))
        path.chmod(0)
    import time
    time.sleep(0.8)  # the print driver's delay before it sets the final permissions
    assert late.exists() and simulator.requests("fax-send") == []
    late.chmod(0o644)
    [sent] = spool.wait_results(1, "sent")
    assert sent["files"] == ["late.pdf"]
    [rejected] = spool.wait_results(1, "failed")  # after sidecar_wait (1.5 s)
    assert rejected["files"] == ["locked.pdf"]
    assert rejected["reason_code"] == "unreadable"
    assert "umask or group" in rejected["reason"]
    assert rejected["sha256"] == [None]
    assert len(simulator.requests("fax-send")) == 1
    d.terminate()
