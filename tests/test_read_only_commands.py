"""SPEC 2: `jobs`, `show` and `check-config` never trip.  They never read the API key (the
service's credential exists only while it runs), and they work for a user who may only
read the configuration and the database: with the daemon running, stopped and killed."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import REPO, make_pdf, run_cli, wait_for

CREDENTIAL = "/run/credentials/fax-gateway.service/ifax-api-key"  # the README's production setting
NOBODY = 65534


def without_key(cfg: Path, target: Path) -> Path:
    """The same configuration with api.key_file set to a credential that does not exist."""
    data = yaml.safe_load(cfg.read_text())
    data["api"].pop("key", None)
    data["api"]["key_file"] = CREDENTIAL
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    target.chmod(0o644)
    return target


def test_jobs_show_and_check_config_never_read_the_key_file(daemon, spool, make_config):
    assert not Path(CREDENTIAL).exists()
    cfg = make_config()
    d = daemon(cfg).start()
    (spool.folder("+15551230401") / "k.pdf").write_bytes(make_pdf(1))
    [result] = spool.wait_results(1, "sent")
    reader = without_key(cfg, cfg.with_name("reader.yaml"))
    for args in (("jobs",), ("jobs", "--blocked"), ("show", str(result["job"])), ("check-config",)):
        p = run_cli(*args, "-c", str(reader), env={"IFAX_API_KEY": ""})
        assert p.returncode == 0, (args, p.stderr)
        assert "ifax-api-key" not in p.stderr or args == ("check-config",), p.stderr
    d.terminate()


def test_run_reads_the_key_file_and_names_it_when_it_is_missing(make_config, tmp_path):
    cfg = without_key(make_config(), tmp_path / "nokey.yaml")
    p = run_cli("run", "-c", str(cfg), timeout=20)
    assert p.returncode == 2
    assert CREDENTIAL in p.stderr and "api.key_file" in p.stderr and "Traceback" not in p.stderr


def test_run_simulate_needs_no_key_file(daemon, spool, make_config, tmp_path):
    cfg = without_key(make_config(), tmp_path / "nokey.yaml")
    d = daemon(cfg, args=("--simulate",)).start()
    (spool.folder("+15551230402") / "s.pdf").write_bytes(make_pdf(1))
    [result] = spool.wait_results(1, "sent")
    assert result["simulated"] is True
    assert d.terminate() == 0


# --- a user who may only read ---------------------------------------------------------------

@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder every user may enter (pytest's own tmp_path is root's, mode 0700)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run the command as another user")
    probe = as_nobody("--version")
    if probe.returncode != 0:  # a checkout or virtual environment in a folder only root may enter
        pytest.skip("this Python environment cannot be run by another user (.ci/run makes its own "
                    f"readable): {probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else ''}")
    path = Path(tempfile.mkdtemp(prefix="fax-gateway-ro-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_nobody(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "IFAX_API_KEY": ""}, timeout=30)


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_uid, p.stat().st_size) for p in folder.iterdir()}


def read_as_nobody(reader: Path, job: int) -> None:
    """The reader sees the job, says nothing else, and leaves no file behind."""
    db_dir = Path(yaml.safe_load(reader.read_text())["database"]).parent
    before = listing(db_dir)
    p = as_nobody("jobs", "-c", str(reader), "--json")
    assert p.returncode == 0, p.stderr
    assert [j["job"] for j in json.loads(p.stdout)] == [job]
    p = as_nobody("show", "-c", str(reader), str(job))
    assert p.returncode == 0 and "delivered" in p.stdout, p.stderr
    p = as_nobody("jobs", "-c", str(reader), "--blocked")
    assert p.returncode == 0 and "nothing is blocked" in p.stdout, p.stderr
    p = as_nobody("check-config", "-c", str(reader))
    assert p.returncode == 0, p.stderr
    p = as_nobody("show", "-c", str(reader), str(job + 1))
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    p = as_nobody("cancel", "-c", str(reader), str(job))  # it writes a request: not for this user
    assert p.returncode == 1 and "may not write" in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert listing(db_dir) == before


def _phases(db: Path) -> list[tuple[str]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT phase FROM jobs").fetchall()
    finally:
        conn.close()


def test_a_user_who_may_only_read_lists_jobs_with_the_daemon_running_stopped_and_killed(
        daemon, spool, make_config, shared_dir):
    cfg = make_config(extra={"database": str(shared_dir / "jobs.db")})
    reader = without_key(cfg, shared_dir / "config.yaml")
    d = daemon(cfg).start()
    (spool.folder("+15551230403") / "r.pdf").write_bytes(make_pdf(1))
    [result] = spool.wait_results(1, "sent")
    db = shared_dir / "jobs.db"
    assert db.stat().st_mode & 0o777 == 0o644
    # The result file is written before the filing is committed: the daemon is done with the
    # job (and writes nothing more) once its row says filed.
    wait_for(lambda: _phases(db) == [("filed",)], 10, "the filing committed")

    read_as_nobody(reader, result["job"])  # running: mode=ro, through the daemon's -wal and -shm

    assert d.terminate() == 0
    assert not Path(f"{db}-wal").exists()
    read_as_nobody(reader, result["job"])  # stopped: mode=ro cannot make a -wal; immutable=1 can read

    d.start()
    d.kill()
    assert Path(f"{db}-wal").exists()
    read_as_nobody(reader, result["job"])  # killed: mode=ro reads the -wal it left


def test_a_reader_without_access_gets_one_sentence(daemon, spool, make_config, shared_dir):
    cfg = make_config(extra={"database": str(shared_dir / "jobs.db")})
    reader = without_key(cfg, shared_dir / "config.yaml")
    d = daemon(cfg).start()
    assert d.terminate() == 0
    (shared_dir / "jobs.db").chmod(0o600)
    p = as_nobody("jobs", "-c", str(reader))
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "jobs.db" in p.stderr
    private = shared_dir / "private"  # a database in a folder this user may not even search
    private.mkdir(mode=0o700)
    os.rename(shared_dir / "jobs.db", private / "jobs.db")
    data = yaml.safe_load(reader.read_text())
    data["database"] = str(private / "jobs.db")
    reader.write_text(yaml.safe_dump(data))
    for args in (("jobs",), ("show", "1")):
        p = as_nobody(*args, "-c", str(reader))
        assert p.returncode == 1 and "Permission denied" in p.stderr and "no jobs" not in p.stdout, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1
