"""The daemon's HTTP endpoints (SPEC 7): /metrics, /healthz and the iFax webhook.

The port sits behind a reverse proxy that faces the internet, so the server is built for
clients that are slow, idle or hostile. One thread multiplexes every connection with
`selectors` (no thread per connection) and h11 parses HTTP/1.1:

- each request must arrive whole within REQUEST_DEADLINE, counted from when the
  connection opened or the previous response was sent: a slowloris client, and a
  keep-alive connection left idle, is closed then (408 if part of a request came);
- a body over MAX_BODY gets 413, decided from Content-Length before it is read;
- connections are capped below RLIMIT_NOFILE (`connection_cap`); at the cap the oldest
  idle one is closed to make room, so idle clients can neither keep /healthz from
  answering nor take the descriptors that intake needs to open files;
- handlers run on a small pool (HANDLER_THREADS), so a slow database read delays its own
  request only, and a client that reads slowly holds nothing but its socket.

Routing is a small table of `Route`s: a path and the methods it answers. A path no route
has gets 404; a known path asked with another method gets 405 and an Allow header. HEAD
is answered for every GET route (the GET's headers, no body). A second listener (say a
status page) is another `WebServer(host, port, routes, setting=..., max_connections=...)`
with its own table; `headers=` adds headers to every answer it gives, its own 404, 405
and 500 included (the status page's Content-Security-Policy).
"""

from __future__ import annotations

import collections
import errno
import hmac
import json
import logging
import resource
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import h11
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.errors import StartupError
from gateway.quietlog import Problems
from gateway.workers import Workers

log = logging.getLogger("gateway.web")

REQUEST_DEADLINE = 10.0
"""Seconds a connection has to deliver one whole request (line, headers and body), from
when it opened or the previous response was sent; also the keep-alive idle timeout."""
WRITE_DEADLINE = 10.0
"""Seconds a client has to read a response before its connection is closed."""
LINGER = 2.0
"""After an early answer (413, 400) the rest of the request is read and thrown away for at
most this long before closing, so that the client's TCP stack does not discard the answer
when a reset arrives (the "lingering close" of RFC 9112, section 9.6)."""
MAX_BODY = 64 * 1024
"""Bytes of request body accepted (the webhook's JSON is well under 1 KiB)."""
MAX_HEADERS = 16 * 1024
"""Bytes of request line and headers accepted; more gets 431."""
MAX_CONNECTIONS = 1024
FD_RESERVE = 256
"""Descriptors left for the rest of the daemon (database, folders, documents, API client)."""
HANDLER_THREADS = 4
LISTEN_BACKLOG = 1024

JSON = "application/json"


def connection_cap() -> int:
    """At most MAX_CONNECTIONS, and FD_RESERVE below the process's descriptor limit."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(16, min(MAX_CONNECTIONS, soft - FD_RESERVE))


# -- routing ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    method: str
    path: str
    """The path of the request target, as sent (not percent-decoded), without the query."""
    query: str
    headers: tuple[tuple[bytes, bytes], ...]
    """As h11 gives them: names lower-cased."""
    body: bytes


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


def json_response(status: int, obj: Any) -> Response:
    return Response(status, (json.dumps(obj) + "\n").encode(), JSON)


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    """A path and the handler of each method it answers (upper-case names).

    Without `tail` the path must match exactly. With it, `path` is a prefix and
    `tail(rest)` says whether the rest of the path belongs to this route: the webhook's
    secret, so that a wrong secret is an unknown path (404) whatever the method.
    """

    path: str
    methods: Mapping[str, Handler]
    tail: Callable[[str], bool] | None = None

    def matches(self, path: str) -> bool:
        if self.tail is None:
            return path == self.path
        return path.startswith(self.path) and self.tail(path[len(self.path):])

    def handler(self, method: str) -> Handler | None:
        if method in self.methods:
            return self.methods[method]
        return self.methods.get("GET") if method == "HEAD" else None

    def allow(self) -> str:
        methods = set(self.methods) | ({"HEAD"} if "GET" in self.methods else set())
        return ", ".join(sorted(methods))


class Routes:
    """The table one listener serves; the first route that matches a path answers it."""

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self._routes: list[Route] = []
        for route in routes:
            self.add(route)

    def add(self, route: Route) -> None:
        if not route.path.startswith("/") or any(m != m.upper() for m in route.methods):
            raise ValueError(f"a route needs a path starting with / and upper-case methods: {route}")
        self._routes.append(route)

    def find(self, path: str) -> Route | None:
        return next((r for r in self._routes if r.matches(path)), None)

    def __iter__(self) -> Iterator[Route]:
        return iter(self._routes)


def daemon_routes(service: Any) -> Routes:
    """SPEC 7 on `http.listen`: GET /metrics, GET /healthz, POST /ifax/webhook/<secret>."""

    def metrics(_request: Request) -> Response:
        ok, _ = service.health()  # fax_gateway_healthy says what /healthz would (SPEC 8)
        service.metrics.healthy.set(1 if ok else 0)
        return Response(200, service.metrics.render(), CONTENT_TYPE_LATEST)

    def healthz(_request: Request) -> Response:
        ok, body = service.health()
        return json_response(200 if ok else 503, body)

    def is_secret(rest: str) -> bool:
        webhook = service.config.webhook  # read at each request: a reload may change it
        if not webhook.enabled or webhook.secret is None:
            return False
        return hmac.compare_digest(rest.encode("latin-1"), webhook.secret.reveal().encode())

    def ifax_webhook(request: Request) -> Response:
        service.webhook(request.body)  # unknown jobs are ignored, and still get 200 (SPEC 6.4)
        return json_response(200, {"status": "ok"})

    return Routes([Route("/metrics", {"GET": metrics}),
                   Route("/healthz", {"GET": healthz}),
                   Route("/ifax/webhook/", {"POST": ifax_webhook}, tail=is_secret)])


# -- the server ------------------------------------------------------------------------------

READING, HANDLING, WRITING, LINGERING = "reading", "handling", "writing", "lingering"
_DEADLINES = {READING: REQUEST_DEADLINE, WRITING: WRITE_DEADLINE, LINGERING: LINGER}
_LISTENER, _WAKE = "listener", "wake"


class _Conn:
    __slots__ = ("sock", "h11", "state", "since", "events", "closed", "eof", "request", "body",
                 "out", "close_after", "head", "route")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADERS)
        self.state = READING
        self.since = now
        self.events = 0  # what the selector watches for
        self.closed = False
        self.eof = False
        self.request: h11.Request | None = None
        self.body = bytearray()
        self.out = bytearray()
        self.close_after = False
        self.head = False
        self.route = "-"  # for the debug log: never the raw path, which may hold the secret

    def started(self) -> bool:
        """Whether part of a request has come (else it is an idle connection)."""
        return self.h11.their_state is not h11.IDLE or bool(self.h11.trailing_data[0])


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_BIND_REASONS = {
    errno.EADDRINUSE: "another program is already listening there (stop it, or choose another port)",
    errno.EADDRNOTAVAIL: "that is not an address of this machine",
    errno.EACCES: "a port below 1024 needs privileges (choose a port above 1023)",
    errno.EAFNOSUPPORT: "this machine has no IPv6",
}


def _listen(host: str, port: int, setting: str) -> socket.socket:
    """A listening socket: IPv6 when the host has a ':' (`[::1]:9468` in the configuration)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = None
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart must not wait on TIME_WAIT
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
        return sock
    except OSError as exc:
        if sock is not None:
            sock.close()
        if isinstance(exc, socket.gaierror):
            reason = "the host name cannot be resolved"
        else:
            reason = _BIND_REASONS.get(exc.errno or 0) or exc.strerror or str(exc)
        raise StartupError(f"{setting}: cannot listen on {_address(host, port)}: {reason}") from None


class WebServer:
    """One listening socket and its route table, served by one thread (see the module's doc).

    `routes` is a `Routes` table (or a list or tuple of `Route`); given the daemon's
    `Service` instead, as service.py does, it serves `daemon_routes(service)`. `setting`
    names the configuration key in the one-sentence error (a StartupError) that a port
    that cannot be bound gives.  `max_connections` caps this listener's connections (two
    listeners split `connection_cap()` between them); `headers` go with every answer,
    except where the answer sets a header of the same name itself.
    """

    def __init__(self, host: str, port: int, routes: Routes | list[Route] | tuple[Route, ...] | Any, *,
                 setting: str = "http.listen", max_connections: int | None = None,
                 headers: Iterable[tuple[str, str]] = ()) -> None:
        if not isinstance(routes, (Routes, list, tuple)):
            routes = daemon_routes(routes)
        self.routes = routes if isinstance(routes, Routes) else Routes(routes)
        self.max_connections = max_connections or connection_cap()
        self.headers = tuple(headers)
        self._listener = _listen(host, port, setting)
        self.port = self._listener.getsockname()[1]
        self._problems = Problems(log)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, _LISTENER)
        self._accepting = True
        self._resume_accept_at = 0.0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self._conns: set[_Conn] = set()
        # Connections with a deadline, per state, oldest first: the deadline of a state is
        # fixed, so insertion order is deadline order and expiry only looks at the front.
        self._timed: dict[str, collections.OrderedDict[_Conn, None]] = {
            s: collections.OrderedDict() for s in _DEADLINES}
        self._handled: collections.deque[tuple[_Conn, Response]] = collections.deque()
        # Kept-alive connections whose next request may already be buffered: parsed by the
        # loop, not from inside the answer to the previous one (pipelining must not recurse).
        self._ready: collections.deque[_Conn] = collections.deque()
        self._pool = Workers(HANDLER_THREADS, "http-handler")
        self._stopping = False
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)
        log.debug("http: listening on %s, at most %d connections", _address(host, self.port),
                  self.max_connections)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Closes the listener and every connection; answers under way are dropped."""
        self._stopping = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join(2)
        if not self._thread.is_alive():
            self._close_all()
        self._pool.close()

    @property
    def connections(self) -> int:
        return len(self._conns)

    # -- the loop ------------------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stopping:
            try:
                self._turn()
            except Exception as exc:  # the loop never dies: one turn failed, the next one runs
                self._problems.problem("loop", "http: the server loop failed (%s: %s); it goes on",
                                       type(exc).__name__, exc, exc=exc)
                time.sleep(0.1)
        self._close_all()

    def _turn(self) -> None:
        for key, mask in self._sel.select(self._timeout()):
            if key.data is _LISTENER:
                self._accept()
            elif key.data is _WAKE:
                self._drain_wake()
            else:
                self._guarded(key.data, self._on_event, mask)
        while self._handled or self._ready:
            while self._handled:
                conn, response = self._handled.popleft()
                if not conn.closed:
                    self._guarded(conn, self._respond, response)
            while self._ready:
                conn = self._ready.popleft()
                if not conn.closed and conn.state == READING:
                    self._guarded(conn, lambda c, _: self._parse(c), None)
        self._expire()
        if not self._accepting and time.monotonic() >= self._resume_accept_at:
            self._accepting = True
            self._sel.register(self._listener, selectors.EVENT_READ, _LISTENER)

    def _timeout(self) -> float:
        now = time.monotonic()
        due = now + 10.0  # nothing timed: idle (stop and new work wake the selector)
        for state, conns in self._timed.items():
            if conns:
                due = min(due, next(iter(conns)).since + _DEADLINES[state])
        if not self._accepting:
            due = min(due, self._resume_accept_at)
        return max(0.0, due - now)

    def _guarded(self, conn: _Conn, action: Callable[..., None], arg: Any) -> None:
        """One connection's failure closes that connection, logged once (quietlog)."""
        try:
            action(conn, arg)
        except Exception as exc:
            self._problems.problem(("connection", type(exc).__name__),
                                   "http: a connection failed (%s: %s) and was closed",
                                   type(exc).__name__, exc, exc=exc, level=logging.WARNING)
            self._close(conn)

    def _expire(self) -> None:
        now = time.monotonic()
        for state, conns in self._timed.items():
            while conns:
                conn = next(iter(conns))
                if conn.since + _DEADLINES[state] > now:
                    break
                if state == READING and conn.started():
                    self._send_quietly(conn, _simple(408, "the request did not arrive in time"))
                self._close(conn)

    # -- connections ---------------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(64):  # then let the other sockets have a turn
            try:
                sock, _peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    if self._evict():
                        continue
                    # Nothing to close: leave new connections in the backlog for a moment
                    # instead of spinning on a listener that stays readable.
                    self._problems.problem("accept", "http: cannot accept connections (%s); "
                                           "trying again shortly", exc.strerror, level=logging.WARNING)
                    self._sel.unregister(self._listener)
                    self._accepting = False
                    self._resume_accept_at = time.monotonic() + 0.5
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue
                raise
            if len(self._conns) >= self.max_connections and not self._evict():
                sock.close()  # every connection is being answered: no room for this one
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(sock, time.monotonic())
            self._conns.add(conn)
            self._enter(conn, READING)

    def _evict(self) -> bool:
        """Closes the connection that matters least: one lingering, else the oldest idle one."""
        for state in (LINGERING, READING):
            if self._timed[state]:
                self._close(next(iter(self._timed[state])))
                return True
        return False

    def _enter(self, conn: _Conn, state: str) -> None:
        """Moves a connection to `state`, restarting its deadline and what the selector watches."""
        self._timed.get(conn.state, {}).pop(conn, None)
        conn.state = state
        conn.since = time.monotonic()
        if state in self._timed:
            self._timed[state][conn] = None
        events = {READING: selectors.EVENT_READ, LINGERING: selectors.EVENT_READ,
                  WRITING: selectors.EVENT_WRITE}.get(state, 0)
        if events == conn.events:
            return
        if not events:
            self._sel.unregister(conn.sock)
        elif conn.events:
            self._sel.modify(conn.sock, events, conn)
        else:
            self._sel.register(conn.sock, events, conn)
        conn.events = events

    def _close(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._timed.get(conn.state, {}).pop(conn, None)
        if conn.events:
            try:
                self._sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        conn.sock.close()
        self._conns.discard(conn)

    def _close_all(self) -> None:
        if self._closed:
            return
        self._closed = True
        for conn in list(self._conns):
            self._close(conn)
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()
        self._sel.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # full (a wake is pending anyway) or closed (stopped)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    # -- reading a request ---------------------------------------------------------------

    def _on_event(self, conn: _Conn, _mask: int) -> None:
        if conn.state == WRITING:
            self._flush(conn)
            return
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if conn.state == LINGERING:  # throw it away, until the client closes or LINGER passes
            if not data:
                self._close(conn)
            return
        if not data:
            conn.eof = True
        conn.h11.receive_data(data)
        self._parse(conn)

    def _parse(self, conn: _Conn) -> None:
        while conn.state == READING:
            try:
                event = conn.h11.next_event()
            except h11.RemoteProtocolError as exc:
                self._fail(conn, exc.error_status_hint, f"malformed request: {exc}")
                return
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Request):
                conn.request = event
                conn.head = event.method == b"HEAD"
                # h11 bounds only what is still incomplete; one recv may bring more at once.
                size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
                if size > MAX_HEADERS:
                    self._fail(conn, 431, f"the request line and headers are over {MAX_HEADERS} bytes")
                    return
                length = dict(event.headers).get(b"content-length")
                if length is not None and int(length) > MAX_BODY:  # h11 checked it is digits
                    self._fail(conn, 413, f"the body is over {MAX_BODY} bytes")
                    return
                if conn.h11.client_is_waiting_for_100_continue:
                    go_on = conn.h11.send(h11.InformationalResponse(status_code=100, headers=[]))
                    self._send_quietly(conn, go_on)
            elif isinstance(event, h11.Data):
                conn.body += event.data
                if len(conn.body) > MAX_BODY:  # chunked, with no length said beforehand
                    self._fail(conn, 413, f"the body is over {MAX_BODY} bytes")
                    return
            elif isinstance(event, h11.EndOfMessage):
                self._dispatch(conn)
                return
            elif isinstance(event, h11.ConnectionClosed):
                self._close(conn)
                return
            else:  # PAUSED cannot happen while reading; anything else is not ours to handle
                self._close(conn)
                return

    def _fail(self, conn: _Conn, status: int, message: str) -> None:
        """An answer before the request was read whole; the connection closes after it."""
        conn.close_after = True
        if conn.eof:
            self._close(conn)
            return
        self._respond(conn, json_response(status, {"error": message}))

    def _dispatch(self, conn: _Conn) -> None:
        assert conn.request is not None
        target = conn.request.target.decode("latin-1")
        path, _, query = target.partition("?")
        method = conn.request.method.decode("latin-1")
        route = self.routes.find(path)
        if route is None:
            self._respond(conn, json_response(404, {"error": "not found"}))
            return
        conn.route = route.path
        handler = route.handler(method)
        if handler is None:
            response = json_response(405, {"error": f"{method} is not allowed here"})
            self._respond(conn, Response(405, response.body, JSON, (("Allow", route.allow()),)))
            return
        request = Request(method, path, query, tuple(conn.request.headers), bytes(conn.body))
        self._enter(conn, HANDLING)
        self._pool.submit(self._handle, conn, handler, request, route.path)

    def _handle(self, conn: _Conn, handler: Handler, request: Request, route: str) -> None:
        """On a pool thread: the answer goes back to the loop, which writes it."""
        try:
            response = handler(request)
            self._problems.clear(("handler", route), "http: %s answers again", route)
        except Exception as exc:
            self._problems.problem(("handler", route), "http: %s %s failed (%s: %s)", request.method,
                                   route, type(exc).__name__, exc, exc=exc)
            response = json_response(500, {"error": "internal error"})
        self._handled.append((conn, response))
        self._wake()

    # -- writing the answer --------------------------------------------------------------

    def _respond(self, conn: _Conn, response: Response) -> None:
        headers = [("Content-Type", response.content_type), ("Content-Length", str(len(response.body))),
                   *response.headers]
        if self.headers:
            own = {name.lower() for name, _ in response.headers}
            headers += [(name, value) for name, value in self.headers if name.lower() not in own]
        if conn.close_after or self._stopping:
            conn.close_after = True
            headers.append(("Connection", "close"))
        out = conn.h11.send(h11.Response(status_code=response.status, headers=headers,
                                         reason=_reason(response.status)))
        if response.body and not conn.head:
            out += conn.h11.send(h11.Data(data=response.body))
        out += conn.h11.send(h11.EndOfMessage())
        if log.isEnabledFor(logging.DEBUG):
            method = conn.request.method.decode("latin-1") if conn.request else "-"
            log.debug("http: %s %s -> %d", method, conn.route, response.status)
        conn.out += out
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(conn)
            return
        del conn.out[:sent]
        if conn.out:
            if conn.state != WRITING:
                self._enter(conn, WRITING)
            return
        self._answered(conn)

    def _answered(self, conn: _Conn) -> None:
        h = conn.h11
        if not conn.close_after and h.our_state is h11.DONE and h.their_state is h11.DONE:
            h.start_next_cycle()  # keep-alive: the next request may already be buffered
            conn.request, conn.body, conn.head, conn.route = None, bytearray(), False, "-"
            self._enter(conn, READING)
            self._ready.append(conn)
        elif h.their_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED) or conn.eof:
            self._close(conn)
        else:  # the client may still be sending: read it away for a while, then close
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._close(conn)
                return
            self._enter(conn, LINGERING)

    def _send_quietly(self, conn: _Conn, data: bytes) -> None:
        """A few bytes that fit in any socket buffer (100 Continue, a 408 before closing)."""
        try:
            conn.sock.send(data)
        except OSError:
            pass


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _simple(status: int, message: str) -> bytes:
    body = (json.dumps({"error": message}) + "\n").encode()
    return (f"HTTP/1.1 {status} {_reason(status).decode()}\r\nContent-Type: {JSON}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


__all__ = ["MAX_BODY", "REQUEST_DEADLINE", "Request", "Response", "Route", "Routes", "WebServer",
           "connection_cap", "daemon_routes", "json_response"]
