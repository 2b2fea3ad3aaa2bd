"""Augmentation: the elastic warp bends strokes without losing them, and each pen stroke of a
drawing can move on its own before rendering."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.datasets import jitter_strokes


def _two_strokes():
    # A 4 drawn as an L and a bar: two strokes.
    return [[[10.0, 0.0], [0.0, 30.0], [25.0, 30.0]], [[18.0, 10.0], [18.0, 45.0]]]


def test_strokes_move_apart_only_when_asked_and_only_in_drawings_of_several() -> None:
    strokes = _two_strokes()
    plain = jitter_strokes(strokes, np.random.default_rng(4))
    shifted = jitter_strokes(strokes, np.random.default_rng(4), stroke_shift=0.1)

    def gap(s):  # where the bar's first point lies against the L's first point
        return np.asarray(s[1][0]) - np.asarray(s[0][0])

    # The same affine distortion moves both strokes together, or each on its own.
    assert np.abs(gap(plain) - gap(shifted)).max() > 0.2
    moved = np.abs(gap(shifted) - gap(jitter_strokes(strokes, np.random.default_rng(9), 0.1)))
    assert moved.max() > 0.2
    # No larger than asked: 10% of the drawing's 45-unit side, in x and y, on each stroke,
    # before the affine part (at most about 1.4x here).
    assert np.abs(gap(shifted) - gap(plain)).max() < 2 * 0.1 * 45 * 1.5
    single = [strokes[0]]
    assert np.allclose(
        jitter_strokes(single, np.random.default_rng(4)),
        jitter_strokes(single, np.random.default_rng(4), stroke_shift=0.1),
    )


@pytest.mark.tf
def test_the_elastic_warp_bends_a_drawing_and_keeps_its_ink() -> None:
    import tensorflow as tf

    from trainer.augment import elastic_warp

    x = np.zeros((3, 28, 28, 1), np.float32)
    x[:, 6:22, 12:16] = 1.0  # a thick vertical bar
    tf.random.set_seed(2)
    amp = tf.constant([0.0, 2.0, 2.0])
    out = elastic_warp(tf.constant(x), amp, 4).numpy()
    assert out.shape == x.shape
    assert np.array_equal(out[0], x[0])  # amplitude 0: untouched
    for i in (1, 2):
        assert np.abs(out[i] - x[i]).max() > 0.3  # the bar bends
        assert out[i].sum() == pytest.approx(x[i].sum(), rel=0.35)  # and keeps its ink
        assert out[i][:2].max() == 0 and out[i][26:].max() == 0  # within 2 px of where it was
    assert np.abs(out[1] - out[2]).max() > 0.1  # each image has its own warp
