"""The sending loop makes most requests itself (issue 12): written without waiting on an
idle keep-alive connection, their answers read as they come (gateway/awaiting.py).  Every
answer it does not read whole itself goes to a worker with what came already, so each is
classified exactly as a worker's blocking request would be (SPEC 6.3).

The API here is a raw socket that answers the second fax-send (the first one on a
kept-alive connection, so the loop writes it itself) as each test says."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable

import pytest
from conftest import make_pdf, wait_for

from gateway.httpconn import _framed
from gateway.store import JobState

Answer = Callable[[socket.socket, bytes], None]  # writes the answer to the odd fax-send


def _json(job_id: int) -> bytes:
    return json.dumps({"status": 1, "message": "ok", "data": {"jobId": job_id}}).encode()


def _plain(conn: socket.socket, body: bytes) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(body), body))


class ScriptedApi:
    """fax-send: the first and third answered plainly, the second by `odd`; fax-status:
    "sending".  Records each fax-send's connection."""

    def __init__(self, odd: Answer) -> None:
        self.odd = odd
        self.sends: list[int] = []  # connection number of each fax-send
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/v1"
        self._lock = threading.Lock()
        self._connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self._connections += 1
            threading.Thread(target=self._serve, args=(conn, self._connections), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        data = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, data = data.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:")))
                while len(data) < length:
                    data += conn.recv(65536)
                data = data[length:]
                if b"fax-send" in head.split(b"\r\n")[0]:
                    with self._lock:
                        self.sends.append(number)
                        n = len(self.sends)
                    if n == 2:
                        try:
                            self.odd(conn, _json(7000 + n))
                        except OSError:
                            return
                        if getattr(self.odd, "closes", False):
                            return
                        continue
                    _plain(conn, _json(7000 + n))
                else:
                    _plain(conn, json.dumps({"status": 1, "data": {"status": "sending"}}).encode())

    def close(self) -> None:
        self.server.close()


def _in_pieces(conn: socket.socket, body: bytes) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    for piece in (answer[:9], answer[9:40], answer[40:-5], answer[-5:]):
        conn.sendall(piece)
        time.sleep(0.15)


def _chunked(conn: socket.socket, body: bytes) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (10, body[:10]))
    time.sleep(0.1)
    conn.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body) - 10, body[10:]))


def _early_hints(conn: socket.socket, body: bytes) -> None:
    conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n")
    time.sleep(0.1)
    _plain(conn, body)


def _until_close(conn: socket.socket, body: bytes) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body)


_until_close.closes = True  # type: ignore[attr-defined]


def _silence(conn: socket.socket, body: bytes) -> None:
    time.sleep(3)  # past api.timeout (1 s)
    raise OSError("the test's server gave no answer")


def _hang_up(conn: socket.socket, body: bytes) -> None:
    raise OSError("the test's server hung up")  # `_serve` closes the connection


def _half_then_hang_up(conn: socket.socket, body: bytes) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body[:5]))
    time.sleep(0.1)
    raise OSError("the test's server hung up halfway")


def _recipients(svc):
    return {r.number: r for job in svc.store.list_jobs() for r in job.recipients}


@pytest.mark.parametrize("odd", [_in_pieces, _chunked, _early_hints, _until_close],
                         ids=["in pieces", "chunked", "103 first", "until close"])
def test_an_answer_the_loop_cannot_read_whole_itself_still_counts(service, spool, odd):
    """Accepted with the jobId of the answer however it was framed or cut, and the next fax
    goes out as usual (a connection closed by the answer is not reused)."""
    api = ScriptedApi(odd)
    try:
        svc = service(api={"base_url": api.url, "max_in_flight": 1, "timeout": "2s"},
                      extra={"poll": {"interval": "60s"}})
        numbers = [f"+1555123070{i}" for i in range(3)]
        for i, number in enumerate(numbers):  # one at a time: each send's connection is known
            (spool.folder(number) / "d.pdf").write_bytes(make_pdf(1, text=str(i)))
            wait_for(lambda n=number: (r := _recipients(svc).get(n)) and r.ifax_job_id, 15,
                     f"fax {i + 1} accepted")
        recipients = _recipients(svc)
        assert [recipients[n].ifax_job_id for n in numbers] == ["7001", "7002", "7003"]
        assert {recipients[n].state for n in numbers} == {JobState.SENDING}
        # The second went out on the first's connection: written by the loop itself.
        assert api.sends[0] == api.sends[1]
        if odd is _until_close:
            assert api.sends[2] != api.sends[1]
    finally:
        api.close()


@pytest.mark.parametrize("odd", [_silence, _hang_up, _half_then_hang_up],
                         ids=["no answer", "hung up", "half an answer"])
def test_a_request_the_loop_wrote_and_got_no_answer_to_is_uncertain(service, spool, odd):
    """Sent in full on a kept-alive connection, then no answer within api.timeout, or the
    connection ended: it may have reached iFax, so it is uncertain, never "not sent"."""
    api = ScriptedApi(odd)
    try:
        svc = service(api={"base_url": api.url, "max_in_flight": 1, "timeout": "1s"},
                      extra={"poll": {"interval": "60s"}})
        (spool.folder("+15551230700") / "d.pdf").write_bytes(make_pdf(1, text="first"))
        wait_for(lambda: len(api.sends) == 1, 15, "the first fax-send")
        (spool.folder("+15551230701") / "d.pdf").write_bytes(make_pdf(1, text="second"))
        second = wait_for(lambda: (r := _recipients(svc).get("+15551230701")) and r.state == JobState.FAILED
                          and r, 15, "the second fax uncertain")
        assert "outcome of the submission is unknown" in second.message
        assert second.ifax_job_id is None and len(api.sends) == 2
        assert api.sends[0] == api.sends[1]
    finally:
        api.close()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\ncontent-length:  2 \r\nX: y\r\n\r\n{}",
    b"HTTP/1.0 503 Busy\r\nContent-Length: 0\r\n\r\n",
])
def test_the_usual_answer_is_framed_by_its_content_length(answer):
    assert _framed(bytearray(answer + b"HTTP/1.1 next")) == len(answer)


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 2\n\n{}",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\n\r\n{}",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n",
    b"garbage\r\n\r\n",
])
def test_any_other_answer_is_left_to_the_standard_parser(answer):
    assert _framed(bytearray(answer)) == -1


def test_a_head_not_yet_whole_is_waited_for():
    assert _framed(bytearray(b"HTTP/1.1 200 OK\r\nContent-Len")) is None


def test_a_whole_answer_and_then_a_reset_is_that_answer():
    """A server that answers (a refusal, say) and resets the connection without reading the
    rest: the answer read before the reset counts, as http.client, which stops at its end,
    reads it; calling it a broken connection would make a refusal, or an acceptance,
    uncertain.  The connection is not reused."""
    import struct

    from gateway.httpconn import Answer as HttpAnswer
    from gateway.httpconn import Connections

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    done = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        _plain(conn, b"{}")  # the first request, answered on a kept-alive connection
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\nno")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # a reset, not a FIN
        done.set()

    threading.Thread(target=serve, daemon=True).start()
    pool = Connections(f"http://127.0.0.1:{server.getsockname()[1]}/v1", {}, timeout=2,
                       connect_timeout=2, size=1)
    try:
        assert pool.post("/customer/fax-send", b"{}").status == 200
        pending = pool.start("/customer/fax-send", b"{}")
        assert pending is not None and pending.written
        assert done.wait(5)
        time.sleep(0.2)  # the reset reaches this side's socket
        answer = pending.read()
        assert isinstance(answer, HttpAnswer) and (answer.status, answer.body) == (401, b"no")
        pending.release()
        assert pool.start("/customer/fax-send", b"{}") is None  # not kept for reuse
    finally:
        pool.close()
        server.close()
