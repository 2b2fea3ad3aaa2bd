"""Shared fixtures: where the data and the shipped models are, and a skip when data is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
MODELS_DIR = ROOT / "models_export"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data; tests that need it are skipped, naming the folder, where it is absent."""
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (../shared/data beside the project)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def models_dir() -> Path:
    if not (MODELS_DIR / "digits.json").is_file():
        pytest.skip(f"no shipped models in {MODELS_DIR}")
    return MODELS_DIR
