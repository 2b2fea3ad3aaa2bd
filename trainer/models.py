"""The two architectures of the seed paper, a wider residual variant, a lighter one of each,
and an ensemble of two light CNNs in one graph.

Each builder returns a Keras model with two outputs: ``probabilities`` (softmax, float32)
and ``embedding`` (the penultimate layer, used on the edge for similarity matching).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

EMBEDDING_DIM = 128


def _conv_bn(x, filters: int, name: str):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _head(x, num_classes: int, dropout: float, prefix: str = ""):
    """The embedding and output layers; a ``prefix`` names one tower of an ensemble."""
    x = layers.Dense(EMBEDDING_DIM, use_bias=False, name=f"{prefix}embed_dense")(x)
    x = layers.BatchNormalization(name=f"{prefix}embed_bn")(x)
    emb = layers.ReLU(name=f"{prefix}embedding")(x)
    x = layers.Dropout(dropout, name=f"{prefix}head_dropout")(emb)
    logits = layers.Dense(num_classes, name=f"{prefix}logits")(x)
    probs = layers.Activation("softmax", dtype="float32", name=f"{prefix}probabilities")(logits)
    emb_out = layers.Activation("linear", dtype="float32", name=f"{prefix}embedding_out")(emb)
    return probs, emb_out


def _cnn_tower(inp, num_classes: int, widths: tuple[int, int, int], prefix: str = ""):
    """Five conv layers (widths a, b, b, c, c), three max-poolings, dropout and the head."""
    a, b, c = widths
    x = _conv_bn(inp, a, f"{prefix}c1")  # 28x28
    x = layers.MaxPooling2D(name=f"{prefix}pool1")(x)  # 14x14
    x = _conv_bn(x, b, f"{prefix}c2")
    x = _conv_bn(x, b, f"{prefix}c3")
    x = layers.MaxPooling2D(name=f"{prefix}pool2")(x)  # 7x7
    x = layers.Dropout(0.1, name=f"{prefix}drop2")(x)
    x = _conv_bn(x, c, f"{prefix}c4")
    x = _conv_bn(x, c, f"{prefix}c5")
    x = layers.MaxPooling2D(name=f"{prefix}pool3")(x)  # 3x3
    x = layers.Flatten(name=f"{prefix}flatten")(x)
    x = layers.Dropout(0.25, name=f"{prefix}drop3")(x)
    return _head(x, num_classes, 0.3, prefix)


def paper_cnn(num_classes: int = 10, widths: tuple[int, int, int] = (32, 64, 128)) -> keras.Model:
    """The paper's digit CNN: five conv layers (32-128 filters), max-pooling, BN, dropout, dense head."""
    inp = keras.Input((28, 28, 1), name="image")
    probs, emb = _cnn_tower(inp, num_classes, widths)
    return keras.Model(inp, [probs, emb], name="paper_cnn")


LITE_CNN_WIDTHS = (24, 40, 80)


def lite_cnn(num_classes: int = 10) -> keras.Model:
    """The paper's CNN at 5/8 of its widths (24-40-80): about 9 of its 22 million
    multiply-adds per image, and 0.3 against 0.7 ms of CPU time per int8 image here."""
    model = paper_cnn(num_classes, widths=LITE_CNN_WIDTHS)
    model.name = "lite_cnn"
    return model


TOWER_PREFIXES = ("m0_", "m1_")


def twin_lite_cnn(num_classes: int = 10) -> keras.Model:
    """Two ``lite-cnn`` towers in one graph, initialised apart and trained side by side (each
    on its own loss, see ``tower_outputs``); the model answers with the mean of their
    probabilities, and its embedding is the mean of their embeddings (128 values, as for
    one tower). Twice the multiply-adds of ``lite-cnn``, about 18 million, still fewer
    than the paper's CNN."""
    inp = keras.Input((28, 28, 1), name="image")
    towers = [_cnn_tower(inp, num_classes, LITE_CNN_WIDTHS, p) for p in TOWER_PREFIXES]
    probs = layers.Average(name="probabilities_mean")([t[0] for t in towers])
    probs = layers.Activation("linear", dtype="float32", name="probabilities")(probs)
    emb = layers.Average(name="embedding_mean")([t[1] for t in towers])
    emb = layers.Activation("linear", dtype="float32", name="embedding_out")(emb)
    return keras.Model(inp, [probs, emb], name="twin_lite_cnn")


def tower_outputs(model: keras.Model) -> list:
    """The probabilities of each tower of an ensemble model (empty for a single model):
    training puts a loss on each, so that the towers stay two models."""
    names = [f"{p}probabilities" for p in TOWER_PREFIXES]
    by_name = {ly.name: ly for ly in model.layers}
    return [by_name[n].output for n in names if n in by_name]


def _res_block(x, f1: int, f2: int, name: str):
    """Two 3x3 convs with a shortcut (1x1 projection when the width changes)."""
    shortcut = x
    y = _conv_bn(x, f1, f"{name}a")
    y = layers.Conv2D(f2, 3, padding="same", use_bias=False, name=f"{name}b_conv")(y)
    y = layers.BatchNormalization(name=f"{name}b_bn")(y)
    if shortcut.shape[-1] != f2:
        shortcut = layers.Conv2D(f2, 1, use_bias=False, name=f"{name}_proj")(shortcut)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def paper_resnet(
    num_classes: int = 37, widths: tuple[int, int, int, int, int] = (32, 64, 128, 256, 512)
) -> keras.Model:
    """The paper's residual CNN: seven 3x3 conv layers up to 512 filters, residual connections."""
    stem, w1, w2, w3, last = widths
    inp = keras.Input((28, 28, 1), name="image")
    # A strided stem: the full-resolution layers cost most of the time on a small CPU.
    x = layers.Conv2D(stem, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inp)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)  # 14x14
    x = _res_block(x, w1, w1, "r1")
    x = layers.MaxPooling2D(name="pool1")(x)  # 7x7
    x = _res_block(x, w2, w2, "r2")
    x = layers.MaxPooling2D(padding="same", name="pool2")(x)  # 4x4
    x = layers.MaxPooling2D(name="pool3")(x)  # 2x2
    x = _res_block(x, w3, last, "r3")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.3, name="drop")(x)
    probs, emb = _head(x, num_classes, 0.3)
    return keras.Model(inp, [probs, emb], name="paper_resnet")


def wide_resnet(num_classes: int = 37) -> keras.Model:
    """The residual CNN with doubled widths below the 512-filter block."""
    model = paper_resnet(num_classes, widths=(64, 128, 256, 512, 512))
    model.name = "wide_resnet"
    return model


def lite_resnet(num_classes: int = 37) -> keras.Model:
    """The residual CNN at 5/8 of its widths below a 384-filter block: about 12 of its 29
    million multiply-adds per image, for the edge's model-time budget."""
    model = paper_resnet(num_classes, widths=(32, 40, 80, 160, 384))
    model.name = "lite_resnet"
    return model


ARCHITECTURES: dict[str, Callable[[int], keras.Model]] = {
    "paper-cnn": paper_cnn,
    "lite-cnn": lite_cnn,
    "twin-lite-cnn": twin_lite_cnn,
    "paper-resnet": paper_resnet,
    "wide-resnet": wide_resnet,
    "lite-resnet": lite_resnet,
}


def flag_of(model_name: str) -> str:
    """The architecture flag of a built model from its Keras name (a manifest's
    ``architecture``): "lite_cnn" -> "lite-cnn"; unknown names fail with the known ones."""
    arch = model_name.replace("_", "-")
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {model_name!r}; known: {sorted(ARCHITECTURES)}")
    return arch


def build(arch: str, num_classes: int) -> keras.Model:
    """Build an architecture by name; unknown names fail with the list of known ones."""
    try:
        return ARCHITECTURES[arch](num_classes)
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}") from None
