"""A manifest that is not one is refused with a message naming what is wrong, in words."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hwrcore.manifest import Manifest, ManifestError

SHIPPED = Path(__file__).resolve().parents[1] / "models_export" / "digits.json"


def _shipped() -> dict:
    if not SHIPPED.is_file():
        pytest.skip("models_export/ holds no digits manifest")
    return json.loads(SHIPPED.read_text())


def _drop(d: dict, key: str) -> dict:
    del d[key]
    return d


CASES = {
    "unknown": (lambda d: {**d, "colour": "red"}, "unknown field(s) 'colour'"),
    "missing": (lambda d: _drop(d, "sha256"), "missing field(s) 'sha256'"),
    "tensor": (lambda d: {**d, "input": {**d["input"], "bits": 8}}, "input: unknown field(s)"),
    "outputs": (lambda d: {**d, "outputs": [1]}, "'outputs' must be an object"),
    "labels": (lambda d: {**d, "labels": 5}, "a field has the wrong type"),
    "not_object": (lambda d: [d], "expected a JSON object"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_manifest_is_refused_in_words(case: str) -> None:
    change, words = CASES[case]
    with pytest.raises(ManifestError) as refused:
        Manifest.from_dict(change(_shipped()), where="m.json")
    message = refused.value.message
    assert message.startswith("m.json") and words in message, message
    assert "__init__" not in message and "keyword argument" not in message


def test_the_shipped_manifest_reads_back_whole() -> None:
    d = _shipped()
    assert Manifest.from_dict(d).to_dict() == d
