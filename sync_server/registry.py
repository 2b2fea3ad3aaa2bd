"""The model registry: versions kept in the data directory, signed releases whose sequence only grows.

A release names one version of one model; the current release of a model is its highest
sequence. ``publish`` adds a version (or re-releases a known one), ``rollback`` makes a new
release naming an older version. Both may run in another process than the server (the CLI
writes the database directly); the server learns of them by polling (sync_server/notify.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, exc, func, select

from hwrcore import release as rel
from hwrcore.errors import HwrError
from hwrcore.labels import LABEL_SETS
from hwrcore.manifest import Manifest, load_manifest

from .db import models, reading, releases, writing

log = logging.getLogger(__name__)

SHIPPED = ("digits.json", "characters.json")
SAFE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ATTEMPTS = 5  # tries at a new sequence when another publisher takes the same one


class RegistryError(HwrError):
    """A model that cannot be published or rolled back, with what to do about it."""

    code = "invalid_model"


@dataclass(frozen=True)
class Current:
    """The current release of a model: its signed document and where its file is."""

    name: str
    mode: str
    version: str
    sequence: int
    document: dict[str, Any]


def _safe(value: str, what: str) -> str:
    if not SAFE_RE.match(value) or ".." in value:
        raise RegistryError(f"{what} {value!r} must be letters, digits, '.', '_' or '-'")
    return value


def _fsync_copy(src: Path, dst: Path) -> None:
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        shutil.copyfileobj(fi, fo, 1 << 20)
        fo.flush()
        os.fsync(fo.fileno())


class Registry:
    """Model versions and releases in ``engine``, files under ``data_dir/models``, signed by ``key``."""

    def __init__(self, engine: Engine, data_dir: str | os.PathLike, key: Ed25519PrivateKey):
        self.engine = engine
        self.data_dir = Path(data_dir)
        self.key = key
        self.public_key = key.public_key()

    # -- reading --------------------------------------------------------------------------
    def sequences(self) -> dict[str, int]:
        """The highest release sequence of each model name (one cheap query, for polling)."""
        with reading(self.engine) as conn:
            rows = conn.execute(
                select(releases.c.name, func.max(releases.c.sequence)).group_by(releases.c.name)
            ).all()
        return {name: int(seq) for name, seq in rows}

    def current_all(self) -> dict[str, Current]:
        """The current release of every model, by name."""
        latest = (
            select(releases.c.name, func.max(releases.c.sequence).label("seq"))
            .group_by(releases.c.name)
            .subquery()
        )
        q = select(releases).join(
            latest, (releases.c.name == latest.c.name) & (releases.c.sequence == latest.c.seq)
        )
        with reading(self.engine) as conn:
            rows = conn.execute(q).all()
        return {
            r.name: Current(r.name, r.mode, r.version, r.sequence, json.loads(r.document))
            for r in rows
        }

    def current(self, name: str) -> Current | None:
        """The current release of model ``name``, or None."""
        return self.current_all().get(name)

    def current_by_mode(self) -> dict[str, Current]:
        """The current release serving each mode ('digit', 'char')."""
        return {c.mode: c for c in self.current_all().values()}

    def models(self) -> list[dict[str, Any]]:
        """Every stored version, with ``current`` set on the ones now released."""
        current = {(c.name, c.version) for c in self.current_all().values()}
        with reading(self.engine) as conn:
            rows = conn.execute(select(models).order_by(models.c.name, models.c.id)).all()
        return [
            {
                "name": r.name,
                "version": r.version,
                "mode": r.mode,
                "sha256": r.sha256,
                "length": r.length,
                "created": r.created,
                "published_by": r.published_by,
                "parent": r.parent,
                "current": (r.name, r.version) in current,
            }
            for r in rows
        ]

    def file_for(self, name: str, version: str) -> tuple[Path, str] | None:
        """The stored file of a version and its sha256, or None if there is no such version."""
        with reading(self.engine) as conn:
            row = conn.execute(
                select(models.c.path, models.c.sha256).where(
                    models.c.name == name, models.c.version == version
                )
            ).first()
        if row is None:
            return None
        return self.data_dir / row.path, row.sha256

    # -- writing --------------------------------------------------------------------------
    def import_shipped(self, models_dir: str | os.PathLike, by: str = "shipped") -> list[str]:
        """Release the shipped models of ``models_dir`` for each model name not yet released."""
        done = []
        known = self.sequences()
        for fname in SHIPPED:
            path = Path(models_dir) / fname
            if not path.is_file():
                log.warning("no shipped model %s to import", path)
                continue
            manifest = load_manifest(path, verify=True)
            if manifest.name in known:
                continue
            try:
                self.publish(path, by=by)
            except RegistryError as e:
                if self.current(manifest.name) is None:  # not another process's first start
                    raise
                log.info("shipped %s already imported: %s", manifest.name, e.message)
                continue
            done.append(manifest.name)
        return done

    def publish(self, manifest_path: str | os.PathLike, by: str = "admin") -> Current:
        """Add the model of a manifest (sha256 checked) and make it the current release."""
        manifest = load_manifest(manifest_path, verify=True)
        self._check(manifest)
        src = manifest.model_path(manifest_path)
        length = src.stat().st_size
        folder = self.data_dir / "models" / manifest.name
        folder.mkdir(parents=True, exist_ok=True)
        rel_path = f"models/{manifest.name}/{manifest.version}.tflite"
        final = self.data_dir / rel_path
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        existing = self._version(manifest.name, manifest.version)
        if existing is not None:
            if existing["sha256"] != manifest.sha256:
                raise RegistryError(
                    f"{manifest.name} {manifest.version} is already published with other bytes "
                    f"(sha256 {existing['sha256'][:12]}..., this file {manifest.sha256[:12]}...): "
                    "publish it under a new version",
                    code="version_exists",
                )
            now = self.current(manifest.name)
            if now is not None and now.version == manifest.version:
                return now  # publishing the current version again changes nothing
            return self._release(manifest.name, manifest.version, by)
        _fsync_copy(src, tmp)
        try:
            for attempt in range(ATTEMPTS):
                try:
                    with writing(self.engine) as conn:
                        conn.execute(
                            models.insert().values(
                                name=manifest.name,
                                version=manifest.version,
                                mode=manifest.mode,
                                sha256=manifest.sha256,
                                length=length,
                                manifest=json.dumps(manifest.to_dict()),
                                path=rel_path,
                                created=time.time(),
                                published_by=by,
                                parent=manifest.parent_version,
                            )
                        )
                        if tmp.exists():  # a retry after a lost sequence race has moved it
                            os.replace(tmp, final)
                        self._save_manifest(manifest, final)
                        return self._insert_release(conn, manifest.to_dict(), length, by)
                except exc.IntegrityError:
                    if self._version(manifest.name, manifest.version) is not None:
                        raise RegistryError(
                            f"{manifest.name} {manifest.version} was published meanwhile",
                            code="version_exists",
                        ) from None
                    if attempt == ATTEMPTS - 1:
                        raise
            raise AssertionError("unreachable")
        finally:
            tmp.unlink(missing_ok=True)

    def rollback(self, name: str, version: str, by: str = "admin") -> Current:
        """A new release (higher sequence) naming an older stored version of model ``name``."""
        if self._version(name, version) is None:
            known = [m["version"] for m in self.models() if m["name"] == name]
            raise RegistryError(
                f"no version {version!r} of model {name!r} is stored (stored: "
                f"{', '.join(known) or 'none'})",
                code="unknown_version",
            )
        now = self.current(name)
        if now is not None and now.version == version:
            raise RegistryError(
                f"{name} {version} is the current release already (sequence {now.sequence})",
                code="already_current",
            )
        return self._release(name, version, by)

    # -- inside ---------------------------------------------------------------------------
    def _check(self, m: Manifest) -> None:
        _safe(m.name, "model name")
        _safe(m.version, "version")
        if m.mode not in LABEL_SETS:
            raise RegistryError(f"{m.name}: mode {m.mode!r} is not digit or char")
        want = list(LABEL_SETS[m.mode].labels)
        if list(m.labels) != want:
            raise RegistryError(
                f"{m.name} {m.version}: its labels differ from the {m.mode} label set",
                code="incompatible_model",
            )
        for other in self.current_all().values():
            if other.mode == m.mode and other.name != m.name:
                raise RegistryError(
                    f"mode {m.mode!r} is served by model {other.name!r}; {m.name!r} cannot "
                    "take it over",
                    code="incompatible_model",
                )
            if other.name == m.name and other.mode != m.mode:
                raise RegistryError(
                    f"model {m.name!r} serves {other.mode!r}, not {m.mode!r}",
                    code="incompatible_model",
                )

    def _version(self, name: str, version: str) -> dict[str, Any] | None:
        with reading(self.engine) as conn:
            row = conn.execute(
                select(models).where(models.c.name == name, models.c.version == version)
            ).first()
        return dict(row._mapping) if row is not None else None

    def _save_manifest(self, manifest: Manifest, model_file: Path) -> None:
        """The manifest beside the stored file, naming it (so load_manifest reads the copy)."""
        copy = Manifest.from_dict({**manifest.to_dict(), "file": model_file.name})
        copy.save(model_file.with_suffix(".json"))

    def _release(self, name: str, version: str, by: str) -> Current:
        row = self._version(name, version)
        assert row is not None
        for attempt in range(ATTEMPTS):
            try:
                with writing(self.engine) as conn:
                    return self._insert_release(
                        conn, json.loads(row["manifest"]), row["length"], by
                    )
            except exc.IntegrityError:
                if attempt == ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _insert_release(self, conn, manifest: dict, length: int, by: str) -> Current:  # type: ignore[no-untyped-def]
        name = manifest["name"]
        top = conn.execute(
            select(func.max(releases.c.sequence)).where(releases.c.name == name)
        ).scalar()
        release = rel.make_release(manifest, sequence=int(top or 0) + 1, length=length)
        doc = rel.sign_release(release, self.key)
        # What devices will check, checked here first: a release they would refuse is not made.
        rel.verify_release(
            doc, self.public_key, mode=release.mode, labels=LABEL_SETS[release.mode].labels
        )
        conn.execute(
            releases.insert().values(
                name=name,
                sequence=release.sequence,
                version=release.version,
                mode=release.mode,
                document=rel.canonical_json(doc).decode("utf-8"),
                created=time.time(),
                created_by=by,
            )
        )
        log.info("release %s %s (sequence %d) by %s", name, release.version, release.sequence, by)
        return Current(name, release.mode, release.version, release.sequence, doc)


__all__ = ["Current", "Registry", "RegistryError"]
