"""How long judging a pathological document takes when counting stops at max_pages + 1 (SPEC 4.5),
and, for one built to be slow to read, how the document reader's deadline ends it
(gateway/docreader.py: the daemon reads documents in a process of its own).

A writer can put 190,000 one-pixel TIFF frames into 19 MB, or 99,999 pages into a
600 kB PDF that repeats one page object; counted to the end, the TIFF alone took
about 158 s. The tests only check that such files are rejected as too_large, since
speed is measured here and never asserted. Prints figures; asserts nothing.

    python benchmarks/pagecount.py [MAX_PAGES]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from test_docreader import pdf_slow_to_read  # noqa: E402
from test_doctypes import pdf_repeating_one_page, tiff_of_tiny_frames  # noqa: E402

from gateway.docreader import DocumentReader  # noqa: E402
from gateway.doctypes import inspect_document  # noqa: E402
from gateway.errors import Rejected  # noqa: E402


def measure(name: str, build: Callable[[], bytes], max_pages: int) -> None:
    started = time.perf_counter()
    data = build()
    built = time.perf_counter() - started
    started = time.perf_counter()
    try:
        outcome = f"accepted, {inspect_document(data, max_pages=max_pages).pages} pages"
    except Rejected as exc:
        outcome = f"{exc.reason_code}: {exc.detail}"
    took = time.perf_counter() - started
    print(f"{name:<42} {len(data) / 1e6:6.1f} MB  built in {built:5.2f} s  "
          f"inspect_document {took:6.3f} s  ({outcome})")


def main(max_pages: int) -> None:
    import PIL
    import pypdf

    print(f"max_pages = {max_pages}; pypdf {pypdf.__version__}, Pillow {PIL.__version__}")
    measure("TIFF, 190,000 one-pixel frames", lambda: tiff_of_tiny_frames(190_000), max_pages)
    measure("PDF, 99,999 pages, /Count 99999", lambda: pdf_repeating_one_page(99_999), max_pages)
    measure("PDF, 99,999 pages, /Count 1 (a lie)", lambda: pdf_repeating_one_page(99_999, count=1), max_pages)
    measure("PDF, catalog behind 300,000 objects", pdf_slow_to_read, max_pages)
    through_the_reader(max_pages)


def through_the_reader(max_pages: int) -> None:
    """The slow PDF through the daemon's document reader, then one-page PDFs: the wall time
    per document and this process's CPU for it (the reader's own is not the daemon's)."""
    from test_doctypes import make_pdf

    reader = DocumentReader()
    try:
        one = make_pdf(1)
        reader.inspect(one, max_pages)  # started, pypdf imported
        data = pdf_slow_to_read()
        started = time.perf_counter()
        try:
            outcome = f"accepted, {reader.inspect(data, max_pages).pages} pages"
        except Rejected as exc:
            outcome = f"{exc.reason_code}: {exc.detail}"
        print(f"{'the same, through the document reader':<42} {len(data) / 1e6:6.1f} MB  "
              f"{time.perf_counter() - started:6.3f} s  ({outcome})")
        n = 500
        for name, inspect in (("in this process", inspect_document), ("through the reader", reader.inspect)):
            started, cpu = time.perf_counter(), time.process_time()
            for _ in range(n):
                inspect(one, max_pages)
            wall, spent = time.perf_counter() - started, time.process_time() - cpu
            print(f"one-page PDF {name:<29} {wall / n * 1e3:6.3f} ms per document, "
                  f"{spent / n * 1e3:6.3f} ms of this process's CPU")
    finally:
        reader.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
