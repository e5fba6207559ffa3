"""The HTTP edge (issue 9): the daemon's one port faces the internet through a reverse proxy,
so idle, slow, oversized and malformed clients must neither stop it nor fill its log."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import resource
import select
import shutil
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from conftest import free_port, make_pdf, run_cli, wait_for

from gateway.web import MAX_BODY, REQUEST_DEADLINE, Response, Route, Routes, WebServer

SECRET = "s3cr3t"
WEBHOOK = {"webhook": {"enabled": True, "secret": SECRET}}


def _host_port(url: str) -> tuple[str, int]:
    u = httpx.URL(url)
    return u.host, u.port


def exchange(url: str, data: bytes, timeout: float = 5.0) -> bytes:
    """Sends raw bytes and reads until the server closes the connection (or `timeout`)."""
    with socket.create_connection(_host_port(url), timeout=timeout) as s:
        s.sendall(data)
        return read_until_closed(s, timeout)


def read_until_closed(s: socket.socket, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    got = b""
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return got  # closed with unread data (a half-sent request): a reset, not a FIN
        if not chunk:
            return got
        got += chunk
    raise AssertionError(f"the server did not close the connection within {timeout}s; got {got[:200]!r}")


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response.split(b" ", 2)[1])


def header(response: bytes, name: str) -> str | None:
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


@contextlib.contextmanager
def open_files(n: int) -> Iterator[None]:
    """Raises this process's own descriptor limit, for tests that hold many sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 256
    if soft >= want:
        yield
        return
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"this process may open only {hard} files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- many idle clients ---------------------------------------------------------------------------

def test_a_thousand_idle_connections_stop_neither_healthz_nor_intake(daemon, spool, simulator):
    """With 1,024 descriptors, 1,000 idle connections (half of them stopped halfway through a
    request line) leave /healthz answering and documents flowing: the server holds at most
    its cap, closing the oldest idle connection for a new one, on one thread."""
    if not shutil.which("prlimit"):
        pytest.skip("prlimit is needed to run the daemon with 1,024 descriptors")
    d = daemon(prefix=("prlimit", "--nofile=1024:1024")).start()
    host, port = _host_port(d.url)
    held: list[socket.socket] = []
    with open_files(1000):
        try:
            for i in range(1000):
                s = socket.create_connection((host, port), timeout=5)
                if i % 2:
                    s.sendall(b"GET /healthz HT")  # half a request line
                held.append(s)
            r = httpx.get(d.url + "/healthz", timeout=5)
            assert r.status_code == 200 and r.json()["status"] == "ok"
            threads = len(os.listdir(f"/proc/{d.proc.pid}/task"))
            assert threads < 100, f"{threads} threads: a thread per connection?"

            (spool.folder("+15551239001") / "a.pdf").write_bytes(make_pdf(1))
            [result] = spool.wait_results(1, "sent", timeout=30)
            assert result["state"] == "delivered"
            assert httpx.get(d.url + "/healthz", timeout=5).status_code == 200
        finally:
            for s in held:
                s.close()
    assert d.terminate() == 0
    log = d.log.read_text()
    assert "Too many open files" not in log and "Traceback" not in log


def test_at_the_cap_the_oldest_idle_connection_makes_room(service):
    svc = service()
    web = WebServer("127.0.0.1", 0, svc, max_connections=8)
    web.start()
    try:
        idle = [socket.create_connection(("127.0.0.1", web.port), timeout=5) for _ in range(8)]
        wait_for(lambda: web.connections == 8, 5, "8 connections accepted")
        # A ninth: the first idle one is closed for it, and it is answered.
        assert httpx.get(f"http://127.0.0.1:{web.port}/healthz", timeout=5).status_code == 200
        assert read_until_closed(idle[0], 5) == b""
        for s in idle:
            s.close()
    finally:
        web.stop()


# -- slow clients ----------------------------------------------------------------------------------

def test_a_slow_client_and_an_idle_keepalive_connection_are_closed_at_the_request_deadline(daemon):
    """A whole request must arrive within REQUEST_DEADLINE (10 s): a client trickling one
    header byte a second (slowloris) gets 408 and is closed, and so (silently) is a
    keep-alive connection that sends no next request; others are answered meanwhile."""
    d = daemon().start()
    host, port = _host_port(d.url)
    slow = socket.create_connection((host, port), timeout=5)
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    slow_since = time.monotonic()
    idle = socket.create_connection((host, port), timeout=5)
    idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"200 OK" in idle.recv(65536)
    idle_since = time.monotonic()

    closed: dict[str, float] = {}
    slow_got = b""
    trickle = iter(b"X-Padding: " + b"a" * 100)
    while len(closed) < 2 and time.monotonic() - slow_since < 2 * REQUEST_DEADLINE:
        if "slow" not in closed:
            with contextlib.suppress(OSError):
                slow.send(bytes([next(trickle)]))
        readable, _, _ = select.select([s for s in (slow, idle) if s.fileno() >= 0], [], [], 1.0)
        for s in readable:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if s is slow:
                slow_got += chunk
            if not chunk:
                closed["slow" if s is slow else "idle"] = time.monotonic()
                s.close()
        assert httpx.get(d.url + "/healthz", timeout=5).status_code == 200
    assert set(closed) == {"slow", "idle"}, f"still open after {2 * REQUEST_DEADLINE}s: {closed}"
    assert REQUEST_DEADLINE - 1 <= closed["slow"] - slow_since <= REQUEST_DEADLINE + 3
    assert REQUEST_DEADLINE - 1 <= closed["idle"] - idle_since <= REQUEST_DEADLINE + 3
    assert status_of(slow_got) == 408
    assert d.terminate() == 0


# -- bodies and framing ----------------------------------------------------------------------------

def test_a_webhook_body_over_64_kib_gets_413(daemon):
    d = daemon(extra=WEBHOOK).start()
    url = d.url + "/ifax/webhook/" + SECRET
    assert httpx.post(url, content=b" " * MAX_BODY, timeout=5).status_code == 200
    assert httpx.post(url, content=b" " * (MAX_BODY + 1), timeout=5).status_code == 413
    assert httpx.post(url, content=b" " * 10_000_000, timeout=10).status_code == 413

    # Decided from Content-Length, before a byte of the body is read.
    head = f"POST /ifax/webhook/{SECRET} HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
    started = time.monotonic()
    assert status_of(exchange(d.url, head.encode(), timeout=5)) == 413
    assert time.monotonic() - started < 5

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer coding
        for _ in range(100):
            yield b" " * 10_000

    assert httpx.post(url, content=chunks(), timeout=10).status_code == 413
    assert d.terminate() == 0
    assert "Traceback" not in d.log.read_text()


@pytest.mark.parametrize("length", ["x", "-1", "1e3", "99999999999999999999999999999"])
def test_a_malformed_or_negative_content_length_gets_400_without_a_traceback(daemon, length):
    d = daemon(extra=WEBHOOK).start()
    request = f"POST /ifax/webhook/{SECRET} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n{{}}"
    response = exchange(d.url, request.encode(), timeout=5)  # old: a negative one read until hang-up
    assert status_of(response) == 400
    assert header(response, "Connection") == "close"
    assert httpx.get(d.url + "/healthz", timeout=5).status_code == 200
    assert d.terminate() == 0
    assert "Traceback" not in d.log.read_text()


def test_garbage_and_oversized_headers_are_refused_quietly(daemon):
    d = daemon().start()
    assert status_of(exchange(d.url, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n")) == 400
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20_000 + b"\r\n\r\n"
    assert status_of(exchange(d.url, big)) == 431
    with socket.create_connection(_host_port(d.url), timeout=5) as s:  # in pieces, as h11 sees them
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        for _ in range(10):
            s.sendall(b"X: " + b"a" * 2000 + b"\r\n")
        assert status_of(read_until_closed(s, 5)) == 431
    assert httpx.get(d.url + "/healthz", timeout=5).status_code == 200
    assert d.terminate() == 0
    assert "Traceback" not in d.log.read_text()


# -- routing -----------------------------------------------------------------------------------------

def test_only_the_three_endpoints_answer_and_wrong_methods_get_405_with_allow(daemon):
    d = daemon(extra=WEBHOOK).start()
    with httpx.Client(base_url=d.url, timeout=5) as c:
        for method, path in [("PUT", "/metrics"), ("POST", "/metrics"), ("DELETE", "/healthz"),
                             ("OPTIONS", "/healthz"), ("PATCH", "/metrics")]:
            r = c.request(method, path)
            assert (r.status_code, r.headers.get("allow")) == (405, "GET, HEAD"), (method, path)
        r = c.get(f"/ifax/webhook/{SECRET}")
        assert (r.status_code, r.headers.get("allow")) == (405, "POST")

        # A wrong secret is an unknown path, whatever the method: nothing tells it apart.
        for method in ("GET", "POST", "PUT"):
            r = c.request(method, "/ifax/webhook/wrong")
            assert r.status_code == 404 and "allow" not in r.headers
        for method, path in [("GET", "/"), ("PUT", "/nothing"), ("GET", "/metrics/x"),
                             ("GET", "/ifax/webhook"), ("POST", "/ifax/webhook/")]:
            assert c.request(method, path).status_code == 404, (method, path)
        assert c.get("/healthz?verbose=1").status_code == 200  # a query does not change the path
        assert c.post(f"/ifax/webhook/{SECRET}", json={"jobId": 424242}).status_code == 200  # SPEC 6.4

        get, head = c.get("/healthz"), c.head("/healthz")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == get.headers["content-length"]
        assert c.head("/metrics").status_code == 200
    assert d.terminate() == 0


def test_keep_alive_and_pipelined_requests_are_answered_in_order(daemon):
    d = daemon().start()
    host, port = _host_port(d.url)
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 2
                  + b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n"
                  + b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = read_until_closed(s, 10)
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", got)]
    assert statuses == [200, 200, 404, 200]
    assert b"fax_gateway_healthy 1.0" in got
    assert d.terminate() == 0


def test_a_failing_or_slow_handler_delays_only_its_own_request(caplog):
    """Routes are a table any listener can serve (a status page later): a handler that
    raises gets 500, logged once; one that takes its time keeps no other request waiting."""
    release = threading.Event()

    def boom(_request):
        raise RuntimeError("kaput")

    def slow(_request):
        release.wait(10)
        return Response(200, b"slow\n")

    routes = Routes([Route("/boom", {"GET": boom}), Route("/slow", {"GET": slow}),
                     Route("/fast", {"GET": lambda _r: Response(200, b"fast\n")})])
    web = WebServer("127.0.0.1", 0, routes, setting="http.status_listen")
    web.start()
    url = f"http://127.0.0.1:{web.port}"
    try:
        with caplog.at_level(logging.ERROR, logger="gateway.web"):
            assert [httpx.get(url + "/boom", timeout=5).status_code for _ in range(3)] == [500] * 3
        assert len([r for r in caplog.records if "kaput" in r.getMessage()]) == 1
        results: list[int] = []
        waiting = threading.Thread(target=lambda: results.append(httpx.get(url + "/slow", timeout=15)
                                                                 .status_code))
        waiting.start()
        time.sleep(0.2)
        assert httpx.get(url + "/fast", timeout=2).text == "fast\n"
        assert results == []
        release.set()
        waiting.join(10)
        assert results == [200]
    finally:
        release.set()
        web.stop()


def test_stop_is_prompt_and_closes_every_connection(service):
    svc = service()
    web = WebServer("127.0.0.1", 0, svc)
    web.start()
    held = [socket.create_connection(("127.0.0.1", web.port), timeout=5) for _ in range(50)]
    held[0].sendall(b"GET /healthz HT")
    wait_for(lambda: web.connections == 50, 5, "50 connections accepted")
    started = time.monotonic()
    web.stop()
    assert time.monotonic() - started < 1
    for s in held:
        assert read_until_closed(s, 2) == b""
        s.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", web.port), timeout=1).close()


# -- where it listens --------------------------------------------------------------------------------

def _ipv6_loopback_port() -> int:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            return s.getsockname()[1]
    except OSError as exc:
        pytest.skip(f"this machine has no IPv6 loopback ({exc.strerror})")


def test_the_daemon_serves_healthz_on_ipv6_loopback(daemon):
    port = _ipv6_loopback_port()
    d = daemon(extra={"http": {"listen": f"[::1]:{port}"}}).start()
    assert d.url == f"http://[::1]:{port}"
    r = httpx.get(d.url + "/healthz", timeout=5)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert d.terminate() == 0


def test_a_port_already_in_use_names_http_listen_and_the_address(make_config):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = make_config(extra={"http": {"listen": f"127.0.0.1:{port}"}})
        p = run_cli("run", "-c", str(cfg))
    assert p.returncode == 1
    assert "Traceback" not in p.stderr and "Errno" not in p.stderr
    [line] = [ln for ln in p.stderr.splitlines() if "http.listen" in ln]
    assert f"127.0.0.1:{port}" in line and "already listening" in line


def test_an_address_of_another_machine_names_http_listen(make_config):
    cfg = make_config(extra={"http": {"listen": f"192.0.2.1:{free_port()}"}})  # TEST-NET-1: never ours
    p = run_cli("run", "-c", str(cfg))
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    assert "http.listen: cannot listen on 192.0.2.1:" in p.stderr
