"""The sending loop hands out rounds of submissions, reading due recipients ahead in
batches (issue 12).  However the rounds and batches fall, each document is sent exactly
once (SPEC: nothing is sent twice)."""

from __future__ import annotations

import collections

from conftest import make_pdf, sent_documents


def test_a_burst_in_rounds_sends_each_document_once(daemon, spool, simulator):
    # Three workers against batches of up to 64 and intake's slices of 32: rounds often
    # begin with fewer read-ahead recipients than free workers, and read again.
    d = daemon(api={"max_in_flight": 3}).start()
    folder = spool.folder("+15551230900")
    n = 150
    datas = [make_pdf(1, text=f"round {i}") for i in range(n)]
    for i, data in enumerate(datas):
        (folder / f"r{i:03d}.pdf").write_bytes(data)
    spool.wait_results(n, "sent", timeout=90)
    sent = collections.Counter(doc for _, doc in sent_documents(simulator))
    assert sorted(sent) == sorted(datas)
    assert set(sent.values()) == {1}, "a document was sent more than once"
    assert len(simulator.requests("fax-send")) == n
    assert spool.results("failed") == []
    assert d.healthy()
