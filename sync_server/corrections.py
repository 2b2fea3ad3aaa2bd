"""Corrections from devices: each item checked field by field, then merged idempotently on its UUID.

:func:`check_item` turns one item of an upload into a row (or a ``rejected`` outcome with a
code); :func:`merge` stores a device's batch in one transaction: one query for the UUIDs it
already has, one executemany for the new rows, committed before the outcomes are returned.
The content of an item is everything but ``updated``; a UUID known with other content, or
under another device, is a ``conflict`` and is never overwritten.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Engine, case, exc, func, select, update

from hwrcore.labels import LABEL_SETS
from hwrcore.preprocess import MAX_COORD, MAX_POINTS, MAX_STROKES

from .db import corrections, devices, reading, writing

IMAGE_FLOATS = 28 * 28
MAX_EMBEDDING = 4096  # floats in an embedding
MAX_TEXT = 64  # characters of a model name, version or predicted label
KINDS = ("correction", "confirmation")
_NUMBERS = frozenset((int, float))
_LISTS = frozenset((list,))


class Rejected(Exception):
    """Why one item of a batch cannot be stored: a wire code and a message for a person."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Checked:
    """An item that passed every check: its UUID, content digest and the row to insert."""

    id: str
    digest: str
    row: dict[str, Any]


def _number(item: dict, name: str, *, nullable: bool = False) -> float | None:
    v = item.get(name)
    if v is None and nullable:
        return None
    if type(v) not in _NUMBERS or not math.isfinite(v):
        raise Rejected("invalid_field", f"{name} must be a finite number")
    return float(v)


def _text(item: dict, name: str, value: object, *, nullable: bool = True) -> str | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise Rejected("invalid_field", f"{name} must be a string of at most {MAX_TEXT} characters")
    return value


def _floats(text: object, name: str, code: str) -> bytes:
    if not isinstance(text, str):
        raise Rejected(code, f"{name} must be a base64 string of little-endian float32")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Rejected(code, f"{name} is not valid base64") from None
    if len(raw) % 4:
        raise Rejected(code, f"{name} is {len(raw)} bytes, not a whole number of float32")
    return raw


def _image(item: dict) -> bytes:
    raw = _floats(item.get("image"), "image", "invalid_image")
    if len(raw) != IMAGE_FLOATS * 4:
        raise Rejected(
            "invalid_image", f"image must be {IMAGE_FLOATS} float32 (28x28), got {len(raw) // 4}"
        )
    a = np.frombuffer(raw, dtype="<f4")
    lo, hi = float(a.min()), float(a.max())  # NaN anywhere makes both NaN
    if not (0.0 <= lo and hi <= 1.0):
        if math.isnan(lo):
            raise Rejected("invalid_image", "image values must be finite")
        raise Rejected("out_of_range", "image values must lie in 0..1")
    return raw


def _strokes(value: object) -> str | None:
    """Compact JSON of the strokes (coordinates as floats), or None for a PNG drawing."""
    if value is None:
        return None
    if type(value) not in _LISTS or len(value) > MAX_STROKES:  # type: ignore[arg-type]
        if type(value) in _LISTS:
            raise Rejected("too_many_strokes", f"at most {MAX_STROKES} strokes")
        raise Rejected("invalid_drawing", "strokes must be a list of strokes of [x, y] points")
    out = []
    total = 0
    for stroke in value:  # type: ignore[union-attr]
        if type(stroke) not in _LISTS:
            raise Rejected("invalid_drawing", "each stroke must be a list of [x, y] points")
        total += len(stroke)
        if total > MAX_POINTS:
            raise Rejected("too_many_points", f"at most {MAX_POINTS} points in all")
        pts = []
        for p in stroke:
            if type(p) not in _LISTS or len(p) != 2 or not set(map(type, p)) <= _NUMBERS:
                raise Rejected("invalid_drawing", "each point must be [x, y] numbers")
            x, y = float(p[0]), float(p[1])
            if not (-MAX_COORD <= x <= MAX_COORD and -MAX_COORD <= y <= MAX_COORD):
                raise Rejected("out_of_range", f"coordinates must be finite, within {MAX_COORD}")
            pts.append([x, y])
        out.append(pts)
    return json.dumps(out, separators=(",", ":"))


def _id_of(item: object) -> str | None:
    """The item's id as sent, if it is a short string (to name it in its outcome)."""
    v = item.get("id") if isinstance(item, dict) else None
    return v if isinstance(v, str) and len(v) <= 64 else None


def check_item(item: object) -> Checked:
    """One uploaded correction as a row to insert; Rejected naming the first bad field."""
    if not isinstance(item, dict):
        raise Rejected("invalid_message", "each correction must be a JSON object")
    cid = item.get("id")
    try:
        ok = isinstance(cid, str) and str(uuid.UUID(cid)) == cid
    except ValueError:
        ok = False
    if not ok:
        raise Rejected("invalid_id", "id must be a canonical lower-case UUID string")
    mode = item.get("mode")
    if mode not in LABEL_SETS:
        raise Rejected("invalid_mode", "mode must be 'digit' or 'char'")
    labels = LABEL_SETS[mode]
    label = item.get("label")
    if not isinstance(label, str) or label not in labels.labels:
        raise Rejected(
            "invalid_label", f"label must be one of the {len(labels)} canonical {mode} labels"
        )
    image = _image(item)
    strokes = _strokes(item.get("strokes"))
    predicted = _text(item, "predicted", item.get("predicted"))
    confidence = _number(item, "confidence", nullable=True)
    if confidence is not None and not 0.0 <= confidence <= 1.0:
        raise Rejected("out_of_range", "confidence must lie in 0..1")
    model = item.get("model")
    if model is not None and not isinstance(model, dict):
        raise Rejected("invalid_field", 'model must be {"name", "version"} or null')
    model_name = _text(item, "model.name", (model or {}).get("name"))
    model_version = _text(item, "model.version", (model or {}).get("version"))
    created = _number(item, "created")
    updated = _number(item, "updated")
    embedding = None
    if item.get("embedding") is not None:
        embedding = _floats(item["embedding"], "embedding", "invalid_field")
        if not 0 < len(embedding) // 4 <= MAX_EMBEDDING:
            raise Rejected("invalid_field", f"embedding must hold 1 to {MAX_EMBEDDING} float32")
        total = np.add.reduce(np.frombuffer(embedding, dtype="<f4"), dtype=np.float64)
        if not math.isfinite(float(total)):  # NaN or infinity anywhere (float64 cannot overflow)
            raise Rejected("invalid_field", "embedding values must be finite")
    embedding_version = _text(item, "embedding_version", item.get("embedding_version"))
    kind = item.get("kind", "correction")
    if kind not in KINDS:
        raise Rejected("invalid_field", "kind must be 'correction' or 'confirmation'")
    if kind == "confirmation" and label != predicted:
        raise Rejected("invalid_label", "a confirmation's label is the model's prediction")
    # The content is everything but ``updated``, in a fixed order (arrays by their sha256).
    content = [
        cid,
        mode,
        label,
        hashlib.sha256(image).hexdigest(),
        strokes,
        predicted,
        confidence,
        model_name,
        model_version,
        created,
        None if embedding is None else hashlib.sha256(embedding).hexdigest(),
        embedding_version,
    ]
    if kind != "correction":  # so items sent before kinds existed keep their digest
        content.append(kind)
    digest = hashlib.sha256(json.dumps(content, separators=(",", ":")).encode()).hexdigest()
    row = {
        "uuid": cid,
        "mode": mode,
        "label": label,
        "image": image,
        "strokes": strokes,
        "predicted": predicted,
        "confidence": confidence,
        "model_name": model_name,
        "model_version": model_version,
        "created": created,
        "updated": updated,
        "content_sha256": digest,
        "embedding": embedding,
        "embedding_version": embedding_version,
        "kind": kind,
    }
    return Checked(cid, digest, row)


def _conflict(message: str) -> dict[str, Any]:
    return {"status": "conflict", "error": {"code": "conflict", "message": message}}


def _merge_once(engine: Engine, device_id: int, checked: list[Checked | None]) -> list[dict]:
    ids = list({c.id for c in checked if c is not None})
    now = time.time()
    outcomes: list[dict] = []
    with writing(engine) as conn:
        known = {}
        if ids:
            q = select(
                corrections.c.uuid, corrections.c.device_id, corrections.c.content_sha256
            ).where(corrections.c.uuid.in_(ids))
            known = {r.uuid: (r.device_id, r.content_sha256) for r in conn.execute(q)}
        new: list[dict] = []
        for c in checked:
            if c is None:
                outcomes.append({})
                continue
            if c.id in known:
                owner, digest = known[c.id]
                if owner != device_id:
                    outcomes.append(_conflict("this id belongs to a correction of another device"))
                elif digest != c.digest:
                    outcomes.append(_conflict("this id is stored with other content"))
                else:
                    outcomes.append({"status": "duplicate"})
                continue
            known[c.id] = (device_id, c.digest)
            new.append({**c.row, "device_id": device_id, "received": now})
            outcomes.append({"status": "stored"})
        if new:
            conn.execute(corrections.insert(), new)
        # The device marks what is stored or a duplicate as synced on this answer: its pending
        # count (the last heartbeat's) falls now, in the same transaction, not 30 s later.
        acked = sum(o.get("status") in ("stored", "duplicate") for o in outcomes)
        if acked:
            left = case((devices.c.hb_pending > acked, devices.c.hb_pending - acked), else_=0)
            conn.execute(
                update(devices)
                .where(devices.c.id == device_id, devices.c.hb_pending.is_not(None))
                .values(hb_pending=left)
            )
    return outcomes


def merge(engine: Engine, device_id: int, items: list[object]) -> list[dict[str, Any]]:
    """Store a device's batch; the outcome of each item, in order, once it is committed."""
    checked: list[Checked | None] = []
    rejected: dict[int, dict] = {}
    for i, item in enumerate(items):
        try:
            checked.append(check_item(item))
        except Rejected as r:
            checked.append(None)
            rejected[i] = {"status": "rejected", "error": {"code": r.code, "message": r.message}}
    try:
        outcomes = _merge_once(engine, device_id, checked)
    except exc.IntegrityError:
        # Another request inserted one of these UUIDs between our look and our insert.
        outcomes = _merge_once(engine, device_id, checked)
    results = []
    for i, item in enumerate(items):
        outcome = rejected.get(i) or outcomes[i]
        results.append({"id": _id_of(item), **outcome})
    return results


WITHDRAWN_BY = ("pupil", "teacher")


def withdraw(engine: Engine, device_id: int, items: list[object]) -> list[dict[str, Any]]:
    """Mark a device's corrections withdrawn (an undo on the device); each item's outcome.

    ``withdrawn`` (now marked, out of training and review), ``duplicate`` (already withdrawn),
    ``unknown`` (no such correction of this device) or ``rejected`` (a malformed item). Nothing
    is deleted: the correction stays, with when and by whom it was withdrawn.
    """
    outcomes: list[dict[str, Any] | None] = []
    wanted: dict[str, tuple[float, str]] = {}
    for item in items:
        cid, when, by = (
            (item.get(k) for k in ("id", "withdrawn", "by"))
            if isinstance(item, dict)
            else (None, None, None)
        )
        try:
            ok_id = isinstance(cid, str) and str(uuid.UUID(cid)) == cid
        except ValueError:
            ok_id = False
        if not ok_id or by not in WITHDRAWN_BY or type(when) not in _NUMBERS:
            outcomes.append(_rejected_withdrawal())
        elif not math.isfinite(when):
            outcomes.append(_rejected_withdrawal())
        else:
            wanted[cid] = (float(when), by)
            outcomes.append(None)
    now = time.time()
    with writing(engine) as conn:
        known = {
            r.uuid: r.withdrawn
            for r in conn.execute(
                select(corrections.c.uuid, corrections.c.withdrawn).where(
                    corrections.c.uuid.in_(list(wanted)), corrections.c.device_id == device_id
                )
            )
        }
        fresh = [cid for cid in wanted if cid in known and known[cid] is None]
        for cid in fresh:
            when, by = wanted[cid]
            conn.execute(
                corrections.update()
                .where(corrections.c.uuid == cid, corrections.c.withdrawn.is_(None))
                .values(withdrawn=when, withdrawn_by=by, withdrawal_received=now)
            )
    results = []
    for item, outcome in zip(items, outcomes, strict=True):
        cid = _id_of(item)
        if outcome is None:
            status = "unknown" if cid not in known else "withdrawn" if cid in fresh else "duplicate"
            outcome = {"status": status}
        results.append({"id": cid, **outcome})
    return results


def _rejected_withdrawal() -> dict[str, Any]:
    return {
        "status": "rejected",
        "error": {
            "code": "invalid_message",
            "message": 'a withdrawal is {"id": <uuid>, "withdrawn": <unix time>, "by": '
            '"pupil"|"teacher"}',
        },
    }


def summary(engine: Engine) -> dict[str, Any]:
    """Devices registered and distinct corrections stored per mode."""
    with reading(engine) as conn:
        n_devices = conn.execute(select(func.count()).select_from(devices)).scalar_one()
        per_mode = dict(
            conn.execute(
                select(corrections.c.mode, func.count()).group_by(corrections.c.mode)
            ).all()
        )
    return {
        "devices": int(n_devices),
        "corrections": {mode: int(per_mode.get(mode, 0)) for mode in LABEL_SETS},
    }


__all__ = ["Checked", "Rejected", "check_item", "merge", "summary", "withdraw"]
