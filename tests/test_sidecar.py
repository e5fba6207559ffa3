"""Sidecar names, pairing with documents, and parsing (SPEC 4.3)."""

from __future__ import annotations

import codecs
import json
import time
from datetime import UTC, datetime

import pytest

from gateway.errors import Rejected
from gateway.sidecar import (
    MAX_SIDECAR_BYTES,
    Sidecar,
    documents_for_sidecar,
    is_sidecar_name,
    parse_sidecar,
    sidecar_candidates,
    sidecars_for_document,
)


def rejected(data: bytes, name: str = "scan.yaml") -> str:
    """The reason a sidecar is refused; fails the test if it is accepted or refused for another code."""
    with pytest.raises(Rejected) as caught:
        parse_sidecar(data, name)
    assert caught.value.reason_code == "bad_sidecar"
    assert f"({name}: " in caught.value.reason
    return caught.value.reason


# Names and pairing


@pytest.mark.parametrize("name", ["scan.yaml", "scan.yml", "scan.json", "scan.pdf.yaml", "a.b.c.json"])
def test_yaml_yml_and_json_files_are_sidecars(name: str) -> None:
    assert is_sidecar_name(name)


@pytest.mark.parametrize("name", ["scan.pdf", "scan.pdf.result.json", "scan.result.json", "yaml", ".yaml",
                                  "scan.yaml.pdf", "scan.xml"])
def test_documents_and_result_files_are_not_sidecars(name: str) -> None:
    assert not is_sidecar_name(name)


def test_sidecar_candidates_follow_the_spec_order() -> None:
    assert sidecar_candidates("scan.pdf") == [
        "scan.pdf.yaml", "scan.yaml", "scan.pdf.yml", "scan.yml", "scan.pdf.json", "scan.json",
    ]


def test_document_without_extension_has_each_sidecar_name_once() -> None:
    assert sidecar_candidates("scan") == ["scan.yaml", "scan.yml", "scan.json"]


def test_candidate_that_would_be_a_result_file_is_left_out() -> None:
    assert "report.result.json" not in sidecar_candidates("report.result.pdf")
    assert "report.result.yaml" in sidecar_candidates("report.result.pdf")


def test_sidecars_for_document_finds_duplicates_in_spec_order() -> None:
    names = ["scan.pdf", "scan.yaml", "scan.pdf.yaml", "other.yaml"]
    assert sidecars_for_document("scan.pdf", names) == ["scan.pdf.yaml", "scan.yaml"]
    assert sidecars_for_document("other.pdf", ["other.pdf"]) == []


def test_full_name_sidecar_belongs_to_its_document() -> None:
    names = ["scan.pdf", "scan.tiff", "scan.pdf.yaml", "other.pdf"]
    assert documents_for_sidecar("scan.pdf.yaml", names) == ["scan.pdf"]


def test_short_sidecar_belongs_to_every_document_of_that_name() -> None:
    names = ["scan.tiff", "scan.pdf", "scan.yaml", "scan.yml", "scan.pdf.yaml", "scan.pdf.result.json",
             "scan.result.json", "scanner.pdf", "other.pdf"]
    assert documents_for_sidecar("scan.yaml", names) == ["scan.pdf", "scan.tiff"]


def test_sidecar_with_no_document_applies_to_nothing() -> None:
    assert documents_for_sidecar("batch.yaml", ["batch.yaml", "page1.pdf", "page2.pdf"]) == []


def test_documents_for_a_non_sidecar_name_is_empty() -> None:
    assert documents_for_sidecar("scan.pdf", ["scan.pdf", "scan.pdf.pdf"]) == []


def test_document_and_sidecar_agree_about_each_other() -> None:
    names = ["scan.pdf", "scan.tiff", "scan", "scan.pdf.tiff", "scan.yaml", "scan.pdf.yaml", "scan.json",
             "scan.pdf.yml", "a.b.pdf", "a.b.yaml", "a.yaml", "x.result.json"]
    sidecars = [n for n in names if is_sidecar_name(n)]
    documents = [n for n in names if not is_sidecar_name(n) and not n.endswith(".result.json")]
    for sidecar in sidecars:
        for document in documents:
            paired = document in documents_for_sidecar(sidecar, names)
            assert paired == (sidecar in sidecar_candidates(document)), (sidecar, document)


# Bare numbers and lists


def test_echoed_number_is_a_sidecar() -> None:
    assert parse_sidecar(b"+15551234567\n", "scan.yaml") == Sidecar(to=("+15551234567",))


def test_bare_number_keeps_leading_zeros() -> None:
    assert parse_sidecar(b"00441234567\n", "scan.yml").to == ("00441234567",)


def test_bare_number_after_a_comment_is_read() -> None:
    assert parse_sidecar(b"# for Dr Smith\n+1 555 123 4567\n", "scan.yaml").to == ("+1 555 123 4567",)


def test_crlf_and_utf8_bom_from_notepad_are_read() -> None:
    assert parse_sidecar(b"\xef\xbb\xbf+15551234567\r\n", "scan.yaml").to == ("+15551234567",)


def test_utf16_from_powershell_echo_is_read() -> None:
    data = "+15551234567\r\n".encode("utf-16")  # with BOM, as Windows PowerShell's `>` writes
    assert parse_sidecar(data, "scan.yaml").to == ("+15551234567",)


def test_list_of_numbers_is_one_fax_per_number() -> None:
    data = b"- +15551234567\n- 0044 20 7946 0958\n- 030 1234567\n"
    assert parse_sidecar(data, "scan.yaml").to == ("+15551234567", "0044 20 7946 0958", "030 1234567")


def test_two_echoed_lines_are_refused_rather_than_joined_into_one_number() -> None:
    reason = rejected(b"+15551234567\n+15557654321\n")
    assert "several lines" in reason
    assert "- " in reason


def test_several_numbers_in_one_text_are_refused() -> None:
    assert "several numbers" in rejected(b"to: +15551234567, +15557654321\n")
    assert "several numbers" in rejected(b"+15551234567; +15557654321\n")


@pytest.mark.parametrize("data", [b"", b"\n\n", b"   \n", b"~\n", b"null\n", b"# only a comment\n"])
def test_empty_sidecar_is_refused(data: bytes) -> None:
    assert "empty" in rejected(data)


def test_empty_list_is_refused() -> None:
    assert "empty list" in rejected(b"[]\n")


def test_list_entry_that_is_not_a_number_is_refused() -> None:
    assert "entry 2 of the list" in rejected(b"- +15551234567\n- to: +15557654321\n")
    assert "entry 1 of the list is empty" in rejected(b"- \n- +15551234567\n")


# Mappings


def test_mapping_with_every_key_is_read() -> None:
    data = (
        b"to: [+15551234567, 00441234567]\n"
        b"files: [page2.pdf, page3.tiff]\n"
        b"subject: Invoice 42\n"
        b"from_name: Front desk\n"
        b"to_name: Dr Smith\n"
        b"message: |\n  Please call back.\n  Thanks\n"
        b"caller_id: +15550000000\n"
        b"quality: HD\n"
        b"send_at: 2026-12-01T08:00:00+01:00\n"
        b"reference: PO-7\n"
    )
    assert parse_sidecar(data, "scan.pdf.yaml") == Sidecar(
        to=("+15551234567", "00441234567"),
        files=("page2.pdf", "page3.tiff"),
        subject="Invoice 42",
        from_name="Front desk",
        to_name="Dr Smith",
        message="Please call back.\nThanks\n",
        caller_id="+15550000000",
        quality="HD",
        send_at=datetime(2026, 12, 1, 7, 0, tzinfo=UTC),
        reference="PO-7",
    )


@pytest.mark.parametrize(("line", "number"), [
    (b"to: 00441234567\n", "00441234567"),
    (b"to: +4930123456\n", "+4930123456"),
    (b"to: 0x1F\n", "0x1F"),
    (b"to: 1_555_123\n", "1_555_123"),
    (b"to: 015551234567\n", "015551234567"),
    (b"to: 1.5e3\n", "1.5e3"),
])
def test_unquoted_yaml_number_keeps_every_character(line: bytes, number: str) -> None:
    assert parse_sidecar(line, "scan.yaml").to == (number,)


def test_mapping_without_to_supplies_options_only() -> None:
    sidecar = parse_sidecar(b"subject: Lab results\nquality: Low\n", "scan.yaml")
    assert sidecar.to == ()
    assert sidecar.subject == "Lab results"
    assert sidecar.quality == "Low"


def test_empty_option_is_not_set() -> None:
    sidecar = parse_sidecar(b'to: +15551234567\nsubject:\ncaller_id: ~\nmessage: ""\nreference: null\n',
                            "scan.yaml")
    assert sidecar == Sidecar(to=("+15551234567",))


def test_quoted_null_is_text() -> None:
    assert parse_sidecar(b'to: +15551234567\nsubject: "null"\n', "scan.yaml").subject == "null"


def test_yes_and_no_stay_text() -> None:
    assert parse_sidecar(b"to: +15551234567\nsubject: no\n", "scan.yaml").subject == "no"


@pytest.mark.parametrize("data", [b"to:\n", b"to: ~\n", b'to: ""\n', b"to: '  '\n"])
def test_empty_to_is_refused_rather_than_falling_back_to_the_folder(data: bytes) -> None:
    assert "'to' is empty" in rejected(data)


def test_empty_to_list_is_refused() -> None:
    assert "empty list" in rejected(b"to: []\n")


def test_to_must_be_numbers() -> None:
    assert "not a mapping" in rejected(b"to: {number: +15551234567}\n")
    assert "entry 2 of 'to'" in rejected(b"to: [+15551234567, [+15557654321]]\n")


def test_empty_mapping_is_refused() -> None:
    assert "no keys" in rejected(b"{}\n")


@pytest.mark.parametrize(("key", "suggestion"), [
    ("To", "to"), ("fax", "to"), ("number", "to"), ("subjct", "subject"), ("callerid", "caller_id"),
    ("caller-id", "caller_id"), ("file", "files"), ("sendat", "send_at"), ("from", "from_name"),
])
def test_unknown_key_is_refused_naming_it_and_the_closest_known_key(key: str, suggestion: str) -> None:
    reason = rejected(f"to: +15551234567\n{key}: x\n".encode())
    assert f"unknown key {key!r}" in reason
    assert f"did you mean {suggestion!r}" in reason


def test_unknown_key_with_no_close_match_lists_the_known_keys() -> None:
    reason = rejected(b"to: +15551234567\nzzzzzz: 1\n")
    assert "'zzzzzz'" in reason
    assert "to, files, subject" in reason


def test_repeated_key_is_refused_rather_than_the_last_one_winning() -> None:
    reason = rejected(b"to: +15551234567\nsubject: a\nto: +15557654321\n")
    assert "line 3" in reason
    assert "'to' is written twice" in reason


def test_key_that_is_not_a_name_is_refused() -> None:
    assert "plain name" in rejected(b"~: +15551234567\n")
    assert "plain name" in rejected(b"? [a, b]\n: +15551234567\n")


def test_option_that_is_not_text_is_refused() -> None:
    assert "'subject' must be text, not a list" in rejected(b"to: +15551234567\nsubject: [a, b]\n")


def test_yaml_tags_are_ignored_not_executed() -> None:
    data = b"to: !!python/object/apply:os.system [echo hacked]\n"
    assert parse_sidecar(data, "scan.yaml").to == ("echo hacked",)
    sidecar = parse_sidecar(b"to: !!python/name:os.system +15551234567\n", "scan.yaml")
    assert sidecar.to == ("+15551234567",)


# files


def test_single_file_name_is_a_list_of_one() -> None:
    assert parse_sidecar(b"files: page2.pdf\n", "batch.yaml").files == ("page2.pdf",)


def test_empty_files_is_no_files() -> None:
    assert parse_sidecar(b"to: +15551234567\nfiles: []\n", "scan.yaml").files == ()
    assert parse_sidecar(b"to: +15551234567\nfiles:\n", "scan.yaml").files == ()


@pytest.mark.parametrize(("name", "why"), [
    ("../secret.pdf", "plain file name"),
    ("sub/page.pdf", "plain file name"),
    ("/etc/passwd", "plain file name"),
    ("sub\\\\page.pdf", "plain file name"),
    ("..", "'..'"),
    ("page..pdf", "'..'"),
    (".hidden.pdf", "begins with '.'"),
    ("other.yaml", "is a sidecar"),
    ("scan.pdf.result.json", "result file"),
])
def test_file_that_is_not_a_plain_document_name_is_refused(name: str, why: str) -> None:
    reason = rejected(f'files: ["{name}"]\n'.encode())
    assert why in reason


def test_file_listed_twice_is_refused() -> None:
    assert "listed twice" in rejected(b"files: [a.pdf, b.pdf, a.pdf]\n")


def test_empty_file_entry_is_refused() -> None:
    assert "entry 2 of 'files' is empty" in rejected(b"files: [a.pdf, ~]\n")


# quality and send_at


@pytest.mark.parametrize(("written", "quality"), [("Low", "Low"), ("standard", "Standard"), ("hd", "HD")])
def test_quality_is_read_in_any_case(written: str, quality: str) -> None:
    assert parse_sidecar(f"quality: {written}\n".encode(), "scan.yaml").quality == quality


def test_unknown_quality_is_refused() -> None:
    assert "Low, Standard or HD, not 'high'" in rejected(b"quality: high\n")


@pytest.mark.parametrize(("written", "utc"), [
    ("2026-12-01T08:00:00Z", datetime(2026, 12, 1, 8, 0, tzinfo=UTC)),
    ("2026-12-01T08:00:00+01:00", datetime(2026, 12, 1, 7, 0, tzinfo=UTC)),
    ("2026-12-01T08:00:00-05:00", datetime(2026, 12, 1, 13, 0, tzinfo=UTC)),
    ("2026-12-01 08:00Z", datetime(2026, 12, 1, 8, 0, tzinfo=UTC)),
])
def test_send_at_is_converted_to_utc(written: str, utc: datetime) -> None:
    send_at = parse_sidecar(f"send_at: {written}\n".encode(), "scan.yaml").send_at
    assert send_at == utc
    assert send_at is not None
    assert send_at.tzinfo is UTC


def test_send_at_without_utc_offset_is_refused() -> None:
    assert "no UTC offset" in rejected(b"send_at: 2026-12-01T08:00:00\n")


def test_send_at_date_only_is_refused() -> None:
    assert "date without a time" in rejected(b"send_at: 2026-12-01\n")


def test_send_at_that_is_not_a_time_is_refused() -> None:
    assert "not an ISO 8601 time" in rejected(b"send_at: tomorrow 8am\n")


# JSON


def test_json_mapping_is_read() -> None:
    data = json.dumps({"to": ["+15551234567"], "files": ["b.pdf"], "quality": "Standard",
                       "send_at": "2026-12-01T08:00:00Z", "reference": "A-1"}).encode()
    assert parse_sidecar(data, "scan.json") == Sidecar(
        to=("+15551234567",), files=("b.pdf",), quality="Standard",
        send_at=datetime(2026, 12, 1, 8, 0, tzinfo=UTC), reference="A-1",
    )


def test_json_number_in_to_becomes_its_digits() -> None:
    assert parse_sidecar(b'{"to": 15551234567}', "scan.json").to == ("15551234567",)
    assert parse_sidecar(b'{"to": [15551234567, "+442079460958"]}', "scan.json").to == (
        "15551234567", "+442079460958")


def test_json_whole_number_option_becomes_its_digits() -> None:
    assert parse_sidecar(b'{"to": "+15551234567", "reference": 4711}', "scan.json").reference == "4711"


@pytest.mark.parametrize("data", [b'{"to": 1.5551234567e10}', b'{"to": true}', b'{"to": [false]}',
                                  b'{"subject": 1.5}'])
def test_json_float_or_bool_is_refused(data: bytes) -> None:
    assert "must be text" in rejected(data, "scan.json")


def test_json_negative_number_is_refused() -> None:
    assert "negative" in rejected(b'{"to": -15551234567}', "scan.json")


def test_json_null_to_is_refused() -> None:
    assert "'to' is empty" in rejected(b'{"to": null}', "scan.json")


def test_json_bare_string_and_list_are_numbers() -> None:
    assert parse_sidecar(b'"+15551234567"', "scan.json").to == ("+15551234567",)
    assert parse_sidecar(b'["+15551234567", "+15557654321"]', "scan.json").to == (
        "+15551234567", "+15557654321")


def test_json_repeated_key_is_refused() -> None:
    assert "'to' is written twice" in rejected(b'{"to": "+15551234567", "to": "+15557654321"}', "scan.json")


def test_unquoted_number_in_json_is_refused_with_a_hint() -> None:
    reason = rejected(b"+15551234567\n", "scan.json")
    assert "not valid JSON at line 1, column 1" in reason
    assert "in quotes" in reason


def test_yaml_in_a_json_file_is_refused_as_json() -> None:
    assert "not valid JSON at line 1" in rejected(b"to: +15551234567\n", "scan.json")


def test_json_error_names_the_line() -> None:
    assert "line 3" in rejected(b'{\n "to": "+15551234567",\n "subject" "x"\n}', "scan.json")


# Damaged files


def test_invalid_yaml_is_refused_naming_the_line() -> None:
    reason = rejected(b"to: +15551234567\nsubject: [unclosed\n")
    assert "not valid YAML at line 3" in reason


def test_indentation_mistake_is_refused_naming_the_line() -> None:
    reason = rejected(b"to: +15551234567\n subject: x\n")
    assert "not valid YAML at line 2" in reason


def test_two_yaml_documents_are_refused() -> None:
    assert "single document" in rejected(b"+15551234567\n---\n+15557654321\n")


def test_not_utf8_is_refused() -> None:
    assert "not UTF-8" in rejected("to: +1555 # Müller\n".encode("latin-1"))


def test_control_character_is_refused() -> None:
    assert "control character" in rejected(b"to: +1555\x00\n")


def test_sidecar_larger_than_64_kib_is_refused() -> None:
    data = b"to: +15551234567\nmessage: " + b"x" * MAX_SIDECAR_BYTES + b"\n"
    assert "larger than 64 KiB" in rejected(data)


def test_sidecar_of_exactly_64_kib_is_read() -> None:
    head = b"to: +15551234567\nmessage: "
    data = head + b"x" * (MAX_SIDECAR_BYTES - len(head) - 1) + b"\n"
    assert len(data) == MAX_SIDECAR_BYTES
    assert parse_sidecar(data, "scan.yaml").message is not None


@pytest.mark.parametrize("name", ["scan.yaml", "scan.json"])
def test_deep_nesting_is_refused_not_crashing(name: str) -> None:
    assert "nested too deeply" in rejected(b"[" * 50_000, name)


def test_self_referencing_yaml_is_refused() -> None:
    rejected(b"to: &a [*a]\n")


def test_reason_reads_as_one_sentence_for_the_result_file() -> None:
    with pytest.raises(Rejected) as caught:
        parse_sidecar(b"qualty: HD\n", "invoice.pdf.yaml")
    assert caught.value.reason == (
        "the sidecar file could not be used: fix it and drop the documents again "
        "(invoice.pdf.yaml: unknown key 'qualty': did you mean 'quality'?)"
    )


# Hostile content (SPEC 4.5)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
_LAUGHS = b"a: &a [x, x, x, x, x, x, x, x, x, x]\n" + b"".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n".encode() for p, c in zip("abcdefgh", "bcdefghi", strict=True)
) + b"to: *i\n"

HOSTILE = [
    # Lone surrogates and control characters, by escape, in values and keys
    ("scan.yaml", b'to: "\\ud800"\n'),
    ("scan.yaml", b'to: "+1555\\udc80"\n'),
    ("scan.yaml", b'subject: "\\e[2J"\n'),
    ("scan.yaml", b'subject: "\\a\\b"\n'),
    ("scan.yaml", b'subject: "a\\Nb"\n'),
    ("scan.yaml", b'subject: "a\\Lb"\n'),
    ("scan.yaml", b'subject: "a\\tb"\n'),
    ("scan.yaml", b'subject: "a\\rb"\n'),
    ("scan.yaml", b'subject: |\n  two\n  lines\n'),
    ("scan.yaml", b'message: "bell \\a"\n'),
    ("scan.yaml", b'message: "half \\ud83d"\n'),
    ("scan.yaml", b'to: "\\0"\n'),
    ("scan.yaml", b'files: ["a\\x1b.pdf"]\n'),
    ("scan.yaml", b'quality: "\\x1bHD"\n'),
    ("scan.yaml", b'send_at: "2026-12-01T08:00:00Z\\x7f"\n'),
    ("scan.yaml", b'"\\ud800": x\n'),
    ("scan.yaml", b'"\\e[2J": x\n'),
    ("scan.yaml", b'"\\e": 1\n"\\e": 2\n'),
    ("scan.yaml", b"- +15551234567\n- \"\\x9b\"\n"),
    ("scan.json", b'{"to": "\\ud800"}'),
    ("scan.json", b'{"to": ["\\udfff\\ud800"]}'),
    ("scan.json", b'{"subject": "\\u0007"}'),
    ("scan.json", b'{"subject": "\\u001b[2J"}'),
    ("scan.json", b'{"subject": "\xc2\x85"}'),
    ("scan.json", b'{"to_name": "a\\nb"}'),
    ("scan.json", b'{"message": "\\u0000"}'),
    ("scan.json", b'{"reference": "\\r"}'),
    ("scan.json", b'{"\\ud800x": 1}'),
    ("scan.json", b'{"to\\u001b": 1}'),
    ("scan.json", b'{"a\\u001b": 1, "a\\u001b": 2}'),
    ("scan.json", b'"\\ud800"'),
    ("scan.json", b'["+15551234567", "\\u001b"]'),
    ("scan.yaml", codecs.BOM_UTF16_LE + b"\x00\xd8"),
    # Numbers of more than 20 digits, however written
    ("scan.json", b'{"to": ' + b"1" * 5000 + b"}"),
    ("scan.json", b'{"to": -' + b"1" * 5000 + b"}"),
    ("scan.json", b'{"to": [' + b"9" * 4301 + b"]}"),
    ("scan.json", b"1" * 5000),
    ("scan.json", b'{"send_at": ' + b"1" * 5000 + b"}"),
    ("scan.json", b'{"to": "' + b"1" * 25 + b'"}'),
    ("scan.yaml", b"to: " + b"1" * 5000 + b"\n"),
    ("scan.yaml", b'to: "+1 555 123 4567 8901 2345 678"\n'),
    ("scan.yaml", b"- " + b"0" * 21 + b"\n"),
    ("scan.yaml", b"caller_id: " + b"5" * 21 + b"\n"),
    # Floats, constants and other numbers that are no text
    ("scan.json", b'{"to": 1e999}'),
    ("scan.json", b'{"to": -1e999}'),
    ("scan.json", b'{"reference": 1' + b"0" * 5000 + b'.5}'),
    ("scan.json", b'{"to": NaN}'),
    ("scan.json", b'{"subject": Infinity}'),
    ("scan.json", b"-Infinity"),
    # send_at outside ten years, and at the ends of the calendar
    ("scan.yaml", b"send_at: 9999-12-31T23:59:59-14:00\n"),
    ("scan.yaml", b"send_at: 0001-01-01T00:00:00+14:00\n"),
    ("scan.yaml", b"send_at: 9999-12-31T23:59:59.999999Z\n"),
    ("scan.yaml", b"send_at: 2037-01-01T00:00:00Z\n"),
    ("scan.yaml", b"send_at: 2016-01-01T00:00:00Z\n"),
    ("scan.json", b'{"send_at": "0001-01-01T00:00:00-23:59"}'),
    # Anchors, aliases and nesting
    ("scan.yaml", _LAUGHS),
    ("scan.yaml", b"to: &n +15551234567\nsubject: *n\n"),
    ("scan.yaml", b"to: &n +15551234567\n"),
    ("scan.yaml", b"to: *undefined\n"),
    ("scan.yaml", b"&a [*a]\n"),
    ("scan.yaml", b"- " * 20_000 + b"x\n"),
    ("scan.yaml", b"{a: " * 10_000),
    ("scan.yaml", b"[" * 30_000 + b"]" * 30_000),
    ("scan.json", b'{"a": ' * 10_000),
    ("scan.json", b"[" * 30_000 + b"]" * 30_000),
    # Big values, quoted in reasons only in part
    ("scan.yaml", b"k" * 60_000 + b": 1\n"),
    ("scan.yaml", b"k" * 1000 + b": 1\n"),
    ("scan.yaml", b'quality: "' + b"\\e" * 20_000 + b'"\n'),
    ("scan.json", b'{"files": ["' + b"../" * 20_000 + b'"]}'),
]


@pytest.mark.parametrize(("name", "data"), HOSTILE, ids=[f"{i}-{n}" for i, (n, _) in enumerate(HOSTILE)])
def test_hostile_sidecar_is_refused_as_bad_sidecar_and_nothing_else(name: str, data: bytes) -> None:
    started = time.monotonic()
    with pytest.raises(Rejected) as caught:
        parse_sidecar(data, name, now=NOW)
    assert time.monotonic() - started < 2
    assert caught.value.reason_code == "bad_sidecar"
    reason = caught.value.reason
    assert f"({name}: " in reason
    assert reason.isprintable(), reason  # no newline, ESC or surrogate from the file reaches the reason
    assert len(reason) < 400
    reason.encode("utf-8")


def test_lone_surrogate_is_refused_naming_the_key() -> None:
    assert "'to' holds a lone surrogate" in rejected(b'to: "\\ud800"\n')
    assert "'subject' holds a lone surrogate" in rejected(b'{"subject": "a\\udc00"}', "scan.json")


def test_surrogate_pair_written_as_two_escapes_is_its_character() -> None:
    assert parse_sidecar(b'subject: "\\ud83d\\ude00"\n', "scan.yaml").subject == "\U0001f600"
    assert parse_sidecar(b'{"subject": "\\ud83d\\ude00"}', "scan.json").subject == "\U0001f600"


def test_control_character_is_refused_naming_the_key_and_escaped() -> None:
    reason = rejected(b'{"to": "+15551234567", "subject": "\\u001b[2J"}', "scan.json")
    assert "'subject' holds the control character '\\x1b'" in reason
    assert "\x1b" not in reason
    assert "entry 2 of 'to' holds the control character '\\x07'" in rejected(b'to: [+1555, "\\a"]\n')


def test_key_with_a_surrogate_or_control_character_is_named_escaped() -> None:
    assert "the key '\\ud800x' holds a lone surrogate" in rejected(b'{"\\ud800x": 1}', "scan.json")
    assert "the key 'to\\x1b' holds the control character" in rejected(b'"to\\e": +15551234567\n')


def test_message_may_hold_line_breaks_and_tabs() -> None:
    sidecar = parse_sidecar(b'{"message": "Dear Dr Smith,\\r\\n\\tresults attached.\\n"}', "scan.json")
    assert sidecar.message == "Dear Dr Smith,\n\tresults attached.\n"


def test_other_text_may_not_hold_line_breaks_or_tabs() -> None:
    assert "'subject' holds a line break: only 'message'" in rejected(b'subject: "a\\nb"\n')
    assert "'from_name' holds a tab" in rejected(b'from_name: "a\\tb"\n')
    assert "'to_name' holds a line break" in rejected(b'to_name: "a\\Lb"\n')
    assert "the control character '\\r'" in rejected(b'{"message": "a\\rb"}', "scan.json")


def test_line_break_that_yaml_leaves_at_the_end_is_dropped() -> None:
    sidecar = parse_sidecar(b"subject: >\n  Lab results\n  for May\n", "scan.yaml")
    assert sidecar.subject == "Lab results for May"


def test_number_of_more_than_20_digits_is_refused() -> None:
    assert "'to' has 25 digits; a fax number has at most 20" in rejected(f'to: "{"1" * 25}"\n'.encode())
    assert "'to' has 5000 digits" in rejected(b'{"to": ' + b"1" * 5000 + b"}", "scan.json")
    assert "entry 1 of the list has 21 digits" in rejected(b"- " + b"0" * 21 + b"\n")
    assert "'caller_id' has 21 digits" in rejected(b"caller_id: " + b"5" * 21 + b"\n")


def test_number_of_20_digits_is_left_to_normalisation() -> None:
    assert parse_sidecar(b"to: 0011 49 30 1234567 00000\n", "scan.yaml").to == ("0011 49 30 1234567 00000",)


def test_json_whole_number_of_any_size_does_not_crash() -> None:
    assert "negative" in rejected(b'{"to": -' + b"1" * 5000 + b"}", "scan.json")
    assert "must be an ISO 8601 time in quotes" in rejected(b'{"send_at": ' + b"1" * 5000 + b"}", "scan.json")
    assert parse_sidecar(b'{"to": "+1555", "reference": ' + b"7" * 5000 + b"}", "scan.json").reference == (
        "7" * 5000)


def test_json_infinite_or_nan_number_is_refused() -> None:
    assert "must be text, not a decimal number" in rejected(b'{"to": 1e999}', "scan.json")
    assert "must be text, not a decimal number" in rejected(b'{"subject": NaN}', "scan.json")


@pytest.mark.parametrize("written", [
    "2036-11-30T12:00:00Z", "2016-12-02T12:00:00Z", "2026-12-01T11:00:00Z", "2026-12-02T00:00:00+14:00",
])
def test_send_at_within_ten_years_is_read(written: str) -> None:
    assert parse_sidecar(f"send_at: {written}\n".encode(), "scan.yaml", now=NOW).send_at is not None


@pytest.mark.parametrize(("written", "why"), [
    ("2036-12-03T12:00:00Z", "more than ten years from now"),
    ("9999-12-31T23:59:59-14:00", "more than ten years from now"),
    ("2016-11-29T12:00:00Z", "more than ten years in the past"),
    ("0001-01-01T00:00:00+14:00", "more than ten years in the past"),
])
def test_send_at_beyond_ten_years_is_refused(written: str, why: str) -> None:
    with pytest.raises(Rejected) as caught:
        parse_sidecar(f"send_at: {written}\n".encode(), "scan.yaml", now=NOW)
    assert caught.value.reason_code == "bad_sidecar"
    assert f"'send_at' '{written}' is {why}" in caught.value.reason


def test_yaml_anchors_and_aliases_are_refused_saying_so() -> None:
    reason = rejected(b"to: &n +15551234567\nsubject: *n\n")
    assert "line 1" in reason
    assert "anchors (&) and aliases (*) are not allowed" in reason
    assert "aliases" in rejected(_LAUGHS)


def test_value_that_begins_with_a_star_may_be_quoted() -> None:
    assert parse_sidecar(b'subject: "*urgent*"\n', "scan.yaml").subject == "*urgent*"


def test_long_value_is_quoted_only_in_part() -> None:
    reason = rejected(b"quality: " + b"h" * 1000 + b"\n")
    assert f"not {'h' * 40!r}... (1000 characters)" in reason
    assert "h" * 41 not in reason


def test_several_numbers_reason_quotes_the_text_escaped() -> None:
    assert "several numbers in one ('+15551234567, +15557654321')" in rejected(
        b"to: +15551234567, +15557654321\n")


def test_file_name_that_does_not_print_is_escaped_in_the_reason() -> None:
    name = "scan\x1b[2J\udcff.yaml"
    with pytest.raises(Rejected) as caught:
        parse_sidecar(b"qualty: HD\n", name)
    assert "(scan\\x1b[2J\\xff.yaml: unknown key 'qualty'" in caught.value.reason
    assert caught.value.reason.isprintable()
