"""Polls and sends share max_in_flight (SPEC 6.1).  While sends are waiting for a worker,
a status poll yields to them, but it is never more than one poll.interval late (issue 12).
Timing is read from the simulator's own request log, with slack for a loaded machine."""

from __future__ import annotations

from conftest import make_pdf, wait_for

INTERVAL = 1.0
SEND = 0.3  # seconds each fax-send takes during the backlog


def test_polls_yield_to_waiting_sends_but_are_never_more_than_an_interval_late(daemon, spool, simulator):
    d = daemon(api={"max_in_flight": 2}, extra={"poll": {"interval": f"{INTERVAL}s"}}).start()
    (spool.folder("+15551230888") / "stays.pdf").write_bytes(make_pdf(1, text="stays"))  # stays sending
    wait_for(lambda: len(simulator.requests("fax-status")) >= 2, 15, "polls of the sending fax")
    [first] = simulator.requests("fax-send")
    job_id = str(first["response"]["data"]["jobId"])

    simulator.set_fault("slow", endpoints=("fax-send",), seconds=SEND)
    n = 30
    for i in range(n):
        (spool.folder(f"+155512307{i:02d}") / "d.pdf").write_bytes(make_pdf(1, text=str(i)))
    wait_for(lambda: len(simulator.requests("fax-send")) == n + 1 and all(
        r.get("finished") for r in simulator.requests("fax-send")), 60, "every fax-send answered")
    sends = sorted(r["time"] for r in simulator.requests("fax-send")[1:])
    backlog = (sends[2], sends[-1])  # both workers busy with sends, more waiting
    assert backlog[1] - backlog[0] > 3 * INTERVAL, "the backlog was too short to say anything"
    polls = sorted(r["time"] for r in simulator.requests("fax-status")
                   if str(r["body"].get("jobId")) == job_id)
    during = [t for t in polls if backlog[0] <= t <= backlog[1]]
    gaps = [b - a for a, b in zip(polls, polls[1:], strict=False) if backlog[0] <= b <= backlog[1]]
    assert gaps, f"no poll of the sending fax during the backlog: {polls} {backlog}"
    # A poll due while sends wait starts once it is a whole interval overdue: ~2 intervals
    # apart, never the ~1 interval of a poll that takes a worker ahead of a waiting send...
    assert min(gaps) >= 1.7 * INTERVAL, (gaps, during)
    # ...and never later than that (slack for a loaded machine).
    assert max(gaps) <= 2 * INTERVAL + 1.5, (gaps, during)
    simulator.set_fault(None)
    spool.wait_results(n, "sent", timeout=60)
    assert d.healthy()
