"""Crash-safe store of a device's corrections: a write-ahead journal plus an HDF5 snapshot.

HDF5 is not crash-safe by itself, so the snapshot is never written in place. Every change is
first appended to the journal and fsynced (``add`` returns only then); the journal is the main
record. The snapshot (``hwrcore.snapshot``) is rewritten whole, in a background thread, only
when the journal has grown to ``COMPACT_RATIO`` times the snapshot's size (and at least
``COMPACT_MIN_BYTES``), so each byte stored is rewritten a bounded number of times, however
large the store (``bench/store_io.py`` measures it); and on close, so a stopped device leaves a
complete snapshot. Opening replays the journal records that the snapshot does not hold yet, so
a power cut at any moment loses nothing that was acknowledged.

A correction has a bounded size: its strokes are simplified (Ramer-Douglas-Peucker within
``STROKE_TOLERANCE`` of the drawing's longer side) and rounded to 0.1 px, and refused
(:class:`InvalidCorrection`, code ``drawing_too_large``) when their JSON is still over
``MAX_STROKES_BYTES``. Strokes are not kept in memory: a row says where its strokes lie (the
snapshot's row, or the journal record's offset) and they are read when an upload or ``get``
needs them; :meth:`CorrectionStore.newest_vectors` gives the personaliser what it needs without
them, so start-up memory does not grow with the size of the drawings.

Bounds: over ``cap`` rows the oldest rows the server no longer needs are dropped (synced ones,
and ones withdrawn before they were sent); a pending one is never dropped. With
``pending_limit`` pending rows, ``add`` refuses a new correction (:class:`StoreFull`, code
``store_full``) and writes nothing.

Withdrawn and confirmed: ``withdraw(id, by)`` keeps the row, marked withdrawn; it then takes no
part in personalisation, and, if the server already has it, waits in
``pending_withdrawals()`` until ``mark_withdrawal_synced`` (one withdrawn before it was sent is
never sent). A row of ``kind`` "confirmation" (the pupil said the model was right) is stored
and synced like a correction and counted apart; it is not used by the personaliser, which would
only be told what the model already says.

Damage: the snapshot has a CRC32 per row and one over its attributes. A row that fails is taken
from the backup snapshot and the old journal when a row there has the same checksum, else
dropped and counted (``stats()["recovered"]["rows_lost"]``), never served. The journal's
sequence numbers, and a high-water mark beside it (``.head``: the last acknowledged sequence
number), tell a torn last record (an unacknowledged write, ignored) from damage that lost
acknowledged records (``lost_records``, logged at ERROR).

Files, for a store at ``custom_digits.h5``:
  custom_digits.h5              snapshot: every row up to journal record ``journal_seq``
  custom_digits.h5.journal      write-ahead journal: the records after the snapshot
  custom_digits.h5.head         the last acknowledged sequence number (16 bytes, CRC-checked)
  custom_digits.h5.bak          the previous snapshot, used when the snapshot does not open
  custom_digits.h5.journal.old  the records after the previous snapshot, replayed with ``.bak``
  custom_digits.h5.lock         locked (flock) by the one process that has the store open
  custom_digits.h5.corrupt      a snapshot that failed to open or had bad rows, kept to inspect

Journal records (framing in ``hwrcore.journal``): a checksummed UTF-8 JSON payload with ``op``
"add" (a whole row: ``imagez`` the zlib-compressed little-endian float32 image in base64, or
``image`` uncompressed in older journals; ``kind``, absent in older journals: "correction"),
"synced" (ids), "drop" (ids evicted over the cap), "embedded" (embeddings made again by
another model version, ``[[id, base64], ...]``), "withdraw" (``id``, ``t``, ``by``) or
"withdrawal_synced" (ids). Replay applies each sequence number once, in order, so replaying a
record the snapshot already holds changes nothing.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import threading
import time
import uuid
import zlib
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from .errors import HwrError
from .journal import JournalReader, decode_mark, encode_mark, encode_record, read_record
from .snapshot import (
    IMAGE_SHAPE,
    KIND,
    SCHEMA_VERSION,
    Row,
    SchemaTooNew,
    SnapshotSource,
    frozen,
    read_snapshot,
    row_crc,
    write_snapshot,
)

log = logging.getLogger(__name__)

COMPACT_MIN_BYTES = 4 << 20  # journal bytes before the first compaction of a small store
COMPACT_RATIO = 2.0  # compact when the journal reaches this multiple of the snapshot's size
EVICTION_LOG_SECONDS = 60.0
PENDING_LIMIT = 10_000  # pending corrections a store holds before it refuses new ones
EMBEDDED_PER_RECORD = 1000
# Strokes: simplified within this fraction of the drawing's longer side (0.05 of an output
# pixel for a digit), rounded to 0.1 px, and refused beyond MAX_STROKES_BYTES of JSON. The
# largest pendigits drawing (231 points) is 3.2 KB as recorded and 1.4 KB simplified.
STROKE_TOLERANCE = 0.0025
MAX_STROKES_BYTES = 16_384
MAX_COORD = 100_000.0
KINDS = ("correction", "confirmation")
WITHDRAWERS = ("pupil", "teacher")
_OPS = ("add", "synced", "drop", "embedded", "withdraw", "withdrawal_synced")
_datasync = getattr(os, "fdatasync", os.fsync)

__all__ = [
    "KIND",
    "KINDS",
    "SCHEMA_VERSION",
    "Correction",
    "CorrectionStore",
    "DiskFull",
    "InvalidCorrection",
    "PendingItem",
    "StoreError",
    "StoreFull",
    "Vector",
    "Withdrawal",
    "read_store",
    "recover",
    "simplify_strokes",
]


class StoreError(HwrError):
    """The store cannot be opened or written (locked by another process, disk full, newer schema)."""

    code = "store_error"


class DiskFull(StoreError):
    """The disk holding the store has no room for a new record; nothing of it was kept."""

    code = "disk_full"


class StoreFull(StoreError):
    """Too many corrections wait for the server: a new one is refused rather than an old one lost."""

    code = "store_full"


class InvalidCorrection(HwrError, ValueError):
    """A correction with a missing, malformed or oversize field; nothing is written."""

    code = "invalid_correction"


@dataclass
class Correction:
    """A pupil's correction (or confirmation) of one drawing, as the edge makes it."""

    id: str  # UUID4 made on the device
    label: str  # canonical class label
    image: np.ndarray  # (28, 28) float32 0..1 model input
    strokes: list | None  # the drawing's strokes ([[x, y], ...] per stroke) or None (PNG)
    predicted: str | None
    confidence: float | None
    model_version: str
    created: float  # unix time
    embedding: np.ndarray | None = None  # float32 (d,) penultimate-layer embedding
    synced: bool = False
    embedding_version: str | None = None  # the model that made ``embedding``: None = model_version
    kind: str = "correction"  # or "confirmation": label == predicted, the model was right
    withdrawn: float | None = None  # unix time it was withdrawn; None while it stands
    withdrawn_by: str | None = None  # "pupil" or "teacher"
    withdrawal_synced: bool = False  # the server has acknowledged the withdrawal

    @property
    def embedded_by(self) -> str:
        """Version of the model whose embedding this correction carries."""
        return self.embedding_version or self.model_version


@dataclass(frozen=True)
class Vector:
    """What the personaliser needs of a stored correction: no strokes."""

    id: str
    label: str
    image: np.ndarray  # (28, 28) float32, read-only
    embedding: np.ndarray | None  # read-only
    embedded_by: str  # version of the model that made ``embedding``


@dataclass(frozen=True)
class PendingItem:
    """A correction not yet synced, in the form an upload sends (arrays base64, strokes JSON).

    ``strokes`` is the stored compact JSON text (``"null"`` for a PNG drawing), so an upload
    can place it in its body without parsing it again; ``embedding_version`` names the model
    that made ``embedding`` (None when there is no embedding).
    """

    id: str
    label: str
    image: str  # base64 of the 784 little-endian float32 of the (28, 28) model input
    strokes: str
    predicted: str | None
    confidence: float | None
    model_version: str
    created: float
    updated: float
    embedding: str | None
    embedding_version: str | None
    kind: str = "correction"


@dataclass(frozen=True)
class Withdrawal:
    """A withdrawal the server has not acknowledged yet, of a correction it has."""

    id: str
    withdrawn: float  # unix time
    by: str  # "pupil" or "teacher"


# -- strokes ---------------------------------------------------------------------------------
def _rdp(pts: np.ndarray, tol: float) -> np.ndarray:
    """Indices of the points Ramer-Douglas-Peucker keeps within ``tol`` (iterative).

    Long segments are measured with numpy, short ones (most of them, where a drawing is
    jagged) in plain Python, which is faster there.
    """
    n = len(pts)
    if n < 3:
        return np.arange(n)
    xs, ys = pts[:, 0].tolist(), pts[:, 1].tolist()
    keep = np.zeros(n, dtype=bool)
    keep[0] = keep[-1] = True
    stack = [(0, n - 1)]
    while stack:
        a, b = stack.pop()
        if b - a < 2:
            continue
        ax, ay = xs[a], ys[a]
        dx, dy = xs[b] - ax, ys[b] - ay
        length = math.hypot(dx, dy)
        if b - a > 48:
            seg = pts[a + 1 : b] - pts[a]
            if length > 0:
                dist = np.abs(dx * seg[:, 1] - dy * seg[:, 0]) / length
            else:
                dist = np.hypot(seg[:, 0], seg[:, 1])
            i = int(np.argmax(dist))
            far, m = float(dist[i]), a + 1 + i
        else:
            far, m = -1.0, a
            for j in range(a + 1, b):
                px, py = xs[j] - ax, ys[j] - ay
                d = abs(dx * py - dy * px) / length if length > 0 else math.hypot(px, py)
                if d > far:
                    far, m = d, j
        if far > tol:
            keep[m] = True
            stack += [(a, m), (m, b)]
    return np.flatnonzero(keep)


def _coord(v: float) -> str:
    s = f"{v:.1f}"
    s = s[:-2] if s.endswith(".0") else s
    return "0" if s == "-0" else s


def simplify_strokes(strokes: object) -> str:
    """Strokes as the store keeps them: compact JSON, simplified, rounded to 0.1 px.

    None (a PNG drawing) is ``"null"``. InvalidCorrection unless a list of strokes of finite
    [x, y] points within +-MAX_COORD, or when the result is over ``MAX_STROKES_BYTES``.
    """
    if strokes is None:
        return "null"
    if not isinstance(strokes, (list, tuple)):
        raise InvalidCorrection("strokes must be a list of strokes of [x, y] points")
    arrays = []
    for s in strokes:
        if not isinstance(s, (list, tuple)):
            raise InvalidCorrection("each stroke must be a list of [x, y] points")
        try:
            a = np.array(s, dtype=np.float64).reshape(len(s), 2) if s else np.zeros((0, 2))
        except (TypeError, ValueError, OverflowError):
            raise InvalidCorrection("strokes must be JSON lists of [x, y] numbers") from None
        if not np.all(np.isfinite(a)) or (a.size and np.abs(a).max() > MAX_COORD):
            raise InvalidCorrection(f"stroke coordinates must be finite, within +-{MAX_COORD:g}")
        arrays.append(a)
    pts = np.concatenate(arrays) if arrays else np.zeros((0, 2))
    side = float(np.ptp(pts, axis=0).max()) if len(pts) else 0.0
    tol = STROKE_TOLERANCE * side
    parts = []
    for a in arrays:
        kept = a[_rdp(a, tol)] if tol > 0 else a
        parts.append("[" + ",".join(f"[{_coord(x)},{_coord(y)}]" for x, y in kept) + "]")
    text = "[" + ",".join(parts) + "]"
    if len(text) > MAX_STROKES_BYTES:
        raise InvalidCorrection(
            f"the drawing is too large to store ({len(text)} bytes of strokes once simplified; "
            f"at most {MAX_STROKES_BYTES})",
            code="drawing_too_large",
        )
    return text


# -- rows ------------------------------------------------------------------------------------
def _finite(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise InvalidCorrection(f"{name} must be a number, got {type(value).__name__}")
    f = float(value)
    if not math.isfinite(f):
        raise InvalidCorrection(f"{name} must be finite, got {f}")
    return f


def _embedding(v: object) -> np.ndarray:
    """A read-only float32 copy of an embedding; InvalidCorrection unless finite, 1-D, non-empty."""
    e = np.array(v, dtype=np.float32)
    if e.ndim != 1 or e.size == 0 or not np.all(np.isfinite(e)):
        raise InvalidCorrection(f"embedding must be a finite 1-D vector, got {e.shape}")
    return frozen(e)


def _row_from(c: Correction, updated: float) -> tuple[Row, str]:
    """Validate a correction; its immutable row (not yet placed on disk) and strokes text."""
    try:
        ok_id = isinstance(c.id, str) and str(uuid.UUID(c.id)) == c.id
    except ValueError:
        ok_id = False
    if not ok_id:
        raise InvalidCorrection(f"id must be a canonical UUID string, got {c.id!r}")
    if not isinstance(c.label, str) or not c.label:
        raise InvalidCorrection("label must be a non-empty string")
    if c.predicted is not None and not isinstance(c.predicted, str):
        raise InvalidCorrection("predicted must be a string or None")
    if not isinstance(c.model_version, str):
        raise InvalidCorrection("model_version must be a string")
    if c.embedding_version is not None and not isinstance(c.embedding_version, str):
        raise InvalidCorrection("embedding_version must be a string or None")
    if c.kind not in KINDS:
        raise InvalidCorrection(f"kind must be one of {KINDS}, got {c.kind!r}")
    if c.kind == "confirmation" and c.predicted != c.label:
        raise InvalidCorrection("a confirmation's label must be the model's prediction")
    if c.withdrawn is not None or c.withdrawn_by is not None:
        raise InvalidCorrection("a new correction cannot be withdrawn already: use withdraw()")
    image = np.array(c.image, dtype=np.float32)
    if image.shape != IMAGE_SHAPE or not np.all(np.isfinite(image)):
        raise InvalidCorrection(f"image must be finite float {IMAGE_SHAPE}, got {image.shape}")
    if image.min() < 0.0 or image.max() > 1.0:
        raise InvalidCorrection("image values must lie in 0..1")
    emb = None if c.embedding is None else _embedding(c.embedding)
    strokes = simplify_strokes(c.strokes)
    conf = None if c.confidence is None else _finite(c.confidence, "confidence")
    row = Row(
        id=c.id,
        label=c.label,
        image=frozen(image),
        predicted=c.predicted or None,
        confidence=conf,
        model_version=c.model_version,
        created=_finite(c.created, "created"),
        updated=updated,
        synced=bool(c.synced),
        embedding=emb,
        embedding_version=(c.embedding_version or None) if emb is not None else None,
        kind=c.kind,
        withdrawn=None,
        withdrawn_by=None,
        withdrawal_synced=False,
        at=(None, 0),
    )
    return row, strokes


def _correction(r: Row, strokes: str) -> Correction:
    """The public form of a row; its arrays are the row's own, read-only."""
    return Correction(
        id=r.id,
        label=r.label,
        image=r.image,
        strokes=json.loads(strokes),
        predicted=r.predicted,
        confidence=r.confidence,
        model_version=r.model_version,
        created=r.created,
        embedding=r.embedding,
        synced=r.synced,
        embedding_version=r.embedding_version,
        kind=r.kind,
        withdrawn=r.withdrawn,
        withdrawn_by=r.withdrawn_by,
        withdrawal_synced=r.withdrawal_synced,
    )


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def _unb64(s: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    a = np.frombuffer(base64.b64decode(s), dtype="<f4").astype(np.float32)
    return frozen(a.reshape(shape) if shape else a)


def _add_payload(row: Row, strokes: str) -> dict[str, Any]:
    raw = np.ascontiguousarray(row.image, dtype="<f4").tobytes()
    return {
        "op": "add",
        "id": row.id,
        "label": row.label,
        "imagez": base64.b64encode(zlib.compress(raw, 6)).decode("ascii"),
        "strokes": strokes,
        "predicted": row.predicted,
        "confidence": row.confidence,
        "model_version": row.model_version,
        "created": row.created,
        "updated": row.updated,
        "synced": row.synced,
        "embedding": None if row.embedding is None else _b64(row.embedding),
        "embedding_version": row.embedding_version,
        "kind": row.kind,
    }


def _row_from_payload(p: dict[str, Any], at: tuple[Any, int]) -> Row:
    emb = p["embedding"]
    if "imagez" in p:
        raw = zlib.decompress(base64.b64decode(p["imagez"]), bufsize=4 * 28 * 28)
        image = frozen(np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(IMAGE_SHAPE))
    else:
        image = _unb64(p["image"], IMAGE_SHAPE)
    kind = p.get("kind") or "correction"
    if kind not in KINDS or not isinstance(p["strokes"], str):
        raise ValueError(f"an add record with kind {kind!r} or strokes not as text")
    return Row(
        id=p["id"],
        label=p["label"],
        image=image,
        predicted=p["predicted"],
        confidence=p["confidence"],
        model_version=p["model_version"],
        created=float(p["created"]),
        updated=float(p["updated"]),
        synced=bool(p["synced"]),
        embedding=None if emb is None else _unb64(emb),
        embedding_version=p.get("embedding_version") or None,
        kind=kind,
        withdrawn=None,
        withdrawn_by=None,
        withdrawal_synced=False,
        at=at,
    )


def _needs_upload(r: Row) -> bool:
    return not r.synced and r.withdrawn is None


def _withdrawal_pending(r: Row) -> bool:
    return r.withdrawn is not None and r.synced and not r.withdrawal_synced


def _evictable(r: Row) -> bool:
    """The server needs nothing more of it: synced (and any withdrawal too), or withdrawn unsent."""
    return not _needs_upload(r) and not _withdrawal_pending(r)


def _apply(rows: dict[str, Row], p: dict[str, Any], at: tuple[Any, int]) -> None:
    op = p["op"]
    if op == "add":
        row = _row_from_payload(p, at)
        rows.setdefault(row.id, row)
    elif op == "synced":
        for i in p["ids"]:
            r = rows.get(i)
            if r is not None and not r.synced:
                rows[i] = replace(r, synced=True, updated=float(p["t"]))
    elif op == "embedded":
        version = str(p["version"])
        for i, vec in p["items"]:
            r = rows.get(i)
            if r is not None:
                rows[i] = replace(r, embedding=_unb64(vec), embedding_version=version)
    elif op == "withdraw":
        r = rows.get(p["id"])
        if r is not None and r.withdrawn is None:
            t = float(p["t"])
            rows[p["id"]] = replace(r, withdrawn=t, withdrawn_by=str(p["by"]), updated=t)
    elif op == "withdrawal_synced":
        for i in p["ids"]:
            r = rows.get(i)
            if r is not None and r.withdrawn is not None:
                rows[i] = replace(r, withdrawal_synced=True)
    else:
        for i in p["ids"]:
            rows.pop(i, None)


# -- where strokes lie -------------------------------------------------------------------------
class JournalSource:
    """The strokes of rows whose add record is in a journal file, read on demand (own fd)."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_RDONLY)

    def read(self, keys: Sequence[int]) -> list[str]:
        """The strokes text of the add records at these offsets."""
        return [read_record(self.fd, k)["strokes"] for k in keys]

    def close(self) -> None:
        """Close the file."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def read_strokes(rows: Sequence[Row]) -> list[str]:
    """The strokes text of each row, read from its source, a source at a time."""
    out: list[str | None] = [None] * len(rows)
    by_source: dict[int, tuple[Any, list[int]]] = {}
    for i, r in enumerate(rows):
        by_source.setdefault(id(r.at[0]), (r.at[0], []))[1].append(i)
    for source, idx in by_source.values():
        for i, text in zip(idx, source.read([rows[i].at[1] for i in idx]), strict=True):
            out[i] = text
    return out  # type: ignore[return-value]


# -- recovery ----------------------------------------------------------------------------------
@dataclass
class Recovery:
    """The state rebuilt from the files, and how (for the log and ``stats()``)."""

    rows: dict[str, Row]
    seq: int
    source: str  # 'snapshot', 'backup', 'journal' (no snapshot opened) or 'new'
    snapshot_error: str | None  # why the snapshot did not open, if it did not
    replayed: int  # records applied on top of the snapshot
    missing: int  # sequence numbers absent between the snapshot and the journal's last record
    lost_tail: int  # acknowledged records (per the high-water mark) after the journal's last
    torn: int  # bytes after the live journal's last good record
    skipped: int  # damaged bytes before a later good record in the live journal
    live_end: int  # offset just past the live journal's last good record
    live_records: int
    mark: int | None  # the high-water mark, None when missing or damaged
    bad_rows: int  # snapshot rows that failed their checksum or could not be read
    repaired: int  # of which taken from the backup or the old journal
    unverified: int  # rows of a schema-1 snapshot, which has no row checksums
    sources: list[Any]  # open files the rows' strokes are read from

    @property
    def lost_records(self) -> int:
        """Acknowledged journal records known to be lost."""
        return self.missing + self.lost_tail

    @property
    def rows_lost(self) -> int:
        """Snapshot rows that failed their checksum and could not be repaired."""
        return self.bad_rows - self.repaired

    def close(self) -> None:
        """Close the files the rows' strokes would be read from."""
        for s in self.sources:
            with contextlib.suppress(OSError, ValueError, RuntimeError):
                s.close()


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _index_journal(
    path: Path, index: dict[int, tuple[Any, int]], sources: list[Any]
) -> JournalReader | None:
    """Add ``seq -> (source, offset)`` of each good record of a journal file to ``index``."""
    try:
        src = JournalSource(path)
    except FileNotFoundError:
        return None
    sources.append(src)
    reader = JournalReader(src.fd, _OPS)
    for off, seq, _payload in reader:
        index.setdefault(seq, (src, off))
    return reader


def _replay(
    state: dict[str, Row], index: dict[int, tuple[Any, int]], after: int, upto: float, name: str
) -> tuple[int, int, int]:
    """Apply the indexed records after ``after`` up to ``upto`` in order: (replayed, missing, top)."""
    replayed = missing = 0
    expected = after + 1
    top = after
    for s in sorted(k for k in index if after < k <= upto):
        missing += s - expected
        expected = s + 1
        top = s
        src, off = index[s]
        try:
            _apply(state, read_record(src.fd, off), (src, off))
            replayed += 1
        except (KeyError, TypeError, ValueError, zlib.error) as e:
            log.error("journal record %d of %s is malformed and was skipped: %s", s, name, e)
    return replayed, missing, top


def _repair(
    path: Path,
    snap_seq: int,
    bad: list[tuple[int, int | None, int | None]],
    good: set[str],
    sources: list[Any],
) -> dict[int, Row]:
    """Rows for bad snapshot indices, from the backup and the old journal (same checksum)."""
    want: dict[int, int] = {}
    for i, stored, data in bad:
        for crc in (stored, data):
            if crc is not None:
                want.setdefault(crc, i)
    state: dict[str, Row] = {}
    seq = 0
    bak = _sibling(path, ".bak")
    if bak.exists():
        with contextlib.suppress(OSError, KeyError, ValueError, TypeError, RuntimeError):
            old = read_snapshot(bak)
            if old.seq <= snap_seq:
                state = {r.id: r for r in old.rows}
                seq = old.seq
                sources.append(old.source)
    index: dict[int, tuple[Any, int]] = {}
    _index_journal(_sibling(path, ".journal.old"), index, sources)
    _replay(state, index, seq, snap_seq, path.name)
    found: dict[int, Row] = {}
    candidates = [r for r in state.values() if r.id not in good]
    for r, text in zip(candidates, read_strokes(candidates), strict=True):
        i = want.get(row_crc(r, text))
        if i is not None and i not in found:
            found[i] = r
    return found


def recover(path: str | Path) -> Recovery:
    """Rebuild the store's state from its files without writing anything."""
    path = Path(path)
    sources: list[Any] = []
    rows: list[Row] = []
    seq, source, error = 0, "new", None
    bad_rows = repaired = unverified = 0
    for candidate, name in ((path, "snapshot"), (_sibling(path, ".bak"), "backup")):
        if not candidate.exists():
            continue
        try:
            snap = read_snapshot(candidate)
        except SchemaTooNew as e:
            raise StoreError(f"{candidate} has {e}", code="store_schema") from None
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
            error = error or f"{candidate.name}: {e}"
            continue
        seq, source, unverified = snap.seq, name, snap.unverified
        sources.append(snap.source)
        by_index = {r.at[1]: r for r in snap.rows}
        if snap.bad and name == "snapshot":
            fixed = _repair(path, snap.seq, snap.bad, set(r.id for r in snap.rows), sources)
            by_index.update(fixed)
            repaired = len(fixed)
        bad_rows = len(snap.bad)
        rows = [by_index[i] for i in sorted(by_index)]
        unique: dict[str, Row] = {}
        for r in rows:  # an id twice (a damaged one that checks out): the first one stands
            unique.setdefault(r.id, r)
        rows = list(unique.values())
        break
    state = {r.id: r for r in rows}
    index: dict[int, tuple[Any, int]] = {}
    _index_journal(_sibling(path, ".journal.old"), index, sources)
    live = _index_journal(_sibling(path, ".journal"), index, sources)
    if source == "new" and (index or error):
        source = "journal"
    replayed, missing, top = _replay(state, index, seq, math.inf, path.name)
    try:
        mark = decode_mark(_sibling(path, ".head").read_bytes())
    except FileNotFoundError:
        mark = None
    top = max(seq, top)
    lost_tail = max(0, (mark or 0) - top)
    return Recovery(
        rows=state,
        seq=max(top, mark or 0),
        source=source,
        snapshot_error=error,
        replayed=replayed,
        missing=missing,
        lost_tail=lost_tail,
        torn=live.torn if live else 0,
        skipped=live.skipped if live else 0,
        live_end=live.valid_end if live else 0,
        live_records=live.count if live else 0,
        mark=mark,
        bad_rows=bad_rows,
        repaired=repaired,
        unverified=unverified,
        sources=[s for s in sources if s is not None],
    )


def _file_ids(path: Path) -> tuple[tuple[int, int] | None, ...]:
    """(device, inode) of the snapshot and journal files: compaction replaces them by rename."""
    out = []
    for suffix in ("", ".bak", ".journal", ".journal.old"):
        try:
            st = os.stat(_sibling(path, suffix))
            out.append((st.st_dev, st.st_ino))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


def read_store(path: str | Path, attempts: int = 50) -> list[Correction]:
    """Every correction of a store, snapshot and journal, read without locking or writing.

    A writer may compact while this reads, renaming the files between the snapshot and the
    journals; a read that saw any file replaced is read again, so the result is one state.
    """
    path = Path(path)
    for i in range(attempts):
        before = _file_ids(path)
        try:
            rec = recover(path)
            try:
                rows = list(rec.rows.values())
                out = [_correction(r, s) for r, s in zip(rows, read_strokes(rows), strict=True)]
            finally:
                rec.close()
        except (OSError, ValueError, KeyError, RuntimeError):
            if i == attempts - 1:
                raise
            time.sleep(0.01)
            continue
        if _file_ids(path) == before or i == attempts - 1:
            return out
        time.sleep(0.01)
    raise AssertionError("unreachable")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class CorrectionStore:
    """A device's corrections: durable on return from every write, thread-safe, bounded."""

    def __init__(
        self,
        path: str | Path,
        *,
        cap: int = 5000,
        pending_limit: int = PENDING_LIMIT,
        fsync: bool = True,
        compact_every: int | None = None,
        lock_timeout: float = 10.0,
    ):
        """``compact_every`` (records) also triggers a compaction; by default only size does."""
        if cap < 1 or pending_limit < 1 or (compact_every is not None and compact_every < 1):
            raise ValueError(
                "cap, pending_limit and compact_every must be at least 1, "
                f"got {cap}, {pending_limit}, {compact_every}"
            )
        self.path = Path(path)
        self.cap = cap
        self.pending_limit = pending_limit
        self._fsync = fsync
        self._compact_every = compact_every
        self._next_compact = compact_every or 0  # journal records that trigger a compaction
        self._compact_at = COMPACT_MIN_BYTES  # journal bytes that trigger a compaction
        self._journal = _sibling(self.path, ".journal")
        self._journal_old = _sibling(self.path, ".journal.old")
        self._journal_new = _sibling(self.path, ".journal.new")
        self._head = _sibling(self.path, ".head")
        self._bak = _sibling(self.path, ".bak")
        self._tmp = _sibling(self.path, ".tmp")
        self._lock = threading.Lock()
        self._files_lock = threading.RLock()  # held while strokes are read or files swapped
        self._compact_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._compacting = False
        self._closed = False
        self._jfd = -1
        self._hfd = -1
        self._sources: list[Any] = []
        self._counts = {"pending": 0, "pending_withdrawals": 0, "confirmations": 0, "withdrawn": 0}
        self._evicted = 0  # rows evicted over the cap since opening
        self._evict_reported = 0  # of which the log has been told
        self._evict_logged = -math.inf
        self._last_compaction: dict[str, Any] | None = None
        self._compaction_failures = 0  # background compactions failed in a row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._take_lock(lock_timeout)
        try:
            self._open()
        except BaseException:
            self._release()
            raise

    # -- opening and recovery ---------------------------------------------------------------
    def _take_lock(self, timeout: float) -> int:
        lock_path = _sibling(self.path, ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise StoreError(
                        f"{self.path} is open in another process (lock {lock_path.name} held)",
                        code="store_locked",
                    ) from None
                time.sleep(0.05)

    def _release(self) -> None:
        for fd_name in ("_jfd", "_hfd", "_lock_fd"):  # closing the lock's fd releases the flock
            fd = getattr(self, fd_name, -1)
            if fd >= 0:
                os.close(fd)
                setattr(self, fd_name, -1)
        for s in getattr(self, "_sources", []):
            with contextlib.suppress(OSError, ValueError, RuntimeError):
                s.close()
        self._sources = []

    def _count(self, r: Row, k: int) -> None:
        """Keep the counts of ``stats()`` as rows come and go (lock held)."""
        c = self._counts
        c["pending"] += k * _needs_upload(r)
        c["pending_withdrawals"] += k * _withdrawal_pending(r)
        c["confirmations"] += k * (r.kind == "confirmation" and r.withdrawn is None)
        c["withdrawn"] += k * (r.withdrawn is not None)

    def _set(self, r: Row) -> None:
        """Put a row in place of the one with its id (lock held)."""
        old = self._rows.get(r.id)
        if old is not None:
            self._count(old, -1)
        self._rows[r.id] = r
        self._count(r, +1)

    def _open(self) -> None:
        for leftover in (self._tmp, self._journal_new):
            leftover.unlink(missing_ok=True)
        rec = recover(self.path)
        self._sources = rec.sources
        name = self.path.name
        if rec.snapshot_error:
            log.error(
                "store snapshot did not open (%s); recovered from %s",
                rec.snapshot_error,
                rec.source,
            )
        if rec.bad_rows:
            log.error(
                "%s: %d snapshot rows failed their checksum; %d repaired from the backup and "
                "the old journal, %d lost",
                name,
                rec.bad_rows,
                rec.repaired,
                rec.rows_lost,
            )
        if (rec.snapshot_error or rec.bad_rows) and self.path.exists():
            os.replace(self.path, _sibling(self.path, ".corrupt"))
        if rec.lost_records:
            log.error(
                "%s: the journal is damaged: %d acknowledged records are lost (%d missing "
                "between records, %d after the last one, per the high-water mark)",
                name,
                rec.lost_records,
                rec.missing,
                rec.lost_tail,
            )
        self._rows: dict[str, Row] = {}
        for r in rec.rows.values():
            self._set(r)
        self._seq = rec.seq
        self._recovery = {
            "source": rec.source,
            "replayed": rec.replayed,
            "torn_bytes": 0 if rec.lost_tail else rec.torn,
            "damaged_bytes": rec.skipped,
            "missing": rec.missing,
            "lost_records": rec.lost_records,
            "journal": "damaged" if rec.lost_records or rec.skipped else "ok",
            "bad_rows": rec.bad_rows,
            "repaired_rows": rec.repaired,
            "rows_lost": rec.rows_lost,
            "unverified_rows": rec.unverified,
        }
        # What /healthz shows as reasons for "degraded" (no paths): losses found at opening.
        self._problems = []
        if rec.lost_records:
            self._problems.append(
                f"the journal had lost {rec.lost_records} acknowledged records when it was opened"
            )
        if rec.rows_lost:
            self._problems.append(
                f"{rec.rows_lost} snapshot rows failed their checksum and could not be repaired"
            )
        damaged = rec.skipped > 0 or rec.lost_records > 0 or rec.bad_rows > 0
        # Records replayed from the previous journal (a compaction cut short between its renames)
        # are in no snapshot yet and would be lost with that journal at the next compaction.
        must_compact = rec.source != "snapshot" or damaged or rec.replayed > rec.live_records
        created = not self._journal.exists()
        self._jfd = os.open(self._journal, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        self._hfd = os.open(self._head, os.O_RDWR | os.O_CREAT, 0o644)
        if rec.torn and not rec.skipped:
            if not rec.lost_tail:
                log.warning(
                    "%s: ignored a torn record (%d bytes) at the journal's end", name, rec.torn
                )
            os.ftruncate(self._jfd, rec.live_end)
            if self._fsync:
                os.fsync(self._jfd)
        if created and self._fsync:
            _fsync_dir(self.path.parent)
        self._jsrc = JournalSource(self._journal)
        self._sources.append(self._jsrc)
        self._journal_bytes = os.fstat(self._jfd).st_size
        self._journal_records = rec.live_records
        self._snapshot_bytes = self._size(self.path)
        self._compact_at = self._threshold()
        with self._lock:
            drops = self._eviction(0)
            if drops:
                self._append([{"op": "drop", "ids": drops}], background=False)
                self._drop(drops)
        log.info(
            "opened %s: %d corrections (%d pending) from %s + %d journal records",
            name,
            len(self._rows),
            self._counts["pending"],
            rec.source,
            rec.replayed,
        )
        if must_compact or self._due():
            with self._compact_lock:
                self._compact_locked()

    @staticmethod
    def _size(p: Path) -> int:
        try:
            return p.stat().st_size
        except FileNotFoundError:
            return 0

    def _threshold(self) -> int:
        """Journal bytes at which the snapshot is rewritten: a multiple of its size."""
        return max(COMPACT_MIN_BYTES, int(COMPACT_RATIO * self._snapshot_bytes))

    def _due(self) -> bool:
        by_count = self._compact_every is not None and self._journal_records >= self._next_compact
        return by_count or self._journal_bytes >= self._compact_at

    # -- writing ------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.path} is closed", code="store_closed")

    def _append(self, payloads: list[dict[str, Any]], *, background: bool = True) -> list[int]:
        """Append records to the journal and make them durable; their offsets. On failure,
        write nothing."""
        try:
            records = [encode_record(self._seq + 1 + i, p) for i, p in enumerate(payloads)]
        except ValueError as e:  # over the journal's record limit: refused before any write
            raise InvalidCorrection(str(e)) from None
        start = self._journal_bytes
        data = b"".join(records)
        try:
            _write_all(self._jfd, data)
            if self._fsync:
                _datasync(self._jfd)
        except OSError as e:
            try:
                os.ftruncate(self._jfd, start)
            except OSError as e2:
                log.error("could not cut a failed write from %s: %s", self._journal.name, e2)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(f"no room on the disk for {self._journal}: {e}") from e
            raise StoreError(
                f"could not write {self._journal}: {e}", code="store_write_failed"
            ) from e
        self._seq += len(payloads)
        # The high-water mark: written after the records are durable, never fsynced here (the
        # page cache survives a killed process; compaction and close fsync it).
        with contextlib.suppress(OSError):
            os.pwrite(self._hfd, encode_mark(self._seq), 0)
        offsets = []
        pos = start
        for r in records:
            offsets.append(pos)
            pos += len(r)
        self._journal_bytes += len(data)
        self._journal_records += len(payloads)
        if background and self._due() and not self._compacting:
            self._compacting = True
            self._thread = threading.Thread(
                target=self._background_compact, name=f"compact-{self.path.name}", daemon=True
            )
            self._thread.start()
        return offsets

    def _eviction(self, incoming: int) -> list[str]:
        """Ids to drop so that ``incoming`` more fit the cap: the oldest the server no longer
        needs, never a pending one (the store may then hold more than ``cap``)."""
        excess = len(self._rows) + incoming - self.cap
        if excess <= 0:
            return []
        return list(islice((i for i, r in self._rows.items() if _evictable(r)), excess))

    def _drop(self, ids: list[str]) -> None:
        """Forget evicted rows; warn with the exact count, at most once a minute."""
        if not ids:
            return
        for i in ids:
            self._count(self._rows.pop(i), -1)
        self._evicted += len(ids)
        if time.monotonic() - self._evict_logged >= EVICTION_LOG_SECONDS:
            self._report_evictions()

    def _report_evictions(self) -> None:
        """Log the evictions not yet logged (also on close, so the log's counts add up)."""
        n = self._evicted - self._evict_reported
        if n <= 0:
            return
        log.warning(
            "%s is over its cap of %d: dropped the %d oldest synced corrections "
            "(%d since it was opened)",
            self.path.name,
            self.cap,
            n,
            self._evicted,
        )
        self._evict_logged, self._evict_reported = time.monotonic(), self._evicted

    def add(self, c: Correction) -> None:
        """Store a correction; returns only when it is durable. An id already stored is a no-op.

        Strokes are simplified and rounded (``simplify_strokes``); InvalidCorrection (nothing
        written) for a malformed or oversize one. With ``pending_limit`` corrections waiting
        for the server a new pending one is refused (StoreFull, nothing written): old ones are
        never dropped to make room.
        """
        row, strokes = _row_from(c, time.time())
        with self._lock:
            self._check_open()
            if row.id in self._rows:
                return
            if not row.synced and self._counts["pending"] >= self.pending_limit:
                raise StoreFull(
                    f"this device holds {self._counts['pending']} corrections not yet sent to "
                    "the school's server; connect it to sync before adding more"
                )
            drops = self._eviction(1)
            payloads = [_add_payload(row, strokes)]
            payloads += [{"op": "drop", "ids": drops}] if drops else []
            offsets = self._append(payloads)
            self._drop(drops)
            self._set(replace(row, at=(self._jsrc, offsets[0])))

    def mark_synced(self, ids: Iterable[str]) -> int:
        """Record that the server has these corrections (durably); returns how many changed."""
        with self._lock:
            self._check_open()
            changed = list(
                dict.fromkeys(i for i in ids if i in self._rows and not self._rows[i].synced)
            )
            if not changed:
                return 0
            t = time.time()
            self._append([{"op": "synced", "ids": changed, "t": t}])
            for i in changed:
                self._set(replace(self._rows[i], synced=True, updated=t))
            return len(changed)

    def withdraw(self, id: str, by: str) -> bool:
        """Withdraw a stored correction (durably): kept, marked withdrawn, out of personalisation.

        ``by`` is "pupil" (an undo) or "teacher". One the server has waits in
        ``pending_withdrawals()``; one not yet sent will never be. False when the id is not
        stored or already withdrawn (nothing written).
        """
        if by not in WITHDRAWERS:
            raise InvalidCorrection(f"by must be one of {WITHDRAWERS}, got {by!r}")
        with self._lock:
            self._check_open()
            r = self._rows.get(id)
            if r is None or r.withdrawn is not None:
                return False
            t = time.time()
            self._append([{"op": "withdraw", "id": id, "t": t, "by": by}])
            self._set(replace(r, withdrawn=t, withdrawn_by=by, updated=t))
            return True

    def pending_withdrawals(self, limit: int | None = None) -> list[Withdrawal]:
        """Withdrawals of corrections the server has, not yet acknowledged, oldest first."""
        with self._lock:
            if not self._counts["pending_withdrawals"]:
                return []
            rows = [r for r in self._rows.values() if _withdrawal_pending(r)]
        rows.sort(key=lambda r: r.withdrawn or 0.0)
        return [Withdrawal(r.id, r.withdrawn or 0.0, r.withdrawn_by or "") for r in rows[:limit]]

    def mark_withdrawal_synced(self, ids: Iterable[str]) -> int:
        """Record that the server has these withdrawals (durably); returns how many changed."""
        with self._lock:
            self._check_open()
            changed = list(
                dict.fromkeys(
                    i for i in ids if i in self._rows and _withdrawal_pending(self._rows[i])
                )
            )
            if not changed:
                return 0
            self._append([{"op": "withdrawal_synced", "ids": changed, "t": time.time()}])
            for i in changed:
                self._set(replace(self._rows[i], withdrawal_synced=True))
            return len(changed)

    def set_embeddings(self, version: str, vectors: dict[str, np.ndarray]) -> int:
        """Keep embeddings that model ``version`` made again for stored corrections (durably).

        After a model update the stored embeddings belong to the old model; keeping the new
        ones spares the next start from computing them again. Ids no longer stored are
        skipped; returns how many rows changed.
        """
        if not isinstance(version, str) or not version:
            raise InvalidCorrection("version must be a non-empty string")
        clean = {i: _embedding(v) for i, v in vectors.items()}
        with self._lock:
            self._check_open()
            ids = [i for i in clean if i in self._rows]
            if not ids:
                return 0
            payloads = [
                {
                    "op": "embedded",
                    "version": version,
                    "items": [[i, _b64(clean[i])] for i in ids[k : k + EMBEDDED_PER_RECORD]],
                }
                for k in range(0, len(ids), EMBEDDED_PER_RECORD)
            ]
            self._append(payloads)
            for i in ids:
                self._set(replace(self._rows[i], embedding=clean[i], embedding_version=version))
            return len(ids)

    # -- compaction ---------------------------------------------------------------------------
    def compact(self) -> None:
        """Rewrite the snapshot now and start a fresh journal (also done as the journal grows)."""
        with self._compact_lock:
            self._check_open()
            self._compact_locked()

    def _background_compact(self) -> None:
        """Compact in a thread so that the add() that filled the journal does not wait for it."""
        try:
            with self._compact_lock:
                if not self._closed:
                    self._compact_locked()
        except Exception:  # logged, never lost in a thread; the journal still has every change
            log.exception("compaction of %s failed; the journal keeps every change", self.path.name)
            with self._lock:
                self._compaction_failures += 1
                self._next_compact = self._journal_records + (self._compact_every or 0)
                self._compact_at = self._journal_bytes + self._threshold()
        finally:
            with self._lock:
                self._compacting = False

    def _compact_locked(self) -> None:
        """Snapshot the state, write it beside the old one, then swap files; holds _compact_lock.

        Strokes are read from where they lie a block at a time; the files the rows point into
        stay open until the swap, which points every row at the new snapshot or journal.
        """
        t0 = time.perf_counter()
        with self._lock:
            rows = list(self._rows.values())
            seq, offset, records = self._seq, self._journal_bytes, self._journal_records
        try:
            write_snapshot(self._tmp, rows, read_strokes, seq, fsync=self._fsync)
        except BaseException:
            with contextlib.suppress(OSError):
                self._tmp.unlink(missing_ok=True)
            raise
        with self._files_lock, self._lock:
            if self.path.exists():
                os.replace(self.path, self._bak)
            os.replace(self._tmp, self.path)
            # Records appended while the snapshot was written belong to the new journal too.
            tail = os.pread(self._jfd, self._journal_bytes - offset, offset)
            fd = os.open(self._journal_new, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _write_all(fd, tail)
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self._journal, self._journal_old)
            os.replace(self._journal_new, self._journal)
            if self._fsync:
                _fsync_dir(self.path.parent)
                with contextlib.suppress(OSError):
                    os.fsync(self._hfd)
            os.close(self._jfd)
            self._jfd = os.open(self._journal, os.O_RDWR | os.O_APPEND)
            old_live = self._jsrc
            snap = SnapshotSource(self.path)
            self._jsrc = JournalSource(self._journal)
            position = {r.id: i for i, r in enumerate(rows)}
            for r in list(self._rows.values()):
                i = position.get(r.id)
                if i is not None:
                    at: tuple[Any, int] = (snap, i)
                elif r.at[0] is old_live and r.at[1] >= offset:
                    at = (self._jsrc, r.at[1] - offset)
                else:  # cannot happen: every row is in the snapshot or in the tail
                    raise RuntimeError(f"row {r.id} lies neither in the snapshot nor the tail")
                self._rows[r.id] = replace(r, at=at)
            for s in self._sources:
                with contextlib.suppress(OSError, ValueError, RuntimeError):
                    s.close()
            self._sources = [snap, self._jsrc]
            self._journal_bytes = len(tail)
            self._journal_records -= records
            self._snapshot_bytes = self._size(self.path)
            self._next_compact = self._compact_every or 0
            self._compact_at = self._threshold()
            self._compaction_failures = 0
            self._last_compaction = {
                "at": time.time(),
                "rows": len(rows),
                "seconds": round(time.perf_counter() - t0, 4),
            }

    # -- reading ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, id: object) -> bool:
        """Whether a row with this id is stored (withdrawn ones too); reads nothing from disk."""
        with self._lock:
            return id in self._rows

    def _full(self, pick: Any) -> list[Correction]:
        """Corrections of the rows ``pick()`` chooses (lock held), strokes read from disk."""
        with self._files_lock:
            with self._lock:
                rows = pick()
            return [_correction(r, s) for r, s in zip(rows, read_strokes(rows), strict=True)]

    def get(self, id: str) -> Correction | None:
        """The correction with this id, or None."""
        got = self._full(lambda: [self._rows[id]] if id in self._rows else [])
        return got[0] if got else None

    def all(self) -> list[Correction]:
        """Every stored correction, oldest first (arrays are read-only)."""
        return self._full(lambda: list(self._rows.values()))

    def newest(self, n: int) -> list[Correction]:
        """The ``n`` most recent rows, oldest first, withdrawn and confirmations included."""
        return self._full(lambda: list(islice(reversed(self._rows.values()), max(0, n)))[::-1])

    def newest_vectors(self, n: int) -> list[Vector]:
        """What the personaliser needs of the ``n`` most recent standing corrections.

        Oldest first; withdrawn rows and confirmations are left out; no strokes are read.
        """
        out: list[Vector] = []
        with self._lock:
            for r in reversed(self._rows.values()):
                if len(out) >= n:
                    break
                if r.withdrawn is None and r.kind == "correction":
                    emb_by = r.embedding_version or r.model_version
                    out.append(Vector(r.id, r.label, r.image, r.embedding, emb_by))
        return out[::-1]

    def pending(self, limit: int | None = None) -> list[Correction]:
        """Corrections the server does not have yet, oldest first, at most ``limit``."""
        return self._full(lambda: [r for r in self._rows.values() if _needs_upload(r)][:limit])

    def pending_rows(self, limit: int, exclude: Collection[str] = ()) -> list[PendingItem]:
        """Up to ``limit`` pending corrections, oldest first, skipping the ids in ``exclude``,
        in upload form; the row lock is held only to pick the rows, not to read or encode them.
        A withdrawn correction is never pending (if it was sent, its withdrawal is)."""
        picked: list[Row] = []
        with self._files_lock:
            with self._lock:
                if self._counts["pending"] and limit > 0:
                    for r in self._rows.values():
                        if _needs_upload(r) and r.id not in exclude:
                            picked.append(r)
                            if len(picked) >= limit:
                                break
            strokes = read_strokes(picked)
        return [
            PendingItem(
                id=r.id,
                label=r.label,
                image=_b64(r.image),
                strokes=s,
                predicted=r.predicted,
                confidence=r.confidence,
                model_version=r.model_version,
                created=r.created,
                updated=r.updated,
                embedding=None if r.embedding is None else _b64(r.embedding),
                embedding_version=None
                if r.embedding is None
                else (r.embedding_version or r.model_version),
                kind=r.kind,
            )
            for r, s in zip(picked, strokes, strict=True)
        ]

    def pending_count(self) -> int:
        """Corrections the server does not have yet (withdrawn ones not counted)."""
        with self._lock:
            return self._counts["pending"]

    def stats(self) -> dict[str, Any]:
        """Counts, sizes and the last recovery and compaction, for /healthz."""
        with self._lock:
            sizes = {
                name: self._size(p)
                for name, p in (
                    ("snapshot_bytes", self.path),
                    ("journal_bytes", self._journal),
                    ("backup_bytes", self._bak),
                    ("old_journal_bytes", self._journal_old),
                )
            }
            c = self._counts
            return {
                "count": len(self._rows),
                # count = corrections + confirmations + withdrawn (of either kind)
                "corrections": len(self._rows) - c["confirmations"] - c["withdrawn"],
                "confirmations": c["confirmations"],
                "withdrawn": c["withdrawn"],
                "pending": c["pending"],
                "pending_withdrawals": c["pending_withdrawals"],
                "cap": self.cap,
                "pending_limit": self.pending_limit,
                "path": str(self.path),
                "bytes": sum(sizes.values()),
                **sizes,
                "journal_records": self._journal_records,
                "seq": self._seq,
                "evicted": {"synced": self._evicted, "pending": 0},
                "recovered": dict(self._recovery),
                "problems": list(self._problems),
                "last_compaction": self._last_compaction,
                "compaction_failures": self._compaction_failures,
                "closed": self._closed,
            }

    # -- closing ------------------------------------------------------------------------------
    def close(self) -> None:
        """Write a final snapshot and release the files; calling it again does nothing."""
        with self._lock:
            if self._closed:
                return
        thread = self._thread
        if thread is not None:
            thread.join()
        with self._compact_lock:
            try:
                if self._journal_records or not self.path.exists():
                    self._compact_locked()
            except (OSError, ValueError, RuntimeError) as e:
                log.error(
                    "final compaction of %s failed (the journal keeps every change): %s",
                    self.path.name,
                    e,
                )
            finally:
                with self._files_lock, self._lock:
                    self._closed = True
                    if self._fsync and self._hfd >= 0:
                        with contextlib.suppress(OSError):
                            os.fsync(self._hfd)
                    self._release()
                    self._report_evictions()

    def __enter__(self) -> CorrectionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
