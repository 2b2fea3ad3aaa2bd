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
  {mode: store stats}, "pending", "uptime_s"}``.

The long-lived state (both models, both correction stores, the personalisers, the recent
predictions) is an ``edge.messages.Context`` kept at ``app.extensions["hwr"]``;
:func:`close_app` closes it (the server calls it on shutdown).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from flask import Flask

from hwrcore.errors import HwrError
from hwrcore.store import CorrectionStore

from . import api, ws
from .config import EdgeConfig, load_config
from .messages import Context, RecentPredictions
from .models import LoadedModel, load_models
from .personal import Personaliser

log = logging.getLogger(__name__)

STORE_FILES = {"digit": "custom_digits.h5", "char": "custom_characters.h5"}
# simple-websocket closes a socket whose message exceeds this many times the answered limit.
WS_HARD_LIMIT_FACTOR = 4


def store_path(data_dir: str | Path, mode: str) -> Path:
    """Where a mode's corrections live in the data directory."""
    return Path(data_dir) / STORE_FILES[mode]


def _personaliser(model: LoadedModel, store: CorrectionStore, cap: int) -> Personaliser:
    """A personaliser for one mode, loaded with the newest ``cap`` stored corrections.

    A correction embedded by another model version carries that model's embedding, which means
    nothing to this one: its stored model input is run through this model instead, so a model
    update keeps what the device has learnt from its pupils. The new embeddings are written
    back to the store, so only the first start after an update pays for them.
    """
    p = Personaliser(model.labels, cap=cap)
    version = model.manifest.version
    dim = int(model.manifest.outputs["embedding"].shape[-1])
    rows = store.newest(cap)
    vectors: list[np.ndarray] = []
    redone: dict[str, np.ndarray] = {}
    for c in rows:
        emb = c.embedding
        if c.embedded_by != version or emb is None or emb.shape != (dim,):
            emb = redone[c.id] = model.classifier.predict(c.image).embedding
        vectors.append(np.asarray(emb, dtype=np.float32).reshape(dim))
    if vectors:
        p.load(np.stack(vectors), [c.label for c in rows])
    if redone:
        try:
            store.set_embeddings(version, redone)
        except HwrError as e:  # the personaliser has them; the next start computes them again
            log.warning("could not keep the new embeddings of %r: %s", model.mode, e)
    log.info(
        "personalisation for %r: %d stored corrections (%d embedded again by %s %s)",
        model.mode,
        len(p),
        len(redone),
        model.manifest.name,
        version,
    )
    return p


def open_context(config: EdgeConfig) -> Context:
    """Load both models, open both stores and build the personalisers; closes what it opened on error."""
    models = load_models(config.models_dir, config.model_threads)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    stores: dict[str, CorrectionStore] = {}
    try:
        for mode in models:
            stores[mode] = CorrectionStore(
                store_path(config.data_dir, mode), cap=config.correction_cap
            )
        personalisers = {
            mode: _personaliser(models[mode], stores[mode], config.correction_cap)
            for mode in models
        }
    except BaseException:
        for store in stores.values():
            store.close()
        raise
    return Context(
        models=models,
        stores=stores,
        personalisers=personalisers,
        recent=RecentPredictions(config.recent_predictions),
    )


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
    app.extensions["hwr"] = open_context(config)
    api.init_app(app)
    ws.init_app(app)
    return app


def close_app(app: Flask) -> None:
    """Close what ``create_app`` opened: refuse new work, then close the stores."""
    ctx: Context | None = app.extensions.get("hwr")
    if ctx is not None:
        ctx.close()


__all__ = ["close_app", "create_app", "open_context", "store_path"]
