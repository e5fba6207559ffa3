"""Intake hands each accepted job's documents to the sending stage (gateway/handover.py):
the bytes sent are the bytes judged, and a bounded amount of them is held."""

from __future__ import annotations

import base64
import json

from conftest import make_pdf, wait_for

from gateway.handover import Handover


def test_every_send_carries_the_bytes_that_were_judged_not_a_later_copy(service, spool, simulator):
    """A document changed in the job's folder after it was judged (here by the test; in
    life by nobody, the folder is the gateway's) is not what goes out: what was counted
    and checksummed is, on the first try and on the try after an outage.  Without the
    hand-over every try read the folder again."""
    svc = service()
    simulator.set_fault("down", endpoints=("fax-send",))
    judged = make_pdf(1, text="judged")
    (spool.folder("+15551230001") / "doc.pdf").write_bytes(judged)
    wait_for(lambda: simulator.requests("fax-send"), 10, "a first try, refused by the outage")
    [[job_id]] = svc.store.conn.execute("SELECT id FROM jobs").fetchall()
    held = spool.private / str(job_id) / "+15551230001" / "doc.pdf"
    held.write_bytes(make_pdf(2, text="changed afterwards"))
    simulator.set_fault(None)

    [result] = spool.wait_results(1, "sent", timeout=30)
    sends = simulator.requests("fax-send")
    assert len(sends) >= 2
    assert [base64.b64decode(s["body"]["faxData"][0]["fileData"]) for s in sends] == [judged] * len(sends)
    assert result["state"] == "delivered"


def _sent(request: dict) -> bytes:
    return base64.b64decode(request["body"]["faxData"][0]["fileData"])


def test_another_recipients_resend_carries_the_judged_bytes_too(service, spool, simulator):
    """The bytes stay until every recipient has ended: the first one delivered does not
    make the second one's resend read the (edited) folder."""
    svc = service(defaults={"resend": {"max": 2, "delay": "2s"}})
    judged = make_pdf(1, text="judged")
    (spool.outbox / "doc.json").write_text(json.dumps({"to": ["+15551230001", "+15551230777"]}))
    (spool.outbox / "doc.pdf").write_bytes(judged)

    def second_waits() -> int | None:  # 0001 delivered, 777 failed once and waits to be resent
        rows = dict(svc.store.conn.execute("SELECT number, state FROM recipients").fetchall())
        if rows.get("+15551230001") == "delivered" and rows.get("+15551230777") == "retry_wait":
            return svc.store.conn.execute("SELECT id FROM jobs").fetchone()[0]
        return None
    job_id = wait_for(second_waits, 15, "the first recipient delivered, the second waiting")
    [held] = (spool.private / str(job_id)).rglob("doc.pdf")
    held.write_bytes(make_pdf(2, text="changed afterwards"))

    [result] = spool.wait_results(1, "sent", timeout=30)
    [resend] = simulator.requests("fax-resend")
    assert _sent(resend) == judged
    assert [_sent(r) for r in simulator.requests("fax-send")] == [judged, judged]
    assert result["state"] == "delivered"


def test_an_operators_resend_sends_the_documents_as_they_are_in_failed(service, spool, simulator):
    """A resend takes the documents back from failed/, where the operator may have fixed
    them: what the sending stage still held of the job is not what goes out."""
    svc = service()
    simulator.set_fault("down", endpoints=("*",))
    (spool.folder("+15551230001") / "doc.pdf").write_bytes(make_pdf(1, text="judged"))
    wait_for(lambda: simulator.requests("fax-send"), 10, "a first try, refused by the outage")
    [[job_id]] = svc.store.conn.execute("SELECT id FROM jobs").fetchall()
    svc.store.add_request(job_id, "cancel")
    spool.wait_results(1, "failed")
    [in_failed] = spool.failed.rglob("*.pdf")
    fixed = make_pdf(3, text="fixed by the operator")
    in_failed.write_bytes(fixed)
    simulator.set_fault(None)

    svc.store.add_request(job_id, "resend")
    [result] = spool.wait_results(1, "sent", timeout=30)
    accepted = [r for r in simulator.requests("fax-send") if r.get("job_id")]
    assert [_sent(r) for r in accepted] == [fixed]
    assert result["state"] == "delivered"


def test_documents_are_held_until_every_recipient_ended_or_the_job_is_discarded():
    h = Handover(limit=100)
    h.put(1, [b"a" * 10, b"b" * 5], recipients=2)
    assert h.get(1) == (b"a" * 10, b"b" * 5)
    assert h.get(1) == (b"a" * 10, b"b" * 5)  # a retry carries the same bytes
    h.release(1)
    assert h.get(1) == (b"a" * 10, b"b" * 5)  # one recipient of two ended
    h.release(1)
    assert h.get(1) is None and h.size == 0 and len(h) == 0
    h.put(2, [b"c" * 10], recipients=3)
    h.discard(2)  # an operator's resend: read from failed/
    assert h.get(2) is None and h.size == 0
    h.release(2)  # a late release of a job no longer held changes nothing
    assert h.size == 0


def test_the_oldest_documents_give_way_when_the_limit_is_reached():
    h = Handover(limit=100)
    h.put(1, [b"x" * 40])
    h.put(2, [b"y" * 40])
    h.put(3, [b"z" * 40])  # 120 > 100: job 1's go
    assert h.get(1) is None
    assert h.get(2) == (b"y" * 40,) and h.get(3) == (b"z" * 40,)
    h.put(4, [b"w" * 101])  # larger than the limit on its own: never held
    assert h.get(4) is None and h.size == 80


def test_a_job_handed_over_again_replaces_its_documents():
    h = Handover(limit=100)
    h.put(1, [b"a" * 60])
    h.put(1, [b"b" * 60])
    assert h.size == 60 and h.get(1) == (b"b" * 60,) and len(h) == 1


def test_intake_keeps_documents_for_the_sending_stage_only_as_far_as_it_holds_them():
    from gateway.intake import _keep_within
    from gateway.judge import Accepted

    def accepted(n: int) -> Accepted:
        return Accepted(["+15551230001"], {}, [], 1, ["pdf"], data=[b"x" * n])
    small, large, last = accepted(40), accepted(70), accepted(50)
    room = _keep_within(100, [small, None, large, last])
    assert (small.data, large.data, last.data) == ([b"x" * 40], [], [b"x" * 50])  # 70 > 60 left
    assert room == 10
