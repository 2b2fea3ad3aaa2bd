"""The admin dashboard at ``/admin``: pages for people, actions behind a session and a CSRF token.

Pages (GET; without a session they redirect to the sign-in page): ``/admin/`` devices,
``/admin/corrections``, ``/admin/quarantine``, ``/admin/models``, ``/admin/jobs``; data routes
``/admin/jobs.json`` (polled by the jobs page) and ``/admin/drawings/<uuid>.png`` (a stored
model input, drawn). Actions (POST forms; without a session 401, without a valid CSRF token
403, both in the one error shape): ``/admin/signout``, ``/admin/quarantine/decide``,
``/admin/models/publish``, ``/admin/models/rollout``, ``/admin/models/rollback``,
``/admin/jobs/retrain``, ``/admin/devices/revoke``. Each action redirects back to its page with a
message (post, then redirect, then get). ``/admin/devices/add`` and ``/admin/devices/new-token``
answer with the device's settings and token instead (sync_server/device_admin.py). Sign-in is
``/admin/signin`` (sync_server/auth.py); the stylesheet and script are served from ``web/admin/``
at ``/admin/static/``.

Every ``/admin`` response carries a Content-Security-Policy that allows only this server's own
scripts, styles and images (no inline script), refuses framing and is never cached.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    send_from_directory,
    url_for,
)
from flask_wtf.csrf import CSRFError
from markupsafe import Markup
from PIL import Image
from werkzeug.exceptions import RequestEntityTooLarge

from hwrcore.assets import web_dir
from hwrcore.errors import HwrError
from hwrcore.labels import LABEL_SETS

from . import auth, learning, plots, remote, stats
from .api import error_response
from .registry import RegistryError
from .state import SyncState

log = logging.getLogger(__name__)

bp = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PUBLIC = frozenset(("admin.signin", "admin.signin_post", "admin.static"))
DATA = frozenset(("admin.jobs_json", "admin.drawing"))
UPLOAD_BYTES = 64 << 20  # a model and its manifest, uploaded to publish
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
NEXT_RE = re.compile(r"^/admin(/[A-Za-z0-9._-]*)*$")
FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.tflite$")
MODE_NAMES = {"digit": "digits", "char": "letters"}
CLASS_STATES = ("accepted", "approved", "quarantined", "rejected", "unscored")
CLASS_COLOURS = ("#1d4ed8", "#15803d", "#d97706", "#be123c", "#94a3b8")
PAGE_ITEMS = 60  # drawings on one page of the quarantine
PAGES = (
    ("admin.devices", "Devices"),
    ("admin.corrections", "Corrections"),
    ("admin.quarantine", "Quarantine"),
    ("admin.models", "Models"),
    ("admin.jobs", "Jobs"),
)


def state() -> SyncState:
    return current_app.extensions["hwr_sync"]


# ---- the gate: session, CSRF, headers -------------------------------------------------------


@bp.before_request
def _gate() -> Response | None:
    """Pages need a session (else the sign-in page); actions a session and a CSRF token."""
    if request.endpoint == "admin.publish":
        request.max_content_length = UPLOAD_BYTES
    if request.endpoint in PUBLIC:
        if request.method == "POST":
            auth.csrf.protect()
        return None
    s = auth.current_session(current_app)
    if s is None:
        if request.method == "GET" and request.endpoint not in DATA:
            target = request.path if NEXT_RE.match(request.path) else "/admin/"
            return redirect(url_for("admin.signin", next=target), 303)
        return error_response("unauthorized", "sign in to the dashboard first", 401)
    g.admin = s
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        auth.csrf.protect()
    return None


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(exc: RequestEntityTooLarge) -> Response:
    """An upload past UPLOAD_BYTES: said on the page the form is on, not as a bare error."""
    if request.endpoint == "admin.publish" and getattr(g, "admin", None) is not None:
        return _back(
            "admin.models", f"the upload is larger than {UPLOAD_BYTES / 2**20:g} MiB", "bad"
        )
    return error_response("too_large", "the request body is too large", 413)


@bp.errorhandler(CSRFError)
def _csrf_failed(exc: CSRFError) -> Response:
    return error_response(
        "csrf_failed", f"the form's CSRF token is not valid: {exc.description}", 403
    )


def _headers(resp: Response) -> Response:
    """Security headers on every /admin answer; pages and data never cached."""
    if not request.path.startswith("/admin"):
        return resp
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "same-origin"
    resp.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    resp.headers["Cross-Origin-Resource-Policy"] = "same-origin"
    if request.endpoint == "admin.static":
        resp.headers["Cache-Control"] = "no-cache"
    else:
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["Pragma"] = "no-cache"
    return resp


def _who() -> str:
    return g.admin.who


def _back(endpoint: str, message: str, kind: str = "ok", **values: Any) -> Response:
    flash(message, kind)
    return redirect(url_for(endpoint, **values), 303)


# ---- sign-in --------------------------------------------------------------------------------


@bp.get("/signin")
def signin() -> str:
    """The sign-in form (or, signed in already, a link onwards)."""
    return _signin_page()


def _signin_page(error: str = "", status: int = 200) -> Any:
    nxt = request.values.get("next", "")
    return (
        render_template(
            "admin/signin.html",
            error=error,
            next=nxt if NEXT_RE.match(nxt) else "",
            configured=bool(state().admin_token),
            signed_in=auth.current_session(current_app) is not None,
        ),
        status,
    )


@bp.post("/signin")
def signin_post() -> Any:
    """Check the admin token in constant time; a session on success, a limit on failures."""
    if not state().admin_token:
        return _signin_page("No admin token is configured on this server.", 403)
    limiter: auth.SignInLimiter = current_app.extensions["hwr_signin_limiter"]
    addr = auth.client_address(request)
    wait = limiter.wait(addr)
    if wait > 0:
        resp = current_app.make_response(
            _signin_page(f"Too many failed sign-ins: wait {int(wait) + 1} s and try again.", 429)
        )
        resp.headers["Retry-After"] = str(int(wait) + 1)
        return resp
    who = auth.clean_name(request.form.get("name"))
    if who is None:
        return _signin_page("A name is 1-40 letters, digits, spaces or . @ ' - _", 400)
    if not auth.token_matches(request.form.get("token", ""), state().admin_token):
        limiter.failed(addr)
        log.warning("a failed dashboard sign-in from %s", addr)
        return _signin_page("That is not the admin token.", 401)
    auth.start_session(current_app, who)
    log.info("dashboard sign-in by %s from %s", who, addr)
    nxt = request.form.get("next", "")
    return redirect(nxt if NEXT_RE.match(nxt) else url_for("admin.devices"), 303)


@bp.post("/signout")
def signout() -> Response:
    """End the session on the server and clear the cookie."""
    auth.end_session(current_app)
    flash("Signed out.", "ok")
    return redirect(url_for("admin.signin"), 303)


@bp.get("/static/<path:filename>")
def static(filename: str) -> Response:
    """The dashboard's stylesheet and script (web/admin/)."""
    return send_from_directory(web_dir() / "admin", filename, max_age=0)


# ---- pages ----------------------------------------------------------------------------------


def _page(template: str, **values: Any) -> str:
    return render_template(
        template, pages=PAGES, who=g.admin.who, now=time.time(), modes=MODE_NAMES, **values
    )


@bp.get("/")
def devices() -> str:
    """Devices: online, last seen, versions served, pending, agreement rate, tunnel link."""
    st = state()
    rows = stats.devices_overview(st.engine, lambda g: learning.current_by_mode(st, g))
    merged = learning.device_stats(st)
    for d in rows:
        d["merge"] = (merged or {}).get(d["name"], {})
    current = st.registry.current_by_mode()
    by_class = stats.corrections_by_class(st.engine)
    waiting = learning.quarantine(st, "open", limit=1)
    recent = learning.jobs(st)
    return _page(
        "admin/devices.html",
        devices=rows,
        current=current,
        merge_available=merged is not None,
        online_s=stats.ONLINE_S,
        totals={m: sum(n for _, n in by_class[m]) for m in by_class},
        waiting=None if waiting is None else waiting[1],
        last_job=recent[0] if recent else None,
        tunnel=current_app.extensions[remote.EXTENSION].status(),
        day_plot=plots.timeline(
            {MODE_NAMES[m]: pts for m, pts in stats.corrections_by_day(st.engine, 14).items()},
            "corrections per day, last 14 days",
            height=160,
        ),
    )


@bp.get("/corrections")
def corrections() -> str:
    """Corrections per class, per device and over time, as plots with their numbers."""
    st = state()
    by_class = stats.corrections_by_class(st.engine)
    by_device = stats.corrections_by_device(st.engine)
    by_day = stats.corrections_by_day(st.engine, days=30)
    detail = {mode: learning.class_counts(st, mode) for mode in stats.MODES}
    class_plots = {}
    for mode, items in by_class.items():
        title = f"corrections per class, {MODE_NAMES[mode]}"
        if detail[mode] is not None:
            class_plots[mode] = plots.columns(
                [(c["label"], [c[k] for k in CLASS_STATES]) for c in detail[mode]],
                CLASS_STATES,
                title,
                colours=CLASS_COLOURS,
            )
        else:
            class_plots[mode] = plots.columns([(lab, [n]) for lab, n in items], ["stored"], title)
    device_plot = plots.bars(
        [(d["device"], [d[m] for m in stats.MODES]) for d in by_device[:40]],
        [MODE_NAMES[m] for m in stats.MODES],
        "corrections per device",
    )
    day_plot = plots.timeline(
        {MODE_NAMES[m]: pts for m, pts in by_day.items()}, "corrections per day, last 30 days"
    )
    return _page(
        "admin/corrections.html",
        by_class=by_class,
        detail=detail,
        class_states=CLASS_STATES,
        by_device=by_device,
        by_day=by_day,
        class_plots=class_plots,
        device_plot=device_plot,
        day_plot=day_plot,
        totals={m: sum(n for _, n in by_class[m]) for m in by_class},
    )


@bp.get("/quarantine")
def quarantine() -> str:
    """Corrections held out of training, each drawn, to approve or reject."""
    st = state()
    show = request.args.get("show", "open")
    if show not in learning.QUARANTINE_TABS:
        show = "open"
    page = request.args.get("page", "1")
    page_no = int(page) if page.isdigit() and 0 < int(page) < 100_000 else 1
    found = learning.quarantine(st, show, limit=PAGE_ITEMS, offset=(page_no - 1) * PAGE_ITEMS)
    items, total = found if found is not None else (None, 0)
    return _page(
        "admin/quarantine.html",
        items=items,
        total=total,
        show=show,
        tabs=learning.QUARANTINE_TABS,
        page_no=page_no,
        pages_n=max(1, -(-total // PAGE_ITEMS)),
        decisions=learning.decisions(st, limit=30),
    )


@bp.get("/models")
def models() -> str:
    """Versions side by side: accuracy, per-class recall, confusion matrices, gate results."""
    st = state()
    versions = learning.versions(st)
    by_name: dict[str, list[dict]] = {}
    for v in versions:
        by_name.setdefault(v["name"], []).append(v)
    current = {c.name: c for c in st.registry.current_all().values()}
    charts: dict[str, Markup] = {}
    chart_tests: dict[str, str] = {}
    matrices: dict[tuple[str, str], Markup] = {}
    for name, vs in by_name.items():
        recall_of = {v["version"]: v["per_class_recall"] for v in vs}
        for v in vs:  # shaded against its parent as the gate compared them: on the same test
            same = v.get("parent_same_test")
            v["parent_recall"] = (
                same["per_class_recall"] if same else recall_of.get(v["parent"] or "", {})
            )
        charts[name], chart_test = _accuracy_chart(name, vs)
        chart_tests[name] = chart_test
        for v in vs:
            if v.get("confusion"):
                labels = v["confusion"]["labels"]
                matrices[(name, v["version"])] = plots.confusion(
                    labels, v["confusion"]["matrix"], f"{name} {v['version']}: confusion matrix"
                )
    groups = stats.device_groups(st.engine)
    return _page(
        "admin/models.html",
        by_name=by_name,
        current=current,
        charts=charts,
        chart_tests=chart_tests,
        matrices=matrices,
        labels={name: _labels_of(vs) for name, vs in by_name.items()},
        releases=stats.release_history(st.engine),
        rollout_available=learning.can_rollout(st),
        groups=groups,
    )


def _accuracy_chart(name: str, versions: list[dict]) -> tuple[Markup, str]:
    """Test accuracy by version, every point on one test: the newest version's. A parent
    measured otherwise (a shipped manifest's figure) is drawn as its child's job measured it."""
    if not versions:
        return plots.dots([], f"{name}: test accuracy"), ""
    test = versions[0].get("measured_on") or ""
    points: dict[str, float] = {}
    for v in reversed(versions):  # oldest first
        if (v.get("measured_on") or "") == test and v.get("accuracy") is not None:
            points[v["version"]] = v["accuracy"]
        same = v.get("parent_same_test")
        if same and (v.get("measured_on") or "") == test and v["parent"] not in points:
            points[v["parent"]] = same["accuracy"]
    order = [v["version"] for v in reversed(versions) if v["version"] in points]
    return plots.dots([(ver, points[ver]) for ver in order], f"{name}: test accuracy"), test


def _labels_of(versions: list[dict]) -> list[str]:
    mode = versions[0]["mode"] if versions else "digit"
    return list(LABEL_SETS[mode].labels) if mode in LABEL_SETS else []


@bp.get("/jobs")
def jobs() -> str:
    """Retraining jobs with live progress (the page polls /admin/jobs.json)."""
    st = state()
    names = sorted(c.name for c in st.registry.current_all().values())
    return _page(
        "admin/jobs.html",
        jobs=learning.jobs(st),
        jobs_available=learning.can_retrain(st),
        model_names=names,
        chosen=request.args.get("name", ""),  # the model of the last retrain asked for
    )


@bp.get("/jobs.json")
def jobs_json() -> Response:
    """The jobs as JSON, for the jobs page's live progress."""
    items = learning.jobs(state())
    return jsonify({"available": items is not None, "jobs": items or []})


@bp.get("/drawings/<uuid>.png")
def drawing(uuid: str) -> Response:
    """A stored correction's 28x28 model input as a PNG (white ink on black, as the model sees)."""
    if not UUID_RE.match(uuid):
        return error_response("not_found", "no such correction", 404)
    raw = stats.drawing(state().engine, uuid)
    if raw is None or len(raw) != 28 * 28 * 4:
        return error_response("not_found", "no such correction", 404)
    png = learning.drawing_png(raw)
    if png is None:
        pixels = np.clip(np.frombuffer(raw, dtype="<f4").reshape(28, 28), 0.0, 1.0)
        buf = io.BytesIO()
        Image.fromarray(np.rint(pixels * 255).astype(np.uint8), mode="L").save(buf, "PNG")
        png = buf.getvalue()
    return Response(png, mimetype="image/png")


# ---- actions --------------------------------------------------------------------------------


def _action(endpoint: str, fn: Callable[[], str], **back: Any) -> Response:
    """Run an action; its message (or the domain error's) shown on the page it came from."""
    try:
        message = fn()
    except HwrError as exc:
        return _back(endpoint, exc.message, "bad", **back)
    return _back(endpoint, message, **back)


@bp.post("/quarantine/decide")
def decide() -> Response:
    """Approve or reject the chosen quarantined corrections (recorded with who and when)."""
    one = request.form.get("one", "")
    if one:  # a drawing's own button: "approve:<uuid>" or "reject:<uuid>"
        decision, _, uuid = one.partition(":")
        ids = [uuid] if UUID_RE.match(uuid) else []
    else:
        ids = [i for i in request.form.getlist("ids") if UUID_RE.match(i)]
        decision = request.form.get("decision", "")

    def run() -> str:
        if decision not in ("approve", "reject"):
            raise HwrError("choose approve or reject", code="invalid_decision")
        if not ids:
            raise HwrError("choose at least one drawing", code="invalid_decision")
        n = learning.decide(state(), ids, decision, _who())
        done = "approved" if decision == "approve" else "rejected"
        return f"{n} correction{'s' if n != 1 else ''} {done} by {_who()}."

    return _action("admin.quarantine", run, show=request.form.get("show", "open"))


@bp.post("/models/rollback")
def rollback() -> Response:
    """Release an older stored version again (a new signed release, a higher sequence)."""
    name, version = request.form.get("name", ""), request.form.get("version", "")

    def run() -> str:
        c = state().registry.rollback(name, version, by=_who())
        return f"{c.name} {c.version} is the current release again (sequence {c.sequence})."

    return _action("admin.models", run)


@bp.post("/models/rollout")
def rollout() -> Response:
    """Release a stored version to one group of devices (or, with no group, to every device)."""
    name, version = request.form.get("name", ""), request.form.get("version", "")
    group = request.form.get("group", "").strip()

    def run() -> str:
        return learning.rollout(state(), name, version, group, _who())

    return _action("admin.models", run)


@bp.post("/models/publish")
def publish() -> Response:
    """Publish an uploaded manifest and model file (the manifest's sha256 is checked)."""
    manifest_file = request.files.get("manifest")
    model_file = request.files.get("model")

    def run() -> str:
        if manifest_file is None or model_file is None:
            raise HwrError(
                "choose a manifest (.json) and its model (.tflite)", code="invalid_model"
            )
        try:
            manifest = json.loads(manifest_file.read(1 << 20))
        except ValueError:
            raise RegistryError("the manifest is not JSON") from None
        fname = manifest.get("file") if isinstance(manifest, dict) else None
        if not isinstance(fname, str) or not FILE_RE.match(fname):
            raise RegistryError("the manifest must name its model file (a .tflite) in 'file'")
        uploads = state().config.data_dir / "uploads"
        uploads.mkdir(exist_ok=True)
        folder = Path(tempfile.mkdtemp(dir=uploads))
        try:
            (folder / "manifest.json").write_text(json.dumps(manifest))
            model_file.save(folder / fname)
            c = state().registry.publish(folder / "manifest.json", by=_who())
        except HwrError as exc:  # named as the admin named them, not by the server's paths
            shown = Path(manifest_file.filename or "the manifest").name
            message = exc.message.replace(str(folder / "manifest.json"), shown)
            raise HwrError(message.replace(f"{folder}{os.sep}", ""), code=exc.code) from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return f"{c.name} {c.version} is published and current (sequence {c.sequence})."

    return _action("admin.models", run)


@bp.post("/jobs/retrain")
def retrain() -> Response:
    """Start (or join) a retraining job for one model."""
    name = request.form.get("name", "")

    def run() -> str:
        return learning.retrain(state(), name, _who())

    return _action("admin.jobs", run, name=name[:100])


# ---- registration ---------------------------------------------------------------------------


def _fmt_time(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "never"


def _ago(t: float | None, now: float | None = None) -> str:
    if not t:
        return "never"
    s = max(0.0, (now or time.time()) - t)
    if s < 90:
        return f"{s:.0f} s ago"
    if s < 90 * 60:
        return f"{s / 60:.0f} min ago"
    if s < 36 * 3600:
        return f"{s / 3600:.0f} h ago"
    return f"{s / 86400:.0f} days ago"


def _pct(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v * 100:.{digits}f}%"


def _iso(t: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else ""


def init_app(app: Flask) -> None:
    """Register the dashboard: sign-in and sessions, pages, filters, security headers."""
    from . import device_admin  # noqa: F401  (its routes join the blueprint before it registers)

    auth.init_app(app, app.config["HWR_CONFIG"])
    # A model upload is larger than the device API's bodies: the worker hands it to a thread once
    # its headers are in, and the gate checks the session before any of it is read.
    app.config["HWR_STREAMED_PATHS"] = ("/admin/models/publish",)
    app.register_blueprint(bp)
    app.add_template_filter(_fmt_time, "when")
    app.add_template_filter(_ago, "ago")
    app.add_template_filter(_pct, "pct")
    app.add_template_filter(_iso, "iso")
    app.after_request(_headers)


__all__ = ["bp", "init_app"]
