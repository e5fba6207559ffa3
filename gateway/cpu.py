"""The daemon's threads share one CPU.

They share one interpreter lock, so they never run Python side by side anyway; on
several CPUs every hand-off of the lock crosses CPUs (a futex wake of a thread on another
CPU, whose caches are cold), and a document costs about 160 futex calls in a burst.
`fax-gateway run` keeps all its threads on the CPU it started on: measured on a 2-core
machine (benchmarks/RESULTS.md), 13% less CPU per document and a burst 20-50% faster.
What runs beside the lock still has the other CPUs: the document reader and a
notify.command are processes of their own, started with every CPU the daemon was
allowed (`all_cpus`); other programs are scheduled as before, on any CPU.

Only where Linux offers it, only when more than one CPU is allowed (systemd's
`CPUAffinity=` or `taskset` may choose the CPU), and not with FAX_GATEWAY_ONE_CPU=no.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("gateway.cpu")

OFF = ("0", "no", "false", "off")
YES = ("1", "yes", "true", "on")
_allowed: set[int] | None = None  # what the process was allowed before it kept to one CPU


def _current_cpu() -> int | None:
    """The CPU this thread last ran on (field 39 of /proc/thread-self/stat)."""
    try:
        with open("/proc/thread-self/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[36])
    except (OSError, IndexError, ValueError):
        return None


def keep_on_one_cpu() -> int | None:
    """Called before the daemon starts any thread (threads inherit it).  Returns the CPU
    chosen, or None if nothing was changed."""
    global _allowed
    if not hasattr(os, "sched_setaffinity") or os.environ.get("FAX_GATEWAY_ONE_CPU", "").lower() in OFF:
        return None
    try:
        allowed = os.sched_getaffinity(0)
        if len(allowed) < 2:
            return None
        cpu = _current_cpu()
        if cpu not in allowed:
            cpu = max(allowed)
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:  # a container that forbids it: the threads spread as before
        log.debug("threads left on every CPU: %s", exc)
        return None
    _allowed = allowed
    log.info("threads kept on CPU %d of %d: they share one interpreter lock (FAX_GATEWAY_ONE_CPU=no "
             "lets them spread)", cpu, len(allowed))
    return cpu


def other_cpu() -> tuple[int, set[int]] | None:
    """For the intake process (intakeproc.py): a CPU the daemon was allowed other than
    its threads' own, and all it was allowed; None while the threads spread."""
    if _allowed is None:
        return None
    try:
        rest = sorted(_allowed - os.sched_getaffinity(0))
    except OSError:
        return None
    return (rest[0], set(_allowed)) if rest else None


def keep_on(cpu: int, allowed: set[int]) -> None:
    """In the intake process: its threads on `cpu`, the document reader on `allowed`."""
    global _allowed
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:
        log.debug("intake's threads left where they were: %s", exc)
        return
    _allowed = allowed or None


def spread() -> None:
    """This thread may use every CPU the daemon was allowed again (a thread that only
    starts a process: the process inherits it)."""
    if _allowed is not None:
        try:
            os.sched_setaffinity(0, _allowed)
        except OSError:
            pass


@contextmanager
def all_cpus() -> Iterator[None]:
    """Around starting a process from a daemon thread: the process gets every CPU the
    daemon was allowed, the thread keeps its one."""
    if _allowed is None:
        yield
        return
    mine = os.sched_getaffinity(0)
    spread()
    try:
        yield
    finally:
        try:
            os.sched_setaffinity(0, mine)
        except OSError:
            pass
