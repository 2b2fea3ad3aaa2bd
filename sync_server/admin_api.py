"""Admin JSON routes of the learning loop under ``/api/v1/admin/`` (the admin bearer token).

    GET  quarantine?mode=&status=open|approved|rejected|all&limit=&offset=
    POST quarantine/decide      {"ids": [...], "decision": "approve"|"reject", "by": "name"}
    GET  decisions?limit=&offset=
    GET  devices/agreement
    GET  corrections/classes?mode=      GET corrections/over-time?mode=&bucket=hour|day|week
    GET  jobs?name=                     GET jobs/<id>
    POST retrain                {"name": "digits", "by": "name"}
    GET  versions?name=
    POST rollout                {"name", "version", "group": "room-1" | null, "by"}
    POST rollback               {"name", "version", "by"}

Every answer is JSON; every error the one ``{"error": {"code", "message"}}``. Writes take a
JSON body (``Content-Type: application/json``).
"""

from __future__ import annotations

import base64
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request

from hwrcore import protocol
from hwrcore.errors import HwrError
from hwrcore.web_body import read_json

from . import jobs, merge
from .api import admin_refusal, error_response, state

bp = Blueprint("admin_api", __name__, url_prefix="/api/v1/admin")


@bp.before_request
def _admin_only() -> Response | None:
    return admin_refusal()


@bp.errorhandler(HwrError)
def _domain_error(exc: HwrError) -> Response:
    status = 404 if exc.code in ("unknown_version", "unknown_model", "not_found") else 400
    if exc.code == "already_current":
        status = 409
    return error_response(exc.code, exc.message, status)


def _body() -> dict[str, Any]:
    if not request.is_json:
        raise HwrError("send a JSON body (Content-Type: application/json)", code="invalid_message")
    try:
        body = read_json(state().config.max_body_bytes)
    except protocol.ProtocolError:
        body = None
    if not isinstance(body, dict):
        raise HwrError("the body must be a JSON object", code="invalid_json")
    return body


def _by(body: dict[str, Any]) -> str:
    by = body.get("by", "admin")
    if not isinstance(by, str) or not by.strip() or len(by) > 100:
        raise HwrError("by must be a name of 1-100 characters", code="invalid_field")
    return by.strip()


MAX_PAGE = 1000  # items one admin listing answers with at most (limit=)
MAX_ID = 2**63 - 1  # the largest row id either database holds


def _int(name: str, default: int, most: int = MAX_ID) -> int:
    """A whole-number query argument from 0 to ``most``; anything else is invalid_field."""
    raw = request.args.get(name)
    try:
        value = default if raw is None else int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= most:
        raise HwrError(f"{name} must be a whole number from 0 to {most}", code="invalid_field")
    return value


def _str(body: dict[str, Any], name: str) -> str:
    v = body.get(name)
    if not isinstance(v, str) or not v:
        raise HwrError(f"{name} must be a non-empty string", code="invalid_field")
    return v


@bp.get("/quarantine")
def get_quarantine() -> Response:
    """Quarantined corrections with their drawings (``image_png`` as base64)."""
    st = state()
    mode = request.args.get("mode") or None
    status = request.args.get("status", "open")
    items = merge.quarantine(
        st.engine,
        mode=mode,
        status=status,
        limit=_int("limit", 100, MAX_PAGE),
        offset=_int("offset", 0),
    )
    for i in items:
        i["image_png"] = base64.b64encode(i["image_png"]).decode("ascii")
    total = merge.quarantine_count(st.engine, mode=mode, status=status)
    return jsonify({"items": items, "total": total})


@bp.post("/quarantine/decide")
def post_decide() -> Response:
    """Approve or reject corrections, one or many; every decision recorded."""
    body = _body()
    ids = body.get("ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise HwrError("ids must be a non-empty list of correction ids", code="invalid_field")
    if len(ids) > 10_000:
        raise HwrError("at most 10,000 ids at once", code="too_large")
    n = merge.decide(state().engine, ids, _str(body, "decision"), _by(body))
    queue = state().jobs
    if queue is not None:  # the verdicts of the others may change (a rejected one is no neighbour)
        for mode in ("digit", "char"):
            queue.poke(mode)
    return jsonify({"decided": n})


@bp.get("/decisions")
def get_decisions() -> Response:
    return jsonify(
        {
            "items": merge.decisions(
                state().engine, limit=_int("limit", 100, MAX_PAGE), offset=_int("offset", 0)
            )
        }
    )


@bp.get("/devices/agreement")
def get_agreement() -> Response:
    return jsonify({"devices": merge.device_stats(state().engine)})


@bp.get("/corrections/classes")
def get_classes() -> Response:
    return jsonify({"classes": merge.class_counts(state().engine, request.args.get("mode", ""))})


@bp.get("/corrections/over-time")
def get_over_time() -> Response:
    rows = merge.counts_over_time(
        state().engine, request.args.get("mode") or None, request.args.get("bucket", "day")
    )
    return jsonify({"buckets": rows})


@bp.get("/jobs")
def get_jobs() -> Response:
    name = request.args.get("name") or None
    return jsonify(
        {"jobs": jobs.list_jobs(state().engine, name=name, limit=_int("limit", 50, MAX_PAGE))}
    )


@bp.get("/jobs/<int:job_id>")
def get_job(job_id: int) -> Response:
    job = jobs.get_job(state().engine, job_id) if job_id <= MAX_ID else None
    if job is None:
        return error_response("not_found", f"no job {job_id}", 404)
    return jsonify(job)


@bp.post("/retrain")
def post_retrain() -> Response:
    """Queue a retrain (or join the one queued or running): 202 with the job."""
    body = _body()
    job = jobs.request_retrain(state(), _str(body, "name"), _by(body), trigger="admin")
    return jsonify(job), 202


@bp.get("/versions")
def get_versions() -> Response:
    return jsonify({"versions": state().registry.versions(request.args.get("name") or None)})


def _release(c: Any) -> dict[str, Any]:
    return {"name": c.name, "mode": c.mode, "version": c.version, "sequence": c.sequence}


@bp.post("/rollout")
def post_rollout() -> Response:
    """Release a stored version to a device group (``group`` null or absent: every device)."""
    body = _body()
    group = body.get("group")
    if group is not None and not isinstance(group, str):
        raise HwrError("group must be a string or null", code="invalid_field")
    c = state().registry.rollout(_str(body, "name"), _str(body, "version"), group, by=_by(body))
    return jsonify({**_release(c), "group": group})


@bp.post("/rollback")
def post_rollback() -> Response:
    body = _body()
    c = state().registry.rollback(_str(body, "name"), _str(body, "version"), by=_by(body))
    return jsonify(_release(c))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


__all__ = ["bp", "init_app"]
