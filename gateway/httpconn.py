"""Keep-alive HTTP/1.1 connections to the iFax API, on the standard library's `http.client`.

Why not httpx for every request: on this kind of machine a request through `httpx.Client`
costs 0.56 ms of CPU and one through `http.client` 0.16 ms (`benchmarks/lean.py`, "[bare]"),
and with two requests per fax that difference was a fifth of the gateway's CPU per document
(issue 12).  What httpx did for us is kept:

- TLS is httpx's own context (`httpx.create_ssl_context`: the same CA bundle, the same
  `SSL_CERT_FILE`/`SSL_CERT_DIR` handling), with the host name checked.
- A pooled connection is looked at before it is reused: if the server has closed it (or sent
  something unasked), or it has been idle longer than httpx kept one (5 s: a NAT or load
  balancer may have forgotten it without a word), it is dropped and a new one made, so a
  stale keep-alive connection never turns a request that certainly never left into one
  that may have (SPEC 6.3).
- An answer the server sent before it read the whole request (a 413, a 401) is read when
  the rest cannot be written, as httpx did, instead of calling the request unsent.
- Informational answers (102, 103) are skipped like 100 Continue; `Accept-Encoding:
  identity` keeps answers uncompressed.
- Every failure says at which step it happened, which is what tells `Transient` (it never
  reached iFax) from `Uncertain` (it may have): `ConnectFailed`, `SendFailed`,
  `AnswerTimeout`, `AnswerBroken`.
- A proxy from the environment (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, minus
  `NO_PROXY`) is honoured by sending through httpx (`ProxiedPoster`), as before.
"""

from __future__ import annotations

import email.parser
import http.client
import re
import select
import socket
import ssl
import threading
import time
import types
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import BinaryIO, Protocol
from urllib.parse import urlsplit

import httpx

SEND_PIECE = 256 << 10  # bytes of a request body sent under one timeout
KEEPALIVE_EXPIRY = 5.0  # seconds an idle connection is kept (httpx's default)
EARLY_ANSWER_WAIT = 2.0  # seconds to wait for an answer to a request that could not be written


class TransportError(Exception):
    """A request that got no HTTP answer; the subclass says how far it went."""


class ConnectFailed(TransportError):
    """No connection (refused, unreachable, TLS refused, connect timeout): nothing was sent."""


class SendFailed(TransportError):
    """The connection broke or stalled while the request was written: it was not sent in full."""


class AnswerTimeout(TransportError):
    """Sent in full, and no answer came within the timeout."""


class AnswerBroken(TransportError):
    """Sent in full, and the connection broke or the answer was not HTTP."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Message | httpx.Headers
    body: bytes


class Poster(Protocol):
    def post(self, path: str, content: bytes) -> Answer: ...

    def close(self) -> None: ...


def proxy_for(base_url: str) -> str | None:
    """The proxy the environment names for `base_url`, as httpx would choose it, or None."""
    parts = urlsplit(base_url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    return proxy


def poster(base_url: str, headers: dict[str, str], *, timeout: float, connect_timeout: float,
           size: int) -> Poster:
    """Direct connections, unless the environment names a proxy for this URL."""
    if proxy_for(base_url):
        return ProxiedPoster(base_url, headers, timeout=timeout, connect_timeout=connect_timeout,
                             size=size)
    return Connections(base_url, headers, timeout=timeout, connect_timeout=connect_timeout, size=size)


class Connections:
    """Up to `size` idle connections to one origin, reused newest first; thread-safe.  A
    caller beyond `size` at once gets a connection of its own, closed after its request (the
    dispatcher never asks for more than `api.max_in_flight` at once)."""

    def __init__(self, base_url: str, headers: dict[str, str], *, timeout: float,
                 connect_timeout: float, size: int) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("api.base_url must be an http:// or https:// URL with a host")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._headers = dict(headers)
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._size = max(1, size)
        self._idle: list[tuple[http.client.HTTPConnection, float]] = []  # with when it went idle
        self._heads: dict[str, bytes] = {}  # path -> request line and headers (`_head`)
        self._lock = threading.Lock()
        self._closed = False
        self._tls: ssl.SSLContext | None = httpx.create_ssl_context() if self._https else None

    def post(self, path: str, content: bytes) -> Answer:
        try:
            head = self._head(path)
        except http.client.HTTPException as exc:  # a path http.client refuses (InvalidURL): never sent
            raise SendFailed(_describe(exc)) from None
        conn = self._take()
        resp: _Response | None = None
        try:
            try:
                # The headers leave with the first piece of the body, in one send: one packet
                # and one system call instead of two (issue 12: each system call of a worker
                # is a chance for the interpreter lock to change hands).  The rest goes in
                # pieces: the socket's timeout bounds each send, so a large fax on a slow
                # uplink is not cut off by api.timeout as a whole (one sendall would be).
                view = memoryview(content)
                conn.send(b"".join((head, b"Content-Length: %d\r\n\r\n" % len(content), view[:SEND_PIECE])))
                for start in range(SEND_PIECE, len(view), SEND_PIECE):
                    conn.send(view[start:start + SEND_PIECE])
            except (OSError, http.client.HTTPException) as exc:
                early = _early_answer(conn)
                if early is None:
                    raise SendFailed(_describe(exc)) from None
                conn.close()
                return early
            try:
                resp = _answer(conn)
                body = resp.read()
            except TimeoutError as exc:
                raise AnswerTimeout(_describe(exc)) from None
            except (OSError, http.client.HTTPException) as exc:
                raise AnswerBroken(_describe(exc)) from None
        except BaseException:
            if resp is not None:
                resp.close()
            conn.close()
            raise
        if resp.will_close:
            conn.close()
        else:
            self._give_back(conn)
        return Answer(resp.status, resp.headers, body)

    def _head(self, path: str) -> bytes:
        """The request line and headers for `path`, up to Content-Length: written by
        http.client itself once per path (its Host header, its checks of every name and
        value) and reused, since only the length changes (issue 12: building them for
        each request was a tenth of a worker's CPU)."""
        head = self._heads.get(path)
        if head is None:
            writer = _HeadWriter(self._host, self._port)
            if self._https:
                writer.default_port = http.client.HTTPS_PORT
            writer.putrequest("POST", self._prefix + path, skip_accept_encoding=True)
            for name, value in self._headers.items():
                writer.putheader(name, value)
            writer.putheader("Accept-Encoding", "identity")
            writer.endheaders()
            head = self._heads[path] = writer.written[:-2]  # without the blank line that ends them
        return head

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()

    def _take(self) -> http.client.HTTPConnection:
        while True:
            with self._lock:
                conn, since = self._idle.pop() if self._idle else (None, 0.0)
            if conn is None:
                return self._connect()
            if time.monotonic() - since <= KEEPALIVE_EXPIRY and _usable(conn):
                return conn
            conn.close()

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._size:
                self._idle.append((conn, time.monotonic()))
                return
        conn.close()

    def _connect(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._connect_timeout,
                                               context=self._tls)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._connect_timeout)
        try:
            conn.connect()
        except (OSError, http.client.HTTPException) as exc:  # ssl.SSLError is an OSError
            conn.close()
            raise ConnectFailed(_describe(exc)) from None
        assert conn.sock is not None
        conn.sock.settimeout(self._timeout)
        # A body over SEND_PIECE goes in several sends: without this its last segment could
        # wait for the server's delayed ACK of the one before (Nagle).
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Never reconnect silently inside a request: a new connection is made, and its
        # failure classified, in _connect alone.
        conn.auto_open = 0
        return conn


class _HeadWriter(http.client.HTTPConnection):
    """Keeps what http.client would send, instead of sending it (`Connections._head`)."""

    written = b""

    def send(self, data: bytes) -> None:  # type: ignore[override]
        self.written += data


def _parse_headers(fp: BinaryIO) -> http.client.HTTPMessage:
    """`http.client.parse_headers` without the email package for the usual header block
    (every line `Name: value`, the name printable ASCII without a colon): the same names
    and values, in the same order, in the same class.  Anything else (a folded line, a
    line without a name, a bare CR, which the email package takes for a line's end) goes
    to the email package, as before.  Reading an answer's headers through it was a fifth
    of a worker's CPU per request (issue 12)."""
    lines = http.client._read_headers(fp)  # type: ignore[attr-defined]  # its limits on lines and size
    message = http.client.HTTPMessage()
    for line in lines[:-1]:  # the last is the blank line that ends them
        text = line.decode("iso-8859-1")
        text = text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
        name, colon, value = text.partition(":")
        if not colon or "\r" in value or not _HEADER_NAME.fullmatch(name):
            return email.parser.Parser(_class=http.client.HTTPMessage).parsestr(  # type: ignore[return-value]
                b"".join(lines).decode("iso-8859-1"))
        message.set_raw(name, value.lstrip(" \t"))
    return message


_HEADER_NAME = re.compile(r"[\041-\071\073-\176]+")  # the email package's header names


class _Response(http.client.HTTPResponse):
    """Every informational answer (102 Processing, 103 Early Hints) is skipped as http.client
    skips 100 Continue, as httpx did: the final answer follows it.  101 is not expected.
    `begin` is the standard library's own code, reading the headers with `_parse_headers`."""

    begin = types.FunctionType(http.client.HTTPResponse.begin.__code__,
                               {**vars(http.client), "parse_headers": _parse_headers}, "begin")

    def _read_status(self) -> tuple[str, int, str]:
        version, status, reason = super()._read_status()
        if 100 < status < 200 and status != 101:
            return version, http.client.CONTINUE, reason
        return version, status, reason


def _answer(conn: http.client.HTTPConnection) -> _Response:
    """The answer to the request just written on `conn`, its status and headers read (the
    request was written by `post`, not through http.client's own request methods, so its
    `getresponse` would not know of it)."""
    if conn.sock is None:
        raise http.client.NotConnected()
    resp = _Response(conn.sock, method="POST")
    try:
        resp.begin()
    except BaseException:
        resp.close()  # as getresponse does: the socket is not held open by a half-read answer
        raise
    return resp


def _early_answer(conn: http.client.HTTPConnection) -> Answer | None:
    """The request could not be written in full: a server that refused it after its headers
    (413, 401) may have answered before closing.  A request it did not read whole was not
    acted on, so only a refusal (4xx) read back is used; anything else stays "not sent"."""
    try:
        if conn.sock is None:
            return None
        conn.sock.settimeout(EARLY_ANSWER_WAIT)
        resp = _answer(conn)
        body = resp.read()
    except (OSError, http.client.HTTPException):
        return None
    return Answer(resp.status, resp.headers, body) if 400 <= resp.status < 500 else None


def _usable(conn: http.client.HTTPConnection) -> bool:
    """An idle connection is usable while nothing is waiting to be read on it: a readable
    idle socket means the server closed it (or broke the protocol)."""
    sock = conn.sock
    if sock is None:
        return False
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return False
    try:
        poller = select.poll()  # not select(): a descriptor may be above 1023
        poller.register(sock, select.POLLIN)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False


class ProxiedPoster:
    """Through the proxy the environment names, by httpx (which reads it)."""

    def __init__(self, base_url: str, headers: dict[str, str], *, timeout: float,
                 connect_timeout: float, size: int) -> None:
        self._base = base_url.rstrip("/")
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=connect_timeout),
                                  limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                                  headers=headers)

    def post(self, path: str, content: bytes) -> Answer:
        try:
            resp = self._http.post(self._base + path, content=content)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError) as exc:
            raise ConnectFailed(_describe(exc)) from None
        except (httpx.WriteError, httpx.WriteTimeout) as exc:
            raise SendFailed(_describe(exc)) from None
        except httpx.TimeoutException as exc:
            raise AnswerTimeout(_describe(exc)) from None
        except httpx.HTTPError as exc:
            raise AnswerBroken(_describe(exc)) from None
        return Answer(resp.status_code, resp.headers, resp.content)

    def close(self) -> None:
        self._http.close()


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]
