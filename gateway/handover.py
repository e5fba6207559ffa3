"""Documents handed from intake to the sending stage, as intake read and judged them.

Why: intake has every document's bytes in hand when it accepts a job, and the job's
first submission used to open the job's folder and read them all again (issue 12: eight
system calls a document, each a chance for the interpreter lock to change hands, in the
sending loop).  The bytes judged are the bytes sent: nothing can change in between.

Held until each of the job's recipients has ended (a retry after an outage, another
recipient, carries the same bytes), or until the operator asks for a resend, which takes
the documents back from failed/ and reads them there (a fix made there goes out).
Bounded: at most `limit` bytes, the oldest dropped first (a job canceled before it was
sent, a burst larger than the limit).  A job whose bytes are not held is read from its
folder, as every job is after a restart: nothing here outlives the process.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

HANDOVER_BYTES = 32 << 20  # documents held for their sends at most


class Handover:
    """A bounded FIFO of job id -> its documents' bytes; intake puts, sending gets."""

    def __init__(self, limit: int = HANDOVER_BYTES) -> None:
        self.limit = limit
        # job id -> (its documents, their size, its recipients that have not ended yet)
        self._held: OrderedDict[int, tuple[tuple[bytes, ...], int, int]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()  # intake's thread puts, the sending loop's gets

    def put(self, job_id: int, documents: Sequence[bytes], recipients: int = 1) -> None:
        size = sum(len(d) for d in documents)
        if size > self.limit:
            return  # read from the job's folder when it is sent
        with self._lock:
            self._drop(job_id)
            while self._held and self._size + size > self.limit:
                self._drop(next(iter(self._held)))
            self._held[job_id] = (tuple(documents), size, max(1, recipients))
            self._size += size

    def get(self, job_id: int) -> tuple[bytes, ...] | None:
        """The job's documents while they are held."""
        with self._lock:
            entry = self._held.get(job_id)
            return entry[0] if entry is not None else None

    def release(self, job_id: int) -> None:
        """One recipient of the job ended: once all have, its documents go."""
        with self._lock:
            entry = self._held.get(job_id)
            if entry is None:
                return
            documents, size, left = entry
            if left <= 1:
                self._drop(job_id)
            else:
                self._held[job_id] = (documents, size, left - 1)

    def discard(self, job_id: int) -> None:
        """The job's documents go now (an operator's resend reads them from failed/)."""
        with self._lock:
            self._drop(job_id)

    def _drop(self, job_id: int) -> None:
        entry = self._held.pop(job_id, None)
        if entry is not None:
            self._size -= entry[1]

    @property
    def size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return len(self._held)
