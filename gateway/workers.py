"""A fixed set of named threads taking calls from one queue.

What the gateway's pools need and no more: ThreadPoolExecutor's futures, its idle
semaphore and its lock cost 19 us per call on the machines we measure on, twice per
document for the HTTP workers (issue 12), and nothing here waits for a result (each call
hands back its own outcome).  A call that raises is logged and the thread goes on.

The threads are daemon threads: one stuck for ever (a handler on a hung database read)
must not hold up a stop that systemd times, nor a process that never closed its pool.
Whoever needs the calls under way finished waits for them (`shutdown`).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("gateway.workers")


class WorkersClosed(RuntimeError):
    """A call handed to workers that were closed: it never runs."""


class Workers:
    def __init__(self, n: int, name: str) -> None:
        self.name = name
        self._q: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True)
                         for i in range(n)]
        for t in self._threads:
            t.start()

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Runs `fn(*args)` in the next free thread; raises WorkersClosed after `close`."""
        with self._lock:
            if self._closed:
                raise WorkersClosed(f"{self.name}: the workers were closed")
            self._q.put((fn, args))

    def close(self) -> None:
        """No new call is taken; the threads end once the calls already handed out ran."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for _ in self._threads:
                self._q.put(None)

    def join(self, timeout: float | None = None) -> None:
        for t in self._threads:
            t.join(timeout)

    def shutdown(self) -> None:
        """Close, and wait for the calls under way."""
        self.close()
        self.join()

    def _work(self) -> None:
        while (item := self._q.get()) is not None:
            fn, args = item
            try:
                fn(*args)
            except BaseException:  # each call handles its own failures; this is the last net,
                log.exception("%s: a call failed", self.name)  # and the thread stays
