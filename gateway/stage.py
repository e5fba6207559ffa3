"""The shape every pipeline stage shares (intake, sending, filing): `initialize`, then
`turn` again and again in its own thread until stopped, then `shutdown`.

As in huey's consumer parts, the loop never dies: an exception that escapes a turn is
logged once (quietly, with a count of repeats) and the loop carries on after a pause.
A stage contains each item's failures itself; this is the last net, not the first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING

from gateway.quietlog import Problems

if TYPE_CHECKING:
    from gateway.reload import Reload
    from gateway.turns import Turns

TURN_FAILED_PAUSE = 1.0


class Stage:
    """Subclasses set `name` and implement `turn`, returning how long to wait (seconds)
    before the next turn unless woken."""

    name = "stage"
    served_first = False  # first in line for the shared turn (turns.py): the sending loop

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.heartbeat = time.monotonic()
        self.log = logging.getLogger(f"gateway.{self.name}")
        self.problems = Problems(self.log)
        # Asked before each turn's work: a reason once the database file was deleted or
        # replaced, and then the stage starts nothing (dbguard.py; the service sets it).
        self.halted: Callable[[], str | None] = lambda: None
        # log.file_names (SPEC 3): False keeps an unexpected error's text, which may quote a
        # path, out of the log; its type and errno still say what kind of failure it was.
        self.file_names = True
        self._reload: tuple[Reload, threading.Event] | None = None
        self._reload_lock = threading.Lock()
        # The turn the pipeline stages share (turns.py; the service sets it): each turn
        # runs holding it, breathing between items and judging documents aside.
        self.turns: Turns | None = None

    # -- the three parts ------------------------------------------------------------

    def initialize(self) -> None:
        """Work left by the last run (recovery), done in the stage's own thread, after
        the daemon said READY, so that it never delays start-up."""

    def turn(self) -> float:
        raise NotImplementedError

    def holding_back(self) -> float:
        """Seconds to wait before the next turn, asked outside the shared turn: a stage that
        gives way to others (filing) does not queue for the turn only to find it should wait."""
        return 0.0

    def apply(self, change: Reload) -> None:
        """A new configuration (SIGHUP), applied in the stage's own thread between two
        turns, so that no turn ever sees half of one configuration and half of another."""

    def shutdown(self) -> None:
        """Release what the stage holds; requests under way are finished by the caller."""

    def loop(self) -> None:
        if self.turns is not None and self.served_first:
            self.turns.serve_first()
        try:
            self.initialize()
        except Exception as exc:
            self.problems.problem("initialize", "%s: recovery at start-up failed: %s", self.name,
                                  self._described(exc), exc=exc)
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            self._apply_reload()
            try:
                wait = self.holding_back()
            except Exception as exc:  # never a reason to stop: the turn goes ahead
                self.problems.problem("holding back", "%s: asking whether to wait failed: %s: %s", self.name,
                                      type(exc).__name__, self._described(exc), exc=exc)
                wait = 0.0
            if wait > 0:
                self._idle(wait)
                self._wake.clear()
                continue
            try:
                with self.turns.held() if self.turns is not None else nullcontext():
                    wait = self.turn()
            except Exception as exc:
                self.problems.problem("turn", "%s: a step failed and is tried again: %s: %s", self.name,
                                      type(exc).__name__, self._described(exc), exc=exc)
                wait = TURN_FAILED_PAUSE
            else:
                self.problems.clear("turn", "%s: working again", self.name)
            if wait > 0:
                self._idle(wait)
            self._wake.clear()

    def _idle(self, seconds: float) -> None:
        """Between two turns: wait until woken, at most `seconds`."""
        self._wake.wait(seconds)

    def breathe(self) -> None:
        """Between two items of a turn: let a waiting stage have its turn (turns.py)."""
        if self.turns is not None:
            self.turns.breathe()

    @contextmanager
    def aside(self) -> Iterator[None]:
        """What may take long (judging what anyone may write, a request to iFax) runs
        outside the shared turn."""
        if self.turns is None:
            yield
        else:
            with self.turns.aside():
                yield

    def _apply_reload(self) -> None:
        with self._reload_lock:
            pending, self._reload = self._reload, None
        if pending is None:
            return
        change, done = pending
        try:
            self.apply(change)
        except Exception as exc:  # the stage keeps what it could apply; the service logs the reload
            self.problems.problem("reload", "%s: applying the new configuration failed: %s: %s", self.name,
                                  type(exc).__name__, self._described(exc), exc=exc)
        finally:
            done.set()

    def _described(self, exc: BaseException) -> str:
        if self.file_names:
            return str(exc)
        if isinstance(exc, OSError):
            return f"[Errno {exc.errno}] {exc.strerror}"
        return "details are not logged with log.file_names: false"

    # -- running it -----------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self.loop()
        finally:
            self.shutdown()

    def stop(self, timeout: float = 10.0) -> None:
        self.request_stop()
        self.join(timeout)

    def request_stop(self) -> None:
        """Start nothing new; the loop ends after its turn (and `shutdown` runs)."""
        self._stop.set()
        self._wake.set()

    def join(self, timeout: float) -> None:
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(max(0.0, timeout))

    def reconfigure(self, change: Reload) -> threading.Event:
        """Hand the stage a new configuration; the event is set once it applied it."""
        done = threading.Event()
        with self._reload_lock:
            if self._reload is not None:
                self._reload[1].set()  # superseded by this one
            self._reload = (change, done)
        self._wake.set()
        if not self.alive():
            self._apply_reload()  # not running (yet, or any more): applied here
        return done

    def wake(self) -> None:
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stuck_for(self) -> float:
        """Seconds since the loop last began a turn."""
        return time.monotonic() - self.heartbeat
