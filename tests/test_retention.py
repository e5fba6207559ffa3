"""Retention (SPEC 3): what the gateway filed goes once it is old enough, and only that;
old jobs with no file left leave the database, which shrinks; ids never repeat; an
online backup while the daemon runs.

Tests cannot wait days: the jobs are made by the real daemon, then their `completed_at`
is moved ten days back in the database while it is stopped, and the daemon is started
again with limits of a day."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest
from conftest import job_rows, make_pdf, metric_value, run_cli, wait_for

DAY = 86400
RETAIN = {"sent": "1d", "failed": "1d", "jobs": "1d"}


def _drop(spool, number: str, name: str) -> bytes:
    data = make_pdf(1, text=f"{number}/{name}")
    (spool.folder(number) / name).write_bytes(data)
    return data


def _age(db: Path, days: float = 10) -> None:
    """As if every job had completed `days` ago."""
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE jobs SET completed_at = completed_at - ?", (days * DAY,))
    conn.close()


def _summaries(d) -> list[str]:
    return [line for line in d.log.read_text().splitlines() if "retention: deleted" in line]


def _wait_run(d, n: int = 1) -> str:
    return wait_for(lambda: len(_summaries(d)) >= n and _summaries(d)[n - 1], 30, "retention's summary line")


def test_retention_deletes_only_what_the_gateway_filed_and_is_unchanged(daemon, spool, make_config, tmp_path):
    d = daemon(defaults={"resend": {"max": 0}})
    d.start()
    _drop(spool, "+15551230001", "a.pdf")
    _drop(spool, "+15551230001", "b.pdf")
    _drop(spool, "+15551230002", "d.pdf")
    _drop(spool, "+15551230003", "e.pdf")
    _drop(spool, "+15551230004", "g.pdf")
    _drop(spool, "+15551230666", "f.pdf")  # fails: filed in failed/
    spool.wait_results(6)
    assert d.terminate() == 0
    _age(tmp_path / "jobs.db")

    sent, failed = spool.sent, spool.failed
    outside = tmp_path / "outside"
    outside.mkdir()
    # Never filed by the gateway: they survive, whatever their age or name.
    (sent / "+15551230001" / "mine.pdf").write_bytes(b"someone else's")
    (sent / "+15551230001" / "mine.pdf.result.json").write_text(json.dumps({"job": 1, "files": ["a.pdf"]}))
    (failed / "+15551230666" / "other.pdf").write_bytes(b"not the gateway's")
    os.utime(sent / "+15551230001" / "mine.pdf", (0, 0))
    # Filed, then changed: it stays, and so does its result file, which explains it.
    (sent / "+15551230001" / "b.pdf").write_bytes(b"edited by hand")
    # A folder swapped for a link to a copy elsewhere: nothing is deleted through it.
    (sent / "+15551230002").rename(outside / "+15551230002")
    (sent / "+15551230002").symlink_to(outside / "+15551230002")
    # A filed document replaced by a link to an identical copy: the link and the copy stay.
    twin = outside / "e.pdf"
    (sent / "+15551230003" / "e.pdf").rename(twin)
    (sent / "+15551230003" / "e.pdf").symlink_to(twin)

    d2 = daemon(make_config(defaults={"resend": {"max": 0}}, extra={"retention": RETAIN}, name="c2.yaml"))
    d2.start()
    summary = _wait_run(d2)
    assert "deleted 4 file(s) from sent/, 2 from failed/ and 3 finished job(s)" in summary, summary

    left = sorted(str(p.relative_to(spool.root)) for p in spool.root.rglob("*")
                  if not p.is_dir() or p.is_symlink())
    assert left == [
        "failed/+15551230666/other.pdf",
        "sent/+15551230001/b.pdf",
        "sent/+15551230001/b.pdf.result.json",
        "sent/+15551230001/mine.pdf",
        "sent/+15551230001/mine.pdf.result.json",
        "sent/+15551230002",
        "sent/+15551230003/e.pdf",
        "sent/+15551230003/e.pdf.result.json",
    ]
    assert sorted(p.name for p in (outside / "+15551230002").iterdir()) == ["d.pdf", "d.pdf.result.json"]
    assert twin.exists()
    assert not (sent / "+15551230004").exists(), "the folder the gateway made and emptied is removed"
    assert sent.is_dir() and failed.is_dir()
    # The jobs whose files are gone left the database; the others stay.
    assert job_rows(tmp_path / "jobs.db") == 3
    text = d2.metrics()
    assert metric_value(text, "fax_gateway_retention_deleted_total", what="sent") == 4
    assert metric_value(text, "fax_gateway_retention_deleted_total", what="failed") == 2
    assert metric_value(text, "fax_gateway_retention_deleted_total", what="jobs") == 3
    assert len(_summaries(d2)) == 1, "one summary line per run"


def test_retention_series_exist_at_zero_and_nothing_young_is_deleted(daemon, spool):
    d = daemon(extra={"retention": RETAIN})
    d.start()
    _drop(spool, "+15551230011", "young.pdf")
    [result] = spool.wait_results(1, "sent")
    text = d.metrics()
    for what in ("sent", "failed", "jobs"):
        assert metric_value(text, "fax_gateway_retention_deleted_total", what=what) == 0
    assert result["_path"].exists() and (spool.sent / "+15551230011" / "young.pdf").exists()


@pytest.mark.parametrize("point", ["retention", "retention_jobs"])
def test_sigkill_during_a_retention_run_is_finished_after_restart(daemon, spool, make_config, tmp_path,
                                                                  point):
    d = daemon()
    d.start()
    for i in range(4):
        _drop(spool, "+15551230021", f"doc{i}.pdf")
    spool.wait_results(4, "sent")
    assert d.terminate() == 0
    _age(tmp_path / "jobs.db")
    (spool.sent / "+15551230021" / "keep.pdf").write_bytes(b"not the gateway's")

    cfg = make_config(extra={"retention": RETAIN}, name="c2.yaml")
    d2 = daemon(cfg)
    d2.start(crash_at=point, wait_healthy=False)
    assert d2.wait_exit(timeout=30) == -9, "the daemon did not reach the crash point"
    filed = sorted(p.name for p in (spool.sent / "+15551230021").iterdir())
    if point == "retention":  # killed right after the first file it deleted
        assert 0 < 9 - len(filed) < 8, f"the kill was not in the middle of the run: {filed}"
    else:  # killed after the jobs left the database, before the file was shrunk
        assert filed == ["keep.pdf"] and job_rows(tmp_path / "jobs.db") == 0
    d2.start()
    _wait_run(d2)
    assert sorted(p.name for p in (spool.sent / "+15551230021").iterdir()) == ["keep.pdf"]
    assert job_rows(tmp_path / "jobs.db") == 0
    conn = sqlite3.connect(tmp_path / "jobs.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    _drop(spool, "+15551230022", "after.pdf")
    [result] = spool.wait_results(1, "sent")
    assert result["job"] == 5, "a job id was given a second time"


def _seed_finished_jobs(db: Path, sent: Path, n: int) -> None:
    """`n` finished jobs filed in sent/ long ago whose files are gone, with bulky events,
    as a year of history would leave them."""
    now = time.time()
    conn = sqlite3.connect(db)
    with conn:
        for _ in range(n):
            cur = conn.execute(
                "INSERT INTO jobs(outbox, outbox_path, state, phase, simulated, rel_dir, sources, documents,"
                " primary_name, options, sha256, created_at, completed_at, filed_to, filed_root,"
                " filed_suffix, private_root) VALUES ('main', ?, 'delivered', 'filed', 0, '+15551230031',"
                " ?, '[\"x.pdf\"]', 'x.pdf', '{}', '[\"00\"]', ?, ?, 'sent', ?, 0, ?)",
                (str(sent.parent / "outbox"), json.dumps([{"name": "x.pdf", "ino": 1, "size": 1,
                                                           "mtime_ns": 1}]),
                 now - 20 * DAY, now - 20 * DAY, str(sent), str(sent.parent / ".fax-gateway-main")))
            for _ in range(4):
                conn.execute("INSERT INTO events(job_id, at, state, detail) VALUES (?,?,?,?)",
                             (cur.lastrowid, now, "sending", "x" * 1000))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def test_job_ids_never_repeat_after_retention_emptied_the_table_and_the_file_shrinks(
        daemon, spool, make_config, tmp_path):
    db = tmp_path / "jobs.db"
    d = daemon()
    d.start()
    assert d.terminate() == 0
    _seed_finished_jobs(db, spool.sent, 3000)
    assert job_rows(db) == 3000
    before = db.stat().st_size

    d2 = daemon(make_config(extra={"retention": {"jobs": "1d"}}, name="c2.yaml"))
    d2.start()
    assert "and 3000 finished job(s) from the database" in _wait_run(d2)
    assert job_rows(db) == 0
    wait_for(lambda: db.stat().st_size < before / 4, 30, "the database file to shrink")
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM recipients").fetchone()[0] == 0
    conn.close()

    _drop(spool, "+15551230032", "new.pdf")
    [result] = spool.wait_results(1, "sent")
    assert result["job"] == 3001, "a job id was given a second time"


def test_an_older_database_is_switched_to_incremental_vacuum(tmp_path):
    from gateway.store import Store
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE filler(x)")
    conn.close()
    store = Store(db)
    try:
        assert store.shrinks()
    finally:
        store.close()


def test_backup_while_the_daemon_runs_holds_the_jobs_and_never_reads_the_key(daemon, spool, make_config,
                                                                             tmp_path):
    d = daemon()
    d.start()
    _drop(spool, "+15551230041", "a.pdf")
    _drop(spool, "+15551230042", "b.pdf")
    spool.wait_results(2, "sent")
    # The operator's configuration names the service's credential, which they cannot read.
    operator = make_config(api={"key": None, "key_file": str(tmp_path / "no-such-credential")},
                           name="operator.yaml")
    target = tmp_path / "backups" / "jobs-copy.db"
    target.parent.mkdir()
    proc = run_cli("backup", "-c", str(operator), str(target))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert not Path(str(target) + "-wal").exists()
    conn = sqlite3.connect(f"file:{target}?mode=ro", uri=True)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT COUNT(*) FROM jobs WHERE state='delivered'").fetchone()[0] == 2
    conn.close()
    assert [p.name for p in target.parent.iterdir()] == ["jobs-copy.db"]
    # Again over the same file: replaced whole.
    _drop(spool, "+15551230043", "c.pdf")
    spool.wait_results(3, "sent")
    assert run_cli("backup", "-c", str(operator), str(target)).returncode == 0
    assert job_rows(target) == 3
    assert d.healthy()


def test_backup_refuses_a_folder_and_a_missing_database(make_config, tmp_path):
    cfg = make_config()
    proc = run_cli("backup", "-c", str(cfg), str(tmp_path / "copy.db"))
    assert proc.returncode == 1 and "does not exist yet" in proc.stderr
    assert "Traceback" not in proc.stderr
    sqlite3.connect(tmp_path / "jobs.db").execute("CREATE TABLE t(x)")
    proc = run_cli("backup", "-c", str(cfg), str(tmp_path))
    assert proc.returncode == 2 and "is a folder" in proc.stderr
    proc = run_cli("backup", "-c", str(cfg), str(tmp_path / "jobs.db"))
    assert proc.returncode == 2 and "the database itself" in proc.stderr
    proc = run_cli("backup", "-c", str(cfg), str(tmp_path / "no-such-folder" / "copy.db"))
    assert proc.returncode == 1 and "cannot write the copy" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_resend_of_a_job_whose_files_retention_deleted_says_they_are_gone(daemon, spool, make_config,
                                                                           tmp_path):
    d = daemon(defaults={"resend": {"max": 0}})
    d.start()
    _drop(spool, "+15551230666", "f.pdf")
    [result] = spool.wait_results(1, "failed")
    assert d.terminate() == 0
    _age(tmp_path / "jobs.db")
    cfg = make_config(defaults={"resend": {"max": 0}}, extra={"retention": {"failed": "1d"}}, name="c2.yaml")
    d2 = daemon(cfg)
    d2.start()
    assert "2 from failed/" in _wait_run(d2)
    proc = run_cli("resend", "-c", str(cfg), str(result["job"]))
    assert proc.returncode == 1 and "gone" in proc.stderr, proc.stderr
    assert list(spool.failed.rglob("*")) == []
