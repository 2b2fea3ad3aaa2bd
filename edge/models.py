"""The two shipped models, loaded once at start: digits.json (mode 'digit'), characters.json ('char').

Each manifest names its labels, its preprocessing style and its model file's sha256; a missing
file or a failed check stops the start with a message naming the file. Never imports TensorFlow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hwrcore.errors import HwrError
from hwrcore.manifest import Manifest, load_manifest

if TYPE_CHECKING:
    from .classifier import Classifier

log = logging.getLogger(__name__)

# Wire mode -> manifest file in the models directory, and the style that model was trained for.
MODEL_FILES = {"digit": "digits.json", "char": "characters.json"}
EXPECTED_STYLE = {"digit": "mnist", "char": "emnist"}


class ModelLoadError(HwrError):
    """A shipped model that is missing, fails its checks, or cannot be loaded; names the file."""

    code = "model_unavailable"


@dataclass(frozen=True)
class LoadedModel:
    """One mode's classifier with what the wire reports about it."""

    mode: str
    classifier: Classifier

    @property
    def manifest(self) -> Manifest:
        return self.classifier.manifest

    @property
    def labels(self) -> list[str]:
        return self.classifier.labels

    @property
    def style(self) -> str:
        return self.classifier.manifest.style

    @property
    def info(self) -> dict[str, str]:
        """``{"name", "version"}`` as answers and /healthz carry it."""
        return {"name": self.manifest.name, "version": self.manifest.version}


def manifest_path(models_dir: str | Path, mode: str) -> Path:
    """Where a mode's manifest lives in a models directory."""
    return Path(models_dir) / MODEL_FILES[mode]


def _check_manifest(path: Path, mode: str, manifest: Manifest) -> None:
    if manifest.mode != mode:
        raise ModelLoadError(f"{path} is a model for mode {manifest.mode!r}, expected {mode!r}")
    if manifest.style != EXPECTED_STYLE[mode]:
        log.warning(
            "%s uses preprocessing style %r (the %s model usually uses %r)",
            path,
            manifest.style,
            mode,
            EXPECTED_STYLE[mode],
        )


def check_models(models_dir: str | Path) -> dict[str, Manifest]:
    """Read and verify (sha256) both manifests without loading an interpreter; ModelLoadError if not."""
    out = {}
    for mode in MODEL_FILES:
        path = manifest_path(models_dir, mode)
        if not path.is_file():
            raise ModelLoadError(f"model manifest not found: {path}")
        try:
            manifest = load_manifest(path, verify=True)
        except HwrError as exc:
            raise ModelLoadError(str(exc)) from None
        _check_manifest(path, mode, manifest)
        out[mode] = manifest
    return out


def load_model(models_dir: str | Path, mode: str, threads: int = 1) -> LoadedModel:
    """Load one mode's model, check it against its manifest, and warm it with one inference."""
    import numpy as np

    from .classifier import Classifier, ClassifierOptions

    path = manifest_path(models_dir, mode)
    if not path.is_file():
        raise ModelLoadError(f"model manifest not found: {path}")
    try:
        clf = Classifier(path, ClassifierOptions(num_threads=threads))
    except HwrError as exc:
        raise ModelLoadError(str(exc)) from None
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"model {path} cannot be loaded: {exc}") from None
    _check_manifest(path, mode, clf.manifest)
    # The first invoke allocates and plans; do it now so the first pupil does not wait for it.
    clf.predict(np.zeros((28, 28), dtype=np.float32))
    return LoadedModel(mode, clf)


def load_models(models_dir: str | Path, threads: int = 1) -> dict[str, LoadedModel]:
    """Both models, keyed by wire mode."""
    models = {mode: load_model(models_dir, mode, threads) for mode in MODEL_FILES}
    for m in models.values():
        log.info(
            "model %s %s loaded for mode %r (%d labels, style %s, runtime %s)",
            m.manifest.name,
            m.manifest.version,
            m.mode,
            len(m.labels),
            m.style,
            m.classifier.runtime,
        )
    return models


__all__ = ["LoadedModel", "ModelLoadError", "check_models", "load_model", "load_models"]
