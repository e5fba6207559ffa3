"""The turn the pipeline stages share (gateway/turns.py): fair, handed on between items,
given up for judging, and never a dependency: a stage stuck holding it stops nobody."""

from __future__ import annotations

import threading
import time

from conftest import make_pdf, wait_for

from gateway.turns import Turns

LONG = 30.0  # a lapse or quantum that never comes during a test


def _hold_in_thread(turns: Turns, until: threading.Event) -> threading.Event:
    """Another thread takes the turn and keeps it until `until`; returns once it holds it."""
    holding = threading.Event()

    def run() -> None:
        with turns.held():
            holding.set()
            until.wait(LONG)

    threading.Thread(target=run, daemon=True).start()
    assert holding.wait(5)
    return holding


def _enter_in_thread(turns: Turns, log: list[str], name: str) -> threading.Thread:
    def run() -> None:
        with turns.held():
            log.append(name)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _waiting(turns: Turns, n: int) -> None:
    wait_for(lambda: len(turns._line) == n, 5, f"{n} thread(s) waiting for the turn")


def test_only_one_holds_the_turn_and_waiters_get_it_in_order_of_arrival():
    turns, release, log = Turns(lapse=LONG), threading.Event(), []
    _hold_in_thread(turns, release)
    threads = []
    for name in ("first", "second", "third"):
        threads.append(_enter_in_thread(turns, log, name))
        _waiting(turns, len(threads))
    assert log == []  # nobody while it is held
    release.set()
    for t in threads:
        t.join(5)
    assert log == ["first", "second", "third"]


def test_the_same_thread_may_take_it_again_inside():
    turns = Turns(lapse=LONG)
    with turns.held():
        with turns.held():
            pass
        assert threading.get_ident() in turns._holders  # still held by the outer block
    assert turns._holders == {}


def test_breathe_hands_the_turn_to_a_waiter_once_a_quantum_is_over():
    turns, log = Turns(quantum=0.0, lapse=LONG), []
    with turns.held():
        waiter = _enter_in_thread(turns, log, "waiter")
        _waiting(turns, 1)
        turns.breathe()
        assert log == ["waiter"]  # it had its turn before this one went on
    waiter.join(5)


def test_breathe_keeps_the_turn_within_the_quantum_or_with_nobody_waiting():
    turns, log = Turns(quantum=LONG, lapse=LONG), []
    with turns.held():
        turns.breathe()  # nobody waits: nothing to do
        waiter = _enter_in_thread(turns, log, "waiter")
        _waiting(turns, 1)
        turns.breathe()  # within the quantum: kept
        assert log == []
    waiter.join(5)
    assert log == ["waiter"]


def test_aside_gives_the_turn_up_for_the_block_and_takes_it_back_after():
    turns, log = Turns(lapse=LONG), []
    with turns.held():
        waiter = _enter_in_thread(turns, log, "waiter")
        _waiting(turns, 1)
        with turns.aside():
            waiter.join(5)
            assert log == ["waiter"]  # it ran while this thread was aside
            assert threading.get_ident() not in turns._holders
        assert threading.get_ident() in turns._holders
        log.append("back")
    assert log == ["waiter", "back"]


def test_aside_without_the_turn_does_nothing():
    turns = Turns(lapse=LONG)
    with turns.aside():
        assert turns._holders == {}


def test_a_holder_that_is_stuck_does_not_stop_a_waiter():
    """A holder that reaches no breathing point for LAPSE (a hung system call): the waiter
    goes ahead then, and again at once, without waiting another LAPSE, while it stays stuck."""
    turns, stuck, times = Turns(lapse=1.0), threading.Event(), {}

    def hold() -> None:
        with turns.held():
            times["held"] = time.monotonic()
            stuck.wait(LONG)

    threading.Thread(target=hold, daemon=True).start()
    wait_for(lambda: "held" in times, 5, "the holder")
    try:
        with turns.held():
            times["entered"] = time.monotonic()
        assert times["entered"] - times["held"] >= 1.0  # it did wait for its turn first
        started = time.monotonic()
        with turns.held():
            pass
        assert time.monotonic() - started < 0.5  # not another LAPSE: the holder is known stuck
        assert turns.lapsed == 2
    finally:
        stuck.set()


def test_a_holder_that_breathes_is_not_stuck_however_long_it_holds():
    """Breathing points keep a long turn alive: with a quantum that never ends, the waiter
    gets the turn when the holder leaves, never by lapsing."""
    turns, log = Turns(quantum=LONG, lapse=0.2), []
    holding = threading.Event()

    def hold() -> None:
        with turns.held():
            holding.set()
            for _ in range(30):  # 0.6 s of work with a breathing point every 20 ms
                time.sleep(0.02)
                turns.breathe()
            log.append("holder done")

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert holding.wait(5)
    _enter_in_thread(turns, log, "waiter").join(10)
    holder.join(10)
    assert log == ["holder done", "waiter"]
    assert turns.lapsed == 0


def test_the_sending_loop_is_served_first_and_without_waiting_a_quantum():
    turns, log = Turns(quantum=LONG, lapse=LONG), []
    with turns.held():
        other = _enter_in_thread(turns, log, "other")
        _waiting(turns, 1)

        def sending() -> None:
            turns.serve_first()
            with turns.held():
                log.append("sending")

        first = threading.Thread(target=sending, daemon=True)
        first.start()
        _waiting(turns, 2)
        turns.breathe()  # within the quantum, but the sending loop waits: handed on now
        assert log == ["sending", "other"]  # then the other, who was in line before this one
    other.join(5)
    first.join(5)


def test_the_pipeline_stages_share_the_turn_and_go_on_while_it_is_stuck(service, spool):
    """The test takes the service's turn and keeps it, as a stage stuck in a hung system
    call would: intake, sending and filing still deliver a document, each going ahead
    after waiting LAPSE (and so each of them asked for the turn)."""
    svc = service()
    assert svc.turns is not None
    assert svc.intake.turns is svc.turns and svc.dispatcher.turns is svc.turns
    assert svc.filing.turns is svc.turns
    assert svc.retention.turns is None  # long turns of its own, off the sending path
    stuck = threading.Event()
    _hold_in_thread(svc.turns, stuck)
    try:
        folder = spool.outbox / "+15551234567"
        folder.mkdir()
        (folder / "letter.pdf").write_bytes(make_pdf())
        filed = spool.sent / "+15551234567" / "letter.pdf"
        wait_for(filed.exists, 30, "the letter filed in sent/")
        assert svc.turns.lapsed > 0
    finally:
        stuck.set()
