"""The architectures: each builds with the two outputs the edge reads, the paper's keep their
size (so the shipped models' recipe is unchanged), and the lighter ones are lighter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.tf

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("arch", "classes"),
    [
        ("paper-cnn", 10),
        ("lite-cnn", 10),
        ("twin-lite-cnn", 10),
        ("paper-resnet", 37),
        ("lite-resnet", 37),
        ("wide-resnet", 37),
    ],
)
def test_every_architecture_has_the_outputs_the_edge_reads(arch: str, classes: int) -> None:
    from trainer.models import EMBEDDING_DIM, build

    model = build(arch, classes)
    assert model.input.shape[1:] == (28, 28, 1)
    probs, emb = model.outputs
    assert probs.shape[1:] == (classes,) and emb.shape[1:] == (EMBEDDING_DIM,)


def test_the_paper_s_architectures_keep_their_size_and_the_lite_ones_are_smaller() -> None:
    from trainer.models import build

    params = {
        arch: build(arch, n).count_params()
        for arch, n in [
            ("paper-cnn", 10),
            ("lite-cnn", 10),
            ("paper-resnet", 37),
            ("lite-resnet", 37),
        ]
    }
    # The paper's figures (digits 1.2.0, characters 1.1.0), and the lighter ones'.
    assert params["paper-cnn"] == 427_690
    assert params["paper-resnet"] == 1_905_477
    assert params["lite-cnn"] < params["paper-cnn"] * 0.5
    assert params["lite-resnet"] < params["paper-resnet"] * 0.5


def test_a_shipped_model_names_an_architecture_the_server_can_rebuild() -> None:
    """The server's retraining rebuilds a shipped model's Keras layers from its manifest's
    ``architecture`` (the Keras model's name): it must lead back to the trainer's flag."""
    from trainer.models import flag_of

    for name in ("digits", "characters"):
        manifest = json.loads((ROOT / "models_export" / f"{name}.json").read_text())
        arch = manifest["training"]["config"]["arch"]
        assert flag_of(manifest["architecture"]) == arch, (name, manifest["architecture"])
    with pytest.raises(ValueError, match="unknown architecture 'tiny_cnn'"):
        flag_of("tiny_cnn")


def test_an_ensemble_answers_with_the_mean_of_towers_trained_on_their_own_losses() -> None:
    import keras
    import numpy as np

    from trainer.models import build, tower_outputs

    keras.utils.set_random_seed(3)
    model = build("twin-lite-cnn", 10)
    towers = tower_outputs(model)
    assert len(towers) == 2 and tower_outputs(build("lite-cnn", 10)) == []
    x = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    mean, t0, t1 = keras.Model(model.input, [model.outputs[0], *towers]).predict(x, verbose=0)
    # Initialised apart, the towers are two models, and the answer is their mean.
    assert np.abs(t0 - t1).max() > 1e-3
    assert np.allclose(mean, (t0 + t1) / 2, atol=1e-6)
    assert model.count_params() == 2 * build("lite-cnn", 10).count_params()


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")
def test_an_int8_ensemble_rebuilds_for_the_server_s_retraining(
    tmp_path: Path, data_dir: Path
) -> None:
    """The server fine-tunes a shipped model from its int8 file: every layer of both towers
    must be found in it by name, and the rebuilt Keras model must answer as the file does."""
    import keras
    import numpy as np

    from edge.classifier import Classifier
    from sync_server.retrain import keras_from_tflite
    from trainer.data import load_mnist
    from trainer.export import export
    from trainer.models import build, tower_outputs

    keras.utils.set_random_seed(5)
    x, y = load_mnist(data_dir, "train")
    x = x[:3840, ..., None].astype(np.float32) / 255.0
    model = build("twin-lite-cnn", 10)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.8
    fit = keras.Model(model.input, tower_outputs(model))
    fit.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy")
    fit.fit(x, (y[:3840], y[:3840]), batch_size=128, epochs=1, verbose=0)
    model.save(tmp_path / "twin.keras")
    manifest = export(tmp_path / "twin.keras", "digits", tmp_path / "out", x[:200])
    tx, ty = load_mnist(data_dir, "test")
    tx = tx[:300].astype(np.float32) / 255.0
    int8, _ = Classifier(manifest).predict_batch(tx)
    assert np.mean(int8.argmax(axis=1) == ty[:300]) > 0.85
    rebuilt = keras_from_tflite(manifest)
    assert rebuilt.name == "twin_lite_cnn"
    again = rebuilt.predict(tx[..., None], verbose=0)[0]
    assert np.mean(again.argmax(axis=1) == int8.argmax(axis=1)) >= 0.97


def test_an_unknown_architecture_names_the_known_ones() -> None:
    from trainer.models import build

    with pytest.raises(ValueError, match="lite-cnn"):
        build("tiny", 10)
