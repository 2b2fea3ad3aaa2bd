"""Training configuration: defaults, then a TOML file, then environment, then flags.

Unknown keys fail loudly; the effective config is logged and saved beside every run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .augment import AugmentConfig
from .datasets import PENDIGITS_VAL_WRITERS

TASKS = ("digits", "characters")


@dataclass
class TrainConfig:
    task: str = "digits"
    arch: str = ""  # default per task: paper-cnn for digits, paper-resnet for characters
    epochs: int = 20
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    warmup_epochs: float = 1.0
    val_size: int = 5000  # images held out of the training split for choosing settings
    seed: int = 1234
    data_dir: str = ""
    out_dir: str = ""
    pendigits_variants: int = 3  # augmented renders of each pendigits training stroke set
    pendigits_stroke_shift: float = 0.0  # each stroke's own shift in those renders (jitter_strokes)
    pendigits_val_writers: int = PENDIGITS_VAL_WRITERS  # training-file writers held out
    extra: str = ""  # comma list of extra training data: 'emnist-digits'
    mixed_precision: bool = False  # bfloat16 pays only on CPUs with native bf16 (AVX-512 BF16, AMX)
    threads: int = 0  # 0: TensorFlow's default
    max_steps: int = 0  # >0: stop each epoch after this many steps (smoke tests)
    limit: int = 0  # >0: use only this many training images (smoke tests)
    init_from: str = ""  # a trained .keras model to start from (fine-tuning)
    relabel: str = (
        ""  # characters: a relabel list (hwr-train relabel) applied to the training split
    )
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}: got {self.task!r}")
        if self.val_size < 0:
            raise ValueError(f"val_size must be 0 or more, got {self.val_size}")
        if not self.arch:
            self.arch = "paper-cnn" if self.task == "digits" else "paper-resnet"
        if not self.out_dir:
            self.out_dir = str(Path("build") / self.task)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _coerce(kind: Any, value: Any, key: str) -> Any:
    if isinstance(value, str) and kind is not str:
        if kind is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{key}: expected true/false, got {value!r}")
        return kind(value)
    if kind is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, kind):
        raise ValueError(f"{key}: expected {kind.__name__}, got {value!r}")
    return value


def _apply(obj: Any, overrides: dict[str, Any], prefix: str = "") -> None:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in overrides.items():
        if key not in fields:
            raise ValueError(f"unknown config key {prefix}{key!r}; known: {sorted(fields)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{prefix}{key} must be a table of settings")
            _apply(current, value, prefix=f"{prefix}{key}.")
        else:
            setattr(obj, key, _coerce(type(current), value, prefix + key))


def load_config(
    task: str,
    toml_path: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> TrainConfig:
    """Defaults < TOML file < HWR_TRAIN_<KEY> environment variables < explicit overrides."""
    cfg = TrainConfig(task=task)
    layered: dict[str, Any] = {}
    if toml_path:
        with open(toml_path, "rb") as f:
            data = tomllib.load(f)
        layered.update(data.get(task, data))
    env = os.environ if environ is None else environ
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"augment", "task"}
    for name in names:
        val = env.get(f"HWR_TRAIN_{name.upper()}")
        if val is not None:
            layered[name] = val
    layered.update({k: v for k, v in (overrides or {}).items() if v is not None})
    layered.pop("task", None)
    _apply(cfg, layered)
    cfg.__post_init__()
    return cfg
