"""Request pacing shared by every API call: `requests_per_minute`, and one backoff for
the whole API after a "not now" answer (SPEC 6.1, 6.2)."""

from __future__ import annotations

import math
import random
import threading
import time

# The longest wait between two tries while the API is down, Retry-After included.  With
# jitter the probe interval is 4-8 s at the cap, so the first fax leaves within about
# 8 s of the API's return (issue 9 asks for 10 s; SPEC 6.2 for the queue to drain
# within a minute).
BACKOFF_CAP = 8.0


class RateLimiter:
    """Token bucket: bursts up to a second's worth of requests, then the configured rate."""

    def __init__(self, per_minute: int, *, clock=time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self._tokens = self.capacity
        self._clock = clock
        self._stamp = clock()
        self._lock = threading.Lock()

    def set_rate(self, per_minute: int) -> None:
        """A new requests_per_minute (a reload): what was spent under the old rate stays
        spent, tokens owed included, so a reload never grants a fresh burst on top of the
        requests that just left; only the bucket's size and the pace change."""
        with self._lock:
            self._refill()
            self.rate = per_minute / 60.0
            self.capacity = max(1.0, self.rate)
            self._tokens = min(self._tokens, self.capacity)

    def try_acquire(self) -> float:
        """Takes a token if one is there: 0.0.  Otherwise the seconds until one will be,
        so a scheduler can start what it may now and sleep until the next, instead of
        parking a worker thread on the limiter."""
        with self._lock:
            self._refill()
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            return (1 - self._tokens) / self.rate

    def reserve(self) -> float:
        """Takes a token now, owing it if none is there, and returns the seconds to wait before
        the request may start.  The requests after it wait the longer for it, so a caller
        that waits is never starved by others' `try_acquire`."""
        with self._lock:
            self._refill()
            self._tokens -= 1
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def _refill(self) -> None:
        """Under the lock: the tokens earned since the last look, up to the bucket's size."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Blocks until a request may start; False if `stop` was set meanwhile."""
        while True:
            wait = self.try_acquire()
            if wait == 0:
                return True
            if stop is not None:
                if stop.wait(wait):
                    return False
            else:
                time.sleep(wait)


class Ticket:
    """Leave for one request to start: the outage it belongs to (how many escalating
    failures the backoff had recorded when it was given) and whether it is the probe.
    Settled once, by `success`, `failure` or `release`; later calls are ignored."""

    __slots__ = ("epoch", "probe", "settled")

    def __init__(self, epoch: int, probe: bool) -> None:
        self.epoch, self.probe, self.settled = epoch, probe, False

    def __repr__(self) -> str:
        return f"Ticket(epoch={self.epoch}, probe={self.probe}, settled={self.settled})"


class Backoff:
    """Exponential backoff with jitter, one for the whole API, and one outage counted once.

    Every request takes a `Ticket` before it starts.  While the API answers, tickets are
    given freely (the limit is `max_in_flight`).  After a "not now" answer the API is
    *down*: no ticket until the backoff expires, then one, the probe, and no other until
    the probe is settled.  A probe that gets an answer ends the outage (full concurrency
    again); one that fails doubles the wait.

    A failure doubles the wait only if its request started after the latest escalating
    failure: requests that were already under way when the outage began fail together,
    and that is one outage, not four (issue 9: stacked doublings kept the queue waiting
    ~20 s after the API came back).  For the same reason a success of such an older
    request does not end an outage that a newer one found.
    """

    def __init__(self, *, base: float = 1.0, cap: float = BACKOFF_CAP, clock=time.monotonic) -> None:
        self.base, self.cap = base, cap
        self._clock = clock
        self._failures = 0       # escalations in this outage; 0 while the API answers
        self._epoch = 0          # escalations ever: a ticket older than this is stale
        self._until = 0.0
        self._probe_out = False
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        with self._lock:
            return self._failures > 0

    def admit(self) -> Ticket | None:
        """A ticket for a request that starts now, or None: wait (see `wait`)."""
        with self._lock:
            if self._failures == 0:
                return Ticket(self._epoch, probe=False)
            if self._probe_out or self._clock() < self._until:
                return None
            self._probe_out = True
            return Ticket(self._epoch, probe=True)

    def wait(self) -> float:
        """Seconds until `admit` may give a ticket: 0 now, math.inf while the probe is out
        (its end is the moment to look again)."""
        with self._lock:
            if self._failures == 0:
                return 0.0
            if self._probe_out:
                return math.inf
            return max(0.0, self._until - self._clock())

    def current(self, ticket: Ticket) -> bool:
        """True if no failure escalated since the ticket was given: its request may still
        start.  A request handed out before the outage was found must not start in it."""
        with self._lock:
            return ticket.epoch == self._epoch

    def failure(self, ticket: Ticket, retry_after: float | None = None) -> float:
        """The request got a "not now" answer (SPEC 6.2).  Returns the seconds until the
        next request may start.  `Retry-After` is honoured, capped like the backoff."""
        with self._lock:
            if not self._settle(ticket):
                return max(0.0, self._until - self._clock())
            now = self._clock()
            if ticket.epoch == self._epoch:  # the first failure since it started: escalate
                self._epoch += 1
                self._failures += 1
                delay = min(self.cap, self.base * 2 ** (self._failures - 1))
                delay = random.uniform(delay / 2, delay)
                self._until = now + delay
            if retry_after is not None:
                self._until = max(self._until, now + min(retry_after, self.cap))
            return max(0.0, self._until - now)

    def success(self, ticket: Ticket) -> None:
        """The API answered the request (whatever it said): it is up."""
        with self._lock:
            if not self._settle(ticket):
                return
            if ticket.epoch == self._epoch:
                self._failures = 0
                self._until = 0.0

    def release(self, ticket: Ticket) -> None:
        """The request did not start, or its outcome says nothing of the API (uncertain):
        the ticket is given back, a probe's too, and the backoff is unchanged."""
        with self._lock:
            self._settle(ticket)

    def _settle(self, ticket: Ticket) -> bool:
        """Each ticket counts once (under the lock); a probe's end lets the next one go.
        False if it was settled already."""
        if ticket.settled:
            return False
        ticket.settled = True
        if ticket.probe:
            self._probe_out = False
        return True

    def remaining(self) -> float:
        with self._lock:
            return max(0.0, self._until - self._clock())
