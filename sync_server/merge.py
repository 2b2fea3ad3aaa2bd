"""What of the merged corrections may train a model: votes, quarantine, review, per-device share.

Every stored correction is scored by the current model of its mode (its guess, confidence and
embedding: :func:`score_pending`, run by the worker after each merged batch) and then assessed
against all the others (:func:`assess`, a pure function; :func:`reassess` writes its verdicts):

* the same model input (sha256 of the 784 floats) labelled differently by different devices is
  settled by vote, one vote per device and label; the losers, and every side of a tie, go to
  quarantine;
* a correction goes to quarantine when the model reads it otherwise with a confidence of at
  least ``confidence`` AND its nearest neighbours from *other* devices (cosine on the
  embedding, at least ``similarity``) hold no consensus for its label; ``lift_devices``
  distinct devices labelling neighbours the same way lift it (a style the model misreads,
  corrected alike by many pupils, is learnt);
* an admin's review (:func:`decide`) overrides both: approved trains, rejected never does.
  Nothing is deleted; every decision is a row with who and when.

The training set (:func:`training_set`) is every assessed correction that is approved, or
accepted and not rejected, with no device above ``max_device_share`` of it. The thresholds are
calibrated by bench/quarantine.py (figures in the README).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Engine, and_, func, or_, select, update

from hwrcore.errors import HwrError
from hwrcore.labels import LABEL_SETS

from .db import assessments, corrections, devices, reading, writing
from .db import decisions as decisions_table

DECISIONS = {"approve": "approved", "reject": "rejected"}
STATUSES = ("open", "approved", "rejected", "withdrawn", "all")
BUCKETS = {"hour": 3600, "day": 86400, "week": 7 * 86400}
SCORE_CHUNK = 500  # corrections scored and written per transaction
SIM_CHUNK = 1024  # rows of the similarity matrix computed at once


class MergeError(HwrError):
    """A review or query that cannot be done as asked."""

    code = "invalid_request"


@dataclass(frozen=True)
class Policy:
    """The thresholds of the merge policy (defaults calibrated by bench/quarantine.py)."""

    confidence: float = 0.50
    k: int = 11
    similarity: float = 0.60
    consensus: float = 0.5
    lift_devices: int = 2
    max_device_share: float = 0.5

    @classmethod
    def from_config(cls, config: Any) -> Policy:
        """The policy of a SyncConfig."""
        return cls(
            confidence=config.quarantine_confidence,
            k=config.neighbours,
            similarity=config.neighbour_similarity,
            consensus=config.neighbour_consensus,
            lift_devices=config.lift_devices,
            max_device_share=config.max_device_share,
        )


@dataclass(frozen=True)
class Verdict:
    """The assessment of one correction."""

    status: str  # accepted / quarantined
    reason: str | None
    vote: str | None  # won / lost / tie, or None when no other device labelled its image
    neighbour_label: str | None
    neighbour_share: float | None
    support_devices: int


def image_sha256(image: bytes) -> str:
    """The identity of a model input: sha256 of its 784 little-endian float32."""
    return hashlib.sha256(image).hexdigest()


def image_png(image: bytes) -> bytes:
    """A stored 28x28 model input as a PNG (white ink on black), for the admin's eyes."""
    from PIL import Image

    a = np.frombuffer(image, dtype="<f4").reshape(28, 28)
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(a * 255), 0, 255).astype(np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


# -- the policy (pure) ---------------------------------------------------------------------------
def _votes(devices_: Sequence[int], labels: Sequence[str], hashes: Sequence[str]) -> list:
    """won / lost / tie for each correction whose image other devices labelled otherwise."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(hashes):
        groups[h].append(i)
    out: list[str | None] = [None] * len(labels)
    for members in groups.values():
        if len({devices_[i] for i in members}) < 2 or len({labels[i] for i in members}) < 2:
            continue
        votes = Counter()
        for label, _device in {(labels[i], devices_[i]) for i in members}:
            votes[label] += 1
        top = max(votes.values())
        winners = [lab for lab, n in votes.items() if n == top]
        for i in members:
            if len(winners) > 1:
                out[i] = "tie"
            else:
                out[i] = "won" if labels[i] == winners[0] else "lost"
    return out


def _unit(emb: np.ndarray) -> np.ndarray:
    e = np.asarray(emb, dtype=np.float32)
    norm = np.linalg.norm(e, axis=1, keepdims=True)
    return e / np.maximum(norm, 1e-12)


def assess(
    devices_: Sequence[int],
    labels: Sequence[str],
    hashes: Sequence[str],
    model_labels: Sequence[str],
    model_conf: Sequence[float],
    embeddings: np.ndarray,
    policy: Policy,
    excluded: Sequence[bool] | None = None,
) -> list[Verdict]:
    """The verdict on each correction of one mode, given all of them (rejected ones ``excluded``)."""
    n = len(labels)
    if n == 0:
        return []
    dev = np.asarray(devices_)
    lab = np.asarray(labels, dtype=object)
    hsh = np.asarray(hashes, dtype=object)
    gone = np.zeros(n, bool) if excluded is None else np.asarray(excluded, bool)
    votes = _votes(devices_, labels, hashes)
    unit = _unit(embeddings)
    wide = max(policy.k, 4 * policy.k)  # candidates looked at for support from many devices
    out: list[Verdict] = []
    for start in range(0, n, SIM_CHUNK):
        stop = min(n, start + SIM_CHUNK)
        sim = unit[start:stop] @ unit.T  # (rows, n)
        for r, i in enumerate(range(start, stop)):
            s = sim[r]
            ok = (dev != dev[i]) & (hsh != hsh[i]) & ~gone & (s >= policy.similarity)
            idx = np.flatnonzero(ok)
            if len(idx) > wide:
                idx = idx[np.argpartition(-s[idx], wide - 1)[:wide]]
            idx = idx[np.argsort(-s[idx], kind="stable")]
            near = idx[: policy.k]
            nb_label, nb_share = None, None
            if len(near):
                counts = Counter(lab[near])
                best, cnt = counts.most_common(1)[0]
                if cnt / len(near) >= policy.consensus:
                    nb_label, nb_share = str(best), cnt / len(near)
            support = 1 + len({int(dev[j]) for j in idx if lab[j] == lab[i]})
            out.append(
                _verdict(
                    labels[i],
                    votes[i],
                    model_labels[i],
                    float(model_conf[i]),
                    nb_label,
                    nb_share,
                    support,
                    policy,
                )
            )
    return out


def _verdict(
    label: str,
    vote: str | None,
    model_label: str,
    conf: float,
    nb_label: str | None,
    nb_share: float | None,
    support: int,
    policy: Policy,
) -> Verdict:
    status, reason = "accepted", None
    if vote == "tie":
        status, reason = "quarantined", "tie: other devices labelled the same drawing otherwise"
    elif vote == "lost":
        status, reason = "quarantined", "outvoted: more devices labelled the same drawing otherwise"
    elif model_label != label and conf >= policy.confidence and nb_label != label:
        if support < policy.lift_devices:
            status = "quarantined"
            nb = (
                f"its neighbours from other devices say {nb_label!r}"
                if nb_label is not None
                else "no neighbours from other devices agree"
            )
            reason = (
                f"the model reads {model_label!r} at {conf:.0%} and {nb}; "
                f"{support} device(s) label such drawings {label!r}, {policy.lift_devices} lift it"
            )
    return Verdict(status, reason, vote, nb_label, nb_share, support)


def capped(devices_: Sequence[int], share: float) -> np.ndarray:
    """Which items to keep so no device holds more than ``share`` of them (its newest dropped).

    Items are in age order (oldest first). With fewer devices than 1/share can fill, each
    device keeps ceil(share * total) items, so a lone device is not silenced.
    """
    n = len(devices_)
    keep = np.ones(n, bool)
    if n == 0 or share >= 1.0:
        return keep
    limit = max(1, math.ceil(share * n))
    seen: Counter = Counter()
    for i, d in enumerate(devices_):
        seen[d] += 1
        if seen[d] > limit:
            keep[i] = False
    return keep


# -- scoring and assessing in the database ------------------------------------------------------
Scorer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # images -> (probs, embeddings)


def score_pending(
    engine: Engine, mode: str, version: str, scorer: Scorer, limit: int | None = None
) -> int:
    """Score every correction of ``mode`` not yet scored by ``version``; how many were scored."""
    labels = LABEL_SETS[mode].labels
    done = 0
    while limit is None or done < limit:
        q = (
            select(corrections.c.uuid, corrections.c.image)
            .select_from(
                corrections.outerjoin(assessments, assessments.c.uuid == corrections.c.uuid)
            )
            .where(
                corrections.c.mode == mode,
                or_(assessments.c.uuid.is_(None), assessments.c.model_version != version),
            )
            .order_by(corrections.c.received, corrections.c.uuid)
            .limit(SCORE_CHUNK)
        )
        with reading(engine) as conn:
            rows = conn.execute(q).all()
        if not rows:
            break
        images = np.stack([np.frombuffer(r.image, dtype="<f4").reshape(28, 28) for r in rows])
        probs, embs = scorer(images)
        now = time.time()
        with writing(engine) as conn:
            known = {
                r.uuid: r
                for r in conn.execute(
                    select(assessments.c.uuid).where(assessments.c.uuid.in_([r.uuid for r in rows]))
                )
            }
            for r, p, e in zip(rows, probs, embs, strict=True):
                top = int(np.argmax(p))
                values = {
                    "image_sha256": image_sha256(r.image),
                    "model_version": version,
                    "model_label": labels[top],
                    "model_confidence": float(p[top]),
                    "embedding": np.asarray(e, dtype="<f4").tobytes(),
                    "scored": now,
                }
                if r.uuid in known:
                    conn.execute(
                        update(assessments).where(assessments.c.uuid == r.uuid).values(**values)
                    )
                else:
                    conn.execute(
                        assessments.insert().values(
                            uuid=r.uuid, mode=mode, status="pending", support_devices=0, **values
                        )
                    )
        done += len(rows)
    return done


def reassess(engine: Engine, mode: str, policy: Policy) -> dict[str, int]:
    """Apply the policy to every scored correction of ``mode``; counts of each status."""
    q = (
        select(
            assessments.c.uuid,
            corrections.c.device_id,
            corrections.c.label,
            assessments.c.image_sha256,
            assessments.c.model_label,
            assessments.c.model_confidence,
            assessments.c.embedding,
            assessments.c.review,
            assessments.c.status,
            assessments.c.reason,
            assessments.c.vote,
            assessments.c.neighbour_label,
            assessments.c.neighbour_share,
            assessments.c.support_devices,
        )
        .select_from(assessments.join(corrections, corrections.c.uuid == assessments.c.uuid))
        .where(assessments.c.mode == mode)
        .order_by(corrections.c.received, corrections.c.uuid)
    )
    with reading(engine) as conn:
        rows = conn.execute(q).all()
    if not rows:
        return {"accepted": 0, "quarantined": 0}
    emb = np.stack([np.frombuffer(r.embedding, dtype="<f4") for r in rows])
    verdicts = assess(
        [r.device_id for r in rows],
        [r.label for r in rows],
        [r.image_sha256 for r in rows],
        [r.model_label for r in rows],
        [r.model_confidence for r in rows],
        emb,
        policy,
        excluded=[r.review == "rejected" for r in rows],
    )
    changed = []
    for r, v in zip(rows, verdicts, strict=True):
        share = None if v.neighbour_share is None else round(v.neighbour_share, 4)
        old_share = None if r.neighbour_share is None else round(r.neighbour_share, 4)
        now = (v.status, v.reason, v.vote, v.neighbour_label, share, v.support_devices)
        before = (r.status, r.reason, r.vote, r.neighbour_label, old_share, r.support_devices)
        if now != before:
            changed.append((r.uuid, v, share))
    for start in range(0, len(changed), SCORE_CHUNK):
        with writing(engine) as conn:
            for uuid_, v, share in changed[start : start + SCORE_CHUNK]:
                conn.execute(
                    update(assessments)
                    .where(assessments.c.uuid == uuid_)
                    .values(
                        status=v.status,
                        reason=v.reason,
                        vote=v.vote,
                        neighbour_label=v.neighbour_label,
                        neighbour_share=share,
                        support_devices=v.support_devices,
                    )
                )
    counts = Counter(v.status for v in verdicts)
    return {"accepted": counts.get("accepted", 0), "quarantined": counts.get("quarantined", 0)}


def pending_count(engine: Engine, mode: str, version: str) -> int:
    """Corrections of ``mode`` not yet scored by ``version``."""
    q = (
        select(func.count())
        .select_from(corrections.outerjoin(assessments, assessments.c.uuid == corrections.c.uuid))
        .where(
            corrections.c.mode == mode,
            or_(assessments.c.uuid.is_(None), assessments.c.model_version != version),
        )
    )
    with reading(engine) as conn:
        return int(conn.execute(q).scalar_one())


# -- the training set -------------------------------------------------------------------------
IN_TRAINING = and_(
    corrections.c.withdrawn.is_(None),  # undone on its device: kept, never trained on
    or_(
        assessments.c.review == "approved",
        and_(assessments.c.review.is_(None), assessments.c.status == "accepted"),
    ),
)


@dataclass
class TrainingRows:
    """The corrections a model may learn from, oldest first (after the per-device cap)."""

    uuids: list[str]
    device_ids: list[int]
    device_names: list[str]
    labels: list[str]
    images: np.ndarray  # (n, 28, 28) float32
    dropped_by_share: int


def training_set(engine: Engine, mode: str, policy: Policy) -> TrainingRows:
    """Approved, or accepted and not rejected, with no device above ``policy.max_device_share``."""
    q = (
        select(corrections.c.uuid, corrections.c.device_id, devices.c.name, corrections.c.label)
        .add_columns(corrections.c.image)
        .select_from(
            assessments.join(corrections, corrections.c.uuid == assessments.c.uuid).join(
                devices, devices.c.id == corrections.c.device_id
            )
        )
        .where(assessments.c.mode == mode, IN_TRAINING)
        .order_by(corrections.c.received, corrections.c.uuid)
    )
    with reading(engine) as conn:
        rows = conn.execute(q).all()
    keep = capped([r.device_id for r in rows], policy.max_device_share)
    kept = [r for r, k in zip(rows, keep, strict=True) if k]
    images = (
        np.stack([np.frombuffer(r.image, dtype="<f4").reshape(28, 28) for r in kept])
        if kept
        else np.zeros((0, 28, 28), np.float32)
    )
    return TrainingRows(
        uuids=[r.uuid for r in kept],
        device_ids=[r.device_id for r in kept],
        device_names=[r.name for r in kept],
        labels=[r.label for r in kept],
        images=images,
        dropped_by_share=int((~keep).sum()),
    )


def accepted_count(engine: Engine, mode: str, since: float = 0.0) -> int:
    """Corrections of ``mode`` in the training set (before the share cap) received after ``since``."""
    q = (
        select(func.count())
        .select_from(assessments.join(corrections, corrections.c.uuid == assessments.c.uuid))
        .where(assessments.c.mode == mode, IN_TRAINING, corrections.c.received > since)
    )
    with reading(engine) as conn:
        return int(conn.execute(q).scalar_one())


# -- the admin's view and decisions -------------------------------------------------------------
def _status_filter(status: str):  # type: ignore[no-untyped-def]
    if status not in STATUSES:
        raise MergeError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    if status == "open":  # a correction its device withdrew needs no decision
        return and_(
            assessments.c.status == "quarantined",
            assessments.c.review.is_(None),
            corrections.c.withdrawn.is_(None),
        )
    if status == "withdrawn":  # held, then withdrawn by its device before anyone decided
        return and_(
            assessments.c.status == "quarantined",
            assessments.c.review.is_(None),
            corrections.c.withdrawn.is_not(None),
        )
    if status == "all":
        return or_(assessments.c.status == "quarantined", assessments.c.review.is_not(None))
    return assessments.c.review == status


def _mode_filter(mode: str | None):  # type: ignore[no-untyped-def]
    if mode is None:
        return True
    if mode not in LABEL_SETS:
        raise MergeError(f"mode must be 'digit' or 'char', got {mode!r}")
    return assessments.c.mode == mode


def quarantine(
    engine: Engine,
    *,
    mode: str | None = None,
    status: str = "open",
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Quarantined (or reviewed) corrections, newest first.

    ``status``: "open" (quarantined, not yet reviewed, not withdrawn by its device),
    "approved", "rejected", "withdrawn" (quarantined, then withdrawn unreviewed) or "all". Each
    item: ``{"id", "device", "device_id", "mode", "label", "predicted", "confidence" (what the
    device's model said), "model_label", "model_confidence", "model_version" (the server's
    current model), "neighbour_label", "neighbour_share", "support_devices", "vote", "status",
    "reason", "review", "reviewed_by", "reviewed_at", "received", "withdrawn", "withdrawn_by"
    (when and by whom its device withdrew it, or None), "image_png" (bytes: the
    28x28 model input as PNG)}``.
    """
    q = (
        select(
            assessments,
            corrections.c.device_id,
            corrections.c.label,
            corrections.c.predicted,
            corrections.c.confidence,
            corrections.c.received,
            corrections.c.image,
            corrections.c.withdrawn,
            corrections.c.withdrawn_by,
            devices.c.name.label("device"),
        )
        .select_from(
            assessments.join(corrections, corrections.c.uuid == assessments.c.uuid).join(
                devices, devices.c.id == corrections.c.device_id
            )
        )
        .where(_status_filter(status), _mode_filter(mode))
        .order_by(corrections.c.received.desc(), corrections.c.uuid)
        .limit(max(1, min(int(limit), 1000)))
        .offset(max(0, int(offset)))
    )
    with reading(engine) as conn:
        rows = conn.execute(q).all()
    return [
        {
            "id": r.uuid,
            "device": r.device,
            "device_id": r.device_id,
            "mode": r.mode,
            "label": r.label,
            "predicted": r.predicted,
            "confidence": r.confidence,
            "model_label": r.model_label,
            "model_confidence": r.model_confidence,
            "model_version": r.model_version,
            "neighbour_label": r.neighbour_label,
            "neighbour_share": r.neighbour_share,
            "support_devices": r.support_devices,
            "vote": r.vote,
            "status": r.status,
            "reason": r.reason,
            "review": r.review,
            "reviewed_by": r.reviewed_by,
            "reviewed_at": r.reviewed_at,
            "received": r.received,
            "withdrawn": r.withdrawn,
            "withdrawn_by": r.withdrawn_by,
            "image_png": image_png(r.image),
        }
        for r in rows
    ]


def quarantine_count(engine: Engine, *, mode: str | None = None, status: str = "open") -> int:
    """How many items :func:`quarantine` would list without a limit."""
    q = (
        select(func.count())
        .select_from(assessments.join(corrections, corrections.c.uuid == assessments.c.uuid))
        .where(_status_filter(status), _mode_filter(mode))
    )
    with reading(engine) as conn:
        return int(conn.execute(q).scalar_one())


def decide(engine: Engine, ids: Iterable[str], decision: str, by: str) -> int:
    """Approve or reject corrections (by UUID); each decision recorded with ``by`` and the time.

    Returns how many corrections the decision was recorded for (unknown or unscored ids are
    skipped). A later decision replaces the review but not the record of the earlier one.
    """
    if decision not in DECISIONS:
        raise MergeError(f"decision must be 'approve' or 'reject', got {decision!r}")
    if not isinstance(by, str) or not by.strip() or len(by) > 100:
        raise MergeError("by must name who decides (1-100 characters)")
    wanted = sorted({i for i in ids if isinstance(i, str)})
    if not wanted:
        return 0
    now = time.time()
    n = 0
    with writing(engine) as conn:
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = conn.execute(
                select(assessments.c.uuid, assessments.c.status, assessments.c.review).where(
                    assessments.c.uuid.in_(chunk)
                )
            ).all()
            for r in rows:
                conn.execute(
                    decisions_table.insert().values(
                        uuid=r.uuid,
                        decision=decision,
                        previous=f"{r.status}/{r.review or '-'}",
                        by=by,
                        at=now,
                    )
                )
            if rows:
                conn.execute(
                    update(assessments)
                    .where(assessments.c.uuid.in_([r.uuid for r in rows]))
                    .values(review=DECISIONS[decision], reviewed_by=by, reviewed_at=now)
                )
            n += len(rows)
    return n


def decisions(engine: Engine, *, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    """Every review decision, newest first: ``{"id", "correction_id", "decision", "previous", "by", "at"}``."""
    q = (
        select(decisions_table)
        .order_by(decisions_table.c.id.desc())
        .limit(max(1, min(int(limit), 1000)))
        .offset(max(0, int(offset)))
    )
    with reading(engine) as conn:
        rows = conn.execute(q).all()
    return [
        {
            "id": r.id,
            "correction_id": r.uuid,
            "decision": r.decision,
            "previous": r.previous,
            "by": r.by,
            "at": r.at,
        }
        for r in rows
    ]


def device_stats(engine: Engine) -> list[dict[str, Any]]:
    """Each device's corrections and how far they agree with the school, by device name.

    Item: ``{"device_id", "device", "group", "corrections" (stored), "scored" (and judged), "accepted",
    "quarantined" (open), "approved", "rejected", "agreement" (share of its corrections whose
    label matches the consensus of other devices' neighbours, among those with a consensus;
    None without any), "model_agreement" (share whose label is the model's guess), "share"
    ({mode: its share of the training set before the cap})}``.
    """
    with reading(engine) as conn:
        devs = conn.execute(select(devices.c.id, devices.c.name, devices.c.group_name)).all()
        stored = dict(
            conn.execute(
                select(corrections.c.device_id, func.count()).group_by(corrections.c.device_id)
            ).all()
        )
        rows = conn.execute(
            select(
                corrections.c.device_id,
                corrections.c.mode,
                corrections.c.label,
                assessments.c.model_label,
                assessments.c.neighbour_label,
                assessments.c.status,
                assessments.c.review,
            ).select_from(assessments.join(corrections, corrections.c.uuid == assessments.c.uuid))
        ).all()
    per: dict[int, Counter] = defaultdict(Counter)
    training: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        if r.status == "pending":
            continue  # scored, not yet judged
        c = per[r.device_id]
        c["scored"] += 1
        if r.review == "approved":
            c["approved"] += 1
        elif r.review == "rejected":
            c["rejected"] += 1
        elif r.status == "quarantined":
            c["quarantined"] += 1
        else:
            c["accepted"] += 1
        if r.review == "approved" or (r.review is None and r.status == "accepted"):
            training[r.mode][r.device_id] += 1
        if r.neighbour_label is not None:
            c["with_consensus"] += 1
            c["agree"] += r.neighbour_label == r.label
        c["model_agree"] += r.model_label == r.label
    totals = {m: sum(t.values()) for m, t in training.items()}
    out = []
    for d in sorted(devs, key=lambda d: d.name):
        c = per.get(d.id, Counter())
        out.append(
            {
                "device_id": d.id,
                "device": d.name,
                "group": d.group_name,
                "corrections": int(stored.get(d.id, 0)),
                "scored": c["scored"],
                "accepted": c["accepted"],
                "quarantined": c["quarantined"],
                "approved": c["approved"],
                "rejected": c["rejected"],
                "agreement": (c["agree"] / c["with_consensus"]) if c["with_consensus"] else None,
                "model_agreement": (c["model_agree"] / c["scored"]) if c["scored"] else None,
                "share": {
                    m: (training[m][d.id] / totals[m]) if totals.get(m) else 0.0 for m in LABEL_SETS
                },
            }
        )
    return out


def class_counts(engine: Engine, mode: str) -> list[dict[str, Any]]:
    """Corrections per label of ``mode``, in label order: ``{"label", "total", "accepted",
    "quarantined", "approved", "rejected", "unscored"}``."""
    _mode_filter(mode)
    q = (
        select(corrections.c.label, assessments.c.status, assessments.c.review, func.count())
        .select_from(corrections.outerjoin(assessments, assessments.c.uuid == corrections.c.uuid))
        .where(corrections.c.mode == mode)
        .group_by(corrections.c.label, assessments.c.status, assessments.c.review)
    )
    with reading(engine) as conn:
        rows = conn.execute(q).all()
    per: dict[str, Counter] = defaultdict(Counter)
    for label, status, review, n in rows:
        key = review or (status if status != "pending" else None) or "unscored"
        per[label][key] += n
        per[label]["total"] += n
    keys = ("total", "accepted", "quarantined", "approved", "rejected", "unscored")
    return [
        {"label": lab, **{k: int(per[lab][k]) for k in keys}} for lab in LABEL_SETS[mode].labels
    ]


def counts_over_time(engine: Engine, mode: str | None, bucket: str = "day") -> list[dict[str, Any]]:
    """Corrections received per time bucket ("hour", "day", "week"), oldest first:
    ``{"start" (unix time of the bucket), "total", "accepted", "quarantined"}`` (``mode`` None:
    both modes)."""
    if bucket not in BUCKETS:
        raise MergeError(f"bucket must be one of {', '.join(BUCKETS)}, got {bucket!r}")
    width = BUCKETS[bucket]
    q = select(corrections.c.received, assessments.c.status, assessments.c.review).select_from(
        corrections.outerjoin(assessments, assessments.c.uuid == corrections.c.uuid)
    )
    if mode is not None:
        _mode_filter(mode)
        q = q.where(corrections.c.mode == mode)
    with reading(engine) as conn:
        rows = conn.execute(q).all()
    per: dict[int, Counter] = defaultdict(Counter)
    for received, status, review in rows:
        b = int(received // width) * width
        per[b]["total"] += 1
        if review == "approved" or (review is None and status == "accepted"):
            per[b]["accepted"] += 1
        elif status == "quarantined" and review is None:
            per[b]["quarantined"] += 1
    return [
        {
            "start": float(b),
            "total": c["total"],
            "accepted": c["accepted"],
            "quarantined": c["quarantined"],
        }
        for b, c in sorted(per.items())
    ]


def dumps(items: list[dict[str, Any]]) -> str:
    """JSON of quarantine items (image bytes as base64), for the CLI."""
    import base64

    def enc(v: Any) -> Any:
        return base64.b64encode(v).decode("ascii") if isinstance(v, bytes) else v

    return json.dumps([{k: enc(v) for k, v in i.items()} for i in items])


__all__ = [
    "MergeError",
    "Policy",
    "TrainingRows",
    "Verdict",
    "accepted_count",
    "assess",
    "capped",
    "class_counts",
    "counts_over_time",
    "decide",
    "decisions",
    "device_stats",
    "image_png",
    "image_sha256",
    "pending_count",
    "quarantine",
    "quarantine_count",
    "reassess",
    "score_pending",
    "training_set",
]
