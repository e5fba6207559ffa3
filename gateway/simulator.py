"""An iFax-compatible HTTP server, so the gateway can be run and tested without an account.

It is a real server on a real socket, not a stub inside the client: the gateway
talks to it exactly as it talks to https://api.ifaxapp.com/v1, with its own
connection pool, timeouts and error handling, so every transport failure the
gateway must survive (a connection dropped before or after the fax was taken, a
502 page from a proxy, 429, an outage) can be produced on demand.

It answers POST /v1/customer/{fax-send, fax-resend, fax-status, fax-cancel,
fax-delete} with the response shapes of ifax-api.md and checks requests the way
a strict provider would (SPEC 9): a wrong or missing ``accessToken`` gets HTTP
401; a missing ``Content-Type: application/json`` or ``Accept:
application/json`` header, bad JSON, a missing field, bad base64, a number that
is not E.164 or a file that is not PDF/TIFF/PNG/JPEG gets HTTP 200 with
``"status": 0`` and a message saying which. ``jobId`` may be a number or a
digit string; ``_method`` (a JSON key, or a form field in a form-encoded or
multipart body) may only say POST.

Lifecycle. A fax is ``sending`` for ``delay`` seconds after it was accepted (or
after its ``send_at``, if later); then the last three digits of the destination
decide:

    ...666  fails (code 17, "USER_BUSY"), on every attempt
    ...777  fails on the first transmission (code 19, "NO_ANSWER") and is
            delivered when resent with fax-resend
    ...888  stays ``sending`` until fax-cancel (then ``canceled``, code 487,
            "ORIGINATOR_CANCEL")
    ...661  ``blocked`` (code 21, "CALL_REJECTED"), on every attempt
    ...662  ``failed_chargeable`` (code 41, "TEMPORARY_FAILURE"), charged, on every attempt
    ...663  ``partially_cancelled`` (code 487, "ORIGINATOR_CANCEL") after half the pages
            (rounded up), charged for those, on every attempt
    ...664  ``canceled`` by iFax itself (code 487, "ORIGINATOR_CANCEL"), no fax-cancel needed
    ...665  fails on the first transmission *and is charged* (code 38,
            "NETWORK_OUT_OF_ORDER"), delivered when resent with fax-resend
    other   delivered (code 0, "NORMAL_CLEARING")

A delivered fax reports faxTransferredPages = faxTotalPages and actualCost =
pages x 0.11; a failed or canceled one 0 and 0, except the charged outcomes
above. fax-resend takes the jobId of a fax that ended other than delivered and
its ``faxData`` again and returns a new jobId for the same destination.
fax-delete removes a final fax (a later fax-status says "Fax not found"); a
fax still sending must be canceled first. Job ids start at 1000 and are never
reused by one Simulator, not even after reset().

Faults (``Simulator.set_fault`` or ``POST /_simulator/faults``) make the next
``count`` matching requests (all of them when ``count`` is None) misbehave:

    error        HTTP 500, not processed
    bad_gateway  processed, then answered with a 502 HTML page (a proxy's)
    drop_before  connection closed without an answer, not processed
    drop_after   processed, then the connection is closed without an answer
    slow         processed, answered after ``seconds``
    rate_limit   HTTP 429 with Retry-After: 1, not processed
    down         HTTP 503 HTML page, not processed
    refuse_all   "status": 0 with ``message`` (e.g. "Insufficient balance")
                 for every request that passes authentication, not processed

Admin endpoints, for tests in another process (no key needed):
``GET /_simulator/requests[?endpoint=fax-send]``, ``GET /_simulator/jobs[/<id>]``,
``GET|POST /_simulator/faults``, ``POST /_simulator/reset``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import signal
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from gateway.doctypes import inspect_document
from gateway.errors import Rejected

__all__ = ["ENDPOINTS", "FAULT_MODES", "Simulator", "serve"]

logger = logging.getLogger(__name__)

ENDPOINTS = ("fax-send", "fax-resend", "fax-status", "fax-cancel", "fax-delete")
FAULT_MODES = ("error", "bad_gateway", "drop_before", "drop_after", "slow", "rate_limit", "down",
               "refuse_all")
PRICE_PER_PAGE = 0.11
FIRST_JOB_ID = 1000
DEFAULT_FROM_NUMBER = "+15550100000"
MAX_BODY = 200 * 1024 * 1024  # far above any fax; only guards the simulator's memory
MAX_RECORDS = 1000  # recorded requests kept (with their full bodies), oldest dropped first

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_QUALITIES = ("Low", "Standard", "HD")
_FINAL_FAILED = ("failed", "canceled", "blocked", "failed_chargeable", "partially_cancelled")
# Modes decided before the request is looked at, and those decided after it was processed.
_BEFORE = ("error", "drop_before", "rate_limit", "down")
_AFTER = ("bad_gateway", "drop_after", "slow")

_PROXY_PAGE = "<html><head><title>{0}</title></head><body><h1>{0}</h1></body></html>\n"


class _Refusal(Exception):
    """A request iFax would answer with HTTP 200 and "status": 0."""


@dataclass
class _Fault:
    mode: str
    endpoints: tuple[str, ...]
    count: int | None
    seconds: float
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "endpoints": list(self.endpoints), "count": self.count,
                "seconds": self.seconds, "message": self.message}


@dataclass
class _Fax:
    job_id: int
    to_number: str
    from_number: str
    pages: int
    files: list[str]
    accepted_at: float
    ready_at: float
    attempt: int = 0
    resent_from: int | None = None
    status: str = "sending"
    code: int | None = None
    message: str = "Fax is being sent"
    ended_at: float | None = None
    transferred: int = 0
    cost: float = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def settle(self, now: float) -> None:
        """Move a fax whose time has come to its final state (lazily, when looked at)."""
        stale_until = self.extra.get("stale_until")
        if stale_until is not None and now >= stale_until:
            # A resend under the same jobId: the old final status has lagged until now.
            del self.extra["stale_until"]
            self.status, self.code, self.message, self.ended_at = "sending", None, "Fax is being sent", None
            self.transferred, self.cost = 0, 0
            self.accepted_at, self.ready_at = stale_until, stale_until + (self.ready_at - self.accepted_at)
        if self.status != "sending" or now < self.ready_at:
            return
        suffix = self.to_number[-3:]
        if suffix == "888":
            return
        if suffix == "666":
            self._end("failed", 17, "USER_BUSY")
        elif suffix == "777" and self.attempt == 0:
            self._end("failed", 19, "NO_ANSWER")
        elif suffix == "661":
            self._end("blocked", 21, "CALL_REJECTED")
        elif suffix == "662":
            self._end("failed_chargeable", 41, "TEMPORARY_FAILURE", charged=self.pages)
        elif suffix == "663":
            half = (self.pages + 1) // 2
            self._end("partially_cancelled", 487, "ORIGINATOR_CANCEL", transferred=half, charged=half)
        elif suffix == "664":
            self._end("canceled", 487, "ORIGINATOR_CANCEL")
        elif suffix == "665" and self.attempt == 0:
            self._end("failed", 38, "NETWORK_OUT_OF_ORDER", charged=self.pages)
        else:
            self._end("delivered", 0, "NORMAL_CLEARING", transferred=self.pages, charged=self.pages)
        self.ended_at = self.ready_at

    def cancel(self, now: float) -> None:
        self._end("canceled", 487, "ORIGINATOR_CANCEL")
        self.ended_at = now

    def _end(self, status: str, code: int, message: str, *, transferred: int = 0, charged: int = 0) -> None:
        """`charged` pages are billed at PRICE_PER_PAGE (actualCost), whatever the status."""
        self.status, self.code, self.message = status, code, message
        self.transferred, self.cost = transferred, round(charged * PRICE_PER_PAGE, 2)

    def as_fax_object(self, now: float) -> dict[str, Any]:
        start = int(self.accepted_at)
        end = int(self.ended_at if self.ended_at is not None else now)
        obj: dict[str, Any] = {
            "jobId": self.job_id,
            "fromNumber": self.from_number,
            "toNumber": self.to_number,
            "faxCallLength": max(0, end - start),
            "faxCallStart": start,
        }
        if self.ended_at is not None:
            obj["faxCallEnd"] = end
        obj.update({
            "faxTotalPages": self.pages,
            "faxTransferredPages": self.transferred,
            "pricePerPage": PRICE_PER_PAGE,
            "actualCost": self.cost,
            "faxStatus": self.status,
            "retryAttempt": self.attempt,
            "message": self.message,
            "code": self.code,
        })
        return obj


class Simulator:
    """An iFax-compatible server on a background thread; see the module docstring."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, key: str = "simulator",
                 delay: float = 1.0, reuse_job_id_on_resend: bool = False) -> None:
        self.host, self.key, self.delay = host, key, float(delay)
        # iFax does not say whether fax-resend answers with a new jobId.  With this switch
        # it answers with the same one, and the old final status lags for `delay` seconds,
        # so clients can be tested against reading a stale failure as the new attempt's.
        self.reuse_job_id_on_resend = reuse_job_id_on_resend
        self._port = port
        self._lock = threading.Lock()
        self._jobs: dict[int, _Fax] = {}
        self._next_job_id = FIRST_JOB_ID
        self._records: deque[dict[str, Any]] = deque(maxlen=MAX_RECORDS)
        self._fault: _Fault | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._connections: dict[int, socket.socket] = {}
        self._next_connection = 1

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> Simulator:
        """Serve in a background thread; a stopped simulator restarts on the same port.

        Restarting keeps jobs and recorded requests, so a test can take the API
        away (stop) and bring it back (start) under the same URL.
        """
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server((self.host, self._port), self)
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"ifax-simulator-{self._port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection, idle keep-alive ones included.

        Closing them matters: otherwise a client's pooled connection would still
        reach a handler thread of the stopped server.
        """
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections.values())
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the simulator has no port until it is started")
        return self._port

    @property
    def url(self) -> str:
        host = self.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/v1"

    # -- inspection and control (also over HTTP under /_simulator/) --------------

    def requests(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        """Recorded requests to /v1, oldest first.

        Each is {"endpoint", "body", "http_status", "time", "job_id"} plus
        "method", "path", "fault", "connection" (a serial number per TCP
        connection, to see keep-alive reuse), "response" and "finished" (when
        the answer was written or the connection dropped; None while the
        request is still being handled, so "time" to "finished" is how long it
        was under way). ``http_status`` is None when the connection was closed
        without an answer.
        """
        with self._lock:
            return [dict(r) for r in self._records if endpoint is None or r["endpoint"] == endpoint]

    def set_fault(self, mode: str | None, *, endpoints: tuple[str, ...] = ("fax-send", "fax-resend"),
                  count: int | None = None, seconds: float = 5.0,
                  message: str = "Insufficient balance") -> None:
        """Make matching requests misbehave (see the module docstring); None clears.

        ``endpoints`` may contain "*" for all five endpoints. A new fault
        replaces the previous one.
        """
        if mode is None:
            with self._lock:
                self._fault = None
            return
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; expected one of {', '.join(FAULT_MODES)}")
        if isinstance(endpoints, str):
            endpoints = (endpoints,)
        names = ENDPOINTS if "*" in endpoints else tuple(endpoints)
        unknown = [name for name in names if name not in ENDPOINTS]
        if unknown:
            raise ValueError(f"unknown endpoint(s) {', '.join(unknown)}")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
            raise ValueError("count must be a non-negative integer or None")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise ValueError("seconds must be a non-negative number")
        with self._lock:
            self._fault = _Fault(mode, names, count, float(seconds), str(message))

    def fault(self) -> dict[str, Any] | None:
        """The fault in force, with its remaining count, or None."""
        with self._lock:
            return self._fault.as_dict() if self._fault else None

    def reset(self) -> None:
        """Forget recorded requests, jobs and faults (job ids keep counting up)."""
        with self._lock:
            self._records.clear()
            self._jobs.clear()
            self._fault = None

    def job(self, job_id: int) -> dict[str, Any] | None:
        """The fax as fax-status would show it, plus "files", "resentFrom" and "sendAt"."""
        with self._lock:
            fax = self._jobs.get(int(job_id))
            return None if fax is None else self._view(fax)

    def jobs(self) -> list[dict[str, Any]]:
        """Every fax the simulator knows (deleted ones excluded), oldest first, as job() shows it."""
        with self._lock:
            return [self._view(fax) for fax in self._jobs.values()]

    def _view(self, fax: _Fax) -> dict[str, Any]:
        now = time.time()
        fax.settle(now)
        view = fax.as_fax_object(now)
        view.update({"files": list(fax.files), "resentFrom": fax.resent_from, **fax.extra})
        return view

    # -- used by the request handler ---------------------------------------------

    def _open_connection(self, conn: socket.socket) -> int:
        with self._lock:
            number = self._next_connection
            self._next_connection += 1
            self._connections[number] = conn
            return number

    def _close_connection(self, number: int) -> None:
        with self._lock:
            self._connections.pop(number, None)

    def _record(self, entry: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._records.append(entry)
        return entry

    def _update(self, entry: dict[str, Any], **values: Any) -> None:
        with self._lock:
            entry.update(values)

    def _take_fault(self, endpoint: str, modes: tuple[str, ...]) -> _Fault | None:
        """Claim the fault for this request if it applies, counting it down."""
        with self._lock:
            fault = self._fault
            if fault is None or fault.mode not in modes or endpoint not in fault.endpoints:
                return None
            if fault.count is not None:
                if fault.count <= 0:
                    return None
                fault.count -= 1
            return fault

    def _process(self, endpoint: str, fields: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
        """Carry out one valid-looking API call; raise _Refusal for "status": 0 answers."""
        now = time.time()
        if endpoint == "fax-send":
            number = _fax_number(fields)
            files, pages = _fax_data(fields)
            from_number = _caller_id(fields)
            _quality(fields)
            start = max(now, _send_at(fields) or now)
            with self._lock:
                fax = self._new_fax(number, from_number, pages, files, now, start, attempt=0)
            return _accepted(fax.job_id), fax.job_id
        job_id = _job_id(fields)
        if endpoint == "fax-resend":
            files, pages = _fax_data(fields)
            with self._lock:
                old = self._find(job_id, now)
                if old.status not in _FINAL_FAILED:
                    raise _Refusal(f"Only a failed or canceled fax can be resent; this one is {old.status}")
                if self.reuse_job_id_on_resend:
                    old.attempt += 1
                    old.pages, old.files = pages, files
                    old.ready_at = old.accepted_at + self.delay  # keeps the sending time per attempt
                    old.extra["stale_until"] = max(now, int(old.accepted_at) + 1.0) + self.delay
                    return _accepted(old.job_id), old.job_id
                fax = self._new_fax(old.to_number, old.from_number, pages, files, now, now,
                                    attempt=old.attempt + 1)
                fax.resent_from = old.job_id
            return _accepted(fax.job_id), fax.job_id
        with self._lock:
            fax = self._find(job_id, now)
            if endpoint == "fax-status":
                return {"status": 1, "message": "Fax status response",
                        "data": fax.as_fax_object(now)}, job_id
            if endpoint == "fax-cancel":
                if fax.status != "sending":
                    raise _Refusal(f"Fax cannot be canceled: it is already {fax.status}")
                fax.cancel(now)
                return {"status": 1, "message": "Fax canceled successfully"}, job_id
            if fax.status == "sending":
                raise _Refusal("Fax cannot be deleted while it is sending: cancel it first")
            del self._jobs[job_id]
            return {"status": 1, "message": "Fax deleted successfully"}, job_id

    def _new_fax(self, number: str, from_number: str, pages: int, files: list[str], now: float,
                 start: float, *, attempt: int) -> _Fax:
        job_id = self._next_job_id
        self._next_job_id += 1
        fax = _Fax(job_id=job_id, to_number=number, from_number=from_number, pages=pages, files=files,
                   accepted_at=now, ready_at=start + self.delay, attempt=attempt)
        if start > now:
            fax.extra["sendAt"] = int(start)
        self._jobs[job_id] = fax
        return fax

    def _find(self, job_id: int, now: float) -> _Fax:
        fax = self._jobs.get(job_id)
        if fax is None:
            raise _Refusal("Fax not found")
        fax.settle(now)
        return fax


# -- request validation (each raises _Refusal with the message iFax-style clients show) --

def _accepted(job_id: int) -> dict[str, Any]:
    return {"status": 1, "message": "Fax processed for sending", "data": {"jobId": job_id}}


def _fax_number(fields: dict[str, Any]) -> str:
    number = fields.get("faxNumber")
    if number is None or number == "":
        raise _Refusal("faxNumber is required")
    if not isinstance(number, str) or not _E164.match(number):
        raise _Refusal(f"Invalid faxNumber {number!r}: use E.164 format, e.g. +12345678901")
    return number


def _caller_id(fields: dict[str, Any]) -> str:
    caller = fields.get("callerId")
    if caller is None or caller == "":
        return DEFAULT_FROM_NUMBER
    if not isinstance(caller, str) or not _E164.match(caller):
        raise _Refusal(f"Invalid callerId {caller!r}: use E.164 format")
    return caller


def _quality(fields: dict[str, Any]) -> None:
    quality = fields.get("faxQuality")
    if quality is not None and quality not in _QUALITIES:
        raise _Refusal(f"Invalid faxQuality {quality!r}: use Low, Standard or HD")


def _send_at(fields: dict[str, Any]) -> float | None:
    value = fields.get("send_at")
    if value is None or value == "":
        return None
    try:
        if not isinstance(value, str):
            raise TypeError
        when = datetime.fromisoformat(value)
        if when.tzinfo is None:
            raise ValueError
    except (TypeError, ValueError):
        raise _Refusal(f"Invalid send_at {value!r}: use an ISO 8601 UTC time such as "
                       "2026-12-01T08:00:00.000Z") from None
    return when.timestamp()


def _job_id(fields: dict[str, Any]) -> int:
    value = fields.get("jobId")
    if value is None or value == "":
        raise _Refusal("jobId is required")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise _Refusal(f"Invalid jobId {value!r}: it must be a number")


def _fax_data(fields: dict[str, Any]) -> tuple[list[str], int]:
    items = fields.get("faxData")
    if items is None or items == "" or items == []:
        raise _Refusal("faxData is required: at least one attachment")
    if not isinstance(items, list):
        raise _Refusal("faxData must be an array of attachments")
    names: list[str] = []
    pages = 0
    for index, item in enumerate(items):
        where = f"faxData[{index}]"
        if not isinstance(item, dict):
            raise _Refusal(f"{where} must be an object with fileName and fileData")
        name = item.get("fileName")
        if not isinstance(name, str) or not name:
            raise _Refusal(f"{where}.fileName is required")
        data = item.get("fileData")
        if data is None and item.get("fileUrl"):
            raise _Refusal(f"{where}: fileUrl is not supported by the simulator; send base64 fileData")
        if not isinstance(data, str) or not data:
            raise _Refusal(f"{where}.fileData is required")
        try:
            content = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise _Refusal(f"{where}.fileData is not valid base64") from None
        try:
            info = inspect_document(content)
        except Rejected as exc:
            raise _Refusal(f"Unsupported file {name!r}: {exc.reason}") from None
        names.append(name)
        pages += info.pages
    return names, pages


def _media_types(header: str | None) -> list[str]:
    return [part.split(";", 1)[0].strip().lower() for part in (header or "").split(",") if part.strip()]


def _parse_form(media: str, content_type: str, body: bytes) -> dict[str, Any]:
    """Fields of a form body, for clients that simulate methods with a `_method` field."""
    fields: dict[str, Any] = {}
    if media == "application/x-www-form-urlencoded":
        for name, values in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items():
            fields[name] = values[0]
    else:
        head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
        message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
        if not message.is_multipart():
            raise ValueError("not a multipart body")
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if name:
                value = part.get_payload(decode=True) or b""
                fields[str(name)] = value.decode("utf-8", "replace")
    # A form can carry structured fields only as text.
    if isinstance(fields.get("faxData"), str):
        try:
            fields["faxData"] = json.loads(fields["faxData"])
        except ValueError:
            pass
    return fields


# -- HTTP ------------------------------------------------------------------------

class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], simulator: Simulator) -> None:
        self.simulator = simulator
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall for
        # seconds on a machine without working DNS; the simulator never needs it.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver calls this from inside its except clause.
        logger.debug("simulator: error while serving %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else each answer waits for the client's delayed ACK (~40 ms)
    server_version = "iFaxSimulator/1.0"
    timeout = 300  # an idle keep-alive connection gives its thread back after this
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.sim = self.server.simulator
        self.connection_number = self.sim._open_connection(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.sim._close_connection(self.connection_number)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("simulator: " + format, *args)

    def do_POST(self) -> None:
        self._dispatch()

    do_GET = do_PUT = do_DELETE = do_PATCH = do_POST

    # -- plumbing ----------------------------------------------------------------

    def _read_body(self) -> bytes | None:
        """Read the whole body, so that a connection stays usable for the next request."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            total = 0
            while True:
                size = int(self.rfile.readline(1024).split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > MAX_BODY:
            return None
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload: Any, *, headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        try:
            body = self._read_body()
        except (ValueError, OSError):
            body = None
        if body is None:
            self.close_connection = True
            self._send(400, {"status": 0, "message": "The request body could not be read "
                             f"(malformed or larger than {MAX_BODY} bytes)"})
            return
        if url.path.startswith("/_simulator/"):
            self._admin(url.path, url.query, body)
        elif url.path == "/v1" or url.path.startswith("/v1/"):
            self._api(url.path, body)
        else:
            self._send(404, {"status": 0, "message": "Not found"})

    # -- /v1 -----------------------------------------------------------------------

    def _api(self, path: str, body: bytes) -> None:
        prefix = "/v1/customer/"
        endpoint = path[len(prefix):] if path.startswith(prefix) else path[len("/v1/"):]
        fields, parse_error = self._fields(body)
        entry = self.sim._record({
            "endpoint": endpoint, "body": fields, "http_status": None, "time": time.time(),
            "job_id": None, "method": self.command, "path": path, "fault": None,
            "connection": self.connection_number, "response": None, "finished": None,
        })
        if not path.startswith(prefix) or endpoint not in ENDPOINTS:
            return self._answer(entry, 404, {"status": 0, "message": "Not found"})
        if self.command != "POST":
            return self._answer(entry, 405, {"status": 0, "message": "Method not allowed"},
                                headers={"Allow": "POST"})

        fault = self.sim._take_fault(endpoint, _BEFORE)
        if fault is not None:
            self.sim._update(entry, fault=fault.mode)
            if fault.mode == "drop_before":
                self.close_connection = True
                self.sim._update(entry, finished=time.time())
                return None
            if fault.mode == "error":
                return self._answer(entry, 500, {"status": 0, "message": "Internal server error"})
            if fault.mode == "rate_limit":
                return self._answer(entry, 429, {"status": 0, "message": "Too many requests"},
                                    headers={"Retry-After": "1"})
            return self._answer(entry, 503, _PROXY_PAGE.format("503 Service Unavailable").encode(),
                                content_type="text/html")

        status, payload, job_id = self._handle(endpoint, fields, parse_error)
        self.sim._update(entry, job_id=job_id)

        fault = self.sim._take_fault(endpoint, _AFTER)
        if fault is not None:
            self.sim._update(entry, fault=fault.mode)
            if fault.mode == "drop_after":
                self.close_connection = True
                self.sim._update(entry, response=payload, finished=time.time())
                return None
            if fault.mode == "bad_gateway":
                return self._answer(entry, 502, _PROXY_PAGE.format("502 Bad Gateway").encode(),
                                    content_type="text/html")
            self.sim._stopping.wait(fault.seconds)
        return self._answer(entry, status, payload)

    def _answer(self, entry: dict[str, Any], status: int, payload: Any, **kw: Any) -> None:
        self.sim._update(entry, http_status=status,
                         response=payload if isinstance(payload, dict) else None)
        try:
            self._send(status, payload, **kw)
        finally:
            self.sim._update(entry, finished=time.time())

    def _fields(self, body: bytes) -> tuple[dict[str, Any] | None, str | None]:
        """The request's fields and, if they could not be read, why."""
        content_type = self.headers.get("Content-Type")
        media = (_media_types(content_type) or [""])[0]
        if content_type is None:
            return None, "Content-Type header is required: application/json"
        if media in ("application/x-www-form-urlencoded", "multipart/form-data"):
            try:
                return _parse_form(media, content_type, body), None
            except (ValueError, TypeError, LookupError):
                return None, "The form body could not be read"
        if media != "application/json":
            return None, f"Content-Type must be application/json, not {content_type}"
        try:
            fields = json.loads(body.decode("utf-8")) if body.strip() else None
        except (UnicodeDecodeError, ValueError) as exc:
            return None, f"Invalid JSON body: {exc}"
        if fields is None:
            return None, "The request body is empty: a JSON object is required"
        if not isinstance(fields, dict):
            return fields, "The request body must be a JSON object"
        return fields, None

    def _handle(self, endpoint: str, fields: dict[str, Any] | None,
                parse_error: str | None) -> tuple[int, dict[str, Any], int | None]:
        if self.headers.get("accessToken") != self.sim.key:
            return 401, {"status": 0, "message": "Unauthorized"}, None
        try:
            accept = _media_types(self.headers.get("Accept"))
            if not accept:
                raise _Refusal("Accept header is required: application/json")
            if "application/json" not in accept:
                raise _Refusal(f"Accept must be application/json, not {self.headers.get('Accept')}")
            if parse_error is not None or fields is None:
                raise _Refusal(parse_error or "A JSON object is required")
            method = fields.get("_method")
            if method is not None and (not isinstance(method, str) or method.upper() != "POST"):
                raise _Refusal(f"_method {method!r} is not allowed: this endpoint only accepts POST")
            refusal = self.sim._take_fault(endpoint, ("refuse_all",))
            if refusal is not None:
                raise _Refusal(refusal.message)
            payload, job_id = self.sim._process(endpoint, fields)
        except _Refusal as exc:
            return 200, {"status": 0, "message": str(exc)}, None
        return 200, payload, job_id

    # -- /_simulator -------------------------------------------------------------

    def _admin(self, path: str, query: str, body: bytes) -> None:
        sim = self.sim
        if path == "/_simulator/requests" and self.command == "GET":
            endpoint = parse_qs(query).get("endpoint", [None])[0]
            return self._send(200, sim.requests(endpoint))
        if path == "/_simulator/reset" and self.command == "POST":
            sim.reset()
            return self._send(200, {"status": 1})
        if path == "/_simulator/faults" and self.command == "GET":
            return self._send(200, {"status": 1, "fault": sim.fault()})
        if path == "/_simulator/faults" and self.command == "POST":
            try:
                spec = json.loads(body or b"{}")
                if not isinstance(spec, dict):
                    raise TypeError("the body must be a JSON object")
                unknown = set(spec) - {"mode", "endpoints", "count", "seconds", "message"}
                if unknown:
                    raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))}")
                options: dict[str, Any] = {k: spec[k] for k in ("count", "seconds", "message") if k in spec}
                if spec.get("endpoints") is not None:
                    options["endpoints"] = tuple(spec["endpoints"])
                sim.set_fault(spec.get("mode"), **options)
            except (ValueError, TypeError) as exc:
                return self._send(400, {"status": 0, "message": str(exc)})
            return self._send(200, {"status": 1, "fault": sim.fault()})
        if path == "/_simulator/jobs" and self.command == "GET":
            return self._send(200, sim.jobs())
        if path.startswith("/_simulator/jobs/") and self.command == "GET":
            number = path.rsplit("/", 1)[-1]
            view = sim.job(int(number)) if number.isdigit() else None
            if view is None:
                return self._send(404, {"status": 0, "message": "Fax not found"})
            return self._send(200, view)
        return self._send(404, {"status": 0, "message": "Not found"})


def serve(host: str, port: int, *, key: str, delay: float) -> None:
    """Run a simulator until SIGINT or SIGTERM (for `fax-gateway simulator`)."""
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        # Only set a flag: stopping joins threads, which a signal handler must not do.
        stop.set()

    simulator = Simulator(host, port, key=key, delay=delay)
    in_main = threading.current_thread() is threading.main_thread()
    previous = {}
    if in_main:
        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        simulator.start()
        # A key taken from $IFAX_API_KEY may be a real one: name it, never echo it.
        shown = "the value of $IFAX_API_KEY" if key and key == os.environ.get("IFAX_API_KEY") else key
        print(f"iFax simulator listening on {simulator.url} (accessToken: {shown}); "
              "stop it with Ctrl-C", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        simulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
