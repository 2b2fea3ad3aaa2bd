"""Crash-safe store of a device's corrections: an HDF5 snapshot plus a write-ahead journal.

HDF5 is not crash-safe by itself, so the snapshot is never written in place. Every change is
first appended to the journal and fsynced (``add`` returns only then); the snapshot is rewritten
whole by compaction (a temporary file, fsync, rename, fsync of the directory) every
``compact_every`` journal records, in a background thread, and on close. Opening replays the
journal records that the snapshot does not hold yet, so a power cut at any moment loses nothing
that was acknowledged.

Bounds: over ``cap`` rows the oldest *synced* corrections are dropped; a pending one (not yet
acknowledged by the school's server) is never dropped. With ``pending_limit`` pending rows,
``add`` refuses a new correction (:class:`StoreFull`, code ``store_full``) and writes nothing.

Files, for a store at ``custom_digits.h5``:
  custom_digits.h5              snapshot: every correction up to journal record ``journal_seq``
  custom_digits.h5.journal      write-ahead journal: the records after the snapshot
  custom_digits.h5.bak          the previous snapshot, used when the snapshot does not open
  custom_digits.h5.journal.old  the records after the previous snapshot, replayed with ``.bak``
  custom_digits.h5.lock         locked (flock) by the one process that has the store open
  custom_digits.h5.corrupt      a snapshot that failed to open, kept for inspection

Snapshot schema (``schema_version`` 1), readable with h5py alone. One row per correction, oldest
first; every dataset has length n:
  id             str                  UUID4 made on the device; the server upserts on it
  label          str                  canonical class label the pupil gave
  image          float32 (n, 28, 28)  model input, 0..1, white ink on black (gzip, fletcher32)
  strokes        str                  JSON strokes ``[[[x, y], ...], ...]``; "null" for a PNG
  predicted      str                  label the model predicted; "" when unknown
  confidence     float64              the model's confidence in it; NaN when unknown
  model_version  str                  version of the model that made the prediction
  created        float64              unix time the correction was made
  updated        float64              unix time of its last change (added, marked synced)
  synced         bool                 whether the server has acknowledged it
  embedding      vlen float32         penultimate-layer embedding; empty when none
  embedding_version  str              version of the model that made the embedding, when it is
                                      not ``model_version`` (embedded again after a model
                                      update); "" otherwise. Absent in older files: all ""
File attributes: ``schema_version``, ``kind`` ("hwr-corrections"), ``journal_seq``, ``written``.
The snapshot lags the journal by at most ``compact_every`` records; ``read_store`` (or a
``CorrectionStore``) gives the complete set.

Journal records (framing in ``hwrcore.journal``): a checksummed UTF-8 JSON payload with ``op``
"add" (a whole correction, arrays base64), "synced" (ids), "drop" (ids evicted over the cap) or
"embedded" (embeddings made again by another model version, ``[[id, base64], ...]``).
A record with a bad length or CRC (a torn write) is skipped; replay applies each sequence number
once, in order, so replaying a record the snapshot already holds changes nothing.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import HwrError
from .journal import JournalScan, encode_record, scan_journal

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
KIND = "hwr-corrections"
IMAGE_SHAPE = (28, 28)
COMPACT_EVERY = 256
COMPACT_BYTES = 8 << 20
EVICTION_LOG_SECONDS = 60.0
PENDING_LIMIT = 10_000  # pending corrections a store holds before it refuses new ones
_OPS = ("add", "synced", "drop", "embedded")
EMBEDDED_PER_RECORD = 1000
_datasync = getattr(os, "fdatasync", os.fsync)


class StoreError(HwrError):
    """The store cannot be opened or written (locked by another process, disk full, newer schema)."""

    code = "store_error"


class StoreFull(StoreError):
    """Too many corrections wait for the server: a new one is refused rather than an old one lost."""

    code = "store_full"


class InvalidCorrection(HwrError, ValueError):
    """A correction with a missing or malformed field; nothing is written."""

    code = "invalid_correction"


@dataclass
class Correction:
    """A pupil's correction of one drawing, as the edge makes it and the server merges it."""

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

    @property
    def embedded_by(self) -> str:
        """Version of the model whose embedding this correction carries."""
        return self.embedding_version or self.model_version


@dataclass(frozen=True)
class _Row:
    """A stored correction: immutable, arrays read-only, strokes kept as their JSON text."""

    id: str
    label: str
    image: np.ndarray
    strokes: str
    predicted: str | None
    confidence: float | None
    model_version: str
    created: float
    updated: float
    synced: bool
    embedding: np.ndarray | None
    embedding_version: str | None = None

    def correction(self) -> Correction:
        """The public form; its arrays are the row's own, read-only."""
        return Correction(
            id=self.id,
            label=self.label,
            image=self.image,
            strokes=json.loads(self.strokes),
            predicted=self.predicted,
            confidence=self.confidence,
            model_version=self.model_version,
            created=self.created,
            embedding=self.embedding,
            synced=self.synced,
            embedding_version=self.embedding_version,
        )


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


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


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
    return _frozen(e)


def _row_from(c: Correction, updated: float) -> _Row:
    """Validate a correction and copy it into an immutable row."""
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
    image = np.array(c.image, dtype=np.float32)
    if image.shape != IMAGE_SHAPE or not np.all(np.isfinite(image)):
        raise InvalidCorrection(f"image must be finite float {IMAGE_SHAPE}, got {image.shape}")
    if image.min() < 0.0 or image.max() > 1.0:
        raise InvalidCorrection("image values must lie in 0..1")
    emb = None if c.embedding is None else _embedding(c.embedding)
    try:
        strokes = json.dumps(c.strokes, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidCorrection(f"strokes must be JSON lists of numbers: {e}") from None
    conf = None if c.confidence is None else _finite(c.confidence, "confidence")
    return _Row(
        id=c.id,
        label=c.label,
        image=_frozen(image),
        strokes=strokes,
        predicted=c.predicted or None,
        confidence=conf,
        model_version=c.model_version,
        created=_finite(c.created, "created"),
        updated=updated,
        synced=bool(c.synced),
        embedding=emb,
        embedding_version=(c.embedding_version or None) if emb is not None else None,
    )


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def _unb64(s: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    a = np.frombuffer(base64.b64decode(s), dtype="<f4").astype(np.float32)
    return _frozen(a.reshape(shape) if shape else a)


def _add_payload(row: _Row) -> dict[str, Any]:
    return {
        "op": "add",
        "id": row.id,
        "label": row.label,
        "image": _b64(row.image),
        "strokes": row.strokes,
        "predicted": row.predicted,
        "confidence": row.confidence,
        "model_version": row.model_version,
        "created": row.created,
        "updated": row.updated,
        "synced": row.synced,
        "embedding": None if row.embedding is None else _b64(row.embedding),
        "embedding_version": row.embedding_version,
    }


def _row_from_payload(p: dict[str, Any]) -> _Row:
    emb = p["embedding"]
    return _Row(
        id=p["id"],
        label=p["label"],
        image=_unb64(p["image"], IMAGE_SHAPE),
        strokes=p["strokes"],
        predicted=p["predicted"],
        confidence=p["confidence"],
        model_version=p["model_version"],
        created=float(p["created"]),
        updated=float(p["updated"]),
        synced=bool(p["synced"]),
        embedding=None if emb is None else _unb64(emb),
        embedding_version=p.get("embedding_version") or None,
    )


def write_snapshot(path: Path, rows: list[_Row], seq: int, *, fsync: bool = True) -> None:
    """Write every row to a new HDF5 file at ``path`` (a temporary name: renamed by the caller)."""
    n = len(rows)
    text = h5py.string_dtype()
    with h5py.File(path, "w", locking=False) as f:
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["kind"] = KIND
        f.attrs["journal_seq"] = seq
        f.attrs["written"] = time.time()

        def strings(name: str, values: list[str]) -> None:
            f.create_dataset(name, data=np.array(values, dtype=object), dtype=text)

        strings("id", [r.id for r in rows])
        strings("label", [r.label for r in rows])
        images = np.stack([r.image for r in rows]) if n else np.zeros((0, *IMAGE_SHAPE), "f4")
        f.create_dataset(
            "image",
            data=images,
            chunks=(max(1, min(n, 256)), *IMAGE_SHAPE),
            maxshape=(None, *IMAGE_SHAPE),
            compression="gzip",
            compression_opts=4,
            shuffle=True,
            fletcher32=True,
        )
        strings("strokes", [r.strokes for r in rows])
        strings("predicted", [r.predicted or "" for r in rows])
        conf = [math.nan if r.confidence is None else r.confidence for r in rows]
        f.create_dataset("confidence", data=np.array(conf, dtype=np.float64))
        strings("model_version", [r.model_version for r in rows])
        f.create_dataset("created", data=np.array([r.created for r in rows], dtype=np.float64))
        f.create_dataset("updated", data=np.array([r.updated for r in rows], dtype=np.float64))
        f.create_dataset("synced", data=np.array([r.synced for r in rows], dtype=bool))
        vlen = h5py.vlen_dtype(np.float32)
        emb = np.empty(n, dtype=vlen)
        for i, r in enumerate(rows):
            emb[i] = r.embedding if r.embedding is not None else np.zeros(0, np.float32)
        f.create_dataset("embedding", data=emb, dtype=vlen)
        strings("embedding_version", [r.embedding_version or "" for r in rows])
    if fsync:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_snapshot(path: Path) -> tuple[list[_Row], int]:
    """Rows and ``journal_seq`` of a snapshot; OSError/KeyError/ValueError when it is damaged."""
    with h5py.File(path, "r", locking=False) as f:
        if f.attrs.get("kind") != KIND:
            raise ValueError(f"{path.name} is not a corrections store (kind={f.attrs.get('kind')})")
        version = int(f.attrs["schema_version"])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{path} has store schema {version}; this software reads up to {SCHEMA_VERSION}",
                code="store_schema",
            )
        seq = int(f.attrs["journal_seq"])
        cols = {
            k: f[k].asstr()[:] for k in ("id", "label", "strokes", "predicted", "model_version")
        }
        images = _frozen(np.asarray(f["image"][:], dtype=np.float32))
        num = {k: f[k][:] for k in ("confidence", "created", "updated", "synced")}
        emb = f["embedding"][:]
        emb_version = (
            f["embedding_version"].asstr()[:] if "embedding_version" in f else [""] * len(emb)
        )
    n = len(cols["id"])
    lengths = {len(v) for v in (*cols.values(), *num.values(), emb, emb_version, images)}
    if lengths != {n} or images.shape[1:] != IMAGE_SHAPE or len(set(cols["id"])) != n:
        raise ValueError(f"{path.name}: datasets disagree in length or shape, or ids repeat")
    rows = []
    for i in range(n):
        conf = float(num["confidence"][i])
        e = np.asarray(emb[i], dtype=np.float32)
        rows.append(
            _Row(
                id=str(cols["id"][i]),
                label=str(cols["label"][i]),
                image=images[i],
                strokes=str(cols["strokes"][i]),
                predicted=str(cols["predicted"][i]) or None,
                confidence=None if math.isnan(conf) else conf,
                model_version=str(cols["model_version"][i]),
                created=float(num["created"][i]),
                updated=float(num["updated"][i]),
                synced=bool(num["synced"][i]),
                embedding=_frozen(e) if e.size else None,
                embedding_version=(str(emb_version[i]) or None) if e.size else None,
            )
        )
    return rows, seq


@dataclass
class Recovery:
    """The state rebuilt from the files, and how (for the log and ``stats()``)."""

    rows: dict[str, _Row]
    seq: int
    source: str  # 'snapshot', 'backup', 'journal' (no snapshot opened) or 'new'
    snapshot_error: str | None  # why the snapshot did not open, if it did not
    live: JournalScan  # the live journal
    replayed: int  # records applied on top of the snapshot
    missing: int  # sequence numbers absent between the snapshot and the journal


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _apply(rows: dict[str, _Row], p: dict[str, Any]) -> None:
    if p["op"] == "add":
        row = _row_from_payload(p)
        rows.setdefault(row.id, row)
    elif p["op"] == "synced":
        for i in p["ids"]:
            r = rows.get(i)
            if r is not None and not r.synced:
                rows[i] = replace(r, synced=True, updated=float(p["t"]))
    elif p["op"] == "embedded":
        version = str(p["version"])
        for i, vec in p["items"]:
            r = rows.get(i)
            if r is not None:
                rows[i] = replace(r, embedding=_unb64(vec), embedding_version=version)
    else:
        for i in p["ids"]:
            rows.pop(i, None)


def recover(path: str | Path) -> Recovery:
    """Rebuild the store's state from its files without writing anything."""
    path = Path(path)
    rows: list[_Row] = []
    seq, source, error = 0, "new", None
    for candidate, name in ((path, "snapshot"), (_sibling(path, ".bak"), "backup")):
        if not candidate.exists():
            continue
        try:
            rows, seq = read_snapshot(candidate)
            source = name
            break
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
            error = error or f"{candidate.name}: {e}"
    state = {r.id: r for r in rows}
    old = scan_journal(_read_bytes(_sibling(path, ".journal.old")), _OPS)
    live = scan_journal(_read_bytes(_sibling(path, ".journal")), _OPS)
    if source == "new" and (old.records or live.records or error):
        source = "journal"
    records = dict(reversed(old.records + live.records))
    top = max(records, default=seq)
    replayed = missing = 0
    expected = seq + 1
    for s in sorted(k for k in records if k > seq):
        missing += s - expected
        expected = s + 1
        try:
            _apply(state, records[s])
            replayed += 1
        except (KeyError, TypeError, ValueError) as e:
            log.error("journal record %d of %s is malformed and was skipped: %s", s, path.name, e)
    return Recovery(state, max(seq, top), source, error, live, replayed, missing)


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
    for _ in range(attempts - 1):
        before = _file_ids(path)
        rec = recover(path)
        if _file_ids(path) == before:
            break
        time.sleep(0.01)
    else:
        rec = recover(path)
    return [r.correction() for r in rec.rows.values()]


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
        compact_every: int = COMPACT_EVERY,
        lock_timeout: float = 10.0,
    ):
        if cap < 1 or compact_every < 1 or pending_limit < 1:
            raise ValueError(
                "cap, pending_limit and compact_every must be at least 1, "
                f"got {cap}, {pending_limit}, {compact_every}"
            )
        self.path = Path(path)
        self.cap = cap
        self.pending_limit = pending_limit
        self._pending = 0  # rows not synced, kept as rows change so counting costs nothing
        self._fsync = fsync
        self._compact_every = compact_every
        self._next_compact = compact_every  # journal records that trigger a background compaction
        self._journal = _sibling(self.path, ".journal")
        self._journal_old = _sibling(self.path, ".journal.old")
        self._journal_new = _sibling(self.path, ".journal.new")
        self._bak = _sibling(self.path, ".bak")
        self._tmp = _sibling(self.path, ".tmp")
        self._lock = threading.Lock()
        self._compact_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._compacting = False
        self._closed = False
        self._jfd = -1
        self._evicted = 0  # synced rows evicted over the cap since opening
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
        if self._jfd >= 0:
            os.close(self._jfd)
            self._jfd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the last descriptor releases the flock
            self._lock_fd = -1

    def _open(self) -> None:
        for leftover in (self._tmp, self._journal_new):
            leftover.unlink(missing_ok=True)
        rec = recover(self.path)
        if rec.snapshot_error:
            log.error(
                "store snapshot did not open (%s); recovered from %s",
                rec.snapshot_error,
                rec.source,
            )
            if self.path.exists():
                os.replace(self.path, _sibling(self.path, ".corrupt"))
        if rec.missing:
            log.error(
                "%s: %d journal records are missing; their changes are lost",
                self.path.name,
                rec.missing,
            )
        self._rows = rec.rows
        self._pending = sum(1 for r in self._rows.values() if not r.synced)
        self._seq = rec.seq
        self._recovery = {
            "source": rec.source,
            "replayed": rec.replayed,
            "torn_bytes": rec.live.torn,
            "damaged_bytes": rec.live.skipped,
            "missing": rec.missing,
        }
        must_compact = rec.source != "snapshot" or rec.live.skipped > 0
        created = not self._journal.exists()
        self._jfd = os.open(self._journal, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        if rec.live.torn and not rec.live.skipped:
            log.warning(
                "%s: ignored a torn record (%d bytes) at the journal's end",
                self.path.name,
                rec.live.torn,
            )
            os.ftruncate(self._jfd, rec.live.valid_end)
            if self._fsync:
                os.fsync(self._jfd)
        if created and self._fsync:
            _fsync_dir(self.path.parent)
        self._journal_bytes = os.fstat(self._jfd).st_size
        self._journal_records = len(rec.live.records)
        with self._lock:
            drops = self._eviction(0)
            if drops:
                self._append([{"op": "drop", "ids": drops}], background=False)
                self._drop(drops)
        log.info(
            "opened %s: %d corrections (%d pending) from %s + %d journal records",
            self.path.name,
            len(self._rows),
            self.pending_count(),
            rec.source,
            rec.replayed,
        )
        if must_compact or self._journal_records >= self._compact_every:
            with self._compact_lock:
                self._compact_locked()

    # -- writing ------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.path} is closed", code="store_closed")

    def _append(self, payloads: list[dict[str, Any]], *, background: bool = True) -> None:
        """Append records to the journal and make them durable; on failure, write nothing."""
        try:
            data = b"".join(encode_record(self._seq + 1 + i, p) for i, p in enumerate(payloads))
        except ValueError as e:  # over the journal's record limit: refused before any write
            raise InvalidCorrection(str(e)) from None
        start = self._journal_bytes
        try:
            _write_all(self._jfd, data)
            if self._fsync:
                _datasync(self._jfd)
        except OSError as e:
            try:
                os.ftruncate(self._jfd, start)
            except OSError as e2:
                log.error("could not cut a failed write from %s: %s", self._journal.name, e2)
            raise StoreError(
                f"could not write {self._journal}: {e}", code="store_write_failed"
            ) from e
        self._seq += len(payloads)
        self._journal_bytes += len(data)
        self._journal_records += len(payloads)
        # Rewriting the snapshot costs its size, so a big store waits for more records.
        threshold = max(self._next_compact, len(self._rows) // 4)
        due = self._journal_records >= threshold or self._journal_bytes >= COMPACT_BYTES
        if background and due and not self._compacting:
            self._compacting = True
            self._thread = threading.Thread(
                target=self._background_compact, name=f"compact-{self.path.name}", daemon=True
            )
            self._thread.start()

    def _eviction(self, incoming: int) -> list[str]:
        """Ids to drop so that ``incoming`` more fit the cap: the oldest synced ones, never a
        pending one (the store may then hold more than ``cap`` until they are synced)."""
        excess = len(self._rows) + incoming - self.cap
        if excess <= 0 or self._pending >= len(self._rows):
            return []
        return list(islice((i for i, r in self._rows.items() if r.synced), excess))

    def _drop(self, ids: list[str]) -> None:
        """Forget evicted (synced) rows; warn with the exact count, at most once a minute."""
        if not ids:
            return
        for i in ids:
            row = self._rows.pop(i)
            if not row.synced:  # _eviction never picks one; kept exact should that change
                self._pending -= 1
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

        With ``pending_limit`` corrections waiting for the server a new pending one is refused
        (StoreFull, nothing written): old ones are never dropped to make room.
        """
        row = _row_from(c, time.time())
        with self._lock:
            self._check_open()
            if row.id in self._rows:
                return
            if not row.synced and self._pending >= self.pending_limit:
                raise StoreFull(
                    f"this device holds {self._pending} corrections not yet sent to the "
                    "school's server; connect it to sync before adding more"
                )
            drops = self._eviction(1)
            payloads = [_add_payload(row)] + ([{"op": "drop", "ids": drops}] if drops else [])
            self._append(payloads)
            self._drop(drops)
            self._rows[row.id] = row
            if not row.synced:
                self._pending += 1

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
                self._rows[i] = replace(self._rows[i], synced=True, updated=t)
            self._pending -= len(changed)
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
                self._rows[i] = replace(
                    self._rows[i], embedding=clean[i], embedding_version=version
                )
            return len(ids)

    # -- compaction ---------------------------------------------------------------------------
    def compact(self) -> None:
        """Rewrite the snapshot now and start a fresh journal (also done every N records)."""
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
                self._next_compact = self._journal_records + self._compact_every
        finally:
            with self._lock:
                self._compacting = False

    def _compact_locked(self) -> None:
        """Snapshot the state, write it beside the old one, then swap files; holds _compact_lock."""
        t0 = time.perf_counter()
        with self._lock:
            rows = list(self._rows.values())
            seq, offset, records = self._seq, self._journal_bytes, self._journal_records
        try:
            write_snapshot(self._tmp, rows, seq, fsync=self._fsync)
        except BaseException:
            with contextlib.suppress(OSError):
                self._tmp.unlink(missing_ok=True)
            raise
        with self._lock:
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
            os.close(self._jfd)
            self._jfd = os.open(self._journal, os.O_RDWR | os.O_APPEND)
            self._journal_bytes = len(tail)
            self._journal_records -= records
            self._next_compact = self._compact_every
            self._compaction_failures = 0
            self._last_compaction = {
                "at": time.time(),
                "rows": len(rows),
                "seconds": round(time.perf_counter() - t0, 4),
            }

    # -- reading ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._rows)

    def get(self, id: str) -> Correction | None:
        """The correction with this id, or None."""
        with self._lock:
            row = self._rows.get(id)
        return None if row is None else row.correction()

    def all(self) -> list[Correction]:
        """Every stored correction, oldest first (arrays are read-only)."""
        with self._lock:
            rows = list(self._rows.values())
        return [r.correction() for r in rows]

    def newest(self, n: int) -> list[Correction]:
        """The ``n`` most recent corrections, oldest first, without copying the older ones."""
        with self._lock:
            rows = list(islice(reversed(self._rows.values()), max(0, n)))
        return [r.correction() for r in reversed(rows)]

    def pending(self, limit: int | None = None) -> list[Correction]:
        """Corrections the server does not have yet, oldest first, at most ``limit``."""
        with self._lock:
            rows = [r for r in self._rows.values() if not r.synced]
        return [r.correction() for r in rows[:limit]]

    def pending_rows(self, limit: int, exclude: Collection[str] = ()) -> list[PendingItem]:
        """Up to ``limit`` pending corrections, oldest first, skipping the ids in ``exclude``,
        in upload form; the lock is held only to pick the rows, not to encode them."""
        picked: list[_Row] = []
        with self._lock:
            if self._pending and limit > 0:
                for r in self._rows.values():
                    if not r.synced and r.id not in exclude:
                        picked.append(r)
                        if len(picked) >= limit:
                            break
        return [
            PendingItem(
                id=r.id,
                label=r.label,
                image=_b64(r.image),
                strokes=r.strokes,
                predicted=r.predicted,
                confidence=r.confidence,
                model_version=r.model_version,
                created=r.created,
                updated=r.updated,
                embedding=None if r.embedding is None else _b64(r.embedding),
                embedding_version=None
                if r.embedding is None
                else (r.embedding_version or r.model_version),
            )
            for r in picked
        ]

    def pending_count(self) -> int:
        """Corrections the server does not have yet."""
        with self._lock:
            return self._pending

    def stats(self) -> dict[str, Any]:
        """Counts, sizes and the last recovery and compaction, for /healthz."""
        with self._lock:
            sizes = {}
            for name, p in (
                ("snapshot_bytes", self.path),
                ("journal_bytes", self._journal),
                ("backup_bytes", self._bak),
                ("old_journal_bytes", self._journal_old),
            ):
                try:
                    sizes[name] = p.stat().st_size
                except FileNotFoundError:
                    sizes[name] = 0
            return {
                "count": len(self._rows),
                "pending": self._pending,
                "cap": self.cap,
                "pending_limit": self.pending_limit,
                "path": str(self.path),
                "bytes": sum(sizes.values()),
                **sizes,
                "journal_records": self._journal_records,
                "seq": self._seq,
                "evicted": {"synced": self._evicted, "pending": 0},
                "recovered": dict(self._recovery),
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
                with self._lock:
                    self._closed = True
                    self._release()
                    self._report_evictions()

    def __enter__(self) -> CorrectionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
