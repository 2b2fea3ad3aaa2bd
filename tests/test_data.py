"""Data readers: IDX files, the orientation of MNIST and EMNIST images, pendigits strokes."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from hwrcore.labels import CHARACTERS
from trainer.data import (
    DataError,
    load_emnist,
    load_mnist,
    load_pendigits,
    read_emnist_mapping,
    read_idx,
    resolve_data_dir,
)


def _idx(a: np.ndarray, code: int = 0x08) -> bytes:
    return bytes([0, 0, code, a.ndim]) + struct.pack(">" + "I" * a.ndim, *a.shape) + a.tobytes()


def test_read_idx_plain_and_gzipped(tmp_path: Path) -> None:
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.idx").write_bytes(_idx(a))
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(_idx(a)))
    for name in ("a.idx", "a.idx.gz"):
        got = read_idx(tmp_path / name)
        assert got.dtype == np.uint8 and got.shape == (2, 3, 4)
        np.testing.assert_array_equal(got, a)


def test_read_idx_big_endian_ints(tmp_path: Path) -> None:
    a = np.array([1, -2, 70000], dtype=">i4")
    (tmp_path / "i.idx").write_bytes(_idx(a, 0x0C))
    np.testing.assert_array_equal(read_idx(tmp_path / "i.idx"), [1, -2, 70000])


def test_read_idx_bad_magic(tmp_path: Path) -> None:
    a = np.zeros((2, 2), dtype=np.uint8)
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x01\x00" + _idx(a)[2:]))
    with pytest.raises(DataError, match="bad magic"):
        read_idx(tmp_path / "bad.gz")
    (tmp_path / "type.idx").write_bytes(_idx(a, 0x07))
    with pytest.raises(DataError, match="bad magic"):
        read_idx(tmp_path / "type.idx")
    (tmp_path / "short.idx").write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="bad magic"):
        read_idx(tmp_path / "short.idx")


def test_read_idx_truncated(tmp_path: Path) -> None:
    data = _idx(np.zeros((10, 28, 28), dtype=np.uint8))
    (tmp_path / "t.gz").write_bytes(gzip.compress(data[:-100]))
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "t.gz")


def test_read_idx_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing data file: .*nothing.gz"):
        read_idx(tmp_path / "nothing.gz")


def test_missing_data_dir_says_how_to_get_the_data(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="hwr-train download"):
        resolve_data_dir(tmp_path / "absent")


def test_mnist_counts_and_labels(data_dir: Path) -> None:
    x, y = load_mnist(data_dir, "train")
    tx, ty = load_mnist(data_dir, "test")
    assert x.shape == (60_000, 28, 28) and tx.shape == (10_000, 28, 28)
    assert x.dtype == np.uint8 and set(np.unique(y)) == set(range(10))
    assert len(ty) == 10_000


def _bands(img: np.ndarray, a: int, b: int) -> tuple[float, float]:
    """Shares of the ink in rows a..b-1 (a horizontal band) and in columns a..b-1 (vertical)."""
    img = img.astype(np.float64)
    return img[a:b].sum() / img.sum(), img[:, a:b].sum() / img.sum()


def test_mnist_is_upright(data_dir: Path) -> None:
    """MNIST training image 0 is a '5' and it, and the '7's, come out upright.

    Transposing an image swaps its rows and columns, so it swaps the ink share of a band of
    rows with that of the same band of columns. A '5' and a '7' both have a horizontal bar at
    the top: upright, the band of rows 4-9 holds far more ink than the band of columns 4-9
    (0.39 against 0.17 for image 0, 0.28 against 0.15 for the mean '7'); transposed, the
    inequality reverses. The mean '7' also has more ink in that top band than in rows 18-23
    (only its stem reaches down there), which an upside-down reader would reverse.
    """
    x, y = load_mnist(data_dir, "train")
    assert y[0] == 5
    top, left = _bands(x[0], 4, 10)
    assert top > 1.8 * left
    sevens = x[:5000][y[:5000] == 7].mean(axis=0)
    top, left = _bands(sevens, 4, 10)
    assert top > 1.5 * left
    assert sevens[4:10].sum() > sevens[18:24].sum()


@pytest.fixture(scope="module")
def emnist_all(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return load_emnist(data_dir, "test", "all")


def test_emnist_is_upright(emnist_all: tuple[np.ndarray, np.ndarray]) -> None:
    """EMNIST letters come out upright although the files store them transposed.

    The same band test as for MNIST, with EMNIST's 2-pixel border (bands 2-7). A 'T' has its
    bar at the top: the mean of the test split's 'T's holds 0.41 of its ink in rows 2-7 and
    0.17 in columns 2-7. A known sample: the first 'P' of the letters test split (index 18)
    has its bowl at the top right and its stem in the middle: 0.27 of its ink in rows 2-7,
    almost none (< 0.01) in columns 2-7. Both inequalities reverse if the images are transposed.
    """
    ax, ay = emnist_all
    x, y = ax[ay >= 10], ay[ay >= 10] - 10
    tees = x[y == CHARACTERS.index("T")][:500].mean(axis=0)
    top, left = _bands(tees, 2, 8)
    assert top > 1.8 * left
    p = CHARACTERS.index("P")
    assert y[18] == p and int(np.flatnonzero(y == p)[0]) == 18
    top, left = _bands(x[18], 2, 8)
    assert top > 0.2 and left < 0.02


def test_emnist_subsets_and_mapping(data_dir: Path, emnist_all) -> None:
    mapping = read_emnist_mapping(data_dir / "emnist" / "emnist-bymerge-mapping.txt")
    assert len(mapping) == 47 and mapping[10] == "A" and mapping[36] == "a"
    x, y = load_emnist(data_dir, "test", "letters")
    assert len(x) == 29_600 and y.min() == 0 and y.max() == 36
    dx, dy = load_emnist(data_dir, "test", "digits")
    assert set(np.unique(dy)) == set(range(10))
    ax, ay = emnist_all
    assert x.shape[1:] == (28, 28) and x.flags["C_CONTIGUOUS"]
    assert len(ax) == len(x) + len(dx) == 58_358
    # 'letters' is the 'all' subset's classes 10-46 relabelled from 0.
    np.testing.assert_array_equal(ax[ay >= 10][:50], x[:50])
    np.testing.assert_array_equal(ay[ay >= 10][:50] - 10, y[:50])
    with pytest.raises(ValueError, match="subset"):
        load_emnist(data_dir, "test", "uppercase")


@pytest.fixture(scope="module")
def pen(data_dir: Path) -> dict[str, list]:
    return {split: load_pendigits(data_dir, split) for split in ("train", "test")}


def test_pendigits_counts_and_writers(pen: dict[str, list]) -> None:
    """7,494 training and 3,498 test drawings by 30 and 14 writers.

    The files number their writers separately (1-30 and 1-14); the test writers are other
    people (UCI's writer-independent split), so no drawing appears in both files.
    """
    train, test = pen["train"], pen["test"]
    assert len(train) == 7_494 and len(test) == 3_498
    assert sorted({s.writer for s in train}) == list(range(1, 31))
    assert sorted({s.writer for s in test}) == list(range(1, 15))
    assert {s.label for s in train} == {s.label for s in test} == set(range(10))
    seen = {repr(s.strokes) for s in train}
    assert not any(repr(s.strokes) in seen for s in test)
    assert all(s.strokes and all(len(st) >= 1 for st in s.strokes) for s in train + test)


def test_pendigits_y_points_down(pen: dict[str, list], data_dir: Path) -> None:
    """The tablet's y axis points up; the reader flips it (y' = 500 - y) to point down."""
    first = pen["test"][0]
    raw = (data_dir / "pendigits" / "pendigits-orig.tes").read_text().split(".PEN_DOWN")[1]
    x, y = (float(v) for v in raw.split()[:2])
    assert first.strokes[0][0] == [x, 500.0 - y]
    # A '7' starts at the top of its bar and ends at the foot of its stem: on a screen, whose
    # y grows downwards, the first point has the smaller y in (nearly) every drawing.
    sevens = [s for s in pen["test"] if s.label == 7]
    down = np.mean([s.strokes[0][0][1] < s.strokes[-1][-1][1] for s in sevens])
    assert down > 0.95
