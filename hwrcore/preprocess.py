"""Drawings (strokes or a canvas PNG) -> 28x28 model inputs, normalised like the training data.

One implementation for edge, trainer and server. Two conventions:

* ``mnist``: the ink is fitted into a 20x20 box (aspect kept) and its centre of mass is moved
  to the centre of the 28x28 field, as the MNIST digits were.
* ``emnist``: the ink is blurred, fitted into a square with a 2-pixel border (24x24 box,
  aspect kept) and centred by its bounding box, as the EMNIST characters were.

Output: float32 array (28, 28), white ink (1.0) on black (0.0), upright, anti-aliased.
Rendering is done at ``SUPERSAMPLE`` times the final resolution and averaged down, so the
edge of a stroke keeps its grey levels like the scanned originals.
"""

from __future__ import annotations

import base64
import binascii
import io

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .errors import InvalidDrawing

SIZE = 28
SUPERSAMPLE = 4

# Bounds on what a drawing may be: a finger on a canvas is nowhere near these.
MAX_STROKES = 64
MAX_POINTS = 4096
MAX_COORD = 100_000.0
MAX_PNG_BYTES = 2_000_000
MAX_PNG_PIXELS = 4_000_000
# A drawing whose ink spans less than this many canvas pixels in both directions is a dot.
MIN_EXTENT = 2.0


@dataclass(frozen=True)
class Style:
    """How the inputs of one training set were normalised."""

    name: str
    box: float  # side of the square the ink's longer side is fitted into, in output pixels
    centre: str  # "mass" (centre of mass) or "box" (bounding-box centre)
    width: float  # stroke width as a fraction of the drawing's longer side
    blur: float  # Gaussian blur radius in output pixels (0: none)


STYLES = {
    "mnist": Style("mnist", box=20.0, centre="mass", width=0.11, blur=0.0),
    "emnist": Style("emnist", box=24.0, centre="box", width=0.10, blur=0.5),
}


def get_style(style: str | Style) -> Style:
    """A Style from its name ('mnist', 'emnist') or itself."""
    if isinstance(style, Style):
        return style
    try:
        return STYLES[style]
    except KeyError:
        raise ValueError(f"unknown preprocessing style {style!r}; known: {sorted(STYLES)}") from None


def validate_strokes(strokes: object) -> list[np.ndarray]:
    """Check a drawing's shape and numbers; return one float64 (n, 2) array per stroke.

    Raises InvalidDrawing with a message a person can act on for anything that is not a
    bounded list of strokes of finite [x, y] points.
    """
    if not isinstance(strokes, (list, tuple)):
        raise InvalidDrawing("strokes must be a list of strokes, each a list of [x, y] points")
    if len(strokes) == 0:
        raise InvalidDrawing("the drawing is empty: draw something first", code="empty_drawing")
    if len(strokes) > MAX_STROKES:
        raise InvalidDrawing(
            f"too many strokes: {len(strokes)} (at most {MAX_STROKES})", code="too_many_strokes"
        )
    total = 0
    out: list[np.ndarray] = []
    for i, stroke in enumerate(strokes):
        if not isinstance(stroke, (list, tuple)):
            raise InvalidDrawing(f"stroke {i} must be a list of [x, y] points")
        total += len(stroke)
        if total > MAX_POINTS:
            raise InvalidDrawing(
                f"too many points: more than {MAX_POINTS} in all", code="too_many_points"
            )
        if len(stroke) == 0:
            continue
        for p in stroke:
            if (
                not isinstance(p, (list, tuple))
                or len(p) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
            ):
                raise InvalidDrawing(f"stroke {i} has a point that is not [x, y] numbers: {p!r:.40}")
        arr = np.asarray(stroke, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise InvalidDrawing(f"stroke {i} has a coordinate that is not a finite number")
        if np.any(np.abs(arr) > MAX_COORD):
            raise InvalidDrawing(
                f"stroke {i} has a coordinate beyond +-{MAX_COORD:g} pixels", code="out_of_range"
            )
        out.append(arr)
    if not out:
        raise InvalidDrawing("the drawing is empty: draw something first", code="empty_drawing")
    pts = np.concatenate(out)
    extent = pts.max(axis=0) - pts.min(axis=0)
    if float(extent.max()) < MIN_EXTENT:
        raise InvalidDrawing(
            "the drawing is a single dot: draw the whole character", code="drawing_too_small"
        )
    return out


def strokes_to_input(strokes: object, style: str | Style = "mnist") -> np.ndarray:
    """Render strokes (canvas pixels, y down) to a (28, 28) float32 model input."""
    st = get_style(style)
    arrays = validate_strokes(strokes)
    pts = np.concatenate(arrays)
    lo = pts.min(axis=0)
    extent = pts.max(axis=0) - lo
    longest = float(extent.max())
    k = SUPERSAMPLE
    # Map the drawing's longer side onto the style's box, leaving room for the pen's width.
    width = st.width * longest
    scale = (st.box * k) / (longest + width)
    pen = max(1.0, width * scale)
    hi = SIZE * k
    centre = (lo + extent / 2.0) * scale
    offset = np.array([hi / 2.0, hi / 2.0]) - centre
    img = Image.new("L", (hi, hi), 0)
    draw = ImageDraw.Draw(img)
    r = pen / 2.0
    for arr in arrays:
        xy = arr * scale + offset
        flat = [(float(x), float(y)) for x, y in xy]
        if len(flat) > 1:
            draw.line(flat, fill=255, width=max(1, int(round(pen))), joint="curve")
        for x, y in (flat[0], flat[-1]) if len(flat) > 1 else flat:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return _finish(np.asarray(img, dtype=np.float32) / 255.0, st)


def image_to_input(gray: np.ndarray, style: str | Style = "mnist") -> np.ndarray:
    """Normalise a greyscale ink image (white ink on black, any size, 0..1) to a (28, 28) input.

    Crops to the ink, fits its longer side into the style's box and centres it, the same way
    strokes are, so a canvas PNG and its strokes give nearly the same input.
    """
    st = get_style(style)
    a = np.asarray(gray, dtype=np.float32)
    if a.ndim != 2 or a.size == 0:
        raise InvalidDrawing("image must be a 2-D greyscale array")
    if not np.all(np.isfinite(a)):
        raise InvalidDrawing("image has values that are not finite numbers")
    ink = a > 0.1
    if not ink.any():
        raise InvalidDrawing("the drawing is empty: draw something first", code="empty_drawing")
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    crop = a[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = crop.shape
    if max(h, w) < MIN_EXTENT:
        raise InvalidDrawing(
            "the drawing is a single dot: draw the whole character", code="drawing_too_small"
        )
    k = SUPERSAMPLE
    hi = SIZE * k
    scale = (st.box * k) / max(h, w)
    nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    src = Image.fromarray(np.clip(crop * 255.0, 0, 255).astype(np.uint8), mode="L")
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    fitted = np.asarray(src.resize((nw, nh), resample), dtype=np.float32) / 255.0
    canvas = np.zeros((hi, hi), dtype=np.float32)
    top, left = (hi - nh) // 2, (hi - nw) // 2
    canvas[top : top + nh, left : left + nw] = fitted
    return _finish(canvas, st)


def _finish(hires: np.ndarray, st: Style) -> np.ndarray:
    """Centre a supersampled, box-fitted drawing, blur if the style asks, and average it down."""
    k = SUPERSAMPLE
    hi = hires.shape[0]
    if st.centre == "mass":
        total = float(hires.sum())
        if total <= 0:
            raise InvalidDrawing("the drawing is empty: draw something first", code="empty_drawing")
        ys, xs = np.indices(hires.shape, dtype=np.float32)
        cy = float((ys * hires).sum() / total)
        cx = float((xs * hires).sum() / total)
        # Centre of mass goes to the centre of the field (between pixels 13 and 14 at 28).
        dy = int(round((hi - 1) / 2.0 - cy))
        dx = int(round((hi - 1) / 2.0 - cx))
        hires = _shift(hires, dy, dx)
    if st.blur > 0:
        img = Image.fromarray(np.clip(hires * 255.0, 0, 255).astype(np.uint8), mode="L")
        img = img.filter(ImageFilter.GaussianBlur(radius=st.blur * k))
        hires = np.asarray(img, dtype=np.float32) / 255.0
    out = hires.reshape(SIZE, k, SIZE, k).mean(axis=(1, 3))
    peak = float(out.max())
    if peak <= 0:
        raise InvalidDrawing("the drawing is empty: draw something first", code="empty_drawing")
    # Scanned training images use the full range: the darkest ink is 1.0.
    return np.clip(out / peak, 0.0, 1.0).astype(np.float32)


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate an image by whole pixels, filling with black (no wrap-around)."""
    h, w = a.shape
    out = np.zeros_like(a)
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    if abs(dy) < h and abs(dx) < w:
        out[yd, xd] = a[ys, xs]
    return out


def decode_png(data: str | bytes) -> np.ndarray:
    """Decode a canvas image (base64, optionally a data: URL, or raw bytes) to white-on-black 0..1.

    The paper's canvas is black ink on a white (or transparent) background; ink is found as
    whatever differs from the background, so either polarity and an alpha channel work.
    """
    raw: bytes
    if isinstance(data, str):
        text = data.split(",", 1)[1] if data.startswith("data:") else data
        if len(text) > MAX_PNG_BYTES * 4 // 3 + 4:
            raise InvalidDrawing("image is too large", code="too_large")
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidDrawing("image is not valid base64", code="invalid_image") from None
    elif isinstance(data, (bytes, bytearray)):
        raw = bytes(data)
    else:
        raise InvalidDrawing("image must be a base64 string", code="invalid_image")
    if len(raw) > MAX_PNG_BYTES:
        raise InvalidDrawing("image is too large", code="too_large")
    try:
        with Image.open(io.BytesIO(raw)) as im:
            if im.width * im.height > MAX_PNG_PIXELS:
                raise InvalidDrawing("image has too many pixels", code="too_large")
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
                lum = np.asarray(rgba.convert("L"), dtype=np.float32) / 255.0
                if alpha.min() < 0.99:
                    # Transparent background: ink is opaque wherever it is drawn.
                    lum = 1.0 - (1.0 - lum) * alpha
            else:
                lum = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except InvalidDrawing:
        raise
    except (OSError, ValueError, Image.DecompressionBombError):
        raise InvalidDrawing("image is not a readable PNG", code="invalid_image") from None
    # Background is the most common value along the border.
    border = np.concatenate([lum[0], lum[-1], lum[:, 0], lum[:, -1]])
    background = float(np.median(border))
    return np.abs(lum - background).astype(np.float32)


def png_to_input(data: str | bytes, style: str | Style = "mnist") -> np.ndarray:
    """A canvas PNG (as the paper's endpoints send it) -> (28, 28) model input."""
    return image_to_input(decode_png(data), style)


def strokes_to_png(
    strokes: Sequence[Sequence[Sequence[float]]], size: int = 280, width: float | None = None
) -> bytes:
    """Draw strokes black on white on a square canvas as the paper's page does; PNG bytes."""
    arrays = validate_strokes(strokes)
    img = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(img)
    if width is None:
        pts = np.concatenate(arrays)
        width = max(1.0, float((pts.max(axis=0) - pts.min(axis=0)).max()) * STYLES["mnist"].width)
    r = width / 2.0
    for arr in arrays:
        flat = [(float(x), float(y)) for x, y in arr]
        if len(flat) > 1:
            draw.line(flat, fill=0, width=max(1, int(round(width))), joint="curve")
        for x, y in (flat[0], flat[-1]) if len(flat) > 1 else flat:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=0)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def stroke_width_px(longest: float, style: str | Style = "mnist") -> float:
    """The pen width (canvas pixels) the renderer uses for a drawing whose longer side is given."""
    return get_style(style).width * longest


__all__ = [
    "SIZE",
    "STYLES",
    "Style",
    "decode_png",
    "get_style",
    "image_to_input",
    "png_to_input",
    "stroke_width_px",
    "strokes_to_input",
    "strokes_to_png",
    "validate_strokes",
]

