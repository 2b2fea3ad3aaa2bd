"""The WebSocket ``/ws``: decode a text frame, call ``handle_message``, encode its answer.

Messages are JSON objects with a ``type`` and a client ``seq`` that is echoed:
``{"type": "predict", "seq": 3, "mode": "digit", "strokes": [...]}`` -> ``{"type":
"prediction", "seq": 3, "id", "label", "confidence", "top", "source", "model", "ms"}``;
``{"type": "correct", "seq", "id"|drawing, "label"}`` -> ``{"type": "corrected", "seq",
"correction_id", "stored": true}``; ``{"type": "health"}`` -> ``{"type": "health", ...}``.
While viewers watch (edge/viewer.py) the server also sends ``{"type": "watching", "viewers": n}``
whenever their number changes (within a second), so the page shows the pupil it is watched;
the socket's drawings are what those viewers see.
Anything wrong -> ``{"type": "error", "seq", "error": {"code", "message"}}`` and the socket
stays open: binary frames, oversized messages and floods (beyond a per-socket rate) included.

An open socket holds a server thread, so at most :func:`socket_limit` are open at once and
``sockets_per_client`` per address (503 ``busy`` before the upgrade beyond that: the page then
uses HTTP), and one silent for ``ws_idle_timeout`` seconds is closed (the page reopens it).
A bad handshake (no key, another protocol version) is refused with the error body.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, current_app, request
from simple_websocket import ConnectionClosed, Server

from hwrcore import protocol

from .api import error_response, public_health
from .config import EdgeConfig
from .messages import Context, handle_message

log = logging.getLogger(__name__)

# How often a quiet session looks up to see whether the server is shutting down.
POLL_S = 1.0
# How long a closed socket waits for simple-websocket's reading thread to stop (twice at most).
CLOSE_WAIT_S = 1.0
WS_VERSION = "13"
EXTENSION = "hwr_sockets"


class RateLimit:
    """A token bucket: ``burst`` messages at once, then ``rate`` per second."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = float(rate)
        self.burst = float(burst)
        self.clock = clock
        self.tokens = float(burst)
        self.last = clock()

    def allow(self) -> bool:
        """Take one token if there is one."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def answer(
    data: str | bytes, ctx: Context, config: EdgeConfig, limit: RateLimit, canvas: str = "ws"
) -> dict[str, Any]:
    """The answer to one frame: bounded in size and rate, then ``handle_message``."""
    allowed = limit.allow()
    if isinstance(data, (bytes, bytearray)):
        return protocol.error_message("binary_frame", "send JSON text frames, not binary ones")
    if len(data) > config.ws_max_message_bytes:
        return protocol.error_message(
            "too_large", f"a message may be at most {config.ws_max_message_bytes} bytes"
        )
    try:
        msg = protocol.require_object(protocol.parse_json(data))
        seq = protocol.get_seq(msg)
    except protocol.ProtocolError as exc:
        return protocol.error_message(exc.code, exc.message)
    if not allowed:
        return protocol.error_message(
            "rate_limited",
            f"too many messages: at most {config.ws_messages_per_second:g} a second on one socket",
            seq,
        )
    return handle_message(msg, ctx, canvas)


def encode(reply: dict[str, Any]) -> str:
    """An answer as a compact JSON text frame."""
    return json.dumps(reply, separators=(",", ":"), allow_nan=False)


def session(ws: Any, ctx: Context, config: EdgeConfig) -> None:
    """Serve one socket until the client leaves, stays silent too long or the server stops."""
    limit = RateLimit(config.ws_messages_per_second, config.ws_burst)
    log.debug("websocket session opened")
    last = time.monotonic()
    canvas = f"ws-{uuid.uuid4().hex}"  # this page's drawing, as the viewers see it
    watched = 0  # viewers last told to this page ({"type": "watching"} when it changes)
    while not ctx.closing.is_set():
        if ctx.viewers is not None and ctx.viewers.count() != watched:
            watched = ctx.viewers.count()
            try:
                ws.send(encode({"type": "watching", "viewers": watched}))
            except (ConnectionClosed, OSError):
                break
        quiet = time.monotonic() - last
        if quiet >= config.ws_idle_timeout:
            _close(ws, 1000, "closed after a long silence; open a new socket")
            break
        try:
            data = ws.receive(timeout=min(POLL_S, config.ws_idle_timeout - quiet))
        except (ConnectionClosed, OSError):
            break
        if data is None:
            if not ws.connected:
                break
            continue
        last = time.monotonic()
        try:
            ws.send(encode(public_health(answer(data, ctx, config, limit, canvas))))
        except (ConnectionClosed, OSError):  # a client that does not read is cut off
            break
    if ctx.viewers is not None:
        ctx.viewers.canvas_closed(canvas)
    if ctx.closing.is_set():
        _close(ws, 1001, "the server is shutting down")
    log.debug("websocket session closed")


def _close(ws: Any, code: int, reason: str) -> None:
    if ws.connected:
        try:
            ws.close(code, reason)
        except (ConnectionClosed, OSError):
            pass


def finish(ws: Server) -> None:
    """Close ``ws`` and wait until simple-websocket's reading thread has stopped.

    That thread closes the socket itself when it stops. The route must not hand the connection
    back to the worker before: a socket closed behind the worker's back, once the worker holds it
    in its event loop again, leaves a stale entry there for the next connection with its number.
    A client that does not answer the close within CLOSE_WAIT_S has its reads shut down.
    """
    try:
        ws.close()
    except Exception:  # already closed by either side
        pass
    ws.thread.join(CLOSE_WAIT_S)
    if ws.thread.is_alive():
        try:
            ws.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        ws.thread.join(CLOSE_WAIT_S)


class SocketSlots:
    """Open WebSockets, at most ``total`` and ``per_client`` of them (each holds a thread)."""

    def __init__(self, total: int, per_client: int):
        self.total = total
        self.per_client = per_client
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def take(self, client: str) -> bool:
        """Take a slot for ``client``; False when it or the server has all it may have."""
        with self._lock:
            if sum(self._open.values()) >= self.total or self._open[client] >= self.per_client:
                return False
            self._open[client] += 1
            return True

    def give_back(self, client: str) -> None:
        with self._lock:
            self._open[client] -= 1
            if self._open[client] <= 0:
                del self._open[client]

    def __len__(self) -> int:
        with self._lock:
            return sum(self._open.values())


def socket_limit(threads: int) -> int:
    """WebSockets open at once: the server's threads, less a quarter (at least 2) kept for HTTP."""
    return max(1, threads - max(2, threads // 4))


def _handshake_error() -> Response | None:
    """Why this upgrade request cannot become a WebSocket (an error response), or None."""
    headers = request.headers
    if "upgrade" not in {t.strip().lower() for t in headers.get("Connection", "").split(",")}:
        return error_response("bad_request", "a WebSocket upgrade needs Connection: Upgrade")
    if headers.get("Sec-WebSocket-Version", "").strip() != WS_VERSION:
        resp = error_response("upgrade_required", f"only WebSocket version {WS_VERSION} is spoken")
        resp.headers["Sec-WebSocket-Version"] = WS_VERSION
        return resp
    try:
        key = base64.b64decode(headers.get("Sec-WebSocket-Key", "").strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 16:
        return error_response("bad_request", "Sec-WebSocket-Key must be 16 bytes in base64")
    return None


class _Upgraded(Response):
    """What the route returns once the socket has been served: the server writes nothing more."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def __call__(self, environ: Any, start_response: Any) -> Any:
        if self.mode == "gunicorn":
            raise StopIteration()  # gunicorn: the connection is done with
        if self.mode == "werkzeug":
            return super().__call__(environ, start_response)
        return []


def ws_route() -> Response:
    """``/ws``: check the handshake and the socket limits, then serve the session."""
    refused = _handshake_error()
    if refused is not None:
        return refused
    app = current_app
    slots: SocketSlots = app.extensions[EXTENSION]
    client = request.remote_addr or ""
    if not slots.take(client):
        return error_response("busy", "too many open sockets; the page works over HTTP meanwhile")
    try:
        try:
            ws = Server(request.environ, **app.config.get("SOCK_SERVER_OPTIONS", {}))
        except Exception:  # a handshake wsproto refuses: nothing was sent yet
            return error_response("bad_request", "the WebSocket handshake is not valid")
        try:
            session(ws, app.extensions["hwr"], app.config["HWR_CONFIG"])
        finally:
            finish(ws)
        return _Upgraded(ws.mode)
    finally:
        slots.give_back(client)


def init_app(app: Flask) -> SocketSlots:
    """Register ``/ws`` with its limits on open sockets."""
    config: EdgeConfig = app.config["HWR_CONFIG"]
    slots = SocketSlots(socket_limit(config.threads), config.sockets_per_client)
    app.extensions[EXTENSION] = slots
    app.add_url_rule("/ws", "ws", ws_route, websocket=True)
    return slots


__all__ = ["RateLimit", "SocketSlots", "answer", "encode", "init_app", "session", "socket_limit"]
