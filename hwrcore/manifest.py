"""The JSON manifest that ships beside every .tflite model; anything that reads a model reads it.

It names the labels in output order, the input convention (shape, dtype, quantisation, pixel
convention, preprocessing style), which output is which, and the model file's sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ManifestError
from .styles import STYLES

SCHEMA_VERSION = 1
PIXELS = "float 0..1 before quantisation, white ink on black, upright"


def _fields_of(cls: type, data: Any, where: str) -> dict[str, Any]:
    """``data``'s fields for ``cls``: every required one there, none unknown (ManifestError)."""
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: expected a JSON object")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ManifestError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")
    missing = [
        n
        for n, f in known.items()
        if n not in data and f.default is MISSING and f.default_factory is MISSING
    ]
    if missing:
        raise ManifestError(f"{where}: missing field(s) {', '.join(map(repr, missing))}")
    return dict(data)


@dataclass
class TensorSpec:
    """Shape, dtype and affine quantisation (real = scale * (q - zero_point)) of a tensor."""

    name: str
    shape: list[int]
    dtype: str
    scale: float = 0.0
    zero_point: int = 0


@dataclass
class Manifest:
    name: str  # 'digits' or 'characters'
    version: str
    mode: str  # wire mode the model serves: 'digit' or 'char'
    labels: list[str]
    style: str  # preprocessing style: 'mnist' or 'emnist'
    input: TensorSpec
    outputs: dict[str, TensorSpec]  # 'probabilities' and 'embedding'
    sha256: str
    file: str  # model file name, relative to the manifest
    pixels: str = PIXELS
    architecture: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    parent_version: str | None = None
    created: str = ""
    schema: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (temp file, fsync, rename): a reader never sees half a manifest."""
        p = Path(path)
        tmp = p.with_name(p.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)

    def model_path(self, manifest_path: str | os.PathLike) -> Path:
        return Path(manifest_path).parent / self.file

    @classmethod
    def from_dict(cls, data: Any, where: str = "manifest") -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: expected a JSON object")
        d = _fields_of(cls, data, where)
        outputs = d["outputs"]
        if not isinstance(outputs, dict):
            raise ManifestError(f"{where}: field 'outputs' must be an object of tensors")
        d["input"] = TensorSpec(**_fields_of(TensorSpec, d["input"], f"{where}: input"))
        d["outputs"] = {
            k: TensorSpec(**_fields_of(TensorSpec, v, f"{where}: output {k!r}"))
            for k, v in outputs.items()
        }
        m = cls(**d)
        try:
            m.check(where)
        except (TypeError, AttributeError, IndexError):  # a field of the wrong JSON type
            raise ManifestError(f"{where}: a field has the wrong type") from None
        return m

    def check(self, where: str = "manifest") -> None:
        """Internal consistency: labels vs output size, known style, both outputs present."""
        if self.schema != SCHEMA_VERSION:
            raise ManifestError(
                f"{where}: schema {self.schema} is not supported (want {SCHEMA_VERSION})"
            )
        if self.style not in STYLES:
            raise ManifestError(f"{where}: unknown preprocessing style {self.style!r}")
        for key in ("probabilities", "embedding"):
            if key not in self.outputs:
                raise ManifestError(f"{where}: no {key!r} output listed")
        n = self.outputs["probabilities"].shape[-1]
        if n != len(self.labels) or len(set(self.labels)) != len(self.labels):
            raise ManifestError(
                f"{where}: {len(self.labels)} labels for a {n}-class output, or labels repeat"
            )
        if list(self.input.shape[-3:]) != [28, 28, 1]:
            raise ManifestError(f"{where}: input shape {self.input.shape} is not (.., 28, 28, 1)")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(path: str | os.PathLike, verify: bool = True) -> Manifest:
    """Read and check a manifest; with ``verify``, also check its model file's sha256."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {p}") from None
    except (OSError, ValueError) as exc:
        raise ManifestError(f"manifest {p} is not readable JSON ({exc})") from None
    m = Manifest.from_dict(data, str(p))
    if verify:
        model = m.model_path(p)
        if not model.is_file():
            raise ManifestError(f"model file named by {p} is missing: {model}")
        got = sha256_file(model)
        if got != m.sha256:
            raise ManifestError(
                f"model file {model} fails its sha256: expected {m.sha256}, got {got}"
            )
    return m
