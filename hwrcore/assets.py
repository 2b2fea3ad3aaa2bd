"""Where the shipped models and the web pages are: a source checkout's folders, else the installed copy.

A checkout (or an editable install) has ``models_export/`` and ``web/`` beside the packages; a
wheel installs them as data files under ``<prefix>/share/classroom-hwr/`` (see setup.cfg), so a
device installed with ``pip install classroom-hwr[edge]`` finds them without the repository.
"""

from __future__ import annotations

import sys
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parent.parent
INSTALLED = Path(sys.prefix) / "share" / "classroom-hwr"


def _pick(source: Path, installed: Path, marker: str) -> Path:
    """``source`` when it holds ``marker``, else ``installed`` when that does, else ``source``."""
    if (source / marker).exists() or not (installed / marker).exists():
        return source
    return installed


def shipped_models_dir() -> Path:
    """The shipped models (digits.json, characters.json and their .tflite files)."""
    return _pick(SOURCE_ROOT / "models_export", INSTALLED / "models", "digits.json")


def web_dir() -> Path:
    """The canvas page and its assets (index.html, static/)."""
    return _pick(SOURCE_ROOT / "web", INSTALLED / "web", "index.html")


__all__ = ["shipped_models_dir", "web_dir"]
