"""Judging a claimed job (SPEC 4.1-4.3): destination, document type, size and pages.

The daemon judges only what lies in the job's private folder, which no writer can
reach, so it can run again after a crash with the same answer; `inspect` judges a
planned group where it lies in the outbox, with the same `judge_group`.  Every file is
opened without following links and checked to be the file that was looked at.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway import numbers
from gateway.config import OutboxConfig
from gateway.docreader import Answer, DocumentReader
from gateway.errors import Rejected, SpoolError
from gateway.names import shown
from gateway.sidecar import MAX_SIDECAR_BYTES, Sidecar, parse_sidecar
from gateway.spool import open_dir
from gateway.store import Job


@dataclass
class Accepted:
    numbers: list[str]
    options: dict[str, Any]
    sha256: list[str | None]
    pages: int
    kinds: list[str]
    rule: str = ""  # which rule chose the destination (SPEC 4.2), for `inspect`
    # The documents' bytes as they were judged: intake hands them to the sending stage,
    # which sends these instead of reading the files again (handover.py).
    data: list[bytes] = field(default_factory=list, repr=False, compare=False)


def safe_read(path: Path, limit: int | None = None, *, root: Path | None = None) -> bytes:
    """Open only regular files with one link, without following links or blocking on a
    FIFO, and check after opening that the file is the one that was looked at.  With
    `root`, the folders from `root` down to the file are opened without following links
    too (an outbox, whose folders a writer may swap for links)."""
    if root is None:
        return read_in(path.parent, path.name, limit)
    rel = str(path.parent.relative_to(root))
    try:
        with open_dir(root, "" if rel == "." else rel) as folder:
            return _read_at(folder, path.name, limit, path.parent)
    except SpoolError as exc:
        raise Rejected("unsafe_file", str(exc)) from None
    except FileNotFoundError:
        raise Rejected("unreadable", f"{path.name} disappeared before it could be read") from None


def read_in(folder: str | Path, name: str, limit: int | None = None) -> bytes:
    """`safe_read` of `name` in `folder`, for a caller that has the two apart: no Path is
    made and taken apart again (for every document: issue 12)."""
    try:
        with open_dir(folder) as fd:
            return _read_at(fd, name, limit, folder)
    except SpoolError as exc:
        raise Rejected("unsafe_file", str(exc)) from None
    except FileNotFoundError:
        raise Rejected("unreadable", f"{name} disappeared before it could be read") from None


def _read_at(folder: int, name: str, limit: int | None, where: str | Path) -> bytes:
    try:
        st = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        raise Rejected("unreadable", f"{name} disappeared before it could be read") from None
    describe_unsafe(name, st, where)
    if limit is not None and st.st_size > limit:
        raise Rejected("too_large", f"{name} is {st.st_size} bytes, the limit is {limit}")
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=folder)
    except PermissionError:
        raise Rejected("unreadable", f"{name}: permission denied; the writer's umask or group "
                       "probably leaves the file unreadable to the gateway's user") from None
    except OSError as exc:
        raise Rejected("unsafe_file", f"{name} could not be opened safely ({exc.strerror})") from None
    try:
        st2 = os.fstat(fd)
        if (st2.st_ino, st2.st_dev) != (st.st_ino, st.st_dev) or not stat.S_ISREG(st2.st_mode):
            raise Rejected("unsafe_file", f"{name} was replaced while it was opened")
        return _read_fd(fd, st2.st_size, None if limit is None else limit + 1)
    finally:
        os.close(fd)


def _read_fd(fd: int, size: int, cap: int | None) -> bytes:
    """To the end, or `cap` bytes.  Plain reads, not a file object: every document is read
    on its way (judged; sent, if the sending stage does not hold it), and a buffered
    reader's set-up (isatty, seek, another fstat) cost more than the reads of a one-page
    PDF (issue 12)."""
    chunks = []
    total = 0
    while cap is None or total < cap:
        want = max(size + 1 - total, 1 << 16)  # the whole file in one read when its size holds
        chunk = os.read(fd, want if cap is None else min(want, cap - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def describe_unsafe(name: str, st: os.stat_result, folder: str | Path | None = None) -> None:
    if stat.S_ISLNK(st.st_mode):
        target = ""
        if folder is not None:
            try:
                target = f" to {shown(os.readlink(os.path.join(folder, name)))}"
            except OSError:
                pass
        raise Rejected("unsafe_file", f"{name} is a symbolic link{target}; it was not followed, and "
                       "it is removed rather than filed")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else
                "a socket" if stat.S_ISSOCK(st.st_mode) else "a device or special file")
        raise Rejected("unsafe_file", f"{name} is {kind}")
    if st.st_nlink > 1:
        raise Rejected("unsafe_file", f"{name} is a hard link ({st.st_nlink} names for one file)")


def read_sidecar(path: Path, *, root: Path | None = None) -> Sidecar:
    try:
        data = safe_read(path, MAX_SIDECAR_BYTES, root=root)
    except Rejected as exc:
        if exc.reason_code == "too_large":
            raise Rejected("bad_sidecar", f"{path.name} is larger than 64 KiB") from None
        raise Rejected("bad_sidecar", f"{path.name}: {exc.reason}") from None
    return parse_sidecar(data, path.name)


def number_folder(rel_dir: str) -> str | None:
    """The nearest folder between the document and the outbox root named like a number."""
    for part in reversed([p for p in rel_dir.split(os.sep) if p]):
        if numbers.is_number_folder(part):
            return part
    return None


def has_destination_without_sidecar(rel_dir: str, outbox: OutboxConfig) -> bool:
    return number_folder(rel_dir) is not None or bool(outbox.number)


_shared_reader: DocumentReader | None = None


def shared_reader() -> DocumentReader:
    """The process's document reader, for callers without one of their own (`inspect`)."""
    global _shared_reader
    if _shared_reader is None:
        _shared_reader = DocumentReader()
    return _shared_reader


@dataclass
class Group:
    """A group whose files are read and checked, its documents not yet inspected: judging
    is split there so that the documents of many jobs go to the reader together."""

    rel_dir: str
    documents: list[str]
    sidecar_name: str | None
    sidecar: Sidecar | None
    folder: Path
    root: Path | None
    numbers: list[str]
    data: list[bytes]

    def requests(self, outbox: OutboxConfig) -> list[tuple[bytes, int]]:
        """What the reader is asked: each document, its pages counted to the outbox's
        max_pages + 1 at most (a bound per document; the job's total is checked after)."""
        return [(data, outbox.max_pages) for data in self.data]


def read_job(job: Job, outbox: OutboxConfig, held_dir: Path) -> Group:
    """A claimed job read and checked (`read_group`), its documents not yet inspected."""
    if job.reason_code:  # decided before the claim (pairing rules) and stored with it
        raise Rejected(job.reason_code, reason=job.reason)
    return read_group(job.rel_dir, job.documents, job.sidecar, outbox, held_dir)


def judge_group(rel_dir: str, documents: list[str], sidecar_name: str | None, outbox: OutboxConfig,
                folder: Path, *, root: Path | None = None, reader: DocumentReader | None = None) -> Accepted:
    """Judge one planned group where its files lie: the daemon's claimed job in its private
    folder, or (`inspect`) the group still in the outbox, then with `root` the outbox, so
    that no folder on the way is followed through a link.  One implementation for both, so
    that `inspect` says exactly what the daemon will do.  Reads only, never writes.  The
    documents are read by `reader` (docreader.py: another process, with a deadline)."""
    group = read_group(rel_dir, documents, sidecar_name, outbox, folder, root=root)
    return finish_group(group, outbox, (reader or shared_reader()).inspect_all(group.requests(outbox)))


def read_group(rel_dir: str, documents: list[str], sidecar_name: str | None, outbox: OutboxConfig,
               folder: Path, *, root: Path | None = None) -> Group:
    """The first half of `judge_group`: sidecar, destinations, and each document's bytes."""
    sidecar = read_sidecar(folder / sidecar_name, root=root) if sidecar_name else None
    if not documents:
        raise Rejected("bad_sidecar", f"{sidecar_name} names no document")
    for name in documents:  # a link or a device is unsafe whatever else is wrong with it
        try:
            describe_unsafe(name, os.lstat(os.path.join(folder, name)), folder)
        except FileNotFoundError:
            pass
    dests = destinations(rel_dir, outbox, sidecar)
    data = []
    for name in documents:
        content = (read_in(folder, name, outbox.max_file_size) if root is None
                   else safe_read(folder / name, outbox.max_file_size, root=root))
        if len(content) > outbox.max_file_size:
            raise Rejected("too_large", f"{name} is larger than max_file_size ({outbox.max_file_size} bytes)")
        if not content:
            raise Rejected("empty", f"{name} is empty")
        data.append(content)
    return Group(rel_dir, list(documents), sidecar_name, sidecar, folder, root, dests, data)


def finish_group(group: Group, outbox: OutboxConfig, infos: Sequence[Answer]) -> Accepted:
    """The second half: what the reader said of each document (`Group.requests`), the
    job's pages, and the options.  Raises the reader's failure (ReaderFailed) as it is:
    not the document's fault, so it is judged again later."""
    total_pages, sha, kinds = 0, [], []
    for info in infos:
        if isinstance(info, Exception) and not isinstance(info, Rejected):
            raise info
    for name, data, info in zip(group.documents, group.data, infos, strict=True):
        if isinstance(info, Rejected):
            if info.reason_code == "too_large" and info.detail and "+ pages" in info.detail:
                raise Rejected("too_large", f"{name}: at least {outbox.max_pages + 1} pages in the job, "
                               f"the limit is max_pages = {outbox.max_pages}")
            raise Rejected(info.reason_code, f"{name}: {info.detail}" if info.detail else name)
        total_pages += info.pages
        kinds.append(info.kind)
        sha.append(hashlib.sha256(data).hexdigest())
    if total_pages > outbox.max_pages:
        raise Rejected("too_large", f"{total_pages} pages, the limit is max_pages = {outbox.max_pages}")
    sidecar, sidecar_name = group.sidecar, group.sidecar_name
    if sidecar_name:
        sha.append(file_sha256(group.folder / sidecar_name, root=group.root))
    options: dict[str, Any] = {
        "callerId": (sidecar.caller_id if sidecar and sidecar.caller_id else outbox.caller_id),
        "faxQuality": (sidecar.quality if sidecar and sidecar.quality else outbox.quality),
    }
    if sidecar:
        for key, value in (("subject", sidecar.subject), ("from_name", sidecar.from_name),
                           ("to_name", sidecar.to_name), ("message", sidecar.message)):
            if value:
                options[key] = value
        if sidecar.send_at:
            options["send_at"] = sidecar.send_at.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        if sidecar.reference:
            options["reference"] = sidecar.reference
    return Accepted(group.numbers, options, sha, total_pages, kinds,
                    destination_rule(group.rel_dir, outbox, sidecar, sidecar_name), data=list(group.data))


def destination_rule(rel_dir: str, outbox: OutboxConfig, sidecar: Sidecar | None,
                     sidecar_name: str | None = None) -> str:
    """Which rule of SPEC 4.2 chose the destination, in the words `inspect` prints; the
    same precedence as `destinations`."""
    if sidecar and sidecar.to:
        return f"sidecar {sidecar_name or 'file'}"
    if (folder := number_folder(rel_dir)) is not None:
        return f"number folder {folder}"
    if outbox.number:
        return f"the outbox's number ({outbox.number})"
    return "none"


def destinations(rel_dir: str, outbox: OutboxConfig, sidecar: Sidecar | None) -> list[str]:
    """Sidecar, else nearest number folder, else the outbox's number (SPEC 4.2)."""
    if sidecar and sidecar.to:
        raw = list(sidecar.to)
    elif (folder := number_folder(rel_dir)) is not None:
        raw = [folder]
    elif outbox.number:
        raw = [outbox.number]
    else:
        raise Rejected("no_destination")
    result = []
    for r in raw:
        e164 = numbers.normalize(r, outbox.country)
        numbers.check_allowed(e164, outbox.allow, outbox.deny)
        if e164 not in result:
            result.append(e164)
    return result


def file_sha256(path: Path, *, root: Path | None = None) -> str | None:
    """The checksum of a regular file, or None for one that must never be opened."""
    try:
        return hashlib.sha256(safe_read(path, root=root)).hexdigest()
    except Rejected:
        return None
