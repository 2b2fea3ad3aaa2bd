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
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hwrcore.labels import LABEL_SETS
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
    n_val = held_out_writers(config)
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
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pendigits test writers' strokes, drawn onto the canvas and preprocessed as on a
    device: (inputs, labels, writers)."""
    samples = load_pendigits(data_dir, "test")[:limit]
    x, y = canvas_inputs(samples, style)
    return x, y, np.asarray([s.writer for s in samples], dtype=np.int64)


def canvas_inputs(samples: Sequence[Any], style: str) -> tuple[np.ndarray, np.ndarray]:
    """Pen samples drawn onto the canvas and preprocessed as on a device: (inputs, labels)."""
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


def by_writer(
    y_true: np.ndarray, y_pred: np.ndarray, writers: np.ndarray, labels: Sequence[str]
) -> list[dict[str, Any]]:
    """Accuracy per writer, worst first, with each writer's most frequent confusion and the
    share of all errors it makes: errors that one writer's habit (or one writer's recording)
    makes many times show here, where the pooled figure hides whose they are."""
    y_true, y_pred, writers = map(np.asarray, (y_true, y_pred, writers))
    total = int((y_true != y_pred).sum())
    out = []
    for w in np.unique(writers):
        mine = writers == w
        errors = int((y_true[mine] != y_pred[mine]).sum())
        top = top_confusions(confusion_matrix(y_true[mine], y_pred[mine], len(labels)), labels)
        worst = top[0] if top else None
        out.append(
            {
                "writer": int(w),
                "n": int(mine.sum()),
                "errors": errors,
                "accuracy": 1.0 - errors / int(mine.sum()),
                "top_confusion": worst,
                "share_of_errors": (worst["count"] / total) if worst and total else 0.0,
            }
        )
    return sorted(out, key=lambda r: (r["accuracy"], r["writer"]))


def same_shape(result: dict[str, Any], labels: Sequence[str], groups) -> list[dict[str, Any]]:
    """For each group of classes one shape belongs to (a vertical stroke is I or l): the group's
    recall judged as one class (a drawing of any of them read as any of them counts), and the
    accuracy of ``result`` if the group's confusions among themselves were not errors."""
    cm = np.asarray(result["confusion_matrix"], dtype=np.int64)
    n, correct = int(cm.sum()), int(np.trace(cm))
    out = []
    for group in groups:
        idx = [list(labels).index(g) for g in group]
        support = int(cm[idx].sum())
        inside = int(cm[np.ix_(idx, idx)].sum()) - int(cm[idx, idx].sum())  # off the diagonal
        read_in_group = int(cm[idx, idx].sum()) + inside
        out.append(
            {
                "classes": "/".join(group),
                "support": support,
                "recall_together": read_in_group / support if support else 0.0,
                "confusions_inside": inside,
                "accuracy_together": (correct + inside) / n if n else 0.0,
            }
        )
    return out


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
    relabel: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Evaluate the model of ``manifest_path`` on its task's test split; write reports and metrics.

    ``limit`` evaluates only the first images (the figures say so). ``relabel``: a relabel list
    whose test entries make a relabelled copy of the test split, scored beside it (default:
    the list the model was trained with, if its manifest names one; "" for none). Any class
    with recall under LOW_RECALL is listed in the report's ``warnings`` and logged.
    Returns the report.
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
    pred = predict(clf, x)
    seconds = time.perf_counter() - t0
    result = score(y, pred, labels)
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
    report["warnings"] = low_recall_warnings(result, "test")
    relabel = relabel if relabel is not None else _manifest_relabel(manifest, manifest_path)
    if relabel:
        from .relabel import apply_relabel, load_list

        doc = load_list(relabel)
        u8 = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
        y_re, moved = apply_relabel(u8, y, doc, list(labels), "test")
        re = score(y_re, pred, labels)
        re["measured_on"] = (
            f"a relabelled copy of {measured_on}: {moved} test {doc['from']!r} images that the "
            f"training split's PU classifier scores as {doc['to']!r} shapes moved to "
            f"{doc['to']!r} ({Path(relabel).name})"
        )
        re["moved"] = moved
        report["test_relabelled"] = re
        report["warnings"] += low_recall_warnings(re, "relabelled test")
    groups = LABEL_SETS[expected_mode].same_shape
    for key in ("test", "test_relabelled"):
        if groups and key in report:
            report[key]["same_shape"] = same_shape(report[key], labels, groups)
    if task == "digits":
        px, py, pw = pendigits_inputs(data_dir, manifest.style, limit)
        pen_pred = predict(clf, px)
        pen = score(py, pen_pred, labels)
        pen["by_writer"] = by_writer(py, pen_pred, pw, labels)
        pen["measured_on"] = (
            f"pendigits test writers ({len(py):,} drawings, {CANVAS}x{CANVAS} canvas, "
            f"'{manifest.style}' preprocessing), int8, {clf.runtime}"
        )
        report["pendigits"] = pen
        report["warnings"] += low_recall_warnings(pen, "pendigits")
    for w in report["warnings"]:
        log.warning("%s %s: %s", manifest.name, manifest.version, w)
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


LOW_RECALL = 0.20


def low_recall_warnings(result: dict[str, Any], where: str) -> list[str]:
    """One line per class seen in ``result`` whose recall is under LOW_RECALL."""
    return [
        f"class {c['label']!r} recall {c['recall']:.1%} on {where} ({c['support']} images): "
        f"it is almost never predicted"
        for c in result["per_class"]
        if c["support"] and c["recall"] < LOW_RECALL
    ]


def _manifest_relabel(manifest: Any, manifest_path: Path) -> str | None:
    """The relabel list a model was trained with, as its manifest records it, if it exists."""
    info = (manifest.training or {}).get("relabel") or {}
    name = info.get("file")
    if not name:
        return None
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent, manifest_path.parent):
        if (base / name).is_file():
            return str(base / name)
    log.warning(
        "relabel list %s named by %s not found: no relabelled test copy", name, manifest_path
    )
    return None


def _recalls(result: dict[str, Any]) -> dict[str, float]:
    return {c["label"]: round(c["recall"], 4) for c in result["per_class"] if c["support"]}


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
            "macro_recall": round(test["macro_recall"], 6),
            "min_recall": min(_recalls(test).values(), default=0.0),
            "per_class_recall": _recalls(test),
            "warnings": list(report.get("warnings", [])),
        }
    )
    for key in ("test_relabelled_accuracy", "test_relabelled_macro_recall"):
        manifest.metrics.pop(key, None)
    manifest.metrics.pop("per_class_recall_relabelled", None)
    if "test_relabelled" in report:
        re = report["test_relabelled"]
        manifest.metrics["test_relabelled_accuracy"] = round(re["accuracy"], 6)
        manifest.metrics["test_relabelled_macro_recall"] = round(re["macro_recall"], 6)
        manifest.metrics["per_class_recall_relabelled"] = _recalls(re)
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
    re = report.get("test_relabelled")
    if re:
        lines.append(f"| accuracy, relabelled test copy | {re['accuracy']:.2%} |")
        lines.append(f"| macro recall, relabelled test copy | {re['macro_recall']:.4f} |")
    for where, res in (("", test), (", relabelled test copy", re or {})):
        for g in res.get("same_shape", []):
            lines.append(
                f"| accuracy with {g['classes']} as one class{where} | {g['accuracy_together']:.2%} "
                f"({g['classes']} recall together {g['recall_together']:.2%}, "
                f"{g['confusions_inside']} confusions inside) |"
            )
    if "pendigits" in report:
        pen = report["pendigits"]
        lines.append(f"| pendigits test accuracy | {pen['accuracy']:.2%} ({pen['n']:,} drawings) |")
    if report.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    if re:
        lines += ["", f"Relabelled copy: {re['measured_on']}."]
    head = "| class | precision | recall | F1 | support |"
    rule = "| --- | --- | --- | --- | --- |"
    if re:
        head += " recall, relabelled | support, relabelled |"
        rule += " --- | --- |"
    lines += ["", "## Per class", "", head, rule]
    for i, c in enumerate(test["per_class"]):
        row = (
            f"| {c['label']} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} "
            f"| {c['support']} |"
        )
        if re:
            r = re["per_class"][i]
            row += f" {r['recall']:.4f} | {r['support']} |"
        lines.append(row)
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
        lines += ["", "| writer | drawings | accuracy | errors | most frequent confusion |"]
        lines.append("| --- | --- | --- | --- | --- |")
        for r in pen.get("by_writer", []):
            top = r["top_confusion"]
            what = (
                f"{top['true']}->{top['predicted']} ({top['count']}, "
                f"{r['share_of_errors']:.0%} of all errors)"
                if top
                else "none"
            )
            lines.append(
                f"| {r['writer']} | {r['n']} | {r['accuracy']:.2%} | {r['errors']} | {what} |"
            )
    lines += ["", "## Confusion matrix", "", f"![confusion matrix]({report['files']['png']})", ""]
    return "\n".join(lines)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def validate(
    task: str,
    manifest_paths: Sequence[str | os.PathLike],
    data_dir: str | os.PathLike | None = None,
    *,
    val_size: int = 5000,
    seed: int = 1234,
    relabel: str | os.PathLike | None = None,
    pendigits_val_writers: int | None = None,
) -> list[dict[str, Any]]:
    """Score int8 models on the validation slice held out of the training split, one result
    per manifest; the data is loaded and prepared once for all of them.

    The slice is the one training holds out with the same ``val_size`` and ``seed``, so
    models trained with those settings are compared on images none of them saw. With
    ``relabel``, also on the slice's relabelled labels (the list's training entries).
    Digits are also scored on the pendigits writers training held out: as many as the first
    manifest's training config says unless ``pendigits_val_writers`` is given.
    """
    from edge.classifier import Classifier

    from .datasets import _holdout

    x, y = load_task(task, data_dir, "train")
    _, val = _holdout(x, y, val_size, seed)
    if val is None:
        raise ValueError("val_size must be positive to validate")
    images = val.x.astype(np.float32) / 255.0
    classifiers = [Classifier(path) for path in manifest_paths]
    labels = classifiers[0].manifest.labels
    for clf in classifiers[1:]:
        if clf.manifest.labels != labels:
            raise ValueError(f"{clf.manifest_path} has other labels than {manifest_paths[0]}")
    relabelled = None
    if relabel:
        from .relabel import apply_relabel, load_list

        relabelled = apply_relabel(val.x, val.y, load_list(relabel), list(labels), "train")
    strokes = None
    if task == "digits":
        # The stroke figure beside the image one: the pendigits training-file writers that
        # training holds out, drawn on the canvas and preprocessed as on a device.
        from .datasets import pendigits_writer_split

        first = classifiers[0].manifest
        if pendigits_val_writers is None:
            pendigits_val_writers = held_out_writers(first.training.get("config") or {})
        pen = load_pendigits(data_dir, "train")
        _, held = pendigits_writer_split(pen, pendigits_val_writers)
        px, py = canvas_inputs([s for s in pen if s.writer in held], first.style)
        strokes = (px, py, sorted(held))
    results = []
    for clf in classifiers:
        pred = predict(clf, images)
        out: dict[str, Any] = {"n": len(val.y), "as_is": score(val.y, pred, labels)}
        out["as_is"]["correct"] = (pred == val.y).tolist()
        if strokes is not None:
            px, py, writers = strokes
            pen_pred = predict(clf, px)
            out["pendigits"] = score(py, pen_pred, labels)
            out["pendigits"]["writers"] = writers
            out["pendigits"]["correct"] = (pen_pred == py).tolist()
        if relabelled is not None:
            y_re, moved = relabelled
            out["relabelled"] = score(y_re, pred, labels)
            out["relabelled"]["moved"] = moved
            out["relabelled"]["correct"] = (pred == y_re).tolist()
        results.append(out)
    return results


def paired(candidate: Sequence[bool], baseline: Sequence[bool]) -> dict[str, Any]:
    """Two models' answers on the same items, item by item: how many each alone gets right,
    and McNemar's exact two-sided p-value, the chance of a split at least this uneven if the
    models were equally good. On a slice where both make a dozen errors, a win of two or three
    images is well within chance; the gate still decides on the figures, this says how much
    they are worth."""
    if len(candidate) != len(baseline):
        raise ValueError(f"{len(candidate)} answers against {len(baseline)}: not the same items")
    c, b = np.asarray(candidate, dtype=bool), np.asarray(baseline, dtype=bool)
    only_c, only_b = int((c & ~b).sum()), int((~c & b).sum())
    n, k = only_c + only_b, min(only_c, only_b)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return {"only_candidate": only_c, "only_baseline": only_b, "p_value": p}


def held_out_writers(config: dict[str, Any]) -> int:
    """How many pendigits training-file writers a digit model's training held out, from its
    saved training config (the trainer's default where the config predates the setting)."""
    from .datasets import PENDIGITS_VAL_WRITERS

    return int(config.get("pendigits_val_writers", PENDIGITS_VAL_WRITERS))


def beats(
    candidate: dict[str, Any],
    baseline: dict[str, Any],
    min_recall: float = 0.6,
    tolerance: float = 0.0,
) -> tuple[bool, str]:
    """The shipping gate on validation: higher accuracy and macro recall than the baseline,
    every class's recall at least ``min_recall`` (on the relabelled slice where there is
    one), and for digits no lower accuracy on the held-out pendigits writers' strokes.

    ``tolerance`` (a fraction, e.g. 0.001 for 0.1 points) is for a candidate chosen for
    another reason, such as speed: it may then read up to that much below the baseline on
    each figure. Returns the verdict and the figures it rests on."""
    if not 0.0 <= tolerance < 0.05:
        raise ValueError(f"tolerance must be in [0, 0.05), not {tolerance}")
    key = "relabelled" if "relabelled" in candidate and "relabelled" in baseline else "as_is"
    c, b = candidate[key], baseline[key]
    low = [x["label"] for x in c["per_class"] if x["support"] and x["recall"] < min_recall]

    def holds(new: float, old: float) -> bool:
        return new >= old - tolerance if tolerance else new > old

    ok = holds(c["accuracy"], b["accuracy"]) and holds(c["macro_recall"], b["macro_recall"])
    ok = ok and not low
    text = (
        f"{key} accuracy {b['accuracy']:.4f} -> {c['accuracy']:.4f}, macro recall "
        f"{b['macro_recall']:.4f} -> {c['macro_recall']:.4f}, classes under {min_recall:.0%}: "
        f"{', '.join(low) or 'none'}"
    )
    if "pendigits" in candidate and "pendigits" in baseline:
        # A gain on images must hold on drawings: the strokes may not read worse.
        cp, bp = candidate["pendigits"]["accuracy"], baseline["pendigits"]["accuracy"]
        ok = ok and cp >= bp - tolerance
        text += f", held-out pendigits strokes {bp:.4f} -> {cp:.4f}"
    if tolerance:
        text += f" (each may fall by {tolerance * 100:.2f} points)"
    return ok, text


def relabel_record(path: str | os.PathLike) -> dict[str, Any]:
    """What the manifest records of a relabel list: its file, sha256, classes and count."""
    from .relabel import list_sha256, load_list

    doc = load_list(path)
    p = Path(path).resolve()
    root = Path(__file__).resolve().parent.parent
    name = str(p.relative_to(root)) if p.is_relative_to(root) else str(path)
    return {
        "file": name,
        "sha256": list_sha256(p),
        "from": doc["from"],
        "to": doc["to"],
        "moved": len(doc["train_hashes"]),
        "of": doc.get("train", {}).get("n_source"),
        "method": doc.get("method", ""),
    }


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
    relabel = training.get("config", {}).get("relabel")
    if relabel:
        training["relabel"] = relabel_record(relabel)
        doc = training["relabel"]
        training["data"] += (
            f"; {doc['moved']} training {doc['from']!r} images relabelled {doc['to']!r} "
            f"({doc['file']}, {doc['method']})"
        )
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
