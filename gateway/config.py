"""The configuration file (SPEC 3): YAML in, frozen dataclasses out.

The file is read with ``yaml.compose`` and walked node by node instead of
``yaml.safe_load``, for two reasons:

- every error names the file, the dotted key and the line of the node at fault,
  and only the node tree still knows the lines;
- YAML 1.1 would quietly change values an operator means as text: an unquoted
  ``+4930123456`` becomes an int, ``0044201234567`` an octal int and ``country: NO``
  the boolean false. Reading each scalar's text as written keeps numbers exact.

The API key and the webhook secret travel inside :class:`Secret`, so that a
stray ``repr()``, log line or traceback shows ``***``; no error message built
here ever contains a secret's value.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import stat
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import phonenumbers
import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gateway import numbers
from gateway.errors import ConfigError, Rejected

__all__ = [
    "NOT_SUPPORTED_YET", "ApiConfig", "Config", "HttpConfig", "LogConfig", "NotifyConfig",
    "OutboxConfig", "PollConfig", "ResendPolicy", "RetentionConfig", "Secret", "WebhookConfig",
    "default_config_path", "dump_redacted", "load_config", "parse_duration", "parse_size", "read_api_key",
]

DEFAULT_CONFIG_PATH = Path("/etc/fax-gateway/config.yaml")

# TimeoutStopSec= of systemd/fax-gateway.service (a test keeps the two in step).  At SIGTERM
# the daemon lets the requests under way finish, which takes up to api.timeout, plus about
# 2 s to file and close; systemd kills it (SIGKILL) when TimeoutStopSec runs out first.
UNIT_TIMEOUT_STOP_SEC = 35.0
STOP_MARGIN = 2.0

# Keys whose behaviour this version does not implement yet (SPEC 3: refused when set to
# anything but their default, never accepted and ignored). Per-outbox keys are written
# in their `defaults.` form and are checked under every outbox as well. Delete an entry
# in the same change that implements the key.
NOT_SUPPORTED_YET: set[str] = set()


class Secret:
    """A credential that shows as ``***`` wherever it is printed, logged or repr'd."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The real value: call this only where it is sent (an HTTP header, a URL check)."""
        return self._value

    def __str__(self) -> str:
        return "***"

    def __repr__(self) -> str:
        return "Secret('***')"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            return self._value == other._value
        return NotImplemented

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class ResendPolicy:
    max: int
    delay: float


@dataclass(frozen=True)
class OutboxConfig:
    name: str
    path: Path
    sent: Path
    failed: Path
    number: str | None
    polling: bool
    country: str
    caller_id: str | None
    quality: str
    settle: float
    rescan: float
    sidecar_wait: float
    max_file_size: int
    max_pages: int
    max_faxes_per_hour: int | None
    allow: tuple[str, ...]
    deny: tuple[str, ...]
    resend: ResendPolicy
    on_uncertain: str
    delete_after_delivery: bool
    private: Path = Path()  # where claimed files wait (SPEC 4.4); resolved, never empty

    def __post_init__(self) -> None:
        if self.private == Path():
            object.__setattr__(self, "private", default_private(self.path, self.name))


def default_private(path: Path, name: str) -> Path:
    """`.fax-gateway-<name>/` beside the outbox: outside the watched tree, on the same
    filesystem (usually), and out of the writers' reach."""
    return path.parent / f".fax-gateway-{name}"


@dataclass(frozen=True)
class ApiConfig:
    base_url: str
    key: Secret | None  # api.key or IFAX_API_KEY; None while api.key_file is set (read_api_key reads it)
    key_file: Path | None
    timeout: float
    max_in_flight: int
    requests_per_minute: int
    key_file_line: int | None = None  # where api.key_file is set, for read_api_key's errors


@dataclass(frozen=True)
class HttpConfig:
    listen: str
    host: str
    port: int
    status_listen: str | None = None  # the status page's own port (null: off)
    status_host: str | None = None
    status_port: int | None = None


@dataclass(frozen=True)
class WebhookConfig:
    enabled: bool
    secret: Secret | None


@dataclass(frozen=True)
class PollConfig:
    interval: float
    give_up_after: float


@dataclass(frozen=True)
class LogConfig:
    level: str
    format: str
    file_names: bool


@dataclass(frozen=True)
class NotifyConfig:
    command: str | None


@dataclass(frozen=True)
class RetentionConfig:
    """Seconds after a job completed (None: kept for ever); see retention.py."""

    sent: float | None
    jobs: float | None
    failed: float | None = None


@dataclass(frozen=True)
class Config:
    path: Path
    api: ApiConfig
    database: Path
    http: HttpConfig
    webhook: WebhookConfig
    poll: PollConfig
    log: LogConfig
    notify: NotifyConfig
    retention: RetentionConfig
    outboxes: tuple[OutboxConfig, ...]
    warnings: tuple[str, ...]


# --- durations and sizes -------------------------------------------------------------------

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m|h|d)?")
_DURATION_HINT = "write seconds (0.5) or a number with a unit: 500ms, 0.5s, 2s, 5m, 1h, 7d"

_SIZE_UNITS = {
    "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]+)?")
_SIZE_HINT = "write bytes (123) or a number with a unit: 20MB (20*10^6), 20MiB (20*2^20), kB, KiB, GB, GiB"


def parse_duration(value: object, *, key: str = "", file: str | None = None,
                   line: int | None = None) -> float:
    """Seconds from a number or a string with a unit.

    Shared by the configuration and anything else that reads a duration written by
    a person, so that "2s" means the same everywhere.
    """
    def fail(message: str) -> ConfigError:
        return ConfigError(message, file=file, key=key or None, line=line)

    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise fail(f"must be a duration: {_DURATION_HINT}")
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("-"):
            raise fail(f"must not be negative (got {value!r})")
        match = _DURATION.fullmatch(text)
        if not match:
            raise fail(f"{value!r} is not a duration: {_DURATION_HINT}")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    else:
        seconds = float(value)
        if not math.isfinite(seconds):
            raise fail(f"{value!r} is not a duration: {_DURATION_HINT}")
        if seconds < 0:
            raise fail(f"must not be negative (got {value!r})")
    return seconds


def parse_size(value: object, *, key: str = "", file: str | None = None,
               line: int | None = None) -> int:
    """Bytes from a number or a string with a decimal (MB) or binary (MiB) unit.

    Decimal arithmetic keeps "1.5MB" exactly 1500000 instead of trusting floats.
    """
    def fail(message: str) -> ConfigError:
        return ConfigError(message, file=file, key=key or None, line=line)

    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise fail(f"must be a size: {_SIZE_HINT}")
    if isinstance(value, int):
        if value < 0:
            raise fail(f"must not be negative (got {value})")
        return value
    text = value.strip()
    if text.startswith("-"):
        raise fail(f"must not be negative (got {value!r})")
    match = _SIZE.fullmatch(text)
    unit = (match.group(2) or "b").lower() if match else ""
    if not match or unit not in _SIZE_UNITS:
        raise fail(f"{value!r} is not a size: {_SIZE_HINT}")
    amount = Decimal(match.group(1)) * _SIZE_UNITS[unit]
    if amount != amount.to_integral_value():
        raise fail(f"{value!r} is not a whole number of bytes")
    return int(amount)


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$FAX_GATEWAY_CONFIG``, else /etc/fax-gateway/config.yaml (SPEC 2), so `-c` can be left out."""
    env = os.environ if environ is None else environ
    value = env.get("FAX_GATEWAY_CONFIG", "").strip()
    return Path(os.path.expanduser(value)) if value else DEFAULT_CONFIG_PATH


# --- reading nodes -------------------------------------------------------------------------

_NULL_TAG = "tag:yaml.org,2002:null"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_BOOL_VALUES = yaml.constructor.SafeConstructor.bool_values


def _line(node: Node) -> int:
    return node.start_mark.line + 1


class _Context:
    """What every reader needs to report an error or resolve a path."""

    def __init__(self, file: str, base: Path) -> None:
        self.file = file
        self.base = base

    def error(self, message: str, key: str | None, node: Node) -> ConfigError:
        return ConfigError(message, file=self.file, key=key or None, line=_line(node))

    def compose(self, data: bytes) -> Node | None:
        try:
            return yaml.compose(data, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            # Only problem and context, never yaml's snippet of the line: it could be api.key's.
            mark = exc.problem_mark or exc.context_mark
            message = f"invalid YAML: {exc.problem or exc.context}"
            if exc.problem and exc.context:
                where = f" on line {exc.context_mark.line + 1}" if exc.context_mark else ""
                message += f" ({exc.context}{where})"
            raise ConfigError(message, file=self.file,
                              line=mark.line + 1 if mark else None) from None
        except yaml.reader.ReaderError as exc:
            line = data[:exc.position].count(b"\n") + 1
            raise ConfigError(f"not valid {exc.encoding} text ({exc.reason}): save it as UTF-8",
                              file=self.file, line=line) from None
        except yaml.YAMLError as exc:  # pragma: no cover - every yaml error above carries a mark
            raise ConfigError(f"invalid YAML: {exc}", file=self.file) from None

    def items(self, node: Node | None, key: str, allowed: Mapping[str, Any],
              hints: Mapping[str, str] | None = None) -> list[tuple[str, Node]]:
        """A mapping's (key, value node) pairs, refusing unknown and duplicate keys."""
        if node is None or (isinstance(node, ScalarNode) and node.tag == _NULL_TAG):
            return []
        if not isinstance(node, MappingNode):
            raise self.error("must be a mapping of keys and values, not "
                             f"{_describe(node)}", key or "(top level)", node)
        seen: dict[str, Node] = {}
        pairs = []
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                raise self.error("keys must be plain names", key or "(top level)", key_node)
            name = key_node.value
            dotted = f"{key}.{name}" if key else name
            if name == "<<":
                raise self.error("YAML merge keys (<<) are not supported: put settings shared by "
                                 "outboxes under 'defaults'", dotted, key_node)
            if name in seen:
                raise self.error(f"is set twice (first on line {_line(seen[name])})", dotted, key_node)
            seen[name] = key_node
            if name not in allowed:
                if hints and name in hints:
                    raise self.error(hints[name], dotted, key_node)
                close = difflib.get_close_matches(name, list(allowed), n=1, cutoff=0.6)
                suggestion = f" (did you mean {close[0]!r}?)" if close else (
                    f" (known keys: {', '.join(allowed)})")
                raise self.error(f"unknown key {name!r}{suggestion}", dotted, key_node)
            pairs.append((name, value_node))
        return pairs

    def scalar(self, node: Node, key: str) -> str | None:
        """The text of a scalar exactly as written, or None for null."""
        if not isinstance(node, ScalarNode):
            raise self.error(f"must be a single value, not {_describe(node)}", key, node)
        if node.tag == _NULL_TAG:
            return None
        return node.value.strip()


def _describe(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return "a single value"


_Reader = Callable[[_Context, Node, str], Any]


@dataclass(frozen=True)
class _Field:
    """One leaf key: how to read it from a node, and its default as parsed and as written."""

    read: _Reader
    default: Any
    shown: str | None = None

    @property
    def default_text(self) -> str:
        if self.shown is not None:
            return self.shown
        if self.default is None:
            return "null"
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        if isinstance(self.default, tuple):
            return "[]" if not self.default else str(list(self.default))
        return str(self.default)


_REQUIRED = object()


def _required_text(ctx: _Context, node: Node, key: str, *, nullable: bool) -> str | None:
    text = ctx.scalar(node, key)
    if text is None:
        if nullable:
            return None
        raise ctx.error("must be set (it is null)", key, node)
    if not text:
        raise ctx.error("must not be empty" + ("; write null to leave it unset" if nullable else ""),
                        key, node)
    return text


def _text(*, nullable: bool = False) -> _Reader:
    def read(ctx: _Context, node: Node, key: str) -> str | None:
        return _required_text(ctx, node, key, nullable=nullable)
    return read


def _name() -> _Reader:
    def read(ctx: _Context, node: Node, key: str) -> str:
        text = _required_text(ctx, node, key, nullable=False)
        if not re.fullmatch(r"[A-Za-z0-9_-]+", text):
            raise ctx.error(f"{text!r} may only contain letters, digits, '_' and '-' "
                            "(it is used as a metric label)", key, node)
        return text
    return read


def _boolean() -> _Reader:
    def read(ctx: _Context, node: Node, key: str) -> bool:
        if isinstance(node, ScalarNode) and node.tag == _BOOL_TAG:
            return _BOOL_VALUES[node.value.lower()]
        if isinstance(node, ScalarNode):
            shown = "null" if node.tag == _NULL_TAG else repr(node.value)
            raise ctx.error(f"must be true or false, not {shown}", key, node)
        raise ctx.error(f"must be true or false, not {_describe(node)}", key, node)
    return read


def _integer(minimum: int, *, nullable: bool = False) -> _Reader:
    def read(ctx: _Context, node: Node, key: str) -> int | None:
        text = _required_text(ctx, node, key, nullable=nullable)
        if text is None:
            return None
        if not re.fullmatch(r"[+-]?[0-9]+", text):
            raise ctx.error(f"must be a whole number, not {text!r}", key, node)
        value = int(text, 10)
        if value < minimum:
            raise ctx.error(f"must be at least {minimum} (got {value})", key, node)
        return value
    return read


def _duration(*, positive: bool = False, nullable: bool = False) -> _Reader:
    def read(ctx: _Context, node: Node, key: str) -> float | None:
        if isinstance(node, ScalarNode) and node.tag == _BOOL_TAG:
            raise ctx.error(f"must be a duration, not {node.value!r}: {_DURATION_HINT}", key, node)
        text = _required_text(ctx, node, key, nullable=nullable)
        if text is None:
            return None
        seconds = parse_duration(text, key=key, file=ctx.file, line=_line(node))
        if positive and seconds <= 0:
            raise ctx.error("must be longer than 0", key, node)
        return seconds
    return read


def _size() -> _Reader:
    def read(ctx: _Context, node: Node, key: str) -> int:
        text = _required_text(ctx, node, key, nullable=False)
        size = parse_size(text, key=key, file=ctx.file, line=_line(node))
        if size < 1:
            raise ctx.error("must be at least 1 byte", key, node)
        return size
    return read


def _choice(*options: str) -> _Reader:
    by_lower = {option.lower(): option for option in options}

    def read(ctx: _Context, node: Node, key: str) -> str:
        text = _required_text(ctx, node, key, nullable=False)
        if text.lower() not in by_lower:
            raise ctx.error(f"must be one of {' | '.join(options)}, not {text!r}", key, node)
        return by_lower[text.lower()]
    return read


def _country() -> _Reader:
    def read(ctx: _Context, node: Node, key: str) -> str:
        text = _required_text(ctx, node, key, nullable=False).upper()
        if text not in phonenumbers.SUPPORTED_REGIONS:
            raise ctx.error(f"{text!r} is not a region code: use two letters such as US, DE or GB",
                            key, node)
        return text
    return read


def _prefixes() -> _Reader:
    def read(ctx: _Context, node: Node, key: str) -> tuple[str, ...]:
        if isinstance(node, ScalarNode) and node.tag == _NULL_TAG:
            return ()
        if not isinstance(node, SequenceNode):
            raise ctx.error(f'must be a list of E.164 prefixes such as ["+1900"], not {_describe(node)}',
                            key, node)
        prefixes = []
        for index, item in enumerate(node.value):
            item_key = f"{key}[{index}]"
            text = _required_text(ctx, item, item_key, nullable=False)
            if not re.fullmatch(r"\+[0-9]{1,15}", text):
                raise ctx.error(f"{text!r} is not an E.164 prefix: write '+' and digits, e.g. \"+1900\"",
                                item_key, item)
            if not _could_begin_a_number(text[1:]):
                raise ctx.error(f"{text!r} matches no fax number: an E.164 number begins with a country "
                                "code (+1, +44, +49, ...)", item_key, item)
            prefixes.append(text)
        return tuple(prefixes)
    return read


def _could_begin_a_number(digits: str) -> bool:
    """Whether some E.164 number starts with these digits: they begin with a country calling
    code, or are the start of one (`+4` covers +41, +44, +49...).  A prefix that fails this
    would make `allow` refuse every number, or `deny` refuse none, without a word."""
    codes = [str(code) for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE]
    return any(digits.startswith(code) or code.startswith(digits) for code in codes)


def _path(*, nullable: bool = False) -> _Reader:
    def read(ctx: _Context, node: Node, key: str) -> Path | None:
        text = _required_text(ctx, node, key, nullable=nullable)
        if text is None:
            return None
        return _resolve(ctx.base, text)
    return read


def _resolve(base: Path, text: str) -> Path:
    # normpath, not resolve(): keep the operator's symlinks in what we show and use;
    # the overlap check compares fully resolved paths separately.
    return Path(os.path.normpath(base / os.path.expanduser(text)))


def _secret(*, url_safe: bool = False) -> _Reader:
    # Errors here never quote the value: it is a credential.
    def read(ctx: _Context, node: Node, key: str) -> Secret | None:
        if not isinstance(node, ScalarNode):
            raise ctx.error(f"must be a single value, not {_describe(node)}", key, node)
        if node.tag == _NULL_TAG:
            return None
        text = node.value.strip()
        problem = _secret_problem(text, url_safe=url_safe)
        if problem:
            raise ctx.error(problem, key, node)
        return Secret(text)
    return read


def _secret_problem(text: str, *, url_safe: bool = False) -> str | None:
    if not text:
        return "must not be empty; write null to leave it unset"
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        return "must not contain spaces, line breaks or control characters"
    if url_safe and not re.fullmatch(r"[A-Za-z0-9._~-]+", text):
        return "may only contain letters, digits and - _ . ~ (it becomes part of the webhook URL)"
    return None


def _url() -> _Reader:
    def read(ctx: _Context, node: Node, key: str) -> str:
        text = _required_text(ctx, node, key, nullable=False)
        parts = urllib.parse.urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ctx.error(f"{text!r} is not an http:// or https:// URL", key, node)
        # The client appends "/fax-send" etc., so one trailing slash must not become two.
        return text.rstrip("/")
    return read


def _split_listen(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError
    if not host or not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:
        raise ValueError
    return host, int(port)


def _listen(*, nullable: bool = False) -> _Reader:
    def read(ctx: _Context, node: Node, key: str) -> str | None:
        text = _required_text(ctx, node, key, nullable=nullable)
        if text is None:
            return None
        try:
            _split_listen(text)
        except ValueError:
            raise ctx.error(f"{text!r} is not host:port (port 0-65535), e.g. 127.0.0.1:9468, "
                            "0.0.0.0:9468 or [::1]:9468", key, node) from None
        return text
    return read


# --- the schema: SPEC 3's YAML block, key by key --------------------------------------------

_PER_OUTBOX: dict[str, Any] = {
    "country": _Field(_country(), "US"),
    "caller_id": _Field(_text(nullable=True), None),
    "quality": _Field(_choice("Low", "Standard", "HD"), "Standard"),
    "settle": _Field(_duration(), 2.0, "2s"),
    "rescan": _Field(_duration(positive=True), 60.0, "60s"),
    "sidecar_wait": _Field(_duration(), 30.0, "30s"),
    "max_file_size": _Field(_size(), 20 * 10**6, "20MB"),
    "max_pages": _Field(_integer(1), 100),
    "max_faxes_per_hour": _Field(_integer(1, nullable=True), None),
    "allow": _Field(_prefixes(), ()),
    "deny": _Field(_prefixes(), ()),
    "resend": {
        "max": _Field(_integer(0), 2),
        "delay": _Field(_duration(), 300.0, "5m"),
    },
    "on_uncertain": _Field(_choice("fail", "resend"), "fail"),
    "delete_after_delivery": _Field(_boolean(), False),
}

_OUTBOX_ONLY: dict[str, _Field] = {
    "name": _Field(_name(), _REQUIRED),
    "path": _Field(_path(), _REQUIRED),
    "sent": _Field(_path(), _REQUIRED),
    "failed": _Field(_path(), _REQUIRED),
    "number": _Field(_text(nullable=True), None),
    "polling": _Field(_boolean(), False),
    "private": _Field(_path(nullable=True), None),
}

_OUTBOX = {**_OUTBOX_ONLY, **_PER_OUTBOX}


class _Outboxes:
    """Marks the one list in the schema."""


_TOP: dict[str, Any] = {
    "api": {
        "base_url": _Field(_url(), "https://api.ifaxapp.com/v1"),
        "key_file": _Field(_path(nullable=True), None),
        "key": _Field(_secret(), None),
        "timeout": _Field(_duration(positive=True), 30.0, "30s"),
        "max_in_flight": _Field(_integer(1), 4),
        "requests_per_minute": _Field(_integer(1), 120),
    },
    "database": _Field(_path(), Path("/var/lib/fax-gateway/jobs.db")),
    "http": {
        "listen": _Field(_listen(), "127.0.0.1:9468"),
        "status_listen": _Field(_listen(nullable=True), None),
    },
    "webhook": {
        "enabled": _Field(_boolean(), False),
        "secret": _Field(_secret(url_safe=True), None),
    },
    "poll": {
        "interval": _Field(_duration(positive=True), 30.0, "30s"),
        "give_up_after": _Field(_duration(positive=True), 21600.0, "6h"),
    },
    "log": {
        "level": _Field(_choice("debug", "info", "warning", "error"), "info"),
        "format": _Field(_choice("text", "json"), "text"),
        "file_names": _Field(_boolean(), True),
    },
    "notify": {"command": _Field(_text(nullable=True), None)},
    "retention": {
        "sent": _Field(_duration(positive=True, nullable=True), None),
        "failed": _Field(_duration(positive=True, nullable=True), None),
        "jobs": _Field(_duration(positive=True, nullable=True), None),
    },
    "defaults": _PER_OUTBOX,
    "outboxes": _Outboxes(),
}

_TOP_HINTS = {
    **{name: f"{name!r} is a per-outbox setting: put it under 'defaults' or on an outbox"
       for name in _PER_OUTBOX},
    **{name: f"{name!r} belongs on an outbox (a '- name: ...' item under 'outboxes')"
       for name in _OUTBOX_ONLY},
}
_DEFAULTS_HINTS = {name: f"{name!r} can only be set on an outbox, not under 'defaults'"
                   for name in _OUTBOX_ONLY}


def _flatten(schema: Mapping[str, Any], prefix: str = "") -> dict[str, _Field]:
    fields: dict[str, _Field] = {}
    for name, spec in schema.items():
        dotted = f"{prefix}{name}"
        if isinstance(spec, dict):
            fields.update(_flatten(spec, dotted + "."))
        elif isinstance(spec, _Field):
            fields[dotted] = spec
    return fields


# Every leaf key by its canonical dotted name: "api.timeout", "defaults.resend.max",
# "outboxes.number" (the keys only an outbox may set).
_FIELDS: dict[str, _Field] = {**_flatten(_TOP), **_flatten(_OUTBOX_ONLY, "outboxes.")}


@dataclass
class _Set:
    """A value set in the file, with where it was set."""

    value: Any
    key: str
    line: int


@dataclass
class _Item:
    values: dict[str, _Set]
    line: int


def _walk(ctx: _Context, node: Node | None, schema: Mapping[str, Any], key: str,
          hints: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The keys set in one mapping, flattened to relative dotted names ("resend.max")."""
    found: dict[str, Any] = {}
    for name, value_node in ctx.items(node, key, schema, hints):
        dotted = f"{key}.{name}" if key else name
        spec = schema[name]
        if isinstance(spec, dict):
            sub = _walk(ctx, value_node, spec, dotted,
                        _DEFAULTS_HINTS if spec is _PER_OUTBOX else None)
            found.update({f"{name}.{rel}": entry for rel, entry in sub.items()})
        elif isinstance(spec, _Outboxes):
            found[name] = _walk_outboxes(ctx, value_node, dotted)
        else:
            found[name] = _Set(spec.read(ctx, value_node, dotted), dotted, _line(value_node))
    return found


def _walk_outboxes(ctx: _Context, node: Node, key: str) -> _Set:
    if isinstance(node, ScalarNode) and node.tag == _NULL_TAG:
        return _Set([], key, _line(node))
    if not isinstance(node, SequenceNode):
        raise ctx.error(f"must be a list of outboxes (each starting with '- name: ...'), not "
                        f"{_describe(node)}", key, node)
    items = []
    for index, item in enumerate(node.value):
        item_key = f"{key}[{index}]"
        if not isinstance(item, MappingNode):
            raise ctx.error(f"must be a mapping with name, path, sent and failed, not {_describe(item)}",
                            item_key, item)
        values = _walk(ctx, item, _OUTBOX, item_key)
        for name in ("name", "path", "sent", "failed"):
            if name not in values:
                raise ctx.error("is required", f"{item_key}.{name}", item)
        items.append(_Item(values, _line(item)))
    return _Set(items, key, _line(node))


def _canonical(outbox_key: str) -> str:
    head = outbox_key.split(".", 1)[0]
    return f"defaults.{outbox_key}" if head in _PER_OUTBOX else f"outboxes.{outbox_key}"


def _check_not_supported(ctx: _Context, top: dict[str, Any], outboxes: list[_Item]) -> None:
    """SPEC 3: a key this version cannot honour is refused, never accepted and ignored."""
    blocked = set(NOT_SUPPORTED_YET)  # read at call time, so tests and later edits take effect
    if not blocked:
        return
    entries = [(rel, entry) for rel, entry in top.items() if rel != "outboxes"]
    entries += [(_canonical(rel), entry) for item in outboxes for rel, entry in item.values.items()]
    for canonical, entry in entries:
        if not any(canonical == b or canonical.startswith(b + ".") for b in blocked):
            continue
        field = _FIELDS[canonical]
        if entry.value != field.default:
            raise ConfigError("is not supported yet by this version; remove it or set it to its "
                              f"default ({field.default_text})", file=ctx.file, key=entry.key,
                              line=entry.line)


# --- load ----------------------------------------------------------------------------------

def load_config(path: str | os.PathLike[str] | None = None, *,
                environ: Mapping[str, str] | None = None) -> Config:
    """Read, validate and resolve the configuration file; raise ConfigError on any problem.

    ``environ`` stands in for os.environ (IFAX_API_KEY, FAX_GATEWAY_CONFIG) so tests
    and callers never have to touch the process environment.  The key file is never read
    here (see `read_api_key`): only `run` needs it.
    """
    env = os.environ if environ is None else environ
    given = default_config_path(env) if path is None else Path(path)
    file = str(given)
    config_path = Path(os.path.abspath(os.path.expanduser(given)))
    try:
        data = config_path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("the configuration file does not exist: create it (see config.example.yaml) "
                          "or name another one with -c CONFIG or $FAX_GATEWAY_CONFIG",
                          file=file) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a configuration file: name the YAML file itself",
                          file=file) from None
    except PermissionError:
        raise ConfigError("the configuration file cannot be read (permission denied): run as a user "
                          "who may read it, or fix its owner or mode", file=file) from None
    except OSError as exc:
        raise ConfigError(f"the configuration file cannot be read ({exc.strerror}): check the path",
                          file=file) from None

    ctx = _Context(file, config_path.parent)
    root = ctx.compose(data)
    top = _walk(ctx, root, _TOP, "", _TOP_HINTS)
    outboxes_set: _Set | None = top.get("outboxes")
    items: list[_Item] = outboxes_set.value if outboxes_set else []
    _check_not_supported(ctx, top, items)

    def get(key: str) -> Any:
        return top[key].value if key in top else _FIELDS[key].default

    if not items:
        raise ConfigError("at least one outbox is required (name, path, sent and failed)", file=file,
                          key="outboxes", line=outboxes_set.line if outboxes_set else 1)
    outboxes = tuple(_build_outbox(item, get) for item in items)
    _check_names(ctx, items)
    _check_numbers(ctx, items, outboxes, top)
    _check_folders(ctx, items, top.get("database"), get("database"))

    warnings: list[str] = []
    api = ApiConfig(
        base_url=get("api.base_url"),
        key=_api_key(ctx, top, env, config_path, warnings),
        key_file=get("api.key_file"),
        timeout=get("api.timeout"),
        max_in_flight=get("api.max_in_flight"),
        requests_per_minute=get("api.requests_per_minute"),
        key_file_line=top["api.key_file"].line if "api.key_file" in top else None,
    )
    if api.timeout + STOP_MARGIN > UNIT_TIMEOUT_STOP_SEC:
        where = f"{file}, line {top['api.timeout'].line}: " if "api.timeout" in top else ""
        warnings.append(f"{where}api.timeout ({api.timeout:g} s) + {STOP_MARGIN:g} s exceeds the systemd "
                        f"unit's TimeoutStopSec={UNIT_TIMEOUT_STOP_SEC:g}, so a stop could kill a request "
                        f"under way: raise TimeoutStopSec to at least {math.ceil(api.timeout + STOP_MARGIN)} "
                        "(systemctl edit fax-gateway), or lower api.timeout")
    webhook = WebhookConfig(enabled=get("webhook.enabled"), secret=get("webhook.secret"))
    if webhook.enabled and webhook.secret is None:
        entry = top["webhook.enabled"]
        raise ConfigError("is true but webhook.secret is not set: set a long random "
                          "secret (it becomes part of the webhook URL)", file=file, key=entry.key,
                          line=entry.line)
    if webhook.secret is not None and _readable_by_others(config_path):
        warnings.append(f"{file} holds webhook.secret and is readable by other users: "
                        f"chmod 600 {file}")
    host, port = _split_listen(get("http.listen"))
    status_host, status_port = _status_listen(ctx, top, get("http.listen"))
    return Config(
        path=config_path,
        api=api,
        database=get("database"),
        http=HttpConfig(listen=get("http.listen"), host=host, port=port,
                        status_listen=get("http.status_listen"), status_host=status_host,
                        status_port=status_port),
        webhook=webhook,
        poll=PollConfig(interval=get("poll.interval"), give_up_after=get("poll.give_up_after")),
        log=LogConfig(level=get("log.level"), format=get("log.format"),
                      file_names=get("log.file_names")),
        notify=NotifyConfig(command=get("notify.command")),
        retention=RetentionConfig(sent=get("retention.sent"), failed=get("retention.failed"),
                                  jobs=get("retention.jobs")),
        outboxes=outboxes,
        warnings=tuple(warnings),
    )


_ANY_ADDRESS = ("0.0.0.0", "::", "")


def _status_listen(ctx: _Context, top: dict[str, Any], listen: str) -> tuple[str | None, int | None]:
    """http.status_listen (null: no status page) needs a port of its own: the page is for
    people in the office, while http.listen is what faces iFax through the proxy."""
    entry = top.get("http.status_listen")
    if entry is None or entry.value is None:
        return None, None
    host, port = _split_listen(listen)
    status_host, status_port = _split_listen(entry.value)
    if status_port == port != 0 and (status_host == host or status_host in _ANY_ADDRESS
                                     or host in _ANY_ADDRESS):
        raise ConfigError(f"({entry.value}) must differ from http.listen ({listen}): the status page "
                          "needs a port of its own, so that the port facing iFax never shows it",
                          file=ctx.file, key=entry.key, line=entry.line)
    return status_host, status_port


def _build_outbox(item: _Item, get: Callable[[str], Any]) -> OutboxConfig:
    def pick(rel: str) -> Any:
        # Outbox first, then `defaults`, then SPEC 3's default: key by key, so an outbox
        # that sets only resend.max keeps the delay from `defaults`.
        if rel in item.values:
            return item.values[rel].value
        return get(_canonical(rel))

    return OutboxConfig(
        name=pick("name"), path=pick("path"), sent=pick("sent"), failed=pick("failed"),
        number=pick("number"), polling=pick("polling"), country=pick("country"),
        caller_id=pick("caller_id"), quality=pick("quality"), settle=pick("settle"),
        rescan=pick("rescan"), sidecar_wait=pick("sidecar_wait"), max_file_size=pick("max_file_size"),
        max_pages=pick("max_pages"), max_faxes_per_hour=pick("max_faxes_per_hour"),
        allow=pick("allow"), deny=pick("deny"),
        resend=ResendPolicy(max=pick("resend.max"), delay=pick("resend.delay")),
        on_uncertain=pick("on_uncertain"), delete_after_delivery=pick("delete_after_delivery"),
        private=pick("private") or default_private(pick("path"), pick("name")),
    )


def _check_numbers(ctx: _Context, items: list[_Item], outboxes: tuple[OutboxConfig, ...],
                   top: dict[str, Any]) -> None:
    """An outbox `number` is judged as the daemon judges it for each document (numbers.py,
    with the outbox's country, allow and deny): one it would refuse rejects every document
    at run time, so it is refused here, where the operator is looking."""
    for item, outbox in zip(items, outboxes, strict=True):
        entry = item.values.get("number")
        if entry is None or entry.value is None:
            continue
        try:
            numbers.check_allowed(numbers.normalize(entry.value, outbox.country), outbox.allow, outbox.deny)
        except Rejected as exc:
            raise ConfigError(f"{exc.detail or exc.reason}: every document of this outbox would be "
                              f"rejected as {exc.reason_code}", file=ctx.file, key=entry.key,
                              line=entry.line) from None


def _check_names(ctx: _Context, items: list[_Item]) -> None:
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        entry = item.values["name"]
        if entry.value in first:
            raise ConfigError(f"{entry.value!r} is already the name of outboxes[{first[entry.value]}]: "
                              "outbox names must be unique", file=ctx.file, key=entry.key,
                              line=entry.line)
        first[entry.value] = index


def _check_folders(ctx: _Context, items: list[_Item], database_set: _Set | None,
                   database: Path) -> None:
    """Outbox, sent and failed folders must be disjoint trees.

    A sent folder inside an outbox would be rescanned and its documents faxed again;
    two outboxes sharing a tree would both take the same file.
    """
    folders = [item.values[name] for item in items for name in ("path", "sent", "failed")]
    real = [Path(os.path.realpath(entry.value)) for entry in folders]
    for later in range(len(folders)):
        for earlier in range(later):
            a, b = real[earlier], real[later]
            first, second = folders[earlier], folders[later]
            if a == b:
                problem = f"is the same folder as {first.key} ({first.value})"
            elif a in b.parents:
                problem = f"({second.value}) lies inside {first.key} ({first.value})"
            elif b in a.parents:
                problem = f"({second.value}) contains {first.key} ({first.value})"
            else:
                continue
            raise ConfigError(f"{problem}: outboxes, sent and failed folders must not lie inside "
                              "one another", file=ctx.file, key=second.key, line=second.line)
    _check_private(ctx, items)
    # The gateway would take the database (or its -wal file) as a document and file it in failed/.
    db_real = Path(os.path.realpath(database))
    for entry, folder in zip(folders, real, strict=True):
        if folder in db_real.parents:
            raise ConfigError(f"({database}) lies inside {entry.key} ({entry.value}): keep the "
                              "database out of outbox, sent and failed folders", file=ctx.file,
                              key="database", line=database_set.line if database_set else entry.line)


def _check_private(ctx: _Context, items: list[_Item]) -> None:
    """A private folder inside sent/ or failed/ would be filed over; one shared by two
    outboxes would mix their job folders (the same job id in two outboxes' databases)."""
    seen: dict[Path, str] = {}
    for item in items:
        entry = item.values.get("private")
        if entry is None or entry.value is None:
            continue
        real = Path(os.path.realpath(entry.value))
        for other in items:
            for role in ("sent", "failed"):
                folder = Path(os.path.realpath(other.values[role].value))
                if real == folder or folder in real.parents or real in folder.parents:
                    raise ConfigError(f"({entry.value}) overlaps {other.values[role].key} "
                                      f"({other.values[role].value}): put the private folder outside "
                                      "every sent and failed folder", file=ctx.file, key=entry.key,
                                      line=entry.line)
        for other in items:
            outbox = Path(os.path.realpath(other.values["path"].value))
            if other is not item and (real == outbox or outbox in real.parents):
                raise ConfigError(f"({entry.value}) lies inside {other.values['path'].key} "
                                  f"({other.values['path'].value}): another outbox would take its files",
                                  file=ctx.file, key=entry.key, line=entry.line)
        if real in seen:
            raise ConfigError(f"({entry.value}) is also the private folder of {seen[real]}: each outbox "
                              "needs its own", file=ctx.file, key=entry.key, line=entry.line)
        seen[real] = entry.key


def _readable_by_others(path: Path) -> bool:
    try:
        return bool(stat.S_IMODE(path.stat().st_mode) & 0o044)
    except OSError:
        return False


def _api_key(ctx: _Context, top: dict[str, Any], env: Mapping[str, str], config_path: Path,
             warnings: list[str]) -> Secret | None:
    """api.key, else $IFAX_API_KEY; None when api.key_file is set or there is no key at all.

    api.key_file is not read here (see read_api_key): it is typically a systemd credential
    that exists only while the service runs and only the service's user may read, and the
    commands that never call the API (`jobs`, `show`, `check-config`) must work without it.
    No key is not an error here either: whatever calls the API checks.
    """
    inline = top.get("api.key")
    key_file = top.get("api.key_file")
    if inline and inline.value is not None and key_file and key_file.value is not None:
        raise ConfigError("is set together with api.key: keep only one of them (api.key_file is "
                          "the safer)", file=ctx.file, key=key_file.key, line=key_file.line)
    if key_file and key_file.value is not None:
        return None
    if inline and inline.value is not None:
        if _readable_by_others(config_path):
            warnings.append(f"{ctx.file} holds api.key and is readable by other users: move the key "
                            f"to api.key_file or IFAX_API_KEY, or chmod 600 {ctx.file}")
        return inline.value
    text = env.get("IFAX_API_KEY", "").strip()
    if not text:
        return None
    problem = _secret_problem(text)
    if problem:
        raise ConfigError(f"the IFAX_API_KEY environment variable {problem}", key="IFAX_API_KEY")
    return Secret(text)


def read_api_key(config: Config) -> Secret | None:
    """The key `run` sends: api.key_file read now, else api.key or $IFAX_API_KEY; None if none.

    Only the daemon talking to the real API calls this, at start-up, so a stopped service's
    missing credential or a file only its user may read never trips another command."""
    api = config.api
    if api.key_file is None:
        return api.key
    where = {"file": str(config.path), "key": "api.key_file", "line": api.key_file_line}
    try:
        text = api.key_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ConfigError(f"the key file {api.key_file} cannot be read ({reason}): check that "
                          "it exists and that the gateway's user may read it", **where) from None
    if not text:
        raise ConfigError(f"the key file {api.key_file} is empty: put the iFax API key in it", **where)
    problem = _secret_problem(text)
    if problem:
        raise ConfigError(f"the key in {api.key_file} {problem}", **where)
    return Secret(text)


# --- dump ----------------------------------------------------------------------------------

def dump_redacted(config: Config) -> str:
    """The resolved configuration as YAML for `check-config`, every secret as ``***``.

    Everything an operator could get wrong is shown resolved: absolute paths,
    durations in seconds, sizes in bytes, and each outbox with `defaults` merged in.
    """
    def secret(value: Secret | None) -> str | None:
        return None if value is None else "***"

    def path(value: Path | None) -> str | None:
        return None if value is None else str(value)

    data = {
        "api": {
            "base_url": config.api.base_url,
            "key_file": path(config.api.key_file),
            "key": secret(config.api.key),
            "timeout": config.api.timeout,
            "max_in_flight": config.api.max_in_flight,
            "requests_per_minute": config.api.requests_per_minute,
        },
        "database": path(config.database),
        "http": {"listen": config.http.listen, "status_listen": config.http.status_listen},
        "webhook": {"enabled": config.webhook.enabled, "secret": secret(config.webhook.secret)},
        "poll": {"interval": config.poll.interval, "give_up_after": config.poll.give_up_after},
        "log": {"level": config.log.level, "format": config.log.format,
                "file_names": config.log.file_names},
        "notify": {"command": config.notify.command},
        "retention": {"sent": config.retention.sent, "failed": config.retention.failed,
                      "jobs": config.retention.jobs},
        "outboxes": [
            {
                "name": outbox.name,
                "path": path(outbox.path),
                "sent": path(outbox.sent),
                "failed": path(outbox.failed),
                "number": outbox.number,
                "polling": outbox.polling,
                "private": path(outbox.private),
                "country": outbox.country,
                "caller_id": outbox.caller_id,
                "quality": outbox.quality,
                "settle": outbox.settle,
                "rescan": outbox.rescan,
                "sidecar_wait": outbox.sidecar_wait,
                "max_file_size": outbox.max_file_size,
                "max_pages": outbox.max_pages,
                "max_faxes_per_hour": outbox.max_faxes_per_hour,
                "allow": list(outbox.allow),
                "deny": list(outbox.deny),
                "resend": {"max": outbox.resend.max, "delay": outbox.resend.delay},
                "on_uncertain": outbox.on_uncertain,
                "delete_after_delivery": outbox.delete_after_delivery,
            }
            for outbox in config.outboxes
        ],
    }
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
