"""The shipped models' versions (models_export/<name>.json) and versions newer than them.

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
def shipped(name: str) -> str:
    """The version of shipped model ``name`` ("digits", "characters"), from its manifest."""
    return json.loads((MODELS_DIR / f"{name}.json").read_text())["version"]


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
