"""The iFax client against the simulator over real HTTP: every failure is classified by
whether iFax could have acted on the request (SPEC 6.2)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading

import pytest
from conftest import make_pdf

from gateway.errors import AuthFailed, Refused, Transient, Uncertain
from gateway.ifax import Attachment, IFaxClient, parse_status, parse_time


@pytest.fixture
def client(simulator):
    c = IFaxClient(simulator.url, "test-key", timeout=2, max_in_flight=2)
    yield c
    c.close()


def _doc():
    return [Attachment("a.pdf", make_pdf(1))]


def test_send_and_status(client, simulator):
    job = client.send("+15551230601", _doc())
    assert job.isdigit()
    st = client.status(job)
    assert st.status == "sending" and st.final_state is None
    [req] = simulator.requests("fax-send")
    assert req["body"]["faxNumber"] == "+15551230601"


@pytest.mark.parametrize("mode,exc", [
    ("rate_limit", Transient), ("down", Transient), ("error", Uncertain), ("bad_gateway", Uncertain),
    ("drop_after", Uncertain), ("refuse_all", Refused),
])
def test_faults_are_classified(client, simulator, mode, exc):
    simulator.set_fault(mode, count=1)
    with pytest.raises(exc):
        client.send("+15551230602", _doc())


def test_slow_answer_times_out_as_uncertain(simulator):
    c = IFaxClient(simulator.url, "test-key", timeout=0.3, max_in_flight=1)
    simulator.set_fault("slow", seconds=2, count=1)
    with pytest.raises(Uncertain):
        c.send("+15551230603", _doc())
    c.close()


def test_rate_limit_carries_retry_after(client, simulator):
    simulator.set_fault("rate_limit", count=1)
    with pytest.raises(Transient) as info:
        client.send("+15551230604", _doc())
    assert info.value.retry_after == 1


def test_no_server_is_transient(simulator):
    from conftest import free_port
    c = IFaxClient(f"http://127.0.0.1:{free_port()}/v1", "k", timeout=1, max_in_flight=1)
    with pytest.raises(Transient):
        c.send("+15551230605", _doc())
    c.close()


def test_wrong_key_and_wrong_base_url_refuse_the_account(simulator):
    c = IFaxClient(simulator.url, "wrong", timeout=2, max_in_flight=1)
    with pytest.raises(AuthFailed):
        c.status("1000")
    c.close()
    c = IFaxClient(simulator.url.removesuffix("/v1"), "test-key", timeout=2, max_in_flight=1)
    with pytest.raises(AuthFailed) as info:
        c.send("+15551230606", _doc())
    assert "/v1" in str(info.value)
    c.close()


def test_key_never_in_errors_or_repr(simulator):
    c = IFaxClient(simulator.url, "very-secret", timeout=2, max_in_flight=1)
    try:
        c.status("1")
    except Exception as exc:
        assert "very-secret" not in str(exc) and "very-secret" not in repr(exc)
    assert "very-secret" not in repr(c)
    c.close()


def test_reading_is_liberal_about_both_api_versions():
    old = parse_status({"jobId": "12345", "faxStatus": "Cancelled", "faxCallStart": "2020-04-29 14:29:59 UTC",
                        "faxTransferredPages": "3", "actualCost": 2, "errorMessage": "failed", "code": 12007})
    assert old.status == "canceled" and old.final_state == "canceled"
    assert old.call_start == 1588170599.0 and old.transferred_pages == 3 and old.cost == 2.0
    assert old.message == "failed"
    new = parse_status({"jobId": 1, "faxStatus": "delivered", "faxCallStart": 1588170599, "message": "ok"})
    assert new.final_state == "delivered" and new.call_start == 1588170599.0 and new.cost is None
    for word, final in [("failed_chargeable", "failed"), ("blocked", "failed"),
                        ("partially_cancelled", "failed"), ("queued", None), ("sending", None)]:
        assert parse_status({"faxStatus": word}).final_state == final
    assert parse_time("garbage") is None


def test_only_failed_is_a_resendable_final_failure():
    for word, final in [("failed", "failed"), ("blocked", "failed"), ("failed_chargeable", "failed"),
                        ("partially_cancelled", "failed"), ("cancelled", "canceled"),
                        ("canceled", "canceled"), ("delivered", "delivered"), ("sending", None)]:
        st = parse_status({"faxStatus": word})
        assert st.final_state == final and st.resendable == (word == "failed"), word


def test_a_connection_the_server_closed_is_not_reused(client, simulator):
    """A stale keep-alive connection must never turn a request that could not have reached
    iFax into an uncertain one: the pool looks at an idle connection before reusing it."""
    client.send("+15551230607", _doc())
    simulator.stop()   # closes every connection, the client's idle one included
    simulator.start()  # same port
    job = client.send("+15551230608", _doc())
    assert job.isdigit()
    first, second = simulator.requests("fax-send")
    assert second["body"]["faxNumber"] == "+15551230608"
    assert second["connection"] != first["connection"]


def test_a_kept_alive_connection_is_reused(client, simulator):
    for number in ("+15551230609", "+15551230610", "+15551230611"):
        client.send(number, _doc())
    assert len({r["connection"] for r in simulator.requests("fax-send")}) == 1


def _content_length(f) -> int:
    """Reads a request's headers from `f`; its Content-Length (0 without one)."""
    length = 0
    while (header := f.readline()) not in (b"\r\n", b""):
        name, _, value = header.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return length


class _Responder:
    """A server (a forward proxy, or an API over TLS) that answers every request itself
    and records its request lines."""

    ANSWER = b'{"status": 1, "message": "ok", "data": {"jobId": 4242}}'

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.lines: list[str] = []
        self.tls = tls
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.tls:
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except OSError:  # the client refused our certificate
                    conn.close()
                    continue
            with conn, conn.makefile("rb") as f:
                while line := f.readline():
                    self.lines.append(line.decode().strip())
                    length = _content_length(f)
                    f.read(length)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(self.ANSWER), self.ANSWER))

    def close(self) -> None:
        self.sock.close()


def test_a_proxy_named_by_the_environment_is_used(simulator, monkeypatch):
    proxy = _Responder()
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    c = IFaxClient(simulator.url, "test-key", timeout=2, max_in_flight=1)
    try:
        assert c.send("+15551230612", _doc()) == "4242"
    finally:
        c.close()
        proxy.close()
    assert proxy.lines == [f"POST {simulator.url}/customer/fax-send HTTP/1.1"]
    assert simulator.requests("fax-send") == []


def test_no_proxy_sends_directly(simulator, monkeypatch):
    proxy = _Responder()
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    c = IFaxClient(simulator.url, "test-key", timeout=2, max_in_flight=1)
    try:
        assert c.send("+15551230613", _doc()).isdigit()
    finally:
        c.close()
        proxy.close()
    assert proxy.lines == []
    assert len(simulator.requests("fax-send")) == 1


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs the openssl command")
def test_tls_is_verified(tmp_path, monkeypatch):
    """Over https the server's certificate is checked: unknown, it is refused before anything
    is sent (Transient); trusted through SSL_CERT_FILE, as httpx honoured it, it is used."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server = _Responder(tls)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    try:
        c = IFaxClient(server.url + "/v1", "test-key", timeout=2, max_in_flight=1)
        with pytest.raises(Transient, match="cannot connect"):
            c.send("+15551230614", _doc())
        c.close()
        assert server.lines == []
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        c = IFaxClient(server.url + "/v1", "test-key", timeout=2, max_in_flight=1)
        assert c.send("+15551230615", _doc()) == "4242"
        c.close()
        assert server.lines == ["POST /v1/customer/fax-send HTTP/1.1"]
    finally:
        server.close()


def test_a_large_request_to_a_slow_reader_is_bounded_per_piece_not_as_a_whole():
    """api.timeout bounds each step of the upload, as httpx did, not the whole of it: a
    20 MB fax on a slow uplink takes longer than the timeout to send and must still go."""
    import time
    answer = b'{"status": 1, "message": "ok", "data": {"jobId": 77}}'
    got = []
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)

    def serve():
        conn, _ = sock.accept()
        with conn, conn.makefile("rb") as f:
            length = _content_length(f)
            while length:
                piece = f.read(min(length, 512 << 10))
                length -= len(piece)
                got.append(len(piece))
                time.sleep(0.05)  # a slow uplink: about 10 MB/s
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))

    threading.Thread(target=serve, daemon=True).start()
    c = IFaxClient(f"http://127.0.0.1:{sock.getsockname()[1]}/v1", "test-key", timeout=0.5, max_in_flight=1)
    try:
        started = time.monotonic()
        assert c.send("+15551230616", [Attachment("big.pdf", os.urandom(15 << 20))]) == "77"
        assert time.monotonic() - started > 1.0  # longer than the timeout as a whole
    finally:
        c.close()
        sock.close()
    assert sum(got) > 20 << 20  # base64 of 15 MB


def test_an_idle_connection_is_not_kept_past_its_expiry(client, simulator, monkeypatch):
    """A connection idle longer than KEEPALIVE_EXPIRY may have been forgotten by a NAT or a
    load balancer without a word: a new one is made (with 0, every request gets one)."""
    from gateway import httpconn
    monkeypatch.setattr(httpconn, "KEEPALIVE_EXPIRY", 0.0)
    for number in ("+15551230617", "+15551230618", "+15551230619"):
        client.send(number, _doc())
    assert len({r["connection"] for r in simulator.requests("fax-send")}) == 3


def _one_answer_server(answer: bytes, *, read_body: bool) -> tuple[str, socket.socket]:
    """Reads one request's headers (and its body, if `read_body`), writes `answer`, closes."""
    sock = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = sock.accept()
        with conn, conn.makefile("rb") as f:
            length = _content_length(f)
            if read_body:
                f.read(length)
            conn.sendall(answer)
            conn.shutdown(socket.SHUT_WR)
            conn.recv(1 << 20)

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{sock.getsockname()[1]}/v1", sock


def test_a_refusal_sent_before_the_body_was_read_is_the_answer():
    """A server may refuse a request after its headers (413, 401) and close: the rest cannot
    be written, and the answer it sent is what counts (a refusal), not "not sent", which
    would retry the same document forever."""
    refusal = b'{"status": 0, "message": "File too large"}'
    url, sock = _one_answer_server(b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\n"
                                   b"Content-Length: %d\r\n\r\n%s" % (len(refusal), refusal), read_body=False)
    c = IFaxClient(url, "test-key", timeout=2, max_in_flight=1)
    try:
        with pytest.raises(Refused) as info:
            c.send("+15551230620", [Attachment("big.pdf", os.urandom(15 << 20))])
        assert "too large" in str(info.value).lower()
    finally:
        c.close()
        sock.close()


def test_an_informational_answer_is_skipped_for_the_final_one():
    """103 Early Hints (or 102) before the final answer: the final answer, with the jobId,
    is the one read; taking the 103 would call an accepted fax uncertain."""
    final = b'{"status": 1, "message": "ok", "data": {"jobId": 4343}}'
    url, sock = _one_answer_server(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
                                   b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(final), final),
                                   read_body=True)
    c = IFaxClient(url, "test-key", timeout=2, max_in_flight=1)
    try:
        assert c.send("+15551230621", _doc()) == "4343"
    finally:
        c.close()
        sock.close()


def test_the_headers_leave_with_the_body_in_one_send():
    """One send per small request, not two (issue 12: each system call of an HTTP worker is
    a chance for the interpreter lock to change hands).  Over a SOCK_SEQPACKET pair every
    send is one record, so the server's first read shows exactly what the first send
    carried; the connection is made here, the rest is the pool's own `post`."""
    from gateway import httpconn
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    records = []

    class Paired(httpconn.Connections):
        def _connect(self):
            conn = http.client.HTTPConnection("127.0.0.1", 9)
            conn.sock, conn.auto_open = ours, 0
            return conn

    def serve():
        records.append(theirs.recv(1 << 20))
        theirs.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    threading.Thread(target=serve, daemon=True).start()
    pool = Paired("http://127.0.0.1:9/v1", {"Content-Type": "application/json"}, timeout=2,
                  connect_timeout=2, size=1)
    try:
        body = b'{"faxNumber": "+15551230622"}'
        answer = pool.post("/customer/fax-send", body)
        assert answer.status == 200 and answer.body == b"{}"
        [first] = records
        assert first.startswith(b"POST /v1/customer/fax-send HTTP/1.1\r\n")
        assert first.endswith(b"\r\n\r\n" + body)  # headers and body in the one record
        # Byte for byte what http.client's own request methods write for it.
        reference = _written_by_http_client("127.0.0.1", 9, "/v1/customer/fax-send",
                                            {"Content-Type": "application/json"}, body)
        assert first == reference
        assert b"\r\nHost: 127.0.0.1:9\r\n" in first and b"\r\nContent-Length: %d\r\n" % len(body) in first
    finally:
        pool.close()
        theirs.close()


def _written_by_http_client(host: str, port: int, url: str, headers: dict[str, str], body: bytes) -> bytes:
    """What http.client writes for a POST made with its own request methods, as the
    pool did before it wrote the headers itself (issue 12)."""
    written: list[bytes] = []

    class Kept(http.client.HTTPConnection):
        def send(self, data):
            written.append(bytes(data))

    conn = Kept(host, port)
    conn.putrequest("POST", url, skip_accept_encoding=True)
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.putheader("Accept-Encoding", "identity")
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    conn.send(body)
    return b"".join(written)


HEADER_BLOCKS = [
    b"Content-Type: application/json\r\nContent-Length: 12\r\n\r\n",
    b"content-length: 3\r\nContent-Length: 4\r\nRetry-After:  7 \r\n\r\n",  # repeated; spaces kept
    b"X-Empty:\r\nX-Tab:\tvalue\r\nConnection: close\r\n\r\n",
    b"X-Folded: one\r\n two\r\nRetry-After: 3\r\n\r\n",  # an obsolete folded line
    b"no colon here\r\nRetry-After: 3\r\n\r\n",
    b"Bad Name: x\r\nRetry-After: 3\r\n\r\n",
    b"From nobody\r\nRetry-After: 3\r\n\r\n",
    b"X-Latin: caf\xe9\r\nX-Bare-LF: yes\n\n",
    b"X-A: a\rTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",  # a bare CR ends a line there
    b"X-A: a\r\r\nContent-Length: 3\r\n\r\n",  # ... and here the block
    b"X-A: foo\rbar\r\nRetry-After: 3\r\n\r\n",
    b"X-Trailing: value \t\r\nRetry-After: 3",  # the answer ends inside its headers
    b"\r\n",
]


@pytest.mark.parametrize("block", HEADER_BLOCKS)
def test_answer_headers_are_read_as_http_client_reads_them(block):
    """The pool reads an answer's headers without the email package when they are plain
    (issue 12); what it reads must be what http.client's own parse_headers gives."""
    import io

    from gateway import httpconn
    ours = httpconn._parse_headers(io.BytesIO(block + b"body"))
    theirs = http.client.parse_headers(io.BytesIO(block + b"body"))
    assert type(ours) is type(theirs)
    assert ours.items() == theirs.items()
    for name in ("content-length", "Content-Length", "Retry-After", "connection", "X-Tab", "X-Empty",
                 "X-Folded", "X-Latin", "X-A", "Transfer-Encoding", "X-Trailing", "missing"):
        assert ours.get(name) == theirs.get(name)
        assert ours.get_all(name) == theirs.get_all(name)


def test_an_answer_that_never_comes_closes_the_connection_at_once():
    """A request whose answer times out is uncertain, and its connection is closed at once
    (the server sees it end), not when the last reference to the error goes away."""
    from gateway import httpconn
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    seen = []

    def serve():
        conn, _ = server.accept()
        conn.recv(1 << 16)  # the request; no answer
        conn.settimeout(2.0)
        try:
            seen.append("closed" if conn.recv(1) == b"" else "data")
        except TimeoutError:
            seen.append("still open after 2 s")
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    pool = httpconn.Connections(f"http://127.0.0.1:{server.getsockname()[1]}/v1", {}, timeout=0.3,
                                connect_timeout=2, size=1)
    errors = []
    try:
        pool.post("/customer/fax-send", b"{}")
    except httpconn.AnswerTimeout as exc:
        errors.append(exc)  # kept, as a log record or a worker's result may keep it
    thread.join(5)
    pool.close()
    server.close()
    assert errors and seen == ["closed"]


def test_a_path_http_client_refuses_is_not_sent_and_opens_no_connection():
    """An api.base_url whose path http.client refuses (a space): the request is not sent
    (SendFailed, retried like any request that never left), and no connection is made for it."""
    from gateway import httpconn
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    pool = httpconn.Connections(f"http://127.0.0.1:{server.getsockname()[1]}/v 1", {}, timeout=2,
                                connect_timeout=2, size=1)
    try:
        with pytest.raises(httpconn.SendFailed):
            pool.post("/customer/fax-send", b"{}")
        with pytest.raises(TimeoutError):
            server.accept()  # nobody connected
    finally:
        pool.close()
        server.close()


def test_requests_and_answers_read_and_write_as_json_did():
    """orjson encodes requests and reads answers (issue 12); what it refuses goes to json."""
    from gateway.errors import RequestNotEncodable
    from gateway.ifax import _loads, _prepare

    body = {"faxNumber": "+15551234567", "faxData": [{"fileName": "caf\u00e9.pdf", "fileData": "QUJD"}]}
    assert json.loads(_prepare("fax-send", body).content) == body
    huge = {"jobId": 10 ** 30}  # beyond orjson's 64 bits: json writes it
    assert json.loads(_prepare("fax-status", huge).content) == huge
    with pytest.raises(RequestNotEncodable, match="cannot be encoded: UnicodeEncodeError"):
        _prepare("fax-send", {"faxNumber": "+1555", "faxData": [{"fileName": "\udce9.pdf"}]})
    assert _loads(b'{"status": 1, "data": {"jobId": 42}}') == {"status": 1, "data": {"jobId": 42}}
    assert _loads(b'{"status": 1, "cost": NaN}')["status"] == 1  # json reads what orjson refuses
    assert _loads(b"<html>busy</html>") is None and _loads(b"\xff\xfe") is None
    # orjson reads an integer beyond 64 bits as a float: such a jobId must come back exactly
    assert _loads(b'{"data": {"jobId": 18446744073709551617}}')["data"]["jobId"] == 18446744073709551617
    assert _loads(b'{"data": {"jobId": 1234567890123456789}}')["data"]["jobId"] == 1234567890123456789
