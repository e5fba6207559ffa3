"""Documents handed from intake to the sending stage, as intake read and judged them.

Why: intake has every document's bytes in hand when it accepts a job, and the job's
first submission used to open the job's folder and read them all again (issue 12: eight
system calls a document, each a hand-off of the interpreter lock, about a tenth of the
sending loop's work in a burst).  The bytes judged are the bytes sent, so nothing can
change in between.

Held until the job's recipient ends (a retry after an outage sends the same bytes), and
bounded: at most `limit` bytes, the oldest dropped first (a job canceled before it was
sent, a burst larger than the limit).  Whatever is not held is read from
the job's folder as before, which is also what happens after a restart: nothing here
is needed for correctness, and nothing here outlives the process.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

HANDOVER_BYTES = 32 << 20  # documents held for their first submission at most


class Handover:
    """A bounded FIFO of job id -> its documents' bytes; intake puts, sending gets."""

    def __init__(self, limit: int = HANDOVER_BYTES) -> None:
        self.limit = limit
        self._held: OrderedDict[int, tuple[bytes, ...]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()  # intake's thread puts, the sending loop's takes

    def put(self, job_id: int, documents: Sequence[bytes]) -> None:
        size = sum(len(d) for d in documents)
        if size > self.limit:
            return  # read from the job's folder when it is sent
        with self._lock:
            old = self._held.pop(job_id, None)
            if old is not None:
                self._size -= sum(len(d) for d in old)
            while self._held and self._size + size > self.limit:
                _, dropped = self._held.popitem(last=False)
                self._size -= sum(len(d) for d in dropped)
            self._held[job_id] = tuple(documents)
            self._size += size

    def get(self, job_id: int) -> tuple[bytes, ...] | None:
        """The job's documents while they are held: every send of it (a retry after an
        outage, another recipient) carries the same bytes until it ends."""
        with self._lock:
            return self._held.get(job_id)

    def discard(self, job_id: int) -> None:
        """The job ended (or a recipient of it did): a resend later reads its folder."""
        with self._lock:
            documents = self._held.pop(job_id, None)
            if documents is not None:
                self._size -= sum(len(d) for d in documents)

    def clear(self) -> None:
        with self._lock:
            self._held.clear()
            self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return len(self._held)
