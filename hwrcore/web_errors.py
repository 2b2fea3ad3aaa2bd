"""The one error shape over HTTP for the edge's and the server's Flask apps.

``error_response`` makes the wire's error body (``{"error": {"code", "message"}}``) with its
status; :func:`init_app` sends every werkzeug error (404, 405, 413...) and every unexpected
exception through it, and marks every answer ``nosniff``. Only the two apps import this module
(the rest of the shared core never needs Flask).
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from hwrcore import protocol

log = logging.getLogger(__name__)

HTTP_CODES = {
    400: ("bad_request", "the request could not be understood"),
    404: ("not_found", "there is nothing at this address"),
    405: ("method_not_allowed", "this address does not accept this method"),
    408: ("timeout", "the request was not sent in time"),
    413: ("too_large", "the request body is too large"),
    414: ("uri_too_long", "the address is too long"),
    415: ("unsupported_media_type", "send the request as JSON"),
    431: ("headers_too_large", "the request headers are too large"),
}


def error_response(code: str, message: str, status: int | None = None) -> Response:
    """The one error body with its status (the code's own status when none is given)."""
    resp = jsonify(protocol.error_body(code, message))
    resp.status_code = status or protocol.http_status(code)
    return resp


def http_error(exc: HTTPException) -> Response:
    """A werkzeug error (not found, wrong method, too large...) as the one error body."""
    status = exc.code or 500
    code, message = HTTP_CODES.get(status, (None, None))
    if code is None:
        code = "internal" if status >= 500 else "bad_request"
        message = exc.name
    resp = error_response(code, message, status)
    if status == 405 and getattr(exc, "valid_methods", None):
        resp.headers["Allow"] = ", ".join(exc.valid_methods)
    return resp


def unexpected(exc: Exception) -> Response:
    """A 500 with the one error body; the traceback is logged with the method and path only
    (never the request body: drawings and tokens do not reach the log). A client that left
    mid-request (a reset or a broken pipe, as in a WebSocket handshake cut short) is no error
    of the server's: one line at info, and an answer nobody may read."""
    if isinstance(exc, ConnectionError):
        log.info("the client left during %s %s (%s)", request.method, request.path, exc)
        return error_response("bad_request", "the connection was closed mid-request", 400)
    log.error("unexpected error on %s %s", request.method, request.path, exc_info=exc)
    return error_response("internal", "the server failed to answer; it was logged", 500)


def nosniff(resp: Response) -> Response:
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    return resp


def init_app(app: Flask) -> None:
    """Every error of ``app`` as the one error body; every answer ``nosniff``."""
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected)
    app.after_request(nosniff)


__all__ = ["HTTP_CODES", "error_response", "http_error", "init_app", "nosniff", "unexpected"]
