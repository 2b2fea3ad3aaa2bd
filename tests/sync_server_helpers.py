"""Helpers for the sync server's tests: correction items as a device sends them, a new model version."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from tests import versions

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "models_export"


def image_b64(value: float = 0.25, n: int = 784) -> str:
    """A model input as the wire carries it: base64 of n little-endian float32."""
    return base64.b64encode(np.full(n, value, dtype="<f4").tobytes()).decode("ascii")


def item(**fields: Any) -> dict[str, Any]:
    """A valid correction item of the contract (docs/sync.md), with ``fields`` replacing defaults."""
    now = time.time()
    base = {
        "id": str(uuid.uuid4()),
        "mode": "digit",
        "label": "7",
        "image": image_b64(),
        "strokes": [[[60.0, 50.0], [220.0, 50.0], [130.0, 240.0]]],
        "predicted": "1",
        "confidence": 0.61,
        "model": {"name": "digits", "version": versions.digits()},
        "created": now,
        "updated": now,
        "embedding": image_b64(0.5, 128),
        "embedding_version": versions.digits(),
    }
    base.update(fields)
    return base


def new_version(
    dest: Path, version: str | None = None, name: str = "digits", salt: bytes = b""
) -> Path:
    """A manifest and file for a new version of a shipped model (its bytes changed, sha256 redone).

    ``version`` defaults to the first one after the shipped version.
    """
    src = json.loads((MODELS_DIR / f"{name}.json").read_text())
    version = version or versions.newer(src["version"])
    data = (MODELS_DIR / src["file"]).read_bytes() + b"\0" + version.encode() + salt
    dest.mkdir(parents=True, exist_ok=True)
    model = dest / f"{name}-{version}.tflite"
    model.write_bytes(data)
    manifest = {
        **src,
        "version": version,
        "file": model.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "parent_version": src["version"],
    }
    path = dest / f"{name}-{version}.json"
    path.write_text(json.dumps(manifest))
    return path
