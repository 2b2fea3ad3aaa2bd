"""Label sets of the two models and how typed labels map onto their classes."""

from __future__ import annotations

import pytest

from hwrcore.errors import InvalidLabel
from hwrcore.labels import (
    BYMERGE_LABELS,
    BYMERGE_LETTER_OFFSET,
    CHARACTERS,
    DIGITS,
    MERGED_LOWER,
    label_set_for_mode,
)


def test_digit_labels_are_0_to_9_in_order() -> None:
    assert DIGITS.labels == tuple("0123456789")
    assert len(DIGITS) == 10
    assert [DIGITS.index(c) for c in "0123456789"] == list(range(10))


def test_character_labels_are_the_37_bymerge_letter_classes_in_order() -> None:
    expected = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + tuple("abdefghnqrt")
    assert CHARACTERS.labels == expected
    assert len(CHARACTERS) == 37
    # Output i of the character model is ByMerge class 10 + i.
    assert BYMERGE_LABELS[BYMERGE_LETTER_OFFSET:] == CHARACTERS.labels
    assert BYMERGE_LABELS[:BYMERGE_LETTER_OFFSET] == DIGITS.labels
    assert len(BYMERGE_LABELS) == 47


def test_merged_letters_map_lower_case_onto_upper_case() -> None:
    assert MERGED_LOWER == frozenset("cijklmopsuvwxyz")
    assert CHARACTERS.canonical("c") == "C"
    assert CHARACTERS.canonical("o") == "O"
    assert CHARACTERS.index("o") == CHARACTERS.index("O") == 14
    for low in MERGED_LOWER:
        assert CHARACTERS.canonical(low) == low.upper()


def test_letters_with_their_own_lower_case_class_keep_their_case() -> None:
    assert CHARACTERS.canonical("a") == "a"
    assert CHARACTERS.canonical("A") == "A"
    assert CHARACTERS.index("a") == 26 and CHARACTERS.index("A") == 0
    for low in "abdefghnqrt":
        assert CHARACTERS.canonical(low) == low
        assert CHARACTERS.canonical(low.upper()) == low.upper()
        assert CHARACTERS.index(low) != CHARACTERS.index(low.upper())


def test_every_upper_case_letter_is_its_own_class() -> None:
    for up in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        assert CHARACTERS.canonical(up) == up


@pytest.mark.parametrize("label", ["", "AB", "7", " ", "é", "ß", "İ", None, 3, ["A"], b"A"])
def test_invalid_characters_raise_invalid_label(label: object) -> None:
    with pytest.raises(InvalidLabel) as info:
        CHARACTERS.canonical(label)
    assert info.value.code == "invalid_label"
    assert repr(label) in info.value.message
    assert "characters" in info.value.message


@pytest.mark.parametrize("label", ["a", "o", "O", "10", "", "-1", 7, None])
def test_invalid_digits_raise_invalid_label(label: object) -> None:
    with pytest.raises(InvalidLabel) as info:
        DIGITS.index(label)  # type: ignore[arg-type]
    assert repr(label) in info.value.message and "digits" in info.value.message


def test_error_for_a_letter_lists_the_classes() -> None:
    with pytest.raises(InvalidLabel, match="is not one of the 37 characters classes: A B C"):
        CHARACTERS.canonical("é")


def test_label_set_for_mode() -> None:
    assert label_set_for_mode("digit") is DIGITS
    assert label_set_for_mode("char") is CHARACTERS
    for bad in ("digits", "", None, ["digit"], 1):
        with pytest.raises(InvalidLabel) as info:
            label_set_for_mode(bad)
        assert info.value.code == "invalid_mode"
        assert "'digit' or 'char'" in info.value.message
