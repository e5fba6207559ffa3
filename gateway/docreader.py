"""Documents are read (validated, their pages counted) in a process of their own, with a
deadline (SPEC 4.5: counting the pages of a document stops within a few seconds).

Why a process: pypdf and Pillow read what anyone may write to an outbox, and a document
can be built to be slow to read (an object stream of hundreds of thousands of objects
takes pypdf seconds per megabyte; a compressed one, far longer per megabyte on disk).
A thread cannot be stopped; a process can.  A document not read within READ_DEADLINE
is rejected as too_large, the process is killed and a new one started for the next
document, so one such file holds intake up for a few seconds, not minutes.

Also: the parsing runs outside the daemon's interpreter lock, its memory is capped where
the system allows it, it gets no descriptor of the daemon's and not the API key's
environment variable, and what it answers is JSON, never a pickle: a reader that a
document took over could not make the daemon run anything.
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
from collections.abc import Sequence

from gateway.doctypes import EXTENSIONS, MIME_TYPES, DocInfo, inspect_document
from gateway.errors import REASONS, Rejected

READ_DEADLINE = 5.0     # seconds a document may take to be read, from its last byte handed over
START_DEADLINE = 30.0   # seconds the reader may take to start (imports on a slow disk)
MEMORY_CAP = 2 << 30    # bytes of address space the reader may use, where setrlimit is allowed
_HEADER = struct.Struct(">Qq")  # document length, max_pages (-1: none)
_READY = b"ready\n"


class ReaderUnavailable(Exception):
    """The reader process could not be started or talked to: not the document's fault,
    so the document is judged again later instead of rejected."""


class DocumentReader:
    """One reader process, started when first needed and kept for the next documents.
    Thread-safe: one document at a time."""

    def __init__(self, *, deadline: float = READ_DEADLINE) -> None:
        self.deadline = deadline
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._pending = b""  # what the reader sent beyond the last answer (nothing, normally)
        self._ready = False  # the reader said it is ready
        self.killed = 0      # readers killed because a document took too long (tests, metrics)

    def inspect(self, data: bytes, max_pages: int | None = None) -> DocInfo:
        """As `doctypes.inspect_document`, in the reader process; raises Rejected, or
        ReaderUnavailable when it could not ask."""
        [answer] = self.inspect_all([(data, max_pages)])
        if isinstance(answer, Rejected):
            raise answer
        return answer

    def inspect_all(self, documents: Sequence[tuple[bytes, int | None]]) -> list[DocInfo | Rejected]:
        """Each (data, max_pages) as `inspect` answers it, in order.  Handed over without
        waiting for the answers before (a batch of claims costs one round trip, not one
        per document); each document's deadline runs from when the reader could start on
        it.  Raises ReaderUnavailable when the reader cannot be started."""
        answers: list[DocInfo | Rejected] = []
        died_on: int | None = None  # the document the reader last died on
        with self._lock:
            while len(answers) < len(documents):
                proc = self._started()
                try:
                    self._exchange(proc, documents, answers)
                except TimeoutError:
                    self._stop(kill=True)
                    self.killed += 1
                    answers.append(Rejected("too_large", f"it could not be read within {self.deadline:g} s; "
                                            "a document built to be slow to read is refused"))
                except EOFError:
                    # The reader died on this document (a crash in a decoder, its memory cap):
                    # once may be chance, twice is the document.
                    self._stop(kill=True)
                    if died_on == len(answers):
                        answers.append(Rejected("unsupported_type", "it made the document reader stop"))
                    else:
                        died_on = len(answers)
        return answers

    def close(self) -> None:
        with self._lock:
            self._stop(kill=False)

    # -- the process ----------------------------------------------------------------

    def start(self) -> None:
        """Start the reader now, without waiting for it (the daemon, at start-up: its first
        document then does not wait for Python and pypdf to load)."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._spawn()

    def _started(self) -> subprocess.Popen[bytes]:
        """The reader, ready for a document."""
        if self._proc is None or self._proc.poll() is not None:
            self._spawn()
        proc = self._proc
        assert proc is not None
        if not self._ready:
            try:
                line = self._line(proc, time.monotonic() + START_DEADLINE)
            except (TimeoutError, EOFError, OSError):
                line = b""
            if line + b"\n" != _READY:
                self._stop(kill=True)
                raise ReaderUnavailable("the document reader did not start (is the gateway installed "
                                        "for the Python that runs it?)")
            self._ready = True
        return proc

    def _spawn(self) -> None:
        self._stop(kill=True)
        env = {k: v for k, v in os.environ.items() if k != "IFAX_API_KEY"}
        try:
            # cwd /, -P: nothing importable from wherever the daemon was started (an outbox?).
            proc = subprocess.Popen([sys.executable, "-P", "-m", "gateway.docreader"], cwd="/", env=env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, close_fds=True)
        except OSError as exc:
            raise ReaderUnavailable("the document reader could not be started: "
                                    f"{exc.strerror or exc}") from None
        self._proc, self._pending, self._ready = proc, b"", False

    def _stop(self, *, kill: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if kill:
                proc.kill()
            else:
                assert proc.stdin is not None
                proc.stdin.close()  # the reader ends at the end of its input
            proc.wait(2.0)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        finally:
            for pipe in (proc.stdin, proc.stdout):
                try:
                    if pipe is not None:
                        pipe.close()
                except OSError:
                    pass

    def _exchange(self, proc: subprocess.Popen[bytes], documents: Sequence[tuple[bytes, int | None]],
                  answers: list[DocInfo | Rejected]) -> None:
        """Write the documents from len(answers) on while reading answers, until all are
        answered.  TimeoutError: the document answered next took too long; EOFError: the
        reader ended (or broke the protocol) before answering it."""
        assert proc.stdin is not None and proc.stdout is not None
        fd_in, fd_out = proc.stdin.fileno(), proc.stdout.fileno()
        os.set_blocking(fd_in, False)
        poller = select.poll()
        poller.register(fd_out, select.POLLIN)
        sent, out = len(answers), memoryview(b"")
        since = time.monotonic()  # the reader's last sign of progress on the next answer
        while len(answers) < len(documents):
            if not out and sent < len(documents):
                data, max_pages = documents[sent]
                out = memoryview(_HEADER.pack(len(data), -1 if max_pages is None else max_pages) + data)
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
                        raise EOFError("the reader ended") from None
                    if not out:
                        sent += 1
                        poller.unregister(fd_in)
                        if sent == len(answers) + 1:
                            since = time.monotonic()  # all of it is there: its clock starts
                elif event & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    chunk = os.read(fd_out, 65536)
                    if not chunk:
                        raise EOFError("the reader ended")
                    self._pending += chunk
                    while b"\n" in self._pending and len(answers) < sent:
                        line, self._pending = self._pending.split(b"\n", 1)
                        answers.append(_decoded(_parsed(line)))
                        since = time.monotonic()

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
            if not chunk:
                raise EOFError("the reader ended")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return line


def _parsed(line: bytes) -> dict[str, object]:
    try:
        answer = json.loads(line)
    except ValueError:
        raise EOFError("not an answer") from None
    if not isinstance(answer, dict):
        raise EOFError("not an answer")
    return answer


def _decoded(answer: dict[str, object]) -> DocInfo | Rejected:
    """The reader's answer, checked: only known reason codes and kinds are believed."""
    code, detail = answer.get("rejected"), answer.get("detail")
    if isinstance(code, str) and code in REASONS:
        return Rejected(code, detail if isinstance(detail, str) else None)
    kind, pages = answer.get("kind"), answer.get("pages")
    if isinstance(kind, str) and kind in EXTENSIONS and isinstance(pages, int) and pages > 0:
        return DocInfo(kind=kind, extension=EXTENSIONS[kind], mime=MIME_TYPES[kind], pages=pages)
    return Rejected("unsupported_type", "the document reader gave no usable answer")


# -- the reader process ---------------------------------------------------------------

def _read_exactly(stream: object, n: int) -> bytes | None:
    data = stream.read(n)  # type: ignore[attr-defined]
    return data if len(data) == n else None


def _serve() -> None:
    """Read documents from stdin, answer one JSON line each on stdout, until stdin ends."""
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, resource.getrlimit(resource.RLIMIT_AS)[1]))
    except (ImportError, OSError, ValueError):
        pass  # not allowed here (systemd's SystemCallFilter=~@resources): the deadline still holds
    try:
        import pypdf  # noqa: F401  (loaded before the first document, not while it waits)
    except ImportError:
        pass
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(_READY)
    stdout.flush()
    while True:
        header = _read_exactly(stdin, _HEADER.size)
        if header is None:
            return
        size, max_pages = _HEADER.unpack(header)
        data = _read_exactly(stdin, size)
        if data is None:
            return
        try:
            info = inspect_document(data, None if max_pages < 0 else max_pages)
            answer: dict[str, object] = {"kind": info.kind, "pages": info.pages}
        except Rejected as exc:
            answer = {"rejected": exc.reason_code, "detail": exc.detail}
        except MemoryError:
            answer = {"rejected": "too_large", "detail": "it needs more memory to read than a fax may"}
        del data
        stdout.write(json.dumps(answer).encode() + b"\n")
        stdout.flush()


if __name__ == "__main__":
    _serve()
