"""The pipeline stages (intake, sending, filing) take turns instead of running at once.

Why: the three are Python threads under one interpreter lock.  Running at once, every
system call one of them makes (dozens per document: opens, renames, stats, SQLite's
writes) lets another take the interpreter lock, and the caller must wait to get it back:
two context switches per call.  On a virtual machine a switch costs more than most of
those calls; measured on a 1,000-document burst (issue 12), 73 switches per document and
a third of the daemon's CPU went to the kernel's task switching.  Taking turns, a stage
keeps the interpreter lock across its own calls and the stages switch a few times per
batch.

The turn is an optimisation, never a dependency, so that one stage can never stop the
others (SPEC 4.5):

- a stage that has held the turn for a quantum while another waits hands it on at its
  next `breathe()` (a point between two items, where it holds nothing else); the sending
  loop is served first and never waits out a quantum, so answers are recorded and the
  next requests start without delay;
- what may take long (judging a document: pypdf reads what anyone may write; a request
  to iFax made in the turn) runs `aside()`, outside the turn;
- a holder that has not reached a breathing point for LAPSE is taken to be stuck (a hung
  disk): others go ahead as if it did not hold the turn, without waiting again, until it
  breathes.  Nothing relies on turns for correctness: every stage is safe running
  alongside the others, as before.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

QUANTUM = 0.01  # seconds a stage keeps its turn while another waits (then it breathes)
LAPSE = 0.05    # seconds without a breathing point after which a holder counts as stuck


@dataclass
class _Hold:
    depth: int
    since: float  # when it took the turn (the quantum runs from here)
    alive: float  # its last breathing point (stuck after LAPSE without one)


class Turns:
    """A fair (first come, first served) turn that the pipeline stages share.  Reentrant
    in one thread.  Several threads hold it only when a holder was stuck."""

    def __init__(self, *, quantum: float = QUANTUM, lapse: float = LAPSE) -> None:
        self.quantum = quantum
        self.lapse = lapse
        self._cond = threading.Condition(threading.Lock())
        self._holders: dict[int, _Hold] = {}
        self._line: deque[int] = deque()     # threads waiting, in order of arrival
        self._first: set[int] = set()        # threads served before the others (`serve_first`)
        self.lapsed = 0                      # times a waiter went ahead of a stuck holder

    def serve_first(self) -> None:
        """The calling thread (the sending loop) goes to the front of the line, and a holder
        hands it the turn at its next breathing point without waiting out its quantum."""
        self._first.add(threading.get_ident())

    @contextmanager
    def held(self) -> Iterator[None]:
        """The turn for the block (a stage's turn, in `Stage.loop`)."""
        me = threading.get_ident()
        self._enter(me, 1)
        try:
            yield
        finally:
            self._leave(me)

    def breathe(self) -> None:
        """Between two items: hand the turn on if another stage waits and this one held it
        for a quantum (at once if the sending loop waits), and get back in line."""
        me = threading.get_ident()
        hold = self._holders.get(me)
        if hold is None:
            return
        now = time.monotonic()
        line = self._line
        if not line or (now - hold.since < self.quantum and line[0] not in self._first):
            hold.alive = now
            return
        depth = self._leave(me, whole=True)
        self._enter(me, depth)

    @contextmanager
    def aside(self) -> Iterator[None]:
        """The block runs outside the turn (if held), and the turn is taken back after it."""
        me = threading.get_ident()
        if me not in self._holders:
            yield
            return
        depth = self._leave(me, whole=True)
        try:
            yield
        finally:
            self._enter(me, depth)

    def _enter(self, me: int, depth: int) -> None:
        with self._cond:
            hold = self._holders.get(me)
            if hold is not None:
                hold.depth += depth
                return
            if self._holders or self._line:
                if me in self._first:
                    self._line.appendleft(me)
                else:
                    self._line.append(me)
                try:
                    while True:
                        now = time.monotonic()
                        live = [h.alive for h in self._holders.values() if now - h.alive < self.lapse]
                        if not live and self._line[0] == me:
                            break
                        # Woken when a holder leaves, or when the youngest holder counts as stuck.
                        self._cond.wait(max(live) + self.lapse - now if live else None)
                    if self._holders:
                        self.lapsed += 1  # every holder is stuck: go ahead without them
                finally:
                    self._line.remove(me)
                    self._cond.notify_all()  # the next in line may be first now
            now = time.monotonic()
            self._holders[me] = _Hold(depth, now, now)

    def _leave(self, me: int, *, whole: bool = False) -> int:
        """Returns the depth given up."""
        with self._cond:
            hold = self._holders.get(me)
            if hold is None:  # given up already (an exception between a leave and its enter)
                return 0
            given = hold.depth if whole else 1
            hold.depth -= given
            if hold.depth <= 0:
                del self._holders[me]
                self._cond.notify_all()
            return given
