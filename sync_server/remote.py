"""Remote access to the sync server: ``hwr-sync-server serve --tunnel`` opens an ngrok tunnel.

Every route behind the tunnel needs a token: the device API a device token (always), the admin
routes and the dashboard the admin token. So :func:`check_tunnel` refuses the tunnel (the
process exits 2 with one line) unless the admin token is set and an ngrok auth token is found
(``NGROK_AUTHTOKEN`` or ``ngrok_token_file``). The supervising process runs the tunnel, one
agent however many workers serve, in the background (hwrcore/tunnel.py: start-up never waits;
offline it fails with one line after ``tunnel_timeout`` seconds and the server keeps serving
locally), and closes it, the agent with it, when it stops. It writes the tunnel's state to
``<data_dir>/tunnel.json``; the workers read it for ``GET /api/v1/admin/tunnel`` (admin token)
and for the dashboard (``app.extensions["hwr_tunnel"].status()``).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify

from hwrcore.leftover_agent import AGENT_PID_FILE
from hwrcore.tunnel import (
    Tunnel,
    options_from_settings,
    read_auth_token,
    require_authentication,
    start_tunnel,
    traffic_policy,
)

from .config import SyncConfig

log = logging.getLogger(__name__)

STATE_FILE = "tunnel.json"
EXTENSION = "hwr_tunnel"
WHAT = "the sync server's admin routes and dashboard (no admin token is set)"
OFF = {"state": "off", "url": None, "error": None}


def tunnel_options(config: SyncConfig) -> dict[str, Any]:
    """The Tunnel's options from the settings: agent path, region, ngrok-enforced protection."""
    return options_from_settings(config)


def check_tunnel(config: SyncConfig) -> None:
    """Refuse ``--tunnel`` before start-up unless the admin token is set and ngrok has a token."""
    require_authentication(bool(config.admin_secret()), WHAT)
    read_auth_token(config.ngrok_token_file or None)
    opts = tunnel_options(config)
    traffic_policy(
        basic_auth=opts["basic_auth"],
        oauth_provider=opts["oauth_provider"],
        allow_emails=opts["allow_emails"],
        ip_allow=opts["ip_allow"],
    )


class TunnelState:
    """The tunnel's state as the supervising process last wrote it, read by every worker."""

    def __init__(self, data_dir: Path):
        self.path = Path(data_dir) / STATE_FILE
        self._cache: tuple[int, dict] | None = None
        self._lock = threading.Lock()

    def write(self, status: dict[str, Any]) -> None:
        """Replace the state file at once (a reader sees the old state or the new one)."""
        fd, tmp = tempfile.mkstemp(prefix=".tunnel.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({k: status.get(k) for k in OFF}, f)
            os.chmod(tmp, 0o600)  # the server's own workers read it: its user alone
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def status(self) -> dict[str, Any]:
        """``{"state", "url", "error"}``; off when no tunnel was asked for."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError:
            return dict(OFF)
        with self._lock:
            if self._cache is not None and self._cache[0] == mtime:
                return dict(self._cache[1])
            try:
                value = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return dict(OFF)
            status = {k: value.get(k) for k in OFF}
            self._cache = (mtime, status)
            return dict(status)


def open_tunnel(config: SyncConfig, port: int) -> Tunnel:
    """In the supervising process: start the tunnel, its state written to the state file."""
    state = TunnelState(config.data_dir)
    state.write({"state": "starting"})

    def on_change(tunnel: Tunnel) -> None:
        state.write(tunnel.status())
        if tunnel.url:
            log.info("remote server: %s (dashboard %s/admin/)", tunnel.url, tunnel.url)

    return start_tunnel(
        port,
        protected=bool(config.admin_secret()),
        what=WHAT,
        token_file=config.ngrok_token_file or None,
        on_change=on_change,
        pid_file=Path(config.data_dir) / AGENT_PID_FILE,
        **tunnel_options(config),
    )


def no_tunnel(config: SyncConfig) -> None:
    """Say no tunnel runs (a state file left by an earlier run must not name an old URL)."""
    TunnelState(config.data_dir).write(OFF)


def forget_inherited_agent() -> None:
    """In a forked worker: pyngrok's exit hook, inherited from the supervisor, must not kill the
    supervisor's agent when this worker exits."""
    process = sys.modules.get("pyngrok.process")
    if process is not None:
        atexit.unregister(process._terminate_process)


def tunnel_status() -> Response:
    """``GET /api/v1/admin/tunnel``: the tunnel's state and public URL (admin token)."""
    from flask import current_app

    from .api import admin_refusal

    refusal = admin_refusal()
    if refusal is not None:
        return refusal
    return jsonify(current_app.extensions[EXTENSION].status())


def init_app(app: Flask) -> TunnelState:
    """The tunnel's state for the workers' routes and the dashboard."""
    state = TunnelState(app.config["HWR_CONFIG"].data_dir)
    app.extensions[EXTENSION] = state
    app.add_url_rule("/api/v1/admin/tunnel", "tunnel_status", tunnel_status, methods=["GET"])
    return state


__all__ = [
    "TunnelState",
    "check_tunnel",
    "forget_inherited_agent",
    "init_app",
    "no_tunnel",
    "open_tunnel",
    "tunnel_options",
]
