"""The watcher's two ways of knowing a writer still has a file open, each on its own,
with real inotify events and real files (SPEC 4.1)."""

from __future__ import annotations

import signal
import time

import pytest
from conftest import wait_for

from gateway.watcher import Watcher, leases_usable

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
            now[0] += 11  # the count is refreshed every 10 s
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
