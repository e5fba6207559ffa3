"""Number folders, E.164 normalisation and allow/deny rules (SPEC 4.2)."""

from __future__ import annotations

import pytest

from gateway.errors import Rejected
from gateway.numbers import check_allowed, is_number_folder, normalize


@pytest.mark.parametrize("name", [
    "+15551234567", "+44 20 7946 0958", "(555) 123-4567", "555.123.4567", "0044-20-7946-0958", "2024", "1",
])
def test_folder_of_digits_and_dial_punctuation_is_a_number_folder(name: str) -> None:
    assert is_number_folder(name)


@pytest.mark.parametrize("name", [
    "invoices", "+", "()", " - ", "", "Fax +1555", "+1555_1234", "+1/555", "\uff11\uff12\uff13", "+1555,1234",
])
def test_other_folder_is_just_a_folder(name: str) -> None:
    assert not is_number_folder(name)


@pytest.mark.parametrize(("raw", "country", "expected"), [
    ("+15551234567", "US", "+15551234567"),
    ("+1 (555) 123-0002", "US", "+15551230002"),
    ("+44 20 7946 0958", "US", "+442079460958"),
    ("0044 20 7946 0958", "US", "+442079460958"),
    ("011 44 20 7946 0958", "US", "+442079460958"),
    ("(555) 123-4567", "US", "+15551234567"),
    ("1 555 123 4567", "US", "+15551234567"),
    ("555.123.4567", "US", "+15551234567"),
    ("030 1234567", "DE", "+49301234567"),
    ("020 7946 0958", "GB", "+442079460958"),
    ("020 7946 0958", "gb", "+442079460958"),
    ("+44 (0)20 7946 0958", "US", "+442079460958"),
    ("  +15551234567 ", "US", "+15551234567"),
    ("+4930123456", "US", "+4930123456"),
    ("00441234567890", "DE", "+441234567890"),
])
def test_number_is_normalised_to_e164(raw: str, country: str, expected: str) -> None:
    assert normalize(raw, country) == expected


def test_fictional_555_number_is_accepted_although_not_valid() -> None:
    assert normalize("+15551230001", "US") == "+15551230001"


def test_plus_number_ignores_the_outbox_country() -> None:
    assert normalize("+15551234567", "DE") == "+15551234567"


def test_national_number_depends_on_the_outbox_country() -> None:
    assert normalize("030 1234567", "DE") == "+49301234567"
    assert normalize("030 1234567", "GB") != "+49301234567"


@pytest.mark.parametrize(("raw", "country", "why"), [
    ("555-1234", "US", "local-only"),
    ("+1", "US", "too short"),
    ("12ab", "US", "letters"),
    ("1-800-FLOWERS", "US", "letters"),
    ("", "US", "empty"),
    ("   ", "US", "empty"),
    ("()", "US", "no digits"),
    ("+1 555 123 4567 8901 2345", "US", "too long"),
    ("+0123456789", "US", "country code"),
    ("1+5551234567", "US", "+ may only stand at its start"),
    ("+1555123456,7", "US", "','"),
    ("+1 555 123 4567#", "US", "'#'"),
    ("00", "US", "too short"),
    ("5551234567", "XX", "'XX' is not a known region"),
])
def test_number_that_cannot_be_dialled_is_rejected_naming_it(raw: str, country: str, why: str) -> None:
    with pytest.raises(Rejected) as caught:
        normalize(raw, country)
    assert caught.value.reason_code == "invalid_number"
    assert why in caught.value.reason
    shown = raw.strip() or '""'
    assert f"{shown} is not a fax number" in caught.value.reason


def test_011_is_the_international_prefix_in_north_america() -> None:
    assert normalize("011 49 30 1234567", "US") == "+49301234567"
    assert normalize("011 49 30 1234567", "CA") == "+49301234567"


def test_011_number_of_leeds_stays_national_in_gb() -> None:
    # Read as international it would be +34 960000: a Spanish number.
    assert normalize("0113 496 0000", "GB") == "+441134960000"


def test_011_number_of_sapporo_stays_national_in_jp() -> None:
    assert normalize("011-123-4567", "JP") == "+81111234567"


def test_011_outside_north_america_is_international_when_only_that_is_a_real_number() -> None:
    assert normalize("011 44 20 7946 0958", "DE") == "+442079460958"


def test_011_number_that_reads_both_ways_is_refused_rather_than_guessed() -> None:
    with pytest.raises(Rejected) as caught:
        normalize("011 49 1234 5678", "DE")
    assert caught.value.reason_code == "invalid_number"
    assert "+4912345678" in caught.value.reason
    assert "+49114912345678" in caught.value.reason


def test_everything_is_allowed_without_rules() -> None:
    check_allowed("+15551234567", [], [])


def test_number_under_an_allowed_prefix_passes() -> None:
    check_allowed("+15551234567", ["+44", "+1555"], [])


def test_number_outside_every_allowed_prefix_is_denied() -> None:
    with pytest.raises(Rejected) as caught:
        check_allowed("+4930123456", ["+1", "+44"], [])
    assert caught.value.reason_code == "denied_number"
    assert "+4930123456" in caught.value.reason


def test_number_under_a_denied_prefix_is_denied() -> None:
    with pytest.raises(Rejected) as caught:
        check_allowed("+19005551234", [], ["+1900", "+1976"])
    assert caught.value.reason_code == "denied_number"
    assert "+1900" in caught.value.reason


def test_deny_wins_over_allow() -> None:
    with pytest.raises(Rejected) as caught:
        check_allowed("+19005551234", ["+1"], ["+1900"])
    assert caught.value.reason_code == "denied_number"


def test_deny_prefix_matches_only_at_the_start() -> None:
    check_allowed("+15551900123", [], ["+1900"])


def test_prefixes_written_with_spaces_still_match() -> None:
    with pytest.raises(Rejected):
        check_allowed("+19005551234", [], ["+1 900"])
    check_allowed("+442079460958", ["+44 20"], [])


@pytest.mark.parametrize("raw", ["1" * 300, "+" + "1" * 300, "00" + "4" * 19, "+1 555 123 4567 8901 2345 67",
                                 "1" * 5000])
def test_number_of_more_than_20_digits_is_refused_with_a_short_reason(raw: str) -> None:
    with pytest.raises(Rejected) as caught:
        normalize(raw, "US")
    assert caught.value.reason_code == "invalid_number"
    assert "a fax number has at most 20" in caught.value.reason
    assert len(caught.value.reason) < 250


def test_long_number_is_quoted_only_in_part() -> None:
    with pytest.raises(Rejected) as caught:
        normalize("1" * 300, "US")
    assert f"({'1' * 40}... (300 characters) is not a fax number: it has 300 digits" in caught.value.reason


def test_number_with_a_control_character_is_quoted_escaped() -> None:
    with pytest.raises(Rejected) as caught:
        normalize("+1555\x1b[2;", "US")
    assert caught.value.reason_code == "invalid_number"
    assert "+1555\\x1b[2; is not a fax number: it has the character '\\x1b'" in caught.value.reason
    assert caught.value.reason.isprintable()


def test_answers_are_kept_per_country_and_refusals_are_not_kept() -> None:
    """normalize keeps its answers (issue 12): keyed by the number as written and the
    country, and a refusal is raised again each time, never turned into an answer."""
    assert normalize("030 1234567", "DE") == "+49301234567"
    hits = normalize.cache_info().hits
    assert normalize("030 1234567", "DE") == "+49301234567"
    assert normalize.cache_info().hits == hits + 1  # kept, not worked out again
    assert normalize("030 1234567", "GB") != "+49301234567"
    for _ in range(2):
        with pytest.raises(Rejected):
            normalize("555-1234", "US")
