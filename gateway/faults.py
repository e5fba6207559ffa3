"""Crash points for the project's kill-and-restart tests.

With FAX_GATEWAY_CRASH_AT=<point> in its environment the daemon kills itself with SIGKILL
the first time it reaches that point, exactly where a power cut would hurt most.  It does
nothing otherwise; it exists so that the tests can prove the recovery of each step.
"""

from __future__ import annotations

import os
import signal

_AT = os.environ.get("FAX_GATEWAY_CRASH_AT")  # read once: crash_point runs several times per document
_ALSO: int | None = None  # the daemon, when this is its intake process (intakeproc.py)


def kill_also(pid: int) -> None:
    """In the intake process: a crash point kills the daemon too, as a power cut would."""
    global _ALSO
    _ALSO = pid


def crash_point(name: str) -> None:
    if _AT == name:
        if _ALSO is not None:
            os.kill(_ALSO, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
