"""Augmentation for drawings: random affine (shift, rotation, scale, shear), a smooth elastic
warp and stroke thickness.

Works on batches of float images (b, 28, 28, 1) in [0, 1] inside a tf.data pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf


@dataclass
class AugmentConfig:
    rotate_deg: float = 12.0
    scale: float = 0.12  # scale factor drawn from [1 - scale, 1 + scale]
    shear: float = 0.2
    shift_px: float = 2.0
    thicken: float = 0.6  # blend weight of a 3x3 dilation, drawn from [0, thicken]
    thin: float = 0.5  # blend weight of a 3x3 erosion, drawn from [0, thin]
    prob: float = 0.9  # share of images that are transformed at all
    elastic_px: float = 0.0  # largest displacement of the elastic warp, in pixels (0: none)
    elastic_grid: int = 4  # the warp's random displacements lie on a grid this many points wide


def augment_batch(x: tf.Tensor, cfg: AugmentConfig) -> tf.Tensor:
    """Apply random affine and thickness changes to a batch of (b, 28, 28, 1) images."""
    b = tf.shape(x)[0]
    size = 28.0
    c = (size - 1.0) / 2.0
    on = tf.cast(tf.random.uniform([b]) < cfg.prob, tf.float32)
    theta = tf.random.uniform([b], -1.0, 1.0) * math.radians(cfg.rotate_deg) * on
    sx = 1.0 + tf.random.uniform([b], -cfg.scale, cfg.scale) * on
    sy = sx * (1.0 + tf.random.uniform([b], -0.05, 0.05) * on)
    sh = tf.random.uniform([b], -cfg.shear, cfg.shear) * on
    tx = tf.random.uniform([b], -cfg.shift_px, cfg.shift_px) * on
    ty = tf.random.uniform([b], -cfg.shift_px, cfg.shift_px) * on
    cos, sin = tf.cos(theta), tf.sin(theta)
    # Output pixel p samples the input at M (p - c) + c - t, with M = R(theta) Sh diag(1/s).
    a00 = cos / sx
    a01 = (cos * sh - sin) / sy
    a10 = sin / sx
    a11 = (sin * sh + cos) / sy
    a02 = c - a00 * c - a01 * c - tx
    a12 = c - a10 * c - a11 * c - ty
    zeros = tf.zeros([b])
    transforms = tf.stack([a00, a01, a02, a10, a11, a12, zeros, zeros], axis=1)
    x = tf.raw_ops.ImageProjectiveTransformV3(
        images=x,
        transforms=transforms,
        output_shape=tf.constant([28, 28]),
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    if cfg.elastic_px > 0:
        x = elastic_warp(x, cfg.elastic_px * on, cfg.elastic_grid)
    # Stroke thickness: blend with a dilation (thicker) or an erosion (thinner).
    dil = tf.nn.max_pool2d(x, 3, 1, "SAME")
    ero = -tf.nn.max_pool2d(-x, 3, 1, "SAME")
    u = tf.random.uniform([b, 1, 1, 1], -1.0, 1.0) * on[:, None, None, None]
    w_thick = tf.maximum(u, 0.0) * cfg.thicken
    w_thin = tf.maximum(-u, 0.0) * cfg.thin
    x = x * (1.0 - w_thick - w_thin) + dil * w_thick + ero * w_thin
    return tf.clip_by_value(x, 0.0, 1.0)


def elastic_warp(x: tf.Tensor, amplitude: tf.Tensor, grid: int) -> tf.Tensor:
    """Warp each image by a smooth random displacement field (bilinear sampling, ink outside
    the image reads as 0): displacements drawn uniformly in [-a, a] pixels on a ``grid`` x
    ``grid`` lattice and interpolated bilinearly, so the strokes bend rather than jitter.
    ``amplitude`` holds a per image (0 leaves that image as it is)."""
    b = tf.shape(x)[0]
    n = 28
    coarse = tf.random.uniform([b, grid, grid, 2], -1.0, 1.0)
    flow = tf.image.resize(coarse, [n, n], method="bilinear") * amplitude[:, None, None, None]
    gy, gx = tf.meshgrid(
        tf.range(n, dtype=tf.float32), tf.range(n, dtype=tf.float32), indexing="ij"
    )
    sy = gy[None] + flow[..., 0]
    sx = gx[None] + flow[..., 1]
    y0, x0 = tf.floor(sy), tf.floor(sx)
    wy, wx = sy - y0, sx - x0
    # One pixel of zeros around each image: samples outside it land there.
    flat = tf.reshape(tf.pad(x[..., 0], [[0, 0], [1, 1], [1, 1]]), [b, (n + 2) * (n + 2)])

    def at(yy, xx):
        yi = tf.cast(tf.clip_by_value(yy + 1.0, 0.0, n + 1.0), tf.int32)
        xi = tf.cast(tf.clip_by_value(xx + 1.0, 0.0, n + 1.0), tf.int32)
        idx = tf.reshape(yi * (n + 2) + xi, [b, n * n])
        return tf.reshape(tf.gather(flat, idx, batch_dims=1), [b, n, n])

    out = (
        at(y0, x0) * (1 - wy) * (1 - wx)
        + at(y0, x0 + 1) * (1 - wy) * wx
        + at(y0 + 1, x0) * wy * (1 - wx)
        + at(y0 + 1, x0 + 1) * wy * wx
    )
    return out[..., None]
