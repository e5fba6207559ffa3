"""Documents are read in a process of their own, with a deadline (gateway/docreader.py;
SPEC 4.5: counting the pages of a document stops within a few seconds).  Real reader
processes and, at the end, the real service."""

from __future__ import annotations

import os
import struct
import threading
import time
import zlib

import pytest
from conftest import make_pdf, make_png, make_tiff, wait_for

from gateway.docreader import DocumentReader, ReaderFailed, _Broken, _decoded, _parsed
from gateway.doctypes import DocInfo, inspect_document
from gateway.errors import Rejected

SLOW_OBJECTS = 300_000  # pypdf takes seconds for these (about 1 s per 70,000 here)


def pdf_slow_to_read(objects: int = SLOW_OBJECTS) -> bytes:
    """A valid one-page PDF whose catalog and page lie in a compressed object stream behind
    `objects` small objects: pypdf parses every one of them before it finds the catalog."""
    header, data = bytearray(), bytearray(b" ")
    for i in range(objects):
        header += b"%d %d " % (900_000 + i, len(data))
        data += b"0 "
    bodies = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Count 1 /Kids [3 0 R] >>",
              b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>"]
    for n, body in enumerate(bodies, start=1):
        header += b"%d %d " % (n, len(data))
        data += body + b" "
    stream = zlib.compress(bytes(header + data), 9)
    out = bytearray(b"%PDF-1.5\n")
    stm_num, stm_at = len(bodies) + 1, len(out)
    out += (b"%d 0 obj\n<< /Type /ObjStm /Filter /FlateDecode /N %d /First %d /Length %d >>\nstream\n"
            % (stm_num, objects + len(bodies), len(header), len(stream)) + stream + b"\nendstream\nendobj\n")
    xref_num, xref_at = stm_num + 1, len(out)
    rows = [struct.pack(">BII", 0, 0, 65535)]
    rows += [struct.pack(">BII", 2, stm_num, objects + i) for i in range(len(bodies))]
    rows += [struct.pack(">BII", 1, stm_at, 0), struct.pack(">BII", 1, xref_at, 0)]
    xref = b"".join(rows)
    out += (b"%d 0 obj\n<< /Type /XRef /W [1 4 4] /Size %d /Root 1 0 R /Length %d >>\nstream\n"
            % (xref_num, xref_num + 1, len(xref)) + xref + b"\nendstream\nendobj\n")
    out += b"startxref\n%d\n%%%%EOF\n" % xref_at
    return bytes(out)


@pytest.fixture
def reader():
    r = DocumentReader(deadline=1.0)
    yield r
    r.close()


def test_the_slow_pdf_is_a_valid_one_page_pdf_when_read_to_the_end():
    """The construction is sound: without a deadline it is read, and found to have one page."""
    r = DocumentReader(deadline=600)
    try:
        assert r.inspect(pdf_slow_to_read(), 100).pages == 1
    finally:
        r.close()


def test_a_document_not_read_within_the_deadline_is_rejected_and_the_next_is_read(reader):
    with pytest.raises(Rejected) as caught:
        reader.inspect(pdf_slow_to_read(), 100)
    assert caught.value.reason_code == "too_large"
    assert "could not be read within 1 s" in caught.value.reason
    assert reader.killed == 1
    assert reader.inspect(make_pdf(2), 100) == DocInfo("pdf", ".pdf", "application/pdf", 2)


def test_a_batch_is_answered_in_order_and_a_slow_document_costs_only_itself(reader):
    answers = reader.inspect_all([(make_pdf(1), 100), (pdf_slow_to_read(), 100), (make_pdf(2), 100),
                                  (b"text", 100), (make_pdf(3), 100)], groups_at={1, 2, 3, 4})
    assert [a.pages if isinstance(a, DocInfo) else a.reason_code for a in answers] == \
        [1, "too_large", 2, "unsupported_type", 3]
    assert reader.killed == 1


def _kill_reader_while_reading(reader: DocumentReader, times: int) -> threading.Thread:
    """Kills the reader process `times` times, each a moment after it (re)started."""
    def run() -> None:
        seen: set[int] = set()
        for _ in range(times):
            proc = wait_for(lambda: reader._proc if reader._proc is not None and reader._ready
                            and reader._proc.pid not in seen else None, 10, "a reader process, ready")
            seen.add(proc.pid)
            time.sleep(0.5)  # started, and reading the slow document now (which takes it seconds)
            proc.kill()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_a_reader_that_dies_on_a_document_once_is_given_it_again():
    reader = DocumentReader(deadline=1.0)
    try:
        killer = _kill_reader_while_reading(reader, 1)
        answers = reader.inspect_all([(pdf_slow_to_read(), 100), (make_pdf(2), 100)], groups_at={1})
        killer.join(10)
        assert answers[0].reason_code == "too_large"  # the second try ran into the deadline
        assert answers[1].pages == 2
        assert reader.killed == 1
    finally:
        reader.close()


def test_a_document_the_reader_dies_on_twice_is_refused():
    reader = DocumentReader(deadline=60)
    try:
        killer = _kill_reader_while_reading(reader, 2)
        answers = reader.inspect_all([(pdf_slow_to_read(), 100), (make_pdf(2), 100)], groups_at={1})
        killer.join(10)
        assert answers[0].reason_code == "unsupported_type"
        assert "made the document reader stop" in answers[0].reason
        assert answers[1].pages == 2
        assert reader.killed == 0
    finally:
        reader.close()


@pytest.mark.parametrize("data, max_pages", [(make_pdf(3), 2), (b"plain text", 100), (b"", 100),
                                             (make_pdf(1)[:200], 100), (make_tiff(3), 2)])
def test_the_reader_rejects_as_inspect_document_does(reader, data, max_pages):
    with pytest.raises(Rejected) as here:
        inspect_document(data, max_pages)
    with pytest.raises(Rejected) as there:
        reader.inspect(data, max_pages)
    assert (there.value.reason_code, there.value.reason) == (here.value.reason_code, here.value.reason)


def test_the_reader_accepts_as_inspect_document_does(reader):
    for data in (make_pdf(3), make_tiff(2), make_png()):
        assert reader.inspect(data, 100) == inspect_document(data, 100)


def test_a_reader_that_died_between_documents_is_started_again(reader):
    reader.inspect(make_pdf(1), 100)
    first = reader._proc
    first.kill()
    first.wait()
    assert reader.inspect(make_pdf(1), 100).pages == 1
    assert reader._proc is not None and reader._proc.pid != first.pid
    assert reader.killed == 0  # not the document's fault


def test_the_reader_gets_neither_the_api_key_nor_the_daemons_descriptors(reader, monkeypatch, tmp_path):
    monkeypatch.setenv("IFAX_API_KEY", "secret-key-123")
    kept = os.open(tmp_path, os.O_RDONLY)  # a descriptor the daemon holds (a folder, the database)
    try:
        reader.inspect(make_pdf(1), 100)
        pid = reader._proc.pid
        environ = open(f"/proc/{pid}/environ", "rb").read()
        assert b"secret-key-123" not in environ and b"IFAX_API_KEY" not in environ
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        targets = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert str(tmp_path) not in targets
    finally:
        os.close(kept)


def test_close_ends_the_reader(reader):
    reader.inspect(make_pdf(1), 100)
    proc = reader._proc
    reader.close()
    assert proc.poll() is not None


@pytest.mark.parametrize("answer", [{"rejected": "no_such_code"}, {"kind": "exe", "pages": 1},
                                    {"kind": "pdf", "pages": 0}, {"kind": "pdf", "pages": "1"}, {}])
def test_an_answer_the_gateway_does_not_know_is_a_rejection(answer):
    decoded = _decoded(answer)
    assert isinstance(decoded, Rejected) and decoded.reason_code == "unsupported_type"


@pytest.mark.parametrize("line", [b'{"n": 7, "kind": "pdf", "pages": 1}', b'{"kind": "pdf", "pages": 1}',
                                  b"[1]", b"not json", b"[" * 100_000])
def test_an_answer_out_of_turn_or_not_an_answer_breaks_the_reader(line):
    """Answers carry the number of the document they answer: a stray line never answers
    the next document (the reader is replaced instead)."""
    with pytest.raises(_Broken):
        _parsed(line, 8)
    assert _parsed(b'{"n": 8, "kind": "pdf", "pages": 1}', 8)["pages"] == 1


def test_a_batch_stops_at_a_group_once_its_budget_is_spent(reader):
    answers = reader.inspect_all([(pdf_slow_to_read(), 100), (make_pdf(1), 100), (make_pdf(2), 100)],
                                 budget=0.01, groups_at={1, 2})
    assert len(answers) == 1 and answers[0].reason_code == "too_large"  # the first group is always read


def test_the_rest_of_a_group_is_not_read_once_one_document_of_it_is_refused(reader):
    answers = reader.inspect_all([(pdf_slow_to_read(), 100), (pdf_slow_to_read(), 100), (make_pdf(2), 100)],
                                 groups_at={2})
    assert answers[0].reason_code == "too_large"
    assert isinstance(answers[1], Rejected) and "not read" in answers[1].reason
    assert answers[2].pages == 2
    assert reader.killed == 1  # the second slow document was never read


def test_an_error_that_is_not_the_documents_is_not_a_rejection(reader, monkeypatch, tmp_path):
    """A library that cannot be loaded is the installation's fault: the document is judged
    again later (ReaderFailed), not refused."""
    (tmp_path / "pypdf").mkdir()
    (tmp_path / "pypdf" / "__init__.py").write_text("raise ImportError('pypdf broken for this test')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    [answer] = reader.inspect_all([(make_pdf(1), 100)])
    assert isinstance(answer, ReaderFailed) and not isinstance(answer, Rejected)
    assert "pypdf broken for this test" in str(answer)


def test_the_service_rejects_a_slow_pdf_and_goes_on_with_the_others(service, spool, simulator):
    svc = service()
    svc.intake.reader.deadline = 1.0
    (spool.folder("+15551230801") / "slow.pdf").write_bytes(pdf_slow_to_read())
    (spool.folder("+15551230802") / "quick.pdf").write_bytes(make_pdf(1))
    results = {r["_path"].parent.name: r for r in spool.wait_results(2, timeout=60)}
    slow, quick = results["+15551230801"], results["+15551230802"]
    assert slow["state"] == "rejected" and slow["reason_code"] == "too_large"
    assert "could not be read within 1 s" in slow["reason"]
    assert quick["state"] == "delivered"
    assert [r["body"]["faxNumber"] for r in simulator.requests("fax-send")] == ["+15551230802"]
    wait_for(lambda: svc.intake.reader.killed == 1, 5, "the reader killed once")


def test_the_service_starts_its_reader_before_the_first_document(service):
    """So the first document after a start does not wait for Python and pypdf to load."""
    svc = service()
    proc = wait_for(lambda: svc.intake.reader._proc, 10, "the reader process")
    assert proc.poll() is None
    svc.stop()
    assert proc.poll() is not None  # and ends with the service


def test_a_batch_of_slow_pdfs_is_judged_over_several_turns_and_none_is_lost(service, spool, simulator):
    """Intake's batch stops starting documents after READ_BUDGET: the jobs not read yet are
    judged in later turns (its heartbeat beating between), and every one is judged."""
    svc = service()
    svc.intake.reader.deadline = 1.0
    slow = pdf_slow_to_read()
    folder = spool.folder("+15551230803")
    for i in range(3):
        (folder / f"slow{i}.pdf").write_bytes(slow)
    (folder / "quick.pdf").write_bytes(make_pdf(1))
    results = {r["files"][0]: r for r in spool.wait_results(4, timeout=60)}
    assert {name: r["reason_code"] for name, r in results.items() if name != "quick.pdf"} == \
        {f"slow{i}.pdf": "too_large" for i in range(3)}
    assert results["quick.pdf"]["state"] == "delivered"
    assert svc.intake.reader.killed == 3
