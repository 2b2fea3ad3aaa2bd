"""Strokes and canvas PNGs -> 28x28 model inputs: invariances, pen width, refusals, PNG parity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwrcore.errors import InvalidDrawing
from hwrcore.preprocess import (
    MAX_COORD,
    MAX_POINTS,
    MAX_STROKES,
    STYLES,
    Style,
    image_to_input,
    png_to_input,
    strokes_to_input,
    strokes_to_png,
    validate_strokes,
)
from trainer.data import load_pendigits
from trainer.evaluate import strokes_on_canvas

# A hand-made '4': an open angle and a long down stroke, two strokes as a finger draws them.
FOUR = [
    [[120.0, 40.0], [80.0, 150.0], [190.0, 150.0]],
    [[160.0, 70.0], [160.0, 130.0], [158.0, 200.0], [156.0, 250.0]],
]


def _ink_box(img: np.ndarray, level: float = 0.05) -> tuple[int, int, int, int]:
    rows = np.flatnonzero((img > level).any(axis=1))
    cols = np.flatnonzero((img > level).any(axis=0))
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


@pytest.mark.parametrize("style", ["mnist", "emnist"])
def test_output_is_a_normalised_white_on_black_image(style: str) -> None:
    img = strokes_to_input(FOUR, style)
    assert img.shape == (28, 28) and img.dtype == np.float32
    assert img.max() == pytest.approx(1.0) and img.min() >= 0.0
    # Corners are background; the ink is anti-aliased (grey levels, not only 0 and 1).
    assert img[0, 0] == 0.0 and img[-1, -1] == 0.0
    grey = ((img > 0.05) & (img < 0.95)).sum()
    assert grey >= 10


def test_mnist_style_fits_a_20_box_and_centres_the_mass() -> None:
    img = strokes_to_input(FOUR, "mnist")
    top, bottom, left, right = _ink_box(img)
    assert 17 <= bottom - top + 1 <= 21 and right - left + 1 <= 21
    ys, xs = np.indices(img.shape)
    cy, cx = (ys * img).sum() / img.sum(), (xs * img).sum() / img.sum()
    # Centre of mass within a quarter pixel (the supersampled shift step) of the field's centre.
    assert abs(cy - 13.5) <= 0.3 and abs(cx - 13.5) <= 0.3


def test_emnist_style_fits_a_24_box_centred_by_its_bounds() -> None:
    img = strokes_to_input(FOUR, "emnist")
    # The blur spreads faint ink a pixel further; above 0.4 the ink fills the 24-pixel box.
    top, bottom, left, right = _ink_box(img, 0.4)
    assert 23 <= bottom - top + 1 <= 25
    assert abs((top + bottom) / 2 - 13.5) <= 1.0 and abs((left + right) / 2 - 13.5) <= 1.0


@pytest.mark.parametrize("style", ["mnist", "emnist"])
def test_moved_and_scaled_drawing_gives_nearly_the_same_input(style: str) -> None:
    base = strokes_to_input(FOUR, style)
    for scale, dx, dy in [(1.0, 37.3, -12.1), (0.35, 5.0, 9.0), (2.6, -80.0, 300.0)]:
        moved = [[[x * scale + dx, y * scale + dy] for x, y in s] for s in FOUR]
        diff = np.abs(strokes_to_input(moved, style) - base)
        assert diff.mean() < 0.01, (scale, dx, dy, diff.mean())


def test_a_different_drawing_is_not_nearly_the_same() -> None:
    """The invariance threshold above is tight enough to tell two drawings apart."""
    seven = [[[60.0, 40.0], [200.0, 40.0], [110.0, 250.0]]]
    diff = np.abs(strokes_to_input(seven) - strokes_to_input(FOUR))
    assert diff.mean() > 0.05


def test_thin_and_thick_pens() -> None:
    base = STYLES["mnist"]
    thin = Style(base.name, base.box, base.centre, 0.04, base.blur)
    thick = Style(base.name, base.box, base.centre, 0.22, base.blur)
    a, b = strokes_to_input(FOUR, thin), strokes_to_input(FOUR, thick)
    assert a.max() == pytest.approx(1.0) and b.max() == pytest.approx(1.0)
    # A thicker pen puts much more ink down, and both still fit the 20x20 box.
    assert b.sum() > 2.0 * a.sum()
    for img in (a, b):
        top, bottom, left, right = _ink_box(img)
        assert bottom - top + 1 <= 21 and right - left + 1 <= 21


def _code(strokes: object) -> str:
    with pytest.raises(InvalidDrawing) as info:
        strokes_to_input(strokes)
    return info.value.code


def test_empty_drawing_and_single_dot_have_distinct_codes() -> None:
    assert _code([]) == "empty_drawing"
    assert _code([[], []]) == "empty_drawing"
    assert _code([[[5.0, 5.0]]]) == "drawing_too_small"
    assert _code([[[5.0, 5.0], [5.5, 5.2]], [[6.0, 5.0]]]) == "drawing_too_small"
    with pytest.raises(InvalidDrawing, match="empty"):
        strokes_to_input([])
    with pytest.raises(InvalidDrawing, match="dot"):
        strokes_to_input([[[5, 5]]])


@pytest.mark.parametrize(
    "strokes, code",
    [
        ([[[0, 0], [float("nan"), 3]]], "invalid_drawing"),
        ([[[0, 0], [float("inf"), 3]]], "invalid_drawing"),
        ([[[0, 0], [3, -math.inf]]], "invalid_drawing"),
        ([[[0, 0], [1e9, 3]]], "out_of_range"),
        ([[[0, 0], [3, -MAX_COORD * 1.01]]], "out_of_range"),
        ([[[0, 0], [10**400, 3]]], "out_of_range"),
        ([[[0, 0], [1, 1]]] * (MAX_STROKES + 1), "too_many_strokes"),
        ([[[i, i] for i in range(MAX_POINTS + 1)]], "too_many_points"),
        ([[[i, i] for i in range(MAX_POINTS // 2 + 1)]] * 2, "too_many_points"),
        ([[["1", "2"], [3, 4]]], "invalid_drawing"),
        ([[[1, 2], [3, None]]], "invalid_drawing"),
        ([[[1, 2], [True, 4]]], "invalid_drawing"),
        ([[[1, 2], [3, 4, 5]]], "invalid_drawing"),
        ([[[1, 2], [3]]], "invalid_drawing"),
        ([[[1, 2], {"x": 3, "y": 4}]], "invalid_drawing"),
        ([[[1, 2], "34"]], "invalid_drawing"),
        ([[[1, 2], [[3, 4], [5, 6]]]], "invalid_drawing"),
        ([[1, 2, 3, 4]], "invalid_drawing"),
        ([{"points": [[1, 2]]}], "invalid_drawing"),
        ("M 1 2 L 3 4", "invalid_drawing"),
        (None, "invalid_drawing"),
        ({"strokes": []}, "invalid_drawing"),
    ],
)
def test_bad_drawings_are_refused_with_a_code(strokes: object, code: str) -> None:
    assert _code(strokes) == code


def test_validate_returns_one_float_array_per_non_empty_stroke() -> None:
    arrays = validate_strokes([[[1, 2], [3, 4]], [], ((5.5, 6), (7, 8), (9, 10))])
    assert [a.shape for a in arrays] == [(2, 2), (3, 2)]
    assert all(a.dtype == np.float64 for a in arrays)
    np.testing.assert_array_equal(arrays[1][0], [5.5, 6.0])


def test_unknown_style_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown preprocessing style"):
        strokes_to_input(FOUR, "usps")


@pytest.fixture(scope="module")
def pen_samples(data_dir) -> list:
    """Every 70th pendigits test drawing (50 drawings, all ten digits, 11 of the 14 writers)."""
    return load_pendigits(data_dir, "test")[::70]


@pytest.mark.parametrize("style", ["mnist", "emnist"])
def test_canvas_png_gives_the_same_input_as_its_strokes(pen_samples, style: str) -> None:
    """A pupil's drawing sent as a 280x280 canvas PNG reads like the same drawing sent as strokes.

    Tolerance: mean absolute difference per image <= 0.035, and <= 0.02 on average over the
    samples. The two paths differ only in where anti-aliasing happens (the PNG is drawn at
    canvas resolution and resampled; strokes are drawn at 4x the output), which measures at
    about 0.013 on average and 0.03 at worst on pendigits. Two different drawings of the same
    digit differ by about 0.11 on average (0.02 at the closest), two different digits by 0.15.
    """
    diffs = []
    for s in pen_samples:
        strokes = strokes_on_canvas(s.strokes)
        from_strokes = strokes_to_input(strokes, style)
        from_png = png_to_input(strokes_to_png(strokes, size=280), style)
        diffs.append(float(np.abs(from_strokes - from_png).mean()))
    assert len(diffs) == 50
    assert max(diffs) <= 0.035, max(diffs)
    assert float(np.mean(diffs)) <= 0.02, np.mean(diffs)


def test_png_accepts_base64_and_data_urls_of_either_polarity() -> None:
    import base64
    import io

    from PIL import Image

    png = strokes_to_png(FOUR)
    ref = png_to_input(png)
    b64 = base64.b64encode(png).decode()
    np.testing.assert_allclose(png_to_input(b64), ref)
    np.testing.assert_allclose(png_to_input("data:image/png;base64," + b64), ref)
    # White ink on black reads the same as black ink on white.
    inverted = Image.eval(Image.open(io.BytesIO(png)), lambda v: 255 - v)
    buf = io.BytesIO()
    inverted.save(buf, format="PNG")
    assert np.abs(png_to_input(buf.getvalue()) - ref).max() < 0.02


@pytest.mark.parametrize(
    "data, code",
    [
        ("not base64 at all!", "invalid_image"),
        (b"\x89PNG\r\n\x1a\n but not really", "invalid_image"),
        (12345, "invalid_image"),
    ],
)
def test_bad_pngs_are_refused(data: object, code: str) -> None:
    with pytest.raises(InvalidDrawing) as info:
        png_to_input(data)  # type: ignore[arg-type]
    assert info.value.code == code


def test_blank_canvas_png_is_an_empty_drawing() -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (280, 280), 255).save(buf, format="PNG")
    with pytest.raises(InvalidDrawing) as info:
        png_to_input(buf.getvalue())
    assert info.value.code == "empty_drawing"


def test_image_to_input_refuses_non_finite_and_wrong_shapes() -> None:
    with pytest.raises(InvalidDrawing):
        image_to_input(np.full((10, 10), np.nan))
    with pytest.raises(InvalidDrawing):
        image_to_input(np.zeros((2, 3, 4)))


_number = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-500, max_value=500),
    st.integers(),
    st.integers(min_value=-300, max_value=300),
)
_junk = st.one_of(st.none(), st.booleans(), st.text(max_size=3), st.binary(max_size=3))
_point = st.one_of(
    st.lists(_number, min_size=2, max_size=2),
    st.tuples(_number, _number),
    st.lists(st.one_of(_number, _junk), min_size=0, max_size=3),
    _junk,
)
_stroke = st.one_of(st.lists(_point, max_size=12), _junk, st.tuples(_point, _point))
_drawing = st.one_of(
    st.lists(_stroke, max_size=6), _junk, st.dictionaries(st.text(max_size=2), _stroke)
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drawing=_drawing, style=st.sampled_from(["mnist", "emnist"]))
def test_any_input_gives_an_image_or_invalid_drawing(drawing: object, style: str) -> None:
    """Whatever arrives on the wire, the result is a valid input or InvalidDrawing, never a crash."""
    try:
        img = strokes_to_input(drawing, style)
    except InvalidDrawing as exc:
        assert exc.code and exc.message
        return
    assert img.shape == (28, 28) and img.dtype == np.float32
    assert np.all(np.isfinite(img)) and img.min() >= 0.0
    assert img.max() == pytest.approx(1.0)


_coord = st.floats(min_value=-2000, max_value=2000, allow_nan=False)


@settings(max_examples=100, deadline=None)
@given(
    strokes=st.lists(
        st.lists(st.tuples(_coord, _coord).map(list), min_size=1, max_size=40),
        min_size=1,
        max_size=5,
    )
)
def test_well_formed_strokes_render_unless_they_are_a_dot(strokes: list) -> None:
    pts = np.array([p for s in strokes for p in s])
    extent = float((pts.max(axis=0) - pts.min(axis=0)).max())
    try:
        img = strokes_to_input(strokes)
    except InvalidDrawing as exc:
        assert exc.code == "drawing_too_small" and extent < 2.0
        return
    assert extent >= 2.0
    assert img.max() == pytest.approx(1.0) and float(img.sum()) > 1.0
