"""Training loop: tf.data with augmentation, cosine schedule, a checkpoint every epoch, resume."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from hwrcore.labels import CHARACTERS, DIGITS

from .config import TrainConfig
from .datasets import characters_data, digits_data

log = logging.getLogger(__name__)


def label_set(task: str):
    return DIGITS if task == "digits" else CHARACTERS


def setup_tf(cfg: TrainConfig):
    """Import and configure TensorFlow/Keras for this run (threads, precision, seed)."""
    import tensorflow as tf

    if cfg.threads:
        tf.config.threading.set_intra_op_parallelism_threads(cfg.threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, cfg.threads))
    import keras

    keras.utils.set_random_seed(cfg.seed)
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if cfg.mixed_precision else "float32")
    return tf, keras


def make_dataset(tf, x: np.ndarray, y: np.ndarray, cfg: TrainConfig, train: bool, targets: int = 1):
    """Batches of (images, labels), augmented when ``train``; with ``targets`` > 1 the labels
    come once per output of a model with several (an ensemble's towers)."""
    from .augment import augment_batch

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if train:
        ds = ds.shuffle(min(len(x), 100_000), seed=cfg.seed, reshuffle_each_iteration=True)
    ds = ds.batch(cfg.batch_size, drop_remainder=train)

    def prep(xb, yb):
        xb = tf.cast(xb, tf.float32)[..., None] / 255.0
        if train:
            xb = augment_batch(xb, cfg.augment)
        return xb, (yb if targets == 1 else (yb,) * targets)

    ds = ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE)
    if train and cfg.max_steps:
        ds = ds.take(cfg.max_steps)
    return ds.prefetch(2)


def train(cfg: TrainConfig) -> Path:
    """Train (resuming from the last epoch checkpoint if there is one); return the model path."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_resumable(out, cfg)
    cfg.save(out / "config.json")
    log.info("effective config: %s", json.dumps(cfg.to_dict(), sort_keys=True))
    tf, keras = setup_tf(cfg)
    from .models import build, tower_outputs

    data = (digits_data if cfg.task == "digits" else characters_data)(cfg, out.parent / "cache")
    x, y = data["train"].x, data["train"].y
    if cfg.limit:
        x, y = x[: cfg.limit], y[: cfg.limit]
    labels = label_set(cfg.task)
    val_sets = {k: v for k, v in data.items() if k.startswith("val")}
    log.info(
        "training on %d images, validating on %s",
        len(x),
        ", ".join(f"{k} {len(v.x)}" for k, v in val_sets.items()) or "nothing",
    )
    steps = max(1, len(x) // cfg.batch_size)
    if cfg.max_steps:
        steps = min(steps, cfg.max_steps)
    model = build(cfg.arch, len(labels))
    if cfg.init_from:
        model.set_weights(keras.models.load_model(cfg.init_from, compile=False).get_weights())
        log.info("starting from the weights of %s", cfg.init_from)
    total = steps * cfg.epochs
    warm = int(steps * cfg.warmup_epochs) if cfg.epochs > 1 else 0
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=cfg.lr / 10 if warm else cfg.lr,
        decay_steps=max(1, total - warm),
        alpha=0.01,
        warmup_target=cfg.lr if warm else None,
        warmup_steps=warm,
    )
    opt = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=cfg.weight_decay)
    # Train through the probabilities output (the embedding output shares every layer); an
    # ensemble trains through each tower's own, so that its towers stay separate models.
    towers = tower_outputs(model)
    fit_model = keras.Model(model.input, towers or model.outputs[0], name=f"{model.name}_train")
    loss = _smoothed_sparse_ce(keras, len(labels), cfg.label_smoothing)
    fit_model.compile(
        optimizer=opt,
        loss=[loss] * len(towers) if towers else loss,
        metrics=[["sparse_categorical_accuracy"]] * len(towers)
        if towers
        else ["sparse_categorical_accuracy"],
    )
    train_ds = make_dataset(tf, x, y, cfg, train=True, targets=max(1, len(towers)))
    callbacks = [
        keras.callbacks.BackupAndRestore(
            str(out / "backup"), save_freq="epoch", delete_checkpoint=False
        ),
        keras.callbacks.CSVLogger(str(out / "history.csv"), append=True),
        _ValidationReport(
            keras.Model(model.input, [model.outputs[0], *towers]),
            val_sets,
            out / "validation.jsonl",
        ),
        _progress(keras, steps, cfg.epochs),
    ]
    t0 = time.time()
    fit_model.fit(train_ds, epochs=cfg.epochs, callbacks=callbacks, verbose=2)
    log.info("training took %.0f s", time.time() - t0)
    path = out / "model.keras"
    model.save(path)
    (out / "labels.json").write_text(json.dumps(list(labels.labels)) + "\n")
    return path


# Settings that may change between an interrupted run and its resumption.
_RESUME_FREE = ("threads", "out_dir", "data_dir")


def _check_resumable(out: Path, cfg: TrainConfig) -> None:
    """Refuse to resume a run in ``out`` that was started with other training settings.

    Its epoch checkpoint would otherwise carry on (or silently end) a different run, e.g. a
    smoke run of a few steps, and the model written would not be the one asked for.
    """
    saved_path = out / "config.json"
    if not (out / "backup").exists() or not saved_path.is_file():
        return
    saved = json.loads(saved_path.read_text())
    now = cfg.to_dict()
    changed = sorted(k for k in now if k not in _RESUME_FREE and saved.get(k) != now[k])
    if changed:
        diff = ", ".join(f"{k} {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise ValueError(
            f"{out} holds an unfinished or finished run with other settings ({diff}); "
            f"resume it with the same settings, or remove {out} (or pass another --out-dir) "
            "to start again"
        )


def _smoothed_sparse_ce(keras, num_classes: int, smoothing: float):
    """Sparse labels with label smoothing (Keras' sparse loss has no smoothing of its own)."""
    ce = keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)

    def loss(y_true, y_pred):
        import tensorflow as tf

        onehot = tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), num_classes)
        return ce(onehot, y_pred)

    return loss


class _ValidationReport:
    """Keras callback: accuracy on each validation slice after every epoch, to log and JSONL.

    ``scorer`` outputs the model's probabilities, then those of each tower of an ensemble
    (scored as ``<slice>_m0``, ``<slice>_m1``, ...)."""

    def __new__(cls, scorer, val_sets, path):
        import keras

        class Report(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                row = {"epoch": epoch + 1, "loss": float((logs or {}).get("loss", float("nan")))}
                for name, split in val_sets.items():
                    xv = split.x.astype(np.float32)[..., None] / 255.0
                    outs = scorer.predict(xv, batch_size=512, verbose=0)
                    outs = outs if isinstance(outs, list) else [outs]
                    for i, probs in enumerate(outs):
                        key = name if i == 0 else f"{name}_m{i - 1}"
                        row[key] = float(np.mean(np.argmax(probs, axis=1) == split.y))
                log.info("epoch %d validation: %s", epoch + 1, row)
                with open(path, "a") as f:
                    f.write(json.dumps(row) + "\n")

        return Report()


def _progress(keras, steps: int, epochs: int, every: int = 100):
    """Keras callback: a log line every ``every`` steps with loss, speed and time left."""

    class Progress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch, self.t0 = epoch, time.time()

        def on_train_batch_end(self, batch, logs=None):
            if (batch + 1) % every:
                return
            rate = (batch + 1) / max(1e-9, time.time() - self.t0)
            left = (steps - batch - 1 + (epochs - self.epoch - 1) * steps) / rate
            log.info(
                "epoch %d/%d step %d/%d loss %.4f acc %.4f (%.2f steps/s, about %.0f min left)",
                self.epoch + 1,
                epochs,
                batch + 1,
                steps,
                (logs or {}).get("loss", float("nan")),
                next(  # one model's accuracy, or an ensemble's first tower's
                    (v for k, v in (logs or {}).items() if k.endswith("categorical_accuracy")),
                    float("nan"),
                ),
                rate,
                left / 60,
            )

    return Progress()
