"""File moves that the daemon tests cannot reach easily: across filesystems, and a move
repeated after a crash between the copy and the unlink."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from gateway import spool
from gateway.spool import move_file, suffixed


@pytest.fixture
def other_fs():
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tempfile.gettempdir()).st_dev:
        pytest.skip("no second filesystem here")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        yield Path(d)


def test_move_across_filesystems_copies_syncs_and_unlinks(tmp_path, other_fs):
    src = tmp_path / "a.pdf"
    src.write_bytes(b"%PDF-1.4 data")
    dst = other_fs / "a.pdf"
    move_file(src, dst)
    assert dst.read_bytes() == b"%PDF-1.4 data" and not src.exists()
    assert [p.name for p in other_fs.iterdir()] == ["a.pdf"]  # no temporary left behind


def test_repeated_move_after_crash_between_copy_and_unlink(tmp_path, other_fs):
    src, dst = tmp_path / "a.pdf", other_fs / "a.pdf"
    src.write_bytes(b"same")
    dst.write_bytes(b"same")
    move_file(src, dst)
    assert not src.exists() and dst.read_bytes() == b"same"


def test_never_overwrites_a_different_file(tmp_path):
    from gateway.spool import SpoolError
    src, dst = tmp_path / "a.pdf", tmp_path / "b.pdf"
    src.write_bytes(b"new")
    dst.write_bytes(b"old")
    with pytest.raises(SpoolError):
        move_file(src, dst)
    assert dst.read_bytes() == b"old" and src.read_bytes() == b"new"


def test_suffix_keeps_a_jobs_files_together():
    bases = ["scan.pdf", "scan.pdf.yaml"]
    assert suffixed("scan.pdf", 2, bases) == "scan-2.pdf"
    assert suffixed("scan.pdf.yaml", 2, bases) == "scan-2.pdf.yaml"
    assert suffixed("scan.pdf.result.json", 2, bases) == "scan-2.pdf.result.json"
    assert suffixed("batch.yaml", 1, ["batch.yaml"]) == "batch-1.yaml"
    assert suffixed("README", 1, ["README"]) == "README-1"


@pytest.mark.parametrize("rel_dir", ["", "+15551234567", "clinic/+15551234567"])
def test_a_filed_jobs_folders_are_removed_and_a_file_left_in_them_is_kept(tmp_path, rel_dir):
    """Filing removes the job's folder bottom-up without walking it; anything it did not
    expect there (a file, another folder) is never deleted, and only empty folders go."""
    private = tmp_path / "private"
    held = spool.job_dir(private, 7) / rel_dir
    held.mkdir(parents=True)
    spool.remove_job_dir(private, 7, rel_dir)
    assert not spool.job_dir(private, 7).exists()

    held.mkdir(parents=True)
    (held / "left.pdf").write_bytes(b"%PDF-1.4 left behind")
    (spool.job_dir(private, 7) / "empty").mkdir()
    spool.remove_job_dir(private, 7, rel_dir)
    assert (held / "left.pdf").read_bytes() == b"%PDF-1.4 left behind"
    assert not (spool.job_dir(private, 7) / "empty").exists()

    spool.remove_job_dir(private, 8, rel_dir)  # never made, or removed before a crash: nothing to do


def test_removing_a_jobs_folders_never_follows_a_link(tmp_path):
    """A link where the job's folder should be is not followed: the empty folder it
    points at, outside the private folder, stays."""
    private, elsewhere = tmp_path / "private", tmp_path / "elsewhere"
    (elsewhere / "+15551234567").mkdir(parents=True)
    private.mkdir()
    (private / "7").symlink_to(elsewhere)
    spool.remove_job_dir(private, 7, "+15551234567")
    assert (elsewhere / "+15551234567").is_dir()


def test_a_batch_opens_each_root_once_and_closes_it(tmp_path):
    """`DirSyncs.opened`: one descriptor of a root all batch long, folders below it looked
    up from it, and nothing left open after the batch."""
    (tmp_path / "root" / "a").mkdir(parents=True)
    with spool.DirSyncs() as syncs:
        with syncs.opened(tmp_path / "root") as root, syncs.opened(tmp_path / "root") as again:
            assert again == root
        with syncs.opened(tmp_path / "root", "a/b", create=True, mode=0o700) as below:
            assert os.fstat(below).st_ino == (tmp_path / "root" / "a" / "b").stat().st_ino
        with pytest.raises(OSError):
            os.fstat(below)  # a folder below the root is closed after its use
        os.fstat(root)  # the root stays open for the batch
    with pytest.raises(OSError):
        os.fstat(root)


def test_a_folder_renamed_away_during_a_batch_is_never_written_through(tmp_path):
    """A number folder moved out of sent/ (or the outbox) between two jobs of a batch: the
    second job finds the new folder of that name, not the moved one (SPEC 4.5)."""
    (tmp_path / "root" / "n").mkdir(parents=True)
    (tmp_path / "archive").mkdir()
    with spool.DirSyncs() as syncs:
        with syncs.opened(tmp_path / "root", "n") as first:
            moved = os.fstat(first).st_ino
        (tmp_path / "root" / "n").rename(tmp_path / "archive" / "n")
        with syncs.opened(tmp_path / "root", "n", create=True) as second:
            assert os.fstat(second).st_ino != moved
            assert os.fstat(second).st_ino == (tmp_path / "root" / "n").stat().st_ino


def test_a_batchs_folder_below_a_root_is_never_reached_through_a_link(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path / "elsewhere")
    with spool.DirSyncs() as syncs:
        with pytest.raises(spool.SpoolError, match="a link where a folder is expected"):
            with syncs.opened(tmp_path / "root", "link/deeper", create=True):
                pass
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_batchs_folders_are_synced_and_its_roots_closed_before_the_steps_after(tmp_path):
    (tmp_path / "root" / "n").mkdir(parents=True)
    syncs = spool.DirSyncs()
    with syncs.opened(tmp_path / "root") as root:
        pass
    syncs.add(tmp_path / "root")
    syncs.add(tmp_path / "root", "n")
    syncs.add(tmp_path / "root", "gone")  # removed meanwhile: nothing in it to keep
    ran = []
    syncs.after(lambda: ran.append(True))
    syncs.run()
    assert ran == [True]
    with pytest.raises(OSError):
        os.fstat(root)


RESULTS = [
    {"job": 7, "state": "delivered", "reason": None, "simulated": False, "files": ["scan.pdf"],
     "sha256": ["ab" * 32], "recipients": [{"to": "+15551234567", "attempts": 1, "cost": 0.07,
                                            "code": 200, "message": "Fax sent successfully"}]},
    {"job": 8, "state": "failed", "files": [], "sha256": [], "recipients": [], "reference": {},
     "reason": "caf\u00e9 \u2028 \x7f \\ \" \t\n\x01 \U0001f600", "cost": 12.0},
]


@pytest.mark.parametrize("doc", RESULTS)
def test_a_result_file_reads_as_json_indented_by_two_as_before(doc):
    """orjson writes result files (issue 12); the text is what json.dumps(indent=2) wrote."""
    assert spool.result_json(doc).decode() == json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def test_what_orjson_cannot_write_is_written_by_json_in_the_same_shape():
    doc = {"job": 9, "recipients": [{"code": 10 ** 30}]}  # an odd code from iFax: beyond 64 bits
    assert spool.result_json(doc).decode() == json.dumps(doc, indent=2) + "\n"


# -- a folder made on the way is synced in its parent ------------------------------------
#
# On a filesystem that keeps no journal (ext4 without one, as on this project's machines)
# nothing orders a folder's entry in its parent before what is renamed into the folder:
# a power cut after the claim's syncs but before the kernel wrote the parent could leave
# the number folder, with the documents renamed into it, unreachable.  Observed here as
# the folders handed to fsync (by inode), the real fsync still running.

@pytest.fixture
def synced(monkeypatch):
    real = os.fsync
    seen: set[tuple[int, int]] = set()

    def fsync(fd):
        st = os.fstat(fd)
        seen.add((st.st_dev, st.st_ino))
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)

    def was(path: Path) -> bool:
        st = os.lstat(path)
        return (st.st_dev, st.st_ino) in seen
    return was


def _number_folder_doc(tmp_path: Path) -> tuple[Path, Path, list]:
    from gateway.store import SourceFile
    outbox, private = tmp_path / "outbox", tmp_path / "private"
    (outbox / "+15551234567").mkdir(parents=True)
    private.mkdir()
    doc = outbox / "+15551234567" / "scan.pdf"
    doc.write_bytes(b"%PDF-1.4")
    st = doc.stat()
    return outbox, private, [SourceFile("scan.pdf", st.st_ino, st.st_size, st.st_mtime_ns)]


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "alone"])
def test_a_claim_into_a_number_folder_syncs_the_job_folder_that_holds_it(tmp_path, synced, batch):
    outbox, private, sources = _number_folder_doc(tmp_path)
    if batch:
        with spool.DirSyncs() as syncs:
            assert spool.claim(outbox, private, 7, "+15551234567", sources, syncs=syncs) == []
            syncs.run()
    else:
        assert spool.claim(outbox, private, 7, "+15551234567", sources) == []
    assert (private / "7" / "+15551234567" / "scan.pdf").read_bytes() == b"%PDF-1.4"
    assert synced(private / "7")  # the number folder's entry: the one that was missing
    assert synced(private / "7" / "+15551234567") and synced(private) and synced(outbox / "+15551234567")


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "alone"])
def test_filing_into_a_new_number_folder_syncs_sent(tmp_path, synced, batch):
    outbox, private, sources = _number_folder_doc(tmp_path)
    spool.claim(outbox, private, 7, "+15551234567", sources)
    sent = tmp_path / "sent"
    sent.mkdir()
    kwargs = dict(private=private, job_id=7, rel_dir="+15551234567", names=["scan.pdf"], bases=["scan.pdf"],
                  dest_root=str(sent), suffix=0, result_name="scan.pdf.result.json",
                  result=lambda f: {"files": f})
    if batch:
        with spool.DirSyncs() as syncs:
            assert spool.file_job(**kwargs, syncs=syncs) == ["scan.pdf"]
            assert not synced(sent)  # with the batch's syncs, not before
            syncs.run()
    else:
        assert spool.file_job(**kwargs) == ["scan.pdf"]
    assert (sent / "+15551234567" / "scan.pdf").read_bytes() == b"%PDF-1.4"
    assert synced(sent) and synced(sent / "+15551234567")
    assert not (private / "7").exists()


def test_taking_a_job_back_syncs_the_private_folder_its_new_folder_is_in(tmp_path, synced):
    failed, private = tmp_path / "failed", tmp_path / "private"
    (failed / "+15551234567").mkdir(parents=True)
    private.mkdir()
    (failed / "+15551234567" / "scan.pdf").write_bytes(b"%PDF-1.4")
    assert spool.unfile(private=private, job_id=9, rel_dir="+15551234567", names=["scan.pdf"],
                        bases=["scan.pdf"], dest_root=failed, suffix=0,
                        result_name="scan.pdf.result.json") == []
    assert (private / "9" / "+15551234567" / "scan.pdf").exists()
    assert synced(private) and synced(private / "9")


def test_a_configured_folder_made_at_start_is_synced_in_its_parent(tmp_path, synced):
    spool.make_dirs(tmp_path / "base" / "sent", tmp_path)
    assert synced(tmp_path) and synced(tmp_path / "base")


def test_the_private_folder_made_for_an_outbox_is_synced_in_its_parent(make_config, spool, synced):
    """The private folder (SPEC 4.4), made beside the outbox the first time it is used: the
    claimed documents wait in it."""
    from gateway.config import load_config
    from gateway.private import PrivateFolders
    [ob] = load_config(make_config()).outboxes
    assert not ob.private.exists()
    assert PrivateFolders().problem(ob) is None
    assert ob.private.is_dir() and synced(ob.private.parent)


@pytest.mark.parametrize("opener", ["daemon", "store"])
def test_the_database_folder_made_at_first_start_is_synced_in_its_parent(tmp_path, synced, opener):
    """SQLite syncs the folder its files are in, never the folders made above them: a
    power cut could take the new database folder, and every job in it, away."""
    from gateway.dblock import DatabaseLock
    from gateway.store import Store
    db = tmp_path / "state" / "fax-gateway" / "fax.db"
    if opener == "daemon":  # `fax-gateway run` takes the lock before it opens the store
        lock = DatabaseLock(db)
        lock.acquire()
        lock.release()
    else:
        Store(db).close()
    assert db.exists()
    assert synced(tmp_path) and synced(tmp_path / "state")


def test_the_database_folder_is_made_as_before_and_a_file_in_the_way_says_so(tmp_path):
    spool.make_dirs_synced(tmp_path / "a" / "b")
    spool.make_dirs_synced(tmp_path / "a" / "b")  # already there: nothing to do
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError):
        spool.make_dirs_synced(tmp_path / "f")
    with pytest.raises(NotADirectoryError):
        spool.make_dirs_synced(tmp_path / "f" / "g")


def test_an_existing_database_folder_is_fine_whatever_error_mkdir_gives(tmp_path, monkeypatch):
    """As Path.mkdir(exist_ok=True): some network filesystems answer EACCES or EROFS, not
    EEXIST, for a folder that exists under one the gateway may not write."""
    (tmp_path / "db").mkdir()

    def refuse(name, *args, **kwargs):
        raise PermissionError(13, "Permission denied", name)
    monkeypatch.setattr(os, "mkdir", refuse)
    spool.make_dirs_synced(tmp_path / "db")
    with pytest.raises(PermissionError):
        spool.make_dirs_synced(tmp_path / "new")
