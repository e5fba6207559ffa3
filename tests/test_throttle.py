"""The API's backoff (SPEC 6.2, issue 9): one outage counts once, one probe at a time
finds the API's return, and no wait is longer than the cap.  A clock the test moves
stands in for time.monotonic; everything else is the real Backoff."""

from __future__ import annotations

import math

import pytest

from gateway.throttle import BACKOFF_CAP, Backoff, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _expire(backoff: Backoff, clock: Clock) -> None:
    clock.now += backoff.remaining()


def test_concurrent_failures_of_one_outage_escalate_once(clock):
    backoff = Backoff(clock=clock)
    tickets = [backoff.admit() for _ in range(4)]  # max_in_flight requests under way
    assert all(t is not None and not t.probe for t in tickets)
    first = backoff.failure(tickets[0])
    assert 0.5 <= first <= 1.0  # the first step: base 1 s, jitter half to full
    for t in tickets[1:]:  # the same outage, found again by requests already under way
        assert backoff.failure(t) == pytest.approx(first)
    _expire(backoff, clock)
    probe = backoff.admit()
    assert probe is not None and probe.probe
    assert 1.0 <= backoff.failure(probe) <= 2.0  # the second step, not the fifth


def test_each_failed_probe_doubles_the_wait_up_to_the_cap(clock):
    backoff = Backoff(clock=clock)
    backoff.failure(backoff.admit())
    steps = []
    for _ in range(8):
        _expire(backoff, clock)
        steps.append(backoff.failure(backoff.admit()))
    for step, top in zip(steps, (2, 4, 8, 8, 8, 8, 8, 8), strict=True):
        assert top / 2 <= step <= top
    assert BACKOFF_CAP <= 8.0  # the first fax leaves within 10 s of the API's return


def test_while_down_one_probe_at_a_time(clock):
    backoff = Backoff(clock=clock)
    backoff.failure(backoff.admit())
    assert backoff.down and backoff.admit() is None  # waiting for the backoff
    assert 0 < backoff.wait() <= 1.0
    _expire(backoff, clock)
    assert backoff.wait() == 0
    probe = backoff.admit()
    assert probe is not None and probe.probe
    assert backoff.admit() is None and backoff.wait() == math.inf  # the probe is out
    backoff.success(probe)
    assert not backoff.down
    assert all(t is not None and not t.probe for t in (backoff.admit() for _ in range(4)))


def test_a_probe_that_never_started_is_given_back_unchanged(clock):
    backoff = Backoff(clock=clock)
    backoff.failure(backoff.admit())
    _expire(backoff, clock)
    probe = backoff.admit()
    backoff.release(probe)
    backoff.release(probe)  # settled once: a second release changes nothing
    again = backoff.admit()
    assert again is not None and again.probe  # another may probe at once
    assert 1.0 <= backoff.failure(again) <= 2.0
    backoff.success(probe)  # already settled: ignored
    assert backoff.down


def test_a_request_handed_out_before_the_outage_was_found_may_not_start(clock):
    backoff = Backoff(clock=clock)
    early, failing = backoff.admit(), backoff.admit()
    assert backoff.current(early)
    backoff.failure(failing)
    assert not backoff.current(early)


def test_an_older_request_answering_does_not_end_the_outage_a_newer_one_found(clock):
    backoff = Backoff(clock=clock)
    older, newer = backoff.admit(), backoff.admit()
    backoff.failure(newer)
    backoff.success(older)  # it may have been answered before the API went down
    assert backoff.down and backoff.admit() is None


def test_retry_after_is_honoured_up_to_the_cap(clock):
    backoff = Backoff(clock=clock)
    assert backoff.failure(backoff.admit(), retry_after=5) == pytest.approx(5)
    _expire(backoff, clock)
    assert backoff.failure(backoff.admit(), retry_after=3600) == pytest.approx(BACKOFF_CAP)


def test_retry_after_of_a_request_of_the_same_outage_is_honoured_without_escalating(clock):
    backoff = Backoff(clock=clock)
    a, b = backoff.admit(), backoff.admit()
    backoff.failure(a)
    assert backoff.failure(b, retry_after=6) == pytest.approx(6)
    _expire(backoff, clock)
    assert 1.0 <= backoff.failure(backoff.admit()) <= 2.0


def test_a_reserved_token_is_owed_and_later_requests_wait_behind_it(clock):
    limiter = RateLimiter(120, clock=clock)  # 2 a second, a bucket of one second's worth
    assert limiter.try_acquire() == 0 and limiter.try_acquire() == 0
    assert limiter.reserve() == pytest.approx(0.5)  # its turn comes in half a second
    assert limiter.try_acquire() == pytest.approx(1.0)  # the next waits behind it
    clock.now += 0.5
    assert limiter.try_acquire() == pytest.approx(0.5)  # the reserved token is spent
    clock.now += 0.5
    assert limiter.try_acquire() == 0
    clock.now += 10
    assert limiter.reserve() == 0  # a token there: taken at once


def test_a_new_rate_keeps_what_was_spent_and_what_is_owed(clock):
    """A reload with a new requests_per_minute must not grant a fresh bucket on top of the
    requests that just left (the old limiter replaced by a new one did)."""
    limiter = RateLimiter(120, clock=clock)
    assert limiter.try_acquire() == 0 and limiter.try_acquire() == 0  # the bucket is empty
    limiter.set_rate(600)  # 10 a second, a bucket of ten
    assert limiter.try_acquire() == pytest.approx(0.1)  # nothing was granted: the next at the new pace
    clock.now += 1.0
    assert [limiter.try_acquire() for _ in range(10)] == [0] * 10  # the new bucket fills at the new pace
    assert limiter.reserve() == pytest.approx(0.1)
    limiter.set_rate(60)  # 1 a second: the owed token is still owed, now at the slower pace
    assert limiter.try_acquire() == pytest.approx(2.0)
    clock.now += 5
    assert limiter.try_acquire() == 0 and limiter.try_acquire() > 0  # a bucket of one at 60 a minute
