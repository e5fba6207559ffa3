"""The iFax REST client: five endpoints, and one question asked of every failure:
could iFax have acted on the request?  (SPEC 6.2)

Transport failures (`gateway.httpconn`, which says at which step a request failed) are
mapped here, at the boundary, to the gateway's own `Transient` (certainly not acted on),
`Uncertain` (maybe), `Refused` and `AuthFailed`.
Answers are read liberally because two versions of the API are in the wild.
"""

from __future__ import annotations

import base64
import calendar
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gateway import httpconn
from gateway.errors import ApiError, AuthFailed, Refused, RequestNotEncodable, Transient, Uncertain

log = logging.getLogger("gateway.ifax")
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)

ENDPOINTS = ("fax-send", "fax-resend", "fax-status", "fax-cancel", "fax-delete")
# Every final failure and the state its recipient ends in (SPEC 6.2).  Only plain `failed`
# may be resent automatically: `blocked` (the number refuses us), `failed_chargeable` and
# `partially_cancelled` (charged, partly transmitted) cannot succeed by trying again, and
# another attempt would cost money and may fax pages twice; `canceled` is final.
FINAL_FAILURES = {"failed": "failed", "canceled": "canceled", "partially_cancelled": "failed",
                  "failed_chargeable": "failed", "blocked": "failed"}
RESENDABLE = frozenset({"failed"})

Observer = Callable[[str, str, float], None]  # (endpoint, outcome, seconds)


@dataclass(frozen=True)
class Attachment:
    file_name: str
    data: bytes


@dataclass(frozen=True)
class PreparedRequest:
    """A request already encoded to bytes, so that one that cannot be encoded fails
    before anything is committed as sent (SPEC 4.5)."""

    endpoint: str
    content: bytes


@dataclass(frozen=True)
class FaxStatus:
    status: str                    # iFax's word, lower case, "cancelled" spelled "canceled"
    final_state: str | None        # delivered | failed | canceled, or None while not final
    resendable: bool               # a final failure the resend policy may resend (only `failed`)
    total_pages: int | None
    transferred_pages: int | None
    cost: float | None
    code: Any
    message: str | None
    call_start: float | None
    call_end: float | None


def job_id_value(job_id: str) -> int | str:
    """The documented examples send a number; anything else goes as the text it was."""
    return int(job_id) if job_id.isdigit() else job_id


def parse_time(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    for fmt in ("%Y-%m-%d %H:%M:%S UTC", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return float(calendar.timegm(time.strptime(text, fmt)))
        except ValueError:
            continue
    return None


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def parse_status(data: dict[str, Any]) -> FaxStatus:
    raw = str(data.get("faxStatus") or "").strip().lower()
    status = "canceled" if raw == "cancelled" else raw
    if status == "delivered":
        final = "delivered"
    else:
        final = FINAL_FAILURES.get(status)
    return FaxStatus(
        status=status, final_state=final, resendable=status in RESENDABLE,
        total_pages=_int(data.get("faxTotalPages")),
        transferred_pages=_int(data.get("faxTransferredPages")), cost=_float(data.get("actualCost")),
        code=data.get("code"), message=data.get("message") or data.get("errorMessage"),
        call_start=parse_time(data.get("faxCallStart")), call_end=parse_time(data.get("faxCallEnd")))


def _message(body: Any) -> str:
    if isinstance(body, dict):
        msg = body.get("message") or body.get("errorMessage")
        data = body.get("data")
        if not msg and isinstance(data, dict):
            msg = data.get("message") or data.get("errorMessage")
        if msg:
            return str(msg)
    return "no message"


def _retry_after(answer: httpconn.Answer) -> float | None:
    value = answer.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


CONNECT_TIMEOUT = 5.0


class IFaxClient:
    """Thread-safe; one pooled connection per concurrent request (`max_in_flight`)."""

    def __init__(self, base_url: str, key: str, *, timeout: float, max_in_flight: int,
                 observer: Observer | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._observer = observer
        # A connection not made within CONNECT_TIMEOUT never carried the fax: safe to try
        # again, and an API whose packets vanish is probed again within the backoff's cap
        # instead of after a whole api.timeout (issue 9: back within 10 s).
        self._http = httpconn.poster(
            self.base_url,
            {"accessToken": key, "Content-Type": "application/json", "Accept": "application/json",
             "User-Agent": "fax-gateway"},
            timeout=timeout, connect_timeout=min(timeout, CONNECT_TIMEOUT), size=max_in_flight)

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:  # never the key
        return f"IFaxClient({self.base_url!r})"

    # -- endpoints ------------------------------------------------------------------

    def send_request(self, number: str, attachments: Sequence[Attachment], **options: Any) -> PreparedRequest:
        body: dict[str, Any] = {"faxNumber": number, "faxData": _fax_data(attachments)}
        body.update({k: v for k, v in options.items() if v is not None})
        return _prepare("fax-send", body)

    def resend_request(self, job_id: str, attachments: Sequence[Attachment]) -> PreparedRequest:
        return _prepare("fax-resend", {"jobId": job_id_value(job_id), "faxData": _fax_data(attachments)})

    def submit(self, request: PreparedRequest) -> str:
        """fax-send or fax-resend; returns the jobId iFax gave the fax."""
        return httpconn.run(self.submit_steps(request))

    def submit_steps(self, request: PreparedRequest) -> httpconn.Steps[str]:
        """`submit` as steps (httpconn.run): the sending loop makes the request itself
        while it can go out and be answered without waiting (issue 12)."""
        body = yield from self._call(request.endpoint, request.content)
        return self._job_id(body)

    def send(self, number: str, attachments: Sequence[Attachment], **options: Any) -> str:
        return self.submit(self.send_request(number, attachments, **options))

    def resend(self, job_id: str, attachments: Sequence[Attachment]) -> str:
        return self.submit(self.resend_request(job_id, attachments))

    def status(self, job_id: str) -> FaxStatus:
        return httpconn.run(self.status_steps(job_id))

    def status_steps(self, job_id: str) -> httpconn.Steps[FaxStatus]:
        body = yield from self._call("fax-status", {"jobId": job_id_value(job_id)})
        data = body.get("data")
        if not isinstance(data, dict):
            raise Uncertain("fax-status answer has no fax object", endpoint="fax-status")
        return parse_status(data)

    def cancel(self, job_id: str) -> None:
        httpconn.run(self._call("fax-cancel", {"jobId": job_id_value(job_id)}))

    def delete(self, job_id: str) -> None:
        httpconn.run(self._call("fax-delete", {"jobId": job_id_value(job_id)}))

    # -- plumbing -------------------------------------------------------------------

    def _job_id(self, body: dict[str, Any]) -> str:
        data = body.get("data")
        job_id = data.get("jobId") if isinstance(data, dict) else None
        if job_id is None or str(job_id).strip() == "":
            raise Uncertain("iFax answered success without a jobId", endpoint="")
        return str(job_id).strip()

    def _call(self, endpoint: str, body: dict[str, Any] | bytes) -> httpconn.Steps[dict[str, Any]]:
        started = time.monotonic()
        outcome = "transport_error"
        try:
            resp = yield from self._post(endpoint, body)
            outcome = "http_error"
            result = self._read(endpoint, resp)
            outcome = "ok"
            return result
        except Refused:
            outcome = "refused"
            raise
        finally:
            if self._observer:
                self._observer(endpoint, outcome, time.monotonic() - started)

    def _post(self, endpoint: str, body: dict[str, Any] | bytes) -> httpconn.Steps[httpconn.Answer]:
        content = body if isinstance(body, bytes) else _prepare(endpoint, body).content
        try:
            answer: httpconn.Answer = yield httpconn.Call(self._http, f"/customer/{endpoint}", content)
        except httpconn.ConnectFailed as exc:
            raise Transient(f"cannot connect to {self.base_url}: {exc}", endpoint=endpoint) from None
        except httpconn.SendFailed as exc:
            raise Transient(f"the request to {endpoint} could not be sent in full: {exc}",
                            endpoint=endpoint) from None
        except httpconn.AnswerTimeout as exc:
            raise Uncertain(f"no answer from {endpoint} within the timeout ({exc})",
                            endpoint=endpoint) from None
        except httpconn.AnswerBroken as exc:
            raise Uncertain(f"the connection broke after the request to {endpoint} was sent "
                            f"({exc})", endpoint=endpoint) from None
        return answer

    def _read(self, endpoint: str, resp: httpconn.Answer) -> dict[str, Any]:
        code = resp.status
        body = _loads(resp.body)
        if code in (429, 503):
            raise Transient(f"iFax answered HTTP {code} to {endpoint} (busy or down)",
                            endpoint=endpoint, http_status=code, retry_after=_retry_after(resp))
        if code in (401, 403, 404, 405):
            raise AuthFailed(f"iFax refused the account with HTTP {code} on {endpoint}: {_message(body)} "
                             "(check the API key and that api.base_url ends in /v1)",
                             endpoint=endpoint, http_status=code)
        if 400 <= code < 500:
            raise Refused(_message(body), endpoint=endpoint, http_status=code,
                          code=body.get("code") if isinstance(body, dict) else None)
        if code >= 300 or not isinstance(body, dict):
            raise Uncertain(f"iFax answered HTTP {code} to {endpoint}"
                            + ("" if isinstance(body, dict) else " with an unreadable body"),
                            endpoint=endpoint, http_status=code)
        if str(body.get("status")) not in ("1", "True"):
            data = body.get("data")
            raise Refused(_message(body), endpoint=endpoint, http_status=code,
                          code=body.get("code", data.get("code") if isinstance(data, dict) else None))
        return body


_LONG_NUMBER = re.compile(rb"\d{19}")


def _loads(body: bytes) -> Any:
    """An answer's JSON, or None if it is not JSON (or not UTF-8).  orjson reads it in a
    fifth of json's time (two answers per document, issue 12); what orjson refuses (an
    answer with NaN, say) json reads as before.  An answer with a number of 19 digits or
    more goes to json at once: orjson reads an integer beyond 64 bits as a float, and a
    jobId must come back exactly as iFax wrote it."""
    if not _LONG_NUMBER.search(body):
        try:
            return orjson.loads(body)
        except ValueError:
            pass
    try:
        return json.loads(body)
    except ValueError:
        return None


def _prepare(endpoint: str, body: dict[str, Any]) -> PreparedRequest:
    """orjson writes a request in 0.7 us where json took 20 (issue 12).  What orjson
    refuses to write (an integer beyond 64 bits, a text with a lone surrogate) goes to json, which
    writes it or says why it cannot.  No value here is a float: a sidecar's options are
    texts (sidecar.py), so NaN, which orjson would write as null, never comes."""
    try:
        return PreparedRequest(endpoint, orjson.dumps(body))
    except TypeError:
        pass
    try:
        content = json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (UnicodeEncodeError, ValueError, TypeError) as exc:
        raise RequestNotEncodable(f"the {endpoint} request cannot be encoded: {type(exc).__name__}",
                                  endpoint=endpoint) from None
    return PreparedRequest(endpoint, content)


def _fax_data(attachments: Sequence[Attachment]) -> list[dict[str, str]]:
    return [{"fileName": a.file_name, "fileData": base64.b64encode(a.data).decode("ascii")}
            for a in attachments]


__all__ = ["ApiError", "Attachment", "FaxStatus", "IFaxClient", "parse_status", "parse_time"]
