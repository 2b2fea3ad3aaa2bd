"""HTTP routes of the edge: the canvas page, the JSON API, the seed paper's endpoints, /healthz.

Every route hands a message to ``edge.messages.handle_message`` and sends its answer; every
error, the framework's own included (404, 405, 413, 500), leaves as the one error body.

Writes are accepted from the device's own page only (edge/guard.py): a known Host, the same
Origin, and ``Content-Type: application/json`` on every POST route. Bodies are read up to
``max_body_bytes``, chunked ones included (413 beyond).

The seed paper's endpoints take its JSON requests unchanged (a form, which any web site can
make a browser send, is refused with 415):

* ``POST /predict`` with ``image`` (the canvas as a base64 PNG, optionally a ``data:`` URL) and
  optionally ``mode`` ('digit', the default, or 'char'); answers like ``/api/predict`` plus
  ``"prediction"`` (the label).
* ``POST /correct`` with ``image``, ``label`` and optionally ``mode``; answers like
  ``/api/correct``.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request, send_from_directory
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from hwrcore import protocol

from . import guard
from .messages import Context, handle_message

log = logging.getLogger(__name__)

bp = Blueprint("edge", __name__)

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
READ_CHUNK = 64 << 10
PAPER_FIELDS = ("mode", "image", "label")


def _ctx() -> Context:
    return current_app.extensions["hwr"]


def error_response(code: str, message: str, status: int | None = None) -> Response:
    """The one error body with its status."""
    resp = jsonify(protocol.error_body(code, message))
    resp.status_code = status or protocol.http_status(code)
    return resp


def _reply(reply: dict[str, Any]) -> Response:
    """An answer of handle_message as an HTTP response: the body without type/seq, and a status."""
    if reply.get("type") == protocol.ERROR_TYPE:
        err = reply["error"]
        return error_response(err["code"], err["message"])
    body = {k: v for k, v in reply.items() if k not in ("type", "seq")}
    return jsonify(body)


def read_body(limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes, chunked or not."""
    if request.content_length is not None and request.content_length > limit:
        raise RequestEntityTooLarge()
    stream = request.stream
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = stream.read(min(READ_CHUNK, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise RequestEntityTooLarge()
        chunks.append(chunk)


def _json_body() -> Any:
    """The request body as JSON (413 if too large); ProtocolError if not JSON."""
    return protocol.parse_json(read_body(current_app.config["HWR_CONFIG"].max_body_bytes))


def _handle(kind: str, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        return handle_message(body, _ctx())
    msg = {k: v for k, v in body.items() if k != "seq"}
    msg["type"] = kind
    return handle_message(msg, _ctx())


def _api(kind: str) -> Response:
    try:
        body = _json_body()
    except protocol.ProtocolError as exc:
        return error_response(exc.code, exc.message)
    return _reply(_handle(kind, body))


@bp.post("/api/predict")
def api_predict() -> Response:
    """Predict a drawing (strokes or a PNG)."""
    return _api("predict")


@bp.post("/api/correct")
def api_correct() -> Response:
    """Store a correction, by prediction id or with the drawing; answers once it is durable."""
    return _api("correct")


def _paper_fields() -> dict[str, Any]:
    """``mode``, ``image`` and ``label`` of a seed-paper request (a JSON object)."""
    body = protocol.require_object(_json_body())
    fields = {k: body[k] for k in PAPER_FIELDS if k in body}
    fields.setdefault("mode", "digit")
    return fields


def _paper(kind: str) -> Response:
    try:
        fields = _paper_fields()
    except protocol.ProtocolError as exc:
        return error_response(exc.code, exc.message)
    if "image" not in fields:
        return error_response("invalid_message", "the request has no image field")
    reply = _handle(kind, fields)
    if reply.get("type") == "prediction":
        reply["prediction"] = reply["label"]
    return _reply(reply)


@bp.post("/predict")
def paper_predict() -> Response:
    """The seed paper's predict: a base64 canvas PNG in ``image``."""
    return _paper("predict")


@bp.post("/correct")
def paper_correct() -> Response:
    """The seed paper's correct: a base64 canvas PNG in ``image`` and its ``label``."""
    return _paper("correct")


@bp.get("/healthz")
def healthz() -> Response:
    """Model versions, corrections per store, pending corrections, uptime."""
    return _reply(public_health(handle_message({"type": "health"}, _ctx())))


def public_health(reply: dict[str, Any]) -> dict[str, Any]:
    """A health answer as anyone may see it: no file paths (they hold the user's name), and
    status "degraded" with the reasons while a store cannot write its snapshot or is closed."""
    if reply.get("type") != "health":
        return reply
    reasons = list(reply.get("reasons", []))
    corrections = {}
    for mode, stats in (reply.get("corrections") or {}).items():
        stats = {k: v for k, v in stats.items() if k != "path"}
        failures = int(stats.get("compaction_failures") or 0)
        if failures:
            reasons.append(f"the {mode} snapshot could not be written ({failures} tries in a row)")
        if stats.get("closed"):
            reasons.append(f"the {mode} store is closed")
        corrections[mode] = stats
    out = {**reply, "corrections": corrections}
    if reasons:
        out["status"] = "degraded"
        out["reasons"] = reasons
    return out


@bp.get("/")
def index() -> Response:
    """The canvas page."""
    return send_from_directory(current_app.config["HWR_CONFIG"].web_dir, "index.html")


@bp.get("/static/<path:filename>")
def static_file(filename: str) -> Response:
    """The canvas page's assets, all served from this device."""
    return send_from_directory(current_app.config["HWR_CONFIG"].web_dir / "static", filename)


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    code, message = HTTP_CODES.get(status, (None, None))
    if code is None:
        code = "internal" if status >= 500 else "bad_request"
        message = exc.name
    resp = error_response(code, message, status)
    if status == 405 and getattr(exc, "valid_methods", None):
        resp.headers["Allow"] = ", ".join(exc.valid_methods)
    return resp


def _unexpected(exc: Exception) -> Response:
    # The traceback names code, never the request body: drawings do not reach the log.
    log.error("unexpected error on %s %s", request.method, request.path, exc_info=exc)
    return error_response("internal", "the server failed to answer; it was logged", 500)


def _headers(resp: Response) -> Response:
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    return resp


def init_app(app: Flask) -> None:
    """Register the routes and route every error through the one error body."""
    # "//healthz" is not redirected (werkzeug's redirect is an HTML page): it is not found.
    app.url_map.merge_slashes = False
    guard.init_app(app)
    app.register_blueprint(bp)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
    app.after_request(_headers)


__all__ = ["bp", "error_response", "init_app", "public_health", "read_body"]
