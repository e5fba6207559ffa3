"""A problem that repeats in a loop gives one line, a count now and then, and one line when it clears."""

from __future__ import annotations

import logging
import threading

import pytest

from gateway.quietlog import Problems, traceback_if_debug

LOGGER = "gateway.test.quietlog"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def problems(clock: FakeClock) -> Problems:
    return Problems(logging.getLogger(LOGGER), summary_every=300.0, clock=clock)


def _lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


def _disk_full() -> OSError:
    try:
        raise OSError(28, "No space left on device")
    except OSError as exc:
        return exc


def test_a_thousand_repeats_give_one_line(problems: Problems, clock: FakeClock,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    results = []
    for _ in range(1000):
        results.append(problems.problem("outbox main", "cannot claim %s: %s", "a.pdf", "disk full"))
        clock.now += 0.1  # 100 s in all, less than the summary period
    assert results == [True] + [False] * 999
    [line] = _lines(caplog)
    assert line.levelno == logging.ERROR
    assert line.getMessage() == "cannot claim a.pdf: disk full"
    assert line.exc_info is None
    assert "outbox main" in problems
    assert problems.active()["outbox main"].repeats == 999


def test_one_summary_line_with_the_count_after_the_period(problems: Problems, clock: FakeClock,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    for _ in range(1000):
        problems.problem("k", "disk full")
    clock.now += 300
    assert problems.problem("k", "disk full") is False
    lines = _lines(caplog)
    assert len(lines) == 2
    assert lines[1].getMessage() == "disk full (repeated 1000 times in the last 5 minutes)"
    assert lines[1].levelno == logging.ERROR

    # the count starts again, and nothing more is logged until the next period has passed
    for _ in range(10):
        clock.now += 10
        problems.problem("k", "disk full")
    assert len(_lines(caplog)) == 2
    clock.now += 200
    problems.problem("k", "disk full")
    lines = _lines(caplog)
    assert len(lines) == 3
    assert lines[2].getMessage() == "disk full (repeated 11 times in the last 5 minutes)"


def test_clear_logs_once_and_a_new_problem_logs_again(problems: Problems, clock: FakeClock,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert problems.clear("k", "fine again") is False  # nothing active: silent
    assert _lines(caplog) == []

    problems.problem("k", "folder %s not writable", "in/")
    for _ in range(41):
        problems.problem("k", "folder %s not writable", "in/")
    clock.now += 720
    assert problems.clear("k", "folder %s writable again", "in/") is True
    assert problems.clear("k", "folder %s writable again", "in/") is False
    assert "k" not in problems
    lines = _lines(caplog)
    assert len(lines) == 2
    assert lines[1].levelno == logging.INFO
    assert lines[1].getMessage() == "folder in/ writable again (after 12 minutes, seen 42 times)"

    assert problems.problem("k", "folder %s not writable", "in/") is True
    assert len(_lines(caplog)) == 3
    assert problems.clear("k") is True  # no message: cleared silently
    assert len(_lines(caplog)) == 3


def test_keys_are_independent(problems: Problems, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    for _ in range(5):
        problems.problem(("claim", "a.pdf"), "cannot claim a.pdf")
        problems.problem(("claim", "b.pdf"), "cannot claim b.pdf")
    assert [r.getMessage() for r in _lines(caplog)] == ["cannot claim a.pdf", "cannot claim b.pdf"]
    assert set(problems.active()) == {("claim", "a.pdf"), ("claim", "b.pdf")}
    assert len(problems) == 2


def test_traceback_only_at_debug(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger(LOGGER)
    caplog.set_level(logging.INFO, logger=LOGGER)
    quiet = Problems(logger, clock=clock)
    quiet.problem("k", "cannot write result file", exc=_disk_full())
    [line] = _lines(caplog)
    assert line.exc_info is None
    assert "Traceback" not in caplog.text
    assert traceback_if_debug(logger) is False

    caplog.clear()
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    loud = Problems(logger, clock=clock)
    loud.problem("k", "cannot write result file", exc=_disk_full())
    loud.problem("k", "cannot write result file", exc=_disk_full())  # a repeat: still one line
    [line] = _lines(caplog)
    assert line.exc_info is not None and line.exc_info[0] is OSError
    assert "Traceback" in caplog.text
    assert traceback_if_debug(logger) is True


def test_level_and_the_line_points_at_the_caller(problems: Problems,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    problems.problem("k", "slow share", level=logging.WARNING)
    [line] = _lines(caplog)
    assert line.levelno == logging.WARNING
    assert line.funcName == "test_level_and_the_line_points_at_the_caller"


def test_snapshot_does_not_change_later(problems: Problems, clock: FakeClock) -> None:
    problems.problem("k", "one")
    snap = problems.active()
    clock.now += 5
    problems.problem("k", "two")
    assert snap["k"].message == "one" and snap["k"].repeats == 0
    info = problems.active()["k"]
    assert (info.message, info.repeats, info.since, info.last_seen) == ("two", 1, 1000.0, 1005.0)


def test_messages_are_formatted_as_logging_does(problems: Problems, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    problems.problem("a", "%(path)s is full", {"path": "sent/"})
    problems.problem("b", "100% full")
    problems.problem("c", "needs %d", "text")  # a caller's mistake is shown, not raised
    assert [r.getMessage() for r in _lines(caplog)] == ["sent/ is full", "100% full", "needs %d ('text',)"]
    assert problems.active()["c"].message == "needs %d ('text',)"


def test_threads_share_one_tracker(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    shared = Problems(logging.getLogger(LOGGER), clock=clock)
    firsts: list[bool] = []

    def loop() -> None:
        for _ in range(2000):
            if shared.problem("k", "disk full"):
                firsts.append(True)

    threads = [threading.Thread(target=loop) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert firsts == [True]
    assert len(_lines(caplog)) == 1
    assert shared.active()["k"].repeats == 8 * 2000 - 1
