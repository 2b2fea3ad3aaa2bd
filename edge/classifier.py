"""A TFLite classifier described by its manifest: int8 in, probabilities and embedding out."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwrcore.manifest import Manifest, load_manifest

from .runtime import load_interpreter_class


@dataclass(frozen=True)
class ClassifierOptions:
    num_threads: int = 1
    verify_sha256: bool = True


@dataclass(frozen=True)
class Prediction:
    """Probabilities over the manifest's labels, and the penultimate-layer embedding."""

    probabilities: np.ndarray  # (n_classes,) float32, sums to ~1
    embedding: np.ndarray  # (d,) float32

    def top(self, labels: list[str], k: int = 3) -> list[tuple[str, float]]:
        order = np.argsort(-self.probabilities)[:k]
        return [(labels[i], float(self.probabilities[i])) for i in order]


class Classifier:
    """Loads a model once; ``predict`` is thread-safe (one interpreter, one lock)."""

    def __init__(self, manifest_path: str | Path, options: ClassifierOptions | None = None):
        self.options = options or ClassifierOptions()
        self.manifest_path = Path(manifest_path)
        self.manifest: Manifest = load_manifest(
            self.manifest_path, verify=self.options.verify_sha256
        )
        interpreter_cls, self.runtime = load_interpreter_class()
        self._interp = interpreter_cls(
            model_path=str(self.manifest.model_path(self.manifest_path)),
            num_threads=self.options.num_threads,
        )
        self._interp.allocate_tensors()
        inp = self._interp.get_input_details()[0]
        self._in_index = inp["index"]
        self._in_dtype = inp["dtype"]
        self._in_scale, self._in_zero = _quant(inp)
        by_name = {d["name"]: d for d in self._interp.get_output_details()}
        self._outs = {}
        for key, spec in self.manifest.outputs.items():
            d = by_name.get(spec.name)
            if d is None:
                raise ValueError(
                    f"{self.manifest_path}: output {spec.name!r} ({key}) is not in the model; "
                    f"it has {sorted(by_name)}"
                )
            self._outs[key] = (d["index"], *_quant(d))
        self._lock = threading.Lock()

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.labels)

    def _quantise(self, batch: np.ndarray) -> np.ndarray:
        if self._in_dtype == np.float32:
            return batch.astype(np.float32)
        info = np.iinfo(self._in_dtype)
        q = np.rint(batch / self._in_scale + self._in_zero)
        return np.clip(q, info.min, info.max).astype(self._in_dtype)

    def _output(self, key: str) -> np.ndarray:
        index, scale, zero = self._outs[key]
        raw = self._interp.get_tensor(index)
        if raw.dtype == np.float32:
            return raw.copy()
        return (raw.astype(np.float32) - zero) * scale

    def predict(self, image: np.ndarray) -> Prediction:
        """One (28, 28) float input in [0, 1] -> Prediction."""
        x = self._quantise(np.asarray(image, dtype=np.float32).reshape(1, 28, 28, 1))
        with self._lock:
            self._interp.set_tensor(self._in_index, x)
            self._interp.invoke()
            probs = self._output("probabilities")[0]
            emb = self._output("embedding")[0]
        return Prediction(probs, emb)

    def predict_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Many (n, 28, 28) inputs -> (probabilities (n, c), embeddings (n, d)), one at a time."""
        probs, embs = [], []
        for im in np.asarray(images, dtype=np.float32):
            p = self.predict(im)
            probs.append(p.probabilities)
            embs.append(p.embedding)
        return np.stack(probs), np.stack(embs)


def _quant(detail: dict) -> tuple[float, int]:
    scale, zero = detail.get("quantization", (0.0, 0))
    return float(scale) or 1.0, int(zero)
