"""Documents are read (validated, their pages counted) in a process of their own, with a
deadline (SPEC 4.5: counting the pages of a document stops within a few seconds).

Why a process: pypdf and Pillow read what anyone may write to an outbox, and a document
can be built to be slow to read (an object stream of hundreds of thousands of objects
takes pypdf seconds per megabyte; a compressed one, far longer per megabyte on disk).
A thread cannot be stopped; a process can.  A document not read within READ_DEADLINE
is rejected as too_large, the process is killed and a new one started for the next
document.  A caller with a batch gives a budget, and documents are no longer started
once it is spent (intake judges the rest in later turns, its heartbeat beating between).

Also: the parsing runs outside the daemon's interpreter lock, its memory is capped where
the system allows it, it gets none of the daemon's descriptors and neither the API key's
environment variable nor the credentials directory, and it answers in JSON lines that
carry the number of the document they answer, never a pickle.  It still runs as the
daemon's user: this is a deadline and a wall between a parser's failures and the
daemon, not a sandbox.
"""

from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Sequence

from gateway.cpu import all_cpus
from gateway.doctypes import EXTENSIONS, MIME_TYPES, DocInfo, inspect_document
from gateway.errors import REASONS, Rejected

READ_DEADLINE = 5.0     # seconds a document may take to be read, from when the reader can start on it
START_DEADLINE = 30.0   # seconds the reader may take to start (imports on a slow disk)
MEMORY_CAP = 2 << 30    # bytes of address space the reader may use, where setrlimit is allowed
MAX_ANSWER = 64 << 10   # bytes of one answer line; more is a reader that broke the protocol
AHEAD = 2               # documents handed over and not yet answered, at most (bounds a cut batch)
_HEADER = struct.Struct(">QqQ")  # document length, max_pages (-1: none), its number
_READY = b"ready\n"
_HIDDEN = ("IFAX_API_KEY", "CREDENTIALS_DIRECTORY")  # never in the reader's environment


class ReaderUnavailable(Exception):
    """The reader process could not be started or talked to: not the document's fault,
    so the document is judged again later instead of rejected."""


class ReaderFailed(ReaderUnavailable):
    """The reader met an error that is not the document's (a library missing, a bug):
    judged again later, with this reason."""


Answer = DocInfo | Rejected | ReaderFailed


class _Broken(Exception):
    """The reader ended, or answered out of turn: it is replaced."""


class DocumentReader:
    """One reader process, started with the daemon (`start`) or when first needed, and
    kept for the next documents.  Thread-safe: one batch at a time."""

    def __init__(self, *, deadline: float = READ_DEADLINE) -> None:
        self.deadline = deadline
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._pending = b""  # what the reader sent beyond the last answer read
        self._ready = False  # the reader said it is ready
        self._number = 0     # of the last document handed over, echoed in its answer
        self.killed = 0      # readers killed because a document took too long (tests, metrics)

    def inspect(self, data: bytes, max_pages: int | None = None) -> DocInfo:
        """As `doctypes.inspect_document`, in the reader process; raises Rejected, or
        ReaderUnavailable when it could not ask."""
        [answer] = self.inspect_all([(data, max_pages)])
        if isinstance(answer, Exception):
            raise answer
        return answer

    def inspect_all(self, documents: Sequence[tuple[bytes, int | None]], *, budget: float | None = None,
                    groups_at: Collection[int] = ()) -> list[Answer]:
        """Each (data, max_pages) as `inspect` answers it, in order.  Handed over a few
        ahead of the answers (AHEAD), so a batch costs about one round trip, not one per
        document; each document's deadline runs from when the reader could start on it.

        `groups_at`: where each group of documents (a job's) begins, the first excepted.
        Once one document of a group is refused for its time (or for the reader dying on
        it), the rest of the group is not read: the group is refused anyway.  With
        `budget` (seconds), no group is started once it is spent, and the answers end
        there.  Raises ReaderUnavailable when the reader cannot be started."""
        answers: list[Answer] = []
        died_on: int | None = None  # the document the reader last died on
        until = None if budget is None else time.monotonic() + budget
        limit = [len(documents)]
        with self._lock:
            while len(answers) < limit[0]:
                proc = self._started()
                try:
                    self._exchange(proc, documents, answers, until, groups_at, limit)
                    continue
                except TimeoutError:
                    self._stop()
                    self.killed += 1
                    answers.append(Rejected("too_large", f"it could not be read within {self.deadline:g} s; "
                                            "a document built to be slow to read is refused"))
                except _Broken:
                    # The reader died on this document (a crash in a decoder) or broke the
                    # protocol: once may be chance, twice is the document.
                    self._stop()
                    if died_on != len(answers):
                        died_on = len(answers)
                        continue
                    answers.append(Rejected("unsupported_type", "it made the document reader stop"))
                except BaseException:
                    self._stop()  # its unread answers must not answer the next batch
                    raise
                while len(answers) < limit[0] and len(answers) not in groups_at:
                    answers.append(Rejected("unsupported_type", "not read: another document of the job was "
                                            "refused first"))
        return answers

    def start(self) -> None:
        """Start the reader now, without waiting for it (the daemon, at start-up: its first
        document then does not wait for Python and pypdf to load)."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._spawn()

    def close(self) -> None:
        """Killed, not asked to end: between batches (the lock) it holds nothing worth
        finishing, and one still loading pypdf would make the daemon's stop wait for that
        (some 0.3 s; a test suite starts and stops hundreds of daemons)."""
        with self._lock:
            self._stop()

    # -- the process ----------------------------------------------------------------

    def _started(self) -> subprocess.Popen[bytes]:
        """The reader, ready for a document."""
        if self._proc is None or self._proc.poll() is not None:
            self._spawn()
        proc = self._proc
        assert proc is not None
        if not self._ready:
            try:
                line = self._line(proc, time.monotonic() + START_DEADLINE)
            except (TimeoutError, _Broken, OSError):
                line = b""
            if line + b"\n" != _READY:
                self._stop()
                raise ReaderUnavailable("the document reader did not start (is the gateway installed "
                                        "for the Python that runs it?)")
            self._ready = True
        return proc

    def _spawn(self) -> None:
        self._stop()
        env = {k: v for k, v in os.environ.items() if k not in _HIDDEN}
        try:
            # cwd /, -P: nothing importable from wherever the daemon was started (an outbox?).
            # A session of its own: a Ctrl-C meant for the daemon does not end it mid-batch;
            # it ends when the daemon closes it (or when its input ends: the daemon died).
            # Every CPU the daemon may use: it reads beside the daemon's threads (cpu.py).
            with all_cpus():
                proc = subprocess.Popen([sys.executable, "-P", "-m", "gateway.docreader"], cwd="/", env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
        except OSError as exc:
            raise ReaderUnavailable("the document reader could not be started: "
                                    f"{exc.strerror or exc}") from None
        self._proc, self._pending, self._ready = proc, b"", False

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        self._pending, self._ready = b"", False
        if proc is None:
            return
        try:
            proc.kill()
            proc.wait()
        except OSError:
            pass
        finally:
            for pipe in (proc.stdin, proc.stdout):
                try:
                    if pipe is not None:
                        pipe.close()
                except OSError:
                    pass

    def _exchange(self, proc: subprocess.Popen[bytes], documents: Sequence[tuple[bytes, int | None]],
                  answers: list[Answer], until: float | None, groups_at: Collection[int],
                  limit: list[int]) -> None:
        """Write the documents from len(answers) on while reading answers, until all up
        to limit[0] are answered (lowered to a group's start once the budget is spent).
        TimeoutError: the document answered next took too long; _Broken: the reader
        ended, or answered out of turn, before answering it."""
        assert proc.stdin is not None and proc.stdout is not None
        fd_in, fd_out = proc.stdin.fileno(), proc.stdout.fileno()
        os.set_blocking(fd_in, False)
        poller = select.poll()
        poller.register(fd_out, select.POLLIN)
        first = len(answers)        # answers[first + k] answers the k-th document written now
        base = self._number
        sent, out = first, memoryview(b"")
        since = time.monotonic()  # the reader's last sign of progress on the next answer
        while len(answers) < limit[0]:
            if not out and sent < limit[0] and sent - len(answers) < AHEAD:
                if until is not None and sent in groups_at and time.monotonic() >= until:
                    limit[0] = sent  # the budget is spent: the rest waits for a later turn
                    continue
                data, max_pages = documents[sent]
                self._number += 1
                out = memoryview(_HEADER.pack(len(data), -1 if max_pages is None else max_pages, self._number)
                                 + data)
                poller.register(fd_in, select.POLLOUT)
            left = since + self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            for fd, event in poller.poll(left * 1000):
                if fd == fd_in:
                    try:
                        out = out[os.write(fd_in, out):]
                    except BlockingIOError:
                        continue
                    except OSError:  # EPIPE: it ended
                        raise _Broken("the reader ended") from None
                    if not out:
                        sent += 1
                        poller.unregister(fd_in)
                        if sent == len(answers) + 1:
                            since = time.monotonic()  # all of it is there: its clock starts
                elif event & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    chunk = os.read(fd_out, 65536)
                    if not chunk:
                        raise _Broken("the reader ended")
                    self._pending += chunk
                    while b"\n" in self._pending:
                        line, self._pending = self._pending.split(b"\n", 1)
                        expected = base + 1 + len(answers) - first
                        if len(answers) >= sent:
                            raise _Broken("an answer to nothing asked")
                        answers.append(_decoded(_parsed(line, expected)))
                        since = time.monotonic()
                    if len(self._pending) > MAX_ANSWER:
                        raise _Broken("an answer too long")

    def _line(self, proc: subprocess.Popen[bytes], deadline: float) -> bytes:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                raise TimeoutError
            chunk = os.read(fd, 65536)
            if not chunk or len(self._pending) > MAX_ANSWER:
                raise _Broken("the reader ended")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return line


def _parsed(line: bytes, number: int) -> dict[str, object]:
    """An answer line, which must name the document it answers."""
    try:
        answer = json.loads(line)
    except (ValueError, RecursionError):
        raise _Broken("not an answer") from None
    if not isinstance(answer, dict) or answer.get("n") != number:
        raise _Broken("an answer out of turn")
    return answer


def _decoded(answer: dict[str, object]) -> Answer:
    """The reader's answer, checked: only known reason codes and kinds are believed."""
    code, detail = answer.get("rejected"), answer.get("detail")
    if isinstance(code, str) and code in REASONS:
        return Rejected(code, detail[:500] if isinstance(detail, str) else None)
    error = answer.get("error")
    if isinstance(error, str):
        return ReaderFailed(f"the document reader failed: {error[:200]}")
    kind, pages = answer.get("kind"), answer.get("pages")
    if isinstance(kind, str) and kind in EXTENSIONS and isinstance(pages, int) and pages > 0:
        return DocInfo(kind=kind, extension=EXTENSIONS[kind], mime=MIME_TYPES[kind], pages=pages)
    return Rejected("unsupported_type", "the document reader gave no usable answer")


# -- the reader process ---------------------------------------------------------------

def _read_exactly(stream: object, n: int) -> bytes | None:
    data = stream.read(n)  # type: ignore[attr-defined]
    return data if len(data) == n else None


def _serve() -> None:
    """Read documents from stdin, answer one JSON line each, until stdin ends.  Answers go
    to a descriptor of their own: whatever a library prints goes where stderr goes."""
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, resource.getrlimit(resource.RLIMIT_AS)[1]))
    except (ImportError, OSError, ValueError):
        pass  # not allowed here (systemd's SystemCallFilter=~@resources): the deadline still holds
    try:
        import pypdf  # noqa: F401  (loaded before the first document, not while it waits)
    except ImportError:
        pass  # said for each PDF, as an error that is not the document's
    stdin = sys.stdin.buffer
    answers.write(_READY)
    answers.flush()
    while True:
        header = _read_exactly(stdin, _HEADER.size)
        if header is None:
            return
        size, max_pages, number = _HEADER.unpack(header)
        data = _read_exactly(stdin, size)
        if data is None:
            return
        answer: dict[str, object] = {"n": number}
        try:
            info = inspect_document(data, None if max_pages < 0 else max_pages)
            answer.update(kind=info.kind, pages=info.pages)
        except Rejected as exc:
            answer.update(rejected=exc.reason_code, detail=exc.detail)
        except MemoryError:
            answer.update(rejected="too_large", detail="it needs more memory to read than a fax may")
        except Exception as exc:  # not the document's doing (a library missing, a bug): asked again later
            answer.update(error=f"{type(exc).__name__}: {exc}"[:200])
        del data
        answers.write(json.dumps(answer).encode() + b"\n")
        answers.flush()


if __name__ == "__main__":
    _serve()
