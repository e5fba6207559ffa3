"""A lost or replaced database never means a second fax (SPEC 4.5, README "A lost database").

Job ids never repeat (AUTOINCREMENT, also for databases of schema 3); the daemon's lock
is on the database file, whatever path names it; a database deleted or replaced while
the daemon runs stops it and is saved as `<database>.orphaned-<time>`; a start-up with
job folders the database does not know is refused; the README's recovery steps work."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from conftest import run_cli

from gateway.store import SCHEMA_VERSION, SourceFile, Store

# The tables as gateway/store.py made them at schema 3 (sqlite-utils, no AUTOINCREMENT).
SCHEMA_3 = [
    'CREATE TABLE "meta" ("key" TEXT PRIMARY KEY, "value" TEXT)',
    '''CREATE TABLE "jobs" (
   "id" INTEGER PRIMARY KEY, "outbox" TEXT NOT NULL, "outbox_path" TEXT, "state" TEXT NOT NULL,
   "phase" TEXT NOT NULL, "reason" TEXT, "reason_code" TEXT, "simulated" INTEGER, "rel_dir" TEXT,
   "sources" TEXT, "documents" TEXT, "sidecar" TEXT, "primary_name" TEXT, "options" TEXT,
   "sha256" TEXT, "pages" INTEGER, "created_at" REAL, "settled_at" REAL, "completed_at" REAL,
   "filed_to" TEXT, "filed_root" TEXT, "filed_suffix" INTEGER
, "sent_root" TEXT, "failed_root" TEXT, "kinds" TEXT)''',
    '''CREATE TABLE "recipients" (
   "id" INTEGER PRIMARY KEY, "job_id" INTEGER REFERENCES "jobs"("id"), "position" INTEGER,
   "number" TEXT, "state" TEXT, "attempts" INTEGER DEFAULT 0, "ifax_job_id" TEXT, "pages" INTEGER,
   "transferred_pages" INTEGER, "cost" REAL, "code" TEXT, "message" TEXT, "accepted_at" REAL,
   "next_action_at" REAL, "updated_at" REAL
, "send_at" REAL, "call_start" REAL, "stale_call_start" REAL, "awaiting_fresh" INTEGER,
   "last_ok_poll_at" REAL, "sending_seconds" REAL, "given_up" INTEGER, "ifax_job_ids" TEXT)''',
    '''CREATE TABLE "events" ("id" INTEGER PRIMARY KEY, "job_id" INTEGER REFERENCES "jobs"("id"),
   "recipient_id" INTEGER, "at" REAL, "state" TEXT, "detail" TEXT)''',
    'CREATE INDEX "idx_jobs_state" ON "jobs" ("state")',
    'CREATE INDEX "idx_jobs_phase" ON "jobs" ("phase")',
    'CREATE INDEX "idx_jobs_simulated_state" ON "jobs" ("simulated", "state")',
    "INSERT INTO meta VALUES ('schema_version', '3')",
]


def _schema_3_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    for sql in SCHEMA_3:
        conn.execute(sql)
    jobs = ((1, "delivered", "filed"), (2, "sending", "held"), (3, "queued", "claiming"))
    for job_id, state, phase in jobs:
        conn.execute("INSERT INTO jobs(id, outbox, outbox_path, state, phase, simulated, rel_dir, sources,"
                     " documents, primary_name, options, sha256, created_at) VALUES"
                     " (?, 'main', '/outbox', ?, ?, 0, '', '[]', '[]', 'a.pdf', '{}', '[]', 1.0)",
                     (job_id, state, phase))
        conn.execute("INSERT INTO events(job_id, at, state) VALUES (?, 1.0, ?)", (job_id, state))
    conn.execute("INSERT INTO recipients(job_id, position, number, state, attempts, ifax_job_id) VALUES"
                 " (2, 0, '+15551230888', 'sending', 1, '1000')")
    conn.commit()
    conn.close()


def _claim(store: Store) -> int:
    return store.record_claim_intent(outbox="main", outbox_path="/outbox", rel_dir="",
                                     sources=[SourceFile("b.pdf", 1, 1, 1)], documents=["b.pdf"],
                                     sidecar=None, primary="b.pdf", simulated=False, settled_at=None)


def test_schema_3_database_keeps_its_rows_and_never_gives_an_id_twice(tmp_path):
    db = tmp_path / "jobs.db"
    _schema_3_database(db)
    store = Store(db)
    try:
        assert [j.id for j in store.list_jobs()] == [3, 2, 1]
        job = store.get_job(2)
        assert job.state == "sending" and [r.ifax_job_id for r in job.recipients] == ["1000"]
        assert [e["state"] for e in store.events(1)] == ["delivered"]
        conn = store.conn
        [(ddl,)] = conn.execute("SELECT sql FROM sqlite_master WHERE name='jobs'").fetchall()
        assert "AUTOINCREMENT" in ddl
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "4" == \
            str(SCHEMA_VERSION)
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'"
                                              " AND tbl_name='jobs'")}
        assert {"idx_jobs_state", "idx_jobs_phase", "idx_jobs_simulated_state"} <= indexes
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []

        store.abandon_claim(3)  # the highest id leaves the table: its id is never given again
        assert _claim(store) == 4
        store.abandon_claim(4)
        assert _claim(store) == 5
    finally:
        store.close()
    # Retention may empty the table: the next job still gets a new id.
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM recipients")
    conn.execute("DELETE FROM events")
    conn.execute("DELETE FROM jobs")
    conn.commit()
    conn.close()
    store = Store(db)
    try:
        assert _claim(store) == 6
    finally:
        store.close()


def test_a_second_daemon_through_a_symlink_to_the_database_exits_2(daemon, make_config, tmp_path):
    first = daemon(make_config()).start()
    (tmp_path / "other").mkdir()
    link = tmp_path / "other" / "jobs.db"
    link.symlink_to(tmp_path / "jobs.db")
    second = make_config(name="second.yaml", extra={"database": str(link)})
    p = run_cli("run", "-c", str(second), timeout=20)
    assert p.returncode == 2, p.stderr
    assert f"process {first.proc.pid}" in p.stderr
    assert first.healthy()
    assert first.terminate() == 0
