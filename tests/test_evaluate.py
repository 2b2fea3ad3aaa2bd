"""``hwr-train evaluate``: reports beside the model, consistent numbers, metrics in the manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge.classifier import Classifier
from hwrcore.manifest import load_manifest
from tests.models import require_models
from trainer.cli import main
from trainer.evaluate import by_writer, load_test_images, score, top_confusions

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def model_copy(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """A copy of a shipped model and its manifest in a temporary folder."""
    name = request.param
    src = require_models()
    for ext in ("json", "tflite"):
        shutil.copy(src / f"{name}.{ext}", tmp_path / f"{name}.{ext}")
    manifest = load_manifest(tmp_path / f"{name}.json")
    manifest.metrics["int8_keras_agreement"] = 0.995  # set by export; evaluate must keep it
    manifest.save(tmp_path / f"{name}.json")
    return tmp_path / f"{name}.json"


@pytest.mark.parametrize(
    "model_copy, task, n_classes, total",
    [("digits", "digits", 10, 10_000), ("characters", "characters", 37, 29_600)],
    indirect=["model_copy"],
)
def test_evaluate_writes_consistent_reports_and_metrics(
    model_copy: Path, task: str, n_classes: int, total: int, data_dir: Path, capsys
) -> None:
    rc = main(
        [
            "evaluate",
            task,
            "--manifest",
            str(model_copy),
            "--data-dir",
            str(data_dir),
            "--limit",
            "200",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "macro F1" in out
    folder, name = model_copy.parent, model_copy.stem
    report = json.loads((folder / f"{name}.eval.json").read_text())
    assert {"name", "version", "task", "model", "sha256", "runtime", "measured_on", "test"} <= set(
        report
    )
    assert report["runtime"] == "ai-edge-litert"
    assert report["measured_on"].startswith(
        ("MNIST test" if task == "digits" else "EMNIST ByMerge letters test")
        + f" (first 200 of {total:,}), int8, ai-edge-litert"
    )
    test = report["test"]
    assert {"n", "accuracy", "macro_f1", "per_class", "top_confusions", "confusion_matrix"} <= set(
        test
    )
    cm = np.asarray(test["confusion_matrix"])
    assert cm.shape == (n_classes, n_classes) and cm.sum() == test["n"] == 200
    assert test["accuracy"] == pytest.approx(np.trace(cm) / 200)
    # Per-class figures follow from the matrix: recall is the diagonal over the row sum,
    # precision the diagonal over the column sum, F1 their harmonic mean.
    labels = load_manifest(model_copy).labels
    assert [c["label"] for c in test["per_class"]] == labels
    for i, c in enumerate(test["per_class"]):
        row, col = cm[i].sum(), cm[:, i].sum()
        assert c["support"] == row
        assert c["recall"] == pytest.approx(cm[i, i] / row if row else 0.0)
        assert c["precision"] == pytest.approx(cm[i, i] / col if col else 0.0)
        p, r = c["precision"], c["recall"]
        assert c["f1"] == pytest.approx(2 * p * r / (p + r) if p + r else 0.0)
    present = [c["f1"] for c in test["per_class"] if c["support"]]
    assert test["macro_f1"] == pytest.approx(np.mean(present))
    for conf in test["top_confusions"]:
        t, p = labels.index(conf["true"]), labels.index(conf["predicted"])
        assert t != p and cm[t, p] == conf["count"]
    # The matrix is what the device's classifier says about the first 200 test images.
    x, y = load_test_images(task, data_dir)
    probs, _ = Classifier(model_copy).predict_batch(x[:200])
    expected = np.zeros_like(cm)
    np.add.at(expected, (y[:200], probs.argmax(axis=1)), 1)
    np.testing.assert_array_equal(cm, expected)
    # The picture and the page.
    with Image.open(folder / f"{name}.confusion.png") as png:
        assert png.format == "PNG" and png.width >= 500 and png.height >= 400
    md = (folder / f"{name}.eval.md").read_text()
    assert "| class | precision | recall | F1 | support |" in md
    assert f"![confusion matrix]({name}.confusion.png)" in md
    # Headline metrics in the manifest, which still verifies against its model file.
    manifest = load_manifest(model_copy, verify=True)
    assert manifest.metrics["test_accuracy"] == pytest.approx(test["accuracy"], abs=1e-6)
    assert manifest.metrics["macro_f1"] == pytest.approx(test["macro_f1"], abs=1e-6)
    assert manifest.metrics["n"] == 200
    assert manifest.metrics["measured_on"] == report["measured_on"]
    assert manifest.metrics["int8_keras_agreement"] == 0.995
    if task == "digits":
        pen = report["pendigits"]
        assert pen["n"] == 200 and np.asarray(pen["confusion_matrix"]).sum() == 200
        # Each stroke figure is also given per writer, worst first, and adds up to the whole.
        rows = pen["by_writer"]
        pen_cm = np.asarray(pen["confusion_matrix"])
        assert sum(r["n"] for r in rows) == 200
        assert sum(r["errors"] for r in rows) == 200 - np.trace(pen_cm)
        assert [r["accuracy"] for r in rows] == sorted(r["accuracy"] for r in rows)
        assert "| writer | drawings | accuracy | errors | most frequent confusion |" in md
        assert manifest.metrics["pendigits_test_accuracy"] == pytest.approx(
            pen["accuracy"], abs=1e-6
        )
    else:
        assert "pendigits" not in report and "pendigits_test_accuracy" not in manifest.metrics
    # I and L (a vertical stroke is either) are also measured as one class.
    groups = [g["classes"] for g in test.get("same_shape", [])]
    assert groups == ([] if task == "digits" else ["I/L"])
    assert ("accuracy with I/L as one class" in md) == (task == "characters")
    assert not list(folder.glob("*.tmp*"))


@pytest.mark.parametrize("model_copy", ["characters"], indirect=True)
def test_evaluate_refuses_a_model_of_the_other_task(
    model_copy: Path, data_dir: Path, capsys
) -> None:
    rc = main(["evaluate", "digits", "--manifest", str(model_copy), "--data-dir", str(data_dir)])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("hwr-train: error:") and "'char' model" in err


def test_evaluate_without_a_manifest_is_a_clear_error(tmp_path: Path, capsys) -> None:
    rc = main(["evaluate", "digits", "--manifest", str(tmp_path / "none.json")])
    assert rc == 2
    assert "manifest not found" in capsys.readouterr().err


def test_score_by_hand() -> None:
    labels = ["a", "b", "c"]
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2])
    s = score(y_true, y_pred, labels)
    assert s["accuracy"] == pytest.approx(4 / 6)
    a, b, c = s["per_class"]
    assert (a["precision"], a["recall"]) == (pytest.approx(1.0), pytest.approx(2 / 3))
    assert (b["precision"], b["recall"]) == (pytest.approx(0.5), pytest.approx(0.5))
    assert (c["precision"], c["recall"]) == (pytest.approx(0.5), pytest.approx(1.0))
    assert c["f1"] == pytest.approx(2 / 3)
    assert s["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert s["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_classes_of_one_shape_measured_together_by_hand() -> None:
    from trainer.evaluate import same_shape

    # I read as L 3 times, L as I 7 times, I as O once; O as L twice.
    cm = [[10, 3, 1], [7, 20, 0], [0, 2, 30]]
    (g,) = same_shape({"confusion_matrix": cm}, ["I", "L", "O"], [("I", "L")])
    assert g["classes"] == "I/L" and g["support"] == 41
    assert g["recall_together"] == pytest.approx(40 / 41)
    assert g["confusions_inside"] == 10
    assert g["accuracy_together"] == pytest.approx((60 + 10) / 73)


def test_top_confusions_are_ordered_and_skip_the_diagonal() -> None:
    cm = np.array([[50, 3, 0], [7, 40, 1], [0, 3, 9]])
    got = top_confusions(cm, ["x", "y", "z"], k=10)
    assert got == [
        {"true": "y", "predicted": "x", "count": 7},
        {"true": "x", "predicted": "y", "count": 3},
        {"true": "z", "predicted": "y", "count": 3},
        {"true": "y", "predicted": "z", "count": 1},
    ]


@pytest.mark.parametrize("model_copy", ["digits"], indirect=True)
def test_evaluate_warns_of_a_class_almost_never_predicted(
    model_copy: Path, data_dir: Path, capsys, monkeypatch
) -> None:
    """Swapping the labels 3 and 8 of the test images makes both classes' recall ~0: the
    report, the manifest and stderr say so; the other classes carry no warning."""
    import trainer.evaluate as ev

    real = ev.load_test_images

    def swapped(task, data_dir):
        x, y = real(task, data_dir)
        y = y.copy()
        three, eight = y == 3, y == 8
        y[three], y[eight] = 8, 3
        return x, y

    monkeypatch.setattr(ev, "load_test_images", swapped)
    args = ["evaluate", "digits", "--manifest", str(model_copy), "--data-dir", str(data_dir)]
    assert main([*args, "--limit", "300"]) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if line.startswith("hwr-train: warning:")]
    assert len(warned) == 2 and "class '3'" in warned[0] and "class '8'" in warned[1], err
    report = json.loads((model_copy.parent / "digits.eval.json").read_text())
    assert [w.split("'")[1] for w in report["warnings"]] == ["3", "8"]
    metrics = load_manifest(model_copy, verify=True).metrics
    recall = metrics["per_class_recall"]
    assert set(recall) == {str(d) for d in range(10)}
    assert recall["3"] < 0.2 and recall["8"] < 0.2 and recall["1"] > 0.9
    assert metrics["min_recall"] == min(recall.values())
    assert len(metrics["warnings"]) == 2
    md = (model_copy.parent / "digits.eval.md").read_text()
    assert "## Warnings" in md and "class '3' recall" in md
    # With the true labels, no warning.
    monkeypatch.setattr(ev, "load_test_images", real)
    assert main([*args, "--limit", "300"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert load_manifest(model_copy).metrics["warnings"] == []


def test_low_recall_warnings_by_hand() -> None:
    from trainer.evaluate import LOW_RECALL, low_recall_warnings

    s = score(np.array([0, 0, 0, 0, 0, 1, 1, 2]), np.array([0, 0, 0, 0, 1, 0, 0, 2]), "abc")
    got = low_recall_warnings(s, "test")
    assert LOW_RECALL == 0.2 and len(got) == 1 and got[0].startswith("class 'b' recall 0.0%")


def test_validate_gates_a_model_against_its_baseline(data_dir: Path, capsys) -> None:
    """A model is not better than itself: validate --baseline exits 1 and says why."""
    shipped = require_models() / "digits.json"
    args = ["validate", "digits", "--manifest", str(shipped), "--data-dir", str(data_dir)]
    rc = main([*args, "--val-size", "300", "--baseline", str(shipped), "--min-recall", "0.5"])
    out = capsys.readouterr().out
    assert rc == 1 and "not better than the baseline: as_is accuracy" in out, out
    assert "on 300 validation images" in out
    # Digits are also read as strokes: the held-out pendigits writers, drawn on the canvas.
    assert "pendigits: accuracy 0.99" in out and "strokes of the held-out pendigits writers" in out
    assert "held-out pendigits strokes 0.99" in out
    # Item by item, a model and itself differ nowhere: no evidence either way.
    assert "as_is, item by item: right only with the model 0, only with the baseline 0" in out
    assert "pendigits, item by item: right only with the model 0" in out and "p = 1.000" in out


def test_paired_counts_and_mcnemar_by_hand() -> None:
    from trainer.evaluate import paired

    # 4 items only the candidate gets right, 7 only the baseline, 9 both: p = 2 * P(X <= 4)
    # for X ~ Binomial(11, 1/2) = 2 * (1 + 11 + 55 + 165 + 330) / 2048.
    cand = [True] * 4 + [False] * 7 + [True] * 9
    base = [False] * 4 + [True] * 7 + [True] * 9
    d = paired(cand, base)
    assert d["only_candidate"] == 4 and d["only_baseline"] == 7
    assert d["p_value"] == pytest.approx(2 * 562 / 2048)
    # Ten wins and no loss is unlikely by chance; a tie in answers is no evidence at all.
    assert paired([True] * 10, [False] * 10)["p_value"] == pytest.approx(2 / 1024)
    assert paired([True, False], [True, False]) == {
        "only_candidate": 0,
        "only_baseline": 0,
        "p_value": 1.0,
    }
    with pytest.raises(ValueError, match="not the same items"):
        paired([True], [True, False])


def test_beats_by_hand() -> None:
    from trainer.evaluate import beats

    good = {"as_is": score(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]), "ab")}
    weak = {"as_is": score(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1]), "ab")}
    assert beats(good, weak)[0] and not beats(weak, good)[0]
    assert not beats(good, weak, min_recall=1.01)[0]
    assert "classes under 101%: a, b" in beats(good, weak, min_recall=1.01)[1]
    # Better on images but worse on drawings: refused.
    pen_good = {**good, "pendigits": good["as_is"]}
    pen_weak = {**weak, "pendigits": weak["as_is"]}
    assert beats(pen_good, pen_weak)[0]
    assert not beats({**good, "pendigits": weak["as_is"]}, pen_weak | {"pendigits": good["as_is"]})[
        0
    ]


def test_a_speed_candidate_may_fall_by_the_tolerance_and_no_more() -> None:
    from trainer.evaluate import beats

    truth = np.array([0] * 50 + [1] * 50)
    near = truth.copy()
    near[0] = 1  # one image in 100 wrong
    best = {"as_is": score(truth, truth, "ab"), "pendigits": score(truth, truth, "ab")}
    cand = {"as_is": score(truth, near, "ab"), "pendigits": score(truth, truth, "ab")}
    assert not beats(cand, best)[0]  # without a tolerance it must be better
    assert not beats(best, best)[0]  # and a tie is not better
    ok, text = beats(cand, best, tolerance=0.01)
    assert ok and "(each may fall by 1.00 points)" in text
    assert not beats(cand, best, tolerance=0.005)[0]
    # The strokes are held to the same tolerance.
    worse_pen = {**best, "pendigits": score(truth, np.zeros_like(truth), "ab")}
    assert not beats(worse_pen, best, tolerance=0.01)[0]
    with pytest.raises(ValueError, match="tolerance"):
        beats(cand, best, tolerance=0.2)


def test_held_out_writers_come_from_the_model_s_training_config() -> None:
    from trainer.evaluate import held_out_writers

    assert held_out_writers({"pendigits_val_writers": 3}) == 3
    assert held_out_writers({}) == 5  # the trainer's default


def test_validate_refuses_a_baseline_of_another_task(data_dir: Path) -> None:
    from trainer.evaluate import validate

    shipped = require_models()
    with pytest.raises(ValueError, match="other labels"):
        validate(
            "digits", [shipped / "digits.json", shipped / "characters.json"], data_dir, val_size=50
        )


def test_errors_are_told_by_writer_worst_first():
    # One writer's 4s read as 5 are most of the errors: the breakdown names the writer and
    # the confusion, and the share of all errors it is.
    truth = np.array([4, 4, 4, 5, 1, 1, 1, 7])
    pred = np.array([5, 5, 4, 5, 1, 7, 1, 7])
    writers = np.array([13, 13, 13, 2, 2, 2, 9, 9])
    rows = by_writer(truth, pred, writers, [str(d) for d in range(10)])
    assert [r["writer"] for r in rows] == [13, 2, 9]
    assert rows[0]["n"] == 3 and rows[0]["errors"] == 2
    assert rows[0]["accuracy"] == pytest.approx(1 / 3)
    assert rows[0]["top_confusion"] == {"true": "4", "predicted": "5", "count": 2}
    assert rows[0]["share_of_errors"] == pytest.approx(2 / 3)
    assert rows[1]["top_confusion"] == {"true": "1", "predicted": "7", "count": 1}
    assert rows[2] == {
        "writer": 9,
        "n": 2,
        "errors": 0,
        "accuracy": 1.0,
        "top_confusion": None,
        "share_of_errors": 0.0,
    }
