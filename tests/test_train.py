"""``hwr-train train``: the effective config is logged and saved, every epoch is checkpointed, and a
run killed mid-way resumes from its last finished epoch instead of starting again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from trainer.config import load_config
from trainer.data import load_pendigits, load_task
from trainer.evaluate import training_data
from trainer.models import ARCHITECTURES

pytestmark = pytest.mark.tf

HWR_TRAIN = Path(sys.executable).parent / "hwr-train"


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_killed_run_resumes_from_its_last_epoch(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "run"
    cmd = [
        *([str(HWR_TRAIN)] if HWR_TRAIN.exists() else [sys.executable, "-m", "trainer.cli"]),
        "train",
        "digits",
        "--data-dir",
        str(data_dir),
        "--out-dir",
        str(out),
        "--epochs",
        "3",
        "--limit",
        "384",
        "--batch-size",
        "64",
        "--val-size",
        "300",
        "--threads",
        "1",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    log = tmp_path / "first.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    history = out / "validation.jsonl"
    try:
        deadline = time.monotonic() + 240
        while not _rows(history) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _rows(history), f"no epoch finished; log:\n{log.read_text()[-3000:]}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    first = [r["epoch"] for r in _rows(history)]
    assert first[0] == 1 and not (out / "model.keras").exists()
    assert "effective config" in log.read_text()
    saved = json.loads((out / "config.json").read_text())
    assert saved["epochs"] == 3 and saved["val_size"] == 300 and saved["limit"] == 384

    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    epochs = [r["epoch"] for r in _rows(history)]
    # Resumed: each epoch ran to its end once (a restart would log epoch 1 again).
    assert epochs == [1, 2, 3], epochs
    assert all(0.0 <= r["val"] <= 1.0 and 0.0 <= r["val_pendigits"] <= 1.0 for r in _rows(history))
    assert (out / "model.keras").is_file() and json.loads((out / "labels.json").read_text())[
        0
    ] == "0"

    # The same folder with other settings is refused instead of resuming a different run.
    other = [*cmd[:-2], "--threads", "2", "--epochs", "5"]
    refused = subprocess.run(other, capture_output=True, text=True, env=env, timeout=300)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "epochs 3 -> 5" in refused.stderr and "threads" not in refused.stderr
    assert json.loads((out / "config.json").read_text())["epochs"] == 3


def test_val_size_zero_trains_on_the_whole_split_and_says_so(
    tmp_path: Path, data_dir: Path
) -> None:
    from trainer.train import train

    cfg = load_config(
        "digits",
        overrides={
            "val_size": 0,
            "data_dir": str(data_dir),
            "out_dir": str(tmp_path / "run"),
            "epochs": 1,
            "limit": 128,
            "batch_size": 64,
        },
        environ={},
    )
    assert train(cfg).is_file()
    # The MNIST slice is gone; the held-out pendigits writers still report.
    assert set(_rows(tmp_path / "run" / "validation.jsonl")[0]) == {
        "epoch",
        "loss",
        "val_pendigits",
    }
    writers = len({s.writer for s in load_pendigits(data_dir, "train")})
    text = training_data(
        "digits", cfg.to_dict(), len(load_task("digits", data_dir, "train")[0]), writers
    )
    assert "MNIST train (all 60,000)" in text and "(25 of 30 writers" in text
    assert "5 writers held out for validation);" in text
    held = training_data("characters", load_config("characters", environ={}).to_dict(), 84_846)
    assert "79,846; 5,000 held out" in held
    with pytest.raises(ValueError, match="val_size"):
        load_config("digits", overrides={"val_size": -1}, environ={})


def test_the_relabel_setting_moves_the_listed_training_images(
    tmp_path: Path, data_dir: Path
) -> None:
    """characters_data applies a relabel list before the holdout; validation keeps both labels."""
    from hwrcore.labels import CHARACTER_LABELS
    from trainer.datasets import characters_data
    from trainer.evaluate import relabel_record
    from trainer.relabel import image_hash, save_list

    labels = list(CHARACTER_LABELS)
    big_f, small_f = labels.index("F"), labels.index("f")
    x, y = load_task("characters", data_dir, "train")
    listed = [image_hash(im) for im in x[y == big_f][:40]]
    not_f = image_hash(x[y == labels.index("E")][0])  # listed, but not an F: must not move
    doc = {"schema": 1, "from": "F", "to": "f", "train_hashes": [*listed, not_f]}
    save_list(doc, tmp_path / "list.json")
    base = {"data_dir": str(data_dir), "val_size": 5000}
    plain = characters_data(load_config("characters", overrides=base, environ={}), tmp_path)
    cfg = load_config(
        "characters", overrides={**base, "relabel": str(tmp_path / "list.json")}, environ={}
    )
    moved = characters_data(cfg, tmp_path)
    assert set(plain) == {"train", "val"} and set(moved) == {"train", "val", "val_asis"}
    # The same images in the same order; only the listed F images changed label.
    np.testing.assert_array_equal(plain["train"].x, moved["train"].x)
    changed = (plain["train"].y != moved["train"].y).sum() + (
        plain["val"].y != moved["val"].y
    ).sum()
    assert changed == 40
    assert set(moved["train"].y[plain["train"].y != moved["train"].y]) == {small_f}
    np.testing.assert_array_equal(moved["val_asis"].y, plain["val"].y)
    # The manifest records the list by file and hash.
    rec = relabel_record(tmp_path / "list.json")
    assert rec["moved"] == 41 and rec["from"] == "F" and len(rec["sha256"]) == 64


def test_every_recipe_loads_and_names_a_known_architecture() -> None:
    recipes = sorted((Path(__file__).parents[1] / "trainer" / "recipes").glob("*.toml"))
    assert recipes, "trainer/recipes holds no recipe"
    for recipe in recipes:
        task = recipe.stem.split("-")[0]
        cfg = load_config(task, recipe, environ={})
        assert cfg.arch in ARCHITECTURES, (recipe.name, cfg.arch)
        assert cfg.val_size > 0, f"{recipe.name} must keep a validation slice"
