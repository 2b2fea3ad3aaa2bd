"""Personalisation: kNN over a device's corrections, combined with the model's probabilities."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edge.personal import Personaliser, PersonalOptions, combine, top_neighbours
from hwrcore.errors import InvalidLabel

LABELS = list("0123456789")
DIM = 128


def centres(seed: int = 0) -> np.ndarray:
    """Ten sparse, non-negative (ReLU-like) class centres that are nearly orthogonal."""
    rng = np.random.default_rng(seed)
    c = np.zeros((10, DIM), dtype=np.float32)
    for i in range(10):
        c[i, rng.choice(DIM, 12, replace=False)] = rng.uniform(0.5, 1.5, 12)
    return c


def near(centre: np.ndarray, rng: np.random.Generator, noise: float = 0.02) -> np.ndarray:
    """A point close to a centre (cosine similarity well above 0.95), still non-negative."""
    return np.maximum(centre + rng.normal(0, noise, centre.shape), 0).astype(np.float32)


def wrong_probs(true: int, said: int, p_said: float = 0.7) -> np.ndarray:
    """A model that puts most of its mass on the wrong class."""
    p = np.full(10, (1.0 - p_said - 0.05) / 8, dtype=np.float32)
    p[said] = p_said
    p[true] = 0.05
    return p / p.sum()


def strong() -> Personaliser:
    return Personaliser(LABELS, k=3, threshold=0.8, weight=0.75, eps=0.01)


def test_close_corrections_of_a_misread_class_decide_personally() -> None:
    rng = np.random.default_rng(1)
    c = centres()
    pers = strong()
    for _ in range(3):
        pers.add(near(c[7], rng), "7")
        pers.add(near(c[1], rng), "1")
    probs = wrong_probs(true=7, said=1)
    out, source = pers.decide(probs, near(c[7], rng))
    assert source == "personal"
    assert LABELS[int(np.argmax(out))] == "7"
    assert out.dtype == np.float32 and out.shape == (10,)
    assert out.sum() == pytest.approx(1.0, abs=1e-5) and (out >= 0).all()


def test_agreeing_vote_keeps_the_source_model_but_sharpens() -> None:
    rng = np.random.default_rng(2)
    c = centres()
    pers = strong()
    for _ in range(3):
        pers.add(near(c[4], rng), "4")
    probs = wrong_probs(true=1, said=4, p_said=0.6)
    out, source = pers.decide(probs, near(c[4], rng))
    assert source == "model"
    assert out[4] > probs[4]


def test_empty_personaliser_returns_the_model_unchanged() -> None:
    pers = Personaliser(LABELS)
    probs = wrong_probs(true=3, said=8)
    out, source = pers.decide(probs, centres()[3])
    assert len(pers) == 0
    assert source == "model"
    np.testing.assert_array_equal(out, probs)


def test_far_corrections_do_not_vote() -> None:
    rng = np.random.default_rng(3)
    c = centres()
    pers = strong()
    for d in range(5):  # corrections only of digits 0-4
        for _ in range(3):
            pers.add(near(c[d], rng), str(d))
    probs = wrong_probs(true=9, said=8)
    out, source = pers.decide(probs, near(c[9], rng))
    assert source == "model"
    np.testing.assert_array_equal(out, probs)


def test_a_zero_embedding_matches_nothing() -> None:
    pers = strong()
    pers.add(centres()[2], "2")
    probs = wrong_probs(true=2, said=5)
    out, source = pers.decide(probs, np.zeros(DIM, dtype=np.float32))
    assert source == "model"
    np.testing.assert_array_equal(out, probs)


@pytest.mark.parametrize("rule", ["geometric", "mixture"])
def test_combined_probabilities_stay_a_distribution(rule: str) -> None:
    rng = np.random.default_rng(4)
    pers = Personaliser(LABELS, k=5, threshold=0.0, weight=1.0, eps=0.001, rule=rule)
    pers.load(rng.uniform(0, 1, (200, DIM)), [str(d) for d in rng.integers(0, 10, 200)])
    for _ in range(50):
        probs = rng.dirichlet(np.full(10, 0.3)).astype(np.float32)
        probs[rng.integers(0, 10)] = 0.0  # int8 outputs hold exact zeros
        probs /= probs.sum()
        out, source = pers.decide(probs, rng.uniform(0, 1, DIM))
        assert np.isfinite(out).all() and (out >= 0).all()
        assert out.sum() == pytest.approx(1.0, abs=1e-5)
        assert source in ("model", "personal")


def test_decide_matches_a_plain_reference() -> None:
    """The vectorised path gives what a loop over every stored correction would."""
    rng = np.random.default_rng(5)
    opts = {"k": 4, "threshold": 0.3, "weight": 0.6, "eps": 0.01, "cap": 50, "rule": "geometric"}
    pers = Personaliser(LABELS, **opts)
    stored, stored_labels = [], []
    for i in range(80):  # past the cap: the ring buffer must hold exactly the newest 50
        e = rng.uniform(0, 1, DIM).astype(np.float32) ** 3
        lab = str(rng.integers(0, 10))
        pers.add(e, lab)
        stored.append(e)
        stored_labels.append(lab)
        if i % 7 == 0 or i > 45:
            q = rng.uniform(0, 1, DIM).astype(np.float32) ** 3
            probs = rng.dirichlet(np.ones(10)).astype(np.float32)
            got, _ = pers.decide(probs, q)
            keep = list(zip(stored, stored_labels, strict=True))[-opts["cap"] :]
            sims = sorted(
                (
                    (
                        float(np.dot(e2, q) / np.linalg.norm(e2) / np.linalg.norm(q)),
                        LABELS.index(l2),
                    )
                    for e2, l2 in keep
                ),
                reverse=True,
            )[: opts["k"]]
            votes = np.zeros(10)
            for s, li in sims:
                votes[li] += max(0.0, (s - opts["threshold"]) / (1 - opts["threshold"]))
            if votes.sum() == 0:
                np.testing.assert_array_equal(got, probs)
                continue
            g = opts["weight"] * max(
                0.0, (sims[0][0] - opts["threshold"]) / (1 - opts["threshold"])
            )
            knn = votes / votes.sum()
            ref = (probs + 0.01) ** (1 - g) * (knn + 0.01) ** g
            np.testing.assert_allclose(got, ref / ref.sum(), rtol=1e-4, atol=1e-6)
    assert len(pers) == opts["cap"]


def test_cap_drops_the_oldest() -> None:
    rng = np.random.default_rng(6)
    c = centres()
    pers = Personaliser(LABELS, k=5, threshold=0.8, weight=0.75, cap=10)
    for _ in range(15):
        pers.add(near(c[0], rng), "3")  # old corrections that say "3"
    for _ in range(10):
        pers.add(near(c[0], rng), "6")  # newer ones, at the same place, say "6"
    assert len(pers) == 10
    out, source = pers.decide(wrong_probs(true=6, said=3), near(c[0], rng))
    assert source == "personal" and LABELS[int(np.argmax(out))] == "6"


def test_load_replaces_keeps_the_newest_and_skips_unknown_labels() -> None:
    rng = np.random.default_rng(7)
    c = centres()
    pers = Personaliser(LABELS, threshold=0.8, weight=0.75, cap=8)
    pers.add(near(c[5], rng), "5")
    embs = np.stack([near(c[i % 10], rng) for i in range(12)])
    labels = [str(i % 10) for i in range(12)]
    labels[11] = "Q"  # from a label set this model does not have
    pers.load(embs, labels)
    assert len(pers) == 8  # 11 known, the newest 8 kept
    pers.load(np.zeros((0, DIM)), [])
    assert len(pers) == 0
    pers.load(embs[:3], labels[:3])
    assert len(pers) == 3


def test_bad_input_is_refused() -> None:
    pers = Personaliser(LABELS)
    with pytest.raises(InvalidLabel):
        pers.add(np.ones(DIM), "X")
    pers.add(np.ones(DIM), "1")
    with pytest.raises(ValueError, match="values"):
        pers.add(np.ones(DIM + 1), "1")
    with pytest.raises(ValueError, match="values"):
        pers.decide(np.full(10, 0.1), np.ones(DIM - 1))
    with pytest.raises(ValueError, match="labels"):
        pers.decide(np.full(9, 1 / 9), np.ones(DIM))
    with pytest.raises(TypeError, match="unknown"):
        Personaliser(LABELS, neighbours=3)
    with pytest.raises(ValueError):
        Personaliser(LABELS, threshold=1.0)


def test_concurrent_add_and_decide() -> None:
    c = centres()
    pers = Personaliser(LABELS, k=3, threshold=0.8, weight=0.75, cap=500)
    errors: list[BaseException] = []
    results: list[str] = []
    start = threading.Barrier(8)

    def adder(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            start.wait()
            for _ in range(200):
                pers.add(near(c[8], rng), "8")
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    def decider(seed: int) -> None:
        rng = np.random.default_rng(100 + seed)
        try:
            start.wait()
            for _ in range(200):
                out, source = pers.decide(wrong_probs(true=8, said=2), near(c[8], rng))
                assert abs(float(out.sum()) - 1.0) < 1e-4
                results.append(source)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=adder, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=decider, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[0]
    assert len(pers) == 500  # 800 added, capped
    assert len(results) == 800 and set(results) <= {"model", "personal"}
    out, source = pers.decide(wrong_probs(true=8, said=2), c[8])
    assert source == "personal" and int(np.argmax(out)) == 8


def test_top_neighbours_and_combine_shapes() -> None:
    sims = np.array([[0.1, 0.9, 0.5], [0.7, 0.2, 0.95]], dtype=np.float32)
    idx, top = top_neighbours(sims, 2)
    assert idx.tolist() == [[1, 2], [2, 0]]
    np.testing.assert_allclose(top, [[0.9, 0.5], [0.95, 0.7]])
    idx, top = top_neighbours(sims, 10)  # fewer stored than k
    assert idx.shape == (2, 3)
    probs = np.full((2, 10), 0.1, dtype=np.float32)
    out, active = combine(
        probs, top, np.array([[1, 2, 3], [4, 5, 6]]), PersonalOptions(threshold=0.6)
    )
    assert active.tolist() == [True, True]
    assert int(out[0].argmax()) == 1 and int(out[1].argmax()) == 4


def test_real_writer_corrections_do_not_hurt_that_writer(models_dir, data_dir) -> None:
    """With the shipped digit model: a pendigits test writer's own corrections never cost them.

    Writer 13 is the one the shipped model reads worst, so the corrections have work to do.
    """
    from edge.classifier import Classifier
    from hwrcore.preprocess import strokes_to_input
    from trainer.data import load_pendigits

    clf = Classifier(models_dir / "digits.json")
    style = clf.manifest.style
    samples = [s for s in load_pendigits(data_dir, "test") if s.writer == 13]
    pers = Personaliser(clf.labels)
    seen: dict[int, int] = {}
    held_out = []
    for s in samples:
        seen[s.label] = seen.get(s.label, 0) + 1
        if seen[s.label] <= 3:  # the first 3 of each digit are the corrections
            pers.add(clf.predict(strokes_to_input(s.strokes, style)).embedding, str(s.label))
        elif seen[s.label] <= 8:  # the next 5 of each digit are checked
            held_out.append(s)
    assert len(pers) == 30 and len(held_out) == 50
    before = after = 0
    for s in held_out:
        p = clf.predict(strokes_to_input(s.strokes, style))
        combined, _ = pers.decide(p.probabilities, p.embedding)
        before += clf.labels[int(np.argmax(p.probabilities))] == str(s.label)
        after += clf.labels[int(np.argmax(combined))] == str(s.label)
    assert after >= before
