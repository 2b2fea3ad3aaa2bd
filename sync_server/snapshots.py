"""Immutable training snapshots: the corrections a job learnt from, in one HDF5 file named by its content.

A snapshot holds every correction of the training set of one mode when a job started, each
marked ``train`` or ``heldout``; held-out corrections are whole devices (:func:`split_by_device`),
so the gate measures the new model on pupils it never saw. Its name is the sha256 of its
content (mode, then each correction's UUID, label, split and 784 float32, in UUID order):
the same corrections make the same snapshot, which is written once (temporary file, fsync,
rename) and never changed; :func:`read_snapshot` checks the digest again. Its rows are
ordered by the drawings themselves, so a job trains on the same corrections in the same order
whatever ids the devices gave them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from sqlalchemy import Engine, exc, select

from hwrcore.errors import HwrError

from .db import reading, snapshots, writing
from .merge import TrainingRows

SCHEMA = 1


class SnapshotError(HwrError):
    """A snapshot file that is missing or does not hold what its name says."""

    code = "invalid_snapshot"


@dataclass
class Snapshot:
    """A snapshot's content: corrections ordered by their drawings, and which are held out."""

    sha256: str
    mode: str
    uuids: list[str]
    devices: list[str]
    labels: list[str]
    heldout: np.ndarray  # (n,) bool
    images: np.ndarray  # (n, 28, 28) float32
    path: Path | None = None

    def part(self, heldout: bool) -> tuple[np.ndarray, list[str]]:
        """The images and labels of the training part, or of the held-out part."""
        idx = np.flatnonzero(self.heldout == heldout)
        return self.images[idx], [self.labels[i] for i in idx]


def split_by_device(device_names: list[str], share: float) -> set[str]:
    """Devices held out: about ``share`` of the corrections, at least one device, never all.

    Devices are taken in the order of the sha256 of their names, so a school's split stays
    the same from job to job while its devices do.
    """
    counts = Counter(device_names)
    if len(counts) < 2:
        return set()
    order = sorted(counts, key=lambda d: hashlib.sha256(d.encode()).hexdigest())
    total = sum(counts.values())
    held: set[str] = set()
    n = 0
    for d in order:
        if n >= share * total or len(held) == len(counts) - 1:
            break
        held.add(d)
        n += counts[d]
    return held


def digest(
    mode: str, uuids: list[str], labels: list[str], heldout: np.ndarray, images: np.ndarray
) -> str:
    """The content address: sha256 over mode and each correction (UUID order)."""
    h = hashlib.sha256(f"hwr-snapshot:{SCHEMA}:{mode}\n".encode())
    for i in np.argsort(np.asarray(uuids, dtype=object), kind="stable"):
        h.update(f"{uuids[i]}\t{labels[i]}\t{int(heldout[i])}\n".encode())
        h.update(np.asarray(images[i], dtype="<f4").tobytes())
    return h.hexdigest()


def make_snapshot(mode: str, rows: TrainingRows, heldout_share: float) -> Snapshot:
    """A snapshot of a training set, split by device, in the order of its drawings' contents
    (not yet written): the same corrections make the same snapshot, and so the same model,
    whatever ids the devices gave them."""
    held_devices = split_by_device(rows.device_names, heldout_share)
    keys = [
        (np.asarray(rows.images[i], dtype="<f4").tobytes(), rows.labels[i], rows.uuids[i])
        for i in range(len(rows.uuids))
    ]
    order = np.asarray(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)
    uuids = [rows.uuids[i] for i in order]
    devs = [rows.device_names[i] for i in order]
    labels = [rows.labels[i] for i in order]
    heldout = np.asarray([d in held_devices for d in devs], dtype=bool)
    images = (
        rows.images[order].astype(np.float32) if len(order) else np.zeros((0, 28, 28), np.float32)
    )
    return Snapshot(
        digest(mode, uuids, labels, heldout, images), mode, uuids, devs, labels, heldout, images
    )


def write_snapshot(
    engine: Engine, data_dir: str | os.PathLike, snap: Snapshot, job_id: int | None = None
) -> Path:
    """Write the snapshot's file (once) and record it; its path."""
    rel = f"snapshots/{snap.mode}/{snap.sha256}.h5"
    path = Path(data_dir) / rel
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with h5py.File(tmp, "w", track_order=False) as f:
            f.attrs["schema"] = SCHEMA
            f.attrs["mode"] = snap.mode
            f.attrs["sha256"] = snap.sha256
            f.create_dataset("uuid", data=np.asarray(snap.uuids, dtype="S36"))
            f.create_dataset(
                "device", data=np.asarray([d.encode() for d in snap.devices], dtype="S100")
            )
            f.create_dataset(
                "label", data=np.asarray([s.encode() for s in snap.labels], dtype="S8")
            )
            f.create_dataset("heldout", data=snap.heldout.astype(np.uint8))
            f.create_dataset("image", data=snap.images.astype("<f4"), compression="gzip")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        os.chmod(path, 0o444)
    held = sorted({d for d, h in zip(snap.devices, snap.heldout, strict=True) if h})
    train_devs = sorted({d for d, h in zip(snap.devices, snap.heldout, strict=True) if not h})
    classes = Counter(lab for lab, h in zip(snap.labels, snap.heldout, strict=True) if not h)
    try:
        with writing(engine) as conn:
            conn.execute(
                snapshots.insert().values(
                    sha256=snap.sha256,
                    mode=snap.mode,
                    path=rel,
                    n_train=int((~snap.heldout).sum()),
                    n_heldout=int(snap.heldout.sum()),
                    devices=json.dumps({"train": train_devs, "heldout": held}),
                    classes=json.dumps(dict(sorted(classes.items()))),
                    created=time.time(),
                    job_id=job_id,
                )
            )
    except exc.IntegrityError:
        pass  # the same content was snapshotted before: the same file
    snap.path = path
    return path


def read_snapshot(path: str | os.PathLike) -> Snapshot:
    """A snapshot file, its digest checked against its content."""
    p = Path(path)
    if not p.is_file():
        raise SnapshotError(f"snapshot {p} is missing")
    with h5py.File(p, "r") as f:
        mode = str(f.attrs["mode"])
        want = str(f.attrs["sha256"])
        uuids = [u.decode() for u in f["uuid"][()]]
        devs = [d.decode() for d in f["device"][()]]
        labels = [s.decode() for s in f["label"][()]]
        heldout = f["heldout"][()].astype(bool)
        images = f["image"][()].astype(np.float32)
    got = digest(mode, uuids, labels, heldout, images)
    if got != want or p.stem != want:
        raise SnapshotError(
            f"snapshot {p} does not hold what its name says (content {got[:12]}...)"
        )
    return Snapshot(want, mode, uuids, devs, labels, heldout, images, p)


def get_snapshot(engine: Engine, sha256: str) -> dict | None:
    """The record of a snapshot, or None."""
    with reading(engine) as conn:
        row = conn.execute(select(snapshots).where(snapshots.c.sha256 == sha256)).first()
    if row is None:
        return None
    d = dict(row._mapping)
    d["devices"] = json.loads(d["devices"])
    d["classes"] = json.loads(d["classes"])
    return d


__all__ = [
    "Snapshot",
    "SnapshotError",
    "digest",
    "get_snapshot",
    "make_snapshot",
    "read_snapshot",
    "split_by_device",
    "write_snapshot",
]
