"""The shipped models' versions (models_export/<name>.json), versions newer than them, and
the test figures their manifests carry.

Tests name versions through these, never as literals, so that shipping a new model changes
no test. The server and the edge compare versions only for equality (the order of releases
is their signed sequence, the order of stored versions their publishing), so a newer version
need only differ from the shipped one and read as later: its minor part is bumped. Read when
a test asks, not at import: tests that need no model still run without models_export/.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent.parent / "models_export"
MAJOR_MINOR = re.compile(r"^(\d+)\.(\d+)(?:\.\d+)?")


@functools.cache
def manifest(name: str) -> dict:
    """The manifest of shipped model ``name`` ("digits", "characters"), as JSON."""
    return json.loads((MODELS_DIR / f"{name}.json").read_text())


def shipped(name: str) -> str:
    """The version of shipped model ``name``."""
    return manifest(name)["version"]


def shown_accuracy(name: str) -> str:
    """The shipped model's test accuracy as the dashboard shows it, e.g. "99.63%"."""
    return f"{manifest(name)['metrics']['test_accuracy']:.2%}"


def shown_recall(name: str, label: str) -> str:
    """One class's test recall as the dashboard's recall table shows it, e.g. "99.2%"."""
    return f"{manifest(name)['metrics']['per_class_recall'][label]:.1%}"


def newer(version: str, n: int = 1) -> str:
    """The version ``n`` minor releases after ``version``: newer("1.2.0", 2) == "1.4.0"."""
    m = MAJOR_MINOR.match(version)
    if m is None or n < 1:
        raise ValueError(f"no version {n} minor releases after {version!r}")
    return f"{m[1]}.{int(m[2]) + n}.0"


def digits(n: int = 0) -> str:
    """The shipped digit model's version, or with ``n`` > 0 the one n minor releases later."""
    return newer(shipped("digits"), n) if n else shipped("digits")


def characters(n: int = 0) -> str:
    """The shipped character model's version, or with ``n`` > 0 the one n minor releases later."""
    return newer(shipped("characters"), n) if n else shipped("characters")
