"""The pairing rules of SPEC 4.3 as a pure function of what was seen (planner.plan_folder),
table by table: which files go together, which are rejected, and when to look again."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gateway.errors import Rejected
from gateway.planner import plan_folder
from gateway.sidecar import Sidecar

WAIT = 30.0
NOW = 1000.0


@dataclass
class F:
    """A file as the watcher saw it: settled at `at` (None: still being written)."""

    settled_at: float | None = NOW - 1
    held: bool = False

    @property
    def ready(self) -> bool:
        return self.settled_at is not None and not self.held


def run(files, sidecars=None, *, dest=True, unreadable=frozenset(), now=NOW):
    files = {n: (f if isinstance(f, F) else F()) for n, f in files.items()}
    return plan_folder("+15551234567", files, sidecars or {}, readable=lambda n: n not in unreadable,
                       has_destination=dest, sidecar_wait=WAIT, now=now)


def groups(result):
    """Each plan as (sorted names, reason code or None)."""
    return sorted((sorted(p.names), p.rejection.reason_code if p.rejection else None) for p in result.plans)


TO = Sidecar(to=("+15550001111",))

CASES = [
    # (what, files, sidecars, expected groups)
    ("a document alone in a number folder", {"a.pdf": 1}, {}, [(["a.pdf"], None)]),
    ("document with its sidecar", {"a.pdf": 1, "a.pdf.yaml": 1}, {"a.pdf.yaml": TO},
     [(["a.pdf", "a.pdf.yaml"], None)]),
    ("short sidecar name", {"a.pdf": 1, "a.yaml": 1}, {"a.yaml": TO}, [(["a.pdf", "a.yaml"], None)]),
    ("duplicated sidecars reject all", {"a.pdf": 1, "a.pdf.yaml": 1, "a.yaml": 1},
     {"a.pdf.yaml": TO, "a.yaml": TO}, [(["a.pdf", "a.pdf.yaml", "a.yaml"], "bad_sidecar")]),
    ("ambiguous sidecar rejects every document it could belong to",
     {"a.pdf": 1, "a.tiff": 1, "a.yaml": 1}, {"a.yaml": TO},
     [(["a.pdf", "a.tiff", "a.yaml"], "bad_sidecar")]),
    ("ambiguous sidecar with files rejects the listed files too",
     {"a.pdf": 1, "a.tiff": 1, "a.yaml": 1, "c.pdf": 1}, {"a.yaml": Sidecar(to=TO.to, files=("c.pdf",))},
     [(["a.pdf", "a.tiff", "a.yaml", "c.pdf"], "bad_sidecar")]),
    ("two sidecars with files for one document reject everything",
     {"a.pdf": 1, "b.pdf": 1, "c.pdf": 1, "a.pdf.yaml": 1, "a.yaml": 1},
     {"a.pdf.yaml": Sidecar(to=TO.to, files=("b.pdf",)), "a.yaml": Sidecar(files=("c.pdf",))},
     [(["a.pdf", "a.pdf.yaml", "a.yaml", "b.pdf", "c.pdf"], "bad_sidecar")]),
    ("a document listed by two sidecars", {"x.yaml": 1, "y.yaml": 1, "c.pdf": 1},
     {"x.yaml": Sidecar(files=("c.pdf",)), "y.yaml": Sidecar(files=("c.pdf",))},
     [(["c.pdf", "x.yaml", "y.yaml"], "bad_sidecar")]),
    ("a standalone sidecar with its files", {"batch.yaml": 1, "p1.pdf": 1, "p2.pdf": 1},
     {"batch.yaml": Sidecar(to=TO.to, files=("p1.pdf", "p2.pdf"))},
     [(["batch.yaml", "p1.pdf", "p2.pdf"], None)]),
    ("a broken sidecar rejects its document", {"a.pdf": 1, "a.pdf.yaml": 1},
     {"a.pdf.yaml": Rejected("bad_sidecar", "a.pdf.yaml: it is not valid YAML")},
     [(["a.pdf", "a.pdf.yaml"], "bad_sidecar")]),
    ("unrelated documents stay apart", {"a.pdf": 1, "b.pdf": 1, "b.pdf.yaml": 1}, {"b.pdf.yaml": TO},
     [(["a.pdf"], None), (["b.pdf", "b.pdf.yaml"], None)]),
]


@pytest.mark.parametrize(("files", "sidecars", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_pairing(files, sidecars, expected):
    assert groups(run(files, sidecars)) == expected


def test_two_sidecars_wait_for_a_listed_file_that_has_not_arrived():
    """Rejected without it, the late file would be taken alone and sent to the folder's
    number, which neither sidecar meant (a CI run showed it)."""
    files = {"a.pdf": 1, "b.pdf": 1, "a.pdf.yaml": 1, "a.yaml": 1}
    sidecars = {"a.pdf.yaml": Sidecar(to=TO.to, files=("b.pdf",)), "a.yaml": Sidecar(files=("c.pdf",))}
    early = run(files, sidecars)
    assert early.plans == [] and early.wake_at == NOW - 1 + WAIT
    assert groups(run({**files, "c.pdf": 1}, sidecars)) == [
        (["a.pdf", "a.pdf.yaml", "a.yaml", "b.pdf", "c.pdf"], "bad_sidecar")]
    assert groups(run(files, sidecars, now=NOW + WAIT)) == [
        (["a.pdf", "a.pdf.yaml", "a.yaml", "b.pdf"], "bad_sidecar")]  # c.pdf never came
    ambiguous = {"a.pdf": 1, "a.tiff": 1, "a.yaml": 1}
    listing = {"a.yaml": Sidecar(to=TO.to, files=("c.pdf",))}
    assert run(ambiguous, listing).plans == []
    assert groups(run({**ambiguous, "c.pdf": 1}, listing)) == [
        (["a.pdf", "a.tiff", "a.yaml", "c.pdf"], "bad_sidecar")]


def test_a_document_waits_for_a_sidecar_not_read_yet_that_may_list_it():
    """c.pdf is named after no sidecar, but a.yaml (held open by a reader, or not settled
    yet) lists it: taken alone it would go to the folder's number (a CI run showed it).
    It waits for the sidecar, at most sidecar_wait from its own settling."""
    settled = NOW - 1
    files = {"a.yaml": F(held=True), "a.pdf": 1, "a.tiff": 1, "c.pdf": F(settled_at=settled)}
    waiting = run(files)
    assert waiting.plans == [] and waiting.wake_at == settled + WAIT
    assert groups(run({**files, "a.yaml": 1}, {"a.yaml": Sidecar(to=TO.to, files=("c.pdf",))})) == [
        (["a.pdf", "a.tiff", "a.yaml", "c.pdf"], "bad_sidecar")]
    assert groups(run(files, now=settled + WAIT)) == [(["c.pdf"], None)]  # never read: not waited for ever
    assert groups(run({"b.pdf": 1, "a.yaml": 1}, {"a.yaml": TO})) == [(["b.pdf"], None)]


def test_nothing_of_a_group_is_taken_while_a_member_is_still_being_written():
    result = run({"a.pdf": 1, "a.pdf.yaml": F(settled_at=None)}, {})
    assert result.plans == []
    result = run({"a.pdf": F(settled_at=None), "a.pdf.yaml": 1}, {"a.pdf.yaml": TO})
    assert result.plans == [] and result.wake_at is None  # a file being written is never given up on


def test_a_file_held_open_is_not_taken():
    assert run({"a.pdf": F(held=True)}).plans == []


def test_without_a_destination_a_document_waits_for_its_sidecar_then_is_taken():
    settled = NOW - 5
    waiting = run({"a.pdf": F(settled_at=settled)}, dest=False)
    assert waiting.plans == [] and waiting.wake_at == settled + WAIT
    later = run({"a.pdf": F(settled_at=settled)}, dest=False, now=settled + WAIT)
    assert groups(later) == [(["a.pdf"], None)]  # judged later: no_destination


def test_files_missing_after_sidecar_wait_reject_the_sidecar_and_what_is_there():
    files = {"batch.yaml": F(settled_at=NOW - WAIT - 1), "p1.pdf": 1}
    sidecars = {"batch.yaml": Sidecar(to=TO.to, files=("p1.pdf", "p2.pdf"))}
    [plan] = run(files, sidecars).plans
    assert sorted(plan.names) == ["batch.yaml", "p1.pdf"]
    assert plan.rejection is not None and "p2.pdf" in plan.rejection.reason
    early = run({"batch.yaml": F(settled_at=NOW - 1), "p1.pdf": 1}, sidecars)
    assert early.plans == [] and early.wake_at == NOW - 1 + WAIT


def test_unreadable_files_wait_then_are_rejected():
    assert run({"a.pdf": F(settled_at=NOW - 1)}, unreadable={"a.pdf"}).plans == []
    [plan] = run({"a.pdf": F(settled_at=NOW - WAIT)}, unreadable={"a.pdf"}).plans
    assert plan.rejection is not None and plan.rejection.reason_code == "unreadable"


def test_a_sidecar_whose_document_never_came_is_rejected_after_the_wait():
    assert run({"late.yaml": F(settled_at=NOW - 1)}, {"late.yaml": TO}).plans == []
    [plan] = run({"late.yaml": F(settled_at=NOW - WAIT)}, {"late.yaml": TO}).plans
    assert plan.names == ["late.yaml"] and plan.rejection is not None


def test_result_file_is_named_after_the_sidecars_own_document():
    [plan] = run({"p1.pdf": 1, "cover.pdf": 1, "cover.pdf.yaml": 1},
                 {"cover.pdf.yaml": Sidecar(to=TO.to, files=("p1.pdf",))}).plans
    assert plan.primary == "cover.pdf" and plan.documents == ["cover.pdf", "p1.pdf"]


def test_a_large_folder_with_a_sidecar_per_document_is_planned_whole():
    files = {}
    sidecars = {}
    for i in range(5000):
        files[f"d{i}.pdf"] = F()
        files[f"d{i}.pdf.yaml"] = F()
        sidecars[f"d{i}.pdf.yaml"] = TO
    result = run(files, sidecars)
    assert len(result.plans) == 5000
    assert all(p.rejection is None and len(p.names) == 2 for p in result.plans)
