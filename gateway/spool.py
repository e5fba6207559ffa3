"""Every file move the gateway makes: claiming into `.fax-gateway/<job>/`, filing into
`sent/` or `failed/` without overwriting, and writing result files.

Each function is safe to call again after a crash at any point inside it: a rename that
already happened is recognised (source gone, destination present) and skipped.  The
caller commits its intent to the store before calling, so a restart knows what to repeat.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from gateway.errors import SpoolError
from gateway.names import NAME_MAX, result_file_name

JOB_DIR = ".fax-gateway"
DIR_MODE = 0o750
FILE_MODE = 0o640
RESULT_SUFFIX = ".result.json"
PATH_MAX = os.pathconf("/", "PC_PATH_MAX") if hasattr(os, "pathconf") else 4096


def job_dir(outbox_path: str | Path, job_id: int) -> Path:
    return Path(outbox_path) / JOB_DIR / str(job_id)


def make_dirs(path: Path, stop_at: Path) -> None:
    """Create `path` and its missing parents below `stop_at` with mode 0750 and the group
    of their parent folder, so staff who can read `sent/` can read what we add there."""
    missing = []
    p = path
    while not p.exists() and p != stop_at and p.parent != p:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            continue
        _adopt_parent_group(d, DIR_MODE)


def _adopt_parent_group(path: Path, mode: int) -> None:
    try:
        parent_gid = os.stat(path.parent).st_gid
        st = os.lstat(path)
        if st.st_gid != parent_gid:
            os.chown(path, -1, parent_gid)
        os.chmod(path, mode | (stat.S_ISGID if stat.S_ISDIR(st.st_mode) and
                                _is_setgid(path.parent) else 0))
    except OSError:
        pass  # not permitted to change group (not a member): the file stays readable by us


def _is_setgid(path: Path) -> bool:
    try:
        return bool(os.stat(path).st_mode & stat.S_ISGID)
    except OSError:
        return False


def fsync_dir(path: Path) -> None:
    """A rename is durable only once its directory is synced."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def claim(outbox_path: str | Path, job_id: int, rel_dir: str, sources: Sequence[Any],
          crash_hook: Any = None) -> list[str]:
    """Rename the job's files from the outbox into its own folder.

    `sources` carry the inode seen when the claim was decided: a file at the same name
    with another inode is a new document (a reprint) and is left for a later job.
    Returns the names that were not found (gone before they could be taken).
    """
    outbox = Path(outbox_path)
    src_dir = outbox / rel_dir
    dst_dir = job_dir(outbox, job_id) / rel_dir
    longest = max((len(os.fsencode(dst_dir / s.name)) for s in sources), default=0)
    if longest >= PATH_MAX:  # refused before any folder is made, so nothing is left to undo
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), str(src_dir))
    make_dirs(dst_dir, outbox)
    missing = []
    for s in sources:
        src, dst = src_dir / s.name, dst_dir / s.name
        if os.path.lexists(dst):
            continue  # moved before a crash
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            missing.append(s.name)
            continue
        if st.st_ino != s.ino:
            missing.append(s.name)
            continue
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            missing.append(s.name)
        if crash_hook:
            crash_hook("claim_partial")
    fsync_dir(dst_dir)
    fsync_dir(src_dir)
    return missing


def unclaim(outbox_path: str | Path, job_id: int, rel_dir: str, sources: Sequence[Any]) -> None:
    """Undo a claim that failed part-way: every file that was moved goes back under its
    name (never over a new file of that name), then the job's folders are removed.
    Raises OSError if anything of the job is left in its folder."""
    outbox = Path(outbox_path)
    src_dir = outbox / rel_dir
    dst_dir = job_dir(outbox, job_id) / rel_dir
    for s in sources:
        src, dst = src_dir / s.name, dst_dir / s.name
        try:
            os.lstat(dst)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                continue  # the folder could not even be named: nothing was moved there
            raise
        if os.path.lexists(src):
            raise SpoolError(f"{src} was written again while its claim was undone")
        os.rename(dst, src)
    remove_job_dir(outbox, job_id)
    if os.path.lexists(job_dir(outbox, job_id)):
        raise SpoolError(f"{job_dir(outbox, job_id)} could not be removed")
    fsync_dir(src_dir)


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


def choose_suffix(dest_dir: Path, names: Sequence[str], bases: Sequence[str]) -> int:
    """The lowest N for which no file of the job (result included) would overwrite one."""
    n = 0
    while True:
        if not any(os.path.lexists(dest_dir / suffixed(name, n, bases)) for name in names):
            return n
        n += 1


def move_file(src: Path, dst: Path) -> None:
    """Rename, or copy-fsync-rename-unlink across filesystems; never overwrites."""
    if os.path.lexists(dst):
        if os.path.lexists(src):
            if _same_content(src, dst):
                os.unlink(src)  # the copy finished before a crash; the unlink did not
                return
            raise SpoolError(f"{dst} already exists and differs from {src}; left both in place")
        return
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        def copy(out: Any, tmp: str) -> None:
            with open(src, "rb") as inp:
                shutil.copyfileobj(inp, out, 1 << 20)
            shutil.copystat(src, tmp)

        _write_atomically(dst, copy)
        os.unlink(src)


def _write_atomically(path: Path, fill: Any, mode: int | None = None) -> None:
    """Write beside the target, fsync, rename over it, sync the folder: a reader sees the
    old state or the complete new file, never a part."""
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".fax-gateway-tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            fill(out, tmp)
            out.flush()
            os.fsync(out.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def _same_content(a: Path, b: Path) -> bool:
    try:
        if os.path.getsize(a) != os.path.getsize(b):
            return False
        with open(a, "rb") as fa, open(b, "rb") as fb:
            while True:
                x, y = fa.read(1 << 20), fb.read(1 << 20)
                if x != y:
                    return False
                if not x:
                    return True
    except OSError:
        return False


def write_result(path: Path, document: dict[str, Any]) -> None:
    """Atomic: a reader of sent/ sees no result file or a complete one, never half."""
    data = (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()
    _write_atomically(path, lambda out, _tmp: out.write(data), FILE_MODE)
    _adopt_parent_group(path, FILE_MODE)


def file_job(*, outbox_path: str | Path, job_id: int, rel_dir: str, names: Sequence[str],
             bases: Sequence[str], dest_root: Path, suffix: int, result_name: str,
             result: dict[str, Any], crash_hook: Any = None) -> list[str]:
    """Move the job's files to `dest_root/rel_dir/` under their suffixed names, then write
    the result file, then remove the job's folder.  Returns the names as filed."""
    if not dest_root.is_dir():
        raise SpoolError(f"{dest_root} does not exist; the job waits until it is back")
    dest_dir = dest_root / rel_dir
    make_dirs(dest_dir, dest_root)
    _check_folder_path(dest_root, rel_dir)
    src_dir = job_dir(outbox_path, job_id) / rel_dir
    filed = []
    for name in names:
        new = suffixed(name, suffix, bases)
        src, dst = src_dir / name, dest_dir / new
        if os.path.lexists(src) or os.path.lexists(dst):
            move_file(src, dst)
            filed.append(new)
        if crash_hook:
            crash_hook("filing")
    fsync_dir(dest_dir)
    write_result(dest_dir / suffixed(result_name, suffix, bases), result)
    remove_job_dir(outbox_path, job_id)
    return filed


def _check_folder_path(root: Path, rel_dir: str) -> None:
    """A file (or a link) where a folder of the job's path is expected: say which, and
    what to do, instead of a bare 'Not a directory'."""
    p = root
    for part in [x for x in rel_dir.split(os.sep) if x]:
        p = p / part
        try:
            st = os.lstat(p)
        except OSError:
            return
        if not stat.S_ISDIR(st.st_mode):
            kind = "a link" if stat.S_ISLNK(st.st_mode) else "a file"
            raise SpoolError(f"{p} is {kind} where a folder is expected: move it away and the job is "
                             "filed there")


def remove_job_dir(outbox_path: str | Path, job_id: int) -> None:
    """Only empty folders are removed: a file left behind is never deleted."""
    root = job_dir(outbox_path, job_id)
    if not root.exists():
        return
    for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda t: -len(t[0])):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass


def filed_paths(dest_root: Path, rel_dir: str, names: Sequence[str], bases: Sequence[str],
                suffix: int) -> list[Path]:
    return [dest_root / rel_dir / suffixed(n, suffix, bases) for n in names]


def unfile(*, outbox_path: str | Path, job_id: int, rel_dir: str, names: Sequence[str],
           bases: Sequence[str], dest_root: Path, suffix: int, result_name: str,
           crash_hook: Any = None) -> list[str]:
    """Take a finished job's files back from failed/ into .fax-gateway/<job>/ (under their
    original names) to send them again, and remove its result file.  Safe to repeat.
    Returns the names found in neither place."""
    held = job_dir(outbox_path, job_id) / rel_dir
    make_dirs(held, Path(outbox_path))
    missing = []
    for name, filed in zip(names, filed_paths(dest_root, rel_dir, names, bases, suffix), strict=True):
        src, dst = filed, held / name
        if os.path.lexists(dst) and not os.path.lexists(src):
            continue
        if not os.path.lexists(src):
            missing.append(name)
            continue
        move_file(src, dst)
        if crash_hook:
            crash_hook("unfiling")
    fsync_dir(held)
    result = dest_root / rel_dir / suffixed(result_name, suffix, bases)
    if os.path.lexists(result):
        os.unlink(result)
        fsync_dir(result.parent)
    return missing

