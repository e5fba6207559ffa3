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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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


def inspect_document(data: bytes, max_pages: int | None = None) -> DocInfo:
    """Validate a whole document and count its pages, or raise `Rejected`.

    Raises Rejected("empty") for no bytes at all and Rejected("unsupported_type",
    <what the data looks like>) for anything that cannot be faxed as it is.

    With `max_pages`, counting stops at the first page past it, with
    Rejected("too_large"): a few megabytes can hold a hundred thousand pages,
    and counting them all would hold up intake for minutes (SPEC 4.5, bounded
    work). Without it every page is counted, within the parser's own limits.
    """
    if max_pages is not None and max_pages < 0:
        raise ValueError(f"max_pages must not be negative, got {max_pages}")
    if not data:
        raise Rejected("empty")
    _silence_library_warnings()
    kind = sniff(data[:8])
    if kind is None:
        raise Rejected("unsupported_type", _describe(data))
    if kind == "pdf":
        pages = _count_pdf_pages(data, max_pages)
    elif kind == "tiff":
        pages = _count_tiff_pages(data, max_pages)
    else:
        pages = _check_single_image(data, kind)
        if max_pages is not None and pages > max_pages:
            raise _too_many_pages(max_pages)
    return DocInfo(kind=kind, extension=EXTENSIONS[kind], mime=MIME_TYPES[kind], pages=pages)


def _too_many_pages(max_pages: int) -> Rejected:
    return Rejected("too_large", f"{max_pages + 1}+ pages, the limit is max_pages = {max_pages}")


def _count_pdf_pages(data: bytes, max_pages: int | None) -> int:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, LimitReachedError

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
        pages = _count_page_tree(reader.root_object, max_pages)
    except Rejected:
        raise
    except LimitReachedError as exc:
        # pypdf stops at its resource limits (100,000 elements in an array,
        # among others); what is beyond them is no damage, and far beyond
        # anything a fax can carry.
        raise Rejected("too_large", f"a PDF beyond what the gateway reads ({_short(exc)})") from None
    except Exception as exc:
        raise Rejected("unsupported_type", _damaged_pdf_detail(data, exc)) from None
    if pages < 1:
        raise Rejected("unsupported_type", "a PDF with no pages")
    return pages


# Page-tree entries looked at when no max_pages is given: pypdf's own default limit,
# so that a page tree that shares subtrees cannot make the walk exponential.
_PAGE_TREE_CEILING = 100_000


def _count_page_tree(catalog: Any, max_pages: int | None) -> int:
    """Count the leaves of the page tree, looking at a bounded number of its entries.

    The root's /Count is only what the writer claims: it may reject early, never
    accept. pypdf's `len(reader.pages)` walks the whole tree, one page object
    per leaf, up to its own limit of 100,000 entries, so the walk is done here:
    depth first without recursion, with every entry looked at (a skipped null,
    or a subtree reached again through another parent) costing one unit of a
    budget derived from max_pages. Leaves and inner nodes are told apart as
    pypdf does, so the counts agree. Each leaf needs a page size, its own or
    inherited, as pypdf's `page.mediabox` demanded before.
    """
    from pypdf.generic import DictionaryObject

    tree = _resolved(catalog.get("/Pages"))
    if not isinstance(tree, DictionaryObject):
        raise ValueError("it has no page tree")
    if max_pages is None:
        budget = _PAGE_TREE_CEILING
    else:
        declared = _resolved(tree.get("/Count"))
        if isinstance(declared, int) and declared > max_pages:
            raise Rejected("too_large", f"{declared} pages, the limit is max_pages = {max_pages}")
        # Room for a few inner nodes per page: some writers wrap every page in
        # a /Pages node of its own.
        budget = 4 * (max_pages + 1) + 100
    pages = entries = 0
    on_path: set[int] = set()  # inner nodes from the root down to the current one
    stack: list[tuple[Iterator[Any], int, Any]] = []  # (kids left, node id, inherited /MediaBox)
    node: Any = tree
    inherited_box: Any = None
    while True:
        kind = _page_tree_kind(node)
        if kind == "/Pages":
            if id(node) in on_path:
                raise ValueError("its page tree loops back on itself")
            on_path.add(id(node))
            stack.append((iter(_kids(node)), id(node), node.get("/MediaBox", inherited_box)))
        elif kind == "/Page":
            pages += 1
            if max_pages is not None and pages > max_pages:
                raise _too_many_pages(max_pages)
            _check_page_size(node, inherited_box, pages)
        node = None
        while stack and node is None:
            kids, node_id, inherited_box = stack[-1]
            kid = next(kids, _END)
            if kid is _END:
                stack.pop()
                on_path.discard(node_id)
                continue
            entries += 1
            if entries > budget:
                limit = "" if max_pages is None else f", the limit is max_pages = {max_pages}"
                raise Rejected("too_large", f"a page tree of more than {budget} entries{limit}")
            candidate = _resolved(kid)
            # pypdf skips entries that are no dictionary, or an empty one, in
            # damaged files; so does the count.
            if isinstance(candidate, DictionaryObject) and candidate:
                node = candidate
        if node is None:
            return pages


_END = object()


def _resolved(value: Any) -> Any:
    return value.get_object() if hasattr(value, "get_object") else value


def _page_tree_kind(node: Any) -> str | None:
    if "/Type" in node:
        kind = _resolved(node["/Type"])
        return kind if kind in ("/Pages", "/Page") else None
    return "/Pages" if "/Kids" in node else "/Page"


def _kids(node: Any) -> list[Any]:
    from pypdf.generic import ArrayObject, NullObject

    kids = _resolved(node.get("/Kids"))
    if kids is None or isinstance(kids, NullObject):
        return []
    if not isinstance(kids, ArrayObject):
        raise ValueError(f"its page tree holds /Kids of type {type(kids).__name__}")
    return kids


def _check_page_size(page: Any, inherited_box: Any, number: int) -> None:
    box = _resolved(page.get("/MediaBox"))
    if box is None:
        box = _resolved(inherited_box)
    if (not isinstance(box, list) or len(box) < 4
            or not all(isinstance(_resolved(value), int | float) for value in box[:4])):
        raise ValueError(f"page {number} has no page size")


def _damaged_pdf_detail(data: bytes, exc: Exception) -> str:
    if b"%%EOF" not in data[-2048:]:
        return "a damaged PDF: it is incomplete, cut short or still being written"
    text = " ".join(str(exc).split())[:120] or type(exc).__name__
    return f"a damaged PDF: {text}"


def _count_tiff_pages(data: bytes, max_pages: int | None) -> int:
    """Count frames one at a time and check that each frame's image data lies inside the file.

    Frames are reached with `seek`, never `n_frames`: that walks the whole
    chain of image directories, and Pillow's test for a directory seen before
    makes the walk quadratic (190,000 one-pixel frames in 19 MB take minutes).
    Pillow ends a chain that loops back as if it were complete; the offsets are
    followed here as well, so that a loop is rejected as damage instead of
    being faxed as however many pages came before it.

    The frames are not decoded: libtiff writes its complaints about damaged
    files straight to stderr, and a structural check already catches what
    actually happens to TIFFs on their way to an outbox (a truncated upload).
    """
    from PIL import Image

    order = "little" if data[:2] == b"II" else "big"
    seen = {int.from_bytes(data[4:8], order)}
    frames = 0
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "TIFF":
                raise ValueError(f"Pillow reads it as {image.format}")
            while True:
                try:
                    image.seek(frames)
                except EOFError:
                    break
                if max_pages is not None and frames >= max_pages:
                    raise _too_many_pages(max_pages)
                _check_tiff_frame(image, len(data), frames)
                frames += 1
                following = image.tag_v2.next  # type: ignore[attr-defined]
                if following in seen:
                    raise ValueError(f"page {frames} leads back to an earlier page")
                if following:
                    seen.add(following)
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
_RUNS_OF_DOTS = re.compile(r"\.{2,}")
_RUNS_OF_UNDERSCORES = re.compile(r"_{2,}")
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
    if not base.isascii():  # ASCII has no letter to spell out and no accent to drop
        base = unicodedata.normalize("NFKD", base.translate(_SPECIAL_LETTERS))
        base = "".join(ch for ch in base if not unicodedata.combining(ch))
    base = _UNSAFE.sub("_", base)
    base = _RUNS_OF_UNDERSCORES.sub("_", _RUNS_OF_DOTS.sub(".", base))
    base = base.strip("._-")[: _MAX_NAME - len(extension)].rstrip("._-")
    return f"{base or 'document'}{extension}"
