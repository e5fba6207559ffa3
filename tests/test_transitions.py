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


def _job_states_the_long_way(store: Store, job_id: int) -> list[str]:
    return [r[0] for r in store.conn.execute("SELECT state FROM jobs WHERE id=?", (job_id,))]


@pytest.mark.parametrize("numbers", [["+15551230001"], ["+15551230001", "+15551230002"]])
def test_a_job_follows_its_recipients_with_one_read_less_when_it_has_one(tmp_path, numbers):
    """A job with one recipient has that recipient's state (SPEC 5), so its state changes
    with no read of its recipients (issue 12); with two it is derived from both.  Either
    way the job's state, completion and events come out the same."""
    store = Store(tmp_path / "jobs.db")
    job_id = store.record_claim_intent(outbox="main", outbox_path="/x", rel_dir="", sources=[],
                                       documents=["a.pdf"], sidecar=None, primary="a.pdf", simulated=True,
                                       settled_at=None)
    store.accept_job(job_id, numbers=numbers, options={}, sha256=[None], pages=1, claimed=True)
    reads: list[str] = []
    store.conn.set_trace_callback(lambda sql: reads.append(sql) if "LEFT JOIN recipients" in sql else None)
    seen = []
    for i, rec in enumerate(store.get_job(job_id).recipients):
        assert store.record_submit_intent(rec.id)
        seen.append(_job_states_the_long_way(store, job_id)[0])
        store.mark_submit_accepted(rec.id, f"7{i}", next_poll_at=0)
        seen.append(_job_states_the_long_way(store, job_id)[0])
        store.record_status(rec.id, new_state=S.DELIVERED, next_action_at=0, transferred_pages=1, cost=0.1,
                            code=None, message=None, ifax_status="delivered", call_start=None,
                            sending_seconds=1, polled_at=0, awaiting_fresh=False)
        seen.append(_job_states_the_long_way(store, job_id)[0])
    store.conn.set_trace_callback(None)
    store.flush()
    if len(numbers) == 1:
        assert seen == ["submitting", "sending", "delivered"]
        assert reads == []
    else:  # the least advanced recipient's state, until both are delivered
        assert seen == ["queued", "queued", "queued", "submitting", "sending", "delivered"]
        assert len(reads) == 6
    job = store.get_job(job_id)
    assert job.state == S.DELIVERED and job.completed_at is not None and job.reason is None
    job_events = [e["state"] for e in store.events(job_id) if e["recipient"] is None]
    assert job_events.count("delivered") == 1
    assert store.count_by_state()["delivered"] == 1  # the job_counts triggers saw it
    store.close()
