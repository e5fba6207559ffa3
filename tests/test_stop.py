"""SIGTERM (SPEC 10, issue 9): no new request starts, the requests under way finish, and
the daemon exits 0 within max(10 s, api.timeout + 2 s), which the unit's TimeoutStopSec
matches; nothing is lost, nothing is sent twice."""

from __future__ import annotations

import signal
import time
from collections import Counter

from conftest import make_pdf, sent_documents, wait_for


def test_sigterm_finishes_requests_under_way_and_starts_none(daemon, spool, simulator):
    # Four sends under way and two workers free that keep polling two faxes still sending
    # (...888) every 0.2 s: a sending loop told to stop any later than at once (the old
    # order stopped intake first) starts a poll after the signal.
    d = daemon(api={"timeout": "6s", "max_in_flight": 6}).start()
    waiting = spool.folder("+15551239888")
    for i in range(2):
        (waiting / f"w{i}.pdf").write_bytes(make_pdf(1, text=f"wait-{i}"))
    wait_for(lambda: len(simulator.requests("fax-status")) >= 4, 20, "polls of faxes still sending")
    simulator.set_fault("slow", endpoints=("fax-send",), seconds=3)  # answered 3 s after processing
    folder = spool.folder("+15551239201")
    datas = [make_pdf(1, text=f"stop-{i}") for i in range(4)]
    for i, data in enumerate(datas):
        (folder / f"d{i}.pdf").write_bytes(data)
    wait_for(lambda: len(simulator.requests("fax-send")) >= 6, 20, "four submissions in flight")
    sends_started = time.time()
    wait_for(lambda: [r for r in simulator.requests("fax-status") if r["time"] > sends_started + 0.3],
             10, "polls going on beside the sends under way")

    assert d.proc is not None
    term = time.time()
    d.proc.send_signal(signal.SIGTERM)
    code = d.proc.wait(30)
    took = time.time() - term
    assert code == 0
    assert took <= max(10.0, 6.0 + 2.0), f"the stop took {took:.1f}s"
    late = [r for r in simulator.requests() if r["time"] > term + 0.1]
    assert late == [], f"{len(late)} request(s) started after SIGTERM"
    # The requests under way were answered and their answers stored: none is uncertain.
    assert all(r["http_status"] == 200 for r in simulator.requests("fax-send"))

    simulator.set_fault(None)
    d.start()
    spool.wait_results(len(datas), "sent", timeout=60)
    assert spool.results("failed") == []
    sent = Counter(data for number, data in sent_documents(simulator) if number == "+15551239201")
    assert set(sent) == set(datas) and max(sent.values()) == 1
    assert d.terminate() == 0
