"""Logging that stays quiet while the same thing keeps going wrong (SPEC 4.5, "Logs stay quiet").

Every stage runs a loop that retries what failed. Logged naively, a full disk or a
folder the gateway may not write to would add a line, or a whole traceback, every
turn, and bury the one line a person needs. A :class:`Problems` tracker logs a
problem once when it starts, a single line with a count every few minutes while
it lasts, and once when it clears; tracebacks only when the log level is debug.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, replace

__all__ = ["ProblemInfo", "Problems", "traceback_if_debug"]


def traceback_if_debug(logger: logging.Logger) -> bool:
    """Pass as ``exc_info=`` where an unexpected exception is logged once.

    A traceback helps a developer and frightens an operator, who gets the one-line
    message; at ``log.level: debug`` both get the traceback.
    """
    return logger.isEnabledFor(logging.DEBUG)


@dataclass(frozen=True)
class ProblemInfo:
    """What is known about one active problem; times are on the tracker's clock."""

    message: str
    level: int
    since: float
    last_seen: float
    last_logged: float
    repeats: int
    """Reports after the first, over the whole life of the problem."""
    unlogged: int
    """Reports since the last line written about it."""


def _span(seconds: float) -> str:
    if seconds < 90:
        count, unit = round(seconds), "second"
    elif seconds < 90 * 60:
        count, unit = round(seconds / 60), "minute"
    elif seconds < 36 * 3600:
        count, unit = round(seconds / 3600), "hour"
    else:
        count, unit = round(seconds / 86400), "day"
    return f"{count} {unit}" + ("" if count == 1 else "s")


def _times(count: int) -> str:
    return "1 time" if count == 1 else f"{count} times"


def _render(message: str, args: tuple[object, ...]) -> str:
    if not args:
        return message
    try:
        if len(args) == 1 and isinstance(args[0], Mapping) and args[0]:
            return message % args[0]  # as logging does, for "%(name)s" messages
        return message % args
    except (TypeError, ValueError, KeyError):
        # A wrong format string must not turn a problem report into a new problem.
        return f"{message} {args!r}"


class Problems:
    """Problems of one or more stage loops, each under a key, logged once per start and clear.

    The key says what counts as "the same problem": callers put into it whatever
    should give a new line when it changes (the item, and the kind of failure if
    that matters), and leave out what varies from try to try (free bytes, errno
    text). While a key is active only the count grows; a summary line is written
    at the next report after ``summary_every`` seconds, so a problem that is no
    longer reported costs nothing. One tracker may be shared by several threads.
    """

    def __init__(self, logger: logging.Logger, summary_every: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if summary_every < 0:
            raise ValueError("summary_every must not be negative")
        self._logger = logger
        self._summary_every = summary_every
        self._clock = clock
        self._lock = threading.Lock()
        self._active: dict[Hashable, ProblemInfo] = {}

    def problem(self, key: Hashable, message: str, *args: object, exc: BaseException | None = None,
                level: int = logging.ERROR) -> bool:
        """Report that ``key`` went wrong (again); logs only when a line is due.

        Returns True when the problem is new (or back after a clear), so the
        caller can do what happens once per problem: mark an item blocked, set a
        gauge. ``exc`` adds its traceback at debug level only; the one-line cause
        belongs in ``message``, which the caller writes.
        """
        text = _render(message, args)
        with self._lock:
            now = self._clock()
            old = self._active.get(key)
            if old is None:
                self._active[key] = ProblemInfo(text, level, now, now, now, 0, 0)
                line = None
            else:
                unlogged = old.unlogged + 1
                due = now - old.last_logged >= self._summary_every
                line = (unlogged, now - old.last_logged) if due else None
                self._active[key] = replace(
                    old, message=text, level=level, last_seen=now, repeats=old.repeats + 1,
                    last_logged=now if due else old.last_logged, unlogged=0 if due else unlogged)
                if not due:
                    return False
        exc_info = exc if exc is not None and self._logger.isEnabledFor(logging.DEBUG) else None
        if line is None:
            # Logged as rendered, so that a bad format string is caught once, in _render.
            self._logger.log(level, text, exc_info=exc_info, stacklevel=2)
            return True
        count, elapsed = line
        self._logger.log(level, "%s (repeated %s in the last %s)", text, _times(count), _span(elapsed),
                         exc_info=exc_info, stacklevel=2)
        return False

    def clear(self, key: Hashable, message: str | None = None, *args: object) -> bool:
        """Say that ``key`` is fine again; returns False, logging nothing, if it was not active.

        Loops call this after every success, so it must be cheap and silent when
        nothing was wrong. The INFO line tells how long the problem lasted and how
        often it was seen, which the summaries alone would not.
        """
        with self._lock:
            info = self._active.pop(key, None)
            now = self._clock()
        if info is None:
            return False
        if message is not None:
            lasted = _span(now - info.since)
            if info.repeats:
                self._logger.info("%s (after %s, seen %s)", _render(message, args), lasted,
                                  _times(info.repeats + 1), stacklevel=2)
            else:
                self._logger.info("%s (after %s)", _render(message, args), lasted, stacklevel=2)
        return True

    def active(self) -> dict[Hashable, ProblemInfo]:
        """A snapshot, for status pages and tests, that later reports do not change."""
        with self._lock:
            return dict(self._active)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._active

    def __len__(self) -> int:
        with self._lock:
            return len(self._active)
