"""File names as people see them, and result file names that fit the filesystem.

Anyone who can write to an outbox chooses the names in it (SPEC 4.5). A name is
bytes: it may not be UTF-8, and it may hold a newline, an ESC or a bidi override.
Such a name is still taken and faxed; it only must not forge a log line, break
a terminal or push a result file's name past the filesystem's limit. Python
hands names over as ``os.fsdecode`` text, where every undecodable byte is a lone
surrogate (byte 0xFF is ``'\\udcff'``); everything here works on that form.
"""

from __future__ import annotations

import os

NAME_MAX = 255
"""Bytes in one path component on Linux filesystems (ext4, xfs, btrfs, tmpfs) and Samba shares."""

RESULT_SUFFIX = ".result.json"


def _escapes() -> dict[int, str]:
    table: dict[int, str] = {}
    # C0, DEL and C1: a terminal acts on them, and \n, \r and U+0085 end a log line.
    for code in [*range(0x20), 0x7F, *range(0x80, 0xA0)]:
        table[code] = f"\\x{code:02x}"
    table.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
    # Lone surrogates never come from the filesystem except as surrogateescape bytes;
    # written out raw they would make the line unencodable for the log handler.
    for code in range(0xD800, 0xE000):
        table[code] = f"\\u{code:04x}"
    for byte in range(0x80, 0x100):
        table[0xDC00 + byte] = f"\\x{byte:02x}"
    # Line and paragraph separators start a new line in some viewers; the Unicode
    # Bidi_Control characters reorder what follows, so "gpj.exe" can look like "exe.jpg".
    for code in [0x2028, 0x2029, 0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]:
        table[code] = f"\\u{code:04x}"
    return table


_ESCAPES = _escapes()


def shown(name: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> str:
    """Write a file name (or a path) for logs, result files and command output.

    The result is one line of printable text whatever the name holds, so that a name
    can neither start a fake log line nor send escape sequences to a terminal.
    Undecodable bytes become ``\\xNN`` and control characters their escape (``\\n``,
    ``\\x1b``); any other character, accents, CJK and emoji included, stays as it is,
    because people must recognise their documents.

    A backslash is left alone rather than doubled: names from scanners and Windows
    shares practically never contain one, and doubling it would make every ordinary
    name containing one look odd. The price is that a name spelling the four
    characters ``\\xff`` reads like one holding the byte 0xFF; this form is for
    people, and nothing parses it back.
    """
    text = os.fsdecode(name)
    if text.isascii() and text.isprintable():
        # Nothing to escape (the table's ASCII entries are the non-printable ones), and
        # translate() through a dict costs a few microseconds per name, several times
        # a document (issue 12).
        return text
    return text.translate(_ESCAPES)


def fit_name(stem: str, tail: str, limit: int = NAME_MAX) -> str:
    """Return ``stem + tail``, cutting the end off ``stem`` if needed to fit ``limit`` bytes.

    The filesystem counts bytes (of ``os.fsencode``), not characters, so a name of
    100 Japanese characters is already 300 bytes. The cut falls between characters,
    so it never splits a multi-byte UTF-8 sequence, and a surrogate-escaped byte
    counts as the one byte it stands for: the result encodes to a prefix of the
    stem's bytes followed by the tail's, and survives ``os.fsencode`` then
    ``os.fsdecode`` unchanged. (It may still split a combining sequence or an emoji
    built with joiners; the bytes stay valid, only the last glyph may look different.)

    Raises ValueError when ``tail`` alone does not fit, since then no name can.
    """
    if len(os.fsencode(stem + tail)) <= limit:
        return stem + tail
    room = limit - len(os.fsencode(tail))
    if room < 0:
        raise ValueError(f"{shown(tail)} alone is longer than {limit} bytes")
    used = 0
    cut = 0
    for char in stem:
        size = len(os.fsencode(char))
        if used + size > room:
            break
        used += size
        cut += 1
    return stem[:cut] + tail


def result_file_name(primary: str, job_id: int, limit: int = NAME_MAX) -> str:
    """Name the result file of a job whose first document is called ``primary``.

    ``NAME.EXT.result.json`` when that fits; otherwise ``<first bytes of NAME.EXT>~<job>.result.json``
    (SPEC 4.5), the job id keeping two long names that share a beginning apart. The
    document itself keeps its name: only the result file is shortened.
    """
    plain = primary + RESULT_SUFFIX
    if len(os.fsencode(plain)) <= limit:
        return plain
    return fit_name(primary, f"~{job_id}{RESULT_SUFFIX}", limit)
