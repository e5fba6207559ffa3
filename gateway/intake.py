"""From settled files to jobs (SPEC 4.1-4.3).

Two steps, with the claim between them:
- `plan_folder` groups a folder's settled files with their sidecars and decides *when*
  a group may be taken (everything it needs has settled, or waiting is over);
- `evaluate` judges the claimed, now immutable, files: destination, document type,
  size and pages.  It reads only what lies in `.fax-gateway/<job>/`, so it can run again
  after a crash with the same answer.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway import numbers
from gateway.config import OutboxConfig
from gateway.doctypes import inspect_document
from gateway.errors import Rejected
from gateway.sidecar import (
    MAX_SIDECAR_BYTES,
    Sidecar,
    documents_for_sidecar,
    is_sidecar_name,
    parse_sidecar,
    sidecar_candidates,
)
from gateway.store import Job
from gateway.watcher import Seen


@dataclass
class Plan:
    """A group of files to claim as one job."""

    rel_dir: str
    documents: list[str]
    sidecar: str | None
    extras: list[str] = field(default_factory=list)  # e.g. the second of two duplicated sidecars
    rejection: Rejected | None = None
    settled_at: float | None = None

    @property
    def names(self) -> list[str]:
        return self.documents + ([self.sidecar] if self.sidecar else []) + self.extras

    @property
    def primary(self) -> str:
        """The name the result file is named after (SPEC 4.4)."""
        if self.sidecar:
            own = documents_for_sidecar(self.sidecar, self.documents)
            if own:
                return own[0]
        return self.documents[0] if self.documents else (self.sidecar or self.extras[0])


@dataclass
class Accepted:
    numbers: list[str]
    options: dict[str, Any]
    sha256: list[str | None]
    pages: int
    kinds: list[str]


def safe_read(path: Path, limit: int | None = None) -> bytes:
    """Open only regular files with one link, without following links or blocking on a
    FIFO, and check after opening that the file is the one that was looked at."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise Rejected("unreadable", f"{path.name} disappeared before it could be read") from None
    describe_unsafe(path.name, st)
    if limit is not None and st.st_size > limit:
        raise Rejected("too_large", f"{path.name} is {st.st_size} bytes, the limit is {limit}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except PermissionError:
        raise Rejected("unreadable", f"{path.name}: permission denied; the writer's umask or group "
                       "probably leaves the file unreadable to the gateway's user") from None
    except OSError as exc:
        raise Rejected("unsafe_file", f"{path.name} could not be opened safely ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        st2 = os.fstat(f.fileno())
        if (st2.st_ino, st2.st_dev) != (st.st_ino, st.st_dev) or not stat.S_ISREG(st2.st_mode):
            raise Rejected("unsafe_file", f"{path.name} was replaced while it was opened")
        return f.read() if limit is None else f.read(limit + 1)


def describe_unsafe(name: str, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise Rejected("unsafe_file", f"{name} is a symbolic link")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else
                "a socket" if stat.S_ISSOCK(st.st_mode) else "a device or special file")
        raise Rejected("unsafe_file", f"{name} is {kind}")
    if st.st_nlink > 1:
        raise Rejected("unsafe_file", f"{name} is a hard link ({st.st_nlink} names for one file)")


def read_sidecar(path: Path) -> Sidecar:
    try:
        data = safe_read(path, MAX_SIDECAR_BYTES)
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


class FolderPlanner:
    """Pairs documents with sidecars in one folder.  Parsed sidecars are cached by their
    file signature, so a folder that waits is not re-read on every tick."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, tuple], Sidecar | Rejected] = {}

    def _sidecar(self, path: Path, seen: Seen) -> Sidecar | Rejected:
        key = (str(path), seen.sig)
        if key not in self._cache:
            if len(self._cache) > 10000:
                self._cache.clear()
            try:
                self._cache[key] = read_sidecar(path)
            except Rejected as exc:
                self._cache[key] = exc
        return self._cache[key]

    def plan_folder(self, outbox: OutboxConfig, folder: str, files: dict[str, Seen],
                    now: float) -> list[Plan]:
        root = outbox.path / folder
        wait = outbox.sidecar_wait
        names = set(files)
        sidecars = {n for n in names if is_sidecar_name(n)}
        docs = names - sidecars

        def ready(n: str) -> bool:
            return files[n].settled_at is not None

        def waited(n: str) -> float:
            s = files[n].settled_at
            return now - s if s is not None else 0.0

        parsed = {s: self._sidecar(root / s, files[s]) for s in sidecars if ready(s)}
        owned: dict[str, str] = {}  # document -> the sidecar whose `files` list names it
        for s, p in parsed.items():
            if isinstance(p, Sidecar):
                for f in p.files:
                    owned.setdefault(f, s)

        plans: list[Plan] = []
        taken: set[str] = set()

        def add(plan: Plan) -> None:
            group = plan.names
            if plan.rejection is None:
                unreadable = [n for n in group if not _readable(root / n)]
                if unreadable:
                    if max(waited(n) for n in unreadable) < wait:
                        return  # print drivers set the final permissions just after closing
                    plan.rejection = Rejected("unreadable", f"{', '.join(unreadable)} cannot be read by "
                                              "the gateway's user: check the writer's umask or group")
            plan.settled_at = max((files[n].settled_at or now) for n in group)
            plans.append(plan)
            taken.update(group)

        # Sidecars that list further documents: the job waits for every one of them.
        for s, p in sorted(parsed.items()):
            if not isinstance(p, Sidecar) or not p.files:
                continue
            own = [d for d in documents_for_sidecar(s, docs) if d not in p.files]
            if len(own) > 1:
                continue  # ambiguous: handled with the documents below
            group = own + list(dict.fromkeys(p.files))
            present = [g for g in group if g in names]
            missing = [g for g in group if g not in names]
            if missing or not all(ready(g) for g in present):
                if waited(s) >= wait:
                    what = ("missing: " + ", ".join(missing)) if missing else \
                        "still being written: " + ", ".join(g for g in present if not ready(g))
                    add(Plan(folder, [g for g in present if ready(g)], s,
                             rejection=Rejected("bad_sidecar", f"{s} lists files that did not arrive "
                                                f"within sidecar_wait ({what})")))
                continue
            add(Plan(folder, group, s))

        for d in sorted(docs - taken):
            if d in owned and owned[d] not in taken and isinstance(parsed.get(owned[d]), Sidecar):
                continue  # waits for the sidecar that lists it
            if not ready(d) or d in taken:
                continue
            cands = [c for c in sidecar_candidates(d) if c in names]
            if len(cands) > 1:
                if all(ready(c) for c in cands):
                    add(Plan(folder, [d], cands[0], extras=cands[1:], rejection=Rejected(
                        "bad_sidecar", f"{d} has more than one sidecar ({', '.join(cands)}): keep one")))
                continue
            if cands:
                s = cands[0]
                if not ready(s) or s in taken:
                    continue
                applies = documents_for_sidecar(s, docs)
                if len(applies) > 1:
                    if all(ready(a) for a in applies):
                        add(Plan(folder, applies, s, rejection=Rejected(
                            "bad_sidecar", f"{s} could belong to {', '.join(applies)}: name it after "
                            "one document (e.g. " + applies[0] + ".yaml)")))
                    continue
                add(Plan(folder, [d], s))
                continue
            if has_destination_without_sidecar(folder, outbox) or waited(d) >= wait:
                add(Plan(folder, [d], None))

        for s in sorted(sidecars - taken):
            if not ready(s) or documents_for_sidecar(s, docs):
                continue
            p = parsed.get(s)
            if isinstance(p, Sidecar) and p.files:
                continue
            if waited(s) >= wait:
                add(Plan(folder, [], s, rejection=Rejected(
                    "bad_sidecar", f"{s} has no document named after it: the sidecar came too late or "
                    "its document was named differently")))
        return plans


def _readable(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return True  # gone: the claim notices
    if not stat.S_ISREG(st.st_mode):
        return True  # never opened; rejected as unsafe after the claim
    return os.access(path, os.R_OK)


def evaluate(job: Job, outbox: OutboxConfig, held_dir: Path) -> Accepted:
    """Judge a claimed job; raises Rejected with the reason a person can act on."""
    if job.reason_code:  # decided before the claim (pairing rules) and stored with it
        raise Rejected(job.reason_code, reason=job.reason)
    sidecar = read_sidecar(held_dir / job.sidecar) if job.sidecar else None
    if not job.documents:
        raise Rejected("bad_sidecar", f"{job.sidecar} names no document")
    dests = destinations(job.rel_dir, outbox, sidecar)
    total_pages, sha, kinds = 0, [], []
    for name in job.documents:
        data = safe_read(held_dir / name, outbox.max_file_size)
        if len(data) > outbox.max_file_size:
            raise Rejected("too_large", f"{name} is larger than max_file_size ({outbox.max_file_size} bytes)")
        if not data:
            raise Rejected("empty", f"{name} is empty")
        try:
            info = inspect_document(data)
        except Rejected as exc:
            raise Rejected(exc.reason_code, f"{name}: {exc.detail}" if exc.detail else name) from None
        total_pages += info.pages
        kinds.append(info.kind)
        sha.append(hashlib.sha256(data).hexdigest())
    if total_pages > outbox.max_pages:
        raise Rejected("too_large", f"{total_pages} pages, the limit is max_pages = {outbox.max_pages}")
    if job.sidecar:
        sha.append(file_sha256(held_dir / job.sidecar))
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
    return Accepted(dests, options, sha, total_pages, kinds)


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


def file_sha256(path: Path) -> str | None:
    """The checksum of a regular file, or None for one that must never be opened."""
    try:
        return hashlib.sha256(safe_read(path)).hexdigest()
    except Rejected:
        return None
