"""Document types are judged by content, pages are counted, and damage is caught before sending."""

from __future__ import annotations

import dataclasses
import io
import logging
import re
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


def rejection(data: bytes) -> Rejected:
    with pytest.raises(Rejected) as info:
        inspect_document(data)
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
