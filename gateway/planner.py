"""Which files of one folder go together, and when a group may be taken (SPEC 4.3).

A pure function of what was seen: the folder's files (settled or not), the sidecars
already read, which files the gateway cannot read yet, and the time.  No disk access,
so the pairing rules can be tested table by table and run as often as needed.

The rule that matters most: a sidecar decides alone.  Documents and sidecars that
refer to each other (a sidecar named after a document, or listing it in `files`) form
one group; a group with more than one sidecar, or a sidecar that could belong to more
than one document, is rejected whole as `bad_sidecar`, so that nothing in it is ever
sent to a number it was not meant for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from gateway.errors import Rejected
from gateway.sidecar import (
    RESULT_SUFFIX,
    Sidecar,
    documents_for_sidecar,
    is_sidecar_name,
    sidecar_candidates,
)


class FileSeen(Protocol):
    """What the planner needs to know of a file (the watcher's `Seen` is one)."""

    @property
    def ready(self) -> bool: ...

    @property
    def settled_at(self) -> float | None: ...


@dataclass
class Plan:
    """A group of files to claim as one job."""

    rel_dir: str
    documents: list[str]
    sidecar: str | None
    extras: list[str] = field(default_factory=list)  # further sidecars of a rejected group
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
class FolderPlan:
    plans: list[Plan]
    wake_at: float | None  # when planning again could take more without any new event


def plan_folder(folder: str, files: Mapping[str, FileSeen], sidecars: Mapping[str, Sidecar | Rejected],
                *, readable: Callable[[str], bool] = lambda name: True, has_destination: bool,
                sidecar_wait: float, now: float) -> FolderPlan:
    """`files`: every file seen in the folder, by name.  `sidecars`: the ready sidecars,
    read (a sidecar missing here is treated as not ready).  `readable(name)`: whether the
    gateway's user can read a file yet (asked only of files about to be taken).
    `has_destination`: the folder is a number folder or the outbox has a `number`, so a
    document without a sidecar need not wait for one.

    Linear in the folder's size: a folder of 20,000 files is planned in one go."""
    names = set(files)
    sidecar_names = {n for n in names if is_sidecar_name(n)}
    docs = names - sidecar_names
    own: dict[str, list[str]] = {}  # sidecar -> the documents named after it
    if sidecar_names:
        for d in docs:
            if d.endswith(RESULT_SUFFIX):
                continue  # a result file beside its document is nobody's document
            for c in sidecar_candidates(d):
                if c in sidecar_names:
                    own.setdefault(c, []).append(d)
    wakes: list[float] = []
    plans: list[Plan] = []

    def ready(n: str) -> bool:
        return files[n].ready and (n not in sidecar_names or n in sidecars)

    def waited(n: str) -> float:
        s = files[n].settled_at
        return now - s if s is not None else 0.0

    def wait_for(n: str) -> None:
        s = files[n].settled_at
        if s is not None:
            wakes.append(s + sidecar_wait)

    def add(plan: Plan) -> None:
        group = plan.names
        if plan.rejection is None:
            blocked = sorted(n for n in group if not readable(n))
            if blocked:
                if max(waited(n) for n in blocked) < sidecar_wait:
                    for n in blocked:  # print drivers set the final permissions just after closing
                        wait_for(n)
                    return
                plan.rejection = Rejected("unreadable", f"{', '.join(blocked)} cannot be read by the "
                                          "gateway's user: check the writer's umask or group")
        plan.settled_at = max((files[n].settled_at or now) for n in group)
        plans.append(plan)

    # Group documents and sidecars that refer to each other (union-find); a document no
    # sidecar refers to is a group of its own.
    parent: dict[str, str] = {}

    def root(n: str) -> str:
        parent.setdefault(n, n)
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    def join(a: str, b: str) -> None:
        parent[root(a)] = root(b)

    listed: dict[str, tuple[str, ...]] = {}
    for s in sidecar_names:
        root(s)
        for d in own.get(s, ()):
            join(s, d)
        parsed = sidecars.get(s)
        if isinstance(parsed, Sidecar) and parsed.files:
            listed[s] = parsed.files
            for f in parsed.files:
                if f in names:
                    join(s, f)
    def awaits_listed(scs: list[str]) -> bool:
        """Before a group is rejected: a file its sidecars list that has not arrived yet
        belongs to the rejection too (taken alone later, it would go to the folder's
        number, SPEC 4.5), so it is waited for up to sidecar_wait."""
        if any(f not in names for sc in scs for f in listed.get(sc, ())) and \
                max(waited(sc) for sc in scs) < sidecar_wait:
            for sc in scs:
                wait_for(sc)
            return True
        return False

    groups: dict[str, list[str]] = {}
    for n in sorted(parent):
        groups.setdefault(root(n), []).append(n)
    for d in sorted(docs - parent.keys()):
        groups[d] = [d]

    # A sidecar not read yet (still being written, or held open) may list any document of
    # the folder in `files` (SPEC 4.3: a document waits for every sidecar that could belong
    # to it), so a document no read sidecar claims waits for it, up to sidecar_wait.
    unread_sidecar = any(not ready(s) for s in sidecar_names)

    for members in groups.values():
        group_sidecars = [n for n in members if n in sidecar_names]
        group_docs = [n for n in members if n not in sidecar_names]
        if not group_sidecars:
            for d in group_docs:
                if not ready(d):
                    continue
                if (has_destination and not unread_sidecar) or waited(d) >= sidecar_wait:
                    add(Plan(folder, [d], None))
                else:
                    wait_for(d)
            continue
        first = group_sidecars[0]
        if len(group_sidecars) > 1:
            if all(ready(n) for n in members):
                if awaits_listed(group_sidecars):
                    continue
                what = ", ".join(group_docs) if group_docs else "these documents"
                add(Plan(folder, group_docs, first, extras=group_sidecars[1:], rejection=Rejected(
                    "bad_sidecar", f"{what} {'has' if len(group_docs) == 1 else 'have'} more than one "
                    f"sidecar ({', '.join(group_sidecars)}): keep exactly one")))
            continue
        s = first
        if not ready(s):
            continue
        parsed = sidecars[s]
        mine = sorted(own.get(s, ()))
        if isinstance(parsed, Rejected):
            if all(ready(n) for n in members):
                add(Plan(folder, group_docs, s, rejection=parsed))
            continue
        if len(mine) > 1:
            if all(ready(n) for n in members) and not awaits_listed([s]):
                add(Plan(folder, group_docs, s, rejection=Rejected(
                    "bad_sidecar", f"{s} could belong to {', '.join(mine)}: name it after one document "
                    f"(e.g. {mine[0]}.yaml)")))
            continue
        wanted = mine + [f for f in listed.get(s, ()) if f not in mine]
        missing = [f for f in wanted if f not in names]
        unsettled = [f for f in wanted if f in names and not ready(f)]
        if not wanted:
            if waited(s) >= sidecar_wait:
                add(Plan(folder, [], s, rejection=Rejected(
                    "bad_sidecar", f"{s} has no document named after it: the sidecar came too late or "
                    "its document was named differently")))
            else:
                wait_for(s)
            continue
        if not listed.get(s):
            if not unsettled:
                add(Plan(folder, wanted, s))
            continue  # its document is still being written: that is never given up on
        if missing or unsettled:
            if waited(s) >= sidecar_wait:
                what = ("missing: " + ", ".join(missing)) if missing else \
                    "still being written: " + ", ".join(unsettled)
                add(Plan(folder, [f for f in wanted if f in names and ready(f)], s, rejection=Rejected(
                    "bad_sidecar", f"{s} lists files that did not arrive within sidecar_wait ({what})")))
            else:
                wait_for(s)
            continue
        add(Plan(folder, wanted, s))
    return FolderPlan(plans, min(wakes) if wakes else None)
