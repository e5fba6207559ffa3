"""The result-file shape of SPEC 4.4, used for result files, `jobs --json` and `show --json`."""

from __future__ import annotations

import time
from typing import Any

from gateway.names import shown
from gateway.store import Job


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def result_document(job: Job, files: list[str] | None = None) -> dict[str, Any]:
    """`files` are the names as they lie beside the result (after any collision suffix)."""
    final = job.state in ("delivered", "failed", "canceled", "rejected")
    return {
        "job": job.id,
        "state": job.state,
        "reason": job.reason,
        "reason_code": job.reason_code,
        "simulated": job.simulated,
        "outbox": job.outbox,
        "files": files if files is not None else [shown(n) for n in job.names],
        "sha256": job.sha256 if job.sha256 else [None] * len(job.names),
        "reference": job.options.get("reference"),
        "created_at": iso(job.created_at),
        "completed_at": iso(job.completed_at) if final else None,
        "recipients": [
            {"to": r.number, "state": r.state, "ifax_job_id": _job_id(r.ifax_job_id),
             "attempts": r.attempts, "pages": r.pages, "transferred_pages": r.transferred_pages,
             "cost": r.cost, "code": _code(r.code), "message": r.message}
            for r in job.recipients
        ],
    }


def job_document(job: Job, events: list[dict[str, Any]]) -> dict[str, Any]:
    """`show --json` and the status page's job page: the result-file shape plus `events`."""
    doc = result_document(job)
    doc["events"] = [{**e, "at": iso(e["at"])} for e in events]
    return doc


def _job_id(value: str | None) -> int | str | None:
    if value is None:
        return None
    return int(value) if value.isdigit() else value


def _code(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    return value
