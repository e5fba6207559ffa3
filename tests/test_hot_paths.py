"""Shortcuts taken on the per-document path (issue 12) give what the long way gives."""

from __future__ import annotations

import json
import logging

import pytest

from gateway.logs import _JsonFormatter, _TextFormatter
from gateway.metrics import Metrics
from gateway.names import _ESCAPES, shown
from gateway.store import JOB_TRANSITIONS, InvalidTransition, JobState, check_transition


def test_shown_of_plain_ascii_is_what_the_escape_table_gives() -> None:
    for code in range(128):
        text = f"a{chr(code)}b.pdf"
        assert shown(text) == text.translate(_ESCAPES), code
    for text in ["job 12: accepted by iFax as 5678 for +15551234567", "", " ", "~$x.pdf",
                 "tab\tin", "caf\u00e9", "\x7f", "bidi\u202e"]:
        assert shown(text) == text.translate(_ESCAPES), text


def _record(created: float) -> logging.LogRecord:
    record = logging.LogRecord("gateway.x", logging.INFO, "", 0, "m", (), None)
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0
    return record


@pytest.mark.parametrize("formatter", [_TextFormatter(False), _JsonFormatter(False)])
def test_log_time_is_loggings_own_across_seconds(formatter: logging.Formatter) -> None:
    reference = logging.Formatter()
    times = [1796299625.0, 1796299625.001, 1796299625.999, 1796299626.0, 1796299626.5,
             1796299625.25, 0.0, 1700000000.9999]  # back in time too (a clock set back)
    for created in times:
        for datefmt in (None, "%Y-%m-%dT%H:%M:%S", None):
            assert formatter.formatTime(_record(created), datefmt) == \
                reference.formatTime(_record(created), datefmt), (created, datefmt)


def test_counting_through_kept_series_counts_into_the_labelled_series() -> None:
    metrics, other = Metrics(["main"]), Metrics(["main"])
    metrics.count(metrics.jobs_submitted, "main")
    metrics.count(metrics.pages_sent, "main", amount=5)  # the same labels, another metric
    metrics.count(metrics.cost, "main", amount=0.25)
    metrics.count(metrics.files_detected, "main", amount=7)
    metrics.count(metrics.jobs_submitted, "main", amount=2)
    assert metrics.pages_sent.labels("main")._value.get() == 5
    assert metrics.cost.labels("main")._value.get() == 0.25
    assert metrics.files_detected.labels("main")._value.get() == 7
    metrics.count(metrics.jobs_completed, "main", JobState.DELIVERED)
    metrics.count(metrics.jobs_completed, "main", "delivered")
    metrics.api_request("fax-send", "ok", 0.25)
    metrics.api_request("fax-send", "ok", 0.5)
    assert metrics.jobs_submitted.labels("main")._value.get() == 3
    assert metrics.jobs_completed.labels("main", "delivered")._value.get() == 2
    assert metrics.api_requests.labels("fax-send", "ok")._value.get() == 2
    assert metrics.api_duration.labels("fax-send")._sum.get() == 0.75
    assert other.jobs_submitted.labels("main")._value.get() == 0  # each registry its own


def test_a_filed_folder_is_named_as_a_path_would_name_it() -> None:
    """The suffixes table keys on this text: it must be what `str(Path(root) / rel_dir)` was."""
    from pathlib import Path

    from gateway.filing import filed_folder
    for root in ["/srv/fax/sent", "/", "/srv/fax/sent/main"]:
        for rel_dir in ["", "+15551234567", "Kunden/Müller", "a/b/c", "bad\udcff"]:
            assert filed_folder(root, rel_dir) == str(Path(root) / rel_dir), (root, rel_dir)


def test_a_destination_root_is_missing_only_when_it_is_not_there(tmp_path) -> None:
    """Filing takes the root as a string now: a folder that is not there is still missing,
    and any other error is still itself (a denied or dead folder must not read as "does
    not exist")."""
    import errno

    from gateway.errors import SpoolError
    from gateway.spool import file_job, files_left
    (tmp_path / "file").write_text("x")
    for gone in [tmp_path / "none", tmp_path / "file", tmp_path / "file" / "below"]:
        assert files_left(dest_root=gone, rel_dir="", names=["a.pdf"]) is None
        with pytest.raises(SpoolError, match="does not exist"):
            file_job(private=tmp_path, job_id=1, rel_dir="", names=["a.pdf"], bases=["a.pdf"],
                     dest_root=str(gone), suffix=0, result_name="a.pdf.result.json", result=dict)
    with pytest.raises(OSError) as raised:  # an error that is not "not there"
        file_job(private=tmp_path, job_id=1, rel_dir="", names=["a.pdf"], bases=["a.pdf"],
                 dest_root=str(tmp_path / ("x" * 300)), suffix=0, result_name="a.pdf.result.json",
                 result=dict)
    assert raised.value.errno == errno.ENAMETOOLONG


def test_transitions_are_checked_from_the_states_text() -> None:
    check_transition(JOB_TRANSITIONS, "sending", "delivered", "job 1")
    check_transition(JOB_TRANSITIONS, JobState.SENDING, JobState.DELIVERED, "job 1")
    for old, new in [("delivered", "sending"), ("no such state", "sending"), ("sending", "no such state")]:
        with pytest.raises(InvalidTransition, match=f"job 1 cannot go from {old} to {new}"):
            check_transition(JOB_TRANSITIONS, old, new, "job 1")


@pytest.mark.parametrize("value", [
    [], {}, ["b00199.pdf"], ["bad\udcff byte.pdf", "caf\u00e9.pdf"],  # undecodable byte: json writes it
    [{"name": "Müller.pdf", "ino": 2**63 - 1, "size": 0}], [2**64 + 1], {"reference": "x\ny"},
    {"1": 1.5, "b": None, "c": True}, ["請求書.pdf", "fax 📠.pdf"],
])
def test_a_column_reads_back_as_what_was_written(value) -> None:
    from gateway.store import _dumps, _loads
    text = _dumps(value)
    assert _loads(text, "[]" if isinstance(value, list) else "{}") == value
    assert json.loads(text) == value


def _safe_file_name_before(name: str, kind: str) -> str:
    """safe_file_name as it was before its ASCII shortcut (the reference)."""
    import re
    import unicodedata

    from gateway import doctypes
    extension = doctypes.EXTENSIONS[kind]
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    match = doctypes._SUFFIX.search(base)
    if match and not match.group(1).isdigit() and match.start() > 0:
        base = base[: match.start()]
    base = unicodedata.normalize("NFKD", base.translate(doctypes._SPECIAL_LETTERS))
    base = "".join(ch for ch in base if not unicodedata.combining(ch))
    base = doctypes._UNSAFE.sub("_", base)
    base = re.sub(r"_{2,}", "_", re.sub(r"\.{2,}", ".", base))
    base = base.strip("._-")[: doctypes._MAX_NAME - len(extension)].rstrip("._-")
    return f"{base or 'document'}{extension}"


def test_safe_file_names_are_as_before() -> None:
    from gateway.doctypes import safe_file_name
    names = [f"a{chr(c)}b.pdf" for c in range(1, 128)] + [
        "b00199.pdf", "Report 2024.12.01", "..x..pdf", "__a__.tif", "a\\b\\c.pdf", ".pdf", "x" * 300,
        "Überweisung März.dat", "straße.pdf", "請求書.pdf", "caf\u0065\u0301.pdf", "bad\udcff.pdf", ""]
    for name in names:
        for kind in ("pdf", "tiff"):
            assert safe_file_name(name, kind) == _safe_file_name_before(name, kind), name
