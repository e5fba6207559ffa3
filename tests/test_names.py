"""Names written for people stay one harmless line; result file names fit in 255 bytes."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from gateway.names import NAME_MAX, fit_name, result_file_name, shown


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"scan 2024.pdf", "scan 2024.pdf"),
        (b"bad\xff byte.pdf", "bad\\xff byte.pdf"),
        (b"latin1 caf\xe9.pdf", "latin1 caf\\xe9.pdf"),
        (b"cut \xe2\x82.pdf", "cut \\xe2\\x82.pdf"),  # a UTF-8 sequence missing its last byte
        (b"two\nlines.pdf", "two\\nlines.pdf"),
        (b"cr\r.pdf", "cr\\r.pdf"),
        (b"tab\t.pdf", "tab\\t.pdf"),
        (b"\x1b[31mred.pdf", "\\x1b[31mred.pdf"),
        (b"bell\x07.pdf", "bell\\x07.pdf"),
        (b"del\x7f.pdf", "del\\x7f.pdf"),
        ("nel\u0085.pdf".encode(), "nel\\x85.pdf"),  # C1 NEL, a line end to some readers
        ("csi\u009b.pdf".encode(), "csi\\x9b.pdf"),
        ("line\u2028sep.pdf".encode(), "line\\u2028sep.pdf"),
        ("para\u2029sep.pdf".encode(), "para\\u2029sep.pdf"),
        ("invoice\u202egpj.exe".encode(), "invoice\\u202egpj.exe"),  # right-to-left override
        ("\u2066isolate\u2069.pdf".encode(), "\\u2066isolate\\u2069.pdf"),
        ("mark\u200f.pdf".encode(), "mark\\u200f.pdf"),
        ("Müller Straße.pdf".encode(), "Müller Straße.pdf"),
        ("請求書.pdf".encode(), "請求書.pdf"),
        ("fax 📠.pdf".encode(), "fax 📠.pdf"),
        ("עברית.pdf".encode(), "עברית.pdf"),  # right-to-left text itself is fine
        (b"back\\slash.pdf", "back\\slash.pdf"),  # left as one backslash
    ],
)
def test_shown(raw: bytes, expected: str) -> None:
    assert shown(raw) == expected
    assert shown(os.fsdecode(raw)) == expected
    assert shown(Path(os.fsdecode(raw))) == expected


def test_shown_is_one_printable_line_for_every_byte() -> None:
    for byte in range(1, 256):
        if byte == 0x2F:  # '/' cannot be in a name
            continue
        text = shown(bytes([0x61, byte, 0x62]))
        assert all(ch.isprintable() for ch in text), text
        text.encode("utf-8")  # no lone surrogate left for a log handler to choke on


def test_shown_escapes_a_lone_surrogate_that_is_not_an_escaped_byte() -> None:
    assert shown("odd\ud800.pdf") == "odd\\ud800.pdf"


def _bytes(name: str) -> int:
    return len(os.fsencode(name))


def _check(name: str, limit: int = NAME_MAX) -> None:
    assert _bytes(name) <= limit
    assert os.fsdecode(os.fsencode(name)) == name


@pytest.mark.parametrize(
    ("primary", "cut"),
    [
        ("a" * 250 + ".pdf", True),
        ("é" * 120 + ".pdf", True),  # 2-byte characters
        ("請" * 83 + ".pdf", True),  # 3-byte characters, 253 bytes
        ("📠" * 62 + ".pdf", True),  # 4-byte characters, 252 bytes
        (os.fsdecode(b"\xff\xfe" * 125 + b".pdf"), True),  # surrogate-escaped bytes
        (os.fsdecode(("請" * 40).encode() + b"\xff" * 120 + b".pdf"), True),
        ("a" * 243, False),  # 243 + 12 = 255 exactly
        ("short.pdf", False),
    ],
)
def test_result_file_name(primary: str, cut: bool) -> None:
    name = result_file_name(primary, 1234567)
    _check(name)
    if cut:
        assert name.endswith("~1234567.result.json")
        stem = name.removesuffix("~1234567.result.json")
        assert primary.startswith(stem)
        assert os.fsencode(primary).startswith(os.fsencode(stem))
        # the longest cut that fits: one more character would not
        assert _bytes(primary[: len(stem) + 1] + "~1234567.result.json") > NAME_MAX
    else:
        assert name == primary + ".result.json"


def test_three_byte_characters_are_not_cut_in_the_middle() -> None:
    primary = "請" * 84  # 252 bytes; with ".result.json" 264
    name = result_file_name(primary, 7)
    # "~7.result.json" takes 14 bytes and leaves 241: 80 characters (240 bytes), not 80 and a third
    assert name == "請" * 80 + "~7.result.json"
    assert _bytes(name) <= NAME_MAX
    name.encode("utf-8")  # valid UTF-8: no half character


def test_fit_name_keeps_what_fits_and_refuses_a_tail_too_long() -> None:
    assert fit_name("abc", ".x", limit=5) == "abc.x"
    assert fit_name("abcd", ".x", limit=5) == "abc.x"
    assert fit_name("請請", ".x", limit=6) == "請.x"
    assert fit_name("請請", ".x", limit=4) == ".x"
    with pytest.raises(ValueError):
        fit_name("abc", "~123456.result.json", limit=10)


def test_random_byte_names_fit_and_round_trip() -> None:
    rng = random.Random(4711)
    alphabet = [bytes([b]) for b in range(1, 256) if b != 0x2F] + ["請".encode(), "📠".encode(), "é".encode()]
    for _ in range(2000):
        raw = b"".join(rng.choice(alphabet) for _ in range(rng.randint(200, 255)))[:255]
        primary = os.fsdecode(raw)
        job = rng.randint(1, 10**9)
        name = result_file_name(primary, job)
        _check(name)
        tail = f"~{job}.result.json"
        if name != primary + ".result.json":
            assert name.endswith(tail)
            assert raw.startswith(os.fsencode(name.removesuffix(tail)))
