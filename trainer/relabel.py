"""Relabel mixed classes of the training data: lower-case f shapes inside EMNIST ByMerge's ``F``.

ByMerge's ``F`` class holds many lower-case f drawings (more than the ``f`` class itself), so a
model trained on it learns to answer "F" for an f. The fix is in the data: a positive-unlabelled
(PU) classifier is trained on the labelled lower-case class (positive) against the mixed class
(unlabelled), with out-of-fold scores so that no image is scored by a model that saw it. Each
unlabelled image's chance of being a positive shape follows Elkan and Noto (2008): with ``c``
the mean score of held-out positives, ``p = (1 - c) / c * g / (1 - g)``. Images with ``p`` over
the threshold move to the lower-case class.

The result is a list keyed by image content (sha256 of the upright 28x28 bytes), committed with
the code, so the training loader applies exactly the same relabelling on any machine and in any
file order. The test split's mixed class is scored by the same fold models (trained on the
training split only) and listed separately: it is never trained on, only used to report the
test figure on a relabelled copy beside the figure on the test split as it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_LIST = Path(__file__).resolve().parent / "relabels" / "characters-f.json"
SCHEMA = 1


def image_hash(image: np.ndarray) -> str:
    """Content key of one upright (28, 28) uint8 image: the first 16 hex of its sha256."""
    a = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    return hashlib.sha256(a.tobytes()).hexdigest()[:16]


def image_hashes(images: np.ndarray) -> list[str]:
    """Content keys of a batch of (n, 28, 28) uint8 images."""
    return [image_hash(im) for im in images]


@dataclass
class PUResult:
    """Out-of-fold scores of the positives and the unlabelled images, and the fold models."""

    pos_scores: np.ndarray  # g(x) of each positive, by a model that never saw it
    unl_scores: np.ndarray  # g(x) of each unlabelled image, likewise
    c: float  # mean g of held-out positives: P(labelled | positive shape)
    models: list[Any]

    def posterior(self, scores: np.ndarray | None = None) -> np.ndarray:
        """Elkan-Noto chance that an unlabelled image is a positive shape."""
        g = np.clip(self.unl_scores if scores is None else scores, 1e-6, 1 - 1e-6)
        c = min(max(self.c, 1e-6), 1 - 1e-6)
        return np.clip((1 - c) / c * g / (1 - g), 0.0, 1.0)

    def score(self, images: np.ndarray) -> np.ndarray:
        """g(x) of new images: the mean of the fold models (none of which saw them)."""
        return np.mean([_predict(m, images) for m in self.models], axis=0)


def _small_cnn(keras):
    from keras import layers

    # Small on purpose (about 2 M multiply-adds an image): it is trained once per fold.
    inp = keras.Input((28, 28, 1))
    x = inp
    for filters in (16, 32):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = layers.GlobalMaxPooling2D()(x)
    x = layers.Dropout(0.3)(x)
    out = layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inp, out, name="pu_cnn")


def _predict(model, images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float32)[..., None] / 255.0
    return model.predict(x, batch_size=512, verbose=0)[:, 0].astype(np.float64)


def pu_scores(
    positives: np.ndarray,
    unlabelled: np.ndarray,
    *,
    folds: int = 5,
    epochs: int = 12,
    seed: int = 1234,
    augment: bool = True,
) -> PUResult:
    """Train ``folds`` positive-vs-unlabelled CNNs; score every image out of fold."""
    import keras
    import tensorflow as tf

    from .augment import AugmentConfig, augment_batch

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    fold_p = rng.permutation(len(positives)) % folds
    fold_u = rng.permutation(len(unlabelled)) % folds
    pos_scores = np.zeros(len(positives))
    unl_scores = np.zeros(len(unlabelled))
    aug = AugmentConfig(rotate_deg=8.0, scale=0.08, shear=0.15, shift_px=1.5)
    models = []
    for k in range(folds):
        xtr = np.concatenate([positives[fold_p != k], unlabelled[fold_u != k]])
        ytr = np.concatenate([np.ones(np.sum(fold_p != k)), np.zeros(np.sum(fold_u != k))])
        ds = tf.data.Dataset.from_tensor_slices((xtr, ytr.astype(np.float32)))
        ds = ds.shuffle(len(xtr), seed=seed + k).batch(64)

        def prep(xb, yb):
            xb = tf.cast(xb, tf.float32)[..., None] / 255.0
            return (augment_batch(xb, aug) if augment else xb), yb

        ds = ds.map(prep).prefetch(2)
        model = _small_cnn(keras)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
        model.fit(ds, epochs=epochs, verbose=0, shuffle=False)
        pos_scores[fold_p == k] = _predict(model, positives[fold_p == k])
        unl_scores[fold_u == k] = _predict(model, unlabelled[fold_u == k])
        log.info("PU fold %d/%d done", k + 1, folds)
        models.append(model)
    c = float(np.mean(pos_scores))
    return PUResult(pos_scores, unl_scores, c, models)


def relabel_list(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray | None,
    test_y: np.ndarray | None,
    *,
    source: int,
    target: int,
    labels: list[str],
    threshold: float = 0.5,
    folds: int = 5,
    epochs: int = 12,
    seed: int = 1234,
) -> tuple[dict[str, Any], PUResult, np.ndarray, np.ndarray | None]:
    """The relabel document for class ``source`` -> ``target`` and what it was computed from.

    Returns (document, PU result, posterior of each training ``source`` image, posterior of
    each test ``source`` image or None).
    """
    pos = train_x[train_y == target]
    unl = train_x[train_y == source]
    result = pu_scores(pos, unl, folds=folds, epochs=epochs, seed=seed)
    post = result.posterior()
    moved = unl[post > threshold]
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "from": labels[source],
        "to": labels[target],
        "method": (
            f"positive-unlabelled CNN, {labels[target]!r} (positive) against {labels[source]!r} "
            f"(unlabelled), {folds}-fold out-of-fold scores, Elkan-Noto posterior over "
            f"{threshold}"
        ),
        "threshold": threshold,
        "folds": folds,
        "epochs": epochs,
        "seed": seed,
        "c": round(result.c, 6),
        "expected_positives_in_source": round(float(post.sum()), 1),
        "train": {"n_source": int(len(unl)), "n_target": int(len(pos))},
        "train_hashes": sorted(image_hashes(moved)),
    }
    test_post = None
    if test_x is not None and test_y is not None:
        tunl = test_x[test_y == source]
        test_post = result.posterior(result.score(tunl))
        doc["test"] = {"n_source": int(len(tunl)), "n_target": int(np.sum(test_y == target))}
        doc["test_hashes"] = sorted(image_hashes(tunl[test_post > threshold]))
    doc["train"]["moved"] = len(doc["train_hashes"])
    if "test" in doc:
        doc["test"]["moved"] = len(doc["test_hashes"])
    return doc, result, post, test_post


def save_list(doc: dict[str, Any], path: str | os.PathLike) -> None:
    """Write the relabel document (one hash a line inside the JSON lists, for readable diffs)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, p)


def load_list(path: str | os.PathLike) -> dict[str, Any]:
    """Read a relabel document; a file of another shape fails with its name."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"relabel list not found: {p}")
    doc = json.loads(p.read_text())
    if doc.get("schema") != SCHEMA or not {"from", "to", "train_hashes"} <= set(doc):
        raise ValueError(f"{p} is not a relabel list (schema {SCHEMA})")
    return doc


def list_sha256(path: str | os.PathLike) -> str:
    """sha256 of a relabel list file, recorded in the manifest's training data."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def apply_relabel(
    x: np.ndarray, y: np.ndarray, doc: dict[str, Any], labels: list[str], split: str = "train"
) -> tuple[np.ndarray, int]:
    """Labels ``y`` with the listed images of class ``from`` moved to ``to``; and how many moved.

    Only images whose current label is ``from`` move, so a list cannot relabel anything else.
    """
    src, dst = labels.index(doc["from"]), labels.index(doc["to"])
    keys = set(doc.get(f"{split}_hashes", []))
    y = np.array(y, copy=True)
    idx = np.where(y == src)[0]
    hit = [i for i in idx if image_hash(x[i]) in keys]
    y[hit] = dst
    return y, len(hit)


def contact_sheet(
    images: np.ndarray, scores: np.ndarray, path: str | os.PathLike, cols: int = 25
) -> None:
    """A PNG of images in order of score (ink dark on white), each with its score under it."""
    from PIL import Image, ImageDraw

    order = np.argsort(-scores)
    n = len(order)
    rows = (n + cols - 1) // cols
    cell_w, cell_h = 44, 54
    sheet = Image.new("L", (cols * cell_w, rows * cell_h), 255)
    draw = ImageDraw.Draw(sheet)
    for j, i in enumerate(order):
        r, c = divmod(j, cols)
        im = Image.fromarray(255 - images[i]).resize((40, 40), Image.NEAREST)
        sheet.paste(im, (c * cell_w + 2, r * cell_h + 1))
        draw.text((c * cell_w + 6, r * cell_h + 41), f"{scores[i]:.2f}", fill=0)
    sheet.save(path)
