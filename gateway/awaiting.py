"""Requests the sending loop made itself, awaiting their answers (issue 12).

Why: a request handed to a worker thread costs two hand-overs of the interpreter lock
(to the worker, and its answer back to the loop) and the worker's own wake-ups, which
on one core were a sixth of the gateway's CPU per document.  Written without waiting on
an idle keep-alive connection (`httpconn.Connections.start`), a request's answer is read
here, in the loop's own thread, as it comes; the loop waits for answers and for its
other news (`Waker`) in one `select`.
"""

from __future__ import annotations

import selectors
import time
from typing import Generic, TypeVar

from gateway.httpconn import Answer, AnswerBroken, Pending, TransportError
from gateway.waker import Waker

Owner = TypeVar("Owner")


class Awaiting(Generic[Owner]):
    """Each request's answer read as its socket becomes readable, each with its own
    deadline (the socket timeout `post` would have had).  Single-threaded: the loop's."""

    def __init__(self, waker: Waker) -> None:
        self._selector = selectors.DefaultSelector()
        self._selector.register(waker, selectors.EVENT_READ, None)
        self._waker = waker
        self._owners: dict[Pending, Owner] = {}

    def __len__(self) -> int:
        return len(self._owners)

    def add(self, pending: Pending, owner: Owner) -> None:
        self._selector.register(pending, selectors.EVENT_READ, pending)
        self._owners[pending] = owner

    def wait(self, timeout: float) -> list[tuple[Owner, Answer | TransportError | Pending]]:
        """Waits at most `timeout` (0: only looks) for an answer, an expiry or the waker;
        returns what ended: the answer, the error, or the request for `Pending.complete`."""
        ended: list[tuple[Owner, Answer | TransportError | Pending]] = []
        now = time.monotonic()
        if self._owners:
            timeout = min(timeout, max(0.0, min(p.deadline for p in self._owners) - now))
        if self._waker.is_set():
            timeout = 0.0
        for key, _ in self._selector.select(max(0.0, timeout)):
            pending = key.data
            if pending is None:  # the waker: the caller looks at what it says
                continue
            try:
                outcome = pending.read()
            except Exception as exc:  # one request's surprise never stops the others
                pending.close()
                outcome = AnswerBroken(f"{type(exc).__name__}: {exc}"[:200])
            if outcome is not None:
                ended.append((self._take(pending), outcome))
                pending.release()  # unwatched first: a worker may take the connection at once
        now = time.monotonic()
        for pending in [p for p in self._owners if p.deadline <= now]:
            ended.append((self._take(pending), pending.expired()))
        return ended

    def _take(self, pending: Pending) -> Owner:
        self._selector.unregister(pending)
        return self._owners.pop(pending)

    def close(self) -> None:
        """What is still awaited is given up: its connections closed."""
        for pending in list(self._owners):
            self._take(pending)
            pending.close()
        self._selector.close()
