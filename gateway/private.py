"""Each outbox's private folder (SPEC 4.4, 4.5): where claimed files wait until filed.

It lies outside the watched tree (`.fax-gateway-<outbox>/` beside the outbox by
default) and out of the writers' reach: made by the gateway, owned by its user, mode
0700.  Before use it is checked to be that folder still (not a link, same owner and
mode, the inode seen at start); a replaced one pauses the outbox and nothing in the
impostor is read.  At start a probe file is renamed into it, so that a private folder
on another filesystem, or one systemd's sandbox makes read-only, pauses the outbox
with a reason that names the fix instead of failing claim after claim.

Job folders from before private folders (`OUTBOX/.fax-gateway/<job>/`) are moved here
at start, each committed in the database right after its rename.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from gateway.config import OutboxConfig
from gateway.spool import PRIVATE_MODE, fsync_dir, job_dir, legacy_private
from gateway.store import Store

log = logging.getLogger("gateway.private")


class PrivateFolders:
    def __init__(self) -> None:
        # private folder -> (device, inode) once prepared; by folder, not by outbox name, so
        # that an outbox given another folder by a reload has the new one prepared
        self._identity: dict[Path, tuple[int, int]] = {}
        self._lock = threading.Lock()  # asked by the intake, sending and filing threads

    def known(self) -> dict[Path, tuple[int, int]]:
        """The folders prepared so far, as `assume` takes them."""
        with self._lock:
            return dict(self._identity)

    def assume(self, known: dict[Path, tuple[int, int]]) -> None:
        """Folders the daemon prepared at its start (intakeproc.py): an intake process
        started again checks them against those, as if it had prepared them itself, so a
        folder that disappeared or was replaced stays a problem until the daemon restarts."""
        with self._lock:
            self._identity.update(known)

    def problem(self, ob: OutboxConfig) -> str | None:
        """None while the outbox's private folder can be used, else what to fix.  The
        first call (and every call until one succeeds) prepares it."""
        with self._lock:
            if ob.private not in self._identity:
                return self._prepare(ob)
            return self._inspect(ob, self._identity[ob.private])

    def _prepare(self, ob: OutboxConfig) -> str | None:
        p = ob.private
        try:
            os.mkdir(p, PRIVATE_MODE)
            fsync_dir(p.parent)  # claimed documents wait in it: its entry must survive a power cut
            log.info("outbox %s: created its private folder %s", ob.name, p)
        except FileExistsError:
            pass
        except OSError as exc:
            return (f"outbox {ob.name}: its private folder {p} cannot be created ({exc.strerror}): set "
                    f"outboxes[].private to a folder on the outbox's filesystem that the gateway may write, "
                    f"or add {p.parent} to the unit's ReadWritePaths=")
        problem = self._inspect(ob, None)
        if problem is None:
            problem = self._probe(ob)
        if problem is None:
            st = os.lstat(p)
            self._identity[p] = (st.st_dev, st.st_ino)
        return problem

    def _inspect(self, ob: OutboxConfig, identity: tuple[int, int] | None) -> str | None:
        p = ob.private
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return (f"outbox {ob.name}: its private folder {p} disappeared; nothing is claimed or filed "
                    "until the daemon is restarted (it makes the folder again)")
        except OSError as exc:
            return f"outbox {ob.name}: its private folder {p} cannot be checked ({exc.strerror})"
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            what = "a link" if stat.S_ISLNK(st.st_mode) else "not a folder"
            return (f"outbox {ob.name}: its private folder {p} is {what}: remove it and restart the "
                    "daemon, which makes the folder itself")
        if st.st_uid != os.geteuid():
            return (f"outbox {ob.name}: its private folder {p} belongs to user {st.st_uid}, not to the "
                    "gateway's user: remove it and restart the daemon, which makes the folder itself")
        if identity is not None and (st.st_dev, st.st_ino) != identity:
            return (f"outbox {ob.name}: its private folder {p} was replaced by another folder; nothing in "
                    "it is read: put the original back, or restart the daemon to use this one")
        if identity is None and stat.S_IMODE(st.st_mode) != PRIVATE_MODE:
            os.chmod(p, PRIVATE_MODE)  # ours, at start: put the mode right
        elif stat.S_IMODE(st.st_mode) & 0o077:
            return (f"outbox {ob.name}: its private folder {p} was made reachable by others (mode "
                    f"{stat.S_IMODE(st.st_mode):o}): chmod 700 {p}")
        return None

    def _probe(self, ob: OutboxConfig) -> str | None:
        """One rename from the outbox into the private folder, as a claim does."""
        name = f".fax-gateway-probe-{os.getpid()}"
        src, dst = ob.path / name, ob.private / name
        try:
            fd = os.open(src, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            os.close(fd)
        except FileNotFoundError:
            return None  # the outbox folder itself is missing: the folder guard says so
        except OSError as exc:
            return (f"outbox {ob.name}: the gateway cannot write in {ob.path} ({exc.strerror}): give its "
                    "user write permission there, and list it in the unit's ReadWritePaths=")
        try:
            os.rename(src, dst)
        except OSError as exc:
            os.unlink(src)
            if exc.errno == errno.EXDEV:
                return (f"outbox {ob.name}: its private folder {ob.private} is on another filesystem than "
                        f"{ob.path}: set outboxes[].private to a folder on the outbox's filesystem")
            return (f"outbox {ob.name}: files cannot be moved from {ob.path} into its private folder "
                    f"{ob.private} ({exc.strerror}): give the gateway's user write permission on both, and "
                    "list both in the unit's ReadWritePaths=")
        os.unlink(dst)
        return None


def move_legacy_jobs(store: Store, ob: OutboxConfig,
                     crash_hook: Callable[[str], None] = lambda point: None) -> int:
    """Job folders left in `OUTBOX/.fax-gateway/` by an older version move into the private
    folder; each job's new place is committed right after its rename, and a rename that
    already happened (a crash in between) is recognised.  Returns how many moved."""
    old_root = legacy_private(ob.path)
    moved = 0
    for job_id in store.job_ids_with_legacy_private(ob.name):
        old, new = job_dir(old_root, job_id), job_dir(ob.private, job_id)
        try:
            if os.path.lexists(old) and not os.path.lexists(new):
                os.rename(old, new)
                moved += 1
                crash_hook("migrate")
            where = new if os.path.lexists(new) or not os.path.lexists(old) else old_root
            store.set_private_root(job_id, str(ob.private if where == new else old_root))
        except OSError as exc:
            log.error("job %s: its folder %s could not be moved into %s (%s); it stays there", job_id, old,
                      ob.private, exc.strerror)
            store.set_private_root(job_id, str(old_root))
    if moved:
        log.info("outbox %s: moved %d job folder(s) from %s into %s", ob.name, moved, old_root, ob.private)
    try:
        os.rmdir(old_root)  # only once empty
    except OSError:
        pass
    return moved
