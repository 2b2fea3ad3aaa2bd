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


def agreement(st: SyncState) -> dict[str, float | None] | None:
    """Each device's agreement rate (by device name), or None when merge.py has none."""
    fn = _fn("merge", "device_agreement")
    if fn is None:
        return None
    return {d["device"]: d.get("rate") for d in fn(st.engine)}


def quarantine(st: SyncState, show: str) -> list[dict[str, Any]] | None:
    """Quarantined corrections (``show`` 'pending' or 'decided'), or None."""
    fn = _fn("merge", "quarantined")
    if fn is None:
        return None
    return list(fn(st.engine, decided=show == "decided"))


def decide(st: SyncState, ids: list[str], decision: str, who: str) -> int:
    """Approve or reject quarantined corrections; how many were decided."""
    fn = _fn("merge", "decide")
    if fn is None:
        raise NotAvailable("quarantine review is not available yet on this server")
    return int(fn(st.engine, ids, decision, by=who))


def add_version_details(st: SyncState, versions: list[dict[str, Any]]) -> None:
    """Add each version's gate result, confusion matrix and held-out figures where recorded."""
    details = _fn("registry", "version_details")
    for v in versions:
        v.setdefault("gate", None)
        v.setdefault("confusion", None)
        v.setdefault("heldout", None)
        if details is not None:
            v.update(details(st.engine, v["name"], v["version"]) or {})


def can_rollout(st: SyncState) -> bool:
    """Whether the registry can release a version to one group of devices."""
    return callable(getattr(st.registry, "rollout", None))


def rollout(st: SyncState, name: str, version: str, group: str, who: str) -> str:
    """Release ``version`` of ``name`` to the devices of ``group``; a message for the page."""
    fn = getattr(st.registry, "rollout", None)
    if fn is None:
        raise NotAvailable("rollout to a group is not available yet on this server")
    c = fn(name, version, group=group, by=who)
    return f"{name} {version} is released to group {group} (sequence {c.sequence})."


def rollouts(st: SyncState) -> list[dict[str, Any]] | None:
    """Releases made to a group, newest first, or None."""
    fn = getattr(st.registry, "group_releases", None)
    return None if fn is None else list(fn())


def can_retrain(st: SyncState) -> bool:
    """Whether this server has retraining jobs."""
    return _fn("jobs", "request_retrain") is not None


def retrain(st: SyncState, name: str, who: str) -> str:
    """Request a retrain of model ``name`` (joining one already queued or running)."""
    fn = _fn("jobs", "request_retrain")
    if fn is None:
        raise NotAvailable("retraining is not available yet on this server")
    job = fn(st, name, trigger="admin", by=who)
    return f"retraining {name}: job {job['id']} is {job['status']}."


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
    "add_version_details",
    "agreement",
    "can_retrain",
    "can_rollout",
    "decide",
    "jobs",
    "quarantine",
    "retrain",
    "rollout",
    "rollouts",
]
