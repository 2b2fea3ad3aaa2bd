"""``hwr-train relabel``: a positive-unlabelled classifier finds the positive shapes inside a
mixed class, the list is keyed by image content, and the loader applies only what it lists."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.relabel import apply_relabel, image_hash, image_hashes, load_list, save_list


def _bars(n: int, vertical: bool, rng: np.random.Generator) -> np.ndarray:
    """Noisy 28x28 images of one bar, vertical or horizontal, at a random place and width."""
    x = (rng.random((n, 28, 28)) * 40).astype(np.uint8)
    for im in x:
        at, w = rng.integers(6, 20), rng.integers(2, 5)
        if vertical:
            im[4:24, at : at + w] = 255
        else:
            im[at : at + w, 4:24] = 255
    return x


def test_image_hash_is_a_content_key() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 28, 28)).astype(np.uint8)
    keys = image_hashes(a)
    assert len(set(keys)) == 3 and all(len(k) == 16 for k in keys)
    assert image_hash(a[1].copy()) == keys[1]
    b = a[1].copy()
    b[5, 5] ^= 1
    assert image_hash(b) != keys[1]


def test_apply_moves_only_listed_images_of_the_source_class(tmp_path) -> None:
    labels = ["F", "f", "x"]
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (6, 28, 28)).astype(np.uint8)
    y = np.array([0, 0, 0, 1, 2, 2])
    # Listed: two F images, and an 'x' image that must not move (it is not an F).
    doc = {
        "schema": 1,
        "from": "F",
        "to": "f",
        "train_hashes": [image_hash(x[0]), image_hash(x[2]), image_hash(x[4])],
        "test_hashes": [image_hash(x[1])],
    }
    save_list(doc, tmp_path / "list.json")
    loaded = load_list(tmp_path / "list.json")
    got, moved = apply_relabel(x, y, loaded, labels, "train")
    assert moved == 2
    assert got.tolist() == [1, 0, 1, 1, 2, 2]
    assert y.tolist() == [0, 0, 0, 1, 2, 2]  # the input is not changed
    # The order of the images does not matter: the list is keyed by content.
    perm = np.array([5, 4, 3, 2, 1, 0])
    got_p, _ = apply_relabel(x[perm], y[perm], loaded, labels, "train")
    assert got_p.tolist() == got[perm].tolist()
    # The test entries are a separate list.
    got_t, moved_t = apply_relabel(x, y, loaded, labels, "test")
    assert moved_t == 1 and got_t.tolist() == [0, 1, 0, 1, 2, 2]


def test_load_list_refuses_other_files(tmp_path) -> None:
    (tmp_path / "bad.json").write_text('{"labels": []}')
    with pytest.raises(ValueError, match="not a relabel list"):
        load_list(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="not found"):
        load_list(tmp_path / "none.json")


@pytest.mark.tf
def test_pu_classifier_finds_the_positive_shapes_in_the_mixed_class() -> None:
    from trainer.relabel import relabel_list

    rng = np.random.default_rng(2)
    # Class 1 ("f"): vertical bars only. Class 0 ("F"): 60 vertical and 60 horizontal bars.
    pos = _bars(60, True, rng)
    hidden = _bars(60, True, rng)
    other = _bars(60, False, rng)
    x = np.concatenate([pos, hidden, other])
    y = np.array([1] * 60 + [0] * 120)
    test_x = np.concatenate([_bars(20, True, rng), _bars(20, False, rng)])
    test_y = np.zeros(40, dtype=np.int64)
    doc, result, post, test_post = relabel_list(
        x, y, test_x, test_y, source=0, target=1, labels=["F", "f"], folds=2, epochs=6, seed=3
    )
    hidden_keys, other_keys = set(image_hashes(hidden)), set(image_hashes(other))
    moved = set(doc["train_hashes"])
    # Most hidden positives move, almost none of the real members of the mixed class.
    assert len(moved & hidden_keys) >= 45, (len(moved & hidden_keys), result.c)
    assert len(moved & other_keys) <= 5
    assert doc["train"]["moved"] == len(moved) and doc["from"] == "F" and doc["to"] == "f"
    # Scores are out of fold: every image has one, from a model that did not train on it.
    assert post.shape == (120,) and result.pos_scores.shape == (60,)
    assert 0.0 < result.c < 1.0
    assert doc["expected_positives_in_source"] == pytest.approx(float(post.sum()), abs=0.1)
    test_moved = set(doc["test_hashes"])
    assert len(test_moved & set(image_hashes(test_x[:20]))) >= 15
    assert len(test_moved & set(image_hashes(test_x[20:]))) <= 2
    assert test_post.shape == (40,)


def test_fit_softmax_learns_a_separable_problem_on_raw_features() -> None:
    from trainer.refit import RefitConfig, fit_softmax

    rng = np.random.default_rng(4)
    centres = rng.normal(0, 4, (3, 8)) + 10.0  # far from zero: standardisation must be undone
    y = rng.integers(0, 3, 900)
    x = centres[y] + rng.normal(0, 1, (900, 8))
    w, b = fit_softmax(x, y, 3, RefitConfig(steps=300, batch=256))
    assert w.shape == (8, 3) and b.shape == (3,)
    assert np.mean(np.argmax(x @ w + b, axis=1) == y) > 0.97
