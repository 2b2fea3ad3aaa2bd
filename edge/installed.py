"""Installed models and the trust state of model delivery: what a device serves and why.

``<data_dir>/models/`` holds one folder per installed release (``<name>-<version>/`` with its
.tflite and manifest) and ``state.json``: per mode the highest release sequence trusted, the
release serving and the previous one (kept for rollback). :func:`open_installed` loads at start
what ``state.json`` names where it still verifies (signature, sha256, the model loads), and
falls back to the shipped model where it does not. :func:`probe` is the last check a new model
passes before it serves, and :func:`personaliser_for` builds its personaliser from the stored
corrections. :mod:`edge.delivery` fetches releases and swaps them in with these.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hwrcore.errors import HwrError
from hwrcore.files import fsync_dir, write_json
from hwrcore.manifest import Manifest
from hwrcore.release import (
    IncompatibleRelease,
    MalformedRelease,
    Release,
    load_public_key,
    verify_file,
    verify_release,
)

from .config import ConfigError, EdgeConfig
from .models import LoadedModel, load_model
from .personal import Personaliser

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from hwrcore.store import CorrectionStore

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
STATE_SCHEMA = 1
PROBE_SUM_TOLERANCE = 0.1  # int8 probabilities sum to 1 within their quantisation steps
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


class DeliveryError(HwrError):
    """Model delivery failed for a reason that is not the release's own (server, disk)."""

    code = "delivery_failed"


class InstallError(DeliveryError):
    """A verified model file that cannot be installed or loaded."""

    code = "install_failed"


class ProbeFailed(InstallError):
    """A new model whose outputs on probe inputs are not usable (shape, NaN, not a distribution)."""

    code = "probe_failed"


# -- personalisation with a model's embeddings -----------------------------------------------
@dataclass
class Embedded:
    """A personaliser loaded with stored corrections, which ones, and the vectors made anew."""

    personaliser: Personaliser
    ids: frozenset[str]
    redone: dict[str, np.ndarray]


def personaliser_for(model: LoadedModel, store: CorrectionStore, cap: int) -> Embedded:
    """A personaliser for ``model`` loaded with the newest ``cap`` stored corrections.

    A correction embedded by another model version carries that model's embedding, which means
    nothing to this one: its stored model input is run through this model instead, so a model
    update keeps what the device has learnt from its pupils. :func:`keep_embeddings` writes the
    new vectors back so that only the first start after an update pays for them.
    """
    p = Personaliser(model.labels, cap=cap)
    version = model.manifest.version
    dim = int(model.manifest.outputs["embedding"].shape[-1])
    rows = store.newest_vectors(cap)  # standing corrections only; no strokes are read
    vectors: list[np.ndarray] = []
    redone: dict[str, np.ndarray] = {}
    for c in rows:
        emb = c.embedding
        if c.embedded_by != version or emb is None or emb.shape != (dim,):
            emb = redone[c.id] = model.classifier.predict(c.image).embedding
        vectors.append(np.asarray(emb, dtype=np.float32).reshape(dim))
    if vectors:
        p.load(np.stack(vectors), [c.label for c in rows], [c.id for c in rows])
    return Embedded(p, frozenset(c.id for c in rows), redone)


def describe(model: LoadedModel, embedded: Embedded) -> str:
    """One log line's worth about a personaliser just built."""
    return (
        f"personalisation for {model.mode!r}: {len(embedded.personaliser)} stored corrections "
        f"({len(embedded.redone)} embedded again by {model.manifest.name} "
        f"{model.manifest.version})"
    )


def keep_embeddings(model: LoadedModel, store: CorrectionStore, redone: dict) -> None:
    """Write vectors made by ``model`` back to the store; a failure only costs a later start."""
    if not redone:
        return
    try:
        store.set_embeddings(model.manifest.version, redone)
    except HwrError as e:  # the personaliser has them; the next start computes them again
        log.warning("could not keep the new embeddings of %r: %s", model.mode, e)


# -- the trust state ----------------------------------------------------------------------------
class TrustState:
    """``state.json``: per mode the trusted sequence, the serving version and the previous one.

    ``{"schema": 1, "modes": {mode: {"trusted_sequence": n, "serving": entry | null,
    "previous": entry | null}}}``, an entry being ``{"name", "version", "sha256", "length",
    "dir" (a folder in the state dir, or null for the shipped model), "release" (the signed
    document, or null), "installed" (unix time)}``.
    """

    def __init__(self, path: Path, modes: dict[str, dict[str, Any]] | None = None):
        self.path = path
        self.modes: dict[str, dict[str, Any]] = modes or {}

    @classmethod
    def load(cls, path: Path) -> TrustState:
        """The saved state; an empty one when there is none; DeliveryError when unreadable."""
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text())
            if data.get("schema") != STATE_SCHEMA or not isinstance(data.get("modes"), dict):
                raise ValueError(f"schema {data.get('schema')!r}")
            modes = {str(m): dict(v) for m, v in data["modes"].items()}
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            raise DeliveryError(f"{path} cannot be read ({exc})", code="bad_state") from None
        return cls(path, modes)

    def mode(self, mode: str) -> dict[str, Any]:
        return self.modes.setdefault(
            mode, {"trusted_sequence": 0, "serving": None, "previous": None}
        )

    def trusted(self, mode: str) -> int:
        return int(self.modes.get(mode, {}).get("trusted_sequence") or 0)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, {"schema": STATE_SCHEMA, "modes": self.modes})


def entry_for(release: Release, doc: dict | None, folder: str | None) -> dict[str, Any]:
    return {
        "name": release.name,
        "version": release.version,
        "sha256": release.sha256,
        "length": release.length,
        "dir": folder,
        "release": doc,
        "installed": time.time(),
    }


def shipped_entry(model: LoadedModel) -> dict[str, Any]:
    m = model.manifest
    return {"name": m.name, "version": m.version, "sha256": m.sha256, "dir": None}


# -- checks of what a release names -----------------------------------------------------------
def folder_name(release: Release) -> str:
    if not (_NAME.match(release.name) and _NAME.match(release.version)):
        raise IncompatibleRelease(
            f"release name {release.name!r} or version {release.version!r} cannot name a folder"
        )
    return f"{release.name}-{release.version}"


def model_file(manifest: Manifest) -> str:
    f = manifest.file
    if not (_NAME.match(f) and f.endswith(".tflite")):
        raise IncompatibleRelease(f"the release's model file {f!r} is not a plain .tflite name")
    return f


def probe(model: LoadedModel, images: list[np.ndarray]) -> None:
    """Run ``model`` on zeros, ones and ``images``: shapes right, finite, a distribution."""
    n = len(model.labels)
    dim = int(model.manifest.outputs["embedding"].shape[-1])
    inputs = [np.zeros((28, 28), np.float32), np.ones((28, 28), np.float32), *images]
    for i, x in enumerate(inputs):
        try:
            pred = model.classifier.predict(x)
        except (RuntimeError, ValueError) as exc:
            raise ProbeFailed(f"probe {i} failed to run: {exc}") from None
        p, e = np.asarray(pred.probabilities), np.asarray(pred.embedding)
        if p.shape != (n,) or e.shape != (dim,):
            raise ProbeFailed(f"probe {i}: outputs {p.shape} and {e.shape}, want ({n},), ({dim},)")
        if not (np.all(np.isfinite(p)) and np.all(np.isfinite(e))):
            raise ProbeFailed(f"probe {i}: outputs are not finite")
        if p.min() < -1e-6 or abs(float(p.sum()) - 1.0) > PROBE_SUM_TOLERANCE:
            raise ProbeFailed(f"probe {i}: probabilities sum to {float(p.sum()):.3f}, not 1")


# -- start-up -----------------------------------------------------------------------------------
@dataclass
class Startup:
    """What :func:`open_installed` found: the models to serve, the trust state, what failed."""

    models: dict[str, LoadedModel]
    trust: TrustState
    problems: list[dict[str, Any]]


def public_key_of(config: EdgeConfig) -> Ed25519PublicKey:
    """The pinned server key of ``config``; ConfigError when sync is on and it is unusable."""
    try:
        return load_public_key(config.sync_public_key)
    except MalformedRelease as exc:
        raise ConfigError(
            f"sync_url is set, so sync_public_key must be the server's key: {exc.message}"
        ) from None


def state_dir(config: EdgeConfig) -> Path:
    """Where installed models and state.json live."""
    return Path(config.data_dir) / "models"


def open_installed(
    config: EdgeConfig, shipped: dict[str, LoadedModel], key: Ed25519PublicKey
) -> Startup:
    """The installed model named by state.json for each mode, where it verifies and loads.

    A damaged or unloadable one is logged, reported, and the shipped model serves instead; the
    trusted sequence stays, so an old release cannot be replayed after a fallback.
    """
    root = state_dir(config)
    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.glob(".staging-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    problems: list[dict[str, Any]] = []
    try:
        trust = TrustState.load(root / STATE_FILE)
    except DeliveryError as exc:
        log.error("model delivery: %s; serving the shipped models", exc)
        problems.append(problem("*", None, exc.code, exc.message))
        trust = TrustState(root / STATE_FILE)
    models = dict(shipped)
    for mode, m in shipped.items():
        entry = trust.modes.get(mode, {}).get("serving")
        if not entry or not entry.get("dir"):
            continue
        try:
            release = verify_release(entry.get("release"), key, mode=mode, labels=m.labels)
            folder = root / folder_name(release)
            if entry.get("dir") != folder.name:
                raise IncompatibleRelease(f"state.json names {entry.get('dir')!r} for {folder}")
            verify_file(release, folder / model_file(release.manifest_object()))
            loaded = load_model(folder, mode, config.model_threads)
            if loaded.manifest.sha256 != release.sha256:
                raise IncompatibleRelease("the installed manifest is not the release's")
        except HwrError as exc:
            version = entry.get("version")
            log.error(
                "installed model %s %s for %r cannot serve (%s); the shipped %s %s serves",
                entry.get("name"),
                version,
                mode,
                exc.message,
                m.manifest.name,
                m.manifest.version,
            )
            problems.append(problem(mode, version, exc.code, f"at start: {exc.message}"))
            continue
        log.info("installed model %s %s serves mode %r", release.name, release.version, mode)
        models[mode] = loaded
    return Startup(models, trust, problems)


def problem(mode: str, version: str | None, code: str, reason: str) -> dict[str, Any]:
    return {"mode": mode, "version": version, "code": code, "reason": reason, "at": time.time()}


__all__ = [
    "STATE_FILE",
    "DeliveryError",
    "Embedded",
    "InstallError",
    "ProbeFailed",
    "Startup",
    "TrustState",
    "describe",
    "entry_for",
    "folder_name",
    "fsync_dir",
    "keep_embeddings",
    "model_file",
    "open_installed",
    "personaliser_for",
    "probe",
    "problem",
    "public_key_of",
    "shipped_entry",
    "state_dir",
    "write_json",
]
