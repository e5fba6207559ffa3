"""One odd item never stops the rest (SPEC 4.5): names are bytes, claims that fail are
blocked without leaving rows or folders behind, sidecars decide alone, and filing goes
on for everyone else.  Each test puts poison in some folders and checks that good files
elsewhere are still delivered, against the real daemon and the simulator."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from conftest import (
    Spool,
    job_rows,
    make_pdf,
    metric_value,
    run_cli,
    sent_documents,
    tmpfs,
    wait_for,
    without_root_file_access,
)

OTHER_USER = 4242  # owns the folders the gateway's user may not write to


def _outbox(name: str, s: Spool, **extra) -> dict:
    return {"name": name, "path": str(s.outbox), "sent": str(s.sent), "failed": str(s.failed), **extra}


@pytest.fixture
def other(tmp_path) -> Spool:
    s = Spool(tmp_path / "other")
    for d in (s.outbox, s.sent, s.failed):
        d.mkdir(parents=True)
    return s


@pytest.fixture
def two_outboxes(make_config, spool, other):
    """A configuration with the test's outbox `main` and a second one, `other`."""
    def make(**kw):
        return make_config(extra={"outboxes": [_outbox("main", spool), _outbox("other", other)]}, **kw)
    return make


def _write(folder: Path, name: bytes, data: bytes) -> bytes:
    folder.mkdir(parents=True, exist_ok=True)
    with open(os.path.join(os.fsencode(folder), name), "wb") as f:
        f.write(data)
    return data


def _blocked(config: Path) -> list[dict]:
    r = run_cli("jobs", "-c", str(config), "--blocked", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _health(d) -> tuple[int, dict]:
    r = httpx.get(d.url + "/healthz", timeout=5)
    return r.status_code, r.json()


def _good_files_still_delivered(spool: Spool, other: Spool, simulator, number: str = "+15551230590"):
    """A document in another folder and one in another outbox both go out."""
    a = _write(spool.outbox / number, b"fine.pdf", make_pdf(1, text="fine"))
    b = _write(other.outbox / number, b"other.pdf", make_pdf(1, text="other"))
    for s, name in ((spool, "fine.pdf"), (other, "other.pdf")):
        wait_for(lambda s=s, name=name: any(r["files"] == [name] for r in s.results("sent")), 20,
                 f"{name} delivered")
    docs = [d for _, d in sent_documents(simulator)]
    assert a in docs and b in docs


# -- names are bytes ---------------------------------------------------------------

def test_undecodable_name_is_sent_and_filed_under_its_own_bytes(daemon, two_outboxes, spool, other,
                                                                 simulator):
    d = daemon(two_outboxes()).start()
    data = _write(spool.outbox / "+15551230501", b"bad\xff byte.pdf", make_pdf(1, text="bad"))
    [result] = spool.wait_results(1, "sent")
    assert result["files"] == ["bad\\xff byte.pdf"]
    assert os.path.exists(os.fsencode(spool.sent / "+15551230501") + b"/bad\xff byte.pdf")
    assert os.path.exists(os.fsencode(spool.sent / "+15551230501") + b"/bad\xff byte.pdf.result.json")
    _good_files_still_delivered(spool, other, simulator)
    assert data in [doc for _, doc in sent_documents(simulator)]
    log = d.log.read_bytes()
    assert b"Traceback" not in log and b"bad\\xff byte.pdf" in log


def test_a_newline_in_a_name_cannot_forge_a_log_line(daemon, spool, simulator):
    d = daemon().start()
    forged = b"2026-12-01 00:00:00,000 INFO gateway.dispatcher: job 4711: delivered for +15559990000"
    name = b"x\n" + forged + b"\x1b[2J.pdf"
    _write(spool.outbox / "+15551230502", name, make_pdf(1))
    [result] = spool.wait_results(1, "sent")
    assert result["files"] == ["x\\n" + forged.decode() + "\\x1b[2J.pdf"]
    assert os.path.exists(os.fsencode(spool.sent / "+15551230502") + b"/" + name)
    lines = d.log.read_bytes().splitlines()
    assert not any(line.startswith(forged) for line in lines)
    assert not any(b"\x1b" in line for line in lines)


# -- claims that fail are blocked, once --------------------------------------------

def _with_trigger(d, db_path: Path, trigger: str) -> sqlite3.Connection:
    """Start the daemon once so its database exists, stop it, and add a SQLite trigger
    that makes one row's write fail for real; returns a connection to that database."""
    d.start()
    assert d.terminate() == 0
    db = sqlite3.connect(db_path)
    db.execute(trigger)
    db.commit()
    return db


def _locked_folder(path: Path) -> Path:
    """A number folder the gateway's user may not write to (created 0755 by someone else)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    os.chown(path, OTHER_USER, OTHER_USER)
    return path


def test_folder_the_gateway_may_not_write_blocks_only_its_files(daemon, two_outboxes, spool, other,
                                                                simulator, tmp_path):
    config = two_outboxes()
    d = daemon(config, prefix=without_root_file_access()).start()
    locked = _locked_folder(spool.outbox / "+15551230503")
    data = _write(locked, b"stuck.pdf", make_pdf(1, text="stuck"))
    [item] = wait_for(lambda: _blocked(config), 10, "the blocked item")
    assert item["stage"] == "claim" and item["outbox"] == "main"
    assert item["item"].endswith("+15551230503/stuck.pdf")
    assert "write permission" in item["reason"]
    _good_files_still_delivered(spool, other, simulator)
    status, body = _health(d)
    assert status == 200 and body["blocked"]["count"] == 1
    assert body["blocked"]["items"][0]["item"] == item["item"]
    assert metric_value(d.metrics(), "fax_gateway_blocked", outbox="main", stage="claim") == 1
    # A try holds its job row for the instant of the claim: wait for the row count to settle.
    wait_for(lambda: job_rows(tmp_path / "jobs.db") == 2, 10, "the two good jobs' rows only")
    import time
    time.sleep(3)  # several tries of the blocked claim, each with its backoff
    wait_for(lambda: job_rows(tmp_path / "jobs.db") == 2, 5, "no rows left behind by the tries")
    assert list(spool.private.iterdir()) == [], "a blocked claim left folders behind"
    log = d.log.read_text()
    assert log.count("blocked (claim)") == 1 and "Traceback" not in log
    os.chown(locked, 0, 0)  # the administrator fixes the folder
    results = spool.wait_results(2, "sent")
    assert sorted(r["files"][0] for r in results) == ["fine.pdf", "stuck.pdf"]
    assert data in [doc for _, doc in sent_documents(simulator)]
    wait_for(lambda: _blocked(config) == [], 5, "the blocked item to clear")
    assert metric_value(d.metrics(), "fax_gateway_blocked", outbox="main", stage="claim") == 0


def test_a_sent_folder_the_gateway_may_not_write_holds_only_that_job_and_sends_it_once(
        daemon, two_outboxes, spool, other, simulator):
    """A number folder in sent/ made by someone else (0755): the fax goes out, its filing is
    blocked with a reason naming the folder, the document waits in the private folder, the
    others are filed; once the folder is fixed it is filed, never sent again."""
    config = two_outboxes()
    d = daemon(config, prefix=without_root_file_access()).start()
    locked = _locked_folder(spool.sent / "+15551230506")
    data = _write(spool.folder("+15551230506"), b"held.pdf", make_pdf(1, text="held"))
    [item] = wait_for(lambda: _blocked(config), 20, "the blocked filing")
    assert item["stage"] == "filing" and item["outbox"] == "main"
    assert str(locked) in item["reason"] and "write permission" in item["reason"], item["reason"]
    held = [p for p in spool.private.rglob("held.pdf")]
    assert len(held) == 1 and held[0].read_bytes() == data, "not waiting in the private folder"
    assert spool.outbox_files() == []  # taken: it waits where no writer can touch it
    _good_files_still_delivered(spool, other, simulator)
    assert metric_value(d.metrics(), "fax_gateway_blocked", outbox="main", stage="filing") == 1
    assert d.log.read_text().count("blocked (filing)") == 1
    os.chown(locked, 0, 0)  # the administrator fixes the folder
    wait_for(lambda: any(r["files"] == ["held.pdf"] for r in spool.results("sent")), 20, "held.pdf filed")
    assert (locked / "held.pdf").read_bytes() == data
    assert [doc for _, doc in sent_documents(simulator)].count(data) == 1, "sent more than once"
    wait_for(lambda: _blocked(config) == [], 10, "the blocked item to clear")
    assert not list(spool.private.rglob("held.pdf"))
    assert "Traceback" not in d.log.read_text()


def test_a_sent_folder_the_gateway_may_not_even_look_into_is_named_too(daemon, spool, simulator):
    """0700 and someone else's: the free name for the job cannot even be chosen there."""
    d = daemon(prefix=without_root_file_access()).start()
    locked = _locked_folder(spool.sent / "+15551230507")
    locked.chmod(0o700)
    data = _write(spool.folder("+15551230507"), b"shut.pdf", make_pdf(1, text="shut"))
    [item] = wait_for(lambda: _blocked(d.config), 20, "the blocked filing")
    assert item["stage"] == "filing" and str(locked) in item["reason"], item["reason"]
    assert "write permission" in item["reason"]
    os.chown(locked, 0, 0)
    wait_for(lambda: any(r["files"] == ["shut.pdf"] for r in spool.results("sent")), 20, "shut.pdf filed")
    assert [doc for _, doc in sent_documents(simulator)].count(data) == 1


@pytest.mark.parametrize("code, says", [(28, "no space left on the filesystem of"),
                                         (122, "used up its disk quota"),
                                         (13, "may not write into")])
def test_a_filing_problem_names_the_folder_and_the_fix(code, says):
    from gateway.filing import _filing_problem
    folder = Path("/srv/fax/sent/+15551230506")  # missing here, so not writable
    text = _filing_problem(OSError(code, os.strerror(code), "held.pdf"), folder)
    assert says in text and "(held.pdf)" in text and text.endswith("the job is filed then")
    if code != 122:
        assert str(folder) in text


def test_a_filing_problem_from_the_private_side_does_not_blame_a_writable_folder(tmp_path):
    """EACCES from the job's folder in the private folder, the destination writable: the
    operator is not sent to fix the wrong folder."""
    from gateway.filing import _filing_problem
    text = _filing_problem(OSError(13, "Permission denied", "held.pdf"), tmp_path)
    assert "may not write" not in text and "write permission" not in text
    assert text == (f"its files could not be moved between the private folder and {tmp_path} (held.pdf): "
                    "Permission denied; fix that and it is filed")


def test_a_filing_problem_does_not_look_through_a_link_in_sent(tmp_path):
    """A number folder in sent/ that is a link (to a folder missing here, so not writable
    if followed): the check never follows it, as filing never does."""
    from gateway.filing import _filing_problem
    link = tmp_path / "+15551230506"
    link.symlink_to(tmp_path / "elsewhere")
    text = _filing_problem(OSError(13, "Permission denied", "held.pdf"), link)
    assert "may not write" not in text and text.startswith("its files could not be moved")
    text = _filing_problem(OSError(30, "Read-only file system", "held.pdf"), link)
    assert "is read-only" not in text  # tmp_path's filesystem is writable; the link's target was never asked


def test_a_take_back_blocked_by_a_locked_failed_folder_says_so(tmp_path):
    from gateway.filing import _filing_problem
    folder = tmp_path / "failed" / "+15551230506"  # missing: cannot be moved out of
    text = _filing_problem(OSError(13, "Permission denied", "held.pdf"), folder, taking_back=True)
    assert text.startswith(f"the gateway's user may not move files out of {folder}")
    assert text.endswith("the job is taken back then")


def test_claim_interrupted_then_locked_starts_and_never_rejects_falsely(daemon, spool, simulator, tmp_path):
    """A claim intent committed before a crash, in a folder that became unwritable: the
    daemon still starts, the claim is undone, and the document is sent once it can be."""
    prefix = without_root_file_access()
    d = daemon(prefix=prefix)
    d.start(crash_at="claim")
    folder = spool.folder("+15551230504")
    data = _write(folder, b"a.pdf", make_pdf(1, text="a"))
    assert d.wait_exit(30) == -9
    assert job_rows(tmp_path / "jobs.db") == 1
    _locked_folder(folder)
    d.start()
    wait_for(lambda: _blocked(d.config), 10, "the blocked item")
    assert job_rows(tmp_path / "jobs.db") == 0
    assert spool.results() == [], "a claim that could not be finished was filed as a rejection"
    os.chown(folder, 0, 0)
    [result] = spool.wait_results(1, "sent")
    assert result["state"] == "delivered"
    assert sent_documents(simulator) == [("+15551230504", data)]
    assert job_rows(tmp_path / "jobs.db") == 1


def test_path_too_long_to_claim_is_blocked_not_multiplied(daemon, two_outboxes, spool, other, simulator,
                                                          tmp_path):
    config = two_outboxes()
    d = daemon(config).start()
    deep = spool.outbox / "+15551230505"
    room = 4095 - len(os.fsencode(deep)) - len(b"/x.pdf")
    while room > 1:
        part = "d" * min(200, room - 1)
        deep, room = deep / part, room - len(part) - 1
    _write(deep, b"x.pdf", make_pdf(1))
    [item] = wait_for(lambda: _blocked(config), 10, "the blocked item")
    assert "too long" in item["reason"]
    _good_files_still_delivered(spool, other, simulator)
    import time
    time.sleep(2)
    assert job_rows(tmp_path / "jobs.db") == 2
    assert list(spool.private.iterdir()) == []
    assert "Traceback" not in d.log.read_text()


# -- sidecars decide alone, and hostile values are bad_sidecar ---------------------

@pytest.mark.parametrize(("name", "content"), [
    ("big.json", b'{"to": ' + b"9" * 5000 + b"}"),
    ("far.yaml", b"to: '+15551230506'\nsend_at: 9999-12-31T23:59:59-14:00\n"),
    ("surrogate.json", b'{"to": "+15551230506", "subject": "x\\ud800y"}'),
    ("escape.json", b'{"to": "+15551230506", "subject": "x\\u001b[2Jy"}'),
])
def test_hostile_sidecar_values_are_rejected_and_others_go_on(service, spool, simulator, name, content):
    service(outbox={"number": "+15551230507"})
    doc = name.rsplit(".", 1)[0] + ".pdf"
    (spool.outbox / name).write_bytes(content)
    (spool.outbox / doc).write_bytes(make_pdf(1))
    good = spool.folder("+15551230508") / "good.pdf"
    good.write_bytes(make_pdf(1, text="good"))
    [rejected] = spool.wait_results(1, "failed")
    assert rejected["reason_code"] == "bad_sidecar" and name in rejected["reason"]
    [sent] = spool.wait_results(1, "sent")
    assert sent["files"] == ["good.pdf"]
    assert [n for n, _ in sent_documents(simulator)] == ["+15551230508"]


def test_ambiguous_sidecar_with_files_sends_nothing(service, spool, simulator):
    service()
    folder = spool.folder("+15551230509")
    (folder / "a.yaml").write_text("to: '+15551230510'\nfiles: [c.pdf]\n")
    for n in ("a.pdf", "c.pdf"):
        (folder / n).write_bytes(make_pdf(1, text=n))
    from conftest import make_tiff
    (folder / "a.tiff").write_bytes(make_tiff(1))
    [result] = spool.wait_results(1, "failed")
    assert result["reason_code"] == "bad_sidecar"
    assert sorted(result["files"]) == ["a.pdf", "a.tiff", "a.yaml", "c.pdf"]
    assert simulator.requests("fax-send") == []
    assert spool.outbox_files() == []


def test_two_sidecars_with_files_for_one_document_send_nothing(service, spool, simulator):
    service()
    folder = spool.folder("+15551230511")
    (folder / "a.pdf.yaml").write_text("to: '+15551230512'\nfiles: [b.pdf]\n")
    (folder / "a.yaml").write_text("to: '+15551230513'\nfiles: [c.pdf]\n")
    for n in ("a.pdf", "b.pdf", "c.pdf"):
        (folder / n).write_bytes(make_pdf(1, text=n))
    [result] = spool.wait_results(1, "failed")
    assert result["reason_code"] == "bad_sidecar" and "more than one sidecar" in result["reason"]
    assert sorted(result["files"]) == ["a.pdf", "a.pdf.yaml", "a.yaml", "b.pdf", "c.pdf"]
    assert simulator.requests("fax-send") == []


# -- filing goes on for everyone ---------------------------------------------------

def test_name_too_long_for_its_result_file_gets_a_shortened_one(service, spool, simulator):
    service()
    name = "n" * 246 + ".pdf"
    (spool.folder("+15551230514") / name).write_bytes(make_pdf(1))
    [result] = spool.wait_results(1, "sent")
    assert result["files"] == [name]
    [path] = [p for p in (spool.sent / "+15551230514").iterdir() if p.name.endswith(".result.json")]
    assert len(os.fsencode(path.name)) <= 255
    assert path.name.startswith("nnnn") and path.name.endswith(f"~{result['job']}.result.json")
    assert (spool.sent / "+15551230514" / name).exists()


def test_file_in_place_of_a_sent_folder_blocks_only_its_job(daemon, spool, simulator):
    d = daemon().start()
    (spool.sent / "+15551230515").write_bytes(make_pdf(1, text="in the way"))
    (spool.folder("+15551230515") / "x.pdf").write_bytes(make_pdf(1, text="x"))
    [item] = wait_for(lambda: _blocked(d.config), 15, "the blocked filing")
    assert item["stage"] == "filing" and "where a folder is expected" in item["reason"]
    (spool.folder("+15551230516") / "y.pdf").write_bytes(make_pdf(1, text="y"))
    [result] = spool.wait_results(1, "sent")
    assert result["files"] == ["y.pdf"]
    import time
    time.sleep(3)  # several tries of the blocked filing
    log = d.log.read_text()
    assert log.count("blocked (filing)") == 1 and " ERROR " not in log, "a retry logged again"
    (spool.sent / "+15551230515").unlink()
    results = spool.wait_results(2, "sent", timeout=15)
    assert sorted(r["files"][0] for r in results) == ["x.pdf", "y.pdf"]


def test_110_jobs_that_cannot_be_filed_never_hold_up_another_outbox(daemon, two_outboxes, spool, other,
                                                                   simulator):
    d = daemon(two_outboxes()).start()
    (spool.failed / "555-1234").write_bytes(b"a file where the folder should be")
    folder = spool.folder("555-1234")  # not a valid destination: each document is rejected
    for i in range(110):
        (folder / f"r{i}.pdf").write_bytes(make_pdf(1))
    wait_for(lambda: metric_value(d.metrics(), "fax_gateway_blocked", outbox="main", stage="filing") == 110,
             60, "110 blocked filings")
    (other.folder("+15551230517") / "z.pdf").write_bytes(make_pdf(1, text="z"))
    [result] = other.wait_results(1, "sent", timeout=15)
    assert result["files"] == ["z.pdf"]


def test_jobs_of_an_outbox_removed_from_the_configuration_are_filed_where_it_said(
        daemon, make_config, two_outboxes, spool, other, simulator):
    d = daemon(two_outboxes()).start()
    folder = spool.folder("+15551230888")  # the simulator keeps these sending until canceled
    for i in range(3):
        (folder / f"s{i}.pdf").write_bytes(make_pdf(1, text=str(i)))
    wait_for(lambda: len(simulator.requests("fax-send")) == 3, 20, "three faxes sending")
    d.terminate()
    only_other = make_config(extra={"outboxes": [_outbox("other", other)]}, name="only-other.yaml")
    d2 = daemon(only_other).start()
    for job in (1, 2, 3):
        r = run_cli("cancel", "-c", str(only_other), str(job))
        assert r.returncode == 0, r.stderr
    results = spool.wait_results(3, "failed", timeout=20)
    assert all(r["state"] == "canceled" and r["outbox"] == "main" for r in results)
    assert sorted(p.name for p in (spool.failed / "+15551230888").glob("*.pdf")) == \
        ["s0.pdf", "s1.pdf", "s2.pdf"]
    assert d2.healthy()


def test_a_burst_in_one_folder_does_not_starve_other_folders_or_outboxes(daemon, two_outboxes, spool,
                                                                        other, simulator, tmp_path):
    """Documents dropped into another folder and another outbox just after a burst began
    are claimed while most of the burst still waits in its folder.  (Counted in files left,
    not in job numbers: a faster intake claims more of the burst in the same settle time.
    4,000: with its threads on one CPU, intake claimed 2,000 rejections fast enough that a
    third of them was not always left by the time the others had settled and were taken.)"""
    d = daemon(two_outboxes()).start()
    burst = spool.folder("555-1234")  # not a valid number: each is rejected, nothing is sent
    data = make_pdf(1)
    n = 4000
    for i in range(n):
        (burst / f"b{i:04d}.pdf").write_bytes(data)
    wait_for(lambda: len(os.listdir(burst)) < n, 20, "the burst to start being claimed")
    side_folder, elsewhere_folder = spool.outbox / "+15551230519", other.outbox / "+15551230519"
    _write(side_folder, b"side.pdf", make_pdf(1, text="side"))
    _write(elsewhere_folder, b"elsewhere.pdf", make_pdf(1, text="elsewhere"))
    samples = []

    def both_claimed() -> bool:
        samples.append(_health(d)[0])
        return not os.listdir(side_folder) and not os.listdir(elsewhere_folder)
    wait_for(both_claimed, 60, "the other folder's and the other outbox's documents claimed")
    left = len(os.listdir(burst))
    assert left > n // 3, f"the others waited for most of the burst ({left} of {n} left)"
    wait_for(lambda: other.results("sent") and any(r["files"] == ["side.pdf"] for r in spool.results("sent")),
             60, "both sent")
    wait_for(lambda: not os.listdir(burst), 60, "the whole burst claimed")
    assert job_rows(tmp_path / "jobs.db") == n + 2
    assert set(samples) == {200}


def test_page_bombs_are_rejected_while_another_outbox_delivers(daemon, two_outboxes, spool, other,
                                                              simulator):
    from test_doctypes import pdf_repeating_one_page, tiff_of_tiny_frames
    daemon(two_outboxes()).start()
    folder = spool.folder("+15551230520")
    (folder / "frames.tif").write_bytes(tiff_of_tiny_frames(190_000))
    (folder / "pages.pdf").write_bytes(pdf_repeating_one_page(99_999))
    (other.folder("+15551230521") / "meanwhile.pdf").write_bytes(make_pdf(1))
    rejected = spool.wait_results(2, "failed", timeout=30)
    assert {r["reason_code"] for r in rejected} == {"too_large"}
    assert all("max_pages = 100" in r["reason"] for r in rejected)
    [sent] = other.wait_results(1, "sent", timeout=30)
    assert sent["files"] == ["meanwhile.pdf"]
    assert [n for n, _ in sent_documents(simulator)] == ["+15551230521"]


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB filesystem of its own, for a database whose disk fills up."""
    with tmpfs(tmp_path / "db", "2m") as path:
        yield path


def test_a_full_database_disk_logs_a_few_lines_not_a_flood(daemon, make_config, spool, simulator,
                                                           small_disk):
    d = daemon(make_config(extra={"database": str(small_disk / "jobs.db")})).start()
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: closing it has nothing left to write
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    folder = spool.folder("+15551230522")
    for i in range(5):
        (folder / f"f{i}.pdf").write_bytes(make_pdf(1, text=str(i)))
    wait_for(lambda: _health(d)[0] == 503, 15, "healthz to report the database")
    assert any("database" in r for r in _health(d)[1]["reasons"])
    before = len(d.log.read_text().splitlines())
    import time
    time.sleep(10)  # the measurement itself: how much the log grows while the disk stays full
    grown = len(d.log.read_text().splitlines()) - before
    assert grown <= 6, d.log.read_text()
    assert "Traceback" not in d.log.read_text()
    filler.unlink()
    results = spool.wait_results(5, "sent", timeout=30)
    assert sorted(r["files"][0] for r in results) == [f"f{i}.pdf" for i in range(5)]


def test_a_job_whose_filing_write_always_fails_is_blocked_alone(daemon, spool, simulator, tmp_path):
    """Filing commits a batch of jobs at once; if one job's write keeps failing (here a
    real SQLite error, from a trigger on that one row), the others of its batch are still
    filed and the failing one is a blocked item, filed once the cause is gone."""
    d = daemon()
    db = _with_trigger(d, tmp_path / "jobs.db",
                       "CREATE TRIGGER refuse_job_2 BEFORE UPDATE OF phase ON jobs WHEN NEW.id = 2"
                       " AND NEW.phase = 'filing' BEGIN SELECT RAISE(ABORT, 'refused for job 2'); END")
    names = [f"f{i}.pdf" for i in range(3)]
    folder = spool.folder("+15551230520")
    for n in names:  # there before the start: claimed, sent and filed together
        (folder / n).write_bytes(make_pdf(1, text=n))
    d.start()
    results = spool.wait_results(2, "sent")
    assert sorted(r["job"] for r in results) == [1, 3]
    [item] = wait_for(lambda: _blocked(d.config), 10, "the blocked filing")
    assert item["stage"] == "filing" and "job 2" in item["item"]
    db.execute("DROP TRIGGER refuse_job_2")
    db.commit()
    db.close()
    wait_for(lambda: len(spool.results("sent")) == 3, 30, "job 2 filed once the cause is gone")
    assert sorted(f for r in spool.results("sent") for f in r["files"]) == names


def test_a_fax_whose_submit_intent_always_fails_holds_up_no_other(daemon, spool, simulator, tmp_path):
    """The sending loop commits a round's intents at once; if one recipient's intent keeps
    failing (a real SQLite error, from a trigger on that one row), the others of its round
    are sent, and the failing one waits a minute each time, logged once, never sent."""
    d = daemon(api={"max_in_flight": 4})
    db = _with_trigger(d, tmp_path / "jobs.db",
                       "CREATE TRIGGER refuse_recipient_2 BEFORE UPDATE OF state ON recipients"
                       " WHEN NEW.id = 2 AND NEW.state = 'submitting'"
                       " BEGIN SELECT RAISE(ABORT, 'refused for recipient 2'); END")
    folder = spool.folder("+15551230523")
    names = [f"s{i}.pdf" for i in range(4)]
    for n in names:  # there before the start: claimed together, submitted in one round
        (folder / n).write_bytes(make_pdf(1, text=n))
    d.start()
    results = spool.wait_results(3, "sent", timeout=30)
    assert sorted(r["job"] for r in results) == [1, 3, 4]
    assert len(simulator.requests("fax-send")) == 3
    state, next_at = db.execute("SELECT state, next_action_at FROM recipients WHERE id=2").fetchone()
    assert state == "queued" and next_at > time.time() + 30  # looked at again in a minute
    log = d.log.read_text()
    assert log.count("refused for recipient 2") == 1, log
    assert "Traceback" not in log
    db.close()
