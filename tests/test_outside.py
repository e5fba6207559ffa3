"""Nothing outside the outboxes is ever read, sent, moved or written (SPEC 4.4, 4.5): the
private folder lies out of the writers' reach, no link is followed, and a folder swapped
or planted under the gateway makes the item blocked or rejected, never a read outside.

Each test keeps a secret outside every outbox and checks that it is never faxed, moved
or overwritten."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import httpx
import pytest
from conftest import make_pdf, run_cli, sent_documents, tmpfs, wait_for


@pytest.fixture
def secret(tmp_path) -> Path:
    """A folder outside every outbox holding a document nobody may fax."""
    folder = tmp_path / "secret"
    folder.mkdir()
    (folder / "scan.pdf").write_bytes(make_pdf(1, text="SECRET"))
    return folder


def _untouched(secret: Path, simulator) -> None:
    data = (secret / "scan.pdf").read_bytes()
    assert b"SECRET" in data, "the secret was changed"
    assert [p.name for p in secret.iterdir()] == ["scan.pdf"], "something was written beside the secret"
    assert all(doc != data for _, doc in sent_documents(simulator)), "the secret was faxed"


def _health(d) -> tuple[int, dict]:
    r = httpx.get(d.url + "/healthz", timeout=5)
    return r.status_code, r.json()


def test_private_folder_lies_beside_the_outbox_out_of_the_watched_tree(daemon, spool, simulator):
    d = daemon().start()
    assert spool.private.is_dir() and (spool.private.stat().st_mode & 0o777) == 0o700
    (spool.folder("+15551230701") / "a.pdf").write_bytes(make_pdf(1))
    spool.wait_results(1, "sent")
    assert not (spool.outbox / ".fax-gateway").exists()
    # The job's folder is removed once the filed files are synced, just after the result
    # file appears in sent/.
    wait_for(lambda: list(spool.private.iterdir()) == [], 10, "the job's folder removed")
    assert "Callback" not in d.log.read_text()  # its folders are never watched


def test_a_planted_old_style_private_folder_full_of_links_is_never_read(daemon, spool, simulator, secret):
    """A writer plants OUTBOX/.fax-gateway/<n>/ with links to a folder outside: nothing in it
    is used, whatever job ids the gateway hands out next."""
    for n in range(1, 6):
        planted = spool.outbox / ".fax-gateway" / str(n) / "+15551230702"
        planted.mkdir(parents=True)
        (planted / "scan.pdf").symlink_to(secret / "scan.pdf")
    daemon().start()
    data = make_pdf(1, text="real")
    (spool.folder("+15551230702") / "scan.pdf").write_bytes(data)
    [result] = spool.wait_results(1, "sent")
    assert sent_documents(simulator) == [("+15551230702", data)]
    assert result["job"] == 1 and spool.results("failed") == [], "a planted folder was used for a job"
    assert not any(p.is_symlink() for p in spool.failed.rglob("*"))
    _untouched(secret, simulator)


def test_a_private_folder_inside_the_outbox_that_is_replaced_pauses_the_outbox(daemon, spool, simulator,
                                                                                 secret):
    inside = spool.outbox / ".private"
    d = daemon(outbox={"private": str(inside)}).start()
    (spool.folder("+15551230703") / "first.pdf").write_bytes(make_pdf(1))
    spool.wait_results(1, "sent")
    inside.rename(spool.outbox / ".moved-away")  # a writer replaces it with one of their own
    inside.mkdir()
    (inside / "9999").mkdir()
    (inside / "9999" / "scan.pdf").symlink_to(secret / "scan.pdf")
    wait_for(lambda: _health(d)[0] == 503, 10, "the outbox to pause")
    assert any("private folder" in r and "replaced" in r for r in _health(d)[1]["reasons"])
    (spool.folder("+15551230703") / "second.pdf").write_bytes(make_pdf(1, text="second"))
    import time
    time.sleep(2)  # the outbox stays paused: nothing is claimed into the impostor
    assert len(sent_documents(simulator)) == 1
    assert [p.name for p in (inside / "9999").iterdir()] == ["scan.pdf"]
    _untouched(secret, simulator)


def test_a_number_folder_swapped_for_a_link_is_never_followed(daemon, spool, simulator, secret):
    d = daemon(defaults={"settle": "3s"}).start()
    folder = spool.folder("+15551230704")
    (folder / "scan.pdf").write_bytes(make_pdf(1, text="dropped"))
    wait_for(lambda: "fax_gateway_files_waiting{outbox=\"main\"} 1.0" in d.metrics(), 5, "the file seen")
    folder.rename(spool.root / "elsewhere")  # before it settles, the folder becomes a link out
    folder.symlink_to(secret, target_is_directory=True)
    r = wait_for(lambda: _blocked_or_rejected(d, spool), 20, "the swapped folder to be refused")
    assert r
    _untouched(secret, simulator)
    assert (secret / "scan.pdf").exists()


def _blocked_or_rejected(d, spool) -> bool:
    out = run_cli("jobs", "-c", str(d.config), "--blocked", "--json")
    return "link where a folder is expected" in out.stdout or bool(spool.results("failed"))


def test_a_linked_number_folder_is_rejected_and_never_filed_as_a_link(daemon, spool, simulator, secret):
    """A link `+15550001666 -> outside` is unsafe_file (it is not followed), removed rather than
    filed, and a later job from a real folder of that name is filed inside failed/."""
    d = daemon(defaults={"resend": {"max": 0}}).start()
    (spool.outbox / "+15551230666").symlink_to(secret, target_is_directory=True)
    [rejected] = spool.wait_results(1, "failed")
    assert rejected["reason_code"] == "unsafe_file"
    assert str(secret) in rejected["reason"]
    assert not os.path.lexists(spool.failed / "+15551230666")
    real = spool.folder("+15551230666")  # the simulator fails every fax to ...666
    (real / "fails.pdf").write_bytes(make_pdf(1, text="fails"))
    wait_for(lambda: len(spool.results("failed")) == 2, 20, "the failed fax filed")
    assert (spool.failed / "+15551230666").is_dir() and not (spool.failed / "+15551230666").is_symlink()
    assert (spool.failed / "+15551230666" / "fails.pdf").exists()
    _untouched(secret, simulator)
    assert d.healthy()


def test_a_link_planted_in_failed_blocks_filing_and_is_never_written_through(daemon, spool, simulator,
                                                                             secret):
    d = daemon(defaults={"resend": {"max": 0}}).start()
    (spool.failed / "+15551230666").symlink_to(secret, target_is_directory=True)
    (spool.folder("+15551230666") / "fails.pdf").write_bytes(make_pdf(1, text="fails"))
    out = wait_for(lambda: run_cli("jobs", "-c", str(d.config), "--blocked", "--json").stdout.count("filing"),
                   20, "the blocked filing")
    assert out
    _untouched(secret, simulator)
    (spool.failed / "+15551230666").unlink()
    [result] = spool.wait_results(1, "failed")
    assert result["files"] == ["fails.pdf"]
    _untouched(secret, simulator)


def test_a_polled_outbox_never_descends_into_linked_folders(daemon, spool, simulator, secret):
    (spool.outbox / "root").symlink_to("/", target_is_directory=True)
    (spool.outbox / "loop").symlink_to(".", target_is_directory=True)
    (spool.outbox / "+15551230705").symlink_to(secret, target_is_directory=True)
    daemon(outbox={"polling": True}).start()
    data = make_pdf(1, text="polled")
    (spool.folder("+15551230706") / "p.pdf").write_bytes(data)
    results = spool.wait_results(4, timeout=30)
    assert sorted(r["reason_code"] or r["state"] for r in results) == [
        "delivered", "unsafe_file", "unsafe_file", "unsafe_file"]
    assert sent_documents(simulator) == [("+15551230706", data)]
    _untouched(secret, simulator)


def test_private_folder_on_another_filesystem_pauses_the_outbox_naming_the_fix(daemon, spool, simulator,
                                                                               tmp_path):
    with tmpfs(tmp_path / "other-fs", "1m") as other_fs:
        d = daemon(outbox={"private": str(other_fs / "private")})
        d.start(wait_healthy=False)
        wait_for(lambda: _reasons(d), 20, "the reason")
        [reason] = _reasons(d)
        assert "another filesystem" in reason and "outboxes[].private" in reason
        (spool.folder("+15551230707") / "waits.pdf").write_bytes(make_pdf(1))
        assert (spool.outbox / "+15551230707" / "waits.pdf").exists()
        d.kill()


def _reasons(d) -> list[str]:
    try:
        status, body = _health(d)
    except httpx.HTTPError:
        return []
    return [r for r in body.get("reasons", []) if "private folder" in r] if status == 503 else []


@pytest.mark.parametrize(("where", "message"), [
    ("sent", "outside every sent and failed folder"),
    ("other outbox", "another outbox would take its files"),
])
def test_check_config_refuses_a_private_folder_where_it_cannot_be(make_config, spool, tmp_path, where,
                                                                  message):
    private = spool.sent / "inside" if where == "sent" else tmp_path / "other-outbox" / "p"
    extra = {"outboxes": [
        {"name": "main", "path": str(spool.outbox), "sent": str(spool.sent), "failed": str(spool.failed),
         "private": str(private)},
        {"name": "two", "path": str(tmp_path / "other-outbox"), "sent": str(tmp_path / "s2"),
         "failed": str(tmp_path / "f2")},
    ]}
    r = run_cli("check-config", "-c", str(make_config(extra=extra)))
    assert r.returncode == 2 and message in r.stderr and "private" in r.stderr


def test_check_config_refuses_a_private_folder_shared_by_two_outboxes(make_config, spool, tmp_path):
    shared = str(tmp_path / "shared-private")
    extra = {"outboxes": [
        {"name": "main", "path": str(spool.outbox), "sent": str(spool.sent), "failed": str(spool.failed),
         "private": shared},
        {"name": "two", "path": str(tmp_path / "o2"), "sent": str(tmp_path / "s2"),
         "failed": str(tmp_path / "f2"), "private": shared},
    ]}
    r = run_cli("check-config", "-c", str(make_config(extra=extra)))
    assert r.returncode == 2 and "each outbox needs its own" in r.stderr


def test_old_job_folders_move_into_the_private_folder_even_across_a_kill(daemon, spool, simulator, tmp_path):
    """A database and job folders as 0faf9f3 left them (OUTBOX/.fax-gateway/<job>/, no
    private_root): start-up moves them, a kill during the move loses nothing, and every
    document is filed once."""
    d = daemon()
    d.start()
    folder = spool.folder("+15551230888")  # the simulator keeps these sending until canceled
    datas = {}
    for i in range(3):
        datas[f"s{i}.pdf"] = make_pdf(1, text=f"s{i}")
        (folder / f"s{i}.pdf").write_bytes(datas[f"s{i}.pdf"])
    wait_for(lambda: len(simulator.requests("fax-send")) == 3, 20, "three faxes sending")
    d.terminate()
    legacy = spool.outbox / ".fax-gateway"
    legacy.mkdir()
    for job in spool.private.iterdir():
        job.rename(legacy / job.name)
    db = sqlite3.connect(tmp_path / "jobs.db")
    db.execute("UPDATE jobs SET private_root=NULL")
    db.commit()
    db.close()
    d.start(crash_at="migrate", wait_healthy=False)
    assert d.wait_exit(30) == -9
    assert len(list(spool.private.iterdir())) == 1 and len(list(legacy.iterdir())) == 2
    d.start()
    assert sorted(p.name for p in spool.private.iterdir()) == ["1", "2", "3"]
    assert not legacy.exists()
    for job in (1, 2, 3):
        assert run_cli("cancel", "-c", str(d.config), str(job)).returncode == 0
    results = spool.wait_results(3, "failed")
    assert all(r["state"] == "canceled" for r in results)
    for name, data in datas.items():
        assert (spool.failed / "+15551230888" / name).read_bytes() == data
    assert len(simulator.requests("fax-send")) == 3
