"""The pipeline stages (intake, sending, filing) take turns instead of running at once.

Why: the three are Python threads under one interpreter lock.  Running at once, every
system call one of them makes (dozens per document: opens, renames, stats, SQLite's
writes) lets another take the interpreter lock, and the caller must wait to get it back:
two context switches per call.  On a virtual machine a switch costs more than most of
those calls; measured on a 1,000-document burst (issue 12), 73 switches per document and
a third of the daemon's CPU went to the kernel's task switching.  Taking turns, a stage
keeps the interpreter lock across its own calls and the stages switch a few times per
batch: 42 switches per document, a seventh less CPU.

The turn is an optimisation, never a dependency, so that one stage can never stop the
others (SPEC 4.5):

- a stage that has held the turn for a quantum while another waits hands it on at its
  next `breathe()` (a point between two items, where it holds nothing else);
- what may take long on content from the outbox (judging a document: pypdf reads what
  anyone may write) runs `aside()`, outside the turn;
- a stage waiting longer than LAPSE (the holder is stuck: a hung disk, a slow fsync)
  goes ahead without its turn, as if there were no turns.  Nothing relies on turns for
  correctness: every stage is safe running alongside the others, as before.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

QUANTUM = 0.01   # seconds a stage keeps its turn while another waits (then it breathes)
LAPSE = 0.05     # seconds a stage waits at most for its turn before it goes ahead anyway


class Turns:
    """A fair (first come, first served) turn that the pipeline stages share.  Reentrant
    in one thread.  Several threads hold it only when waiters went ahead after LAPSE."""

    def __init__(self, *, quantum: float = QUANTUM, lapse: float = LAPSE) -> None:
        self.quantum = quantum
        self.lapse = lapse
        self._cond = threading.Condition(threading.Lock())
        self._holders: dict[int, list[float]] = {}  # thread -> [depth, since]
        self._line: deque[int] = deque()             # threads waiting, in order of arrival
        self.lapsed = 0                              # times a waiter went ahead (for the benchmark)

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
        for a quantum; back in line behind it."""
        me = threading.get_ident()
        hold = self._holders.get(me)
        if hold is None or not self._line or time.monotonic() - hold[1] < self.quantum:
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
                hold[0] += depth
                return
            if self._holders or self._line:
                self._line.append(me)
                deadline = time.monotonic() + self.lapse
                try:
                    while self._holders or self._line[0] != me:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            self.lapsed += 1  # the holder is stuck: go ahead without the turn
                            break
                        self._cond.wait(left)
                finally:
                    self._line.remove(me)
                    self._cond.notify_all()  # the next in line may be first now
            self._holders[me] = [depth, time.monotonic()]

    def _leave(self, me: int, *, whole: bool = False) -> int:
        """Returns the depth given up."""
        with self._cond:
            hold = self._holders[me]
            given = int(hold[0]) if whole else 1
            hold[0] -= given
            if hold[0] <= 0:
                del self._holders[me]
                self._cond.notify_all()
            return given
