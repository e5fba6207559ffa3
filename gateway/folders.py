"""Is each outbox's folders still there, on the filesystem it started on? (SPEC 4.1)

A network share that is unmounted leaves an empty mount point behind: writing there
would file documents where nobody looks, and the outbox would look empty.  So the
guard remembers which folders were mount points when first seen, and an outbox whose
folder is missing, or whose mount point is no longer mounted, is paused until it is
back.  A remount may bring another device number, so the test is "is it still a mount
point", not "is it still the same device".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gateway.config import OutboxConfig
from gateway.private import PrivateFolders


class FolderGuard:
    def __init__(self) -> None:
        self._mounted: dict[Path, bool] = {}
        self._inode: dict[Path, int] = {}
        self.private = PrivateFolders()

    def problem(self, ob: OutboxConfig) -> str | None:
        """None while the outbox can be used, else the reason it cannot."""
        for role, path in (("outbox", ob.path), ("sent", ob.sent), ("failed", ob.failed)):
            try:
                st = os.stat(path)
            except OSError:
                return f"outbox {ob.name}: the {role} folder {path} is missing"
            was_mount = self._mounted.get(path)
            if was_mount is None:  # asked once: ismount resolves the whole path (a dozen calls)
                was_mount = self._mounted[path] = os.path.ismount(path)
            elif was_mount and not os.path.ismount(path):
                return (f"outbox {ob.name}: the {role} folder {path} is no longer mounted (an unmounted "
                        "share?); nothing is written there until it is back")
            self._inode.setdefault(path, st.st_ino)
        return self.private.problem(ob)

    def known(self) -> dict[str, Any]:
        """What it learned (which folders are mount points, the private folders prepared),
        for `assume`."""
        return {"mounted": dict(self._mounted), "private": self.private.known()}

    def assume(self, known: dict[str, Any]) -> None:
        """What the daemon's guard learned at its start (intakeproc.py): an intake process
        started again while a share is unmounted still knows the empty folder for what it
        is, and a private folder replaced meanwhile for an impostor."""
        self._mounted.update(known["mounted"])
        self.private.assume(known["private"])

    def replaced(self, path: Path) -> bool:
        """True once if the folder is another one than last time (deleted and recreated):
        its inotify watch watches the old one."""
        try:
            ino = os.stat(path).st_ino
        except OSError:
            return False
        old = self._inode.get(path)
        self._inode[path] = ino
        return old is not None and old != ino
