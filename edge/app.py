"""The edge process's Flask app: ``create_app(config)`` opens models and stores; nothing at import.

Routes (the wire protocol of ../shared/DESIGN.md; every error is ``{"error": {code, message}}``):

* ``GET /`` - the canvas page (web/index.html); ``GET /static/<path>`` - its assets (web/static/).
* ``POST /api/predict`` - ``{"mode": "digit"|"char", "strokes": [[[x, y], ...], ...]}`` or
  ``{"mode", "image": "<base64 PNG>"}`` -> ``{"id", "label", "confidence", "top", "source",
  "model": {"name", "version"}, "ms"}``.
* ``POST /api/correct`` - ``{"id": "<prediction id>", "label": "7"}`` or ``{"mode",
  "strokes"|"image", "label"}`` -> ``{"correction_id", "stored": true}``, sent only once the
  correction is durable on disk.
* ``POST /predict``, ``POST /correct`` - the seed paper's endpoints (see edge/api.py).
* ``GET /ws`` - WebSocket: ``{"type": "predict"|"correct"|"health", "seq": n, ...}`` answered by
  ``{"type": "prediction"|"corrected"|"health"|"error", "seq": n, ...}`` (see edge/ws.py).
* ``GET /healthz`` - ``{"status", "models": {mode: {"name", "version", "labels"}}, "corrections":
  {mode: store stats}, "pending", "sync", "tunnel", "viewers", "uptime_s"}``; ``sync`` is the
  sync client's status (edge/sync.py), ``{"state": "off"}`` when no ``sync_url`` is set;
  ``tunnel`` is ``{"state", "url", "error", "viewer_url"}`` with ``--tunnel``, else ``{"state":
  "off"}``; ``viewers`` counts who watches now.
* ``/viewer`` and below - the live read-only viewer (edge/viewer.py), the only routes a tunnel's
  host reaches (edge/remote.py opens the tunnel with ``--tunnel``).

With ``sync_url`` set the factory also starts an :class:`edge.sync.SyncClient` (kept at
``ctx.sync``; its heartbeats feed model delivery) and :func:`close_app` stops it first.

The long-lived state (both models, both correction stores, the personalisers, the recent
predictions) is an ``edge.messages.Context`` kept at ``app.extensions["hwr"]``;
:func:`close_app` closes it (the server calls it on shutdown).
"""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask

from hwrcore.store import CorrectionStore

from . import api, viewer, ws
from .config import EdgeConfig, load_config
from .delivery import ModelUpdater
from .installed import (
    describe,
    keep_embeddings,
    open_installed,
    personaliser_for,
    public_key_of,
)
from .messages import Context, RecentPredictions
from .models import LoadedModel, load_models
from .personal import Personaliser
from .sync import SyncClient

log = logging.getLogger(__name__)

STORE_FILES = {"digit": "custom_digits.h5", "char": "custom_characters.h5"}
# simple-websocket closes a socket whose message exceeds this many times the answered limit.
WS_HARD_LIMIT_FACTOR = 4


def store_path(data_dir: str | Path, mode: str) -> Path:
    """Where a mode's corrections live in the data directory."""
    return Path(data_dir) / STORE_FILES[mode]


def _personaliser(model: LoadedModel, store: CorrectionStore, cap: int) -> Personaliser:
    """A personaliser for one mode, loaded with the newest ``cap`` stored corrections.

    Corrections embedded by another model version are embedded again by this one (see
    :func:`edge.installed.personaliser_for`) and the new vectors kept in the store.
    """
    embedded = personaliser_for(model, store, cap)
    keep_embeddings(model, store, embedded.redone)
    log.info("%s", describe(model, embedded))
    return embedded.personaliser


def open_context(config: EdgeConfig) -> Context:
    """Load both models, open both stores and build the personalisers; closes what it opened on error.

    With a sync server configured, a model installed by delivery (state.json) serves where it
    verifies and loads, else the shipped one; the context's ``delivery`` is then the
    :class:`edge.delivery.ModelUpdater` (not started: :func:`create_app` starts it).
    """
    models = load_models(config.models_dir, config.model_threads)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    startup = None
    if config.sync_enabled:
        startup = open_installed(config, models, public_key_of(config))
        models = startup.models
    stores: dict[str, CorrectionStore] = {}
    try:
        for mode in models:
            stores[mode] = CorrectionStore(
                store_path(config.data_dir, mode),
                cap=config.correction_cap,
                pending_limit=config.pending_limit,
            )
        personalisers = {
            mode: _personaliser(models[mode], stores[mode], config.correction_cap)
            for mode in models
        }
        ctx = Context(
            models=models,
            stores=stores,
            personalisers=personalisers,
            recent=RecentPredictions(config.recent_predictions),
        )
        if startup is not None:
            ctx.delivery = ModelUpdater.from_config(config, ctx, startup)
    except BaseException:
        for store in stores.values():
            store.close()
        raise
    return ctx


def create_app(config: EdgeConfig | None = None) -> Flask:
    """The edge app on ``config`` (defaults and HWR_EDGE_* variables when None)."""
    if config is None:
        config = load_config()
    log.info("effective config: %s", config.to_dict())
    app = Flask(__name__, static_folder=None)
    app.config.update(
        MAX_CONTENT_LENGTH=config.max_body_bytes,
        MAX_FORM_MEMORY_SIZE=config.max_body_bytes,
        SOCK_SERVER_OPTIONS={
            "max_message_size": config.ws_max_message_bytes * WS_HARD_LIMIT_FACTOR,
            "ping_interval": 25,
        },
        HWR_CONFIG=config,
    )
    if config.sync_enabled:
        config.device_token()  # no token: ConfigError before anything is opened
    app.extensions["hwr"] = open_context(config)
    api.init_app(app)
    ws.init_app(app)
    app.extensions["hwr"].viewers = viewer.init_app(app)
    delivery = app.extensions["hwr"].delivery
    if delivery is not None:
        delivery.start()
    if config.tunnel:
        from .remote import open_tunnel

        app.extensions["hwr"].tunnel = open_tunnel(app, config)
    if config.sync_enabled:
        _start_sync(config, app.extensions["hwr"])
    return app


def _start_sync(config: EdgeConfig, ctx: Context) -> None:
    """Upload corrections and send heartbeats in the background; heartbeats feed delivery."""
    delivery = ctx.delivery
    ctx.sync = SyncClient(
        config,
        ctx.stores,
        models_info=lambda: {mode: m.info for mode, m in ctx.models.items()},
        on_models=delivery.on_models if delivery is not None else None,
    )
    # The viewer's public link in each heartbeat ('' without a tunnel: the dashboard drops it).
    ctx.sync.tunnel_url = lambda: ctx.tunnel.viewer_url() if ctx.tunnel is not None else ""
    if delivery is not None:  # its notify socket opening again means the server is back
        delivery.on_server_back = ctx.sync.retry_now
    ctx.sync.start()


def close_app(app: Flask) -> None:
    """Close what ``create_app`` opened: refuse new work, then close the stores."""
    ctx: Context | None = app.extensions.get("hwr")
    if ctx is not None:
        if ctx.tunnel is not None:
            ctx.tunnel.close()  # the ngrok agent with it
        if ctx.viewers is not None:
            ctx.viewers.close()
        if ctx.sync is not None:
            ctx.sync.stop()
        ctx.close()


__all__ = ["close_app", "create_app", "open_context", "store_path"]
