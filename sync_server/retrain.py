"""The worker's side of a retrain: snapshot, fine-tune, export, evaluate, gate, publish.

The only module of the server that imports TensorFlow and the trainer, and only inside
:func:`fine_tune` (so inside the worker process, inside a job). The rest reads models the
way devices do, through :class:`edge.classifier.Classifier` (ai-edge-litert).

A job fine-tunes the version every device serves now (its Keras weights, kept beside each
version the worker made, or rebuilt once from the int8 file of a shipped version) on the
training part of its snapshot plus a class-balanced replay sample of the base training data
(MNIST, EMNIST letters; relabelled as the trainer's list says), with the trainer's dataset and
augmentation; exports int8 with a manifest naming its parent and snapshot; measures both
models on the base test split and on the held-out corrections; and publishes only if the gate
(:func:`gate`) passes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hwrcore.labels import LABEL_SETS

if TYPE_CHECKING:
    from .jobs import Progress, WorkerContext

log = logging.getLogger(__name__)

TASKS = {"digit": "digits", "char": "characters"}
REPO_ROOT = Path(__file__).resolve().parent.parent
AUTO_RELABEL = {"characters": REPO_ROOT / "trainer" / "relabels" / "characters-f.json"}
REPRESENTATIVE = 300
AUTO_LAYERS = {"digits": "all", "characters": "head"}


# -- the gate (pure) ---------------------------------------------------------------------------
def judged_recall(
    base: dict[str, Any], same_shape: Sequence[Sequence[str]] = ()
) -> dict[str, float]:
    """Each class's base recall as the gate judges it. The classes of a same-shape group (a
    vertical stroke is I or l) are judged as one, "I/L": a drawing of any of them read as any of
    them counts, from the confusion matrix. Without a matrix every class stands alone."""
    from trainer.evaluate import same_shape as measure_groups

    recall = {str(k): float(v) for k, v in base["per_class_recall"].items()}
    labels, cm = base.get("labels"), base.get("confusion_matrix")
    groups = [g for g in same_shape if labels and set(g) <= set(labels)]
    if not cm or not groups:
        return recall
    for group, figures in zip(
        groups, measure_groups({"confusion_matrix": cm}, labels, groups), strict=True
    ):
        if figures["support"]:
            for g in group:
                recall.pop(g, None)
            recall[figures["classes"]] = figures["recall_together"]
    return recall


def gate(
    parent: dict[str, Any],
    new: dict[str, Any],
    max_accuracy_drop: float,
    max_recall_drop: float,
    same_shape: Sequence[Sequence[str]] = (),
) -> dict[str, Any]:
    """Publish only if base accuracy falls by at most ``max_accuracy_drop``, no class's recall by
    more than ``max_recall_drop`` (a same-shape group's classes judged together, as
    :func:`judged_recall` does), and held-out accuracy rises. ``{"passed", "checks", "reason"}``.
    """
    checks = []
    pa, na = parent["base"]["accuracy"], new["base"]["accuracy"]
    checks.append(
        {
            "check": "base_accuracy",
            "passed": na >= pa - max_accuracy_drop - 1e-12,
            "value": na - pa,
            "limit": -max_accuracy_drop,
            "detail": f"base test accuracy {pa:.2%} -> {na:.2%}",
        }
    )
    both = all(b["base"].get("labels") and b["base"].get("confusion_matrix") for b in (parent, new))
    groups = same_shape if both else ()
    before, after = judged_recall(parent["base"], groups), judged_recall(new["base"], groups)
    worst_label, worst = None, 0.0
    for label, r in after.items():
        drop = before.get(label, 0.0) - r
        if drop > worst:
            worst_label, worst = label, drop
    together = [g for g in ("/".join(x) for x in groups) if g in after]
    checks.append(
        {
            "check": "class_recall",
            "passed": worst <= max_recall_drop + 1e-12,
            "value": -worst,
            "limit": -max_recall_drop,
            "detail": (
                f"largest recall fall: {worst_label!r} by {worst:.1%}"
                if worst_label is not None
                else "no class's recall fell"
            )
            + (f" ({', '.join(together)} judged together: one shape)" if together else ""),
        }
    )
    ph, nh = parent["heldout"], new["heldout"]
    checks.append(
        {
            "check": "heldout_accuracy",
            "passed": nh["n"] > 0 and nh["accuracy"] > ph["accuracy"],
            "value": (nh["accuracy"] - ph["accuracy"]) if nh["n"] else None,
            "limit": 0.0,
            "detail": _heldout_detail(ph, nh),
        }
    )
    failed = [c for c in checks if not c["passed"]]
    reason = "; ".join(_why(c) for c in failed) if failed else None
    return {"passed": not failed, "checks": checks, "reason": reason}


def _why(check: dict[str, Any]) -> str:
    """A refused check in words, with the limit it passed (what an admin reads on Jobs)."""
    if check["check"] == "base_accuracy":
        return (
            f"{check['detail']}: down {-check['value'] * 100:.2f} points, where at most "
            f"{-check['limit'] * 100:.2f} may be lost"
        )
    if check["check"] == "class_recall":
        return f"{check['detail']}, where at most {-check['limit']:.1%} may be lost"
    return f"held-out corrections must be read better: {check['detail']}"


def _heldout_detail(ph: dict, nh: dict) -> str:
    if not nh["n"]:
        return "no held-out corrections (every correction comes from one device)"
    figures = f"held-out corrections ({nh['n']}) {ph['accuracy']:.2%} -> {nh['accuracy']:.2%}"
    if ph["accuracy"] >= 1.0:
        return (
            f"{figures}: the current version already reads every held-out correction, so a new "
            "one has nothing to show it does better; retrain when more corrections have come"
        )
    return figures


# -- measuring (ai-edge-litert, no TensorFlow) ----------------------------------------------------
def measure(
    manifest_path: str | os.PathLike,
    base_x: np.ndarray,
    base_y: np.ndarray,
    held_x: np.ndarray,
    held_y: Sequence[str],
    measured_on: str,
) -> dict[str, Any]:
    """A model's figures as devices would get them: base test and held-out corrections."""
    from edge.classifier import Classifier, ClassifierOptions
    from trainer.evaluate import score

    clf = Classifier(manifest_path, ClassifierOptions(num_threads=1))
    labels = clf.labels
    probs, _ = clf.predict_batch(base_x) if len(base_x) else (np.zeros((0, len(labels))), None)
    base = score(base_y, np.argmax(probs, axis=1), labels) if len(base_x) else None
    out: dict[str, Any] = {
        "base": {
            "accuracy": base["accuracy"] if base else 0.0,
            "per_class_recall": {c["label"]: c["recall"] for c in base["per_class"]}
            if base
            else {},
            "confusion_matrix": base["confusion_matrix"] if base else [],
            "labels": list(labels),
            "n": int(len(base_x)),
            "measured_on": measured_on,
        }
    }
    if len(held_x):
        hp, _ = clf.predict_batch(held_x)
        guess = [labels[i] for i in np.argmax(hp, axis=1)]
        acc = float(np.mean([g == t for g, t in zip(guess, held_y, strict=True)]))
    else:
        acc = 0.0
    out["heldout"] = {"accuracy": acc, "n": int(len(held_x))}
    return out


def relabel_path(config: Any, task: str) -> Path | None:
    """The relabel list used for replay and the base test ('auto': the trainer's, if any)."""
    if config.relabel == "auto":
        p = AUTO_RELABEL.get(task)
        return p if p is not None and p.is_file() else None
    return Path(config.relabel) if config.relabel else None


def base_split(config: Any, task: str, split: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Base images (uint8), labels (relabelled when a list applies) and a description."""
    from trainer.data import load_task

    x, y = load_task(task, config.base_data_dir or None, split)
    what = {"digits": "MNIST", "characters": "EMNIST ByMerge letters"}[task] + f" {split}"
    rl = relabel_path(config, task)
    if rl is not None:
        from trainer.relabel import apply_relabel, load_list

        doc = load_list(rl)
        y, moved = apply_relabel(x, y, doc, list(LABEL_SETS[TASKS_MODE[task]].labels), split)
        what += f", {moved} {doc['from']!r} images relabelled {doc['to']!r} ({rl.name})"
    return x, y, what


TASKS_MODE = {v: k for k, v in TASKS.items()}


def base_test(config: Any, task: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """The base test split as float inputs (a seeded sample of ``eval_limit`` if set)."""
    x, y, what = base_split(config, task, "test")
    if config.eval_limit and config.eval_limit < len(x):
        idx = np.sort(np.random.default_rng(seed).permutation(len(x))[: config.eval_limit])
        x, y = x[idx], y[idx]
        what += f", a random {config.eval_limit:,} of the test images"
    return x.astype(np.float32) / 255.0, y, f"{what} ({len(x):,}), int8, ai-edge-litert"


def replay_sample(
    x: np.ndarray,
    y: np.ndarray,
    per_class: int,
    seed: int,
    corrections: np.ndarray | None = None,
    misread_as: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Base images so each class holds ``per_class`` with the corrections (at least a quarter of
    it replayed), seeded: a class the school corrects a lot does not drown its neighbours.

    ``misread_as``: the parent's guess for each correction it got wrong; each such class gets
    one more replayed image per correction taken from it (up to ``per_class`` more), so the
    model learns the boundary between the two instead of moving the whole class.
    """
    rng = np.random.default_rng(seed)
    n = int(y.max()) + 1
    have = np.bincount(corrections, minlength=n) if corrections is not None else None
    extra = np.bincount(misread_as, minlength=n) if misread_as is not None else np.zeros(n, int)
    idx = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        want = per_class if have is None else max(per_class // 4, per_class - int(have[c]))
        want += min(per_class, int(extra[c]))
        idx.append(rng.choice(members, min(want, len(members)), replace=False))
    pick = np.sort(np.concatenate(idx)) if idx else np.zeros(0, np.int64)
    return x[pick], y[pick]


# -- Keras weights of a version (TensorFlow from here on) ----------------------------------------
def keras_from_tflite(manifest_path: str | os.PathLike):  # type: ignore[no-untyped-def]
    """A Keras model with the weights of an int8 model (dequantised; batch norm folded in).

    The trainer's architecture is rebuilt by the manifest's ``architecture``; each convolution
    and dense layer takes the int8 kernel and int32 bias of the TFLite op named after it, and
    each batch normalisation becomes the identity plus that bias (the converter folded it into
    the kernel). Fine-tuning keeps batch normalisation frozen, so the folding holds.
    """
    from edge.runtime import load_interpreter_class
    from hwrcore.manifest import load_manifest
    from trainer.models import build, flag_of

    m = load_manifest(manifest_path)
    model = build(flag_of(m.architecture), len(m.labels))
    cls, _ = load_interpreter_class()
    interp = cls(model_path=str(m.model_path(manifest_path)))
    interp.allocate_tensors()
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    ops = [o for o in interp._get_ops_details() if o["op_name"] in ("CONV_2D", "FULLY_CONNECTED")]

    def deq(t: dict) -> np.ndarray:
        q = t["quantization_parameters"]
        raw = interp.get_tensor(t["index"]).astype(np.float32)
        scales = np.asarray(q["scales"], np.float32)
        zeros = np.asarray(q["zero_points"], np.float32)
        if scales.size <= 1:
            return (raw - (zeros[0] if zeros.size else 0)) * (scales[0] if scales.size else 1.0)
        shape = [1] * raw.ndim
        shape[q["quantized_dimension"]] = -1
        return (raw - zeros.reshape(shape)) * scales.reshape(shape)

    found: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    layers = [ly for ly in model.layers if type(ly).__name__ in ("Conv2D", "Dense")]
    remaining = list(ops)
    for layer in layers:
        # The converter names a weight after its layer, or after the batch norm folded into it.
        # (An ensemble's towers prefix their layers' names: m0_embed_dense, m0_embed_bn.)
        keys = [layer.name] + (
            [layer.name.replace("embed_dense", "embed_bn")]
            if layer.name.endswith("embed_dense")
            else []
        )
        hit = [
            o for o in remaining if any(f"/{k}_1/" in tensors[o["inputs"][1]]["name"] for k in keys)
        ]
        if len(hit) != 1:
            raise RuntimeError(f"cannot find the int8 weights of layer {layer.name}")
        op = hit[0]
        remaining.remove(op)
        w = deq(tensors[op["inputs"][1]])
        b = (
            deq(tensors[op["inputs"][2]])
            if len(op["inputs"]) > 2 and op["inputs"][2] >= 0
            else None
        )
        found[layer.name] = (w, b)
    by_name = {ly.name: ly for ly in model.layers}
    for name, (w, b) in found.items():
        layer = by_name[name]
        kernel = (
            w.transpose(1, 2, 3, 0) if w.ndim == 4 else w.T
        )  # OHWI -> HWIO, (out, in) -> (in, out)
        if layer.use_bias:
            layer.set_weights(
                [kernel, b if b is not None else np.zeros(kernel.shape[-1], np.float32)]
            )
            continue
        layer.set_weights([kernel])
        bn = _bn_after(model, layer)
        eps = bn.epsilon
        c = kernel.shape[-1]
        bn.set_weights(
            [
                np.ones(c, np.float32),
                b if b is not None else np.zeros(c, np.float32),
                np.zeros(c, np.float32),
                np.full(c, 1.0 - eps, np.float32),
            ]
        )
    return model


def _bn_after(model, layer):  # type: ignore[no-untyped-def]
    """The batch normalisation layer that reads ``layer``'s output."""
    for other in model.layers:
        if type(other).__name__ == "BatchNormalization":
            node_in = other.input
            if node_in is layer.output or getattr(node_in, "name", None) == layer.output.name:
                return other
    raise RuntimeError(f"no batch normalisation after {layer.name}")


def weights_path(data_dir: Path, name: str, version: str) -> Path:
    return data_dir / "weights" / name / f"{version}.keras"


def fine_tune(
    config: Any,
    task: str,
    parent_manifest: Path,
    parent_weights: Path,
    x: np.ndarray,
    y: np.ndarray,
    out_dir: Path,
    seed: int,
    progress: Progress | None = None,
) -> Path:
    """Fine-tune the parent on (x uint8, y) with the trainer's augmentation; the .keras path."""
    from trainer.config import TrainConfig
    from trainer.train import _smoothed_sparse_ce, make_dataset, setup_tf

    cfg = TrainConfig(
        task=task,
        epochs=config.retrain_epochs,
        batch_size=config.retrain_batch,
        lr=config.retrain_lr,
        seed=seed,
        threads=config.retrain_threads,
        max_steps=config.retrain_max_steps,
        out_dir=str(out_dir),
        init_from=str(parent_weights),
    )
    tf, keras = setup_tf(cfg)
    tf.config.experimental.enable_op_determinism()  # the same job makes the same model
    if parent_weights.is_file():
        model = keras.models.load_model(parent_weights, compile=False)
    else:
        model = keras_from_tflite(parent_manifest)
        parent_weights.parent.mkdir(parents=True, exist_ok=True)
        tmp = parent_weights.with_name(f".{parent_weights.stem}.{os.getpid()}.keras")
        model.save(tmp)
        os.replace(tmp, parent_weights)
    head = ("embed_dense", "logits")  # an ensemble's towers name theirs m0_logits, m1_logits
    layers = config.retrain_layers
    if layers == "auto":  # measured: every layer suits the digits; characters 1.1.0 lost 3-7
        layers = AUTO_LAYERS[task]  # points of I recall that way, where its head alone learns
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            layer.trainable = False  # inference statistics: the folded int8 weights stay valid
        elif layers == "head" and layer.weights and not layer.name.endswith(head):
            layer.trainable = False  # only the embedding and output layers learn
    steps = max(1, len(x) // cfg.batch_size)
    if cfg.max_steps:
        steps = min(steps, cfg.max_steps)
    total = steps * cfg.epochs
    schedule = keras.optimizers.schedules.CosineDecay(cfg.lr, decay_steps=max(1, total), alpha=0.1)
    fit_model = keras.Model(model.input, model.outputs[0])
    fit_model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=cfg.weight_decay),
        loss=_smoothed_sparse_ce(
            keras, len(LABEL_SETS[TASKS_MODE[task]].labels), cfg.label_smoothing
        ),
    )

    class Report(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):  # type: ignore[no-untyped-def]
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):  # type: ignore[no-untyped-def]
            if progress is not None and (batch + 1) % 5 == 0:
                done = (self.epoch * steps + batch + 1) / total
                progress.epoch(self.epoch + 1, cfg.epochs, done)

        def on_epoch_end(self, epoch, logs=None):  # type: ignore[no-untyped-def]
            if progress is not None:
                progress.epoch(epoch + 1, cfg.epochs, (epoch + 1) / cfg.epochs)
            log.info(
                "fine-tune epoch %d/%d loss %.4f",
                epoch + 1,
                cfg.epochs,
                (logs or {}).get("loss", 0),
            )

    ds = make_dataset(tf, x, y, cfg, train=True)
    if len(x) < cfg.batch_size:  # drop_remainder would leave nothing
        cfg.batch_size = max(1, len(x))
        ds = make_dataset(tf, x, y, cfg, train=True)
    fit_model.fit(ds, epochs=cfg.epochs, callbacks=[Report()], verbose=0)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.keras"
    model.save(path)
    return path


# -- the job -------------------------------------------------------------------------------------
def run_job(ctx: WorkerContext, job: dict[str, Any], progress: Progress) -> None:
    """Everything a retraining job does after it is claimed; ends the job record."""
    from . import jobs as jobs_mod
    from . import merge
    from .snapshots import make_snapshot, write_snapshot

    st, cfg = ctx.state, ctx.config
    job_id, name, mode = job["id"], job["name"], job["mode"]
    task = TASKS[mode]
    t0 = time.monotonic()
    parent = st.registry.current(name)
    if parent is None:
        jobs_mod.finish(st.engine, job_id, "failed", f"model {name} is not released")
        return
    progress.stage("scoring", parent=parent.version)
    ctx.score(mode)
    progress.stage("snapshot")
    rows = merge.training_set(st.engine, mode, merge.Policy.from_config(cfg))
    snap = make_snapshot(mode, rows, cfg.heldout_share)
    write_snapshot(st.engine, cfg.data_dir, snap, job_id)
    progress.stage("snapshot", 1.0, snapshot=snap.sha256)
    train_x, train_y = snap.part(heldout=False)
    held_x, held_y = snap.part(heldout=True)
    log.info(
        "job %d: %s from %s on snapshot %s (%d training, %d held out, %d over the device share)",
        job_id, name, parent.version, snap.sha256[:12], len(train_y), len(held_y), rows.dropped_by_share,
    )  # fmt: skip
    if not len(train_y):
        jobs_mod.finish(
            st.engine, job_id, "refused", "no corrections to learn from (training part empty)"
        )
        return
    labels = list(LABEL_SETS[mode].labels)
    progress.stage("loading")
    bx, by, _ = base_split(cfg, task, "train")
    cx = np.clip(np.rint(train_x * 255.0), 0, 255).astype(np.uint8)
    cy = np.asarray([labels.index(lab) for lab in train_y], dtype=np.int64)
    guess, _ = ctx.scorer(name, parent.version)(train_x)
    wrong = guess.argmax(1) != cy
    rx, ry = replay_sample(
        bx, by, cfg.replay_per_class, seed=job_id, corrections=cy, misread_as=guess.argmax(1)[wrong]
    )
    x = np.concatenate([cx, rx])
    y = np.concatenate([cy, ry])
    parent_manifest = st.registry.manifest_path(name, parent.version)
    assert parent_manifest is not None
    version = f"{parent.version}-r{job_id}"
    work = Path(tempfile.mkdtemp(prefix=f"job-{job_id}-", dir=_jobs_dir(cfg)))
    try:
        keras_path = fine_tune(
            cfg, task, parent_manifest, weights_path(cfg.data_dir, name, parent.version),
            x, y, work / "train", seed=job_id, progress=progress,
        )  # fmt: skip
        progress.stage("exporting")
        from trainer.export import export

        rep = np.concatenate([rx[:REPRESENTATIVE], cx[:REPRESENTATIVE]]).astype(np.float32) / 255.0
        training = {
            "data": (
                f"fine-tuned from {name} {parent.version} on {len(cy)} school corrections "
                f"(snapshot {snap.sha256}) and {len(ry)} replayed base training images"
            ),
            "snapshot": snap.sha256,
            "job": job_id,
            "parent": parent.version,
            "corrections": int(len(cy)),
            "replay": int(len(ry)),
            "relabel": str(relabel_path(cfg, task) or ""),
            "epochs": cfg.retrain_epochs,
            "lr": cfg.retrain_lr,
        }
        manifest_path = export(
            keras_path, task, work / "export", rep, version=version,
            parent_version=parent.version, training=training, name=name,
        )  # fmt: skip
        progress.stage("evaluating")
        tx, ty, measured_on = base_test(cfg, task)
        before = measure(parent_manifest, tx, ty, held_x, held_y, measured_on)
        progress.stage("evaluating", 0.5)
        after = measure(manifest_path, tx, ty, held_x, held_y, measured_on)
        metrics = {**after, "parent": before, "seconds": round(time.monotonic() - t0, 1)}
        progress.stage("gate")
        verdict = gate(
            before, after, cfg.gate_max_accuracy_drop, cfg.gate_max_recall_drop,
            LABEL_SETS[mode].same_shape,
        )  # fmt: skip
        if not verdict["passed"]:
            jobs_mod.finish(
                st.engine, job_id, "refused", verdict["reason"], metrics=metrics, gate=verdict,
                version=version,
            )  # fmt: skip
            log.info("job %d refused by the gate: %s", job_id, verdict["reason"])
            return
        progress.stage("publishing")
        dest = weights_path(cfg.data_dir, name, version)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(keras_path, dest)  # the next job fine-tunes this version from here
        metrics["seconds"] = round(time.monotonic() - t0, 1)
        c = st.registry.publish(
            manifest_path, by=job["requested_by"], metrics=metrics, gate=verdict,
            snapshot=snap.sha256, job_id=job_id,
        )  # fmt: skip
        jobs_mod.finish(
            st.engine, job_id, "published", None, metrics=metrics, gate=verdict, version=c.version,
            percent=100.0, stage="done",
        )  # fmt: skip
        log.info("job %d published %s %s (sequence %d)", job_id, name, c.version, c.sequence)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _jobs_dir(cfg: Any) -> Path:
    p = Path(cfg.data_dir) / "jobs"
    p.mkdir(parents=True, exist_ok=True)
    return p


def dumps(metrics: dict[str, Any]) -> str:
    return json.dumps(metrics, sort_keys=True)


__all__ = [
    "base_test",
    "fine_tune",
    "gate",
    "keras_from_tflite",
    "measure",
    "replay_sample",
    "run_job",
]
