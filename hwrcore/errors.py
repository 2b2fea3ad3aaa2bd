"""Typed errors raised by the shared core; each carries a stable code for the wire."""

from __future__ import annotations


class HwrError(Exception):
    """Base of every domain error; ``code`` is the machine-readable reason."""

    code = "error"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


class InvalidDrawing(HwrError):
    """A drawing that cannot be turned into a model input (empty, a dot, bad numbers, too big)."""

    code = "invalid_drawing"


class InvalidLabel(HwrError):
    """A label that is not in the model's label set."""

    code = "invalid_label"


class ManifestError(HwrError):
    """A model manifest that is missing, malformed, or does not match its model file."""

    code = "invalid_manifest"
