"""Sidecar files: which names are sidecars, which documents they belong to, and what they say (SPEC 4.3).

Sidecars are written by hand or by `echo` at a scanner, so parsing is lenient about
form (a bare number, a list, a BOM, `quality: hd`) and strict about meaning: anything
that could change where a fax goes or what it holds is refused with a reason that
names the file and the problem, never guessed or silently dropped.
"""

from __future__ import annotations

import codecs
import difflib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import yaml
from yaml.nodes import MappingNode, ScalarNode
from yaml.reader import ReaderError

from gateway.errors import Rejected

SIDECAR_EXTENSIONS = (".yaml", ".yml", ".json")
MAX_SIDECAR_BYTES = 64 * 1024
RESULT_SUFFIX = ".result.json"
QUALITIES = ("Low", "Standard", "HD")

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


def parse_sidecar(data: bytes, name: str) -> Sidecar:
    """Read a sidecar's bytes; `name` picks the format (.json or YAML) and is named in every error."""
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
        return _from_mapping(content, name)
    if isinstance(content, list):
        if not content:
            raise _bad(name, "it is an empty list: write at least one fax number in it")
        return Sidecar(to=tuple(_number(v, name, f"entry {i} of the list") for i, v in enumerate(content, 1)))
    return Sidecar(to=(_number(content, name, "the number"),))


def _bad(name: str, problem: str) -> Rejected:
    return Rejected("bad_sidecar", f"{name}: {problem}")


def _decode(data: bytes, name: str) -> str:
    # Windows PowerShell's `echo +1555... > scan.yaml` writes UTF-16 with a BOM, and Notepad
    # likes a UTF-8 BOM; both are unambiguous, so they are read rather than refused.
    encoding = "utf-16" if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise _bad(name, f"it is not UTF-8 text (bad byte at offset {exc.start}): save it as UTF-8") from None


class _SidecarYAMLError(yaml.MarkedYAMLError):
    """Valid YAML that a sidecar still cannot use, found while building it (a repeated key)."""


class _Loader(yaml.BaseLoader):
    """BaseLoader keeps every scalar as text, so `to: 00441234567` keeps its zeros and `+4930...` its plus.

    Only unquoted nulls become None, and a repeated key is an error instead of the
    last one silently winning (two `to:` lines must not fax just one of them).
    """

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
                raise _SidecarYAMLError(problem=f"{key!r} is written twice",
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


def _json_object(pairs: list[tuple[str, object]]) -> dict:
    mapping: dict = {}
    for key, value in pairs:
        if key in mapping:
            raise _DuplicateKey(key)
        mapping[key] = value
    return mapping


def _load_json(text: str, name: str) -> object:
    try:
        return json.loads(text, object_pairs_hook=_json_object)
    except _DuplicateKey as exc:
        raise _bad(name, f"{str(exc)!r} is written twice") from None
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


def _text(value: object, name: str, what: str) -> str | None:
    """A text value, or None for an empty one; whole JSON numbers count as their digits."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise _bad(name, f"{what} must be text, not {_kind(value)}; write it in quotes")
    return value if value.strip() else None


def _number(value: object, name: str, what: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        raise _bad(name, f"{what} is the negative number {value}, not a fax number")
    text = _text(value, name, what)
    if text is None:
        raise _bad(name, f"{what} is empty: write a fax number there")
    text = text.strip()
    if "," in text or ";" in text:
        raise _bad(name, f"{what} holds several numbers in one ({text}); write each number as its own "
                         "list entry")
    return text


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


def _from_mapping(content: dict, name: str) -> Sidecar:
    for key in content:
        if not isinstance(key, str):
            raise _bad(name, f"the key {key!r} is not a name; the known keys are {', '.join(KNOWN_KEYS)}")
        if key not in KNOWN_KEYS:
            suggestion = _suggest(key)
            if suggestion:
                raise _bad(name, f"unknown key {key!r}: did you mean {suggestion!r}?")
            raise _bad(name, f"unknown key {key!r}; the known keys are {', '.join(KNOWN_KEYS)}")
    if not content:
        raise _bad(name, "it has no keys: write the fax number after 'to:'")
    options = {key: _text(content.get(key), name, f"'{key}'") for key in _TEXT_KEYS}
    if options["caller_id"] is not None:
        options["caller_id"] = options["caller_id"].strip()
    return Sidecar(
        to=_recipients(content, name),
        files=_files(content.get("files"), name),
        quality=_quality(content.get("quality"), name),
        send_at=_send_at(content.get("send_at"), name),
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
            raise _bad(name, f"{file!r} in 'files' {problem}")
        if file in files:
            raise _bad(name, f"{file!r} is listed twice in 'files'")
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
    raise _bad(name, f"'quality' must be Low, Standard or HD, not {text!r}")


def _send_at(value: object, name: str) -> datetime | None:
    if isinstance(value, int) and not isinstance(value, bool):
        raise _bad(name, "'send_at' must be an ISO 8601 time in quotes, e.g. \"2026-12-01T08:00:00Z\"")
    text = _text(value, name, "'send_at'")
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise _bad(name, f"'send_at' is not an ISO 8601 time such as 2026-12-01T08:00:00Z: "
                         f"{text!r}") from None
    if len(text.strip()) <= len("2026-12-01"):
        raise _bad(name, f"'send_at' {text!r} is a date without a time: write e.g. 2026-12-01T08:00:00Z")
    if when.tzinfo is None or when.utcoffset() is None:
        raise _bad(name, f"'send_at' {text!r} has no UTC offset: add Z for UTC or the offset, "
                         "e.g. 2026-12-01T08:00:00+01:00")
    return when.astimezone(UTC)
