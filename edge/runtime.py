"""The one place that imports a TFLite interpreter: ai-edge-litert, else tflite-runtime, else tf.lite."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def load_interpreter_class() -> tuple[Any, str]:
    """The Interpreter class of the best runtime installed, and that runtime's name."""
    reasons = []
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError as exc:
        reasons.append(f"ai-edge-litert: {exc}")
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[no-redef]

        log.warning("using tflite-runtime (%s)", "; ".join(reasons))
        return Interpreter, "tflite-runtime"
    except ImportError as exc:
        reasons.append(f"tflite-runtime: {exc}")
    try:
        import tensorflow as tf  # only reached where neither edge runtime is installed

        log.warning("using tf.lite from TensorFlow (%s)", "; ".join(reasons))
        return tf.lite.Interpreter, "tf.lite"
    except ImportError as exc:
        reasons.append(f"tensorflow: {exc}")
    raise RuntimeError("no TFLite interpreter is installed: " + "; ".join(reasons))
