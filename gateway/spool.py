"""Every file move the gateway makes: claiming into the outbox's private folder, filing
into `sent/` or `failed/` without overwriting, taking back for a resend, result files.

Below the configured roots (resolved once at start) nothing is followed: every folder
is opened with O_NOFOLLOW from its root down and every move is a `rename` between two
folder descriptors (SPEC 4.5).  A folder swapped for a link, or a link planted where a
folder is expected, makes the move fail with a `SpoolError` that says what to fix; it
never reads or writes outside.

Each function is safe to call again after a crash at any point inside it: a rename that
already happened is recognised (source gone, destination present with the recorded
inode or the same content) and skipped.  The caller commits its intent to the store
before calling, so a restart knows what to repeat.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from gateway.errors import SpoolError
from gateway.names import NAME_MAX, result_file_name, shown

LEGACY_JOB_DIR = ".fax-gateway"  # job folders lay here, inside the outbox, before private folders
DIR_MODE = 0o750
FILE_MODE = 0o640
PRIVATE_MODE = 0o700
RESULT_SUFFIX = ".result.json"
PATH_MAX = os.pathconf("/", "PC_PATH_MAX") if hasattr(os, "pathconf") else 4096
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NOFOLLOW_DIR = _DIR_FLAGS | os.O_NOFOLLOW


def job_dir(private: str | Path, job_id: int) -> Path:
    return Path(private) / str(job_id)


def legacy_private(outbox_path: str | Path) -> Path:
    return Path(outbox_path) / LEGACY_JOB_DIR


def _parts(rel_dir: str) -> list[str]:
    return [p for p in rel_dir.split(os.sep) if p]


# -- folders, opened without following links ---------------------------------------

@contextmanager
def open_dir(root: str | Path, rel_dir: str = "", *, create: bool = False,
             mode: int = DIR_MODE) -> Iterator[int]:
    """A descriptor of `root/rel_dir`.  `root` is a configured folder (resolved at start);
    below it, every component is opened with O_NOFOLLOW, so a link never leads out.
    With `create`, missing folders are made (mode, and the group of their parent)."""
    fd = _descend(os.open(root, _DIR_FLAGS), os.fspath(root), rel_dir, create=create, mode=mode)
    try:
        yield fd
    finally:
        os.close(fd)


def _descend(fd: int, where: str, rel_dir: str, *, create: bool, mode: int, keep: int = -1,
             made: list[str] | None = None) -> int:
    """From the folder open at `fd` (at `where`, named only in errors: a string, since
    Path objects made for every folder of every file were a twentieth of intake's time,
    issue 12) down `rel_dir`, each component opened with O_NOFOLLOW; returns the last
    one's descriptor.  Each descriptor left behind is closed, on failure too, except
    `keep` (a descriptor its owner goes on using).

    A folder made here is an entry in its parent that must reach the disk before what is
    moved into the folder counts as moved: without it a power cut can leave the folder,
    and the documents in it, unreachable (SPEC 4.4).  Its parent is synced at once, or,
    with `made`, named there (its path below `fd`) for the caller's batch to sync."""
    done: list[str] = []
    try:
        for part in _parts(rel_dir):
            where = os.path.join(where, part)
            try:
                nfd = os.open(part, _NOFOLLOW_DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, mode, dir_fd=fd)
                except FileExistsError:
                    pass
                else:
                    if made is None:
                        os.fsync(fd)
                    else:
                        made.append(os.path.join(*done) if done else "")
                nfd = _open_made(fd, part, where, mode)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _in_the_way(fd, part, where) from None
                raise
            if fd != keep:
                os.close(fd)
            fd = nfd
            done.append(part)
        return fd
    except BaseException:
        if fd != keep:
            os.close(fd)
        raise


def _open_made(parent: int, part: str, where: str | Path, mode: int) -> int:
    try:
        fd = os.open(part, _NOFOLLOW_DIR, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _in_the_way(parent, part, where) from None
        raise
    _adopt_group(parent, fd, mode | stat.S_IFDIR)
    return fd


def _in_the_way(parent: int, part: str, where: str | Path) -> SpoolError:
    st = lstat_at(parent, part)
    kind = "a link" if st is not None and stat.S_ISLNK(st.st_mode) else "a file"
    return SpoolError(f"{where} is {kind} where a folder is expected: move it away; nothing is "
                      "written through it")


def _adopt_group(parent: int, fd: int, mode: int) -> None:
    """Folders and files the gateway makes take their parent folder's group (and a
    setgid folder's setgid bit), so staff who read `sent/` can read what we add."""
    try:
        pst, st = os.fstat(parent), os.fstat(fd)
        if st.st_gid != pst.st_gid:
            os.fchown(fd, -1, pst.st_gid)
        setgid = stat.S_ISGID if stat.S_ISDIR(mode) and pst.st_mode & stat.S_ISGID else 0
        os.fchmod(fd, stat.S_IMODE(mode) | setgid)
    except OSError:
        pass  # not permitted to change group (not a member): the file stays readable by us


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def make_dirs(path: Path, stop_at: Path | None = None, *, mode: int = DIR_MODE,
              like_parent: bool = True) -> None:
    """Create a folder and its missing parents below `stop_at`, each new folder's entry
    synced in its parent: what is filed into it, or the database made in it, must not be
    lost with it at a power cut.  Start-up only: these are the administrator's paths, links
    in them are the administrator's choice.  `like_parent`: the group of its parent, as
    the gateway gives its folders; without it, as `Path.mkdir` makes them."""
    missing = []
    p = path
    while not p.exists() and p != stop_at and p.parent != p:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with open_dir(d.parent) as parent:
            try:
                os.mkdir(d.name, mode, dir_fd=parent)
            except FileExistsError:
                continue
            if like_parent:
                os.close(_open_made(parent, d.name, d, mode))
            os.fsync(parent)


def make_dirs_synced(path: Path) -> None:
    """`Path.mkdir(parents=True, exist_ok=True)` (same modes, same errors) by `make_dirs`:
    the database's folder, which SQLite does not sync in its parent."""
    make_dirs(path, mode=0o777, like_parent=False)
    if not path.is_dir():
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))


def fsync_dir(path: Path) -> None:
    """A rename is durable only once its directory is synced."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirSyncs:
    """Folders whose renames must become durable, each synced once for a whole batch of
    claims or filings (one fsync per folder, not one per file), and the steps that may
    only follow those syncs.  `run` before the batch's next commit: nothing is recorded
    as moved before its move is on disk.

    Also the batch's open roots (`opened`): each configured folder (an outbox, a private
    folder, a `sent/` or `failed/`) is opened once for the batch, not once per file and
    again for its sync (issue 12: three opens and closes per document in each of intake
    and filing).  Folders below a root are looked up from it afresh for each use, with
    O_NOFOLLOW: one renamed away during the batch is never written through (SPEC 4.5).
    A context manager: the roots are closed when the batch ends, however it ends."""

    def __init__(self) -> None:
        self._dirs: dict[tuple[str, str], None] = {}
        self._after: list[Callable[[], None]] = []
        self._roots: dict[str, int] = {}

    def __enter__(self) -> DirSyncs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _root(self, root: str | Path) -> int:
        fd = self._roots.get(str(root))
        if fd is None:
            fd = self._roots[str(root)] = os.open(root, _DIR_FLAGS)
        return fd

    @contextmanager
    def opened(self, root: str | Path, rel_dir: str = "", *, create: bool = False,
               mode: int = DIR_MODE) -> Iterator[int]:
        """As `open_dir`, from the batch's descriptor of `root`; the parent of a folder it
        makes is synced with the batch."""
        top = self._root(root)
        made: list[str] = []
        fd = _descend(top, os.fspath(root), rel_dir, create=create, mode=mode, keep=top, made=made)
        for parent in made:
            self.add(root, parent)
        try:
            yield fd
        finally:
            if fd != top:
                os.close(fd)

    def close(self) -> None:
        roots, self._roots = self._roots, {}
        for fd in roots.values():
            try:
                os.close(fd)
            except OSError:
                pass

    def add(self, root: str | Path, rel_dir: str = "") -> None:
        self._dirs[(str(root), rel_dir)] = None

    def after(self, step: Callable[[], None]) -> None:
        self._after.append(step)

    def run(self) -> None:
        dirs, self._dirs = self._dirs, {}
        for root, rel_dir in dirs:
            try:
                with self.opened(root, rel_dir) as fd:
                    os.fsync(fd)
            except FileNotFoundError:
                continue  # removed since (an emptied number folder): nothing in it to keep
        self.close()
        steps, self._after = self._after, []
        for step in steps:
            step()


def _enter_dir(stack: ExitStack, syncs: DirSyncs | None, root: str | Path, rel_dir: str = "",
               **create: Any) -> int:
    """`open_dir`, or from the batch's root (`DirSyncs.opened`), open until `stack` closes."""
    opener = syncs.opened if syncs is not None else open_dir
    return stack.enter_context(opener(root, rel_dir, **create))


# -- claiming -------------------------------------------------------------------------

def claim(outbox: str | Path, private: str | Path, job_id: int, rel_dir: str, sources: Sequence[Any],
          *, resume: bool = False, crash_hook: Any = None, syncs: DirSyncs | None = None) -> list[str]:
    """Rename the job's files from the outbox into its own folder in the private folder.

    The job's folder is made with an exclusive mkdir (an existing one means the database
    does not know it: it is never reused), unless `resume` finishes a claim a crash
    interrupted.  `sources` carry the inode seen when the claim was decided: only that
    inode is moved (a file at the same name with another inode is a new document), and
    what lies in the job's folder afterwards is checked to be it.  Returns the names that
    were not taken (gone, or replaced, before they could be).  With `syncs`, the folders
    are synced by the caller, once for its whole batch.
    """
    longest = max((len(os.fsencode(os.path.join(private, str(job_id), rel_dir, s.name))) for s in sources),
                  default=0)
    if longest >= PATH_MAX:  # refused before any folder is made, so nothing is left to undo
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), str(Path(outbox) / rel_dir))
    missing = []
    with ExitStack() as stack:
        opened = partial(_enter_dir, stack, syncs)
        src, priv = opened(outbox, rel_dir), opened(private)
        if not resume:
            try:
                os.mkdir(str(job_id), PRIVATE_MODE, dir_fd=priv)
            except FileExistsError:
                raise SpoolError(f"{job_dir(private, job_id)} already exists although job {job_id} is "
                                 "new: the database does not know it (see the README, 'A lost database')"
                                 ) from None
        dst = opened(private, os.path.join(str(job_id), rel_dir), create=True, mode=PRIVATE_MODE)
        for s in sources:
            there = lstat_at(dst, s.name)
            if there is not None:
                if there.st_ino == s.ino:
                    continue  # moved before a crash
                raise SpoolError(f"{shown(s.name)} in {job_dir(private, job_id)} is not the file that "
                                 "was claimed")
            st = lstat_at(src, s.name)
            if st is None or st.st_ino != s.ino:
                missing.append(s.name)
                continue
            try:
                os.rename(s.name, s.name, src_dir_fd=src, dst_dir_fd=dst)
            except FileNotFoundError:
                missing.append(s.name)
                continue
            moved = lstat_at(dst, s.name)
            if moved is None or moved.st_ino != s.ino:  # replaced between the check and the rename
                if moved is not None and lstat_at(src, s.name) is None:
                    os.rename(s.name, s.name, src_dir_fd=dst, dst_dir_fd=src)
                missing.append(s.name)
            if crash_hook:
                crash_hook("claim_partial")
        if syncs is None:
            os.fsync(dst)
            os.fsync(priv)
            os.fsync(src)
    if syncs is not None:
        syncs.add(private, os.path.join(str(job_id), rel_dir))
        syncs.add(private)
        syncs.add(outbox, rel_dir)
    return missing


def unclaim(outbox: str | Path, private: str | Path, job_id: int, rel_dir: str,
            sources: Sequence[Any]) -> None:
    """Undo a claim that failed part-way: every file that was moved goes back under its
    name (never over a new file of that name), then the job's folders are removed.
    Raises OSError if anything of the job is left in its folder."""
    with ExitStack() as stack:
        try:
            dst = stack.enter_context(open_dir(private, os.path.join(str(job_id), rel_dir)))
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError) and exc.errno != errno.ENAMETOOLONG:
                raise
            dst = None  # nothing was moved there
        if dst is not None:
            src = stack.enter_context(open_dir(outbox, rel_dir))
            for s in sources:
                st = lstat_at(dst, s.name)
                if st is None or st.st_ino != s.ino:
                    continue
                if lstat_at(src, s.name) is not None:
                    raise SpoolError(f"{shown(s.name)} was written again while its claim was undone")
                os.rename(s.name, s.name, src_dir_fd=dst, dst_dir_fd=src)
            os.fsync(src)
    remove_job_dir(private, job_id)
    if os.path.lexists(job_dir(private, job_id)):
        raise SpoolError(f"{job_dir(private, job_id)} could not be removed")


def remove_job_dir(private: str | Path, job_id: int, rel_dir: str | None = None) -> None:
    """Only empty folders are removed: a file left behind is never deleted.  Knowing the
    job's `rel_dir`, its folders are removed bottom-up without walking them (filing does
    this for every job); anything else there sends it the long way."""
    try:
        with open_dir(private) as priv:
            name = str(job_id)
            if rel_dir is not None and _remove_chain(priv, [name, *_parts(rel_dir)]):
                return
            if lstat_at(priv, name) is None:
                return
            for _dirpath, dirnames, _files, dfd in os.fwalk(name, topdown=False, dir_fd=priv):
                for d in dirnames:
                    try:
                        os.rmdir(d, dir_fd=dfd)
                    except OSError:
                        pass
            try:
                os.rmdir(name, dir_fd=priv)
            except OSError:
                pass
    except FileNotFoundError:
        return


def _remove_chain(priv: int, parts: list[str]) -> bool:
    """rmdir JOB/A/B, JOB/A, JOB in the private folder, each opened without following a
    link; False as soon as one is not a folder, not empty or not there."""
    fds = [priv]
    try:
        for part in parts[:-1]:
            fds.append(os.open(part, _NOFOLLOW_DIR, dir_fd=fds[-1]))
        for parent, part in zip(reversed(fds), reversed(parts), strict=True):
            os.rmdir(part, dir_fd=parent)
        return True
    except OSError:
        return False
    finally:
        for fd in fds[1:]:
            os.close(fd)


# -- names on filing ------------------------------------------------------------------

def suffixed(name: str, n: int, bases: Iterable[str]) -> str:
    """`NAME.EXT` -> `NAME-N.EXT`; a sidecar or result named after a document follows it
    (`scan.pdf.yaml` -> `scan-1.pdf.yaml`), so the files of a job stay recognisably together."""
    if n == 0:
        return name
    base = name
    for b in sorted(bases, key=len):  # the document, not its sidecar, when both match
        if name == b or name.startswith(b + "."):
            base = b
            break
    rest = name[len(base):]
    stem, dot, ext = base.rpartition(".")
    if not (dot and stem):
        stem, ext = base, ""
    tail = f"-{n}" + (f".{ext}" if ext else "") + rest
    while stem and len(os.fsencode(stem + tail)) > NAME_MAX:
        stem = stem[:-1]  # a long name keeps its suffix and extension, and fits (SPEC 4.5)
    return stem + tail


def result_name(primary: str, job_id: int) -> str:
    """`NAME.EXT.result.json`, or `<first bytes>~<job>.result.json` where that is too long."""
    return result_file_name(primary, job_id)


def choose_suffix(dest_root: str | Path, rel_dir: str, names: Sequence[str], bases: Sequence[str],
                  start: int = 0) -> int:
    """The lowest N from `start` for which no file of the job (result included) would
    overwrite one.  The caller starts after the highest N it used for the name, so a name
    filed 10,000 times costs a check or two, not 10,000."""
    try:
        with open_dir(dest_root, rel_dir) as d:
            n = start
            while any(lstat_at(d, suffixed(name, n, bases)) is not None for name in names):
                n += 1
            return n
    except FileNotFoundError:
        return 0


# -- moving, never overwriting -----------------------------------------------------------

def move_at(src: int, name: str, dst: int, new: str) -> None:
    """Rename between two folders, or copy-fsync-rename-unlink across filesystems; never
    overwrites, and safe to repeat after a crash at any point."""
    there, here = lstat_at(dst, new), lstat_at(src, name)
    if there is not None:
        if here is not None:
            if _same_content_at(src, name, dst, new):
                os.unlink(name, dir_fd=src)  # the copy finished before a crash; the unlink did not
                return
            raise SpoolError(f"{shown(new)} already exists and differs from the file being filed; "
                             "left both in place")
        return
    if here is None:
        return
    try:
        os.rename(name, new, src_dir_fd=src, dst_dir_fd=dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_across(src, name, dst, new, here)
        os.unlink(name, dir_fd=src)


def _copy_across(src: int, name: str, dst: int, new: str, st: os.stat_result) -> None:
    inp = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=src)
    try:
        def fill(out: int) -> None:
            while True:
                chunk = os.read(inp, 1 << 20)
                if not chunk:
                    break
                _write_all(out, chunk)
        _write_atomically_at(dst, new, fill, stat.S_IMODE(st.st_mode) or FILE_MODE)
        os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst, follow_symlinks=False)
    finally:
        os.close(inp)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_atomically_at(dir_fd: int, name: str, fill: Any, mode: int, *, sync_dir: bool = True) -> None:
    """Write beside the target, fsync, rename over it, sync the folder (unless the caller
    syncs it later): a reader sees no file or the complete one, never a part."""
    tmp = f".fax-gateway-tmp-{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                 dir_fd=dir_fd)
    try:
        try:
            fill(fd)
            _adopt_group(dir_fd, fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    if sync_dir:
        os.fsync(dir_fd)


def _same_content_at(a_dir: int, a: str, b_dir: int, b: str) -> bool:
    try:
        fa = os.open(a, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=a_dir)
    except OSError:
        return False
    try:
        fb = os.open(b, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=b_dir)
    except OSError:
        os.close(fa)
        return False
    try:
        if os.fstat(fa).st_size != os.fstat(fb).st_size:
            return False
        while True:
            x, y = os.read(fa, 1 << 20), os.read(fb, 1 << 20)
            if x != y:
                return False
            if not x:
                return True
    finally:
        os.close(fa)
        os.close(fb)


def move_file(src: Path, dst: Path) -> None:
    """`move_at` between two paths (their folders are opened as they are)."""
    with open_dir(src.parent) as s, open_dir(dst.parent) as d:
        move_at(s, src.name, d, dst.name)


def result_json(document: dict[str, Any]) -> bytes:
    """A result file's text: JSON indented by two, UTF-8.  orjson writes it in 1 us where
    json took 45 (issue 12: one per document); what orjson cannot write (an integer beyond
    64 bits, say an odd `code` from iFax) is written by json, in the same shape.  orjson
    writes a float in its shortest form (0.00001, not 1e-05) and an infinite one as null
    (json wrote the invalid Infinity)."""
    try:
        return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()


def write_result_at(dir_fd: int, name: str, document: dict[str, Any], *, sync_dir: bool = True) -> None:
    """Atomic: a reader of sent/ sees no result file or a complete one, never half."""
    data = result_json(document)
    _write_atomically_at(dir_fd, name, lambda fd: _write_all(fd, data), FILE_MODE, sync_dir=sync_dir)


def write_result(path: Path, document: dict[str, Any]) -> None:
    with open_dir(path.parent) as d:
        write_result_at(d, path.name, document)


# -- filing and taking back -------------------------------------------------------------

def file_job(*, private: str | Path, job_id: int, rel_dir: str, names: Sequence[str],
             bases: Sequence[str], dest_root: str | Path, suffix: int, result_name: str,
             result: Callable[[list[str]], dict[str, Any]], crash_hook: Any = None,
             syncs: DirSyncs | None = None) -> list[str]:
    """Move the job's files to `dest_root/rel_dir/` under their suffixed names, then write
    the result file (`result(names as filed)`), then remove the job's folder.  A symbolic
    link is never filed: it is removed (its result records what it pointed at).  Returns
    the names as filed.  With `syncs`, the destination is synced by the caller once for
    its whole batch, and the job's folder removed only after that (and the roots are
    opened once for the batch: `DirSyncs.opened`)."""
    if not Path(dest_root).is_dir():  # a denied or dead folder raises as itself
        raise SpoolError(f"{dest_root} does not exist; the job waits until it is back")
    filed = []
    with ExitStack() as stack:
        opened = partial(_enter_dir, stack, syncs)
        dst = opened(dest_root, rel_dir, create=True)
        try:
            src: int | None = opened(private, os.path.join(str(job_id), rel_dir))
        except FileNotFoundError:
            src = None  # moved and removed before a crash: only the result is left to write
        for name in names:
            new = suffixed(name, suffix, bases)
            here = lstat_at(src, name) if src is not None else None
            if here is not None and stat.S_ISLNK(here.st_mode):
                os.unlink(name, dir_fd=src)
                continue
            if src is not None and (here is not None or lstat_at(dst, new) is not None):
                move_at(src, name, dst, new)
                filed.append(new)
            elif src is None and lstat_at(dst, new) is not None:
                filed.append(new)
            if crash_hook:
                crash_hook("filing")
        if syncs is None:
            os.fsync(dst)
        write_result_at(dst, suffixed(result_name, suffix, bases), result(filed), sync_dir=syncs is None)
    if syncs is None:
        remove_job_dir(private, job_id, rel_dir)
    else:
        syncs.add(dest_root, rel_dir)
        syncs.after(lambda: remove_job_dir(private, job_id, rel_dir))
    return filed


def filed_paths(dest_root: Path, rel_dir: str, names: Sequence[str], bases: Sequence[str],
                suffix: int) -> list[Path]:
    return [dest_root / rel_dir / suffixed(n, suffix, bases) for n in names]


def unfile(*, private: str | Path, job_id: int, rel_dir: str, names: Sequence[str],
           bases: Sequence[str], dest_root: Path, suffix: int, result_name: str,
           crash_hook: Any = None) -> list[str]:
    """Take a finished job's files back from failed/ into its private folder (under their
    original names) to send them again, and remove its result file.  Safe to repeat.
    Returns the names found in neither place."""
    missing = []
    with open_dir(private, os.path.join(str(job_id), rel_dir), create=True, mode=PRIVATE_MODE) as held, \
            open_dir(dest_root, rel_dir) as filed_dir:
        for name in names:
            filed = suffixed(name, suffix, bases)
            if lstat_at(held, name) is not None and lstat_at(filed_dir, filed) is None:
                continue
            if lstat_at(filed_dir, filed) is None:
                missing.append(name)
                continue
            move_at(filed_dir, filed, held, name)
            if crash_hook:
                crash_hook("unfiling")
        os.fsync(held)
        result = suffixed(result_name, suffix, bases)
        if lstat_at(filed_dir, result) is not None:
            os.unlink(result, dir_fd=filed_dir)
            os.fsync(filed_dir)
    return missing


# -- retention: deleting what the gateway filed ---------------------------------------------

RESULT_READ_MAX = 1 << 20  # a result file is a few KB; anything larger is not one of ours


def delete_filed(*, dest_root: Path, rel_dir: str, files: Sequence[tuple[str, str | None]],
                 result: str, job_id: int, crash_hook: Any = None) -> tuple[int, int]:
    """Delete a filed job from `dest_root/rel_dir/` (retention.py): each of `files` (the
    name as filed, its sha256 when filed) only while it is still that file, then the result
    file only when nothing of the job was kept (it explains what is left) and it is still
    the job's, then the folders left empty.  Reached without following a link, like every
    other move.  Safe to repeat: what is already gone is skipped.  Returns (deleted, kept)."""
    deleted = kept = 0
    try:
        with open_dir(dest_root, rel_dir) as d:
            for name, sha in files:
                outcome = _delete_if_unchanged(d, name, sha)
                if outcome is True:
                    deleted += 1
                    if crash_hook:
                        crash_hook("retention")
                elif outcome is False:
                    kept += 1
            if kept == 0:
                outcome = _delete_result_if_ours(d, result, job_id)
                deleted += outcome is True
                kept += outcome is False
            os.fsync(d)
    except FileNotFoundError:
        return deleted, kept  # its folder is gone: nothing of it is left to delete
    remove_empty_dirs(dest_root, rel_dir)
    return deleted, kept


def _delete_if_unchanged(dir_fd: int, name: str, sha256: str | None) -> bool | None:
    """True: deleted; False: kept (changed, replaced, a link, not a plain file, or never
    hashed); None: not there.  The name is unlinked only if it still names the inode whose
    content was just hashed."""
    if sha256 is None:
        return False if lstat_at(dir_fd, name) is not None else None
    fd = _open_plain(dir_fd, name)
    if fd is None or fd is False:
        return fd
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            return False
        digest = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
    finally:
        os.close(fd)
    if digest.hexdigest() != sha256:
        return False
    return _unlink_if_same(dir_fd, name, opened)


def _delete_result_if_ours(dir_fd: int, name: str, job_id: int) -> bool | None:
    """The result file goes only if it is still a plain file that says it is this job's."""
    fd = _open_plain(dir_fd, name, max_size=RESULT_READ_MAX)
    if fd is None or fd is False:
        return fd
    try:
        opened = os.fstat(fd)
        data = os.read(fd, RESULT_READ_MAX + 1)
    finally:
        os.close(fd)
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    if not isinstance(doc, dict) or doc.get("job") != job_id:
        return False
    return _unlink_if_same(dir_fd, name, opened)


def _open_plain(dir_fd: int, name: str, max_size: int | None = None) -> int | bool | None:
    """A descriptor of a plain file with one link (and at most `max_size` bytes), opened
    without following a link; False for anything else, None if it is not there."""
    st = lstat_at(dir_fd, name)
    if st is None:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or (max_size is not None and st.st_size > max_size):
        return False
    try:
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError:
        return False


def _unlink_if_same(dir_fd: int, name: str, opened: os.stat_result) -> bool | None:
    now = lstat_at(dir_fd, name)
    if now is None:
        return None
    if (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns) != \
            (opened.st_dev, opened.st_ino, opened.st_size, opened.st_mtime_ns):
        return False  # replaced or written to since it was read
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    return True


def remove_empty_dirs(root: Path, rel_dir: str) -> None:
    """The job's folders below `root`, deepest first, each only while empty (rmdir never
    removes anything else, and never follows a link: a link is not a directory to it).
    `root` itself stays.  A folder that filing is about to use may go: filing makes it
    again when its move fails (it is retried)."""
    parts = _parts(rel_dir)
    while parts:
        try:
            with open_dir(root, os.path.join(*parts[:-1]) if len(parts) > 1 else "") as parent:
                os.rmdir(parts[-1], dir_fd=parent)
        except (OSError, SpoolError):
            return  # not empty, gone, or not ours to walk: stop here
        parts = parts[:-1]


def files_left(*, dest_root: Path, rel_dir: str, names: Sequence[str]) -> bool | None:
    """Whether any of `names` lies in `dest_root/rel_dir/` (lstat only, nothing opened);
    None when that cannot be told (the root is missing, a link in the way)."""
    if not dest_root.is_dir():
        return None
    try:
        with open_dir(dest_root, rel_dir) as d:
            return any(lstat_at(d, n) is not None for n in names)
    except FileNotFoundError:
        return False
    except (OSError, SpoolError):
        return None
