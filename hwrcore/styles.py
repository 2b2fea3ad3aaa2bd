"""How each training set's images were normalised: the styles preprocessing renders drawings in.

Kept apart from the renderer (no numpy, no pillow) so that reading a manifest stays light.
"""

from __future__ import annotations

from dataclasses import dataclass


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
        raise ValueError(
            f"unknown preprocessing style {style!r}; known: {sorted(STYLES)}"
        ) from None
