"""The gateway's exception tree.

Errors are raised where the problem is known, with a message a person can act on,
and turned into one sentence at the edge (exit code, result file, log line).
Nothing here ever carries the API key.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration file is missing, unreadable or invalid."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None,
                 line: int | None = None) -> None:
        self.file, self.key, self.line, self.detail = file, key, line, message
        where = []
        if file:
            where.append(str(file))
        if line:
            where.append(f"line {line}")
        prefix = ", ".join(where)
        if key:
            prefix = f"{prefix}: {key}" if prefix else key
        super().__init__(f"{prefix}: {message}" if prefix else message)


class UsageError(GatewayError):
    """A command was called with arguments it cannot use (exit code 2)."""


class DaemonRunning(GatewayError):
    """Another daemon already holds the database."""


class JobNotFound(GatewayError):
    """No job with that id exists in the database."""


class ActionNotAllowed(GatewayError):
    """The job's state does not allow the requested action (cancel, resend)."""


class StartupError(GatewayError):
    """The daemon cannot start (a folder, the database, the key); the message says why."""


class StoreError(GatewayError):
    """The database cannot be opened or has an unexpected shape."""


class InvalidTransition(StoreError):
    """A job or recipient was asked to change to a state its current state cannot lead to."""


class SpoolError(GatewayError):
    """A file move could not be completed; the job stays where it is and is tried again."""


# Short codes of SPEC 8 and the sentence a person at the scanner reads for each.
REASONS: dict[str, str] = {
    "unsupported_type": "not a faxable document: only PDF, TIFF, PNG and JPEG files can be faxed",
    "empty": "the file is empty: scan or print it again",
    "too_large": "the document is too large to fax: split it into smaller documents",
    "no_destination": ("no destination: put the document in a folder named after the fax number "
                       "or add a sidecar"),
    "invalid_number": "the fax number is not valid: check the number and its country code",
    "bad_sidecar": "the sidecar file could not be used: fix it and drop the documents again",
    "unsafe_file": ("the file is a link, a device or a pipe and was not opened: "
                    "copy the real document into the outbox"),
    "denied_number": "this fax number is not allowed by the gateway's allow/deny rules",
    "unreadable": "the gateway cannot read the file: check its permissions",
}


class Rejected(GatewayError):
    """A document (or its sidecar) cannot be faxed as it is; never retried."""

    def __init__(self, reason_code: str, detail: str | None = None, *, reason: str | None = None) -> None:
        """`reason` gives the whole sentence as it was stored, instead of composing it."""
        if reason_code not in REASONS:
            raise ValueError(f"unknown reason code {reason_code!r}")
        self.reason_code = reason_code
        self.detail = detail
        self.reason = reason or (f"{REASONS[reason_code]} ({detail})" if detail else REASONS[reason_code])
        super().__init__(self.reason)


class ApiError(GatewayError):
    """A request to the iFax API did not give a usable answer."""

    def __init__(self, message: str, *, endpoint: str = "", http_status: int | None = None,
                 code: object = None) -> None:
        self.endpoint, self.http_status, self.code = endpoint, http_status, code
        self.message = message
        super().__init__(message)


class RequestNotEncodable(ApiError):
    """The request could not be built (text that is not valid Unicode): it never left."""


class Transient(ApiError):
    """iFax certainly did not act on the request (no connection, 429, 503): safe to retry."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class Uncertain(ApiError):
    """The request left, and iFax may or may not have acted on it."""


class Refused(ApiError):
    """iFax refused this request ("status": 0 or a 4xx): retrying it unchanged will not help."""


class AuthFailed(Refused):
    """iFax refused the account (HTTP 401/403/404/405): a wrong key or base_url."""
