"""Metrics whose cost does not grow with the history kept (SPEC 8), rejections counted when
they happen, and collision suffixes that start after the highest one used (SPEC 4.4)."""

from __future__ import annotations

import sqlite3

from conftest import make_pdf, metric_value, wait_for

from gateway.store import JOB_STATES, SourceFile, Store


def _real_counts(db) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
    finally:
        conn.close()


def _job(store: Store, name: str = "a.pdf") -> int:
    job_id = store.record_claim_intent(outbox="main", outbox_path="/x", rel_dir="", sources=[
        SourceFile(name, 1, 1, 1)], documents=[name], sidecar=None, primary=name, simulated=True,
        settled_at=None)
    store.mark_held(job_id)
    return job_id


def test_job_counts_follow_every_insert_change_and_delete(tmp_path):
    store = Store(tmp_path / "jobs.db")
    a, b, c = _job(store), _job(store), _job(store)
    store.accept_job(a, numbers=["+15551234567"], options={}, sha256=["x"], pages=1)
    store.reject_job(b, "empty", "empty")
    [rec] = store.get_job(a).recipients
    store.record_submit_intent(rec.id)
    store.mark_submit_accepted(rec.id, "9", next_poll_at=0)
    store.abandon_claim(_job_for_abandon(store))
    expected = {s: 0 for s in JOB_STATES}
    expected.update(_real_counts(tmp_path / "jobs.db"))
    assert store.count_by_state() == expected
    assert expected["sending"] == 1 and expected["rejected"] == 1 and expected["queued"] == 1
    store.conn.execute("DELETE FROM events WHERE job_id=?", (c,))
    store.conn.execute("DELETE FROM jobs WHERE id=?", (c,))
    assert store.count_by_state()["queued"] == 0
    store.close()


def _job_for_abandon(store: Store) -> int:
    return store.record_claim_intent(outbox="main", outbox_path="/x", rel_dir="", sources=[],
                                     documents=[], sidecar=None, primary="z.pdf", simulated=True,
                                     settled_at=None)


def test_counts_are_built_once_for_a_database_that_had_none(tmp_path):
    store = Store(tmp_path / "jobs.db")
    _job(store)
    _job(store)
    store.conn.execute("DROP TRIGGER jobs_count_insert")
    store.conn.execute("DROP TABLE job_counts")
    store.close()
    again = Store(tmp_path / "jobs.db")
    assert again.count_by_state()["queued"] == 2
    again.close()


def test_metrics_are_exact_have_no_created_series_and_count_rejections_when_judged(service, spool,
                                                                                  simulator, tmp_path):
    svc = service()
    (spool.failed / "555-1234").write_bytes(b"in the way: this rejection cannot be filed yet")
    (spool.folder("555-1234") / "r.pdf").write_bytes(make_pdf(1))
    (spool.folder("+15551230801") / "ok.pdf").write_bytes(make_pdf(1))
    spool.wait_results(1, "sent")
    text = svc.metrics.render().decode()
    assert "_created" not in text
    wait_for(lambda: metric_value(svc.metrics.render().decode(), "fax_gateway_files_rejected_total",
                                  outbox="main", reason="invalid_number") == 1, 10, "the rejection counted")
    assert spool.results("failed") == []  # counted although it is not filed
    text = svc.metrics.render().decode()
    for state, n in _real_counts(tmp_path / "jobs.db").items():
        assert metric_value(text, "fax_gateway_jobs", state=state) == n


def test_a_name_filed_again_starts_after_the_highest_suffix_used(service, spool, simulator):
    service()
    folder = spool.folder("+15551230802")
    for i in range(3):
        (folder / "scan.pdf").write_bytes(make_pdf(1, text=str(i)))
        spool.wait_results(i + 1, "sent")
    sent = spool.sent / "+15551230802"
    assert sorted(p.name for p in sent.glob("*.pdf")) == ["scan-1.pdf", "scan-2.pdf", "scan.pdf"]
    (sent / "scan-1.pdf").unlink()  # someone tidies up: the gap is not filled again
    (sent / "scan-1.pdf.result.json").unlink()
    (folder / "scan.pdf").write_bytes(make_pdf(1, text="3"))
    wait_for(lambda: (sent / "scan-3.pdf").exists(), 20, "scan-3.pdf")
    assert not (sent / "scan-1.pdf").exists()


_FIRST_TRIGGERS = (  # as the first version of the counts made them: an upsert per change
    "CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN"
    " INSERT INTO job_counts(state, n) VALUES (NEW.state, 1)"
    " ON CONFLICT(state) DO UPDATE SET n = n + 1; END",
    "CREATE TRIGGER jobs_count_update AFTER UPDATE OF state ON jobs"
    " WHEN OLD.state IS NOT NEW.state BEGIN"
    " UPDATE job_counts SET n = n - 1 WHERE state = OLD.state;"
    " INSERT INTO job_counts(state, n) VALUES (NEW.state, 1)"
    " ON CONFLICT(state) DO UPDATE SET n = n + 1; END",
)


def test_counts_kept_by_the_first_versions_triggers_stand_and_go_on_with_the_new_ones(tmp_path):
    db = tmp_path / "jobs.db"
    store = Store(db)
    a, _ = _job(store), _job(store)
    store.conn.execute("DROP TRIGGER jobs_count_insert")
    store.conn.execute("DROP TRIGGER jobs_count_update")
    for sql in _FIRST_TRIGGERS:
        store.conn.execute(sql)
    # The first version's table had rows only for the states seen so far.
    store.conn.execute("DELETE FROM job_counts WHERE n=0")
    store.close()
    again = Store(db)
    triggers = dict(again.conn.execute("SELECT name, sql FROM sqlite_master WHERE type='trigger'"))
    assert set(triggers) == {"jobs_count_insert", "jobs_count_update", "jobs_count_delete"}
    assert not any("ON CONFLICT" in sql.upper() for sql in triggers.values())
    rows = dict(again.conn.execute("SELECT state, n FROM job_counts"))
    assert set(rows) == set(JOB_STATES)  # every state has its row: the triggers only add
    assert again.count_by_state()["queued"] == 2
    again.accept_job(a, numbers=["+15551234567"], options={}, sha256=["x"], pages=1)
    [rec] = again.get_job(a).recipients
    again.record_submit_intent(rec.id)  # queued -> submitting: a state with no row before
    again.reject_job(_job(again), "empty", "empty")
    expected = {s: 0 for s in JOB_STATES}
    expected.update(_real_counts(db))
    assert again.count_by_state() == expected
    assert expected["submitting"] == 1 and expected["rejected"] == 1
    again.close()


def test_only_one_index_of_the_jobs_holds_their_state(tmp_path):
    """Every index holding a column is changed with it: the state changes three times per
    document, so only the index that the state queries need may hold it.  A database
    with the first version's index on (simulated, state) loses it."""
    db = tmp_path / "jobs.db"
    Store(db).close()
    conn = sqlite3.connect(db)
    conn.execute("CREATE INDEX idx_jobs_simulated_state ON jobs(simulated, state)")
    conn.commit()
    conn.close()
    store = Store(db)
    holding = [name for (_, name, *_) in store.conn.execute("PRAGMA index_list(jobs)")
               if "state" in [r[2] for r in store.conn.execute(f"PRAGMA index_info({name})")]]
    assert holding == ["idx_jobs_state"]
    assert not store.has_real_jobs()
    store.record_claim_intent(outbox="main", outbox_path="/x", rel_dir="", sources=[], documents=[],
                              sidecar=None, primary="z.pdf", simulated=False, settled_at=None)
    plan = " ".join(r[3] for r in store.conn.execute(
        "EXPLAIN QUERY PLAN SELECT 1 FROM jobs WHERE simulated=0 LIMIT 1"))
    assert "idx_jobs_simulated" in plan
    assert store.has_real_jobs()
    store.close()


def test_a_state_without_its_row_is_counted_again_when_the_database_is_opened(tmp_path):
    """The triggers only add to rows that exist: a row gone (an earlier version rebuilt the
    table from the states it had seen) is counted from the jobs at the next start."""
    db = tmp_path / "jobs.db"
    store = Store(db)
    _job(store), _job(store)
    store.conn.execute("DELETE FROM job_counts WHERE state='queued'")
    store.close()
    again = Store(db)
    assert again.count_by_state()["queued"] == 2
    _job(again)
    assert again.count_by_state()["queued"] == 3 == _real_counts(db)["queued"]
    again.close()
