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


def test_an_unknown_architecture_names_the_known_ones() -> None:
    from trainer.models import build

    with pytest.raises(ValueError, match="lite-cnn"):
        build("tiny", 10)
