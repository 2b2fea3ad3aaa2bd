"""Assemble training, validation and test arrays for each task from the data directory.

Digits: MNIST, plus the pendigits training writers' pen strokes rendered through the shared
preprocessing (the closest data here to canvas drawings), optionally EMNIST digits renormalised
to the MNIST convention. Characters: the 37 ByMerge letter classes of EMNIST.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwrcore.preprocess import image_to_input, strokes_to_input

from .data import PenSample, load_emnist, load_mnist, load_pendigits, resolve_data_dir

log = logging.getLogger(__name__)


@dataclass
class Split:
    x: np.ndarray  # (n, 28, 28) uint8, ink high
    y: np.ndarray  # (n,) int64


def _to_u8(images: list[np.ndarray]) -> np.ndarray:
    return np.clip(np.rint(np.stack(images) * 255.0), 0, 255).astype(np.uint8)


PENDIGITS_VAL_WRITERS = 5  # training-file writers held out for validation, by default


def pendigits_writer_split(samples: list[PenSample], n_val: int) -> tuple[set[int], set[int]]:
    """Writers of the training file split into (train, validation) sets, deterministically."""
    writers = sorted({s.writer for s in samples})
    step = max(1, len(writers) // max(1, n_val))
    val = set(writers[::step][:n_val]) if n_val > 0 else set()
    return set(writers) - val, val


def jitter_strokes(strokes, rng: np.random.Generator, stroke_shift: float = 0.0):
    """A random affine distortion of pen strokes (rotation, shear, aspect), before rendering.

    With ``stroke_shift`` > 0 each stroke of a drawing of several also moves on its own, by up
    to that share of the drawing's larger side in x and y: where a pupil puts the bar of a 4
    or the top of a 5 varies from one drawing to the next."""
    pts = np.concatenate([np.asarray(s, dtype=np.float64) for s in strokes])
    c = (pts.max(axis=0) + pts.min(axis=0)) / 2.0
    if stroke_shift > 0 and len(strokes) > 1:
        side = float(np.max(pts.max(axis=0) - pts.min(axis=0))) or 1.0
        offsets = rng.uniform(-stroke_shift, stroke_shift, (len(strokes), 2)) * side
        strokes = [
            np.asarray(s, dtype=np.float64) + o for s, o in zip(strokes, offsets, strict=True)
        ]
    th = np.radians(rng.uniform(-10, 10))
    sh = rng.uniform(-0.2, 0.2)
    ax = rng.uniform(0.85, 1.15)
    m = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]) @ np.array(
        [[ax, sh], [0.0, 1.0]]
    )
    return [((np.asarray(s) - c) @ m.T + c).tolist() for s in strokes]


def render_pendigits(
    samples: list[PenSample],
    variants: int,
    seed: int,
    style: str = "mnist",
    stroke_shift: float = 0.0,
) -> Split:
    """Render each sample once as drawn and ``variants`` more times distorted, with varied pens."""
    from hwrcore.preprocess import STYLES, Style

    rng = np.random.default_rng(seed)
    base = STYLES[style]
    xs, ys = [], []
    for s in samples:
        xs.append(strokes_to_input(s.strokes, base))
        ys.append(s.label)
        for _ in range(variants):
            pen = Style(
                base.name, base.box, base.centre, base.width * rng.uniform(0.6, 1.6), base.blur
            )
            xs.append(strokes_to_input(jitter_strokes(s.strokes, rng, stroke_shift), pen))
            ys.append(s.label)
    return Split(_to_u8(xs), np.asarray(ys, dtype=np.int64))


def _cached(cache: Path, key: dict, build) -> Split:
    tag = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache / f"{key['what']}-{tag}.npz"
    if path.exists():
        with np.load(path) as z:
            return Split(z["x"], z["y"])
    split = build()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, x=split.x, y=split.y)
    tmp.replace(path)
    return split


def _holdout(x: np.ndarray, y: np.ndarray, val_size: int, seed: int) -> tuple[Split, Split | None]:
    """A seeded random split into (train, validation); validation is None when ``val_size`` is 0."""
    perm = np.random.default_rng(seed).permutation(len(x))
    tr, va = perm[val_size:], perm[:val_size]
    return Split(x[tr], y[tr]), (Split(x[va], y[va]) if len(va) else None)


def digits_data(cfg, cache: Path) -> dict[str, Split]:
    """Train/validation splits for the digit model, and the named validation slices."""
    root = resolve_data_dir(cfg.data_dir or None)
    x, y = load_mnist(root, "train")
    train, val = _holdout(x, y, cfg.val_size, cfg.seed)
    parts = [train]
    out = {"val": val} if val else {}
    pen = load_pendigits(root, "train")
    train_w, val_w = pendigits_writer_split(pen, cfg.pendigits_val_writers)
    pen_tr = [s for s in pen if s.writer in train_w]
    pen_va = [s for s in pen if s.writer in val_w]
    if cfg.pendigits_variants >= 0 and pen_tr:
        key = {
            "what": "pendigits",
            "writers": sorted(train_w),
            "v": cfg.pendigits_variants,
            "seed": cfg.seed,
        }
        if cfg.pendigits_stroke_shift:
            key["shift"] = cfg.pendigits_stroke_shift
        parts.append(
            _cached(
                cache,
                key,
                lambda: render_pendigits(
                    pen_tr,
                    cfg.pendigits_variants,
                    cfg.seed,
                    stroke_shift=cfg.pendigits_stroke_shift,
                ),
            )
        )
    if pen_va:
        key = {"what": "pendigits-val", "writers": sorted(val_w)}
        out["val_pendigits"] = _cached(cache, key, lambda: render_pendigits(pen_va, 0, 0))
    if "emnist-digits" in cfg.extra.split(","):

        def build() -> Split:
            ex, ey = load_emnist(root, "train", "digits")
            imgs = [image_to_input(im / 255.0, "mnist") for im in ex]
            return Split(_to_u8(imgs), ey)

        parts.append(_cached(cache, {"what": "emnist-digits-mnist-style"}, build))
    out["train"] = Split(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))
    return out


def characters_data(cfg, cache: Path) -> dict[str, Split]:
    """Train/validation splits for the character model (37 ByMerge letter classes).

    With ``cfg.relabel`` the listed training images move class (trainer.relabel) before the
    holdout; validation is then measured on the relabelled slice ("val") and on the same
    images with their original labels ("val_asis").
    """
    from hwrcore.labels import CHARACTER_LABELS

    root = resolve_data_dir(cfg.data_dir or None)
    x, y = load_emnist(root, "train", "letters")
    y_asis = y
    if cfg.relabel:
        from .relabel import apply_relabel, load_list

        doc = load_list(cfg.relabel)
        y, moved = apply_relabel(x, y, doc, list(CHARACTER_LABELS), "train")
        log.info(
            "relabelled %d training images %r -> %r (%s)",
            moved,
            doc["from"],
            doc["to"],
            cfg.relabel,
        )
    train, val = _holdout(x, y, cfg.val_size, cfg.seed)
    out = {"train": train}
    if val:
        out["val"] = val
        if cfg.relabel:
            _, val_asis = _holdout(x, y_asis, cfg.val_size, cfg.seed)
            out["val_asis"] = val_asis
    return out
