"""`fax-gateway inspect`: what the daemon would do with a file, and why, without doing it.

It runs the daemon's own decisions, not a copy of them: the folder is listed as the
watcher lists it, its sidecars are read with `judge.read_sidecar`, the folder is planned
with `planner.plan_folder` (every file treated as settled), and each group is judged
where it lies with `judge.judge_group`, the function that judges a claimed job.  What
differs is only what a dry run cannot do: the claim (a rename) is not made, so whether
the service user could make it is worked out from the folder's mode, owner, group and
ACL, for the service user (the owner of the database), not for whoever runs `inspect`.

It reads, never writes: no database, no API key, no file moved.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import Config, OutboxConfig
from gateway.docreader import ReaderUnavailable
from gateway.errors import Rejected, SpoolError, UsageError
from gateway.intake import claim_problem
from gateway.judge import has_destination_without_sidecar, judge_group, read_sidecar
from gateway.names import shown
from gateway.planner import Plan, plan_folder
from gateway.sidecar import Sidecar, is_sidecar_name
from gateway.spool import LEGACY_JOB_DIR, open_dir
from gateway.watcher import is_ignored, open_for_writing

R, W, X = 4, 2, 1


@dataclass(frozen=True)
class ServiceUser:
    uid: int
    gids: frozenset[int]
    name: str
    why: str  # how it was found, e.g. "the owner of /var/lib/fax-gateway/jobs.db"


@dataclass
class Verdict:
    """What the daemon would do with one file."""

    path: str
    outbox: str | None
    action: str  # send, reject, wait, blocked, ignore, missing
    reason_code: str | None = None
    reason: str | None = None
    recipients: list[str] = field(default_factory=list)
    rule: str | None = None
    sidecar: str | None = None
    group: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    pages: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    waits_first: str | None = None  # what it waits for before the outcome above

    @property
    def fails(self) -> bool:
        return self.action in ("reject", "blocked", "missing")

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "outbox": self.outbox, "action": self.action,
                "reason_code": self.reason_code, "reason": self.reason, "recipients": self.recipients,
                "rule": self.rule, "sidecar": shown(self.sidecar) if self.sidecar else None,
                "group": [shown(n) for n in self.group], "types": self.kinds,
                "pages": self.pages, "options": self.options, "waits_first": self.waits_first}


@dataclass
class _Seen:
    ready: bool
    settled_at: float | None


def service_user(database: Path) -> ServiceUser:
    """The daemon runs as the owner of its database; before the database exists, as the
    owner of its folder."""
    for where in (database, database.parent):
        try:
            st = os.stat(where)
        except OSError:
            continue
        return _user(st.st_uid, st.st_gid, f"the owner of {where}")
    return _user(os.geteuid(), os.getegid(), "the user running inspect (no database or database folder)")


def _user(uid: int, gid: int, why: str) -> ServiceUser:
    try:
        pw = pwd.getpwuid(uid)
        return ServiceUser(uid, frozenset(os.getgrouplist(pw.pw_name, pw.pw_gid)), pw.pw_name, why)
    except KeyError:
        return ServiceUser(uid, frozenset({gid}), f"uid {uid}", why)


def _acl(path: Path) -> list[tuple[int, int, int]] | None:
    """The POSIX access ACL as (tag, perm, id) entries, or None when the file has none."""
    try:
        raw = os.getxattr(path, "system.posix_acl_access", follow_symlinks=False)
    except OSError:
        return None
    if len(raw) < 4:
        return None
    return [struct.unpack_from("<HHI", raw, 4 + 8 * i) for i in range((len(raw) - 4) // 8)]


def may(user: ServiceUser, path: Path, st: os.stat_result, want: int) -> bool:
    """Whether `user` has the `want` bits (R, W, X) on the file, as the kernel decides:
    owner, then ACL named users, then the group class (owning group and named groups,
    through the mask), then others.

    Root is judged like any user, by the modes: the shipped unit bounds the daemon's
    capabilities to CAP_LEASE, so even a daemon run as root has no CAP_DAC_OVERRIDE,
    and a folder only that override could write would block the day it is dropped."""
    mode = st.st_mode
    if st.st_uid == user.uid:
        return (mode >> 6) & want == want
    acl = _acl(path)
    if acl:
        mask = next((p for t, p, _ in acl if t == 0x10), 7)
        for tag, perm, ident in acl:
            if tag == 0x02 and ident == user.uid:
                return perm & mask & want == want
        groups = [p for t, p, i in acl if (t == 0x04 and st.st_gid in user.gids)
                  or (t == 0x08 and i in user.gids)]
        if groups:
            return any(p & mask & want == want for p in groups)
        return next((p for t, p, _ in acl if t == 0x20), 0) & want == want
    if st.st_gid in user.gids:
        return (mode >> 3) & want == want
    return mode & want == want


def _describe(user: ServiceUser, path: Path, st: os.stat_result) -> str:
    owner = _name(st.st_uid, pwd.getpwuid, "pw_name")
    group = _name(st.st_gid, grp.getgrgid, "gr_name")
    acl = " with an ACL" if _acl(path) else ""
    relation = ("is its owner" if st.st_uid == user.uid else
                "is in its group" if st.st_gid in user.gids else "is neither its owner nor in its group")
    return (f"it is owned by {owner}:{group}, mode {stat.S_IMODE(st.st_mode):04o}{acl}, and the service "
            f"user {user.name} ({user.why}) {relation}")


def _name(ident: int, lookup: Any, attr: str) -> str:
    try:
        return str(getattr(lookup(ident), attr))
    except KeyError:
        return str(ident)


def claim_blocked(user: ServiceUser, ob: OutboxConfig, rel_dir: str, names: list[str]) -> str | None:
    """Why the daemon could not move the group out of its folder (the claim is a rename:
    search on every folder down from the outbox, write on the last, and with the sticky
    bit, ownership of the file or the folder), or None.  The daemon's own sentence
    (intake.claim_problem) followed by why and what to fix."""
    folder = ob.path
    parts = [p for p in rel_dir.split(os.sep) if p]
    for i in range(len(parts) + 1):
        if i:
            folder = folder / parts[i - 1]
        st = os.lstat(folder)
        last = i == len(parts)
        need = W | X if last else X
        if not may(user, folder, st, need):
            what = "write to" if last else "enter"
            return (f"{claim_problem(PermissionError(errno.EACCES, 'Permission denied'), folder)}; "
                    f"the service user cannot {what} {shown(folder)}: {_describe(user, folder, st)}: "
                    "chmod g+wx and chgrp it to the gateway's group, or add a default ACL "
                    "(setfacl -m g:GROUP:rwx -m d:g:GROUP:rwx), as in the README, 'Folder layout'")
        if last and st.st_mode & stat.S_ISVTX and user.uid != st.st_uid:
            for n in names:
                try:
                    fst = os.lstat(folder / n)
                except OSError:
                    continue
                if fst.st_uid != user.uid:
                    denied = PermissionError(errno.EPERM, "Operation not permitted")
                    return (f"{claim_problem(denied, folder)}; {shown(folder)} has the sticky bit and "
                            f"{shown(n)} belongs to another user, so "
                            f"the service user {user.name} may not move it: make the gateway's user own "
                            "the folder (chown), as in the README, 'Folder layout'")
    return None


def _outbox_of(config: Config, path: Path) -> tuple[OutboxConfig, str] | None:
    for ob in config.outboxes.values() if isinstance(config.outboxes, dict) else config.outboxes:
        root = Path(os.path.realpath(ob.path))
        try:
            rel = path.relative_to(root)
        except ValueError:
            continue
        return ob, "" if str(rel) == "." else str(rel)
    return None


def _absolute(text: str) -> Path:
    """The path with its folders resolved (an administrator may reach an outbox through a
    link) but not its last component, which may itself be a link the gateway rejects."""
    p = Path(os.path.abspath(text))
    return Path(os.path.realpath(p.parent)) / p.name if p.name else p


def inspect_paths(config: Config, paths: list[str]) -> list[Verdict]:
    """A verdict for every file named (a folder stands for the files in it)."""
    targets: list[tuple[OutboxConfig, str, str]] = []  # outbox, rel, as given
    for text in paths:
        path = _absolute(text)
        found = _outbox_of(config, path)
        if found is None:
            raise UsageError(f"{shown(text)} is not inside any outbox of the configuration ("
                             + ", ".join(shown(ob.path) for ob in _outboxes(config)) + ")")
        ob, rel = found
        if rel and not os.path.islink(path) and os.path.isdir(path) and not is_ignored(rel):
            targets.extend((ob, r, r) for r in _files_below(ob, rel))
        elif not rel:
            targets.extend((ob, r, r) for r in _files_below(ob, ""))
        else:
            targets.append((ob, rel, text))
    user = service_user(config.database)
    verdicts = []
    planned: dict[tuple[str, str], dict[str, Verdict]] = {}
    for ob, rel, shown_as in targets:
        folder, name = os.path.split(rel)
        label = shown(rel) if shown_as == rel else shown(shown_as)
        private = _private_rel(ob)
        in_private = private is not None and (rel + os.sep).startswith(private + os.sep)
        if name == LEGACY_JOB_DIR or is_ignored(rel) or in_private:
            verdicts.append(Verdict(label, ob.name, "ignore", reason=(
                "ignored: names beginning with . or ~, temporary files (.tmp, .part, .crdownload, .swp), "
                "desktop junk (Thumbs.db, desktop.ini, @eaDir, #recycle) and anything below a folder "
                "whose name begins with . are never touched")))
            continue
        key = (ob.name, folder)
        if key not in planned:
            planned[key] = _plan(ob, folder, user)
        v = planned[key].get(name)
        if v is None:
            v = Verdict(label, ob.name, "missing", reason=f"{label} does not exist (or is a folder)")
        else:
            v = Verdict(**{**v.__dict__, "path": label})
        verdicts.append(v)
    return verdicts


def _outboxes(config: Config) -> list[OutboxConfig]:
    obs = config.outboxes
    return list(obs.values()) if isinstance(obs, dict) else list(obs)


def _private_rel(ob: OutboxConfig) -> str | None:
    try:
        return str(Path(os.path.realpath(ob.private)).relative_to(os.path.realpath(ob.path)))
    except ValueError:
        return None


def _files_below(ob: OutboxConfig, rel: str) -> list[str]:
    """The files of a folder as the watcher walks it: no link followed, ignored names and
    dot folders skipped."""
    out = []
    stack = [rel]
    skip = _private_rel(ob)
    while stack:
        d = stack.pop()
        try:
            with open_dir(ob.path, d) as fd, os.scandir(fd) as it:
                entries = [(e.name, e.stat(follow_symlinks=False).st_mode) for e in it]
        except (OSError, SpoolError):
            continue
        for n, mode in sorted(entries):
            r = os.path.join(d, n) if d else n
            if n == LEGACY_JOB_DIR or is_ignored(r) or r == skip:
                continue
            if stat.S_ISDIR(mode):
                stack.append(r)
            else:
                out.append(r)
    return sorted(out)


def _plan(ob: OutboxConfig, folder: str, user: ServiceUser) -> dict[str, Verdict]:
    """Verdicts for every file of one folder, from the planner and the judge."""
    where = ob.path / folder
    try:
        with open_dir(ob.path, folder) as fd, os.scandir(fd) as it:
            entries = {e.name: e.stat(follow_symlinks=False) for e in it}
    except (OSError, SpoolError):
        return {}
    entries = {n: st for n, st in entries.items() if not stat.S_ISDIR(st.st_mode)
               and n != LEGACY_JOB_DIR and not is_ignored(os.path.join(folder, n) if folder else n)}
    writing = {n for n, st in entries.items()
               if open_for_writing(where / n, (st.st_size, st.st_mtime_ns, st.st_ino, st.st_mode))}
    sidecars: dict[str, Sidecar | Rejected] = {}
    for n in entries:
        if is_sidecar_name(n) and n not in writing:
            try:
                sidecars[n] = read_sidecar(where / n, root=ob.path)
            except Rejected as exc:
                sidecars[n] = exc
            except OSError:
                pass  # not ready for the daemon either

    def readable(n: str) -> bool:
        st = entries[n]
        return not stat.S_ISREG(st.st_mode) or may(user, where / n, st, R)

    now = time.monotonic()
    passes = []
    for waited in (0.0, ob.sidecar_wait + 1.0):  # just settled; after waiting as long as the daemon does
        files = {n: _Seen(n not in writing, now - waited) for n in entries}
        passes.append(plan_folder(folder, files, sidecars, readable=readable,
                                  has_destination=has_destination_without_sidecar(folder, ob),
                                  sidecar_wait=ob.sidecar_wait, now=now).plans)
    verdicts: dict[str, Verdict] = {}
    for i, plans in enumerate(passes):
        for plan in plans:
            if any(n in verdicts for n in plan.names):
                continue
            v = _judge(ob, plan, user)
            if i:
                v.waits_first = (f"it waits up to sidecar_wait ({ob.sidecar_wait:g} s) for a sidecar or the "
                                 "files its sidecar lists; if nothing changes, then:")
            for n in plan.names:
                verdicts[n] = v
    for n in entries:
        if n not in verdicts:
            verdicts[n] = Verdict(n, ob.name, "wait", reason=(
                "still being written (a writer holds it open): it is taken once closed and unchanged "
                f"for settle ({ob.settle:g} s)" if n in writing else
                "it waits for the files of its group that are still being written"))
    return verdicts


def _judge(ob: OutboxConfig, plan: Plan, user: ServiceUser) -> Verdict:
    v = Verdict(plan.primary, ob.name, "send", sidecar=plan.sidecar, group=list(plan.names))
    try:
        blocked = claim_blocked(user, ob, plan.rel_dir, plan.names)
    except OSError as exc:
        blocked = claim_problem(exc, ob.path / plan.rel_dir)
    if blocked:
        v.action, v.reason = "blocked", blocked
        return v
    if plan.rejection is not None:
        v.action, v.reason_code, v.reason = "reject", plan.rejection.reason_code, plan.rejection.reason
        return v
    try:
        accepted = judge_group(plan.rel_dir, plan.documents, plan.sidecar, ob, ob.path / plan.rel_dir,
                               root=ob.path)
    except Rejected as exc:
        v.action, v.reason_code, v.reason = "reject", exc.reason_code, exc.reason
        return v
    except (OSError, SpoolError) as exc:
        v.action = "blocked"
        v.reason = f"its files could not be read ({getattr(exc, 'strerror', None) or exc}); it is tried again"
        return v
    except ReaderUnavailable as exc:  # not the document's fault: the daemon would judge it again later
        v.action, v.reason = "blocked", f"{exc}; it is tried again"
        return v
    v.recipients, v.rule, v.kinds, v.pages = accepted.numbers, accepted.rule, accepted.kinds, accepted.pages
    v.options = {k: val for k, val in accepted.options.items() if val is not None}
    return v


def render(v: Verdict) -> str:
    """A few lines a person setting up a scanner reads."""
    head = f"{v.path}: "
    lines = []
    if v.action == "send":
        head += f"would be sent to {', '.join(v.recipients)} (chosen by {v.rule})"
    elif v.action == "reject":
        head += f"would be rejected [{v.reason_code}]: {v.reason}"
    elif v.action == "blocked":
        head += f"would be blocked: {v.reason}"
    elif v.action == "wait":
        head += f"waits: {v.reason}"
    elif v.action == "ignore":
        head += v.reason or "ignored"
    else:
        head += f"not found: {v.reason}"
    if v.waits_first:
        lines.append(f"    first {v.waits_first}")
    if v.action in ("send", "reject", "blocked") and v.outbox:
        others = [n for n in v.group if n != os.path.basename(v.path)]
        lines.append(f"    outbox {v.outbox}; sidecar: {shown(v.sidecar) if v.sidecar else 'none'}; "
                     f"with: {shown(', '.join(others)) if others else 'no other files'}")
    if v.action == "send":
        lines.append(f"    type: {', '.join(v.kinds)}; pages: {v.pages}")
        if v.options:
            lines.append("    options: " + ", ".join(f"{k}={shown(str(x))}" for k, x in v.options.items()))
    return "\n".join([head, *lines])
