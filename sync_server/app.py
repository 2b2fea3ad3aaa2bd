"""The sync server's Flask app: ``create_app(config)`` opens the database and registry; nothing at import.

Routes (docs/sync.md; every error is ``{"error": {"code", "message"}}``), all under ``/api/v1/``
with a bearer token: ``POST corrections``, ``POST heartbeat``, ``GET models``, ``GET
models/<name>/<version>``, the WebSocket ``GET notify``, and ``GET admin/summary`` (admin token).
The long-lived state is a :class:`sync_server.state.SyncState` kept at
``app.extensions["hwr_sync"]``; :func:`close_app` closes it.
"""

from __future__ import annotations

import logging

from flask import Flask

from . import admin_api, api, dashboard, remote
from .config import SyncConfig, load_config
from .jobs import JobQueue
from .notify import Notifier
from .ratelimit import RateLimiter
from .state import SyncState, open_state

log = logging.getLogger(__name__)


def create_app(config: SyncConfig | None = None) -> Flask:
    """The sync server on ``config`` (defaults and HWR_SYNC_* variables when None)."""
    if config is None:
        config = load_config()
    log.debug("effective config: %s", config.to_dict())  # serve logs it once, at INFO
    st = open_state(config)
    try:
        st.limiter = RateLimiter(config.rate_per_second, config.rate_burst)
        st.notifier = Notifier(st.registry, config.release_poll_interval).start()
        st.jobs = JobQueue(config)
        app = Flask(__name__, static_folder=None)
        app.config.update(
            MAX_CONTENT_LENGTH=config.max_body_bytes,
            MAX_FORM_MEMORY_SIZE=config.max_body_bytes,
            SOCK_SERVER_OPTIONS={"max_message_size": 64 << 10, "ping_interval": 25},
            HWR_CONFIG=config,
        )
        app.extensions["hwr_sync"] = st
        api.init_app(app)
        admin_api.init_app(app)  # /api/v1/admin/: quarantine, jobs, versions, rollout
        dashboard.init_app(app)  # /admin: sign-in, pages, actions
        remote.init_app(app)  # GET /api/v1/admin/tunnel; the dashboard's tunnel state
    except BaseException:
        st.close()
        raise
    return app


def close_app(app: Flask) -> None:
    """Close what ``create_app`` opened: refuse new work, stop the notifier, close the database."""
    st: SyncState | None = app.extensions.get("hwr_sync")
    if st is not None:
        st.close()


__all__ = ["close_app", "create_app"]
