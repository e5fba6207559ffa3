"""Sidecar files: which names are sidecars, which documents they belong to, and what they say (SPEC 4.3).

Sidecars are written by hand or by `echo` at a scanner, so parsing is lenient about
form (a bare number, a list, a BOM, `quality: hd`) and strict about meaning: anything
that could change where a fax goes or what it holds is refused with a reason that
names the file and the problem, never guessed or silently dropped.

Whoever writes to an outbox is untrusted (SPEC 4.5), so nothing a sidecar holds may
raise anything but `Rejected("bad_sidecar")`, take more than a moment, or reach a
reason, a log line or the fax itself as a control character or a lone surrogate.
"""

from __future__ import annotations

import codecs
import difflib
import json
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.reader import ReaderError

from gateway.errors import Rejected

SIDECAR_EXTENSIONS = (".yaml", ".yml", ".json")
MAX_SIDECAR_BYTES = 64 * 1024
RESULT_SUFFIX = ".result.json"
QUALITIES = ("Low", "Standard", "HD")
MAX_NUMBER_DIGITS = 20
# Ten years, counting the leap days a decade can hold; further off is a typo, not a plan.
SEND_AT_RANGE = timedelta(days=3653)
# How much of a refused value a reason quotes: enough to find it, not enough to flood a log.
_SHOWN_CHARS = 40

_TEXT_KEYS = ("subject", "from_name", "to_name", "message", "caller_id", "reference")
KNOWN_KEYS = ("to", "files", "subject", "from_name", "to_name", "message", "caller_id", "quality", "send_at",
              "reference")

# Words people use for a key they do not remember; difflib cannot find these by spelling.
_KEY_HINTS = {
    "number": "to", "numbers": "to", "fax": "to", "fax_number": "to", "recipient": "to",
    "recipients": "to", "destination": "to", "dest": "to",
    "from": "from_name", "sender": "from_name", "name": "to_name",
    "document": "files", "documents": "files", "attachments": "files",
    "title": "subject", "text": "message", "note": "message", "comment": "message",
    "time": "send_at", "when": "send_at", "schedule": "send_at", "resolution": "quality",
}

# YAML's spellings of "nothing" when written without quotes; BaseLoader would keep them as text.
_YAML_NULLS = frozenset({"", "~", "null", "Null", "NULL"})


@dataclass(frozen=True)
class Sidecar:
    """What a sidecar asks for; numbers stay as written, since normalising needs the outbox's country."""

    to: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    subject: str | None = None
    from_name: str | None = None
    to_name: str | None = None
    message: str | None = None
    caller_id: str | None = None
    quality: str | None = None
    send_at: datetime | None = None  # aware, UTC
    reference: str | None = None


def is_sidecar_name(name: str) -> bool:
    """Whether a file is read as a sidecar rather than faxed; result files beside documents are neither."""
    if name.endswith(RESULT_SUFFIX):
        return False
    return any(name.endswith(ext) and len(name) > len(ext) for ext in SIDECAR_EXTENSIONS)


def sidecar_candidates(doc_name: str) -> list[str]:
    """Every name a sidecar of `doc_name` may have, in the SPEC's order of preference."""
    base, dot, ext = doc_name.rpartition(".")
    names = []
    for sidecar_ext in SIDECAR_EXTENSIONS:
        names.append(doc_name + sidecar_ext)
        if dot and base and ext:
            names.append(base + sidecar_ext)
    return [n for n in dict.fromkeys(names) if is_sidecar_name(n)]


def sidecars_for_document(doc_name: str, names: Iterable[str]) -> list[str]:
    """The sidecars present for a document; more than one means it is duplicated (SPEC 4.3)."""
    present = set(names)
    return [n for n in sidecar_candidates(doc_name) if n in present]


def documents_for_sidecar(sidecar_name: str, names: Iterable[str]) -> list[str]:
    """The present documents a sidecar could apply to, sorted; more than one means it is ambiguous.

    Defined as the inverse of `sidecar_candidates`, so a document and its sidecar
    always agree about each other. `names` are the folder's file names after the
    ignore rules of SPEC 4.1 (a `scan.pdf.part` download would otherwise count).
    """
    if not is_sidecar_name(sidecar_name):
        return []
    return sorted(
        n for n in set(names)
        if not is_sidecar_name(n) and not n.endswith(RESULT_SUFFIX) and sidecar_name in sidecar_candidates(n)
    )


def parse_sidecar(data: bytes, name: str, *, now: datetime | None = None) -> Sidecar:
    """Read a sidecar's bytes; `name` picks the format (.json or YAML) and is named in every error.

    `now` is what `send_at` is held against, given so tests need not depend on the clock.
    """
    if len(data) > MAX_SIDECAR_BYTES:
        raise _bad(name, f"it is larger than 64 KiB ({len(data)} bytes); a sidecar holds only numbers "
                         "and options")
    text = _decode(data, name)
    if not text.strip():
        raise _bad(name, "it is empty: write the fax number in it")
    content = _load_json(text, name) if name.endswith(".json") else _load_yaml(text, name)
    if content is None:
        raise _bad(name, "it is empty: write the fax number in it")
    if isinstance(content, dict):
        return _from_mapping(content, name, now or datetime.now(UTC))
    if isinstance(content, list):
        if not content:
            raise _bad(name, "it is an empty list: write at least one fax number in it")
        return Sidecar(to=tuple(_number(v, name, f"entry {i} of the list") for i, v in enumerate(content, 1)))
    return Sidecar(to=(_number(content, name, "the number"),))


def _bad(name: str, problem: str) -> Rejected:
    # Values are quoted with `_show` already; escaping the whole reason as well keeps the
    # file's own name, or any wording a parser quoted, from carrying a control character.
    return Rejected("bad_sidecar", _escaped(f"{name}: {problem}"))


def _escaped(text: str) -> str:
    """Reasons reach logs, result files and terminals, and a file's name may hold any byte.

    Undecodable bytes are written `\\xNN` as SPEC 4.5 writes names, anything else that
    does not print as its Python escape. Printable text, backslashes included, is left
    alone, so an edge that escapes the reason again changes nothing.
    """
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif "\udc80" <= ch <= "\udcff":
            out.append(f"\\x{ord(ch) - 0xdc00:02x}")
        else:
            out.append(repr(ch)[1:-1])
    return "".join(out)


def _show(value: str) -> str:
    """A value as a reason quotes it: escaped like `repr`, and cut short when long."""
    if len(value) > _SHOWN_CHARS:
        return f"{value[:_SHOWN_CHARS]!r}... ({len(value)} characters)"
    return repr(value)


def _decode(data: bytes, name: str) -> str:
    # Windows PowerShell's `echo +1555... > scan.yaml` writes UTF-16 with a BOM, and Notepad
    # likes a UTF-8 BOM; both are unambiguous, so they are read rather than refused.
    encoding = "utf-16" if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        what = "UTF-16" if encoding == "utf-16" else "UTF-8"
        raise _bad(name, f"it is not {what} text (bad byte at offset {exc.start}): "
                         "save it as UTF-8") from None


class _SidecarYAMLError(yaml.MarkedYAMLError):
    """Valid YAML that a sidecar still cannot use, found while building it (a repeated key)."""


class _Loader(yaml.BaseLoader):
    """BaseLoader keeps every scalar as text, so `to: 00441234567` keeps its zeros and `+4930...` its plus.

    Only unquoted nulls become None, and a repeated key is an error instead of the
    last one silently winning (two `to:` lines must not fax just one of them).
    Anchors and aliases are refused: nobody needs them to write a number, and an alias
    repeats a value without its bytes, so a small file could make every check below
    walk megabytes ("billion laughs"); without them the work is bounded by the 64 KiB.
    """

    def compose_node(self, parent: Node | None, index: object) -> Node:
        event = self.peek_event()
        if isinstance(event, AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _SidecarYAMLError(problem="YAML anchors (&) and aliases (*) are not allowed in a sidecar: "
                                            "write each value out, in quotes if it begins with & or *",
                                    problem_mark=event.start_mark)
        return super().compose_node(parent, index)

    def construct_scalar(self, node: ScalarNode) -> str | None:
        value = super().construct_scalar(node)
        if node.style is None and value in _YAML_NULLS:
            return None
        return value

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:
        if not isinstance(node, MappingNode):
            return super().construct_mapping(node, deep=deep)
        mapping: dict = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str):
                raise _SidecarYAMLError(problem="a key must be a plain name",
                                        problem_mark=key_node.start_mark)
            if key in mapping:
                raise _SidecarYAMLError(problem=f"{_show(key)} is written twice",
                                        problem_mark=key_node.start_mark)
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


def _load_yaml(text: str, name: str) -> object:
    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # already checks for characters YAML does not allow
        node = loader.get_single_node()
        if node is None:
            return None
        if isinstance(node, ScalarNode) and node.style is None and node.end_mark.line > node.start_mark.line:
            # YAML would join the lines into one number: two numbers run together could dial a third.
            raise _bad(name, "it holds a number over several lines; for several numbers write each on "
                             "its own line starting with '- '")
        return loader.construct_document(node)
    except _SidecarYAMLError as exc:
        raise _bad(name, f"line {exc.problem_mark.line + 1}: {exc.problem}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "it cannot be read"
        if exc.context and problem.startswith("but "):
            problem = f"{exc.context}, {problem}"
        raise _bad(name, f"it is not valid YAML{where}: {problem}") from None
    except ReaderError as exc:
        raise _bad(name, f"it is not valid YAML: character {exc.position + 1} is the control character "
                         f"#x{exc.character:04x}") from None
    except yaml.YAMLError as exc:
        raise _bad(name, f"it is not valid YAML: {exc}") from None
    except RecursionError:
        raise _bad(name, "it is not a usable sidecar: it is nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


class _DuplicateKey(ValueError):
    pass


class _JsonDigits(str):
    """A JSON whole number kept as the digits it was written with.

    Numbers are text to a sidecar anyway, and `int()` refuses more than 4300 digits
    with a ValueError that is no sidecar's business.
    """


def _json_object(pairs: list[tuple[str, object]]) -> dict:
    mapping: dict = {}
    for key, value in pairs:
        if key in mapping:
            raise _DuplicateKey(key)
        mapping[key] = value
    return mapping


def _load_json(text: str, name: str) -> object:
    try:
        return json.loads(text, object_pairs_hook=_json_object, parse_int=_JsonDigits)
    except _DuplicateKey as exc:
        raise _bad(name, f"{_show(exc.args[0])} is written twice") from None
    except json.JSONDecodeError as exc:
        hint = ""
        if set(text.strip()) <= set("0123456789+-(). "):
            hint = '; in a .json sidecar a number is written in quotes, e.g. "+15551234567"'
        where = f"line {exc.lineno}, column {exc.colno}"
        raise _bad(name, f"it is not valid JSON at {where}: {exc.msg}{hint}") from None
    except RecursionError:
        raise _bad(name, "it is not a usable sidecar: it is nested too deeply") from None


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, float):
        return "a decimal number"
    return type(value).__name__


def _text(value: object, name: str, what: str, *, lines: bool = False) -> str | None:
    """A text value, or None for an empty one; whole JSON numbers count as their digits."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(name, f"{what} must be text, not {_kind(value)}; write it in quotes")
    text = _usable_text(str(value), name, what, lines=lines)
    return text if text.strip() else None


def _usable_text(text: str, name: str, what: str, *, lines: bool) -> str:
    """Refuse what is not text a person wrote (SPEC 4.5): it would reach logs, the API and the fax.

    JSON's `\\u` and YAML's `\\x`/`\\e` escapes can write any code point, so a lone
    surrogate (which cannot be encoded to send) or a control character (which can
    rewrite a terminal or forge a log line) gets past both parsers. Only `message`
    (`lines`) may hold line breaks and tabs; elsewhere the line break that YAML's `|`
    and `>` leave at the end is dropped rather than refused. Windows line ends count
    as one line break, and a surrogate pair written as two escapes as its character.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    if not lines:
        text = text.rstrip("\n")
    if text.isprintable():
        return text
    if any("\ud800" <= ch <= "\udfff" for ch in text):
        try:
            text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
        except UnicodeDecodeError:
            raise _bad(name, f"{what} holds a lone surrogate (half of a character, such as the escape "
                             "\\ud800), which is not Unicode text") from None
    for ch in text:
        if ch in "\n\u2028\u2029":
            if not lines:
                raise _bad(name, f"{what} holds a line break: only 'message' may have several lines")
        elif ch == "\t":
            if not lines:
                raise _bad(name, f"{what} holds a tab: only 'message' may hold tabs")
        elif unicodedata.category(ch) == "Cc":
            raise _bad(name, f"{what} holds the control character {ch!r}: remove it")
    return text


def _number(value: object, name: str, what: str) -> str:
    if isinstance(value, _JsonDigits) and value.startswith("-"):
        raise _bad(name, f"{what} is a negative number, not a fax number")
    text = _text(value, name, what)
    if text is None:
        raise _bad(name, f"{what} is empty: write a fax number there")
    text = text.strip()
    if "," in text or ";" in text:
        raise _bad(name, f"{what} holds several numbers in one ({_show(text)}); write each number as its "
                         "own list entry")
    _check_digits(text, name, what)
    return text


def _check_digits(text: str, name: str, what: str) -> None:
    # E.164 allows 15 digits; 20 leaves room for 00/011 and a trunk 0 in parentheses. Longer
    # is no number, and phonenumbers and int() should never see thousands of digits.
    digits = sum(ch.isdecimal() for ch in text)
    if digits > MAX_NUMBER_DIGITS:
        raise _bad(name, f"{what} has {digits} digits; a fax number has at most {MAX_NUMBER_DIGITS}")


def _suggest(key: str) -> str:
    simple = key.strip().lower().replace("-", "_").replace(" ", "_")
    if simple in KNOWN_KEYS:
        return simple
    if simple in _KEY_HINTS:
        return _KEY_HINTS[simple]
    close = difflib.get_close_matches(simple, KNOWN_KEYS, n=1, cutoff=0.6)
    if close:
        return close[0]
    squashed = {k.replace("_", ""): k for k in KNOWN_KEYS}
    return squashed.get(simple.replace("_", ""), "")


def _from_mapping(content: dict, name: str, now: datetime) -> Sidecar:
    for key in content:
        if not isinstance(key, str):
            raise _bad(name, f"a key is {_kind(key)}, not a name; the known keys are {', '.join(KNOWN_KEYS)}")
        _usable_text(key, name, f"the key {_show(key)}", lines=False)
        if key not in KNOWN_KEYS:
            suggestion = _suggest(key)
            if suggestion:
                raise _bad(name, f"unknown key {_show(key)}: did you mean {suggestion!r}?")
            raise _bad(name, f"unknown key {_show(key)}; the known keys are {', '.join(KNOWN_KEYS)}")
    if not content:
        raise _bad(name, "it has no keys: write the fax number after 'to:'")
    options = {key: _text(content.get(key), name, f"'{key}'", lines=key == "message") for key in _TEXT_KEYS}
    if options["caller_id"] is not None:
        options["caller_id"] = options["caller_id"].strip()
        _check_digits(options["caller_id"], name, "'caller_id'")
    return Sidecar(
        to=_recipients(content, name),
        files=_files(content.get("files"), name),
        quality=_quality(content.get("quality"), name),
        send_at=_send_at(content.get("send_at"), name, now),
        **options,
    )


def _recipients(content: dict, name: str) -> tuple[str, ...]:
    if "to" not in content:
        return ()
    value = content["to"]
    if value is None:
        raise _bad(name, "'to' is empty: write the fax number after 'to:', or remove the line to use the "
                         "folder's number")
    if isinstance(value, list):
        if not value:
            raise _bad(name, "'to' is an empty list: write at least one fax number")
        return tuple(_number(v, name, f"entry {i} of 'to'") for i, v in enumerate(value, 1))
    if isinstance(value, dict):
        raise _bad(name, "'to' must be a fax number or a list of numbers, not a mapping")
    return (_number(value, name, "'to'"),)


def _files(value: object, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    files: list[str] = []
    for i, item in enumerate(items, 1):
        file = _text(item, name, f"entry {i} of 'files'")
        if file is None:
            raise _bad(name, f"entry {i} of 'files' is empty: write a file name there")
        problem = _file_name_problem(file)
        if problem:
            raise _bad(name, f"{_show(file)} in 'files' {problem}")
        if file in files:
            raise _bad(name, f"{_show(file)} is listed twice in 'files'")
        files.append(file)
    return tuple(files)


def _file_name_problem(file: str) -> str | None:
    if "/" in file or "\\" in file:
        return "is not a plain file name: files must lie in the same folder as the sidecar"
    if ".." in file:
        return "contains '..', which is not allowed in file names listed in a sidecar"
    if file.startswith("."):
        return "begins with '.': such files are ignored, rename it"
    if "\0" in file:
        return "contains a NUL character"
    if file.endswith(RESULT_SUFFIX):
        return "is a result file, not a document"
    if is_sidecar_name(file):
        return "is a sidecar, not a document"
    return None


def _quality(value: object, name: str) -> str | None:
    text = _text(value, name, "'quality'")
    if text is None:
        return None
    for quality in QUALITIES:
        if text.strip().lower() == quality.lower():
            return quality
    raise _bad(name, f"'quality' must be Low, Standard or HD, not {_show(text)}")


def _send_at(value: object, name: str, now: datetime) -> datetime | None:
    """The time as UTC; one in the past means "now", but not one from another decade.

    Ten years either way (SPEC 4.5) catches a mistyped year, and is checked before the
    conversion to UTC, which overflows for times at the ends of the calendar.
    """
    if isinstance(value, _JsonDigits):
        raise _bad(name, "'send_at' must be an ISO 8601 time in quotes, e.g. \"2026-12-01T08:00:00Z\"")
    text = _text(value, name, "'send_at'")
    if text is None:
        return None
    text = text.strip()
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise _bad(name, f"'send_at' is not an ISO 8601 time such as 2026-12-01T08:00:00Z: "
                         f"{_show(text)}") from None
    if len(text) <= len("2026-12-01"):
        raise _bad(name, f"'send_at' {_show(text)} is a date without a time: write e.g. 2026-12-01T08:00:00Z")
    if when.tzinfo is None or when.utcoffset() is None:
        raise _bad(name, f"'send_at' {_show(text)} has no UTC offset: add Z for UTC or the offset, "
                         "e.g. 2026-12-01T08:00:00+01:00")
    ahead = when - now  # a difference of aware times, which cannot overflow as a datetime would
    if ahead > SEND_AT_RANGE:
        raise _bad(name, f"'send_at' {_show(text)} is more than ten years from now")
    if -ahead > SEND_AT_RANGE:
        raise _bad(name, f"'send_at' {_show(text)} is more than ten years in the past")
    return when.astimezone(UTC)
