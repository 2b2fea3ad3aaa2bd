"""The learning loop as the dashboard shows it: quarantine, agreement, jobs, rollout, version details.

The data comes from sync_server/merge.py (assessments, quarantine, decisions, device
agreement), sync_server/jobs.py (retraining jobs) and the registry (metrics, gate results,
confusion matrices, group rollout). Each function here returns ``None`` (or raises
:class:`NotAvailable` for an action) when this server has no such part yet, so the dashboard
says "not available yet" instead of showing anything made up.
"""

from __future__ import annotations

import importlib
import json
from types import ModuleType
from typing import Any

from hwrcore.errors import HwrError
from hwrcore.labels import LABEL_SETS

from . import stats
from .state import SyncState


class NotAvailable(HwrError):
    """An action whose part of the server is not there yet."""

    code = "not_available"


def _module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"sync_server.{name}")
    except ImportError:
        return None


def _fn(module: str, name: str) -> Any:
    mod = _module(module)
    return getattr(mod, name, None) if mod is not None else None


def device_stats(st: SyncState) -> dict[str, dict[str, Any]] | None:
    """Per device name: agreement rate, accepted, quarantined, approved, rejected; None if absent."""
    fn = _fn("merge", "device_stats")
    if fn is None:
        return None
    return {d["device"]: d for d in fn(st.engine)}


QUARANTINE_TABS = ("open", "approved", "rejected", "withdrawn")


def quarantine(
    st: SyncState, show: str, limit: int = 100, offset: int = 0
) -> tuple[list[dict[str, Any]], int] | None:
    """Quarantined corrections (``show``: open, approved, rejected) and how many there are."""
    fn, count = _fn("merge", "quarantine"), _fn("merge", "quarantine_count")
    if fn is None or count is None:
        return None
    items = fn(st.engine, status=show, limit=limit, offset=offset)
    for item in items:
        item.pop("image_png", None)  # the page loads each drawing from /admin/drawings/
    return items, int(count(st.engine, status=show))


def decisions(st: SyncState, limit: int = 50) -> list[dict[str, Any]] | None:
    """The latest review decisions (who, when, what before), or None."""
    fn = _fn("merge", "decisions")
    return None if fn is None else list(fn(st.engine, limit=limit))


def decide(st: SyncState, ids: list[str], decision: str, who: str) -> int:
    """Approve or reject quarantined corrections; how many were decided."""
    fn = _fn("merge", "decide")
    if fn is None:
        raise NotAvailable("quarantine review is not available yet on this server")
    return int(fn(st.engine, ids, decision, by=who))


def class_counts(st: SyncState, mode: str) -> list[dict[str, Any]] | None:
    """Per label: total, accepted, quarantined, approved, rejected, unscored; None if absent."""
    fn = _fn("merge", "class_counts")
    return None if fn is None else list(fn(st.engine, mode))


def drawing_png(image: bytes) -> bytes | None:
    """merge.py's PNG of a stored model input (one implementation), or None if absent."""
    fn = _fn("merge", "image_png")
    return None if fn is None else fn(image)


def versions(st: SyncState) -> list[dict[str, Any]]:
    """Every stored version, newest first within each model, with what is known of it.

    Each: name, version, mode, current, groups (where it is current beyond every device),
    rollouts, accuracy, measured_on, per_class_recall, confusion ({labels, matrix} or None),
    heldout (accuracy on held-out corrections or None), gate ({passed, reason, checks} or
    None), parent, parent_same_test ({accuracy, per_class_recall} of the parent as the job that
    made this version measured it, on this version's test; or None), published_by, created,
    snapshot, job_id. Figures a retraining job recorded come first; a version without them (a
    shipped one) shows its manifest's, which may come from another test.
    """
    base = stats.model_versions(st.engine, st.registry)
    fn = getattr(st.registry, "versions", None)
    if fn is None:
        for v in base:
            v.update(groups=[], rollouts=[], confusion=None, heldout=None, gate=None)
            v.update(snapshot=None, job_id=None)
        return base
    rich = {(v["name"], v["version"]): v for v in fn()}
    for v in base:
        r = rich.get((v["name"], v["version"]), {})
        metrics = r.get("metrics") or {}
        b = metrics.get("base") or {}
        if isinstance(b.get("accuracy"), (int, float)):
            v["accuracy"] = float(b["accuracy"])
            v["measured_on"] = str(b.get("measured_on") or v["measured_on"])
        if isinstance(b.get("per_class_recall"), dict):
            v["per_class_recall"] = {str(k): float(x) for k, x in b["per_class_recall"].items()}
        matrix = b.get("confusion_matrix")
        labels = list(LABEL_SETS[v["mode"]].labels) if v["mode"] in LABEL_SETS else []
        v["confusion"] = (
            {"labels": labels, "matrix": matrix}
            if isinstance(matrix, list) and len(matrix) == len(labels)
            else None
        )
        # The parent measured by the same job, on the same test: what this version is compared
        # with (its own figure may come from another test, as a shipped manifest's does).
        pb = (metrics.get("parent") or {}).get("base") or {}
        v["parent_same_test"] = (
            {
                "accuracy": float(pb["accuracy"]),
                "per_class_recall": {
                    str(k): float(x) for k, x in (pb.get("per_class_recall") or {}).items()
                },
            }
            if isinstance(pb.get("accuracy"), (int, float))
            else None
        )
        held = metrics.get("heldout") or {}
        acc = held.get("accuracy")
        v["heldout"] = float(acc) if isinstance(acc, (int, float)) else None
        v["heldout_n"] = held.get("n")
        v["gate"] = r.get("gate")
        v["groups"] = list(r.get("groups") or [])
        v["rollouts"] = list(r.get("rollouts") or [])
        v["snapshot"] = r.get("snapshot")
        v["job_id"] = r.get("job_id")
    return base


def current_by_mode(st: SyncState, group: str | None) -> dict[str, Any]:
    """The release each mode serves to a device of ``group`` (every device's without rollout)."""
    if can_rollout(st):
        return st.registry.current_by_mode(group)
    return st.registry.current_by_mode()


def can_rollout(st: SyncState) -> bool:
    """Whether the registry can release a version to one group of devices."""
    return callable(getattr(st.registry, "rollout", None))


def rollout(st: SyncState, name: str, version: str, group: str, who: str) -> str:
    """Release ``version`` of ``name`` to the devices of ``group``; a message for the page."""
    fn = getattr(st.registry, "rollout", None)
    if fn is None:
        raise NotAvailable("rollout to a group is not available yet on this server")
    c = fn(name, version, group=group or None, by=who)
    to = f"the devices of group {group}" if group else "every device"
    return f"{name} {version} is released to {to} (sequence {c.sequence})."


def can_retrain(st: SyncState) -> bool:
    """Whether this server has retraining jobs."""
    return _fn("jobs", "request_retrain") is not None


def retrain(st: SyncState, name: str, who: str) -> str:
    """Request a retrain of model ``name`` (joining one already queued or running)."""
    fn = _fn("jobs", "request_retrain")
    if fn is None:
        raise NotAvailable("retraining is not available yet on this server")
    job = fn(st, name, by=who, trigger="admin")
    if job.get("joined"):
        return f"A retrain of {name} is {job['status']} already (job {job['id']}): joined it."
    return f"Retraining {name}: job {job['id']} is {job['status']}."


def jobs(st: SyncState) -> list[dict[str, Any]] | None:
    """Recent jobs with their progress (stage, epoch, percent), or None."""
    fn = _fn("jobs", "list_jobs")
    if fn is None:
        return None
    out = []
    for j in fn(st.engine):
        j = dict(j)
        for key in ("metrics", "gate"):
            if isinstance(j.get(key), str):
                try:
                    j[key] = json.loads(j[key])
                except ValueError:
                    j[key] = None
        out.append(j)
    return out


__all__ = [
    "NotAvailable",
    "current_by_mode",
    "class_counts",
    "can_retrain",
    "can_rollout",
    "decide",
    "decisions",
    "device_stats",
    "drawing_png",
    "jobs",
    "quarantine",
    "retrain",
    "rollout",
    "versions",
]
