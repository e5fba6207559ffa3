"""Rows become Job and Recipient objects through a JSON fast path (issue 12): it must read
every column exactly as `json.loads` does, whoever wrote it."""

from __future__ import annotations

import json
import time

import pytest

from gateway.store import JobState, Phase, SourceFile, Store, _loads


@pytest.mark.parametrize("text", [
    "[]", "{}", '["pdf"]', '["pdf", "tiff"]', '{"reference": "A-1", "send_at": 1.5}',
    '[{"name": "scan.pdf", "ino": 12, "size": 3, "mtime_ns": 4}]',
    ' ["pdf"]', '["pdf"] ', '[ ]', '{ }', '["caf\\u00e9", "\\ud83d\\ude00"]', '[null, 1e-07, -0.0]',
])
def test_columns_read_as_json_loads_reads_them(text):
    assert _loads(text, "[]" if text.lstrip().startswith("[") else "{}") == json.loads(text)


def test_empty_values_are_new_objects_each_time():
    a, b = _loads("[]", "[]"), _loads(None, "[]")
    a.append("x")
    assert b == [] and _loads("[]", "[]") == [] and _loads(None, "{}") == {}


def test_an_empty_column_reads_as_empty_as_before():
    """`json.loads(text or "[]")` read "" (a row someone wrote by hand) as empty."""
    assert _loads("", "[]") == [] and _loads("", "{}") == {}


def test_a_state_no_version_wrote_is_named_in_the_error():
    from gateway.store import _phase, _state
    assert _state("delivered") is JobState.DELIVERED and _phase("held") is Phase.HELD
    with pytest.raises(ValueError, match="'deliverd' is not a valid JobState"):
        _state("deliverd")
    with pytest.raises(ValueError, match="'hold' is not a valid Phase"):
        _phase("hold")


@pytest.mark.parametrize("text", ['["pdf"] x', '["pdf"', "nan"])
def test_bad_json_raises_as_json_loads_does(text):
    with pytest.raises(json.JSONDecodeError):
        _loads(text, "[]")


def test_a_job_reads_back_as_written_also_from_an_older_writers_spaced_json(tmp_path):
    store = Store(tmp_path / "j.db")
    sources = [SourceFile("scan.pdf", 11, 1234, 1_700_000_000_000_000_000),
               SourceFile("scan.json", 12, 50, 7)]
    job_id = store.record_claim_intent(outbox="box", outbox_path=str(tmp_path / "box"),
                                       rel_dir="+15551234567", sources=sources,
                                       documents=["scan.pdf"], sidecar="scan.json",
                                       primary="scan.pdf", simulated=False, settled_at=time.time(),
                                       private_root=str(tmp_path / "priv"))
    store.accept_job(job_id, numbers=["+15551234567", "+15557654321"], options={"reference": "R-7"},
                     sha256=["ab" * 32], pages=2, kinds=["pdf"], claimed=True)
    for job in (store.get_job(job_id), *store.jobs_by_ids([job_id])):
        assert job.sources == sources and job.documents == ["scan.pdf"] and job.kinds == ["pdf"]
        assert job.options == {"reference": "R-7"} and job.sha256 == ["ab" * 32]
        assert job.state == JobState.QUEUED and job.phase == Phase.HELD
        assert [r.state for r in job.recipients] == [JobState.QUEUED, JobState.QUEUED]
        assert [r.all_ifax_job_ids for r in job.recipients] == [[], []]
    with store.transaction() as c:  # as an older version, or a person with sqlite3, may have left it
        c.execute("UPDATE jobs SET options=?, kinds=? WHERE id=?",
                  (' {"reference": "R-8"} ', '[ "pdf" ]', job_id))
        c.execute("UPDATE recipients SET ifax_job_ids=? WHERE job_id=?", ('[ "77" ]', job_id))
    job = store.get_job(job_id)
    assert job.options == {"reference": "R-8"} and job.kinds == ["pdf"]
    assert [r.all_ifax_job_ids for r in job.recipients] == [["77"], ["77"]]
