"""The edge's wire protocol: the one error body, its codes and statuses, and message-shape checks.

Every error that leaves a process, over HTTP or a WebSocket, is built by :func:`error_body`:
``{"error": {"code": "...", "message": "..."}}``; over HTTP with :func:`http_status` of its
code, over a WebSocket inside ``{"type": "error", "seq": n, ...}`` (:func:`error_message`).
The helpers below read one field of a decoded message each and raise :class:`ProtocolError`
(or the core's InvalidLabel) with a code from :data:`STATUS` when it has the wrong shape.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import HwrError
from .labels import LABEL_SETS

MODES: tuple[str, ...] = tuple(LABEL_SETS)  # 'digit', 'char'

# Message types a client sends, and the type of the answer to each.
REQUEST_TYPES = {
    "predict": "prediction",
    "correct": "corrected",
    "confirm": "confirmed",
    "withdraw": "withdrawn",
    "clear": "cleared",  # the canvas was cleared (what a teacher watching sees)
    "health": "health",
}
ERROR_TYPE = "error"

# Every error code on the wire and its HTTP status (a WebSocket sends the code alone).
STATUS: dict[str, int] = {
    "bad_request": 400,
    "invalid_json": 400,
    "invalid_message": 400,
    "unknown_type": 400,
    "invalid_mode": 400,
    "invalid_label": 400,
    "invalid_drawing": 400,
    "empty_drawing": 400,
    "drawing_too_small": 400,
    "too_many_strokes": 400,
    "too_many_points": 400,
    "out_of_range": 400,
    "invalid_image": 400,
    "binary_frame": 400,
    "forbidden_origin": 403,
    "not_found": 404,
    "unknown_prediction": 404,
    "unknown_correction": 404,
    "method_not_allowed": 405,
    "already_corrected": 409,
    "timeout": 408,
    "too_large": 413,
    "uri_too_long": 414,
    "unsupported_media_type": 415,
    "unknown_host": 421,
    "upgrade_required": 426,
    "headers_too_large": 431,
    "rate_limited": 429,
    "internal": 500,
    "unavailable": 503,
    "busy": 503,
    "store_full": 507,
    "invalid_correction_id": 409,
    "disk_full": 507,
}

# A seq is echoed as sent; it must be an integer a browser's JSON can hold exactly.
MAX_SEQ = 2**53
# Longest prediction id accepted (ids made here are 32 hex digits).
MAX_ID_CHARS = 64


class ProtocolError(HwrError):
    """A message that is not valid JSON or does not have the shape the protocol asks for."""

    code = "invalid_message"


def error_body(code: str, message: str) -> dict[str, Any]:
    """The one error body of the wire: ``{"error": {"code", "message"}}``."""
    return {"error": {"code": str(code), "message": str(message)}}


def error_message(code: str, message: str, seq: int | None = None) -> dict[str, Any]:
    """An error as a WebSocket answer: the error body with ``type`` and the request's ``seq``."""
    return {"type": ERROR_TYPE, "seq": seq, **error_body(code, message)}


def http_status(code: str) -> int:
    """The HTTP status of an error code; an unlisted code is a client error (400)."""
    return STATUS.get(code, 400)


def _integer(text: str) -> int | float:
    """A JSON integer; one of more digits than any float holds is read as an infinite float, so
    each field's own finite-number check refuses it (instead of an overflow turning into 500)."""
    return int(text) if len(text.lstrip("-")) <= 300 else float(text)


def parse_json(data: str | bytes) -> Any:
    """Decode a JSON text; anything undecodable (bad UTF-8, syntax, absurd nesting) is invalid_json."""
    try:
        return json.loads(data, parse_int=_integer)
    except (ValueError, RecursionError):
        raise ProtocolError("the message is not valid JSON", code="invalid_json") from None


def require_object(msg: object) -> dict[str, Any]:
    """The message itself must be a JSON object."""
    if not isinstance(msg, dict):
        raise ProtocolError(f"the message must be a JSON object, not {_kind(msg)}")
    return msg


def get_seq(msg: dict[str, Any]) -> int | None:
    """The client's sequence number (absent or null: None); an integer within +-2**53."""
    seq = msg.get("seq")
    if seq is None:
        return None
    if not isinstance(seq, int) or isinstance(seq, bool) or abs(seq) > MAX_SEQ:
        raise ProtocolError(f"seq must be an integer, not {_kind(seq)}")
    return seq


def get_type(msg: dict[str, Any]) -> str:
    """The request type: one of :data:`REQUEST_TYPES`."""
    kind = msg.get("type")
    if not isinstance(kind, str) or kind not in REQUEST_TYPES:
        raise ProtocolError(
            f"type must be one of {', '.join(sorted(REQUEST_TYPES))}: got {_short(kind)}",
            code="unknown_type",
        )
    return kind  # type: ignore[return-value]


def get_mode(msg: dict[str, Any]) -> str:
    """The drawing's mode: 'digit' or 'char'."""
    mode = msg.get("mode")
    if not isinstance(mode, str) or mode not in MODES:
        raise ProtocolError(
            f"mode must be one of {', '.join(MODES)}: got {_short(mode)}", code="invalid_mode"
        )
    return mode  # type: ignore[return-value]


def get_label(msg: dict[str, Any]) -> str:
    """The label a person chose: a non-empty string (its class is checked against the model)."""
    label = msg.get("label")
    if not isinstance(label, str) or not label:
        raise ProtocolError(
            f"label must be a one-character string, not {_kind(label)}", code="invalid_label"
        )
    return label


def get_prediction_id(msg: dict[str, Any]) -> str | None:
    """The id of an earlier prediction, or None when the message carries none."""
    pid = msg.get("id")
    if pid is None:
        return None
    if not isinstance(pid, str) or not pid or len(pid) > MAX_ID_CHARS:
        raise ProtocolError(f"id must be a prediction id string, not {_kind(pid)}")
    return pid


def get_drawing(msg: dict[str, Any]) -> tuple[str, Any]:
    """Which drawing the message carries: ``("strokes", list)`` or ``("image", str)``, exactly one."""
    has_strokes = msg.get("strokes") is not None
    has_image = msg.get("image") is not None
    if has_strokes and has_image:
        raise ProtocolError("send either strokes or image, not both")
    if has_strokes:
        strokes = msg["strokes"]
        if not isinstance(strokes, list):
            raise ProtocolError(
                f"strokes must be a list of strokes of [x, y] points, not {_kind(strokes)}",
                code="invalid_drawing",
            )
        return "strokes", strokes
    if has_image:
        image = msg["image"]
        if not isinstance(image, str):
            raise ProtocolError(
                f"image must be a base64 PNG string, not {_kind(image)}", code="invalid_image"
            )
        return "image", image
    raise ProtocolError("the message has no drawing: send strokes or image")


def _kind(value: object) -> str:
    """A JSON name for a value's type, for messages (never the value: it may be a drawing)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _short(value: object) -> str:
    """A short, safe rendering of a small value for an error message."""
    if isinstance(value, str) and len(value) <= 20:
        return repr(value)
    return _kind(value)


__all__ = [
    "ERROR_TYPE",
    "MODES",
    "REQUEST_TYPES",
    "STATUS",
    "ProtocolError",
    "error_body",
    "error_message",
    "get_drawing",
    "get_label",
    "get_mode",
    "get_prediction_id",
    "get_seq",
    "get_type",
    "http_status",
    "parse_json",
    "require_object",
]
