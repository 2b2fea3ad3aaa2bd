"""The device API under ``/api/v1/`` (docs/sync.md): corrections, heartbeat, releases, model files.

Every route takes ``Authorization: Bearer <token>``: a device token, or the admin token under
``/api/v1/admin/``. A missing, malformed, unknown or revoked token is 401 ``unauthorized`` with
one message for all; a device over its rate is 429 with ``Retry-After``. Every error, the
framework's own included (404, 405, 413, 500), leaves as ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import time
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request, send_file
from sqlalchemy import update

from hwrcore import protocol, web_errors
from hwrcore.labels import LABEL_SETS
from hwrcore.release import canonical_json
from hwrcore.web_body import read_json
from hwrcore.web_errors import error_response

from .corrections import merge, summary, withdraw
from .db import devices, writing
from .devices import authenticate
from .state import SyncState

log = logging.getLogger(__name__)

bp = Blueprint("sync_api", __name__, url_prefix="/api/v1")

UNAUTHORIZED = "a valid bearer token is required"
MAX_TEXT = 2048


def state() -> SyncState:
    return current_app.extensions["hwr_sync"]


def _unauthorized() -> Response:
    resp = error_response("unauthorized", UNAUTHORIZED, 401)
    resp.headers["WWW-Authenticate"] = "Bearer"
    return resp


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _is_admin(token: str | None) -> bool:
    secret = state().admin_token
    if not token or not secret:
        return False
    return hmac.compare_digest(
        hashlib.sha256(token.encode()).digest(), hashlib.sha256(secret.encode()).digest()
    )


def admin_refusal() -> Response | None:
    """None for a request carrying the admin token; else 401, or 429 while the address (or
    everyone) has failed too often in the last minute. The count is the dashboard sign-in's
    (sync_server/auth.py), so the token cannot be guessed faster through either door."""
    from .auth import client_address

    limiter = current_app.extensions["hwr_signin_limiter"]
    addr = client_address(request)
    wait = limiter.wait(addr)
    if wait > 0:
        resp = error_response("rate_limited", "too many failed admin tokens; wait a minute", 429)
        resp.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return resp
    token = _bearer()
    if _is_admin(token):
        return None
    if token is not None:  # a wrong token, not a request without one
        limiter.failed(addr)
        log.warning("a wrong admin token from %s", addr)
    return _unauthorized()


@bp.before_request
def _authenticate() -> Response | None:
    """Bearer auth on every route (the notify socket's upgrade included), then the rate limit."""
    if request.path.startswith(bp.url_prefix + "/admin/"):
        return admin_refusal()
    st = state()
    device = authenticate(st.engine, _bearer())
    if device is None:
        return _unauthorized()
    g.device = device
    wait = st.limiter.take(device.id) if st.limiter is not None else 0.0
    if wait > 0:
        resp = error_response("rate_limited", "too many requests from this device; slow down", 429)
        resp.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return resp
    return None


def _json_object() -> dict[str, Any]:
    body = read_json(state().config.max_body_bytes)
    return protocol.require_object(body)


def _batch(key: str) -> list[Any] | Response:
    """The request's list under ``key`` (1 to max_batch items), or the error to answer."""
    try:
        body = _json_object()
    except protocol.ProtocolError as exc:
        return error_response(exc.code, exc.message)
    items = body.get(key)
    if not isinstance(items, list) or not items:
        return error_response("invalid_message", f"{key} must be a non-empty list")
    limit = state().config.max_batch
    if len(items) > limit:
        return error_response(
            "too_large", f"a batch holds at most {limit} {key}, got {len(items)}", 413
        )
    return items


@bp.post("/corrections")
def post_corrections() -> Response:
    """Merge a batch of corrections; each item's outcome, committed before the answer."""
    items = _batch("corrections")
    if isinstance(items, Response):
        return items
    results = merge(state().engine, g.device.id, items)
    queue = state().jobs
    if queue is not None:  # the worker scores what was stored, off this request's path
        modes = {
            i.get("mode") for i, r in zip(items, results, strict=True) if r["status"] == "stored"
        }
        for mode in modes & set(LABEL_SETS):
            queue.poke(mode)
    return jsonify({"results": results})


def _heartbeat_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The heartbeat's known fields as columns; ProtocolError on a mistyped one."""
    out: dict[str, Any] = {}
    served = body.get("models")
    if served is not None:
        ok = isinstance(served, dict) and all(
            m in LABEL_SETS
            and isinstance(v, dict)
            and all(isinstance(v.get(k), str) and len(v[k]) <= 64 for k in ("name", "version"))
            for m, v in served.items()
        )
        if not ok:
            raise protocol.ProtocolError('models must be {mode: {"name", "version"}}')
        out["hb_models"] = json.dumps(
            {m: {"name": v["name"], "version": v["version"]} for m, v in served.items()}
        )
    pending = body.get("pending")
    if pending is not None:
        if not isinstance(pending, int) or isinstance(pending, bool) or not 0 <= pending < 2**31:
            raise protocol.ProtocolError("pending must be a count")
        out["hb_pending"] = pending
    for name, col, limit in (("software", "hb_software", 64), ("tunnel_url", "hb_tunnel_url", 0)):
        value = body.get(name)
        if value is not None:
            if not isinstance(value, str) or len(value) > (limit or MAX_TEXT):
                raise protocol.ProtocolError(f"{name} must be a short string")
            out[col] = value
    clock = body.get("clock")
    if clock is not None:
        if type(clock) not in (int, float) or not math.isfinite(clock):
            raise protocol.ProtocolError("clock must be a unix time")
        out["hb_clock"] = float(clock)
    return out


@bp.post("/corrections/withdraw")
def post_withdrawals() -> Response:
    """Withdraw corrections this device sent (undone on the device); each item's outcome."""
    items = _batch("withdrawals")
    if isinstance(items, Response):
        return items
    return jsonify({"results": withdraw(state().engine, g.device.id, items)})


@bp.post("/heartbeat")
def post_heartbeat() -> Response:
    """Record what a device serves; answer the current release of each model."""
    try:
        values = _heartbeat_fields(_json_object())
    except protocol.ProtocolError as exc:
        return error_response(exc.code, exc.message)
    now = time.time()
    st = state()
    with writing(st.engine) as conn:
        conn.execute(
            update(devices).where(devices.c.id == g.device.id).values(last_seen=now, **values)
        )
    current = {
        mode: {"name": c.name, "version": c.version, "sequence": c.sequence}
        for mode, c in st.registry.current_by_mode(g.device.group).items()
    }
    return jsonify({"models": current, "server_time": now})


def _etag_answer(body: dict[str, Any]) -> Response:
    tag = hashlib.sha256(canonical_json(body)).hexdigest()[:32]
    if request.if_none_match.contains(tag):
        resp = Response(status=304)
    else:
        resp = jsonify(body)
    resp.set_etag(tag)
    resp.headers["Cache-Control"] = "no-cache"
    return resp


@bp.get("/models")
def get_models() -> Response:
    """The current signed release of each model and the URL of its file; ETag / 304."""
    current = state().registry.current_by_mode(g.device.group)
    body = {
        "models": {
            mode: {"release": c.document, "url": f"{bp.url_prefix}/models/{c.name}/{c.version}"}
            for mode, c in sorted(current.items())
        }
    }
    return _etag_answer(body)


@bp.get("/models/<name>/<version>")
def get_model_file(name: str, version: str) -> Response:
    """A model file with ETag = its sha256, If-None-Match (304) and Range (206)."""
    found = state().registry.file_for(name, version)
    if found is None or not found[0].is_file():
        return error_response("not_found", f"no model {name} {version}", 404)
    path, sha256 = found
    resp = send_file(
        path,
        mimetype="application/octet-stream",
        conditional=True,
        etag=sha256,
        max_age=0,
        download_name=f"{name}-{version}.tflite",
    )
    resp.headers["Cache-Control"] = "no-cache"
    return resp


@bp.get("/admin/summary")
def admin_summary() -> Response:
    """Devices and distinct corrections per mode (admin token)."""
    return jsonify(summary(state().engine))


def init_app(app: Flask) -> None:
    """Register the routes and route every error through the one error body."""
    from . import notify  # noqa: F401  (adds the notify socket to the blueprint)

    app.register_blueprint(bp)
    web_errors.init_app(app)


__all__ = ["bp", "error_response", "init_app"]
