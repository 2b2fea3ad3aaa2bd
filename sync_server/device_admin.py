"""The dashboard's device actions: add a device, give one a new token, revoke one.

``/admin/devices/add`` and ``/admin/devices/new-token`` answer with the device's settings and its
token: the token is shown once, on that answer alone (never redirected: the session cookie is
signed, not secret, so it never holds one; every /admin answer is ``no-store``). The server keeps
the token's hash only. ``/admin/devices/revoke`` redirects back to the devices page with a
message. Each is behind the dashboard's session and CSRF token, and logged with who did it.
"""

from __future__ import annotations

import logging

from flask import Response, request

from hwrcore import release as rel
from hwrcore.errors import HwrError

from . import devices as registered
from .dashboard import _action, _back, _page, _who, bp, state

log = logging.getLogger(__name__)


@bp.post("/devices/add")
def add_device() -> Response | str:
    """Register a device; its token is on this answer alone (never stored, never redirected)."""
    name = request.form.get("name", "").strip()
    group = request.form.get("group", "").strip() or None
    try:
        token = registered.add_device(state().engine, name, group)
    except HwrError as exc:
        return _back("admin.devices", exc.message, "bad")
    log.info("device %s added by %s", name, _who())
    return _token_page(
        name, token, f"{name} is registered" + (f" in group {group}." if group else ".")
    )


@bp.post("/devices/new-token")
def new_token() -> Response | str:
    """Give a device a new token (the old one is refused at once; a revoked device is active)."""
    name = request.form.get("name", "")
    try:
        token = registered.new_token(state().engine, name)
    except HwrError as exc:
        return _back("admin.devices", exc.message, "bad")
    log.info("device %s given a new token by %s", name, _who())
    return _token_page(name, token, f"{name} has a new token; its old one no longer works.")


def _token_page(name: str, token: str, done: str) -> str:
    """The settings a device needs, its token among them: shown once, never cached."""
    return _page(
        "admin/token.html",
        name=name,
        token=token,
        done=done,
        public_key=rel.public_key_text(state().key),
        server_url=request.host_url.rstrip("/"),
    )


@bp.post("/devices/revoke")
def revoke_device() -> Response:
    """Revoke a device's token: it can no longer send corrections or fetch models."""
    name = request.form.get("name", "")

    def run() -> str:
        registered.revoke_device(state().engine, name)
        log.info("device %s revoked by %s", name, _who())
        return f"{name} is revoked; give it a new token to let it sync again."

    return _action("admin.devices", run)
