"""The WebSocket ``/ws``: decode a text frame, call ``handle_message``, encode its answer.

Messages are JSON objects with a ``type`` and a client ``seq`` that is echoed:
``{"type": "predict", "seq": 3, "mode": "digit", "strokes": [...]}`` -> ``{"type":
"prediction", "seq": 3, "id", "label", "confidence", "top", "source", "model", "ms"}``;
``{"type": "correct", "seq", "id"|drawing, "label"}`` -> ``{"type": "corrected", "seq",
"correction_id", "stored": true}``; ``{"type": "health"}`` -> ``{"type": "health", ...}``.
Anything wrong -> ``{"type": "error", "seq", "error": {"code", "message"}}`` and the socket
stays open: binary frames, oversized messages and floods (beyond a per-socket rate) included.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, current_app
from flask_sock import Sock
from simple_websocket import ConnectionClosed

from hwrcore import protocol

from .config import EdgeConfig
from .messages import Context, handle_message

log = logging.getLogger(__name__)

# How often a quiet session looks up to see whether the server is shutting down.
POLL_S = 1.0


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


def answer(data: str | bytes, ctx: Context, config: EdgeConfig, limit: RateLimit) -> dict[str, Any]:
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
    return handle_message(msg, ctx)


def encode(reply: dict[str, Any]) -> str:
    """An answer as a compact JSON text frame."""
    return json.dumps(reply, separators=(",", ":"), allow_nan=False)


def session(ws: Any, ctx: Context, config: EdgeConfig) -> None:
    """Serve one socket until the client leaves or the server shuts down."""
    limit = RateLimit(config.ws_messages_per_second, config.ws_burst)
    log.debug("websocket session opened")
    while not ctx.closing.is_set():
        try:
            data = ws.receive(timeout=POLL_S)
        except ConnectionClosed:
            break
        if data is None:
            if not ws.connected:
                break
            continue
        try:
            ws.send(encode(answer(data, ctx, config, limit)))
        except ConnectionClosed:
            break
    if ctx.closing.is_set() and ws.connected:
        try:
            ws.close(1001, "the server is shutting down")
        except ConnectionClosed:
            pass
    log.debug("websocket session closed")


def init_app(app: Flask) -> Sock:
    """Bind flask-sock to the app and register ``/ws``."""
    sock = Sock(app)

    @sock.route("/ws")
    def ws_route(ws: Any) -> None:
        session(ws, current_app.extensions["hwr"], current_app.config["HWR_CONFIG"])

    return sock


__all__ = ["RateLimit", "answer", "encode", "init_app", "session"]
