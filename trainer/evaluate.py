"""Evaluate a shipped int8 model through the device's interpreter, write its report, record metrics.

The model runs exactly as on a classroom device (edge.classifier.Classifier, ai-edge-litert),
so the figures in the manifest are the figures a pupil gets. Outputs, beside the model:
``<name>.eval.json`` (every number), ``<name>.eval.md`` (for people) and
``<name>.confusion.png``. The headline metrics go into the manifest's ``metrics``.
No TensorFlow here, except in ``export_with_agreement``, which needs Keras.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hwrcore.manifest import load_manifest
from hwrcore.preprocess import strokes_to_input

from .data import load_pendigits, load_task

log = logging.getLogger(__name__)

CANVAS = 280  # side of the edge's drawing canvas, in pixels
# The share of the canvas a pupil's drawing typically spans (its longer side).
CANVAS_FILL = 0.7
TEST_SETS = {"digits": "MNIST test", "characters": "EMNIST ByMerge letters test"}
_AUGMENTED = "augmented (shift, rotation, scale, shear, stroke thickness)"


def training_data(
    task: str, config: dict[str, Any], n_images: int, n_writers: int | None = None
) -> str:
    """What a model was trained on, in words, from its saved training config.

    ``n_images``: the size of the task's training split; ``n_writers``: the number of
    pendigits training-file writers (digits only).
    """
    held = int(config.get("val_size", 5000))
    used = n_images - held
    split = f"{used:,}; {held:,} held out for validation" if held else f"all {used:,}"
    if task == "characters":
        return f"EMNIST ByMerge train split, the 37 letter classes ({split}); {_AUGMENTED}"
    if n_writers is None:
        raise ValueError("the digits' training data needs the number of pendigits writers")
    n_val = int(config.get("pendigits_val_writers", 5))
    return (
        f"MNIST train ({split}) and the pendigits training-file writers' strokes rendered by "
        f"hwrcore.preprocess ({n_writers - n_val} of {n_writers} writers, each drawing once as "
        f"drawn and {config.get('pendigits_variants', 3)} times distorted; {n_val} writers held "
        f"out for validation); {_AUGMENTED}"
    )


REPRESENTATIVE_SIZE = 300
AGREEMENT_SIZE = 1000


def strokes_on_canvas(
    strokes: Sequence[Sequence[Sequence[float]]], size: int = CANVAS, fill: float = CANVAS_FILL
) -> list[list[list[float]]]:
    """Scale and centre pen strokes (any units, y down) onto a square canvas as a pupil draws."""
    arrays = [np.asarray(s, dtype=np.float64).reshape(-1, 2) for s in strokes]
    pts = np.concatenate(arrays)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    scale = size * fill / max(float((hi - lo).max()), 1e-9)
    centre = (lo + hi) / 2.0
    return [((a - centre) * scale + size / 2.0).tolist() for a in arrays]


def load_test_images(
    task: str, data_dir: str | os.PathLike | None
) -> tuple[np.ndarray, np.ndarray]:
    """The benchmark test split of a task as float 0..1 images (n, 28, 28) and labels (n,)."""
    x, y = load_task(task, data_dir, "test")
    return x.astype(np.float32) / 255.0, y


def pendigits_inputs(
    data_dir: str | os.PathLike | None, style: str, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The pendigits test writers' strokes, drawn onto the canvas and preprocessed as on a device."""
    samples = load_pendigits(data_dir, "test")[:limit]
    x = np.stack([strokes_to_input(strokes_on_canvas(s.strokes), style) for s in samples])
    return x, np.asarray([s.label for s in samples], dtype=np.int64)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts (n_classes, n_classes): row is the true class, column the predicted one."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def per_class(cm: np.ndarray, labels: Sequence[str]) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support of each class (0 where a class is never seen/predicted)."""
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    rows = []
    for i, label in enumerate(labels):
        p = tp[i] / predicted[i] if predicted[i] else 0.0
        r = tp[i] / support[i] if support[i] else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        rows.append(
            {
                "label": label,
                "precision": float(p),
                "recall": float(r),
                "f1": float(f),
                "support": int(support[i]),
            }
        )
    return rows


def top_confusions(cm: np.ndarray, labels: Sequence[str], k: int = 10) -> list[dict[str, Any]]:
    """The k most frequent (true, predicted) mistakes, most frequent first."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:k]
    out = []
    for flat in order:
        t, p = divmod(int(flat), cm.shape[1])
        if off[t, p] == 0:
            break
        out.append({"true": labels[t], "predicted": labels[p], "count": int(off[t, p])})
    return out


def score(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, per-class and macro-averaged precision/recall/F1, confusions, for one test set."""
    cm = confusion_matrix(y_true, y_pred, len(labels))
    classes = per_class(cm, labels)
    # Macro averages over the classes present in the test set.
    present = [c for c in classes if c["support"] > 0]
    return {
        "n": int(len(y_true)),
        "accuracy": float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))
        if len(y_true)
        else 0.0,
        "macro_precision": float(np.mean([c["precision"] for c in present])) if present else 0.0,
        "macro_recall": float(np.mean([c["recall"] for c in present])) if present else 0.0,
        "macro_f1": float(np.mean([c["f1"] for c in present])) if present else 0.0,
        "per_class": classes,
        "top_confusions": top_confusions(cm, labels),
        "confusion_matrix": cm.tolist(),
    }


def plot_confusion(cm: np.ndarray, labels: Sequence[str], path: Path, title: str) -> None:
    """A confusion-matrix PNG, coloured by the share of each true class, labels on both axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(labels)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    side = max(5.0, 0.3 * n + 2.5)
    fig = Figure(figsize=(side + 1.0, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), labels=list(labels), fontsize=8 if n > 12 else 10)
    ax.set_yticks(range(n), labels=list(labels), fontsize=8 if n > 12 else 10)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    for t in range(n):
        for p in range(n):
            if cm[t, p] and (n <= 12 or t != p):
                colour = "white" if share[t, p] > 0.5 else "black"
                ax.text(p, t, str(cm[t, p]), ha="center", va="center", fontsize=6, color=colour)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


def predict(clf: Any, images: np.ndarray) -> np.ndarray:
    """Class indices for float 0..1 images (n, 28, 28), one interpreter call each."""
    if len(images) == 0:
        return np.zeros(0, dtype=np.int64)
    probs, _ = clf.predict_batch(images)
    return np.argmax(probs, axis=1)


def evaluate(
    task: str,
    manifest_path: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    threads: int = 1,
) -> dict[str, Any]:
    """Evaluate the model of ``manifest_path`` on its task's test split; write reports and metrics.

    ``limit`` evaluates only the first images (the figures say so). Returns the report.
    """
    from edge.classifier import Classifier, ClassifierOptions

    if task not in TEST_SETS:
        raise ValueError(f"task must be 'digits' or 'characters': got {task!r}")
    manifest_path = Path(manifest_path)
    clf = Classifier(manifest_path, ClassifierOptions(num_threads=threads))
    manifest = clf.manifest
    expected_mode = "digit" if task == "digits" else "char"
    if manifest.mode != expected_mode:
        raise ValueError(f"{manifest_path} is a {manifest.mode!r} model, not one for {task}")
    labels = manifest.labels
    x, y = load_test_images(task, data_dir)
    total = len(x)
    if limit:
        x, y = x[:limit], y[:limit]
    t0 = time.perf_counter()
    result = score(y, predict(clf, x), labels)
    seconds = time.perf_counter() - t0
    n = result["n"]
    which = f"{n:,}" if n == total else f"first {n:,} of {total:,}"
    measured_on = f"{TEST_SETS[task]} ({which}), int8, {clf.runtime}"
    report: dict[str, Any] = {
        "name": manifest.name,
        "version": manifest.version,
        "task": task,
        "model": manifest.file,
        "sha256": manifest.sha256,
        "runtime": clf.runtime,
        "measured_on": measured_on,
        "test": result,
        "ms_per_image": 1000.0 * seconds / max(1, n),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if task == "digits":
        px, py = pendigits_inputs(data_dir, manifest.style, limit)
        pen = score(py, predict(clf, px), labels)
        pen["measured_on"] = (
            f"pendigits test writers ({len(py):,} drawings, {CANVAS}x{CANVAS} canvas, "
            f"'{manifest.style}' preprocessing), int8, {clf.runtime}"
        )
        report["pendigits"] = pen
    base = manifest_path.parent / manifest.name
    paths = {
        "json": base.with_name(base.name + ".eval.json"),
        "md": base.with_name(base.name + ".eval.md"),
        "png": base.with_name(base.name + ".confusion.png"),
    }
    title = f"{manifest.name} {manifest.version}: {measured_on}, accuracy {result['accuracy']:.2%}"
    plot_confusion(np.asarray(result["confusion_matrix"]), labels, paths["png"], title)
    report["files"] = {k: p.name for k, p in paths.items()}
    _write_text(paths["json"], json.dumps(report, indent=2) + "\n")
    _write_text(paths["md"], markdown(report))
    _record_metrics(manifest_path, report)
    log.info(
        "%s: accuracy %.4f, macro F1 %.4f (%s)",
        manifest.name,
        result["accuracy"],
        result["macro_f1"],
        measured_on,
    )
    return report


def _record_metrics(manifest_path: Path, report: dict[str, Any]) -> None:
    """Write the headline figures into the manifest (its sha256 covers the model file only)."""
    manifest = load_manifest(manifest_path, verify=True)
    test = report["test"]
    manifest.metrics.update(
        {
            "test_accuracy": round(test["accuracy"], 6),
            "macro_f1": round(test["macro_f1"], 6),
            "n": test["n"],
            "measured_on": report["measured_on"],
        }
    )
    if "pendigits" in report:
        manifest.metrics["pendigits_test_accuracy"] = round(report["pendigits"]["accuracy"], 6)
        manifest.metrics["pendigits_n"] = report["pendigits"]["n"]
    manifest.save(manifest_path)


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page: headline, per-class table, top confusions, the matrix."""
    test = report["test"]
    lines = [
        f"# {report['name']} {report['version']}: evaluation",
        "",
        f"Measured on {report['measured_on']}; model `{report['model']}` "
        f"(sha256 `{report['sha256'][:16]}...`), {report['ms_per_image']:.2f} ms per image.",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| accuracy | {test['accuracy']:.2%} |",
        f"| macro precision | {test['macro_precision']:.4f} |",
        f"| macro recall | {test['macro_recall']:.4f} |",
        f"| macro F1 | {test['macro_f1']:.4f} |",
        f"| images | {test['n']:,} |",
    ]
    if "pendigits" in report:
        pen = report["pendigits"]
        lines.append(f"| pendigits test accuracy | {pen['accuracy']:.2%} ({pen['n']:,} drawings) |")
    lines += ["", "## Per class", "", "| class | precision | recall | F1 | support |"]
    lines.append("| --- | --- | --- | --- | --- |")
    for c in test["per_class"]:
        lines.append(
            f"| {c['label']} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} "
            f"| {c['support']} |"
        )
    lines += ["", "## Most frequent confusions", "", "| true | predicted | count |"]
    lines.append("| --- | --- | --- |")
    lines += [f"| {c['true']} | {c['predicted']} | {c['count']} |" for c in test["top_confusions"]]
    if "pendigits" in report:
        pen = report["pendigits"]
        lines += ["", f"## Pen strokes: {pen['measured_on']}", ""]
        lines.append(
            f"Accuracy {pen['accuracy']:.2%}, macro F1 {pen['macro_f1']:.4f}. Confusions: "
        )
        lines.append(
            ", ".join(
                f"{c['true']}->{c['predicted']} ({c['count']})" for c in pen["top_confusions"]
            )
            or "none"
        )
    lines += ["", "## Confusion matrix", "", f"![confusion matrix]({report['files']['png']})", ""]
    return "\n".join(lines)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def export_with_agreement(
    task: str,
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    version: str | None = None,
    parent_version: str | None = None,
) -> tuple[Path, float]:
    """Export a trained Keras model to int8 and record how often int8 and Keras agree.

    Calibrates on REPRESENTATIVE_SIZE training images and measures agreement on the first
    AGREEMENT_SIZE test images; the figure goes into the manifest as ``int8_keras_agreement``.
    """
    from .export import agreement, export

    train_x, _ = load_task(task, data_dir, "train")
    pick = np.random.default_rng(0).choice(len(train_x), REPRESENTATIVE_SIZE, replace=False)
    representative = train_x[np.sort(pick)].astype(np.float32) / 255.0
    model_path = Path(model_path)
    training: dict[str, Any] = {}
    config = model_path.parent / "config.json"
    if config.is_file():
        training = {"config": json.loads(config.read_text())}
    writers = None
    if task == "digits":
        writers = len({s.writer for s in load_pendigits(data_dir, "train")})
    training["data"] = training_data(task, training.get("config", {}), len(train_x), writers)
    history = model_path.parent / "validation.jsonl"
    if history.is_file():
        rows = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
        if rows:
            training["validation"] = rows[-1]
    manifest_path = export(
        model_path,
        task,
        out_dir,
        representative,
        version=version,
        parent_version=parent_version,
        training=training,
    )
    test_x, _ = load_test_images(task, data_dir)
    agree = agreement(model_path, manifest_path, test_x[:AGREEMENT_SIZE])
    manifest = load_manifest(manifest_path, verify=True)
    manifest.metrics["int8_keras_agreement"] = round(agree, 6)
    manifest.metrics["int8_keras_agreement_n"] = int(min(AGREEMENT_SIZE, len(test_x)))
    manifest.save(manifest_path)
    return manifest_path, agree
