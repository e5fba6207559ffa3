"""An API outage of any length loses nothing: the queue waits and drains afterwards."""

from __future__ import annotations

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
