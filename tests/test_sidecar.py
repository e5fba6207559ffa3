"""Sidecar names, pairing with documents, and parsing (SPEC 4.3)."""

from __future__ import annotations

import json
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
