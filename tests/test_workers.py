"""The thread pools' workers (gateway/workers.py): what the HTTP workers and handlers rely on."""

from __future__ import annotations

import logging
import threading

import pytest

from gateway.workers import Workers, WorkersClosed


def test_calls_run_in_the_named_threads_at_once_and_side_by_side():
    workers = Workers(3, "ifax")
    inside, release = threading.Barrier(4), threading.Event()
    names = []

    def call(i):
        names.append(threading.current_thread().name)
        inside.wait(10)  # all three at once: each call has a thread of its own
        release.wait(10)

    for i in range(3):
        workers.submit(call, i)
    inside.wait(10)
    release.set()
    workers.shutdown()
    assert sorted(names) == ["ifax_0", "ifax_1", "ifax_2"]
    assert all(t.daemon for t in workers._threads)  # a stuck call never holds up the exit


def test_a_call_that_raises_is_logged_and_the_thread_goes_on(caplog):
    workers = Workers(1, "w")
    done = threading.Event()
    with caplog.at_level(logging.ERROR, "gateway.workers"):
        workers.submit(lambda: 1 / 0)
        workers.submit(done.set)
        assert done.wait(10)
    workers.shutdown()
    assert "w: a call failed" in caplog.text and "ZeroDivisionError" in caplog.text


def test_shutdown_waits_for_the_calls_already_handed_out_and_refuses_new_ones():
    workers = Workers(1, "w")
    started, release, ran = threading.Event(), threading.Event(), []

    def slow():
        started.set()
        release.wait(10)
        ran.append("slow")

    workers.submit(slow)
    workers.submit(ran.append, "queued")
    assert started.wait(10)
    stopper = threading.Thread(target=workers.shutdown)
    stopper.start()
    stopper.join(0.2)
    assert stopper.is_alive()  # still waiting for the call under way
    with pytest.raises(WorkersClosed):
        workers.submit(ran.append, "late")
    release.set()
    stopper.join(10)
    assert not stopper.is_alive() and ran == ["slow", "queued"]
    assert not any(t.is_alive() for t in workers._threads)
