"""An API outage of any length loses nothing: the queue waits and drains afterwards."""

from __future__ import annotations

import time

from conftest import make_pdf, sent_documents, wait_for


def test_api_down_then_back_drains_the_queue(service, spool, simulator):
    service()
    simulator.set_fault("down", endpoints=("*",))
    folder = spool.folder("+15551230701")
    datas = [make_pdf(1, text=str(i)) for i in range(3)]
    for i, data in enumerate(datas):
        (folder / f"d{i}.pdf").write_bytes(data)
    wait_for(lambda: len(simulator.requests("fax-send")) >= 2, 15, "attempts during the outage")
    assert spool.results() == []
    simulator.set_fault(None)
    spool.wait_results(3, "sent", timeout=45)
    assert sorted(d for _, d in sent_documents(simulator)) == sorted(datas)


def test_server_gone_then_back(service, spool, simulator):
    service()
    simulator.stop()
    folder = spool.folder("+15551230702")
    data = make_pdf(1)
    (folder / "x.pdf").write_bytes(data)
    wait_for(lambda: not (folder / "x.pdf").exists(), 10, "the claim")
    simulator.start()
    [result] = spool.wait_results(1, "sent", timeout=45)
    assert result["recipients"][0]["attempts"] == 1
    assert sent_documents(simulator) == [("+15551230702", data)]


def test_after_a_15s_outage_the_queue_starts_within_10s_and_probes_went_one_at_a_time(
        service, spool, simulator):
    """Issue 9, outages: one outage counts once in the backoff, one request at a time finds
    the API's return (polls included), and the queue starts within 10 s of it."""
    service()  # max_in_flight 4, poll interval 0.2 s
    simulator.delay = 17.0  # this fax is still sending through the outage: its polls share it
    sending = make_pdf(1, text="sending")
    (spool.folder("+15551230710") / "sending.pdf").write_bytes(sending)
    wait_for(lambda: sent_documents(simulator), 15, "the first fax accepted")
    wait_for(lambda: simulator.requests("fax-status"), 5, "its first poll")
    simulator.delay = 0.2
    simulator.set_fault("down", endpoints=("*",))
    down_at = time.time()
    folder = spool.folder("+15551230711")
    queued = [make_pdf(1, text=f"queued {i}") for i in range(8)]
    for i, data in enumerate(queued):
        (folder / f"q{i}.pdf").write_bytes(data)
    wait_for(lambda: any(r["http_status"] == 503 for r in simulator.requests()), 10, "the outage noticed")
    time.sleep(max(0.0, down_at + 15 - time.time()))
    simulator.set_fault(None)
    back_at = time.time()
    results = spool.wait_results(9, "sent", timeout=60)

    # (a) the first submission after the API's return reached it within 10 s
    first = min(r["time"] for r in simulator.requests("fax-send") if r["time"] >= back_at)
    assert first - back_at <= 10.0, f"first fax-send {first - back_at:.1f}s after the API came back"

    # (b) once the gateway knew the API was down (its first 503 answered; the requests already
    # under way then are the only ones excused), its requests went one at a time, each
    # starting only after the previous one's answer plus the backoff's shortest wait
    # (0.5 s), polls included; so they were few, not max_in_flight at each expiry.
    during = [r for r in simulator.requests() if down_at <= r["time"] < back_at]
    known = min(r["finished"] for r in during if r["http_status"] == 503)
    probes = sorted((r for r in during if r["time"] > known + 0.25), key=lambda r: r["time"])
    seen = [(r["endpoint"], round(r["time"] - down_at, 2)) for r in probes]
    early = [(a["endpoint"], b["endpoint"], round(b["time"] - a["finished"], 3))
             for a, b in zip(probes, probes[1:], strict=False) if b["time"] - a["finished"] < 0.45]
    assert early == [], f"requests during the outage did not wait for the one before: {seen}"
    assert 3 <= len(probes) <= 10, seen
    # once faxes were queued, the probe was the next due submission, not a poll
    assert [r["endpoint"] for r in probes[-2:]] == ["fax-send", "fax-send"], seen

    # (d) nothing lost, nothing sent twice
    assert len(results) == 9
    assert sorted(d for _, d in sent_documents(simulator)) == sorted([sending, *queued])


def test_while_the_api_is_down_the_dispatcher_sleeps_until_the_backoff_lets_the_probe_through(
        service, spool, simulator):
    """Due faxes wait for the backoff, so the loop must not wake for them (it spun at 100 Hz)."""
    svc = service()
    simulator.set_fault("down", endpoints=("*",))
    folder = spool.folder("+15551230712")
    for i in range(6):  # more than max_in_flight, all due
        (folder / f"d{i}.pdf").write_bytes(make_pdf(1, text=str(i)))
    wait_for(lambda: len(simulator.requests("fax-send")) >= 2, 15, "two attempts during the outage")
    dispatcher, samples = svc.dispatcher, []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        wait = dispatcher.backoff.wait()
        if wait >= 0.2:  # waiting for the backoff with faxes due
            samples.append((round(wait, 2), round(dispatcher._sleep_time(), 2)))
        time.sleep(0.05)
    assert samples and all(sleep >= min(wait, 1.0) - 0.1 for wait, sleep in samples), samples


def test_while_submissions_are_paused_the_dispatcher_sleeps_until_the_probe(service, spool, simulator):
    svc = service(api={"key": "wrong-key"})  # HTTP 401: the account pause (SPEC 6.2)
    (spool.folder("+15551230713") / "d.pdf").write_bytes(make_pdf(1))
    wait_for(lambda: svc.dispatcher.paused_reason, 15, "submissions paused")
    samples = []
    for _ in range(20):
        samples.append(round(svc.dispatcher._sleep_time(), 2))
        time.sleep(0.05)
    assert min(samples) >= 0.5, samples


def test_an_account_refusal_that_lasts_fails_no_more_documents(service, spool, simulator, make_config):
    """Three documents refused with one message pause sending (the third stays queued).
    A probe that finds the API answering resumes it, but while the refusal lasts the next
    document refused with the same message pauses it again at once: nothing more fails."""
    config = make_config()
    svc = service(config)
    simulator.set_fault("refuse_all", message="Insufficient balance")
    folder = spool.folder("+15551230711")
    datas = [make_pdf(1, text=f"balance-{i}") for i in range(6)]
    for i, data in enumerate(datas[:3]):
        (folder / f"d{i}.pdf").write_bytes(data)
    wait_for(lambda: svc.dispatcher.paused_reason, 20, "submissions paused")
    assert len(spool.wait_results(2, "failed")) == 2
    for i, data in enumerate(datas[3:], 3):
        (folder / f"d{i}.pdf").write_bytes(data)
    def probe_now() -> None:  # a reload with a new API client probes a paused account at once
        text = config.read_text()
        config.write_text(text.replace("timeout: 5s", "timeout: 6s") if "timeout: 5s" in text
                          else text.replace("timeout: 6s", "timeout: 5s"))
        assert svc.reload()

    for _ in range(2):
        refused = len(simulator.requests("fax-send"))
        probe_now()
        wait_for(lambda n=refused: len(simulator.requests("fax-send")) > n and svc.dispatcher.paused_reason,
                 20, "a document refused again, and sending paused again")
    assert len(spool.results("failed")) == 2, "a document failed while the account was refused"
    simulator.set_fault(None)
    probe_now()  # (the minute's probe would find it too)
    spool.wait_results(4, "sent", timeout=30)
    sent = [d for _, d in sent_documents(simulator)]
    assert len(sent) == len(set(sent)) == 4 and set(sent) <= set(datas)  # the 4 that did not fail, once
