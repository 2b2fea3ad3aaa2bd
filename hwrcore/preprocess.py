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
import functools
import io
import struct
import threading
from collections.abc import Sequence
from itertools import chain

import numpy as np
from PIL import Image, ImageDraw

from .errors import InvalidDrawing
from .styles import STYLES, Style, get_style

SIZE = 28
SUPERSAMPLE = 4

# Bounds on what a drawing may be: a finger on a canvas is nowhere near these.
MAX_STROKES = 64
MAX_POINTS = 4096
MAX_COORD = 100_000.0
MAX_PNG_BYTES = 2_000_000
# A canvas PNG is a few hundred pixels a side (840 at three device pixels per CSS pixel).
MAX_PNG_SIDE = 2048
MAX_PNG_PIXELS = 1 << 20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Decoded images are reduced to at most this many pixels a side before any float copy.
WORK_SIDE = 512
# Large images decoded at once (a semaphore: memory, not speed, is what it bounds).
DECODE_SLOTS = 2
_DECODE_SLOTS = threading.BoundedSemaphore(DECODE_SLOTS)
# A drawing whose ink spans less than this many canvas pixels in both directions is a dot.
MIN_EXTENT = 2.0


def validate_strokes(strokes: object) -> list[np.ndarray]:
    """Check a drawing's shape and numbers; return one float64 (n, 2) array per stroke.

    Raises InvalidDrawing with a message a person can act on for anything that is not a
    bounded list of strokes of finite [x, y] points.
    """
    return _checked(strokes)[0]


_Checked = tuple[list[np.ndarray], np.ndarray, tuple[float, float], tuple[float, float]]


def _checked(strokes: object) -> _Checked:
    """The validated strokes, all their points in one array, and the points' (x, y) min and max."""
    fast = _checked_fast(strokes)
    if fast is not None:
        return fast
    arrays = _validate_each(strokes)
    pts = np.concatenate(arrays)
    x0, y0 = pts.min(axis=0).tolist()
    x1, y1 = pts.max(axis=0).tolist()
    return arrays, pts, (x0, y0), (x1, y1)


def _checked_fast(strokes: object) -> _Checked | None:
    """The common case, a well-formed drawing, checked with a few C-level passes.

    Returns None at the first sign of trouble, so that ``_validate_each`` finds the problem
    and raises exactly the error it always has.
    """
    if type(strokes) not in _SEQUENCE_TYPES or not 0 < len(strokes) <= MAX_STROKES:  # type: ignore[arg-type]
        return None
    arrays: list[np.ndarray] = []
    total = 0
    for stroke in strokes:  # type: ignore[union-attr]
        if type(stroke) not in _SEQUENCE_TYPES:
            return None
        total += len(stroke)
        if total > MAX_POINTS:
            return None
        if not stroke:
            continue
        if not (
            set(map(type, stroke)) <= _SEQUENCE_TYPES
            and set(map(len, stroke)) == {2}
            and set(map(type, chain.from_iterable(stroke))) <= _NUMBER_TYPES
        ):
            return None
        try:
            arrays.append(np.asarray(stroke, dtype=np.float64))
        except OverflowError:
            return None
    if not arrays:
        return None
    pts = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
    x0, y0 = pts.min(axis=0).tolist()
    x1, y1 = pts.max(axis=0).tolist()
    # NaN fails every comparison, so it also falls through to the full check.
    if not (-MAX_COORD <= min(x0, y0) and max(x1, y1) <= MAX_COORD):
        return None
    if not max(x1 - x0, y1 - y0) >= MIN_EXTENT:
        return None
    return arrays, pts, (x0, y0), (x1, y1)


_SEQUENCE_TYPES = frozenset((list, tuple))
_NUMBER_TYPES = frozenset((int, float))


def _validate_each(strokes: object) -> list[np.ndarray]:
    """Check a drawing point by point, raising InvalidDrawing at the first problem found."""
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
                raise InvalidDrawing(
                    f"stroke {i} has a point that is not [x, y] numbers: {p!r:.40}"
                )
        out_of_range = InvalidDrawing(
            f"stroke {i} has a coordinate beyond +-{MAX_COORD:g} pixels", code="out_of_range"
        )
        try:
            arr = np.asarray(stroke, dtype=np.float64)
        except OverflowError:  # an integer too large for any float
            raise out_of_range from None
        if not np.all(np.isfinite(arr)):
            raise InvalidDrawing(f"stroke {i} has a coordinate that is not a finite number")
        if np.any(np.abs(arr) > MAX_COORD):
            raise out_of_range
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
    arrays, pts, (x0, y0), (x1, y1) = _checked(strokes)
    longest = max(x1 - x0, y1 - y0)
    k = SUPERSAMPLE
    # Map the drawing's longer side onto the style's box, leaving room for the pen's width.
    width = st.width * longest
    scale = (st.box * k) / (longest + width)
    pen = max(1.0, width * scale)
    hi = SIZE * k
    # Centre the drawing's bounding box in the supersampled field.
    xy = pts * scale
    xy += (hi / 2.0 - (x0 + x1) / 2.0 * scale, hi / 2.0 - (y0 + y1) / 2.0 * scale)
    img = Image.new("L", (hi, hi), 0)
    _draw_strokes(ImageDraw.Draw(img), xy, [len(a) for a in arrays], pen, 255)
    return _finish(img, st)


# A joint where a stroke turns by less than this angle (tangent 0.14: 8 degrees) leaves a
# gap of a sliver of a pixel, too small to matter; sharper joints get a round joint.
_JOINT_TAN = 0.14


def _draw_strokes(
    draw: ImageDraw.ImageDraw, xy: np.ndarray, lengths: list[int], pen: float, fill: int
) -> None:
    """Draw strokes (their points concatenated in ``xy``) as polylines with round ends and joints.

    PIL's own round joints (``joint="curve"``) cost a Python call per point; here each polyline
    is one C call, and a disc of PIL's joint radius (width / 2 - 1) is added only where a stroke
    turns enough to leave a gap. Ends get a disc as wide as the pen.
    """
    flat = xy.ravel().tolist()
    width = max(1, int(round(pen)))
    joint = np.zeros(len(xy), dtype=bool)
    if len(xy) > 2 and width > 4:
        # The product of a step (as a complex number) and the conjugate of the step before
        # has the turning angle as its argument. A repeated point counts as a joint.
        z = np.ascontiguousarray(xy).view(np.complex128).ravel()
        step = z[1:] - z[:-1]
        turn = step[1:] * step[:-1].conj()
        joint[1:-1] = ~(np.abs(turn.imag) < _JOINT_TAN * turn.real)
    ends: list[int] = []
    start = 0
    for n in lengths:
        if n > 1:
            draw.line(flat[2 * start : 2 * (start + n)], fill=fill, width=width)
        ends += (start, start + n - 1)
        start += n
    # Joints that span two strokes fall on stroke ends, which get the larger disc.
    joint[ends] = False
    for r, points in ((pen / 2.0, xy[ends]), (width / 2.0 - 1.0, xy[joint])):
        for x, y in points.tolist():
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)


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
    canvas = Image.new("L", (hi, hi), 0)
    canvas.paste(src.resize((nw, nh), resample), ((hi - nw) // 2, (hi - nh) // 2))
    return _finish(canvas, st)


def _finish(img: Image.Image, st: Style) -> np.ndarray:
    """Centre a supersampled, box-fitted drawing, blur if the style asks, and average it down.

    Shift, blur and block averaging are linear, so they are applied as one (28, hi) matrix on
    each side of the image: out = R_y @ image @ R_x.T.
    """
    hi = img.width
    x = np.asarray(img, dtype=np.float32)
    dy = dx = 0
    if st.centre == "mass":
        # Zeroth and first moments in one product: [[sum, sum*col], [sum*row, .]].
        m = _moment_matrix(hi)
        (total, mx), (my, _) = (m @ x @ m.T).tolist()
        if total <= 0:
            raise InvalidDrawing("the drawing is empty: draw something first", code="empty_drawing")
        # Centre of mass goes to the centre of the field (between pixels 13 and 14 at 28).
        dy = int(round((hi - 1) / 2.0 - my / total))
        dx = int(round((hi - 1) / 2.0 - mx / total))
    padded = _reduce_matrix(hi, SUPERSAMPLE, st.blur * SUPERSAMPLE)
    ry = padded[:, hi + dy : 2 * hi + dy]
    rx = padded[:, hi + dx : 2 * hi + dx]
    out = ry @ x @ rx.T
    peak = float(out.max())
    if peak <= 0:
        raise InvalidDrawing("the drawing is empty: draw something first", code="empty_drawing")
    # Scanned training images use the full range: the darkest ink is 1.0.
    out /= peak
    return out


@functools.lru_cache(maxsize=4)
def _moment_matrix(hi: int) -> np.ndarray:
    """Rows of ones and of pixel indices: m @ image @ m.T holds the image's mass and moments."""
    m = np.stack((np.ones(hi), np.arange(hi))).astype(np.float32)
    m.flags.writeable = False
    return m


@functools.lru_cache(maxsize=8)
def _reduce_matrix(hi: int, k: int, sigma: float) -> np.ndarray:
    """A (hi/k, 3*hi) float32 matrix: Gaussian blur (sigma in input pixels) then k-block means.

    Its middle third maps an unshifted image; the ``hi`` columns from ``hi + d`` map the image
    shifted by ``d`` pixels (down for rows, right for columns), filling with black.
    """
    n = hi // k
    avg = np.zeros((n, hi), dtype=np.float64)
    for i in range(n):
        avg[i, i * k : (i + 1) * k] = 1.0 / k
    if sigma > 0:
        d = np.arange(hi)[:, None] - np.arange(hi)[None, :]
        blur = np.exp(-0.5 * (d / sigma) ** 2)
        blur /= blur.sum(axis=1, keepdims=True)
        avg = avg @ blur
    padded = np.zeros((n, 3 * hi), dtype=np.float32)
    padded[:, hi : 2 * hi] = avg
    padded.flags.writeable = False
    return padded


def png_size(raw: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; InvalidDrawing if ``raw`` is not a PNG."""
    if len(raw) < 33 or raw[:8] != PNG_SIGNATURE or raw[12:16] != b"IHDR":
        raise InvalidDrawing("image is not a PNG", code="invalid_image")
    width, height = struct.unpack(">II", raw[16:24])
    return width, height


def _png_bytes(data: str | bytes) -> bytes:
    """The PNG bytes of a base64 string (optionally a data: URL) or of raw bytes, size-checked."""
    raw: bytes
    if isinstance(data, str):
        text = data
        if data.startswith("data:"):
            _, comma, text = data.partition(",")
            if not comma:
                raise InvalidDrawing("image is a data: URL without data", code="invalid_image")
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
    return raw


def decode_png(data: str | bytes) -> np.ndarray:
    """Decode a canvas PNG (base64, optionally a data: URL, or raw bytes) to white-on-black 0..1.

    The paper's canvas is black ink on a white (or transparent) background; ink is found as
    whatever differs from the background, so either polarity and an alpha channel work.

    Only PNG is read, and its size is checked from the IHDR chunk before a pixel is decoded.
    Memory per image is bounded: at most MAX_PNG_PIXELS x 4 bytes decoded (4 MiB), reduced at
    once to at most WORK_SIDE pixels a side (1 MiB as RGBA), and only that small copy becomes
    float arrays (5 of at most 1 MiB): about 10 MiB in all, and at most DECODE_SLOTS images
    are decoded at once, so a burst of large PNGs costs at most about 20 MiB together.
    """
    raw = _png_bytes(data)
    width, height = png_size(raw)
    if width < 1 or height < 1:
        raise InvalidDrawing("image is not a readable PNG", code="invalid_image")
    if width > MAX_PNG_SIDE or height > MAX_PNG_SIDE or width * height > MAX_PNG_PIXELS:
        raise InvalidDrawing(
            f"image is {width}x{height} pixels: at most {MAX_PNG_SIDE} a side and "
            f"{MAX_PNG_PIXELS} in all",
            code="too_large",
        )
    with _DECODE_SLOTS:
        try:
            lum = _luminance(raw)
        except InvalidDrawing:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            raise InvalidDrawing("image is not a readable PNG", code="invalid_image") from None
    # Background is the most common value along the border.
    border = np.concatenate([lum[0], lum[-1], lum[:, 0], lum[:, -1]])
    background = float(np.median(border))
    return np.abs(lum - background).astype(np.float32)


def _luminance(raw: bytes) -> np.ndarray:
    """A PNG as float32 luminance 0..1 (transparent pixels read as white), at most WORK_SIDE a side."""
    with Image.open(io.BytesIO(raw), formats=["PNG"]) as im:
        if im.format != "PNG" or im.width * im.height > MAX_PNG_PIXELS:
            raise InvalidDrawing("image is not a readable PNG", code="invalid_image")
        im.load()
        transparent = im.mode in ("RGBA", "LA", "PA") or (
            im.mode == "P" and "transparency" in im.info
        )
        # Reduced first where the mode allows it, so no full-size copy is made.
        full = im if im.mode in ("L", "LA", "RGB", "RGBA") else im.convert("RGBA")
        factor = -(-max(full.width, full.height) // WORK_SIDE)
        small = (full.reduce(factor) if factor > 1 else full).convert(
            "RGBA" if transparent else "L"
        )
        del full
    if transparent:
        alpha = np.asarray(small.getchannel("A"), dtype=np.float32) / 255.0
        lum = np.asarray(small.convert("L"), dtype=np.float32) / 255.0
        if alpha.min() < 0.99:
            # Transparent background: ink is opaque wherever it is drawn.
            lum = 1.0 - (1.0 - lum) * alpha
        return lum
    return np.asarray(small, dtype=np.float32) / 255.0


def png_to_input(data: str | bytes, style: str | Style = "mnist") -> np.ndarray:
    """A canvas PNG (as the paper's endpoints send it) -> (28, 28) model input."""
    return image_to_input(decode_png(data), style)


def strokes_to_png(
    strokes: Sequence[Sequence[Sequence[float]]], size: int = 280, width: float | None = None
) -> bytes:
    """Draw strokes black on white on a square canvas as the paper's page does; PNG bytes."""
    arrays, pts, (x0, y0), (x1, y1) = _checked(strokes)
    img = Image.new("L", (size, size), 255)
    if width is None:
        width = max(1.0, max(x1 - x0, y1 - y0) * STYLES["mnist"].width)
    _draw_strokes(ImageDraw.Draw(img), pts, [len(a) for a in arrays], width, 0)
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
    "png_size",
    "get_style",
    "image_to_input",
    "png_to_input",
    "stroke_width_px",
    "strokes_to_input",
    "strokes_to_png",
    "validate_strokes",
]
