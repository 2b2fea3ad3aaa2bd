"""Signed release documents: the server signs what a device may serve, the device checks it.

A release names one model version (name, mode, version, the sha256 and length of its file and
its manifest) and a release ``sequence`` that only grows per model name: a rollback is a new
release, with a higher sequence, naming an older version. The server signs the canonical JSON
of the release with its Ed25519 key; a device pins the server's public key and trusts nothing
that fails a check (learnt from TUF, kept small: one key, one role):

    {"release": {...}, "signature": "<base64>", "key_id": "<16 hex>"}

Every check has its own exception, and :func:`verify_release` runs them all before anything
of a release is used: the shape (:class:`MalformedRelease`), the signature
(:class:`BadSignature`), the sequence against the one already trusted
(:class:`ReplayedRelease`), and the manifest against the mode it is to serve
(:class:`IncompatibleRelease`). :func:`verify_file` checks the downloaded file's length, then
its sha256 (:class:`FileMismatch`). The server and the device run this same code.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import HwrError, ManifestError
from .manifest import PIXELS, Manifest

SCHEMA = 1
# The fields of a release, in the document; nothing else is accepted.
FIELDS = (
    "schema",
    "name",
    "mode",
    "version",
    "sequence",
    "sha256",
    "length",
    "manifest",
    "created",
)
# Largest model file a release may name (the shipped ones are under 2.5 MB).
MAX_LENGTH = 256 << 20
_MAX_SEQUENCE = 2**53  # exact in every JSON reader


class ReleaseError(HwrError):
    """A release document or file that must not be trusted."""

    code = "invalid_release"


class MalformedRelease(ReleaseError):
    """Not a release document: a missing or mistyped field, or a bad key or signature text."""

    code = "malformed_release"


class BadSignature(ReleaseError):
    """The signature does not verify with the pinned key."""

    code = "bad_signature"


class ReplayedRelease(ReleaseError):
    """A release whose sequence is not above the one already trusted (an old one replayed)."""

    code = "replayed_release"


class FileMismatch(ReleaseError):
    """A model file whose length or sha256 is not the release's (damaged or cut short)."""

    code = "file_mismatch"


class IncompatibleRelease(ReleaseError):
    """A release for another mode, or with labels or an input convention the device cannot use."""

    code = "incompatible_release"


def canonical_json(obj: Any) -> bytes:
    """The one byte form that is signed: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


# -- keys -------------------------------------------------------------------------------------
def generate_key() -> Ed25519PrivateKey:
    """A new Ed25519 signing key."""
    return Ed25519PrivateKey.generate()


def private_key_bytes(key: Ed25519PrivateKey) -> bytes:
    """The key as unencrypted PKCS8 PEM (the server keeps it in a file of mode 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(data: bytes) -> Ed25519PrivateKey:
    """A signing key from PKCS8 PEM; MalformedRelease when it is not an Ed25519 key."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise MalformedRelease(f"the signing key cannot be read: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise MalformedRelease(f"the signing key is not Ed25519 but {type(key).__name__}")
    return key


def _public(key: Ed25519PrivateKey | Ed25519PublicKey) -> Ed25519PublicKey:
    return key.public_key() if isinstance(key, Ed25519PrivateKey) else key


def _raw(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    return _public(key).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public key as devices pin it: base64 of its raw 32 bytes (44 characters)."""
    return base64.b64encode(_raw(key)).decode("ascii")


def load_public_key(text: str) -> Ed25519PublicKey:
    """The pinned public key from its text; MalformedRelease unless it is 32 bytes of base64."""
    if not isinstance(text, str) or not text.strip():
        raise MalformedRelease("the server's public key is not set")
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise MalformedRelease("the server's public key is not base64") from None
    if len(raw) != 32:
        raise MalformedRelease(f"the server's public key must be 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """A short name of a key: the first 16 hex digits of the sha256 of its raw public bytes."""
    return hashlib.sha256(_raw(key)).hexdigest()[:16]


# -- the document -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Release:
    """One model version that a device may serve, as the server signed it."""

    name: str
    mode: str
    version: str
    sequence: int
    sha256: str
    length: int
    manifest: dict[str, Any]
    created: str
    schema: int = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def manifest_object(self) -> Manifest:
        """The release's manifest, checked; MalformedRelease when it does not parse."""
        try:
            return Manifest.from_dict(self.manifest, f"release {self.name} {self.version}")
        except ManifestError as exc:
            raise MalformedRelease(exc.message) from None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def make_release(
    manifest: Manifest | dict[str, Any],
    *,
    sequence: int,
    length: int,
    created: str | None = None,
) -> Release:
    """A release of ``manifest``'s model file (its sha256 is the manifest's)."""
    m = manifest if isinstance(manifest, Manifest) else Manifest.from_dict(manifest)
    release = Release(
        name=m.name,
        mode=m.mode,
        version=m.version,
        sequence=int(sequence),
        sha256=m.sha256,
        length=int(length),
        manifest=m.to_dict(),
        created=created or _now(),
    )
    _check_fields(release.to_dict())
    return release


def sign_release(release: Release, key: Ed25519PrivateKey) -> dict[str, Any]:
    """The signed document: the release, its signature over its canonical JSON, the key id."""
    body = release.to_dict()
    _check_fields(body)
    signature = key.sign(canonical_json(body))
    return {
        "release": body,
        "signature": base64.b64encode(signature).decode("ascii"),
        "key_id": key_id(key),
    }


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_fields(body: Any) -> None:
    """Every field present with its type and in range; MalformedRelease naming the first that is not."""
    if not isinstance(body, dict):
        raise MalformedRelease("the release is not a JSON object")
    extra = sorted(set(body) - set(FIELDS))
    missing = [f for f in FIELDS if f not in body]
    if missing or extra:
        raise MalformedRelease(f"the release lacks {missing} or has unknown fields {extra}")
    if body["schema"] != SCHEMA:
        raise MalformedRelease(f"release schema {body['schema']!r} is not supported ({SCHEMA})")
    for name in ("name", "mode", "version", "sha256", "created"):
        if not isinstance(body[name], str) or not body[name]:
            raise MalformedRelease(f"release field {name!r} must be a non-empty string")
    if not _is_int(body["sequence"]) or not 1 <= body["sequence"] <= _MAX_SEQUENCE:
        raise MalformedRelease("release sequence must be a positive integer")
    if not _is_int(body["length"]) or not 1 <= body["length"] <= MAX_LENGTH:
        raise MalformedRelease(f"release length must be an integer in 1..{MAX_LENGTH}")
    sha = body["sha256"]
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise MalformedRelease("release sha256 must be 64 lower-case hex digits")
    if not isinstance(body["manifest"], dict):
        raise MalformedRelease("release manifest must be an object")
    for key in ("name", "version", "mode", "sha256"):
        if body["manifest"].get(key) != body[key]:
            raise MalformedRelease(f"release {key} differs from its manifest's {key}")


def _walk_finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_walk_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_walk_finite(v) for v in value)
    return True


def verify_release(
    doc: object,
    key: Ed25519PublicKey,
    *,
    trusted_sequence: int = 0,
    mode: str | None = None,
    labels: Sequence[str] | None = None,
) -> Release:
    """The release of a signed document, after every check; a ReleaseError naming the first that fails.

    ``trusted_sequence`` is the highest sequence already trusted for this model name;
    ``mode`` and ``labels`` are what the device serves in the slot the release would fill.
    """
    if not isinstance(doc, dict) or set(doc) - {"release", "signature", "key_id"}:
        raise MalformedRelease("a signed release is an object of release, signature, key_id")
    body, signature = doc.get("release"), doc.get("signature")
    if not isinstance(signature, str):
        raise MalformedRelease("the signed release has no signature")
    try:
        sig = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedRelease("the release's signature is not base64") from None
    _check_fields(body)
    body = dict(body)  # type: ignore[arg-type]  # checked by _check_fields
    if not _walk_finite(body):
        raise MalformedRelease("the release holds a number that is not finite")
    try:
        key.verify(sig, canonical_json(body))
    except InvalidSignature:
        raise BadSignature(
            f"release {body['name']} {body['version']} (sequence {body['sequence']}) is not "
            f"signed by the pinned key {key_id(key)}"
        ) from None
    release = Release(**body)
    if release.sequence <= trusted_sequence:
        raise ReplayedRelease(
            f"release {release.name} {release.version} has sequence {release.sequence}, "
            f"not above the trusted {trusted_sequence}: an old release replayed"
        )
    manifest = release.manifest_object()
    if mode is not None and release.mode != mode:
        raise IncompatibleRelease(
            f"release {release.name} {release.version} is for mode {release.mode!r}, not {mode!r}"
        )
    if labels is not None and list(manifest.labels) != list(labels):
        raise IncompatibleRelease(
            f"release {release.name} {release.version} has {len(manifest.labels)} labels that "
            f"differ from the {len(labels)} this device serves"
        )
    if list(manifest.input.shape[-3:]) != [28, 28, 1] or manifest.pixels != PIXELS:
        raise IncompatibleRelease(
            f"release {release.name} {release.version} expects input {manifest.input.shape} "
            f"with pixels {manifest.pixels!r}"
        )
    return release


def verify_file(release: Release, path: str | os.PathLike) -> None:
    """The file at ``path`` is the release's: its length, then its sha256; FileMismatch if not."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise FileMismatch(f"model file {p.name} cannot be read: {exc.strerror or exc}") from None
    if size != release.length:
        raise FileMismatch(
            f"model file {p.name} has {size} bytes, the release says {release.length}"
            + (" (cut short)" if size < release.length else "")
        )
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    got = h.hexdigest()
    if got != release.sha256:
        raise FileMismatch(
            f"model file {p.name} fails its sha256: expected {release.sha256}, got {got}"
        )


__all__ = [
    "SCHEMA",
    "BadSignature",
    "FileMismatch",
    "IncompatibleRelease",
    "MalformedRelease",
    "Release",
    "ReleaseError",
    "ReplayedRelease",
    "canonical_json",
    "generate_key",
    "key_id",
    "load_private_key",
    "load_public_key",
    "make_release",
    "private_key_bytes",
    "public_key_text",
    "sign_release",
    "verify_file",
    "verify_release",
]
