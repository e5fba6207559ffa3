"""A lost or replaced database never means a second fax (SPEC 4.5, README "A lost database").

Job ids never repeat (AUTOINCREMENT, also for databases of schema 3); the daemon's lock
is on the database file, whatever path names it; a database deleted or replaced while
the daemon runs stops it and is saved as `<database>.orphaned-<time>`; a start-up with
job folders the database does not know is refused; the README's recovery steps work."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
from pathlib import Path

import httpx
from conftest import make_pdf, run_cli, sent_documents, wait_for

from gateway.dbguard import DatabaseGuard
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
ORPHANED = re.compile(r"^jobs\.db\.orphaned-\d{8}T\d{6}Z$")


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
        assert {"idx_jobs_state", "idx_jobs_phase", "idx_jobs_simulated"} <= indexes
        assert "idx_jobs_simulated_state" not in indexes  # kept through the rebuild, then replaced
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


# -- deleted or replaced while running ----------------------------------------------------------

def _sending_fax(daemon, spool, simulator):
    """A daemon whose job 1 stays sending (the simulator keeps ...888 sending)."""
    d = daemon().start()
    (spool.folder("+15551230888") / "a.pdf").write_bytes(make_pdf(1, text="sending"))
    wait_for(lambda: simulator.requests("fax-status"), 15, "the fax to be sent and polled")
    assert (spool.private / "1").is_dir()
    return d


def _health(d) -> tuple[int, dict]:
    r = httpx.get(d.url + "/healthz", timeout=10)
    return r.status_code, r.json()


def _halted(d, tmp_path: Path, what: str) -> Path:
    """/healthz turns 503 within a few seconds and the saved copy holds the job."""
    status, body = wait_for(lambda: (h := _health(d))[0] == 503 and h, 5, "/healthz to turn 503")
    [reason] = [r for r in body["reasons"] if "database file" in r]
    assert f"was {what}" in reason and "A lost database" in reason
    copy = wait_for(lambda: [p for p in tmp_path.iterdir() if ORPHANED.match(p.name)], 5, "the copy")[0]
    assert any(str(copy) in r for r in _health(d)[1]["reasons"])
    conn = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
    try:
        assert conn.execute("SELECT id, state FROM jobs").fetchall() == [(1, "sending")]
        [(ifax_job_id,)] = conn.execute("SELECT ifax_job_id FROM recipients").fetchall()
        assert ifax_job_id is not None
    finally:
        conn.close()
    assert d.log.read_text().count("was " + what) == 1, "logged once"
    return copy


def _restart_is_refused(d, copy: Path) -> None:
    before = len(d.log.read_text())
    d.start(wait_healthy=False)
    assert d.wait_exit() == 1
    said = d.log.read_text()[before:]
    assert ".fax-gateway-main/1 is not in the database" in said and "A lost database" in said
    assert str(copy) in said, "the message names the saved copy"


def _recover_as_the_readme_says(d, tmp_path: Path, copy: Path) -> None:
    """README "A lost database": (the daemon is stopped) move aside what lies at the database
    path, put the newest copy in its place, start."""
    aside = tmp_path / "aside"
    aside.mkdir()
    for name in ("jobs.db", "jobs.db-wal", "jobs.db-shm"):
        if (tmp_path / name).exists():
            shutil.move(tmp_path / name, aside / name)
    newest = sorted(p for p in tmp_path.iterdir() if ORPHANED.match(p.name))[-1]
    assert newest == copy
    shutil.copy2(newest, tmp_path / "jobs.db")
    d.start()


def _carries_on_without_sending_twice(d, spool, simulator) -> None:
    n = len(simulator.requests("fax-status"))
    wait_for(lambda: len(simulator.requests("fax-status")) > n, 15, "job 1 polled again")
    (spool.folder("+15551230202") / "b.pdf").write_bytes(make_pdf(1, text="new"))
    [result] = spool.wait_results(1, "sent")
    assert result["job"] == 2
    assert [number for number, _ in sent_documents(simulator)] == ["+15551230888", "+15551230202"]
    assert len(simulator.requests("fax-send")) == 2


def test_deleted_database_stops_the_daemon_and_is_saved_never_a_second_fax(daemon, spool, simulator,
                                                                              tmp_path):
    d = _sending_fax(daemon, spool, simulator)
    for path in tmp_path.glob("jobs.db*"):  # rm jobs.db*
        path.unlink()
    copy = _halted(d, tmp_path, "deleted")
    assert d.terminate() == 0
    assert len(simulator.requests("fax-send")) == 1

    _restart_is_refused(d, copy)
    assert not (tmp_path / "jobs.db").exists(), "a refused start made an empty database"
    _recover_as_the_readme_says(d, tmp_path, copy)
    _carries_on_without_sending_twice(d, spool, simulator)


def test_replaced_database_stops_the_daemon_and_is_saved_never_a_second_fax(daemon, spool, simulator,
                                                                               tmp_path):
    d = _sending_fax(daemon, spool, simulator)
    other = tmp_path / "other.db"
    Store(other).close()  # an empty gateway database, as an old backup restored over it would be
    os.replace(other, tmp_path / "jobs.db")
    copy = _halted(d, tmp_path, "replaced by another file")
    # SQLite leaves the open database's write-ahead log beside the path when its file was
    # replaced; the next start would apply it to the new file.
    assert not (tmp_path / "jobs.db-wal").exists() and not (tmp_path / "jobs.db-shm").exists()
    assert d.terminate() == 0
    assert len(simulator.requests("fax-send")) == 1

    _restart_is_refused(d, copy)
    _recover_as_the_readme_says(d, tmp_path, copy)
    _carries_on_without_sending_twice(d, spool, simulator)


def test_the_stages_that_ask_at_every_turn_look_at_the_path_at_most_every_recent_seconds(tmp_path):
    """`recent` (the sending and filing loops, at every turn) answers from a look at most
    `recent` seconds old; `check` (intake, before each claim batch; the service, every
    second) always looks; once halted, both say so for ever."""
    path = tmp_path / "jobs.db"
    store = Store(path)
    try:
        lazy = DatabaseGuard(path, os.stat(path), store.backup, recent=3600.0)
        eager = DatabaseGuard(path, os.stat(path), store.backup, recent=0.0)
        assert lazy.check() is None and eager.recent() is None
        other = tmp_path / "other.db"
        Store(other).close()
        os.replace(other, path)
        assert lazy.recent() is None, "looked at less than `recent` seconds ago: not looked at again"
        assert "replaced" in (eager.recent() or ""), "`recent` looks again once its look is old"
        reason = lazy.check()
        assert reason is not None and "replaced" in reason, "`check` always looks"
        assert lazy.recent() == reason
    finally:
        store.close()


def test_intake_looks_afresh_and_the_stages_that_ask_at_every_turn_go_by_a_recent_look(service):
    """How the service wires the guard: intake (claims) always looks; the sending, filing
    and retention loops take the answer of a look at most RECENT seconds old."""
    svc = service()
    assert svc.intake.halted == svc.guard.check
    for stage in (svc.dispatcher, svc.filing, svc.retention):
        assert stage.halted == svc.guard.recent, stage.name


def test_intake_looks_before_each_claim_batch_not_only_at_the_turn(tmp_path, make_config, spool):
    """A turn may claim for up to half a second, batch after batch: a database replaced
    during it must stop the next batch, not the next turn (SPEC 4.5).  The real intake on
    a real store and folders, its turns played here; `halted` is what the service wires to
    the database guard, and says the file was replaced from its second look on, that is,
    after the turn's own look and before the claim."""
    from gateway.config import load_config
    from gateway.intake import Intake
    from gateway.metrics import Metrics
    from gateway.watcher import leases_usable

    cfg = load_config(make_config())
    store = Store(cfg.database)
    outboxes = {o.name: o for o in cfg.outboxes}
    intake = Intake(store, outboxes, Metrics(list(outboxes)), simulate=False, file_names=True, paused={})
    looks: list[str | None] = []
    armed = False

    def halted() -> str | None:
        answer = "the database file was replaced" if armed and looks else None
        if armed:
            looks.append(answer)
        return answer

    intake.halted = halted
    intake.start_watching()
    try:
        doc = spool.folder("+15551230750") / "a.pdf"
        doc.write_bytes(make_pdf(1))

        def seen_ready() -> bool:
            intake.watcher.drain()
            intake.watcher.tick()
            files = intake.watcher.files_in("main", "+15551230750")
            return "a.pdf" in files and files["a.pdf"].ready

        wait_for(seen_ready, 10, "the file settled, as intake's watcher sees it")
        if leases_usable():
            # The tick that settled it probed for a writer with a lease: an open and a close
            # of the file, whose events come after.  A turn that drained only the open would
            # see the file held open and claim nothing, which is not what this test is about.
            seen = intake.watcher.files_in("main", "+15551230750")["a.pdf"]
            closes = seen.closes
            wait_for(lambda: intake.watcher.drain() is not None and seen.closes > closes and seen.ready,
                     10, "the lease probe's own events")
        armed = True
        intake.turn()
        assert doc.exists()  # not claimed
        assert store.conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0
        assert looks[0] is None and "the database file was replaced" in looks[1:]  # the turn's, the batch's
    finally:
        intake.shutdown()
        store.close()
