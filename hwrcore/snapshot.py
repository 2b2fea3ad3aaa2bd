"""The corrections store's HDF5 snapshot: its schema, its checksums, and how it is read and written.

Schema 2 (``schema_version`` 2), readable with h5py alone. One row per correction, oldest first;
every dataset has length n (the attribute ``rows``):
  id             str                  UUID4 made on the device; the server upserts on it
  label          str                  canonical class label the pupil gave
  image          float32 (n, 28, 28)  model input, 0..1, white ink on black (gzip, fletcher32)
  strokes        str                  JSON strokes ``[[[x, y], ...], ...]``, simplified and
                                      rounded to 0.1 px (see ``hwrcore.store``); "null" for a PNG
  predicted      str                  label the model predicted; "" when unknown
  confidence     float64              the model's confidence in it; NaN when unknown
  model_version  str                  version of the model that made the prediction
  created        float64              unix time the correction was made
  updated        float64              unix time of its last change (added, synced, withdrawn)
  synced         bool                 whether the server has acknowledged it
  embedding      vlen float32         penultimate-layer embedding; empty when none
  embedding_version  str              the model that made the embedding when it is not
                                      ``model_version``; "" otherwise
  kind           str                  "correction" (the pupil gave another label) or
                                      "confirmation" (the pupil said the model was right)
  withdrawn      float64              unix time it was withdrawn (undone); NaN when it stands
  withdrawn_by   str                  "pupil" (undo) or "teacher"; "" when it stands
  withdrawal_synced  bool             whether the server has acknowledged the withdrawal
  row_crc32      uint32               CRC32 of the row's canonical bytes (:func:`row_crc`)
File attributes: ``schema_version``, ``kind`` ("hwr-corrections"), ``journal_seq``, ``written``,
``rows`` and ``attrs_crc32`` (CRC32 of the canonical JSON of the other five). Metadata is
written in the HDF5 1.10 format, whose object headers and superblock carry their own checksums.

Schema 1 files (no kind, withdrawn, withdrawn_by, withdrawal_synced, row_crc32, rows or
attrs_crc32) still open: their rows read as standing corrections, not verifiable row by row.

Reading never trusts a row that fails its checksum: :func:`read_snapshot` returns the good rows
and, for each bad one, its index and checksums, so the store can repair it from the backup or
the journals or count it as lost.
"""

from __future__ import annotations

import json
import math
import os
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

SCHEMA_VERSION = 2
KIND = "hwr-corrections"
IMAGE_SHAPE = (28, 28)
BLOCK = 64  # rows read or written at a time, so neither holds every stroke in memory
_U32 = struct.Struct("<I")
_NUMS = struct.Struct("<?d?d?d?d??")
_TEXT = ("id", "label", "strokes", "predicted", "model_version", "embedding_version")
_TEXT2 = ("kind", "withdrawn_by")
ATTRS = ("schema_version", "kind", "journal_seq", "written", "rows")


@dataclass(frozen=True, slots=True)
class Row:
    """A stored correction without its strokes: immutable, arrays read-only.

    The strokes stay on disk; ``at`` says where (a source and a key in it), so memory does not
    grow with the size of the drawings.
    """

    id: str
    label: str
    image: np.ndarray
    predicted: str | None
    confidence: float | None
    model_version: str
    created: float
    updated: float
    synced: bool
    embedding: np.ndarray | None
    embedding_version: str | None
    kind: str
    withdrawn: float | None
    withdrawn_by: str | None
    withdrawal_synced: bool
    at: tuple[Any, int]  # (a StrokesSource, its key: a row index or a journal offset)


def frozen(a: np.ndarray) -> np.ndarray:
    """The array, made read-only."""
    a.setflags(write=False)
    return a


def _num(v: float | None) -> tuple[bool, float]:
    return (False, 0.0) if v is None or math.isnan(v) else (True, float(v))


def row_crc(r: Row, strokes: str) -> int:
    """CRC32 of a row's canonical bytes: every field, each text length-prefixed."""
    h = 0
    texts = (
        r.id,
        r.label,
        strokes,
        r.predicted or "",
        r.model_version,
        r.embedding_version or "",
        r.kind,
        r.withdrawn_by or "",
    )
    for t in texts:
        b = t.encode("utf-8")
        h = zlib.crc32(b, zlib.crc32(_U32.pack(len(b)), h))
    h = zlib.crc32(np.ascontiguousarray(r.image, dtype="<f4").tobytes(), h)
    e = b"" if r.embedding is None else np.ascontiguousarray(r.embedding, "<f4").tobytes()
    h = zlib.crc32(e, zlib.crc32(_U32.pack(len(e)), h))
    nums = (*_num(r.confidence), *_num(r.created), *_num(r.updated), *_num(r.withdrawn))
    return zlib.crc32(_NUMS.pack(*nums, r.synced, r.withdrawal_synced), h)


def attrs_crc(attrs: dict[str, Any]) -> int:
    """CRC32 of the canonical JSON of the file attributes that ``attrs_crc32`` covers."""
    plain = {k: _plain(attrs.get(k)) for k in ATTRS}
    return zlib.crc32(json.dumps(plain, sort_keys=True, separators=(",", ":")).encode())


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v


StrokesFor = Callable[[Sequence[Row]], list[str]]


def write_snapshot(
    path: Path, rows: Sequence[Row], strokes_for: StrokesFor, seq: int, *, fsync: bool = True
) -> None:
    """Write every row to a new HDF5 file at ``path`` (a temporary name: renamed by the caller).

    ``strokes_for(block)`` gives the strokes text of a block of rows, read from wherever they
    lie, so at most ``BLOCK`` rows' strokes are in memory at once.
    """
    n = len(rows)
    text = h5py.string_dtype()
    with h5py.File(path, "w", locking=False, libver=("v110", "latest")) as f:
        attrs = {
            "schema_version": SCHEMA_VERSION,
            "kind": KIND,
            "journal_seq": int(seq),
            "written": time.time(),
            "rows": n,
        }
        for k, v in attrs.items():
            f.attrs[k] = v
        f.attrs["attrs_crc32"] = attrs_crc(attrs)
        ds = {name: f.create_dataset(name, shape=(n,), dtype=text) for name in _TEXT + _TEXT2}
        ds["image"] = f.create_dataset(
            "image",
            shape=(n, *IMAGE_SHAPE),
            dtype=np.float32,
            chunks=(max(1, min(n, BLOCK)), *IMAGE_SHAPE),
            maxshape=(None, *IMAGE_SHAPE),
            compression="gzip",
            compression_opts=4,
            shuffle=True,
            fletcher32=True,
        )
        for name in ("confidence", "created", "updated", "withdrawn"):
            ds[name] = f.create_dataset(name, shape=(n,), dtype=np.float64)
        for name in ("synced", "withdrawal_synced"):
            ds[name] = f.create_dataset(name, shape=(n,), dtype=bool)
        vlen = h5py.vlen_dtype(np.float32)
        emb = np.empty(n, dtype=vlen)  # small (the rows hold them already): written at once
        for i, r in enumerate(rows):
            emb[i] = r.embedding if r.embedding is not None else np.zeros(0, np.float32)
        f.create_dataset("embedding", data=emb, dtype=vlen)
        ds["row_crc32"] = f.create_dataset("row_crc32", shape=(n,), dtype=np.uint32)
        for a in range(0, n, BLOCK):
            block = rows[a : a + BLOCK]
            b = a + len(block)
            strokes = strokes_for(block)
            cols: dict[str, list[Any]] = {
                "id": [r.id for r in block],
                "label": [r.label for r in block],
                "strokes": strokes,
                "predicted": [r.predicted or "" for r in block],
                "model_version": [r.model_version for r in block],
                "embedding_version": [
                    (r.embedding_version or "") if r.embedding is not None else "" for r in block
                ],
                "kind": [r.kind for r in block],
                "withdrawn_by": [r.withdrawn_by or "" for r in block],
            }
            for name, values in cols.items():
                ds[name][a:b] = np.array(values, dtype=object)
            ds["image"][a:b] = np.stack([r.image for r in block])

            def nan(v: float | None) -> float:
                return math.nan if v is None else v

            ds["confidence"][a:b] = [nan(r.confidence) for r in block]
            ds["created"][a:b] = [r.created for r in block]
            ds["updated"][a:b] = [r.updated for r in block]
            ds["withdrawn"][a:b] = [nan(r.withdrawn) for r in block]
            ds["synced"][a:b] = [r.synced for r in block]
            ds["withdrawal_synced"][a:b] = [r.withdrawal_synced for r in block]
            ds["row_crc32"][a:b] = [row_crc(r, s) for r, s in zip(block, strokes, strict=True)]
    if fsync:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass
class Snapshot:
    """A snapshot as read: its good rows, the bad ones (index, stored CRC, CRC of the data)."""

    rows: list[Row]
    seq: int
    schema: int
    bad: list[tuple[int, int | None, int | None]]
    unverified: int  # rows of a schema-1 file, which has no row checksums
    source: SnapshotSource | None  # the open file the rows' strokes are read from


class SchemaTooNew(ValueError):
    """A snapshot written by newer software: left alone, never treated as damaged."""

    def __init__(self, version: int):
        super().__init__(f"store schema {version}; this software reads up to {SCHEMA_VERSION}")
        self.version = version


class SnapshotSource:
    """The strokes of a snapshot's rows, read on demand from the file (kept open, read-only)."""

    def __init__(self, path: Path):
        self.path = path
        # Opened now, through a Python file object: the store may rename the file (to .bak or
        # .corrupt) while rows point here, and HDF5's own open-file checks do not see it, so
        # h5py opens of the same path elsewhere in the process are not refused.
        self._fileobj = open(path, "rb")  # noqa: SIM115 - closed by close()
        try:
            self._file: h5py.File | None = h5py.File(self._fileobj, "r", locking=False)
        except BaseException:
            self._fileobj.close()
            raise

    def read(self, keys: Sequence[int]) -> list[str]:
        """The strokes text of these row indices (any order, repeats allowed)."""
        if self._file is None:
            raise ValueError(f"the snapshot {self.path.name} was closed")
        order = sorted(set(keys))
        values = self._file["strokes"].asstr()[order] if order else []
        got = dict(zip(order, (str(v) for v in values), strict=True))
        return [got[k] for k in keys]

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None
            self._fileobj.close()


def _block(f: h5py.File, name: str, a: int, b: int, schema: int, default: Any) -> Any:
    """Values a..b of a dataset; ``default`` (per row) when a schema-1 file lacks it."""
    if name not in f:
        if schema >= 2:
            raise KeyError(f"dataset {name} is missing")
        return [default] * (b - a)
    d = f[name]
    if h5py.check_string_dtype(d.dtype) is not None:
        return [str(v) for v in d.asstr()[a:b]]
    return d[a:b]


def read_snapshot(path: Path) -> Snapshot:
    """Read and verify a snapshot, a block of rows at a time.

    OSError/KeyError/ValueError when the file as a whole cannot be trusted (not a store,
    attributes damaged, datasets missing or of other lengths); :class:`SchemaTooNew` for a
    newer schema. A row whose data cannot be read or fails its checksum is not returned:
    it is listed in ``bad``.
    """
    with h5py.File(path, "r", locking=False) as f:
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
        if attrs.get("kind") != KIND:
            raise ValueError(f"{path.name} is not a corrections store (kind={attrs.get('kind')})")
        version = int(attrs["schema_version"])
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(version)
        if version >= 2 and attrs.get("attrs_crc32") != attrs_crc(attrs):
            raise ValueError(f"{path.name}: the file attributes fail their checksum")
        seq = int(attrs["journal_seq"])
        n = len(f["id"])
        names = [*_TEXT, "image", "confidence", "created", "updated", "synced", "embedding"]
        if version >= 2:
            names += [*_TEXT2, "withdrawn", "withdrawal_synced", "row_crc32"]
            if int(attrs["rows"]) != n:
                raise ValueError(f"{path.name}: {n} rows but the attributes say {attrs['rows']}")
        lengths = {len(f[k]) for k in names if k in f}
        if lengths != {n} or f["image"].shape[1:] != IMAGE_SHAPE:
            raise ValueError(f"{path.name}: datasets disagree in length or shape")
        rows: list[Row] = []
        bad: list[tuple[int, int | None, int | None]] = []
        source = SnapshotSource(path) if n else None
        try:
            _verify(f, n, version, source, rows, bad)
        except BaseException:
            if source is not None:
                source.close()
            raise
    return Snapshot(rows, seq, version, bad, n if version < 2 else 0, source)


def _verify(
    f: h5py.File,
    n: int,
    version: int,
    source: SnapshotSource | None,
    rows: list[Row],
    bad: list[tuple[int, int | None, int | None]],
) -> None:
    """Read the rows a block at a time; the good ones go to ``rows``, the others to ``bad``."""
    for a in range(0, n, BLOCK):
        b = min(n, a + BLOCK)
        got, stored = _read_block(f, a, b, version)
        for i in range(a, b):
            item = got.get(i)
            want = None if stored is None else int(stored[i - a])
            if item is None:
                bad.append((i, want, None))
                continue
            row, strokes = item
            row = _with_source(row, source, i)
            if version < 2:
                rows.append(row)
                continue
            have = row_crc(row, strokes)
            if have == want:
                rows.append(row)
            else:
                bad.append((i, want, have))


def _with_source(row: Row, source: SnapshotSource | None, i: int) -> Row:
    return replace(row, at=(source, i))


def _read_block(
    f: h5py.File, a: int, b: int, schema: int
) -> tuple[dict[int, tuple[Row, str]], Any]:
    """Rows a..b that could be read (index -> (row, strokes)), and the stored row CRCs."""
    cols: dict[str, Any] = {}
    failed = False
    defaults = {
        "kind": "correction",
        "withdrawn_by": "",
        "withdrawn": math.nan,
        "withdrawal_synced": False,
        "embedding_version": "",
    }
    for name in (*_TEXT, *_TEXT2, "confidence", "created", "updated", "synced", "withdrawn"):
        try:
            cols[name] = _block(f, name, a, b, schema, defaults.get(name))
        except (OSError, ValueError, KeyError, UnicodeDecodeError):
            failed = True
    try:
        cols["withdrawal_synced"] = _block(f, "withdrawal_synced", a, b, schema, False)
        cols["embedding"] = f["embedding"][a:b]
        cols["image"] = np.asarray(f["image"][a:b], dtype=np.float32)
    except (OSError, ValueError, KeyError):
        failed = True
    stored = None
    if schema >= 2:
        try:
            stored = f["row_crc32"][a:b]
        except (OSError, ValueError, KeyError):
            stored = None
    if failed:
        return {}, stored
    out: dict[int, tuple[Row, str]] = {}
    for i in range(a, b):
        k = i - a
        conf = float(cols["confidence"][k])
        wd = float(cols["withdrawn"][k])
        e = np.asarray(cols["embedding"][k], dtype=np.float32)
        row = Row(
            id=cols["id"][k],
            label=cols["label"][k],
            image=frozen(cols["image"][k].copy()),
            predicted=cols["predicted"][k] or None,
            confidence=None if math.isnan(conf) else conf,
            model_version=cols["model_version"][k],
            created=float(cols["created"][k]),
            updated=float(cols["updated"][k]),
            synced=bool(cols["synced"][k]),
            embedding=frozen(e) if e.size else None,
            embedding_version=(cols["embedding_version"][k] or None) if e.size else None,
            kind=cols["kind"][k],
            withdrawn=None if math.isnan(wd) else wd,
            withdrawn_by=cols["withdrawn_by"][k] or None,
            withdrawal_synced=bool(cols["withdrawal_synced"][k]),
            at=(None, i),
        )
        out[i] = (row, cols["strokes"][k])
    return out, stored
