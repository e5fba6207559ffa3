"""The watcher's two ways of knowing a writer still has a file open, each on its own,
with real inotify events and real files (SPEC 4.1)."""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import wait_for

from gateway.watcher import SWEEP_EVERY, Watcher, leases_usable, relative

SETTLE = 0.2


@pytest.fixture
def sigio(request):
    """Leases are used only while SIGIO is ignored (a lease break would kill us otherwise)."""
    before = signal.getsignal(signal.SIGIO)
    yield lambda handler: signal.signal(signal.SIGIO, handler)
    signal.signal(signal.SIGIO, before)


def _settled(w: Watcher, rel: str) -> bool:
    w.drain()
    w.tick()
    seen = w.outboxes["main"].files.get(rel)
    return seen is not None and seen.settled_at is not None


def _never_settles_for(w: Watcher, rel: str, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert not _settled(w, rel), f"{rel} settled while its writer still had it open"
        time.sleep(0.02)


def test_open_and_close_events_hold_a_file_without_leases(tmp_path, sigio):
    sigio(signal.SIG_DFL)
    assert not leases_usable()
    w = Watcher()
    w.add("main", tmp_path, settle=SETTLE, rescan=60, polling=False)
    try:
        with open(tmp_path / "a.pdf", "wb") as f:
            f.write(b"%PDF-")
            f.flush()
            _never_settles_for(w, "a.pdf", SETTLE * 5)
        wait_for(lambda: _settled(w, "a.pdf"), 5, "settling after the close")
    finally:
        w.stop()


def test_lease_holds_a_file_opened_before_the_watch_began(tmp_path, sigio):
    sigio(signal.SIG_IGN)
    assert leases_usable()
    with open(tmp_path / "early.pdf", "wb") as f:
        f.write(b"%PDF-")
        f.flush()
        w = Watcher()
        w.add("main", tmp_path, settle=SETTLE, rescan=60, polling=False)  # no open event to see
        try:
            _never_settles_for(w, "early.pdf", SETTLE * 5)
        except BaseException:
            w.stop()
            raise
    try:
        wait_for(lambda: _settled(w, "early.pdf"), 5, "settling after the close")
    finally:
        w.stop()


def test_files_waiting_over_ten_minutes_are_counted_and_logged_once(tmp_path, sigio, caplog):
    sigio(signal.SIG_DFL)
    now = [1000.0]
    w = Watcher(clock=lambda: now[0])
    w.add("main", tmp_path, settle=SETTLE, rescan=3600, polling=False)
    try:
        with open(tmp_path / "slow.pdf", "wb") as f:
            f.write(b"%PDF-")
            f.flush()
            wait_for(lambda: w.drain() >= 0 and "slow.pdf" in w.outboxes["main"].files, 5, "the file seen")
            now[0] += 599
            w.tick()
            assert w.long_waiting("main") == 0
            now[0] += SWEEP_EVERY + 1  # the count is refreshed every SWEEP_EVERY seconds
            w.tick()
            assert w.long_waiting("main") == 1
            now[0] += 20
            w.tick()
        assert caplog.text.count("waited more than 10 minutes") == 1
        assert "still open by their writer" in caplog.text
    finally:
        w.stop()


def test_a_file_held_open_has_no_deadline_until_it_is_closed(tmp_path, sigio):
    """Work is driven by deadlines: a file its writer holds open is not looked at again
    until the close event (SPEC 4.5: 10,000 open files cost about as little as none)."""
    sigio(signal.SIG_DFL)
    w = Watcher()
    w.add("main", tmp_path, settle=SETTLE, rescan=3600, polling=False)
    try:
        with open(tmp_path / "open.pdf", "wb") as f:
            f.write(b"%PDF-")
            f.flush()
            wait_for(lambda: w.drain() >= 0 and w.outboxes["main"].files.get("open.pdf") is not None
                     and w.outboxes["main"].files["open.pdf"].held_open, 5, "the open event")
            seen = w.outboxes["main"].files["open.pdf"]
            wait_for(lambda: w.tick() or seen.check_at is None, 5, "the creation's deadline to pass")
            for _ in range(20):
                w.drain()
                w.tick()
                assert seen.check_at is None and w.next_deadline() is None
        wait_for(lambda: _settled(w, "open.pdf"), 5, "settling after the close")
    finally:
        w.stop()


def test_the_ten_minute_warning_names_no_file_with_file_names_false(tmp_path, sigio, caplog):
    """log.file_names: false (SPEC 3): the warning counts the files but names none."""
    sigio(signal.SIG_DFL)
    now = [1000.0]
    w = Watcher(clock=lambda: now[0], file_names=False)
    w.add("main", tmp_path, settle=SETTLE, rescan=3600, polling=False)
    try:
        with open(tmp_path / "Smith_John_referral.pdf", "wb") as f:
            f.write(b"%PDF-")
            f.flush()
            wait_for(lambda: w.drain() >= 0 and "Smith_John_referral.pdf" in w.outboxes["main"].files, 5,
                     "the file seen")
            now[0] += 611
            w.tick()
            assert w.long_waiting("main") == 1
        assert caplog.text.count("waited more than 10 minutes") == 1
        assert "Smith" not in caplog.text
    finally:
        w.stop()


# -- rescans read only the folders that changed ------------------------------------------

def _inotify_events_during(folder, action) -> int:
    """Bytes of inotify events `action` raises on `folder` (a real inotify watch)."""
    import ctypes
    import os
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    assert fd >= 0
    try:
        assert libc.inotify_add_watch(fd, os.fsencode(folder), 0xFFF) >= 0
        action()
        try:
            return len(os.read(fd, 65536))
        except BlockingIOError:
            return 0
    finally:
        os.close(fd)


def test_a_rescan_rereads_only_changed_folders_and_misses_no_file(tmp_path):
    """An idle rescan opens no folder for reading, so it raises no inotify event and wakes
    none of the watcher's threads; a folder whose entries changed is read again, even if
    its writer set its mtime back (its ctime cannot be)."""
    import os

    from gateway.watcher import TRUST_AFTER_NS, _walk
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.pdf").write_bytes(b"a")
    listings: dict = {}
    assert sorted(r for r, _ in _walk(tmp_path, None, listings)) == ["sub/a.pdf"]
    time.sleep(TRUST_AFTER_NS / 1e9 + 0.1)
    list(_walk(tmp_path, None, listings))  # listed more than a second after the last change
    quiet = _inotify_events_during(tmp_path / "sub", lambda: list(_walk(tmp_path, None, listings)))
    assert quiet == 0
    st = os.stat(tmp_path / "sub")
    (tmp_path / "sub" / "b.pdf").write_bytes(b"b")
    os.utime(tmp_path / "sub", ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime set back: ctime moves on
    assert sorted(r for r, _ in _walk(tmp_path, None, listings)) == ["sub/a.pdf", "sub/b.pdf"]
    assert _inotify_events_during(tmp_path / "sub", lambda: list(_walk(tmp_path, None, {}))) > 0


def test_each_outbox_takes_two_watchdog_threads_and_releases_them(tmp_path):
    """Per outbox an inotify instance with its reader, and an emitter that puts events
    straight on the intake's queue, with no observer thread: two watchdog threads per
    outbox instead of three.  Each outbox sees its own files; one removed (a paused
    outbox) releases its threads and leaves the others watched."""
    import threading

    from watchdog.utils import BaseThread

    def watchdog_threads() -> int:
        return sum(isinstance(t, BaseThread) and t.is_alive() for t in threading.enumerate())

    before = watchdog_threads()
    w = Watcher()
    names = [f"box{i}" for i in range(12)]
    try:
        for name in names:
            (tmp_path / name).mkdir()
            w.add(name, tmp_path / name, settle=SETTLE, rescan=60, polling=False)
        assert watchdog_threads() - before == 2 * len(names)
        assert w.alive()
        for name in names:
            (tmp_path / name / f"{name}.pdf").write_bytes(b"%PDF-")
        for name in names:
            wait_for(lambda n=name: w.drain() >= 0 and f"{n}.pdf" in w.outboxes[n].files, 5,
                     f"{name}'s file seen")
        w.remove("box0")
        assert watchdog_threads() - before == 2 * (len(names) - 1)
        (tmp_path / "box1" / "late.pdf").write_bytes(b"%PDF-")
        wait_for(lambda: w.drain() >= 0 and "late.pdf" in w.outboxes["box1"].files, 5,
                 "a file after a removal")
        assert w.alive()
    finally:
        w.stop()
    wait_for(lambda: watchdog_threads() == before, 5, "every watchdog thread to end")


@pytest.mark.parametrize("root", ["/srv/fax/outbox", "/srv/fax/outbox/", "/", "spool/outbox",
                                  "/srv/./fax/outbox"])
def test_relative_is_relpath(root):
    """The watcher's own `relative` answers as os.path.relpath for every path, the ones
    inotify gives (taken quickly) and any other (left to relpath)."""
    names = ["a.pdf", "+15551234567/a.pdf", "x/y/z.tif", ".hidden.pdf", "a/.partial", "..a.pdf", "a..pdf",
             "./a.pdf", "a/../b.pdf", "../outside.pdf", "a//b.pdf", "a/", "é ü.pdf", ""]
    base = root.rstrip("/")
    paths = [f"{base}/{n}" for n in names] + [root, base or "/", "/elsewhere/a.pdf", base + "x/a.pdf",
                                              f"{base}//a.pdf", f"{root}/a.pdf", "//a.pdf"]
    for path in paths:
        assert relative(path, root) == os.path.relpath(path, root), path
