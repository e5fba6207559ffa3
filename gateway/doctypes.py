"""What a document is, judged by its content.

Print drivers and scanners name files carelessly (`scan.dat`, `job0001`, a PDF
called `.tif`), so the gateway never trusts an extension: the magic bytes decide
the type, and the document is then opened far enough to count its pages and to
catch the damage that would otherwise only show up as a failed fax minutes
later (a PDF cut short by a crashed writer, a TIFF whose last page never
arrived). Everything that is not a faxable document gets a short description of
what it seems to be instead, so that the person at the scanner learns *why*
("a Word document (DOCX)", "a printer job (PCL)") rather than just "rejected".

pypdf and Pillow are chatty about damaged input (logging and `warnings`); the
rejection already says what is wrong, so their noise is silenced with filters
that stay in place, rather than around each call (`warnings.catch_warnings` is
not thread-safe, and documents are inspected from several threads).
"""

from __future__ import annotations

import io
import logging
import re
import unicodedata
import warnings
import zipfile
from dataclasses import dataclass

from gateway.errors import Rejected

__all__ = ["EXTENSIONS", "MIME_TYPES", "DocInfo", "inspect_document", "safe_file_name", "sniff"]

EXTENSIONS: dict[str, str] = {"pdf": ".pdf", "tiff": ".tif", "png": ".png", "jpeg": ".jpg"}
MIME_TYPES: dict[str, str] = {
    "pdf": "application/pdf",
    "tiff": "image/tiff",
    "png": "image/png",
    "jpeg": "image/jpeg",
}

# Pillow's own identifier for each kind, to catch a file whose magic bytes and
# body disagree.
_PIL_FORMATS = {"tiff": "TIFF", "png": "PNG", "jpeg": "JPEG"}

logging.getLogger("pypdf").setLevel(logging.CRITICAL)
logging.getLogger("PIL").setLevel(logging.ERROR)
_NOISY_MODULES = r"(pypdf|PIL)(\.|$)"


def _silence_library_warnings() -> None:
    # Checked on every call, not just set at import: a `catch_warnings` block
    # around the import (pytest has one around collection) would discard it.
    for action, _message, _category, module, _lineno in warnings.filters:
        if action == "ignore" and module is not None and module.pattern == _NOISY_MODULES:
            return
    warnings.filterwarnings("ignore", module=_NOISY_MODULES)


@dataclass(frozen=True)
class DocInfo:
    """A faxable document: its detected type and the gateway's own page count."""

    kind: str  # "pdf" | "tiff" | "png" | "jpeg"
    extension: str  # ".pdf" ".tif" ".png" ".jpg"
    mime: str
    pages: int


def sniff(head: bytes) -> str | None:
    """Return the faxable kind announced by the first bytes, or None.

    Only the signature is looked at, so this is cheap enough for a watcher to
    call on a file's first 8 bytes; `inspect_document` confirms the rest.
    BigTIFF (`II+`) is deliberately not faxable: fax services and most TIFF
    readers in the fax chain do not take it, and scanners never write it.
    """
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    return None


def inspect_document(data: bytes) -> DocInfo:
    """Validate a whole document and count its pages, or raise `Rejected`.

    Raises Rejected("empty") for no bytes at all and Rejected("unsupported_type",
    <what the data looks like>) for anything that cannot be faxed as it is.
    """
    if not data:
        raise Rejected("empty")
    _silence_library_warnings()
    kind = sniff(data[:8])
    if kind is None:
        raise Rejected("unsupported_type", _describe(data))
    if kind == "pdf":
        pages = _count_pdf_pages(data)
    elif kind == "tiff":
        pages = _count_tiff_pages(data)
    else:
        pages = _check_single_image(data, kind)
    return DocInfo(kind=kind, extension=EXTENSIONS[kind], mime=MIME_TYPES[kind], pages=pages)


def _count_pdf_pages(data: bytes) -> int:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            # Many PDFs carry only an owner password (no printing restrictions
            # matter to a fax service); the empty user password opens them.
            try:
                opened = reader.decrypt("")
            except DependencyError:
                raise Rejected("unsupported_type",
                               "an encrypted PDF this gateway cannot open: save it without encryption"
                               ) from None
            if not opened:
                raise Rejected("unsupported_type",
                               "a password-protected PDF: save or print it again without a password")
        pages = len(reader.pages)
        for page in reader.pages:
            # Touching each page resolves its object, which is where a PDF with
            # a rebuilt cross-reference table turns out to have lost pages.
            page.mediabox  # noqa: B018
    except Rejected:
        raise
    except Exception as exc:
        raise Rejected("unsupported_type", _damaged_pdf_detail(data, exc)) from None
    if pages < 1:
        raise Rejected("unsupported_type", "a PDF with no pages")
    return pages


def _damaged_pdf_detail(data: bytes, exc: Exception) -> str:
    if b"%%EOF" not in data[-2048:]:
        return "a damaged PDF: it is incomplete, cut short or still being written"
    text = " ".join(str(exc).split())[:120] or type(exc).__name__
    return f"a damaged PDF: {text}"


def _count_tiff_pages(data: bytes) -> int:
    """Count frames and check that every frame's image data lies inside the file.

    The frames are not decoded: libtiff writes its complaints about damaged
    files straight to stderr, and a structural check already catches what
    actually happens to TIFFs on their way to an outbox (a truncated upload).
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "TIFF":
                raise ValueError(f"Pillow reads it as {image.format}")
            frames = image.n_frames
            for index in range(frames):
                image.seek(index)
                _check_tiff_frame(image, len(data), index)
    except Image.DecompressionBombError:
        raise Rejected("unsupported_type", "an image with far more pixels than a fax page") from None
    except Rejected:
        raise
    except Exception as exc:
        raise Rejected("unsupported_type", f"a damaged TIFF image: {_short(exc)}") from None
    if frames < 1:
        raise Rejected("unsupported_type", "a TIFF image with no pages")
    return frames


def _check_tiff_frame(image: object, size: int, index: int) -> None:
    tags = image.tag_v2  # type: ignore[attr-defined]
    offsets = tags.get(273) or tags.get(324)  # StripOffsets or TileOffsets
    counts = tags.get(279) or tags.get(325)  # StripByteCounts or TileByteCounts
    width, height = image.size  # type: ignore[attr-defined]
    if not width or not height:
        raise ValueError(f"page {index + 1} has no size")
    if not offsets or not counts or len(offsets) != len(counts):
        raise ValueError(f"page {index + 1} has no image data")
    if any(offset + count > size for offset, count in zip(offsets, counts, strict=True)):
        raise ValueError(f"page {index + 1} is cut short")


def _check_single_image(data: bytes, kind: str) -> int:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != _PIL_FORMATS[kind]:
                raise ValueError(f"Pillow reads it as {image.format}")
            image.verify()
        # verify() checks PNG checksums but not whether the pixel data is all
        # there (a JPEG cut short passes it), so decode it as well.
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Image.DecompressionBombError:
        raise Rejected("unsupported_type", "an image with far more pixels than a fax page") from None
    except Exception as exc:
        name = "PNG" if kind == "png" else "JPEG"
        raise Rejected("unsupported_type", f"a damaged {name} image: {_short(exc)}") from None
    return 1


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:120] or type(exc).__name__


def _describe(data: bytes) -> str:
    """Say in a few words what a non-faxable file seems to be."""
    head = data[:64]
    if head.startswith(b"%PDF"):
        return "a damaged PDF: it ends right after its header"
    if head.startswith((b"\x1b%-12345X", b"@PJL")):
        if b"%PDF-" in data[:4096]:
            return "a printer job (PJL) wrapping a PDF: set the driver to write a plain PDF file"
        return "a printer job (PJL/PCL), not a document: set the driver to write PDF"
    if head.startswith((b"\x1bE", b"\x1b&")):
        return "a printer job (PCL), not a document: set the driver to write PDF"
    if head.startswith(b"%!"):
        return "a PostScript file: set the driver to write PDF"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _describe_zip(data)
    if head.startswith((b"II+\x00", b"MM\x00+")):
        return "a BigTIFF image, which fax services do not take: save it as a normal TIFF or PDF"
    signatures = [
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Microsoft Office document (DOC/XLS/PPT)"),
        (b"{\\rtf", "an RTF document"),
        (b"GIF8", "a GIF image"),
        (b"BM", "a BMP image"),
        (b"\x1f\x8b", "a gzip archive"),
        (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
        (b"Rar!", "a RAR archive"),
        (b"\x7fELF", "a program"),
        (b"MZ", "a Windows program"),
        (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    ]
    for magic, what in signatures:
        if head.startswith(magic):
            return what
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    if head[4:8] == b"ftyp":
        if head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"heis"):
            return "a HEIC photo: export it as JPEG"
        return "a video or media file"
    return _describe_text(data[:4096])


def _describe_zip(data: bytes) -> str:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
    except Exception:
        return "a ZIP archive"
    if any(name.startswith("word/") for name in names):
        return "a Word document (DOCX): print it to PDF"
    if any(name.startswith("xl/") for name in names):
        return "an Excel workbook (XLSX): print it to PDF"
    if any(name.startswith("ppt/") for name in names):
        return "a PowerPoint presentation (PPTX): print it to PDF"
    if "mimetype" in names:
        return "an OpenDocument file: print it to PDF"
    return "a ZIP archive"


def _describe_text(sample: bytes) -> str:
    text = sample.removeprefix(b"\xef\xbb\xbf")
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by the sample's end is still text.
        if exc.start < len(text) - 3:
            return "binary data of an unknown type"
        decoded = text[: exc.start].decode("utf-8")
    if any(ch < " " and ch not in "\t\r\n\f" for ch in decoded):
        return "binary data of an unknown type"
    start = decoded.lstrip().lower()
    if start.startswith(("<!doctype html", "<html")):
        return "an HTML page"
    if start.startswith("<"):
        return "an XML file"
    return "a text file"


_SPECIAL_LETTERS = str.maketrans({
    "ß": "ss", "Æ": "AE", "æ": "ae", "Ø": "O", "ø": "o", "Œ": "OE", "œ": "oe",
    "Ł": "L", "ł": "l", "Đ": "D", "đ": "d", "Þ": "Th", "þ": "th", "ı": "i",
})
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SUFFIX = re.compile(r"\.([A-Za-z0-9]{1,5})$")
_MAX_NAME = 100


def safe_file_name(name: str, kind: str) -> str:
    """An ASCII-only name for `name` ending in the extension of its real type.

    The provider may judge a file by its name, and not every system on the way
    copes with umlauts or spaces; "Überweisung März.dat" holding a PDF is sent
    as "Uberweisung_Marz.pdf". Only a suffix that looks like an extension (one
    to five letters or digits, at least one a letter) is replaced, so that
    "Report 2024.12.01" keeps its date.
    """
    extension = EXTENSIONS[kind]
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    match = _SUFFIX.search(base)
    if match and not match.group(1).isdigit() and match.start() > 0:
        base = base[: match.start()]
    base = unicodedata.normalize("NFKD", base.translate(_SPECIAL_LETTERS))
    base = "".join(ch for ch in base if not unicodedata.combining(ch))
    base = _UNSAFE.sub("_", base)
    base = re.sub(r"_{2,}", "_", re.sub(r"\.{2,}", ".", base))
    base = base.strip("._-")[: _MAX_NAME - len(extension)].rstrip("._-")
    return f"{base or 'document'}{extension}"
