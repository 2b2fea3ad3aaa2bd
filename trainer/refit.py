"""Refit a trained model's output layer on (relabelled) training data, keeping every other layer.

The convolutional layers and the 128-value embedding stay as they are; only the final
``logits`` layer (embedding -> classes) is fitted again, by softmax regression with label
smoothing on the embeddings of the training split (the validation holdout excluded). This is
how the character model learns the relabelled ``f`` without a full retraining: the embedding
already tells f shapes from F shapes (a linear probe finds them), only the old output layer
had learnt to call them all "F".
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class RefitConfig:
    steps: int = 800
    batch: int = 4096
    lr: float = 0.01
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    seed: int = 0


def fit_softmax(
    x: np.ndarray, y: np.ndarray, n_classes: int, cfg: RefitConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax regression (Adam, cosine learning rate, label smoothing) of ``y`` on ``x``.

    Features are standardised while fitting; the returned (W, b) apply to raw ``x``.
    """
    x = np.asarray(x, dtype=np.float64)
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-3
    xs = (x - mu) / sd
    n, d = xs.shape
    rng = np.random.default_rng(cfg.seed)
    w, b = np.zeros((d, n_classes)), np.zeros(n_classes)
    state = [np.zeros_like(w), np.zeros_like(w), np.zeros_like(b), np.zeros_like(b)]
    smooth = cfg.label_smoothing / n_classes
    for t in range(1, cfg.steps + 1):
        idx = rng.choice(n, min(cfg.batch, n), replace=False)
        z = xs[idx] @ w + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        target = np.full_like(p, smooth)
        target[np.arange(len(idx)), y[idx]] += 1.0 - cfg.label_smoothing
        g = (p - target) / len(idx)
        grads = (xs[idx].T @ g + cfg.weight_decay * w, g.sum(axis=0))
        lr = cfg.lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * t / cfg.steps)))
        for k, (param, grad) in enumerate(zip((w, b), grads, strict=True)):
            m, v = state[2 * k], state[2 * k + 1]
            m *= 0.9
            m += 0.1 * grad
            v *= 0.999
            v += 0.001 * grad * grad
            param -= lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    return (w / sd[:, None]).astype(np.float32), (b - (mu / sd) @ w).astype(np.float32)


def embeddings(model: Any, images: np.ndarray) -> np.ndarray:
    """The model's embedding output for (n, 28, 28) uint8 images."""
    x = images.astype(np.float32)[..., None] / 255.0
    return np.asarray(model.predict(x, batch_size=512, verbose=0)[1])


def _classes(model: Any, images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float32)[..., None] / 255.0
    return np.argmax(model.predict(x, batch_size=512, verbose=0)[0], axis=1)


def refit_head(
    task: str,
    init_from: str,
    out_dir: str,
    *,
    data_dir: str | None = None,
    relabel: str = "",
    val_size: int = 5000,
    seed: int = 1234,
    cfg: RefitConfig | None = None,
) -> Path:
    """Write ``out_dir/model.keras``: ``init_from`` with its output layer refitted.

    Also writes ``config.json`` (the base model's training config with the refit recorded)
    and ``validation.jsonl`` (the holdout's accuracy before and after), as training does.
    """
    import keras

    from hwrcore.labels import CHARACTER_LABELS, DIGITS

    from .config import load_config
    from .data import load_task
    from .datasets import _holdout
    from .evaluate import score

    cfg = cfg or RefitConfig()
    labels = list(CHARACTER_LABELS if task == "characters" else DIGITS.labels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x, y_asis = load_task(task, data_dir, "train")
    y = y_asis
    if relabel:
        from .relabel import apply_relabel, load_list

        y, moved = apply_relabel(x, y_asis, load_list(relabel), labels, "train")
        log.info("relabelled %d training images (%s)", moved, relabel)
    train, val = _holdout(x, y, val_size, seed)
    _, val_asis = _holdout(x, y_asis, val_size, seed)
    model = keras.models.load_model(init_from, compile=False)
    log.info("embedding %d training images with %s", len(train.x), init_from)
    e_train = embeddings(model, train.x)
    w, b = fit_softmax(e_train, train.y, len(labels), cfg)
    logits = model.get_layer("logits")
    before = None
    rows = []
    if val is not None:
        before = _classes(model, val.x)
    logits.set_weights([w, b])
    if val is not None:
        after = _classes(model, val.x)
        for name, pred in (("before", before), ("after", after)):
            s_re, s_asis = score(val.y, pred, labels), score(val_asis.y, pred, labels)
            rows.append(
                {
                    "epoch": name,
                    "val": round(s_re["accuracy"], 6),
                    "val_asis": round(s_asis["accuracy"], 6),
                    "val_macro_recall": round(s_re["macro_recall"], 6),
                }
            )
            log.info("validation %s the refit: %s", name, rows[-1])
    path = out / "model.keras"
    model.save(path)
    base_cfg = Path(init_from).parent / "config.json"
    config: dict[str, Any] = (
        json.loads(base_cfg.read_text())
        if base_cfg.is_file()
        else load_config(task, environ={}).to_dict()
    )
    config.update({"relabel": relabel, "val_size": val_size, "seed": seed, "out_dir": str(out)})
    config["refit"] = {
        "what": "output layer (logits) refitted on the embeddings; every other layer kept",
        "init_from": str(init_from),
        **cfg.__dict__,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    with open(out / "validation.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    (out / "labels.json").write_text(json.dumps(labels) + "\n")
    return path
