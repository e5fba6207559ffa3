"""Document types are judged by content, pages are counted, and damage is caught before sending."""

from __future__ import annotations

import dataclasses
import io
import logging
import re
import struct
import warnings
import zipfile

import pytest
from PIL import Image
from pypdf import PdfWriter

from gateway.doctypes import DocInfo, inspect_document, safe_file_name, sniff
from gateway.errors import Rejected


def make_pdf(pages: int = 3, *, user_password: str | None = None, owner_password: str | None = None) -> bytes:
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=612, height=792)
    if user_password is not None or owner_password is not None:
        writer.encrypt(user_password=user_password or "", owner_password=owner_password,
                       algorithm="AES-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def make_tiff(frames: int = 2) -> bytes:
    images = [Image.new("1", (1728, 200), 1) for _ in range(frames)]
    out = io.BytesIO()
    images[0].save(out, "TIFF", save_all=True, append_images=images[1:], compression="group4")
    return out.getvalue()


def make_image(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (120, 80), (200, 30, 30)).save(out, fmt)
    return out.getvalue()


def build_pdf(*objects: bytes) -> bytes:
    """A PDF written by hand, for page trees no writer would make: object 1 is the catalog."""
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def pdf_repeating_one_page(pages: int, *, count: int | None = None) -> bytes:
    """`pages` pages that are all the same page object, so that 99,999 pages take 600 kB and no time."""
    return build_pdf(
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Count %d /Kids [%s] >>" % (pages if count is None else count, b"3 0 R " * pages),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>",
    )


def tiff_of_tiny_frames(frames: int, *, loop_to: int | None = None) -> bytes:
    """`frames` one-pixel frames sharing one byte of image data, in a hand-written chain of IFDs.

    With `loop_to`, the last IFD points back to that frame's instead of ending the chain.
    """
    first, size = 10, 2 + 8 * 12 + 4
    entries = b"".join([
        struct.pack("<HHIHH", 256, 3, 1, 1, 0),  # ImageWidth
        struct.pack("<HHIHH", 257, 3, 1, 1, 0),  # ImageLength
        struct.pack("<HHIHH", 258, 3, 1, 1, 0),  # BitsPerSample
        struct.pack("<HHIHH", 259, 3, 1, 1, 0),  # Compression: none
        struct.pack("<HHIHH", 262, 3, 1, 1, 0),  # PhotometricInterpretation: BlackIsZero
        struct.pack("<HHII", 273, 4, 1, 8),      # StripOffsets: the byte after the header
        struct.pack("<HHIHH", 278, 3, 1, 1, 0),  # RowsPerStrip
        struct.pack("<HHII", 279, 4, 1, 1),      # StripByteCounts
    ])
    directory = struct.pack("<H", 8) + entries
    following = [first + size * (index + 1) for index in range(frames)]
    following[-1] = 0 if loop_to is None else first + size * loop_to
    return b"".join([b"II*\x00", struct.pack("<I", first), b"\xff\x00",
                     *(directory + struct.pack("<I", offset) for offset in following)])


def rejection(data: bytes, max_pages: int | None = None) -> Rejected:
    with pytest.raises(Rejected) as info:
        inspect_document(data, max_pages=max_pages)
    return info.value


# -- sniff -----------------------------------------------------------------------

@pytest.mark.parametrize(("data", "kind"), [
    (make_pdf(1), "pdf"),
    (make_tiff(1), "tiff"),
    (b"MM\x00*\x00\x00\x00\x08", "tiff"),
    (make_image("PNG"), "png"),
    (make_image("JPEG"), "jpeg"),
])
def test_sniff_recognises_faxable_kinds_from_first_8_bytes(data: bytes, kind: str) -> None:
    assert sniff(data[:8]) == kind


@pytest.mark.parametrize("head", [
    b"", b"%PD", b"PK\x03\x04\x14\x00\x06\x00", b"GIF89a\x01\x00", b"hello wo", b"II+\x00\x08\x00\x00\x00",
    b"\x89PNG\r\n\x1a", b"\xff\xd8",
])
def test_sniff_returns_none_for_anything_else(head: bytes) -> None:
    assert sniff(head) is None


# -- inspect_document: good documents --------------------------------------------

def test_three_page_pdf_is_counted() -> None:
    assert inspect_document(make_pdf(3)) == DocInfo("pdf", ".pdf", "application/pdf", 3)


def test_two_frame_tiff_is_two_pages() -> None:
    assert inspect_document(make_tiff(2)) == DocInfo("tiff", ".tif", "image/tiff", 2)


def test_png_and_jpeg_are_one_page() -> None:
    assert inspect_document(make_image("PNG")) == DocInfo("png", ".png", "image/png", 1)
    assert inspect_document(make_image("JPEG")) == DocInfo("jpeg", ".jpg", "image/jpeg", 1)


def test_docinfo_is_frozen() -> None:
    info = inspect_document(make_pdf(1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.pages = 2  # type: ignore[misc]


def test_pdf_with_only_an_owner_password_is_counted() -> None:
    assert inspect_document(make_pdf(2, owner_password="owner")).pages == 2


def test_pdf_that_needs_a_password_is_rejected_saying_so() -> None:
    error = rejection(make_pdf(2, user_password="secret", owner_password="owner"))
    assert error.reason_code == "unsupported_type"
    assert "password" in error.reason


# -- inspect_document: rejections -------------------------------------------------

def test_empty_file_is_rejected_as_empty() -> None:
    assert rejection(b"").reason_code == "empty"


def test_pdf_without_pages_is_rejected() -> None:
    error = rejection(make_pdf(0))
    assert error.reason_code == "unsupported_type"
    assert "no pages" in error.reason


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_pdf_is_a_damaged_pdf(cut: float) -> None:
    data = make_pdf(3)
    error = rejection(data[: int(len(data) * cut)])
    assert error.reason_code == "unsupported_type"
    assert "damaged PDF" in error.reason


def test_pdf_header_followed_by_garbage_is_a_damaged_pdf() -> None:
    assert "damaged PDF" in rejection(b"%PDF-1.7\n" + bytes(range(256)) * 4 + b"\n%%EOF\n").reason
    assert "damaged PDF" in rejection(b"%PDF").reason


def test_truncated_tiff_is_a_damaged_tiff() -> None:
    data = make_tiff(2)
    for cut in (len(data) // 2, 20):
        error = rejection(data[:cut])
        assert error.reason_code == "unsupported_type"
        assert "damaged TIFF" in error.reason


@pytest.mark.parametrize(("fmt", "name"), [("PNG", "PNG"), ("JPEG", "JPEG")])
def test_truncated_images_are_damaged(fmt: str, name: str) -> None:
    data = make_image(fmt)
    for cut in (len(data) // 2, len(data) - 5):
        error = rejection(data[:cut])
        assert error.reason_code == "unsupported_type"
        assert f"damaged {name}" in error.reason


@pytest.mark.parametrize("data", [
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 100,
    b"\xff\xd8\xff" + b"garbage" * 20,
    b"II*\x00" + b"\xff" * 100,
])
def test_right_magic_with_a_wrong_body_is_rejected(data: bytes) -> None:
    assert rejection(data).reason_code == "unsupported_type"


def _zip(**members: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, text in members.items():
            archive.writestr(name.replace("__", "/"), text)
    return out.getvalue()


@pytest.mark.parametrize(("data", "says"), [
    (_zip(readme_txt="hello"), "a ZIP archive"),
    (_zip(word__document_xml="<w/>"), "Word document"),
    (_zip(xl__workbook_xml="<x/>"), "Excel"),
    (b"PK\x03\x04 not really a zip", "a ZIP archive"),
    (b"Dear customer,\nplease find attached\n", "a text file"),
    ("Grüße aus München\n".encode(), "a text file"),
    (b"<!DOCTYPE html><html></html>", "HTML"),
    (b"GIF89a\x01\x00\x01\x00", "GIF"),
    (b"\x1b%-12345X@PJL JOB\n%PDF-1.4\n", "printer job (PJL) wrapping a PDF"),
    (b"\x1bE\x1b&l0O", "printer job (PCL)"),
    (b"%!PS-Adobe-3.0\n", "PostScript"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 50, "Office"),
    (b"II+\x00\x08\x00\x00\x00", "BigTIFF"),
    (bytes(range(256)), "binary data"),
])
def test_unsupported_files_say_what_they_look_like(data: bytes, says: str) -> None:
    error = rejection(data)
    assert error.reason_code == "unsupported_type"
    assert says in error.reason
    assert error.reason.startswith("not a faxable document")


def test_damaged_documents_make_no_noise(capfd: pytest.CaptureFixture[str],
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    pdf, tiff, png = make_pdf(3), make_tiff(2), make_image("PNG")
    damaged = [pdf[: len(pdf) // 2], tiff[: len(tiff) // 2], tiff[:120], png[:-5], b"%PDF-1.4\nxx"]
    with warnings.catch_warnings(record=True) as caught:
        for data in damaged:
            with pytest.raises(Rejected):
                inspect_document(data)
    assert [w for w in caught if re.search(r"(PIL|pypdf)", w.filename)] == []
    assert [r for r in caplog.records if r.name.startswith(("pypdf", "PIL"))] == []
    assert capfd.readouterr().err == ""


# -- inspect_document: bounded page counts (SPEC 4.5) ---------------------------------

def test_pages_up_to_max_pages_are_counted_exactly() -> None:
    assert inspect_document(make_pdf(3), max_pages=3).pages == 3
    assert inspect_document(make_pdf(3), max_pages=100).pages == 3
    assert inspect_document(make_tiff(3), max_pages=3).pages == 3
    assert inspect_document(tiff_of_tiny_frames(100), max_pages=100).pages == 100
    assert inspect_document(pdf_repeating_one_page(100), max_pages=100).pages == 100
    assert inspect_document(make_image("PNG"), max_pages=1).pages == 1


def test_one_page_more_than_max_pages_is_too_large() -> None:
    for data in (make_pdf(4), make_tiff(4), tiff_of_tiny_frames(4), pdf_repeating_one_page(4, count=1)):
        error = rejection(data, max_pages=3)
        assert error.reason_code == "too_large"
        # 4 pages as the PDF declares them, or 4+ where counting stopped at the fourth.
        assert re.search(r"\(4\+? pages, the limit is max_pages = 3\)", error.reason)
    assert rejection(make_image("JPEG"), max_pages=0).reason_code == "too_large"


def test_without_max_pages_every_page_is_counted() -> None:
    assert inspect_document(tiff_of_tiny_frames(500)).pages == 500
    assert inspect_document(pdf_repeating_one_page(500, count=1)).pages == 500


def test_tiff_with_190000_frames_is_too_large() -> None:
    error = rejection(tiff_of_tiny_frames(190_000), max_pages=100)
    assert error.reason_code == "too_large"
    assert "the limit is max_pages = 100" in error.reason


@pytest.mark.parametrize("max_pages", [None, 100])
@pytest.mark.parametrize(("frames", "loop_to"), [(1, 0), (3, 0), (3, 1)])
def test_looping_tiff_chain_is_rejected_as_damaged(frames: int, loop_to: int, max_pages: int | None) -> None:
    error = rejection(tiff_of_tiny_frames(frames, loop_to=loop_to), max_pages=max_pages)
    assert error.reason_code == "unsupported_type"
    assert "damaged TIFF" in error.reason
    assert "leads back to an earlier page" in error.reason


def test_pdf_with_99999_pages_is_too_large() -> None:
    error = rejection(pdf_repeating_one_page(99_999), max_pages=100)
    assert error.reason_code == "too_large"
    assert "99999 pages, the limit is max_pages = 100" in error.reason


@pytest.mark.parametrize("pages", [500, 99_999])
def test_pdf_whose_count_says_one_page_is_still_counted(pages: int) -> None:
    error = rejection(pdf_repeating_one_page(pages, count=1), max_pages=100)
    assert error.reason_code == "too_large"
    assert "101+ pages, the limit is max_pages = 100" in error.reason


def test_pdf_page_tree_with_inner_nodes_is_counted() -> None:
    data = build_pdf(
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Count 3 /Kids [3 0 R 4 0 R] /MediaBox [0 0 612 792] >>",
        b"<< /Type /Pages /Count 2 /Parent 2 0 R /Kids [5 0 R 5 0 R] >>",
        b"<< /Type /Pages /Count 1 /Parent 2 0 R /Kids [5 0 R] >>",
        b"<< /Type /Page /Parent 3 0 R >>",  # its page size is inherited from the root
    )
    assert inspect_document(data).pages == 3
    assert inspect_document(data, max_pages=3).pages == 3
    assert "the limit is max_pages = 2" in rejection(data, max_pages=2).reason


def test_pdf_page_without_a_page_size_is_damaged() -> None:
    data = build_pdf(
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Count 1 /Kids [3 0 R] >>",
        b"<< /Type /Page /Parent 2 0 R >>",
    )
    error = rejection(data, max_pages=100)
    assert error.reason_code == "unsupported_type"
    assert "page 1 has no page size" in error.reason


@pytest.mark.parametrize("max_pages", [None, 100])
def test_looping_pdf_page_tree_is_rejected_as_damaged(max_pages: int | None) -> None:
    data = build_pdf(
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Count 1 /Kids [3 0 R] >>",
        b"<< /Type /Pages /Count 1 /Parent 2 0 R /Kids [4 0 R 2 0 R] >>",
        b"<< /Type /Page /Parent 3 0 R /MediaBox [0 0 612 792] >>",
    )
    error = rejection(data, max_pages=max_pages)
    assert error.reason_code == "unsupported_type"
    assert "loops back" in error.reason


def test_pdf_page_tree_padded_with_nulls_costs_no_more_than_its_budget() -> None:
    data = build_pdf(
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Count 1 /Kids [%s 3 0 R] >>" % (b"null " * 50_000),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>",
    )
    error = rejection(data, max_pages=100)
    assert error.reason_code == "too_large"
    assert "the limit is max_pages = 100" in error.reason
    assert inspect_document(data).pages == 1


def test_pdf_beyond_pypdfs_limits_is_too_large_not_damaged() -> None:
    # pypdf (since 6.21.0) refuses arrays of more than 100,000 elements with
    # LimitReachedError, before the page tree is walked at all.
    error = rejection(pdf_repeating_one_page(150_000, count=1), max_pages=100)
    assert error.reason_code == "too_large"
    assert "a PDF beyond what the gateway reads" in error.reason
    assert "damaged" not in error.reason


def test_negative_max_pages_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="max_pages"):
        inspect_document(make_pdf(1), max_pages=-1)


# -- safe_file_name ----------------------------------------------------------------

@pytest.mark.parametrize(("name", "kind", "expected"), [
    ("Überweisung März.dat", "pdf", "Uberweisung_Marz.pdf"),
    ("scan.dat", "pdf", "scan.pdf"),
    ("scan.PDF", "pdf", "scan.pdf"),
    ("scan.tiff", "tiff", "scan.tif"),
    ("photo.JPEG", "jpeg", "photo.jpg"),
    ("job0001", "png", "job0001.png"),
    ("Straße 12.pdf", "pdf", "Strasse_12.pdf"),
    ("Report 2024.12.01", "pdf", "Report_2024.12.01.pdf"),
    ("a   b!!c (copy).pdf", "pdf", "a_b_c_copy.pdf"),
    ("../../etc/passwd", "pdf", "passwd.pdf"),
    ("C:\\scans\\fax.pdf", "pdf", "fax.pdf"),
    ("請求書.pdf", "pdf", "document.pdf"),
    ("", "tiff", "document.tif"),
    ("...", "pdf", "document.pdf"),
    (".hidden.pdf", "pdf", "hidden.pdf"),
])
def test_safe_file_name(name: str, kind: str, expected: str) -> None:
    assert safe_file_name(name, kind) == expected


def test_safe_file_name_is_short_ascii_and_keeps_the_extension() -> None:
    name = safe_file_name("Ärztlicher Befund " * 20 + ".docx", "pdf")
    assert len(name) <= 100
    assert name.endswith(".pdf")
    assert re.fullmatch(r"[A-Za-z0-9._-]+", name)
    assert not name.removesuffix(".pdf").endswith(("_", ".", "-"))
