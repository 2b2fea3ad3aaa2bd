"""Signed releases: what the server signs verifies on the device, and every tampering is refused."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwrcore import release as rel
from hwrcore.labels import CHARACTER_LABELS
from hwrcore.manifest import load_manifest
from tests.models import require_models


@pytest.fixture(scope="module")
def key():
    return rel.generate_key()


@pytest.fixture(scope="module")
def digits():
    models = require_models()
    return load_manifest(models / "digits.json"), models / "digits.tflite"


def _release(digits, sequence=3):
    manifest, path = digits
    return rel.make_release(manifest, sequence=sequence, length=path.stat().st_size)


def test_a_signed_release_verifies_with_the_pinned_key_and_survives_json(digits, key):
    doc = rel.sign_release(_release(digits), key)
    wire = json.loads(json.dumps(doc, indent=3))  # the way it travels: parsed again on the device
    pinned = rel.load_public_key(rel.public_key_text(key))
    got = rel.verify_release(
        wire, pinned, trusted_sequence=2, mode="digit", labels=list("0123456789")
    )
    assert got == _release(digits).__class__(**doc["release"])
    assert got.sequence == 3 and got.name == "digits" and got.mode == "digit"
    assert got.manifest_object().labels == list("0123456789")
    assert doc["key_id"] == rel.key_id(pinned) and len(doc["key_id"]) == 16


def test_canonical_json_ignores_key_order_and_refuses_nan():
    assert rel.canonical_json({"b": 1, "a": [1.5, "é"]}) == rel.canonical_json(
        {"a": [1.5, "é"], "b": 1}
    )
    assert rel.canonical_json({"a": "é"}) == '{"a":"é"}'.encode()
    with pytest.raises(ValueError):
        rel.canonical_json({"a": float("nan")})


@pytest.mark.parametrize(
    "field, value",
    [("version", "9.9.9"), ("sequence", 99), ("sha256", "0" * 64), ("length", 1), ("created", "x")],
)
def test_a_changed_field_breaks_the_signature(digits, key, field, value):
    doc = rel.sign_release(_release(digits), key)
    doc["release"][field] = value
    if field in ("version", "sha256"):
        doc["release"]["manifest"][field] = value  # keep it consistent: only the signature can tell
    with pytest.raises(rel.BadSignature):
        rel.verify_release(doc, key.public_key())


def test_a_changed_manifest_breaks_the_signature(digits, key):
    doc = rel.sign_release(_release(digits), key)
    doc["release"]["manifest"]["labels"] = list("0123456798")
    with pytest.raises(rel.BadSignature):
        rel.verify_release(doc, key.public_key())


def test_another_key_is_refused(digits, key):
    doc = rel.sign_release(_release(digits), rel.generate_key())
    with pytest.raises(rel.BadSignature, match="not signed by the pinned key"):
        rel.verify_release(doc, key.public_key())


@pytest.mark.parametrize("trusted", [3, 4, 100])
def test_a_sequence_not_above_the_trusted_one_is_a_replay(digits, key, trusted):
    doc = rel.sign_release(_release(digits, sequence=3), key)
    with pytest.raises(rel.ReplayedRelease, match="not above the trusted"):
        rel.verify_release(doc, key.public_key(), trusted_sequence=trusted)


def test_a_release_for_another_mode_or_other_labels_is_incompatible(digits, key):
    doc = rel.sign_release(_release(digits), key)
    with pytest.raises(rel.IncompatibleRelease, match="mode"):
        rel.verify_release(doc, key.public_key(), mode="char")
    with pytest.raises(rel.IncompatibleRelease, match="labels"):
        rel.verify_release(doc, key.public_key(), labels=CHARACTER_LABELS)


def test_another_pixel_convention_is_incompatible(digits, key):
    manifest = copy.deepcopy(digits[0].to_dict())
    manifest["pixels"] = "black ink on white"
    release = rel.make_release(manifest, sequence=2, length=10)
    with pytest.raises(rel.IncompatibleRelease, match="pixels"):
        rel.verify_release(rel.sign_release(release, key), key.public_key())


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("signature"),
        lambda d: d.update(signature="not base64!"),
        lambda d: d.update(extra=1),
        lambda d: d["release"].pop("length"),
        lambda d: d["release"].update(unknown=1),
        lambda d: d["release"].update(sequence=True),
        lambda d: d["release"].update(sequence=0),
        lambda d: d["release"].update(length=-5),
        lambda d: d["release"].update(sha256="ABC"),
        lambda d: d["release"].update(schema=2),
        lambda d: d["release"].update(manifest=[]),
        lambda d: d["release"]["manifest"].update(version="other"),
        lambda d: d.update(release="text"),
    ],
)
def test_malformed_documents_are_refused_before_the_signature(digits, key, mutate):
    doc = rel.sign_release(_release(digits), key)
    mutate(doc)
    with pytest.raises(rel.MalformedRelease):
        rel.verify_release(doc, key.public_key())


@pytest.mark.parametrize("doc", [None, [], "x", 3, {"release": {}}])
def test_what_is_not_a_document_is_malformed(key, doc):
    with pytest.raises(rel.MalformedRelease):
        rel.verify_release(doc, key.public_key())


def test_every_refusal_is_a_release_error_with_its_own_code():
    codes = {
        c.code
        for c in (
            rel.MalformedRelease,
            rel.BadSignature,
            rel.ReplayedRelease,
            rel.FileMismatch,
            rel.IncompatibleRelease,
        )
    }
    assert len(codes) == 5
    assert all(issubclass(c, rel.ReleaseError) for c in (rel.BadSignature, rel.FileMismatch))


def test_the_file_must_have_the_release_length_and_sha256(digits, key, tmp_path: Path):
    release = _release(digits)
    data = digits[1].read_bytes()
    good = tmp_path / "good.tflite"
    good.write_bytes(data)
    rel.verify_file(release, good)
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(rel.FileMismatch, match="cut short"):
        rel.verify_file(release, cut)
    flipped = tmp_path / "flipped.tflite"
    flipped.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    with pytest.raises(rel.FileMismatch, match="sha256"):
        rel.verify_file(release, flipped)
    longer = tmp_path / "longer.tflite"
    longer.write_bytes(data + b"\0")
    with pytest.raises(rel.FileMismatch, match="bytes"):
        rel.verify_file(release, longer)
    with pytest.raises(rel.FileMismatch, match="cannot be read"):
        rel.verify_file(release, tmp_path / "absent.tflite")


def test_keys_round_trip_and_bad_key_text_is_refused(key):
    again = rel.load_private_key(rel.private_key_bytes(key))
    assert rel.public_key_text(again) == rel.public_key_text(key)
    assert len(rel.public_key_text(key)) == 44
    for bad in ("", "   ", "not base64!", "QUJD", None):
        with pytest.raises(rel.MalformedRelease):
            rel.load_public_key(bad)  # type: ignore[arg-type]
    with pytest.raises(rel.MalformedRelease):
        rel.load_private_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_changed_byte_of_the_signed_body_is_refused(digits, key, data):
    doc = rel.sign_release(_release(digits), key)
    body = bytearray(rel.canonical_json(doc["release"]))
    i = data.draw(st.integers(0, len(body) - 1))
    body[i] = data.draw(st.integers(0, 255).filter(lambda b: b != body[i]))
    try:
        changed = json.loads(bytes(body))
    except ValueError:
        return  # no longer JSON: it never reaches verify_release
    if rel.canonical_json(changed) == rel.canonical_json(doc["release"]):
        return  # the same document written another way (1.0 as 1e0): nothing changed
    with pytest.raises(rel.ReleaseError):
        rel.verify_release({**doc, "release": changed}, key.public_key())
