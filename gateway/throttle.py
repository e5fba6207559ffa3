"""Request pacing shared by every API call: `requests_per_minute`, and one backoff for
the whole API after a "not now" answer (SPEC 6.1, 6.2)."""

from __future__ import annotations

import random
import threading
import time


class RateLimiter:
    """Token bucket: bursts up to a second's worth of requests, then the configured rate."""

    def __init__(self, per_minute: int, *, clock=time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self._tokens = self.capacity
        self._clock = clock
        self._stamp = clock()
        self._lock = threading.Lock()

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Blocks until a request may start; False if `stop` was set meanwhile."""
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return True
                wait = (1 - self._tokens) / self.rate
            if stop is not None:
                if stop.wait(wait):
                    return False
            else:
                time.sleep(wait)


class Backoff:
    """Exponential backoff with jitter, one for the whole API.  Capped at 30 s so that
    the queue starts draining within a minute of the API's return."""

    def __init__(self, *, base: float = 1.0, cap: float = 30.0, clock=time.monotonic) -> None:
        self.base, self.cap = base, cap
        self._clock = clock
        self._failures = 0
        self._until = 0.0
        self._lock = threading.Lock()

    def failure(self, retry_after: float | None = None) -> float:
        with self._lock:
            self._failures += 1
            delay = min(self.cap, self.base * 2 ** (self._failures - 1))
            delay = random.uniform(delay / 2, delay)
            if retry_after is not None:
                delay = max(delay, min(retry_after, self.cap))  # drain within a minute of return
            self._until = max(self._until, self._clock() + delay)
            return delay

    def success(self) -> None:
        with self._lock:
            self._failures = 0

    def remaining(self) -> float:
        with self._lock:
            return max(0.0, self._until - self._clock())
