"""Readers for the official data layouts: MNIST and EMNIST IDX files, UCI pendigits strokes.

Only numpy here (no TensorFlow), so evaluation and benchmark tools can read data cheaply.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwrcore.labels import BYMERGE_LABELS, BYMERGE_LETTER_OFFSET, CHARACTER_LABELS

MNIST_FILES = {
    "train": ("mnist/train-images-idx3-ubyte.gz", "mnist/train-labels-idx1-ubyte.gz"),
    "test": ("mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz"),
}
EMNIST_FILES = {
    split: (
        f"emnist/emnist-bymerge-{split}-images-idx3-ubyte.gz",
        f"emnist/emnist-bymerge-{split}-labels-idx1-ubyte.gz",
    )
    for split in ("train", "test")
}
EMNIST_MAPPING = "emnist/emnist-bymerge-mapping.txt"
PENDIGITS_FILES = {"train": "pendigits/pendigits-orig.tra", "test": "pendigits/pendigits-orig.tes"}

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataError(Exception):
    """Data that is missing or not in the layout expected; the message names the file."""


def default_data_dir() -> Path | None:
    """``$HWR_DATA_DIR``, else ``../shared/data`` beside the project when it exists."""
    env = os.environ.get("HWR_DATA_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent
    for cand in (here.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if cand.is_dir():
            return cand
    return None


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The data directory to read, or a DataError saying where it was looked for."""
    path = Path(data_dir) if data_dir else default_data_dir()
    if path is None or not path.is_dir():
        raise DataError(
            f"data directory not found ({data_dir or '../shared/data'}): pass --data-dir, set "
            "HWR_DATA_DIR, or fetch the official files with 'hwr-train download'"
        )
    return path


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzipped or not) into an array of its declared type and shape."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"missing data file: {p}")
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{p} is not an IDX file (bad magic number)")
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    body = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{p} is truncated: header says {dims}, found {body.size} values")
    return body.reshape(dims)


def load_mnist(data_dir: str | os.PathLike | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST images (n, 28, 28) uint8, upright, ink high; labels (n,) 0-9."""
    root = resolve_data_dir(data_dir)
    img, lab = MNIST_FILES[split]
    x, y = read_idx(root / img), read_idx(root / lab)
    _check_pair(x, y, root / img)
    return x, y.astype(np.int64)


def read_emnist_mapping(path: str | os.PathLike) -> list[str]:
    """The EMNIST mapping file (class index, ASCII code) -> label per class index."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"missing data file: {p}")
    pairs = [line.split() for line in p.read_text().splitlines() if line.strip()]
    labels = {int(i): chr(int(c)) for i, c in pairs}
    return [labels[i] for i in range(len(labels))]


def load_emnist(
    data_dir: str | os.PathLike | None, split: str, subset: str = "letters"
) -> tuple[np.ndarray, np.ndarray]:
    """EMNIST ByMerge images made upright (the files store them transposed).

    ``subset``: 'letters' gives the 37 letter classes relabelled 0-36 in CHARACTER_LABELS
    order; 'digits' the ten digit classes; 'all' the 47 ByMerge classes.
    """
    root = resolve_data_dir(data_dir)
    mapping = read_emnist_mapping(root / EMNIST_MAPPING)
    if tuple(mapping) != BYMERGE_LABELS:
        raise DataError(f"{root / EMNIST_MAPPING} does not list the 47 ByMerge classes")
    img, lab = EMNIST_FILES[split]
    x, y = read_idx(root / img), read_idx(root / lab).astype(np.int64)
    _check_pair(x, y, root / img)
    if subset == "letters":
        keep = y >= BYMERGE_LETTER_OFFSET
        x, y = x[keep], y[keep] - BYMERGE_LETTER_OFFSET
        assert len(CHARACTER_LABELS) == 37
    elif subset == "digits":
        keep = y < BYMERGE_LETTER_OFFSET
        x, y = x[keep], y[keep]
    elif subset != "all":
        raise ValueError(f"subset must be 'letters', 'digits' or 'all': got {subset!r}")
    return np.ascontiguousarray(x.transpose(0, 2, 1)), y


def _check_pair(x: np.ndarray, y: np.ndarray, where: Path) -> None:
    if x.ndim != 3 or x.shape[1:] != (28, 28) or len(x) != len(y):
        raise DataError(f"{where}: images {x.shape} do not match labels {y.shape}")


@dataclass
class PenSample:
    """One pendigits digit: strokes in screen coordinates (y down), its label and writer."""

    strokes: list[list[list[float]]]
    label: int
    writer: int


_SEGMENT = re.compile(r'^\.SEGMENT\s+DIGIT\s+\S+\s+\S+\s+"(\d)"')


def load_pendigits(data_dir: str | os.PathLike | None, split: str) -> list[PenSample]:
    """Parse the UNIPEN-style pendigits file; y is flipped so it points down like a canvas."""
    root = resolve_data_dir(data_dir)
    path = root / PENDIGITS_FILES[split]
    if not path.is_file():
        raise DataError(f"missing data file: {path}")
    samples: list[PenSample] = []
    label = writer = None
    strokes: list[list[list[float]]] = []
    current: list[list[float]] | None = None
    for line in path.read_text().splitlines():
        s = line.strip()
        if s.startswith(".SEGMENT"):
            if label is not None:
                samples.append(PenSample(strokes, label, writer if writer is not None else -1))
            m = _SEGMENT.match(s)
            label = int(m.group(1)) if m else None
            writer, strokes, current = None, [], None
        elif s.startswith(".COMMENT"):
            parts = s.split()
            if len(parts) > 2:
                writer = int(parts[2])
        elif s.startswith(".PEN_DOWN"):
            current = []
        elif s.startswith(".PEN_UP"):
            if current:
                strokes.append(current)
            current = None
        elif current is not None and s and not s.startswith("."):
            x, y = s.split()[:2]
            current.append([float(x), 500.0 - float(y)])
    if label is not None:
        samples.append(PenSample(strokes, label, writer if writer is not None else -1))
    if not samples:
        raise DataError(f"{path} holds no pendigits samples")
    return samples


def load_task(
    task: str, data_dir: str | os.PathLike | None, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """A task's images (n, 28, 28) uint8 and labels: MNIST for digits, EMNIST letters for characters."""
    if task == "digits":
        return load_mnist(data_dir, split)
    if task == "characters":
        return load_emnist(data_dir, split, "letters")
    raise ValueError(f"task must be 'digits' or 'characters': got {task!r}")
