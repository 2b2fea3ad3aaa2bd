"""gunicorn's threaded worker, made safe against slow and idle clients, with the one error body.

gunicorn's gthread worker gives a connection a thread as soon as it is accepted, and the thread
then reads the request at the client's pace: 32 clients that send half a header and stop take
every thread. :class:`GuardedWorker` reads each request whole in the worker's event loop first
(non-blocking, into a buffer) and gives it to a thread only once its headers and body are all
there, so a thread only ever runs a complete request (or an open WebSocket, which ``edge.ws``
limits; the sync server's notify sockets hold one each). ``hwr-edge`` and ``hwr-sync-server``
both run it; the limits come from the app's ``HWR_CONFIG``. A client is cut off when:

* it sends nothing for ``request_timeout`` seconds after connecting (``keepalive`` between
  requests), or does not finish a request within ``request_timeout`` of its first byte (408);
* its request line passes 4 KiB or its headers 64 KiB before they end (414, 431), or its body
  passes ``max_body_bytes`` (413: a Content-Length over it, or a chunked body that grows past it;
  the app's ``HWR_STREAMED_PATHS``, an admin's model upload, are read and bounded by the app);
* its address already holds ``connections_per_client`` connections (503 ``busy``);
* all connections together buffer more than BUFFER_BUDGET bytes (503 ``busy``).

Every answer gunicorn itself would give as an HTML page (400 for a bad request line or header,
414, 431) is the wire's JSON error body instead (:meth:`GuardedWorker.handle_error`). Closing a
connection never waits in the event loop: a half-closed socket is drained from the loop for at
most LINGER_S seconds, so the client reads the last answer instead of a reset.
"""

from __future__ import annotations

import errno
import http
import json
import selectors
import socket
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

from gunicorn import http as ghttp
from gunicorn import util
from gunicorn.http import errors as herr
from gunicorn.workers.gthread import TConn, ThreadWorker

from hwrcore import protocol

RECV_BYTES = 64 << 10
LINE_LIMIT = 4096  # gunicorn's limit_request_line (4094) plus its CRLF
HEADER_LIMIT = 64 << 10
BODY_SLACK = 64 << 10  # chunk framing on top of max_body_bytes
BUFFER_BUDGET = 32 << 20  # bytes buffered for all unfinished requests together
LINGER_S = 2.0
LINGER_DRAIN = 64 << 10

Refusal = tuple[int, str, str]


def error_bytes(status: int, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 response carrying the one error body; the connection closes after it."""
    body = json.dumps(protocol.error_body(code, message)).encode()
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def request_state(
    buf: bytes | bytearray, max_body: int, streamed: frozenset[str] = frozenset()
) -> bool | Refusal:
    """Whether ``buf`` holds a whole request (True), needs more (False), or must be refused.

    A request to one of the ``streamed`` paths goes to a thread once its headers are in: its
    body (an admin's model upload, past ``max_body``) is read there, and the app decides on its
    size, after it has checked who is asking.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        end = buf.find(b"\n\n")  # bare LF: the parser decides what it makes of it
        if end >= 0:
            return True
        if b"\n" not in buf[:LINE_LIMIT] and len(buf) > LINE_LIMIT:
            return (414, "uri_too_long", "the request line is longer than 4094 bytes")
        if len(buf) > HEADER_LIMIT:
            return (431, "headers_too_large", "the request headers are larger than 64 KiB")
        return False
    if end > HEADER_LIMIT:
        return (431, "headers_too_large", "the request headers are larger than 64 KiB")
    head = bytes(buf[:end]).split(b"\n")
    if streamed:
        target = head[0].split(b" ")[1] if head[0].count(b" ") >= 2 else b""
        if target.split(b"?", 1)[0].decode("latin-1") in streamed:
            return True
    length: int | None = None
    chunked = False
    for line in head[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return True  # the parser answers 400
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"expect":
            return True  # the client waits for "100 Continue", which the thread sends
    have = len(buf) - (end + 4)
    if chunked:
        if have > max_body + BODY_SLACK:
            return (413, "too_large", f"the request body is larger than {max_body} bytes")
        return have >= 5 and buf.endswith(b"0\r\n\r\n")
    if length is not None:
        if length > max_body:
            return (413, "too_large", f"the request body is larger than {max_body} bytes")
        return have >= length
    return True


def client_error(exc: BaseException) -> Refusal:
    """The status, code and message of a request gunicorn could not parse."""
    if isinstance(exc, (herr.InvalidResponseHeader, herr.InvalidResponseHeaderName)):
        return (500, "internal", "the server failed to answer; it was logged")
    if isinstance(exc, herr.LimitRequestLine):
        return (414, "uri_too_long", "the request line is longer than 4094 bytes")
    if isinstance(exc, herr.LimitRequestHeaders):
        return (431, "headers_too_large", "the request has too many or too large headers")
    if isinstance(
        exc, (herr.InvalidRequestLine, herr.InvalidRequestMethod, herr.InvalidHTTPVersion)
    ):
        return (400, "bad_request", "the request line is not valid HTTP/1.1")
    if isinstance(exc, (herr.InvalidHeader, herr.InvalidHeaderName, herr.ObsoleteFolding)):
        return (400, "bad_request", "a request header is not valid")
    if isinstance(exc, herr.UnsupportedTransferCoding):
        return (400, "bad_request", "only the chunked transfer coding is accepted")
    if isinstance(
        exc, (herr.InvalidChunkSize, herr.ChunkMissingTerminator, herr.InvalidChunkExtension)
    ):
        return (400, "bad_request", "the chunked body is not valid")
    if isinstance(exc, herr.ConfigurationProblem):
        return (500, "internal", "the server failed to answer; it was logged")
    if isinstance(exc, herr.ParseException):
        return (400, "bad_request", "the request is not valid HTTP/1.1")
    return (500, "internal", "the server failed to answer; it was logged")


class Poller(selectors.DefaultSelector):
    """The worker's selector, which survives a socket closed behind its back.

    A socket closed by another thread while registered leaves its entry behind (the kernel
    forgets it, the selector does not), and the next connection given the same descriptor could
    not be registered: the worker would end, and every open socket with it. The stale entry of
    a closed socket is dropped instead, and ``warn`` is told.
    """

    def __init__(self, warn: Callable[..., None]):
        super().__init__()
        self._warn = warn

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        try:
            return super().register(fileobj, events, data)
        except KeyError:
            fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
            stale = self.get_map().get(fd)
            if stale is None or stale.fileobj is fileobj or _is_open(stale.fileobj):
                raise
            self._warn("dropped the stale event-loop entry of a closed socket (descriptor %d)", fd)
            super().unregister(fd)
            return super().register(fileobj, events, data)


def _is_open(fileobj: Any) -> bool:
    return isinstance(fileobj, int) or fileobj.fileno() >= 0


class GuardedConn(TConn):
    """A connection with the bytes read for its next request and when it must be complete."""

    def __init__(
        self,
        cfg: Any,
        sock: socket.socket,
        client: Any,
        server: Any,
        on_close: Callable[[GuardedConn], None],
        linger: Callable[[GuardedConn], None],
    ):
        super().__init__(cfg, sock, client, server)
        self.buf = bytearray()
        self.deadline = 0.0
        self.peer = client[0] if isinstance(client, tuple) else str(client)
        self._on_close: Callable[[GuardedConn], None] | None = on_close
        self._linger = linger

    def init(self) -> None:
        """Make the HTTP/1.1 parser (no TLS, no HTTP/2: a tunnel or proxy in front ends TLS)."""
        if self.initialized:
            return
        self.initialized = True
        self.parser = ghttp.get_parser(self.cfg, self.sock, self.client)

    def close(self, graceful: bool = False) -> None:
        callback, self._on_close = self._on_close, None
        if callback is not None:
            callback(self)
        if graceful:
            self._linger(self)
        else:
            util.close(self.sock)


class GuardedWorker(ThreadWorker):
    """gthread, with requests read whole in the event loop before a thread runs them."""

    def run(self) -> None:
        config = getattr(self.wsgi, "config", {}).get("HWR_CONFIG")
        self.max_body = config.max_body_bytes if config else 1 << 20
        # Paths whose bodies the app reads and bounds itself (HWR_STREAMED_PATHS): uploads.
        self.streamed = frozenset(getattr(self.wsgi, "config", {}).get("HWR_STREAMED_PATHS", ()))
        self.request_timeout = config.request_timeout if config else 10.0
        self.per_client = config.connections_per_client if config else 64
        self.reading: dict[GuardedConn, None] = {}
        self.lingering: dict[socket.socket, float] = {}
        self.clients: Counter[str] = Counter()
        self.buffered = 0
        self.poller.close()
        self.poller = Poller(self.log.warning)
        super().run()

    # -- accepting and reading -----------------------------------------------------------
    def accept(self, listener: socket.socket) -> None:
        try:
            sock, addr = listener.accept()
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                return
            raise
        peer = addr[0] if isinstance(addr, tuple) else str(addr)
        if self.clients[peer] >= self.per_client:
            sock.setblocking(False)
            self._send(sock, error_bytes(503, "busy", "too many connections from this address"))
            util.close(sock)
            return
        self.nr_conns += 1
        self.clients[peer] += 1
        conn = GuardedConn(
            self.cfg, sock, addr, listener.getsockname(), self._forget, self._linger_conn
        )
        try:
            self._read(conn, self.request_timeout)
        except Exception:  # one connection never ends the worker (and every other socket)
            self.log.exception("could not take a connection from %s", peer)
            self.reading.pop(conn, None)
            self.nr_conns -= 1
            conn.close()

    def _forget(self, conn: GuardedConn) -> None:
        self.clients[conn.peer] -= 1
        if self.clients[conn.peer] <= 0:
            del self.clients[conn.peer]

    def _read(self, conn: GuardedConn, idle: float) -> None:
        """Wait in the event loop for the connection's next request, at most ``idle`` seconds."""
        conn.sock.setblocking(False)
        conn.deadline = time.monotonic() + idle
        self.reading[conn] = None
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _on_readable(self, conn: GuardedConn, _sock: Any = None) -> None:
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if not data:
            self._drop(conn)
            return
        if not conn.buf:
            conn.deadline = time.monotonic() + self.request_timeout
        conn.buf += data
        self.buffered += len(data)
        state = request_state(conn.buf, self.max_body, self.streamed)
        if state is False:
            if self.buffered > BUFFER_BUDGET:
                self._refuse(conn, (503, "busy", "the server is busy; try again in a moment"))
            return
        if state is not True:
            self._refuse(conn, state)
            return
        self._stop_reading(conn)
        self.enqueue_req(conn)

    def _stop_reading(self, conn: GuardedConn) -> None:
        if self.reading.pop(conn, False) is None:
            self.buffered -= len(conn.buf)
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass

    def _refuse(self, conn: GuardedConn, refusal: Refusal) -> None:
        """Answer from the event loop with the error body, then close."""
        self._stop_reading(conn)
        self._send(conn.sock, error_bytes(*refusal))
        self.nr_conns -= 1
        conn.close(graceful=True)

    def _drop(self, conn: GuardedConn) -> None:
        self._stop_reading(conn)
        self.nr_conns -= 1
        conn.close()

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> None:
        try:
            sock.send(
                data
            )  # a small answer fits the socket buffer; a client that reads nothing loses it
        except OSError:
            pass

    def on_client_socket_readable(self, conn: GuardedConn, client: Any) -> None:
        """A kept-alive connection sends its next request: read it in the loop as well."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._read(conn, self.request_timeout)
        self._on_readable(conn)

    def murder_pending(self) -> None:
        """Cut off clients that did not send their request in time (408 once they began)."""
        super().murder_pending()
        now = time.monotonic()
        for conn in [c for c in self.reading if c.deadline <= now or not self.alive]:
            if conn.buf:
                if conn.deadline <= now:
                    self._refuse(conn, (408, "timeout", "the request was not sent in time"))
            else:
                self._drop(conn)
        for sock in [s for s, t in self.lingering.items() if t <= now]:
            self._end_linger(sock)

    # -- closing without waiting in the loop ---------------------------------------------
    def _linger_conn(self, conn: GuardedConn) -> None:
        sock = conn.sock
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
            self.poller.register(sock, selectors.EVENT_READ, self._on_linger_readable)
        except (OSError, ValueError, KeyError):
            util.close(sock)
            return
        self.lingering[sock] = time.monotonic() + LINGER_S

    def _on_linger_readable(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(LINGER_DRAIN)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._end_linger(sock)

    def _end_linger(self, sock: socket.socket) -> None:
        self.lingering.pop(sock, None)
        try:
            self.poller.unregister(sock)
        except (KeyError, ValueError, OSError):
            pass
        util.close(sock)

    # -- running a request in a thread ---------------------------------------------------
    def handle(self, conn: GuardedConn) -> bool:
        """Run the request read for ``conn``; a socket wait never exceeds request_timeout."""
        req = None
        try:
            conn.sock.setblocking(True)
            conn.sock.settimeout(self.request_timeout)
            conn.init()
            if conn.buf:
                conn.parser.unreader.unread(bytes(conn.buf))
                conn.buf = bytearray()
            req = next(conn.parser)
            if not req:
                return False
            return self._keepalive_after(conn, self.handle_request(req, conn))
        except (herr.NoMoreData, StopIteration, TimeoutError):
            pass  # the client left, the socket was upgraded, or it stalled past the timeout
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.warning("socket error answering %s: %s", conn.peer, e)
        except Exception as e:
            self.handle_error(req, conn.sock, conn.client, e)
        return False

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """Answer a request gunicorn could not parse (or run) with the one error body."""
        status, code, message = client_error(exc)
        peer = addr[0] if isinstance(addr, tuple) else addr
        if status >= 500:
            self.log.exception("error answering a request from %s", peer)
        else:
            self.log.debug("refused a malformed request from %s: %s", peer, exc)
        try:
            util.write_nonblock(client, error_bytes(status, code, message))
        except Exception:
            self.log.debug("could not send the error answer")


__all__ = ["GuardedWorker", "Poller", "client_error", "error_bytes", "request_state"]
