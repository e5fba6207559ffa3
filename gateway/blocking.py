"""Blocked items (SPEC 4.5): what a stage cannot act on yet stays where it is and is
tried again with a growing backoff, logged once when it starts and once when it clears.

Each stage keeps its own `BlockedItems`; the rows in the database are the shared view
for `jobs --blocked`, /healthz and `fax_gateway_blocked`.  A row is written only when an
item becomes blocked, changes its reason, or clears, never per try.

With `log.file_names: false` the log names only the job (or the outbox) and points to
`jobs --blocked`: an item is a path, and a reason may quote one, so neither is logged;
the database, which only the gateway's operators may read, keeps both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from gateway.names import shown
from gateway.store import Store

FIRST_RETRY = 1.0
EVENT_RETRY = 0.5  # an event in the item's folder brings its next try this close


@dataclass
class _Entry:
    outbox: str
    folder: str | None
    item: str
    reason: str
    tries: int
    next_try: float
    job_id: int | None = None


class BlockedItems:
    def __init__(self, store: Store, stage: str, log: logging.Logger,
                 cap: Callable[[str], float], clock: Callable[[], float] = time.monotonic, *,
                 file_names: bool = True) -> None:
        """`cap(outbox)` is the longest backoff for that outbox: its `rescan`."""
        self.store, self.stage, self.log, self.cap, self.clock = store, stage, log, cap, clock
        self.file_names = file_names
        self._items: dict[Hashable, _Entry] = {}

    def _logged(self, e: _Entry, what: str, reason: str | None = None) -> None:
        if self.file_names:
            text = f"{shown(e.item)}: {what} ({self.stage})" + (f": {shown(reason)}" if reason else "")
        else:
            who = f"job {e.job_id}" if e.job_id is not None else f"an item in outbox {e.outbox}"
            text = f"{who}: {what} ({self.stage})" + (": see `fax-gateway jobs --blocked`" if reason else "")
        self.log.log(logging.WARNING if reason else logging.INFO, "%s", text)

    def block(self, key: Hashable, *, outbox: str, item: str, reason: str, folder: str | None = None,
              job_id: int | None = None) -> float:
        """Record one failed try; returns when to try again (on `clock`)."""
        now = self.clock()
        e = self._items.get(key)
        if e is None:
            e = self._items[key] = _Entry(outbox, folder, item, reason, 0, now, job_id)
            self._logged(e, "blocked", reason)
            self.store.set_blocked(outbox=outbox, stage=self.stage, item=item, reason=reason, job_id=job_id)
        elif e.reason != reason:
            e.reason = reason
            self._logged(e, "still blocked, for another reason", reason)
            self.store.set_blocked(outbox=outbox, stage=self.stage, item=item, reason=reason, job_id=job_id)
        e.tries += 1
        e.next_try = now + min(self.cap(outbox), FIRST_RETRY * 2 ** (e.tries - 1))
        return e.next_try

    def clear(self, key: Hashable, what: str = "no longer blocked") -> None:
        e = self._items.pop(key, None)
        if e is not None:
            self._logged(e, f"{what} after {e.tries} tries")
            self.store.clear_blocked(outbox=e.outbox, stage=self.stage, item=e.item)

    def forget(self, key: Hashable) -> None:
        """The item is gone (deleted by its writer): nothing to report as cleared."""
        e = self._items.pop(key, None)
        if e is not None:
            self.store.clear_blocked(outbox=e.outbox, stage=self.stage, item=e.item)

    def due(self, key: Hashable, now: float | None = None) -> bool:
        e = self._items.get(key)
        return e is None or e.next_try <= (self.clock() if now is None else now)

    def next_try(self, key: Hashable) -> float | None:
        e = self._items.get(key)
        return e.next_try if e else None

    def folder_changed(self, outbox: str, folder: str) -> None:
        """An event in the folder may mean its problem was fixed: try soon."""
        soon = self.clock() + EVENT_RETRY
        for e in self._items.values():
            if e.outbox == outbox and e.folder == folder and e.next_try > soon:
                e.next_try = soon

    def earliest(self) -> float | None:
        """The soonest next try (on `clock`), or None when nothing is blocked."""
        return min((e.next_try for e in self._items.values()), default=None)

    def keys(self) -> list[Hashable]:
        return list(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
