"""Full-integer int8 TFLite export with two outputs, and the manifest that ships beside it."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path

import numpy as np

from hwrcore.labels import CHARACTERS, DIGITS
from hwrcore.manifest import Manifest, TensorSpec, sha256_file

log = logging.getLogger(__name__)

TASK_INFO = {
    "digits": {"mode": "digit", "style": "mnist", "labels": DIGITS},
    "characters": {"mode": "char", "style": "emnist", "labels": CHARACTERS},
}


def convert_int8(model, representative: np.ndarray) -> bytes:
    """Convert a two-output Keras model to int8 TFLite, calibrated on ``representative`` images."""
    import tempfile

    import keras
    import tensorflow as tf

    def rep():
        for im in representative:
            yield {"image": im.reshape(1, 28, 28, 1).astype(np.float32)}

    # A functional copy with a fixed batch of one and named outputs, exported by Keras itself
    # (its SavedModel freezes every variable, which the converter needs).
    inp = keras.Input((28, 28, 1), batch_size=1, name="image")
    probs, emb = model(inp, training=False)
    serving = keras.Model(inp, {"probabilities": probs, "embedding": emb})
    with tempfile.TemporaryDirectory() as tmp:
        serving.export(tmp, format="tf_saved_model", verbose=False)
        conv = tf.lite.TFLiteConverter.from_saved_model(tmp)
        return _convert(conv, rep)


def _convert(conv, rep) -> bytes:
    import tensorflow as tf

    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return conv.convert()


def _spec(detail: dict, name: str | None = None) -> TensorSpec:
    scale, zero = detail["quantization"]
    return TensorSpec(
        name=name or detail["name"],
        shape=[int(v) for v in detail["shape"]],
        dtype=np.dtype(detail["dtype"]).name,
        scale=float(scale),
        zero_point=int(zero),
    )


def export(
    model_path: str | os.PathLike,
    task: str,
    out_dir: str | os.PathLike,
    representative: np.ndarray,
    version: str | None = None,
    parent_version: str | None = None,
    training: dict | None = None,
    name: str | None = None,
) -> Path:
    """Write ``<name>.tflite`` and ``<name>.json`` into out_dir; return the manifest path."""
    import keras

    from edge.runtime import load_interpreter_class

    info = TASK_INFO[task]
    name = name or task
    model = keras.models.load_model(model_path, compile=False)
    blob = convert_int8(model, representative)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tfl = out / f"{name}.tflite"
    tmp = tfl.with_name(tfl.name + ".tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, tfl)
    interp_cls, _ = load_interpreter_class()
    interp = interp_cls(model_path=str(tfl))
    interp.allocate_tensors()
    n_classes = len(info["labels"])
    outputs = {}
    for d in interp.get_output_details():
        key = "probabilities" if int(d["shape"][-1]) == n_classes else "embedding"
        outputs[key] = _spec(d)
    manifest = Manifest(
        name=name,
        version=version or dt.datetime.now(dt.UTC).strftime("%Y.%m.%d.%H%M"),
        mode=info["mode"],
        labels=list(info["labels"].labels),
        style=info["style"],
        input=_spec(interp.get_input_details()[0], "image"),
        outputs=outputs,
        sha256=sha256_file(tfl),
        file=tfl.name,
        architecture=model.name,
        training=training or {},
        parent_version=parent_version,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    manifest.check(str(tfl))
    path = out / f"{name}.json"
    manifest.save(path)
    log.info(
        "exported %s (%d bytes): %s",
        tfl,
        len(blob),
        json.dumps(manifest.outputs["probabilities"].__dict__),
    )
    return path


def agreement(
    model_path: str | os.PathLike, manifest_path: str | os.PathLike, images: np.ndarray
) -> float:
    """Share of images on which the int8 model and the Keras model pick the same class."""
    import keras

    from edge.classifier import Classifier

    model = keras.models.load_model(model_path, compile=False)
    keras_probs = model.predict(images[..., None].astype(np.float32), batch_size=256, verbose=0)[0]
    clf = Classifier(manifest_path)
    int8_probs, _ = clf.predict_batch(images)
    return float(np.mean(np.argmax(keras_probs, 1) == np.argmax(int8_probs, 1)))
