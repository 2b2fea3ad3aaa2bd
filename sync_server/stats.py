"""Read-only figures for the dashboard: devices with their heartbeats, corrections counted, versions.

Every function reads the system of record (sync_server/db.py) and returns plain values; none
writes. Times are unix seconds of the server's clock.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine, func, select

from hwrcore.labels import LABEL_SETS

from .db import corrections, devices, models, reading, releases
from .registry import Registry

# A device heartbeats every 30 s by default (edge/config.py): online means seen in 3 of them.
ONLINE_S = 90.0
DAY_S = 86400.0
MODES = tuple(LABEL_SETS)


def safe_link(url: str | None) -> str | None:
    """A device's reported tunnel URL when it is a plain http(s) address, else None."""
    if not url or len(url) > 2048:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c in url for c in "\"'<> "):
        return None
    return url


def devices_overview(
    engine: Engine,
    current_for: Callable[[str | None], dict[str, Any]],
    now: float | None = None,
) -> list[dict]:
    """Each device: group, online, last seen, what it serves (and whether that is current), pending.

    ``current_for(group)`` gives the release of each mode that a device of ``group`` should serve.
    """
    now = time.time() if now is None else now
    wanted: dict[str | None, dict[str, str]] = {}
    with reading(engine) as conn:
        rows = conn.execute(select(devices).order_by(devices.c.name)).all()
        counts = dict(
            conn.execute(
                select(corrections.c.device_id, func.count()).group_by(corrections.c.device_id)
            ).all()
        )
    out = []
    for r in rows:
        if r.group_name not in wanted:
            wanted[r.group_name] = {m: c.version for m, c in current_for(r.group_name).items()}
        current = wanted[r.group_name]
        try:
            served = json.loads(r.hb_models) if r.hb_models else {}
        except ValueError:
            served = {}
        serving = [
            {
                "mode": mode,
                "name": str(v.get("name", "")),
                "version": str(v.get("version", "")),
                "current": current.get(mode) == v.get("version"),
            }
            for mode, v in sorted(served.items())
            if isinstance(v, dict)
        ]
        out.append(
            {
                "id": r.id,
                "name": r.name,
                "group": r.group_name,
                "revoked": r.revoked,
                "created": r.created,
                "last_seen": r.last_seen,
                "online": r.revoked is None
                and r.last_seen is not None
                and now - r.last_seen <= ONLINE_S,
                "serving": serving,
                "pending": r.hb_pending,
                "software": r.hb_software,
                "tunnel_url": safe_link(r.hb_tunnel_url),
                "corrections": int(counts.get(r.id, 0)),
            }
        )
    return out


def device_groups(engine: Engine) -> list[str]:
    """The groups devices belong to, by name."""
    with reading(engine) as conn:
        rows = conn.execute(
            select(devices.c.group_name).where(devices.c.group_name.is_not(None)).distinct()
        ).all()
    return sorted(r[0] for r in rows)


def corrections_by_class(engine: Engine) -> dict[str, list[tuple[str, int]]]:
    """Stored corrections per label of each mode, every label listed in the model's order."""
    with reading(engine) as conn:
        rows = conn.execute(
            select(corrections.c.mode, corrections.c.label, func.count()).group_by(
                corrections.c.mode, corrections.c.label
            )
        ).all()
    counts = {(m, lab): int(n) for m, lab, n in rows}
    return {
        mode: [(lab, counts.get((mode, lab), 0)) for lab in LABEL_SETS[mode].labels]
        for mode in MODES
    }


def corrections_by_device(engine: Engine) -> list[dict[str, Any]]:
    """Stored corrections per device and mode, most first."""
    with reading(engine) as conn:
        rows = conn.execute(
            select(devices.c.name, corrections.c.mode, func.count())
            .join(devices, devices.c.id == corrections.c.device_id)
            .group_by(devices.c.name, corrections.c.mode)
        ).all()
    per: dict[str, dict[str, int]] = {}
    for name, mode, n in rows:
        per.setdefault(name, dict.fromkeys(MODES, 0))[mode] = int(n)
    out = [
        {"device": name, **counts, "total": sum(counts.values())} for name, counts in per.items()
    ]
    return sorted(out, key=lambda d: (-d["total"], d["device"]))


def corrections_by_day(
    engine: Engine, days: int = 30, now: float | None = None
) -> dict[str, list[tuple[float, int]]]:
    """Corrections made per day (UTC) over the last ``days`` days, per mode, oldest first.

    A correction counts on the day the device made it; a device clock far from the server's
    (more than a year behind or a day ahead of its arrival) counts it on the day it arrived.
    """
    now = time.time() if now is None else now
    first = (now // DAY_S - (days - 1)) * DAY_S
    with reading(engine) as conn:
        rows = conn.execute(
            select(corrections.c.mode, corrections.c.created, corrections.c.received).where(
                corrections.c.received >= first - 365 * DAY_S
            )
        ).all()
    counts: Counter[tuple[str, float]] = Counter()
    for mode, created, received in rows:
        when = created if received - 365 * DAY_S <= created <= received + DAY_S else received
        if when >= first:
            counts[(mode, when // DAY_S * DAY_S)] += 1
    return {
        mode: [(first + i * DAY_S, counts.get((mode, first + i * DAY_S), 0)) for i in range(days)]
        for mode in MODES
    }


def model_versions(engine: Engine, registry: Registry) -> list[dict[str, Any]]:
    """Every stored version with its manifest's metrics, newest first within each model."""
    current = {(c.name, c.version): c.sequence for c in registry.current_all().values()}
    with reading(engine) as conn:
        rows = conn.execute(select(models).order_by(models.c.name, models.c.id.desc())).all()
    out = []
    for r in rows:
        try:
            manifest = json.loads(r.manifest)
        except ValueError:
            manifest = {}
        metrics = manifest.get("metrics") if isinstance(manifest.get("metrics"), dict) else {}
        recall = metrics.get("per_class_recall")
        out.append(
            {
                "name": r.name,
                "version": r.version,
                "mode": r.mode,
                "sha256": r.sha256,
                "length": r.length,
                "created": r.created,
                "published_by": r.published_by,
                "parent": r.parent,
                "current": (r.name, r.version) in current,
                "accuracy": _number(metrics.get("test_accuracy")),
                "measured_on": str(metrics.get("measured_on") or ""),
                "per_class_recall": {
                    str(k): float(v) for k, v in recall.items() if _number(v) is not None
                }
                if isinstance(recall, dict)
                else {},
            }
        )
    return out


def release_history(engine: Engine, limit: int = 50) -> list[dict[str, Any]]:
    """The latest releases of every model: version, sequence, when, by whom (and to which group)."""
    with reading(engine) as conn:
        rows = conn.execute(
            select(*[c for c in releases.c if c.name != "document"])
            .order_by(releases.c.created.desc(), releases.c.id.desc())
            .limit(limit)
        ).all()
    return [dict(r._mapping) for r in rows]


def drawing(engine: Engine, uuid: str) -> bytes | None:
    """The stored 28x28 float32 model input of a correction, or None."""
    with reading(engine) as conn:
        return conn.execute(
            select(corrections.c.image).where(corrections.c.uuid == uuid)
        ).scalar_one_or_none()


def _number(v: object) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


__all__ = [
    "ONLINE_S",
    "corrections_by_class",
    "corrections_by_day",
    "corrections_by_device",
    "device_groups",
    "devices_overview",
    "drawing",
    "model_versions",
    "release_history",
    "safe_link",
]
