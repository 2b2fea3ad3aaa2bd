"""HTTP routes of the edge: the canvas page, the JSON API, the seed paper's endpoints, /healthz.

Every route hands a message to ``edge.messages.handle_message`` and sends its answer; every
error, the framework's own included (404, 405, 413, 500), leaves as the one error body.

Writes are accepted from the device's own page only (edge/guard.py): a known Host, the same
Origin, and ``Content-Type: application/json`` on every POST route. Bodies are read up to
``max_body_bytes``, chunked ones included (413 beyond).

The seed paper's endpoints take its page's JSON requests unchanged (a form, which any web site
can make a browser send, is refused with 415):

* ``POST /predict`` with ``data_url`` (the canvas as a ``data:image/png;base64,`` URL; ``image``
  is read as well) and ``mode`` ('digits' or 'characters'; 'digit', the default, and 'char' as
  well); answers like ``/api/predict`` plus the seed's fields: ``prediction`` (the label),
  ``confidence`` (0-1), ``source``, ``time`` (seconds) and ``image`` (the base64 PNG of the
  28x28 model input, white ink on black).
* ``POST /correct`` with the same and ``true_label`` (or ``label``); answers like
  ``/api/correct`` plus ``"status": "success"`` and a ``message``.
* ``POST /stats`` with ``{}``; answers ``digits`` and ``chars`` (corrections stored on this
  device, withdrawn ones left out) besides ``corrections`` by mode and ``pending``.

An error keeps the one error body; /correct and /stats add the seed's ``"status": "error"`` and
``message`` beside it.
"""

from __future__ import annotations

import base64
import io
import logging
from typing import Any

import numpy as np
from flask import Blueprint, Flask, Response, current_app, jsonify, send_from_directory
from PIL import Image

from hwrcore import protocol, web_errors
from hwrcore.web_body import read_json
from hwrcore.web_errors import error_response

from . import guard
from .messages import (
    DISK_FULL,
    LOW_DISK_BYTES,
    Context,
    correction_counts,
    handle_message,
    pending_total,
)

log = logging.getLogger(__name__)

bp = Blueprint("edge", __name__)

# The seed page's names for the modes, and the project's own.
PAPER_MODES = {"digits": "digit", "characters": "char", "digit": "digit", "char": "char"}


def _ctx() -> Context:
    return current_app.extensions["hwr"]


def _reply(reply: dict[str, Any]) -> Response:
    """An answer of handle_message as an HTTP response: the body without type/seq, and a status."""
    if reply.get("type") == protocol.ERROR_TYPE:
        err = reply["error"]
        return error_response(err["code"], err["message"])
    body = {k: v for k, v in reply.items() if k not in ("type", "seq")}
    return jsonify(body)


def _json_body() -> Any:
    """The request body as JSON (413 if too large); ProtocolError if not JSON."""
    return read_json(current_app.config["HWR_CONFIG"].max_body_bytes)


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


@bp.post("/api/confirm")
def api_confirm() -> Response:
    """Keep a guess as right (a confirmation), by prediction id or with the drawing and label."""
    return _api("confirm")


@bp.post("/api/withdraw")
def api_withdraw() -> Response:
    """Take a stored correction or confirmation back: ``{"correction_id", "by"}``."""
    return _api("withdraw")


def _paper_fields() -> dict[str, Any]:
    """``mode``, ``image`` and ``label`` of a seed-page request, in the project's own terms."""
    body = protocol.require_object(_json_body())
    fields: dict[str, Any] = {}
    mode = body.get("mode", "digit")
    fields["mode"] = PAPER_MODES.get(mode, mode) if isinstance(mode, str) else mode
    image = body.get("data_url", body.get("image"))
    if image is None:
        raise protocol.ProtocolError("the request has no data_url (the canvas as a PNG data URL)")
    fields["image"] = image
    label = body.get("true_label", body.get("label"))
    if label is not None:
        fields["label"] = label
    return fields


def _seed_error(resp: Response) -> Response:
    """An error with the seed page's ``status`` and ``message`` beside the one error body."""
    body = resp.get_json()
    body.update(status="error", message=body["error"]["message"])
    resp.set_data(jsonify(body).get_data())
    return resp


def input_png(image: np.ndarray) -> str:
    """A (28, 28) model input (0..1) as the base64 of a greyscale PNG."""
    pixels = np.clip(np.asarray(image, dtype=np.float32).reshape(28, 28) * 255.0, 0, 255)
    buf = io.BytesIO()
    Image.fromarray(pixels.round().astype(np.uint8), mode="L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


@bp.post("/predict")
def paper_predict() -> Response:
    """The seed page's predict: the canvas as a PNG data URL in ``data_url``."""
    try:
        fields = _paper_fields()
    except protocol.ProtocolError as exc:
        return error_response(exc.code, exc.message)
    reply = _handle("predict", fields)
    if reply.get("type") == "prediction":
        recent = _ctx().recent.get(reply["id"])
        reply["prediction"] = reply["label"]
        reply["time"] = round(reply["ms"] / 1000.0, 6)
        reply["image"] = input_png(recent.image) if recent is not None else None
    return _reply(reply)


@bp.post("/correct")
def paper_correct() -> Response:
    """The seed page's correct: ``data_url``, ``mode`` and ``true_label``."""
    try:
        fields = _paper_fields()
    except protocol.ProtocolError as exc:
        return _seed_error(error_response(exc.code, exc.message))
    reply = _handle("correct", fields)
    if reply.get("type") == protocol.ERROR_TYPE:
        return _seed_error(_reply(reply))
    reply.update(status="success", message=f"correction saved as {reply['label']}")
    return _reply(reply)


@bp.post("/stats")
def paper_stats() -> Response:
    """The seed page's stats: corrections stored per mode, as ``digits`` and ``chars``."""
    try:
        protocol.require_object(_json_body())
    except protocol.ProtocolError as exc:
        return _seed_error(error_response(exc.code, exc.message))
    counts = correction_counts(_ctx())
    return jsonify(
        {
            "status": "success",
            "digits": counts.get("digit", 0),
            "chars": counts.get("char", 0),
            "corrections": counts,
            "pending": pending_total(_ctx()),
        }
    )


@bp.get("/healthz")
def healthz() -> Response:
    """Model versions, corrections per store, pending corrections, uptime."""
    return _reply(public_health(handle_message({"type": "health"}, _ctx())))


def public_health(reply: dict[str, Any]) -> dict[str, Any]:
    """A health answer as anyone may see it: no file paths (they hold the user's name), and
    status "degraded" with the reasons while a store cannot write its snapshot or is closed, a
    correction could not be stored for want of space, or little space is left."""
    if reply.get("type") != "health":
        return reply
    reasons = []
    corrections = {}
    for mode, stats in (reply.get("corrections") or {}).items():
        stats = {k: v for k, v in stats.items() if k != "path"}
        reasons += [f"the {mode} store: {p}" for p in stats.get("problems") or []]
        failures = int(stats.get("compaction_failures") or 0)
        if failures:
            reasons.append(f"the {mode} snapshot could not be written ({failures} tries in a row)")
        if stats.get("closed"):
            reasons.append(f"the {mode} store is closed")
        corrections[mode] = stats
    space = reply.get("storage") or {}
    free = space.get("free_bytes")
    if space.get("full"):
        reasons.append(f"corrections cannot be saved: {DISK_FULL}")
    elif free is not None and free < LOW_DISK_BYTES:
        reasons.append(
            f"little storage left on this device ({free / 2**20:.1f} MiB free): corrections "
            "stop being saved when it is full"
        )
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


def init_app(app: Flask) -> None:
    """Register the routes and route every error through the one error body."""
    # "//healthz" is not redirected (werkzeug's redirect is an HTML page): it is not found.
    app.url_map.merge_slashes = False
    guard.init_app(app)
    app.register_blueprint(bp)
    web_errors.init_app(app)


__all__ = ["bp", "error_response", "init_app", "public_health"]
