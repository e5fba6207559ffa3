"""An Event that a selector can wait on too.

Why: the sending loop waits for the answers to the requests it made itself (their
sockets) and for other threads' news (an answer a worker brought, a job accepted, a
stop) in one `select`.  `threading.Event` has no descriptor; this one writes a byte to a
pipe when it is set, and only then, so a set that nobody waits for costs one write.
"""

from __future__ import annotations

import os
import threading


class Waker:
    """`threading.Event`'s set / clear / is_set / wait, plus `fileno` for a selector."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        return self._read

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        if not self._event.is_set():
            # The byte first: a byte the loop finds in the pipe is never there without the
            # event set right after it, so a select never spins on a stale byte.
            try:
                os.write(self._write, b"\0")
            except (BlockingIOError, OSError):  # full (a byte is there already) or closed
                pass
            self._event.set()

    def clear(self) -> None:
        # The event first: a set() between the two leaves it set (seen by the next wait's
        # is_set) even if its byte is drained here.
        self._event.clear()
        try:
            while os.read(self._read, 512):
                pass
        except (BlockingIOError, OSError):
            pass

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def __del__(self) -> None:
        # Closed only once nothing can set it: a set() after a close could write its byte
        # into whatever file took the descriptor's number meanwhile.
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except OSError:
                pass
