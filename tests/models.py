"""Where tests find the shipped models: models_export/, skipped with a reason when absent."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models_export"
NAMES = ("digits", "characters")


def shipped_models() -> Path | None:
    """models_export/ when it holds both models with their manifests, else None."""
    ok = all(
        (SHIPPED / f"{n}.json").is_file() and (SHIPPED / f"{n}.tflite").is_file() for n in NAMES
    )
    return SHIPPED if ok else None


def require_models() -> Path:
    """The shipped models folder, or skip the test naming what is missing."""
    found = shipped_models()
    if found is None:
        pytest.skip(f"no shipped models: {SHIPPED} needs digits and characters .tflite + .json")
    return found
