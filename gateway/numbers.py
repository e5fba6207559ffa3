"""Fax numbers: which folder names are numbers, E.164 normalisation, allow/deny rules (SPEC 4.2).

A wrong number here sends a document, often a patient's, to a stranger, so every
doubt ends in a rejection with the number as written, never in a guess.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumber, ValidationResult

from gateway.errors import Rejected

_DIGITS = frozenset("0123456789")
_SEPARATORS = frozenset(" -().")
_NUMBER_CHARS = _DIGITS | _SEPARATORS | {"+"}
# E.164 allows 15 digits; 20 leaves room for 00/011 and a trunk 0 in parentheses (SPEC 4.5).
MAX_DIGITS = 20
# How much of a refused number a reason quotes: a folder name can be hundreds of digits long.
_SHOWN_CHARS = 40

_WHY_NOT_POSSIBLE = {
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "it is local-only: add the area code",
    ValidationResult.INVALID_COUNTRY_CODE: "it does not start with a known country code",
    ValidationResult.TOO_SHORT: "it is too short",
    ValidationResult.TOO_LONG: "it is too long",
    ValidationResult.INVALID_LENGTH: "it has the wrong number of digits for its country",
}

_WHY_NOT_PARSED = {
    NumberParseException.INVALID_COUNTRY_CODE: "it does not start with a known country code",
    # Letters and stray characters are refused before parsing, so "not a number" means too few digits.
    NumberParseException.NOT_A_NUMBER: "it is too short",
    NumberParseException.TOO_SHORT_AFTER_IDD: "it is too short",
    NumberParseException.TOO_SHORT_NSN: "it is too short",
    NumberParseException.TOO_LONG: "it is too long",
}


def is_number_folder(name: str) -> bool:
    """Whether a folder is meant as a destination; such a folder never falls through to `number`."""
    return any(c in _DIGITS for c in name) and all(c in _NUMBER_CHARS for c in name)


@functools.lru_cache(maxsize=4096)
def normalize(raw: str, country: str) -> str:
    """E.164 text for a number as a person wrote it on a folder or in a sidecar.

    `country` only matters for national numbers (no `+`, `00` or `011`).  The answer
    depends on nothing else, and a burst brings the same few folder names again and
    again, so answers are kept (not refusals: an exception is not cached); phonenumbers
    took a twentieth of intake's CPU per document (issue 12).
    """
    text = raw.strip()
    if not text:
        raise _invalid(raw, "it is empty")
    if any(c.isalpha() for c in text):
        raise _invalid(raw, "it has letters")
    stray = next((c for c in text if c not in _NUMBER_CHARS), None)
    if stray is not None:
        raise _invalid(raw, f"it has the character {stray!r}")
    if "+" in text[1:]:
        raise _invalid(raw, "a + may only stand at its start")
    digits = "".join(c for c in text if c in _DIGITS)
    if not digits:
        raise _invalid(raw, "it has no digits")
    if len(digits) > MAX_DIGITS:
        # Refused here, not left to phonenumbers, whose answer for such input is not ours to rely on.
        raise _invalid(raw, f"it has {len(digits)} digits; a fax number has at most {MAX_DIGITS}")
    if text.startswith("+"):
        return _format(_international(raw, digits))
    if digits.startswith("00"):
        return _format(_international(raw, digits[2:]))
    if digits.startswith("011"):
        return _format(_after_011(raw, digits, country))
    return _format(_national(raw, digits, country))


def check_allowed(e164: str, allow: Sequence[str], deny: Sequence[str]) -> None:
    """Refuse a number the outbox's rules do not permit; deny wins over allow.

    Prefixes are compared on their digits, so "+1 900" and "+1900" mean the same rule.
    """
    number = _digits_of(e164)
    for prefix in deny:
        if number.startswith(_digits_of(prefix)):
            raise Rejected("denied_number", f"{e164} matches the deny rule {prefix}")
    if allow and not any(number.startswith(_digits_of(prefix)) for prefix in allow):
        raise Rejected("denied_number", f"{e164} matches none of the allowed prefixes {', '.join(allow)}")


def _digits_of(text: str) -> str:
    return "".join(c for c in text if c in _DIGITS)


def _invalid(raw: str, why: str) -> Rejected:
    return Rejected("invalid_number", f"{_shown(raw)} is not a fax number: {why}")


def _shown(raw: str) -> str:
    """The number as written, but short and without anything that would not print in a log or terminal."""
    text = raw.strip() or '""'
    if len(text) > _SHOWN_CHARS:
        text = f"{text[:_SHOWN_CHARS]}... ({len(text)} characters)"
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _format(number: PhoneNumber) -> str:
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _parse(raw: str, text: str, region: str | None) -> PhoneNumber:
    try:
        return phonenumbers.parse(text, region)
    except NumberParseException as exc:
        raise _invalid(raw, _WHY_NOT_PARSED.get(exc.error_type, "it is not a phone number")) from None


def _check_possible(raw: str, number: PhoneNumber) -> PhoneNumber:
    # Exactly IS_POSSIBLE: a local-only number cannot be dialled from iFax's exchange.
    # Validity is not required, so fictional test numbers (+1 555 ...) still work.
    result = phonenumbers.is_possible_number_with_reason(number)
    if result != ValidationResult.IS_POSSIBLE:
        raise _invalid(raw, _WHY_NOT_POSSIBLE.get(result, "it is not a possible number"))
    return number


def _international(raw: str, digits: str) -> PhoneNumber:
    return _check_possible(raw, _parse(raw, "+" + digits, None))


def _national(raw: str, digits: str, country: str) -> PhoneNumber:
    region = (country or "").strip().upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise _invalid(raw, f"it has no country code and the outbox's country {country!r} "
                            "is not a known region")
    return _check_possible(raw, _parse(raw, digits, region))


def _after_011(raw: str, digits: str, country: str) -> PhoneNumber:
    """Read a leading 011 as the North American international prefix, unless that misdials.

    011 also begins real national numbers (Leeds 0113 in GB, Sapporo 011 in JP). Reading
    those as international would fax another country, so the national reading is kept
    when it is the only possible one; when both readings are possible and validity does
    not settle it, the number is refused rather than guessed.
    """
    readings: dict[str, PhoneNumber] = {}
    first_error: Rejected | None = None
    for read in (lambda: _international(raw, digits[3:]), lambda: _national(raw, digits, country)):
        try:
            number = read()
        except Rejected as exc:
            first_error = first_error or exc
            continue
        readings.setdefault(_format(number), number)
    if not readings:
        assert first_error is not None
        raise first_error
    if len(readings) == 1:
        return next(iter(readings.values()))
    valid = [n for n in readings.values() if phonenumbers.is_valid_number(n)]
    if len(valid) == 1:
        return valid[0]
    international, national = readings
    raise _invalid(raw, f"it could mean {international} or {national}: write it with + or 00 "
                        "and the country code")
