"""Job states change only along the transition table in store.py (SPEC 5)."""

from __future__ import annotations

import pytest

from gateway.errors import InvalidTransition
from gateway.store import (
    ACTIVE_ORDER,
    JOB_TRANSITIONS,
    RECIPIENT_TRANSITIONS,
    JobState,
    SourceFile,
    Store,
    check_transition,
)

S = JobState


@pytest.mark.parametrize(("old", "new"), [
    (S.QUEUED, S.SUBMITTING), (S.SUBMITTING, S.SENDING), (S.SUBMITTING, S.QUEUED),
    (S.SENDING, S.DELIVERED), (S.SENDING, S.RETRY_WAIT), (S.RETRY_WAIT, S.SUBMITTING),
    (S.FAILED, S.QUEUED), (S.CANCELED, S.RETRY_WAIT),
])
def test_recipient_changes_in_the_table_are_allowed(old, new):
    check_transition(RECIPIENT_TRANSITIONS, old, new, "r")


@pytest.mark.parametrize(("old", "new"), [
    (S.DELIVERED, S.QUEUED), (S.DELIVERED, S.FAILED), (S.QUEUED, S.SENDING), (S.QUEUED, S.DELIVERED),
    (S.SENDING, S.QUEUED), (S.FAILED, S.SENDING), (S.RETRY_WAIT, S.SENDING),
])
def test_recipient_changes_not_in_the_table_raise(old, new):
    with pytest.raises(InvalidTransition, match=f"from {old} to {new}"):
        check_transition(RECIPIENT_TRANSITIONS, old, new, "r")


def test_every_state_has_a_row_and_ended_jobs_stay_ended():
    assert set(JOB_TRANSITIONS) == set(JobState)
    assert set(RECIPIENT_TRANSITIONS) == set(JobState) - {S.REJECTED}
    assert JOB_TRANSITIONS[S.DELIVERED] == JOB_TRANSITIONS[S.REJECTED] == frozenset()
    assert all(S.REJECTED not in JOB_TRANSITIONS[s] for s in ACTIVE_ORDER if s != S.QUEUED)


def _queued_job(store: Store) -> int:
    job_id = store.record_claim_intent(outbox="main", outbox_path="/x", rel_dir="", sources=[
        SourceFile("a.pdf", 1, 1, 1)], documents=["a.pdf"], sidecar=None, primary="a.pdf",
        simulated=True, settled_at=None)
    store.mark_held(job_id)
    store.accept_job(job_id, numbers=["+15551234567"], options={}, sha256=["x"], pages=1)
    return job_id


def test_store_refuses_a_change_not_in_the_table_and_keeps_the_old_state(tmp_path):
    store = Store(tmp_path / "jobs.db")
    job_id = _queued_job(store)
    [rec] = store.get_job(job_id).recipients
    with pytest.raises(InvalidTransition):
        store.mark_submit_accepted(rec.id, "77", next_poll_at=0)  # queued -> sending skips submitting
    assert store.get_job(job_id).recipients[0].state == S.QUEUED
    assert [e["state"] for e in store.events(job_id)][-1] == "queued"
    store.close()


def test_rejecting_a_rejected_job_again_is_no_change(tmp_path):
    store = Store(tmp_path / "jobs.db")
    job_id = store.record_claim_intent(outbox="main", outbox_path="/x", rel_dir="", sources=[],
                                       documents=[], sidecar=None, primary="a.pdf", simulated=True,
                                       settled_at=None)
    store.reject_job(job_id, "empty", "empty")
    store.reject_job(job_id, "empty", "empty")  # the same state: not a change
    store.close()


def test_names_round_trip_as_bytes(tmp_path):
    store = Store(tmp_path / "jobs.db")
    name = "bad\udcff\n.pdf"
    job_id = store.record_claim_intent(outbox="main", outbox_path="/x", rel_dir="f\udcfe", sources=[
        SourceFile(name, 1, 1, 1)], documents=[name], sidecar=name + ".yaml", primary=name,
        simulated=True, settled_at=None)
    job = store.get_job(job_id)
    assert (job.rel_dir, job.primary, job.sidecar, job.names) == ("f\udcfe", name, name + ".yaml", [name])
    assert all("\n" not in (e["detail"] or "") for e in store.events(job_id))
    store.close()
