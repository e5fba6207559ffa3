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
import io
import re
import select
import socket
import ssl
import threading
import time
import types
import urllib.request
from collections.abc import Generator
from dataclasses import dataclass, field
from email.message import Message
from typing import Any, BinaryIO, Protocol, TypeVar, Union, overload
from urllib.parse import urlsplit

import httpx

SEND_PIECE = 256 << 10  # bytes of a request body sent under one timeout
KEEPALIVE_EXPIRY = 5.0  # seconds an idle connection is kept (httpx's default)
EARLY_ANSWER_WAIT = 2.0  # seconds to wait for an answer to a request that could not be written
RECEIVE = 64 << 10  # bytes asked of a socket at once by `Pending.read`
PENDING_ANSWER = 1 << 20  # bytes of answer `Pending.read` takes whole; a larger one is read blocking


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

    def start(self, path: str, content: bytes) -> Pending | None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Call:
    """One request among a caller's steps (`run`): what to post, and through what."""
    poster: Poster
    path: str
    content: bytes = field(repr=False)


# What a caller's steps hand out: a request to make, a request under way, or None ("what
# follows may block": whoever runs the steps without waiting gives them to a thread).
Step = Union[Call, "Pending", None]  # Pending is defined further down
T = TypeVar("T")
Steps = Generator[Step, Any, T]


def run(steps: Steps[T], step: Step | object = ...) -> T:
    """A caller's steps (a generator) run in this thread, each request waited for: the
    client's blocking calls, and a worker going on from `step`, where whoever ran the
    steps so far without waiting had to stop.  An answer is sent into the steps; a
    request that got none is thrown into them (`TransportError`)."""
    try:
        current = next(steps) if step is ... else step
        while True:
            try:
                answer = wait(current)  # type: ignore[arg-type]
            except TransportError as exc:
                current = steps.throw(exc)
            else:
                current = steps.send(answer)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


def wait(step: Step) -> Answer | None:
    """A step done blocking: the request made, or finished, and its answer read."""
    if isinstance(step, Pending):
        return step.complete()
    if isinstance(step, Call):
        return step.poster.post(step.path, step.content)
    return None


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
            first = self._first_piece(path, content)
        except http.client.HTTPException as exc:  # a path http.client refuses (InvalidURL): never sent
            raise SendFailed(_describe(exc)) from None
        return self._finish(self._take(), first, 0, memoryview(content)[SEND_PIECE:], b"")

    def start(self, path: str, content: bytes) -> Pending | None:
        """The request written without waiting, on an idle connection, for the caller to
        read its answer as it comes (`Pending`); None if that cannot be done (no idle
        connection, a body larger than one send): then `post` it.  Nothing of it has
        left when None comes back."""
        if len(content) > SEND_PIECE:
            return None
        try:
            data = self._first_piece(path, content)  # the whole request: the body fits one piece
        except http.client.HTTPException:
            return None  # `post` says why
        conn = self._take(connect=False)
        if conn is None:
            return None
        assert conn.sock is not None
        sock = conn.sock
        sock.setblocking(False)
        try:
            sent = sock.send(data)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            sent = 0  # a TLS write is retried with the same bytes: the blocking part does that
        except OSError:
            sent = 0  # the blocking part meets the error again and says what it was, as `post`
        return Pending(self, conn, data, sent)

    def _first_piece(self, path: str, content: bytes) -> bytes:
        """The headers with the first piece of the body, sent in one send: one packet and one
        system call instead of two (issue 12: each system call is a chance for the
        interpreter lock to change hands)."""
        return b"".join((self._head(path), b"Content-Length: %d\r\n\r\n" % len(content),
                         memoryview(content)[:SEND_PIECE]))

    def _finish(self, conn: http.client.HTTPConnection, first: bytes | memoryview, sent: int,
                rest: memoryview, received: bytes) -> Answer:
        """Send what is left of a request, then read its answer, blocking: `first` from
        byte `sent` on, then `rest` in pieces (the socket's timeout bounds each send, so a
        large fax on a slow uplink is not cut off by api.timeout as a whole), then the
        answer, of which `received` came already."""
        assert conn.sock is not None
        conn.sock.settimeout(self._timeout)
        resp: _Response | None = None
        try:
            try:
                if sent < len(first):
                    conn.send(memoryview(first)[sent:])
                for start in range(0, len(rest), SEND_PIECE):
                    conn.send(rest[start:start + SEND_PIECE])
            except (OSError, http.client.HTTPException) as exc:
                early = _early_answer(conn)
                if early is None:
                    raise SendFailed(_describe(exc)) from None
                conn.close()
                return early
            try:
                resp = _answer(conn, received)
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

    @overload
    def _take(self) -> http.client.HTTPConnection: ...

    @overload
    def _take(self, connect: bool) -> http.client.HTTPConnection | None: ...

    def _take(self, connect: bool = True) -> http.client.HTTPConnection | None:
        """The newest usable idle connection, else a new one (None without `connect`)."""
        while True:
            with self._lock:
                conn, since = self._idle.pop() if self._idle else (None, 0.0)
            if conn is None:
                return self._connect() if connect else None
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


def _answer(conn: http.client.HTTPConnection, received: bytes = b"") -> _Response:
    """The answer to the request just written on `conn`, its status and headers read (the
    request was written by `post`, not through http.client's own request methods, so its
    `getresponse` would not know of it), `received` being its first bytes, read already."""
    if conn.sock is None:
        raise http.client.NotConnected()
    resp = _Response(_Received(received, conn.sock) if received else conn.sock, method="POST")
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


class Pending:
    """A request `Connections.start` wrote without waiting, whose answer the caller reads
    as it comes (`read`, when the socket is readable; `expired` past `deadline`).

    Why: the sending loop makes most requests itself instead of handing each to a worker
    thread and taking the answer back from it, two hand-overs of the interpreter lock
    and a thread's work per request (issue 12).  Only the usual answer is read here: a
    final status with a body framed by Content-Length.  Anything else (an informational
    answer first, a chunked or close-delimited body, a connection that ends before the
    answer is whole, a request not written in full, a TLS step that must write) is
    finished by `complete`, blocking, with the standard library's parser reading what
    came already: the same answer, or the same error, as `post` would have given."""

    def __init__(self, pool: Connections, conn: http.client.HTTPConnection, data: bytes,
                 sent: int) -> None:
        assert conn.sock is not None
        self._pool, self._conn, self._sock = pool, conn, conn.sock
        self._data, self.sent = data, sent
        self._received = bytearray()
        self._length: int | None = None  # of the whole answer, once its head is read
        self._reusable = False  # answered whole on a connection that stays open (`release`)
        self.deadline = time.monotonic() + pool._timeout  # each read, as a socket's timeout

    @property
    def written(self) -> bool:
        """The whole request left: only its answer is awaited."""
        return self.sent >= len(self._data)

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self) -> Answer | TransportError | Pending | None:
        """What the socket holds now, read: the answer once whole, an error, None while
        it is not whole, or itself if `complete` must finish it.  A connection kept for
        reuse goes back to its pool at `release`, once the caller no longer watches it."""
        broken: OSError | None = None
        while True:
            try:
                chunk = self._sock.recv(RECEIVE)
            except (BlockingIOError, ssl.SSLWantReadError):
                break
            except ssl.SSLWantWriteError:
                return self
            except OSError as exc:
                if not self._received:
                    self._conn.close()
                    return AnswerBroken(_describe(exc))
                # A whole answer and then a reset (a server that closed without reading
                # the whole request, as one refusing it does) is still that answer, as
                # http.client, which stops at its end, reads it.
                broken = exc
                break
            if not chunk:
                return self  # the end of the connection: the parser says what came before it
            self._received += chunk
            self.deadline = time.monotonic() + self._pool._timeout
        if self._length is None:
            self._length = _framed(self._received)
            if self._length is None:
                return self if broken is not None or len(self._received) > PENDING_ANSWER else None
            if self._length < 0 or self._length > PENDING_ANSWER:
                return self
        if len(self._received) < self._length:
            return self if broken is not None else None
        try:
            resp = _Response(_Received(bytes(self._received[:self._length]), None), method="POST")
            resp.begin()
            body_length = self._length - (self._received.find(b"\r\n\r\n") + 4)
            if resp.chunked or resp.length != body_length:  # the parser framed it otherwise
                return self
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self._conn.close()
            return AnswerBroken(_describe(exc))
        # More than was asked for, or a reset: not reused.
        self._reusable = not (resp.will_close or len(self._received) > self._length or broken)
        if not self._reusable:
            self._conn.close()
        return Answer(resp.status, resp.headers, body)

    def release(self) -> None:
        """The caller no longer watches the connection: a reusable one goes back to its pool."""
        if self._reusable:
            self._reusable = False
            self._sock.settimeout(self._pool._timeout)
            self._pool._give_back(self._conn)

    def expired(self) -> AnswerTimeout:
        """No byte of the answer for the timeout: as `post`'s socket timeout would say."""
        self._conn.close()
        return AnswerTimeout("timed out")

    def complete(self) -> Answer:
        """Blocking, from where `read` stopped: the rest of the request, then the answer."""
        return self._pool._finish(self._conn, self._data, self.sent, memoryview(b""), bytes(self._received))

    def close(self) -> None:
        self._conn.close()


def _framed(received: bytearray) -> int | None:
    """The length of the answer that begins `received`, once its head is there: a final
    status whose body Content-Length frames.  -1 for any other answer (`complete` reads
    it), None while the head is not whole."""
    end = received.find(b"\r\n\r\n")
    if end < 0:
        return -1 if b"\n\n" in received or b"\n\r\n" in received else None
    head = bytes(received[:end + 2]).lower()
    # Every line ends in CRLF, so the parser's head ends where this one does.
    if head.count(b"\n") != head.count(b"\r\n") or b"\r\ntransfer-encoding:" in head:
        return -1
    version, _, rest = head.partition(b" ")
    code = rest[:3]
    if not version.startswith(b"http/") or not code.isdigit() or int(code) < 200 or int(code) in (204, 304):
        return -1
    lengths = _CONTENT_LENGTH.findall(head)
    if len(lengths) != 1:
        return -1
    return end + 4 + int(lengths[0])


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]{1,12})[ \t]*(?=\r\n)")


class _Received(io.RawIOBase):
    """The bytes of an answer read already, then the socket's (None: no more), as the
    file http.client's parser reads an answer from."""

    def __init__(self, received: bytes, sock: socket.socket | None) -> None:
        super().__init__()
        self._left = memoryview(received)
        self._sock = sock

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(self)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._left:
            n = min(len(buffer), len(self._left))
            buffer[:n] = self._left[:n]
            self._left = self._left[n:]
            return n
        return 0 if self._sock is None else self._sock.recv_into(buffer)


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

    def start(self, path: str, content: bytes) -> Pending | None:
        return None  # always `post`

    def close(self) -> None:
        self._http.close()


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]
