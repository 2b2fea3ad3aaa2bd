"""Label sets of the two models, and how a label typed by a person maps onto them."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidLabel

# ByMerge merges the upper- and lower-case forms of these letters into the upper-case class.
MERGED_LOWER = frozenset("cijklmopsuvwxyz")
# Lower-case letters that keep a class of their own in ByMerge.
DISTINCT_LOWER = ("a", "b", "d", "e", "f", "g", "h", "n", "q", "r", "t")

DIGIT_LABELS: tuple[str, ...] = tuple("0123456789")
CHARACTER_LABELS: tuple[str, ...] = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + DISTINCT_LOWER
# ByMerge class index -> label, in the order of emnist-bymerge-mapping.txt (classes 0-46).
BYMERGE_LABELS: tuple[str, ...] = DIGIT_LABELS + CHARACTER_LABELS
# The character model uses ByMerge classes 10-46.
BYMERGE_LETTER_OFFSET = 10


@dataclass(frozen=True)
class LabelSet:
    """An ordered list of labels, as a model emits them, with lookup both ways."""

    name: str
    labels: tuple[str, ...]
    # Groups of classes one shape belongs to alike, which no model can tell apart by shape.
    same_shape: tuple[tuple[str, ...], ...] = ()

    def __len__(self) -> int:
        return len(self.labels)

    def index(self, label: str) -> int:
        """Index of a label after canonicalisation; raises InvalidLabel if it is not in the set."""
        canon = self.canonical(label)
        return self.labels.index(canon)

    def canonical(self, label: object) -> str:
        """The class a typed label belongs to ('o' -> 'O' for letters); InvalidLabel otherwise."""
        if not isinstance(label, str) or len(label) != 1:
            raise InvalidLabel(f"label must be a single character from {self.name}: got {label!r}")
        if label in self.labels:
            return label
        if label.isalpha():
            up, low = label.upper(), label.lower()
            if low in MERGED_LOWER and up in self.labels:
                return up
            # An upper-case letter whose only class here is lower-case does not exist in ByMerge;
            # a lower-case letter typed for a merged class maps up; nothing else is guessed.
        raise InvalidLabel(
            f"label {label!r} is not one of the {len(self.labels)} {self.name} classes: "
            + " ".join(self.labels)
        )


DIGITS = LabelSet("digits", DIGIT_LABELS)
# A single vertical stroke is a capital I or a lower-case l, which ByMerge files under L.
CHARACTERS = LabelSet("characters", CHARACTER_LABELS, same_shape=(("I", "L"),))

LABEL_SETS = {"digit": DIGITS, "char": CHARACTERS}


def label_set_for_mode(mode: object) -> LabelSet:
    """The label set of a wire ``mode`` ('digit' or 'char')."""
    try:
        return LABEL_SETS[mode]  # type: ignore[index]
    except (KeyError, TypeError):
        raise InvalidLabel(
            f"mode must be 'digit' or 'char': got {mode!r}", code="invalid_mode"
        ) from None
