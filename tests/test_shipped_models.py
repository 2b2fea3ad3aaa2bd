"""Every shipped model in models_export/: intact, labelled as the core says, and accurate.

Skips where models_export/ holds no models yet (the ``models_dir`` fixture).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.classifier import Classifier
from hwrcore.labels import CHARACTERS, DIGITS
from hwrcore.manifest import load_manifest, sha256_file
from trainer.evaluate import load_test_images

# Accuracy on the first 1,000 test images, as the device's int8 interpreter computes it.
SLICE = 1000
MIN_ACCURACY = {"digit": 0.99, "char": 0.88}
EXPECTED = {
    "digit": ("digits", DIGITS, "mnist"),
    "char": ("characters", CHARACTERS, "emnist"),
}


def _manifests(models_dir: Path) -> list[Path]:
    # A manifest sits beside its model; evaluation reports (*.eval.json) are not manifests.
    paths = sorted(p for p in models_dir.glob("*.json") if p.with_suffix(".tflite").is_file())
    if not paths:
        pytest.skip(f"no model manifests in {models_dir}")
    return paths


def test_every_manifest_verifies_against_its_model(models_dir: Path) -> None:
    for path in _manifests(models_dir):
        m = load_manifest(path, verify=True)
        assert m.sha256 == sha256_file(path.parent / m.file), path
        assert m.mode in EXPECTED, path


def test_labels_and_input_convention(models_dir: Path) -> None:
    for path in _manifests(models_dir):
        m = load_manifest(path)
        _, label_set, style = EXPECTED[m.mode]
        assert m.labels == list(label_set.labels), path
        assert m.style == style, path
        assert m.input.dtype == "int8" and list(m.input.shape[-3:]) == [28, 28, 1], path
        assert m.input.scale == pytest.approx(1 / 255, rel=0.01), path
        assert set(m.outputs) >= {"probabilities", "embedding"}, path
        assert m.outputs["probabilities"].shape[-1] == len(label_set), path


def test_manifests_record_where_their_accuracy_was_measured(models_dir: Path) -> None:
    for path in _manifests(models_dir):
        metrics = load_manifest(path).metrics
        assert isinstance(metrics.get("test_accuracy"), float), f"{path}: run hwr-train evaluate"
        assert "int8" in metrics.get("measured_on", ""), path


def test_shipped_models_cover_both_modes(models_dir: Path) -> None:
    modes = {load_manifest(p).mode for p in _manifests(models_dir)}
    assert modes == {"digit", "char"}


def test_accuracy_on_a_fixed_slice(models_dir: Path, data_dir: Path) -> None:
    for path in _manifests(models_dir):
        clf = Classifier(path)
        task, _, _ = EXPECTED[clf.manifest.mode]
        x, y = load_test_images(task, data_dir)
        probs, _ = clf.predict_batch(x[:SLICE])
        accuracy = float(np.mean(probs.argmax(axis=1) == y[:SLICE]))
        assert accuracy >= MIN_ACCURACY[clf.manifest.mode], f"{path}: {accuracy:.4f}"


def test_manifests_carry_per_class_recall_and_no_class_is_never_predicted(
    models_dir: Path,
) -> None:
    """``hwr-train evaluate`` writes each class's test recall into the manifest; a shipped model
    predicts every class (recall at least 20%, the level under which evaluate warns)."""
    for path in _manifests(models_dir):
        m = load_manifest(path)
        recall = m.metrics.get("per_class_recall")
        assert isinstance(recall, dict), f"{path}: run hwr-train evaluate"
        assert set(recall) == set(m.labels), path
        assert m.metrics["min_recall"] == min(recall.values()), path
        low = sorted(k for k, r in recall.items() if r < 0.2)
        assert len(m.metrics["warnings"]) == len(low), path
        assert not low, f"{path}: classes under 20% recall: {low}"


def _arc(cx: float, cy: float, r: float, a0: float, a1: float) -> list[list[float]]:
    t = np.radians(np.linspace(a0, a1, 12))
    return [[cx + r * np.cos(a), cy - r * np.sin(a)] for a in t]


def test_a_printed_f_drawn_on_the_canvas_reads_f_and_a_printed_capital_f_reads_capital_f(
    models_dir: Path,
) -> None:
    """The pupil-visible failure of characters 1.0.0 (a printed f read "F 61%"), through the
    canvas path: strokes rendered by the shared preprocessing."""
    from hwrcore.preprocess import strokes_to_input

    small_f = [[[110, 250], [110, 90], *_arc(140, 90, 30, 180, 30)], [[75, 140], [150, 140]]]
    big_f = [[[100, 250], [100, 60]], [[100, 60], [190, 60]], [[100, 150], [170, 150]]]
    clf = Classifier(models_dir / "characters.json")
    for strokes, want in ((small_f, "f"), (big_f, "F")):
        p = clf.predict(strokes_to_input(strokes, clf.manifest.style))
        assert p.top(clf.labels, 1)[0][0] == want, p.top(clf.labels, 3)
