"""int8 export: a briefly trained paper CNN exports with a correct manifest and agrees with Keras."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.classifier import Classifier
from hwrcore.labels import DIGITS
from hwrcore.manifest import load_manifest, sha256_file
from trainer.cli import main
from trainer.data import load_mnist

pytestmark = [
    pytest.mark.tf,
    # The converter calibrates through tf.lite.Interpreter, which warns that it is deprecated.
    pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning"),
]

STEPS = 60
BATCH = 128


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Path, np.ndarray]:
    """paper-cnn trained for STEPS steps on MNIST; its path and its class for 1,000 test images."""
    import keras

    from trainer.models import build

    keras.utils.set_random_seed(7)
    x, y = load_mnist(data_dir, "train")
    x = x[: STEPS * BATCH, ..., None].astype(np.float32) / 255.0
    y = y[: STEPS * BATCH]
    model = build("paper-cnn", 10)
    # Fast-moving batch-norm averages, so that inference statistics settle within a few dozen
    # steps (the default 0.99 would still be half way to them).
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.8
    fit = keras.Model(model.input, model.outputs[0])
    fit.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy")
    fit.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    tx, _ = load_mnist(data_dir, "test")
    probs = model.predict(tx[:1000, ..., None].astype(np.float32) / 255.0, verbose=0)[0]
    return path, probs.argmax(axis=1)


def test_export_writes_a_manifest_and_int8_agrees_with_keras(
    trained: tuple[Path, np.ndarray], tmp_path: Path, data_dir: Path, capsys
) -> None:
    model_path, keras_pred = trained
    tx, ty = load_mnist(data_dir, "test")
    # The model is confident enough for agreement to mean something.
    assert np.mean(keras_pred == ty[:1000]) > 0.9
    out = tmp_path / "export"
    rc = main(
        [
            "export",
            "digits",
            "--model",
            str(model_path),
            "--out",
            str(out),
            "--version",
            "1.2.3",
            "--data-dir",
            str(data_dir),
        ]
    )
    assert rc == 0
    assert "int8 and Keras agree on" in capsys.readouterr().out
    manifest_path = out / "digits.json"
    m = load_manifest(manifest_path, verify=True)
    assert (m.name, m.version, m.mode, m.style) == ("digits", "1.2.3", "digit", "mnist")
    assert m.labels == list(DIGITS.labels)
    assert m.file == "digits.tflite" and m.sha256 == sha256_file(out / "digits.tflite")
    assert m.input.dtype == "int8" and m.input.shape == [1, 28, 28, 1]
    # 0..1 pixels onto int8: scale 1/255, zero point -128.
    assert m.input.scale == pytest.approx(1 / 255, rel=1e-3) and m.input.zero_point == -128
    assert set(m.outputs) == {"probabilities", "embedding"}
    assert m.outputs["probabilities"].shape == [1, 10]
    assert m.outputs["embedding"].shape == [1, 128]
    assert all(o.dtype == "int8" for o in m.outputs.values())
    assert m.architecture == "paper_cnn"
    # int8 on the device's interpreter picks the same class as Keras on >= 99% of the images.
    clf = Classifier(manifest_path)
    probs, emb = clf.predict_batch(tx[:1000].astype(np.float32) / 255.0)
    assert emb.shape == (1000, 128)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=0.05)
    agree = float(np.mean(probs.argmax(axis=1) == keras_pred))
    assert agree >= 0.99
    assert m.metrics["int8_keras_agreement"] == pytest.approx(agree, abs=1e-6)
    assert m.metrics["int8_keras_agreement_n"] == 1000
