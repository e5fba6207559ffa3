"""Files are taken only when their writer is done, however real writers write them.

The pauses below are the writer's behaviour under test (a print driver between pages, a
stalled upload), not waits for the gateway: those use wait_for with a deadline."""

from __future__ import annotations

import os
import time

from conftest import make_pdf, sent_documents, wait_for

SETTLE = 0.3


def _no_submission_yet(simulator, spool, rel):
    assert simulator.requests("fax-send") == []
    assert (spool.outbox / rel).exists(), "the file was taken while its writer still had it open"


def test_writer_pausing_longer_than_settle_with_file_open(service, spool, simulator):
    service()
    folder = spool.folder("+15551230101")
    data = make_pdf(4)
    half = len(data) // 2
    with open(folder / "report.pdf", "wb") as f:
        f.write(data[:half])
        f.flush()
        time.sleep(SETTLE * 5)  # a stalled Samba upload, file still open
        _no_submission_yet(simulator, spool, "+15551230101/report.pdf")
        f.write(data[half:])
    spool.wait_results(1, "sent")
    assert sent_documents(simulator) == [("+15551230101", data)]


def test_empty_file_still_open_is_not_empty_yet(service, spool, simulator):
    service()
    folder = spool.folder("+15551230102")
    data = make_pdf(1)
    with open(folder / "scan.pdf", "wb") as f:
        time.sleep(SETTLE * 5)  # a Samba upload sitting at 0 bytes
        _no_submission_yet(simulator, spool, "+15551230102/scan.pdf")
        f.write(data)
    [result] = spool.wait_results(1, "sent")
    assert result["state"] == "delivered"
    assert sent_documents(simulator) == [("+15551230102", data)]


def test_print_driver_writing_page_by_page(service, spool, simulator):
    service()
    folder = spool.folder("+15551230103")
    data = make_pdf(6)
    chunks = [data[i:i + len(data) // 4 + 1] for i in range(0, len(data), len(data) // 4 + 1)]
    with open(folder / "print.pdf", "wb") as f:
        for chunk in chunks:
            f.write(chunk)
            f.flush()
            time.sleep(SETTLE * 2)  # CUPS-PDF between pages
    spool.wait_results(1, "sent")
    assert sent_documents(simulator) == [("+15551230103", data)]


def test_part_file_renamed_at_the_end(service, spool, simulator):
    service()
    folder = spool.folder("+15551230104")
    data = make_pdf(2)
    part = folder / "upload.pdf.part"
    with open(part, "wb") as f:
        f.write(data[:100])
    time.sleep(SETTLE * 3)  # the partial download sits there, closed, longer than settle
    assert simulator.requests() == []
    with open(part, "ab") as f:
        f.write(data[100:])
    os.rename(part, folder / "upload.pdf")
    [result] = spool.wait_results(1, "sent")
    assert result["files"] == ["upload.pdf"]
    assert sent_documents(simulator) == [("+15551230104", data)]


def test_same_name_written_again_is_a_new_document(service, spool, simulator):
    service()
    folder = spool.folder("+15551230105")
    first, second = make_pdf(1, text="first"), make_pdf(2, text="second")
    (folder / "scan.pdf").write_bytes(first)
    wait_for(lambda: not (folder / "scan.pdf").exists(), 10, "the first scan to be taken")
    (folder / "scan.pdf").write_bytes(second)
    spool.wait_results(2, "sent")
    assert sorted(d for _, d in sent_documents(simulator)) == sorted([first, second])
    assert (spool.sent / "+15551230105" / "scan.pdf").read_bytes() == first
    assert (spool.sent / "+15551230105" / "scan-1.pdf").read_bytes() == second


def test_ignored_names_are_never_touched(service, spool, simulator):
    service()
    folder = spool.folder("+15551230106")
    junk = ["~lock.pdf", ".hidden.pdf", "scan.tmp", "x.crdownload", "Thumbs.db", "desktop.ini",
            ".sync/inner.pdf", "@eaDir/thumb.pdf"]
    for name in junk:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(make_pdf(1))
    (folder / "real.pdf").write_bytes(make_pdf(1))
    spool.wait_results(1, "sent")
    for name in junk:
        assert (folder / name).exists(), name
    assert len(simulator.requests("fax-send")) == 1


def test_polling_outbox_settles_on_time_alone(service, spool, simulator):
    service(outbox={"polling": True})
    folder = spool.folder("+15551230107")
    data = make_pdf(1)
    (folder / "polled.pdf").write_bytes(data)
    spool.wait_results(1, "sent")
    assert sent_documents(simulator) == [("+15551230107", data)]


def test_file_dropped_while_api_is_slow_is_sent_once(service, spool, simulator):
    """Many documents at once: each is sent exactly once."""
    service()
    folder = spool.folder("+15551230108")
    docs = {f"doc{i}.pdf": make_pdf(1, text=str(i)) for i in range(12)}
    for name, data in docs.items():
        (folder / name).write_bytes(data)
    spool.wait_results(12, "sent", timeout=30)
    assert sorted(d for _, d in sent_documents(simulator)) == sorted(docs.values())
