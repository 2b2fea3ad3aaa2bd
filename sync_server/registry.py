"""The model registry: versions kept in the data directory, signed releases whose sequence only grows.

A release names one version of one model, for every device or for one device group; the
current release of a model for a device is the highest-sequence release aimed at every device
or at its group. ``publish`` adds a version (or re-releases a known one) with its metrics, gate
result, parent and data snapshot; ``rollout`` releases a stored version to a group, then (with
no group) to every device; ``rollback`` makes a new release naming an older version. Both may run in another process than the server (the CLI
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

from .db import devices, models, reading, releases, writing

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

    def __init__(
        self,
        engine: Engine,
        data_dir: str | os.PathLike,
        key: Ed25519PrivateKey,
        publish_pause: float = 0.0,
    ):
        self.engine = engine
        self.data_dir = Path(data_dir)
        self.key = key
        self.public_key = key.public_key()
        self.publish_pause = float(publish_pause)  # tests kill a publish inside this pause

    # -- reading --------------------------------------------------------------------------
    def sequences(self) -> dict[str, int]:
        """The highest release sequence of each model name (one cheap query, for polling)."""
        with reading(self.engine) as conn:
            rows = conn.execute(
                select(releases.c.name, func.max(releases.c.sequence)).group_by(releases.c.name)
            ).all()
        return {name: int(seq) for name, seq in rows}

    def current_all(self, group: str | None = None) -> dict[str, Current]:
        """The current release of every model for a device of ``group`` (None: no group), by name."""
        aimed = releases.c.target_group.is_(None)
        if group is not None:
            aimed = aimed | (releases.c.target_group == group)
        latest = (
            select(releases.c.name, func.max(releases.c.sequence).label("seq"))
            .where(aimed)
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

    def current(self, name: str, group: str | None = None) -> Current | None:
        """The current release of model ``name`` (for a device of ``group``), or None."""
        return self.current_all(group).get(name)

    def current_by_mode(self, group: str | None = None) -> dict[str, Current]:
        """The current release serving each mode ('digit', 'char') to a device of ``group``."""
        return {c.mode: c for c in self.current_all(group).values()}

    def manifest_path(self, name: str, version: str) -> Path | None:
        """The stored manifest of a version (beside its file), or None."""
        found = self.file_for(name, version)
        return None if found is None else found[0].with_suffix(".json")

    def versions(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every stored version (of ``name``), oldest first, with what is known of it.

        Item: ``{"name", "version", "mode", "sha256", "length", "created", "published_by",
        "parent", "snapshot", "job_id", "manifest" (dict), "metrics" (dict or None: "base"
        {"accuracy", "per_class_recall" {label: r}, "confusion_matrix" [[...]], "n",
        "measured_on"}, "heldout" {"accuracy", "n"}, "parent" (the same for the parent)),
        "gate" (dict or None: {"passed", "checks": [...], "reason"}), "current" (bool: the
        release for every device), "groups" (groups whose current release it is, beyond
        every device's), "rollouts" ([{"sequence", "group" (None: all), "created", "by"}])}``.
        """
        q = select(models).order_by(models.c.name, models.c.id)
        if name is not None:
            q = q.where(models.c.name == name)
        with reading(self.engine) as conn:
            rows = conn.execute(q).all()
            rels = conn.execute(
                select(
                    releases.c.name,
                    releases.c.version,
                    releases.c.sequence,
                    releases.c.target_group,
                    releases.c.created,
                    releases.c.created_by,
                ).order_by(releases.c.sequence)
            ).all()
        everyone = {n: c.version for n, c in self.current_all().items()}
        groups = sorted({r.target_group for r in rels if r.target_group is not None})
        per_group = {g: {n: c.version for n, c in self.current_all(g).items()} for g in groups}
        out = []
        for r in rows:
            out.append(
                {
                    "name": r.name,
                    "version": r.version,
                    "mode": r.mode,
                    "sha256": r.sha256,
                    "length": r.length,
                    "created": r.created,
                    "published_by": r.published_by,
                    "parent": r.parent,
                    "snapshot": r.snapshot,
                    "job_id": r.job_id,
                    "manifest": json.loads(r.manifest),
                    "metrics": json.loads(r.metrics) if r.metrics else None,
                    "gate": json.loads(r.gate) if r.gate else None,
                    "current": everyone.get(r.name) == r.version,
                    "groups": [
                        g
                        for g in groups
                        if per_group[g].get(r.name) == r.version
                        and everyone.get(r.name) != r.version
                    ],
                    "rollouts": [
                        {
                            "sequence": x.sequence,
                            "group": x.target_group,
                            "created": x.created,
                            "by": x.created_by,
                        }
                        for x in rels
                        if x.name == r.name and x.version == r.version
                    ],
                }
            )
        return out

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

    def publish(
        self,
        manifest_path: str | os.PathLike,
        by: str = "admin",
        *,
        group: str | None = None,
        metrics: dict[str, Any] | None = None,
        gate: dict[str, Any] | None = None,
        snapshot: str | None = None,
        job_id: int | None = None,
    ) -> Current:
        """Add the model of a manifest (sha256 checked) and release it (to ``group``, else all).

        ``metrics``, ``gate``, ``snapshot`` and ``job_id`` are kept with the version (a
        retraining job's figures). The file is in place before the database commits, and
        nothing is served before the commit: a publish killed at any moment leaves the old
        release current.
        """
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
            now = self.current(manifest.name, group)
            if now is not None and now.version == manifest.version:
                return now  # publishing the current version again changes nothing
            return self._release(manifest.name, manifest.version, by, group)
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
                                metrics=json.dumps(metrics) if metrics is not None else None,
                                gate=json.dumps(gate) if gate is not None else None,
                                snapshot=snapshot,
                                job_id=job_id,
                            )
                        )
                        if tmp.exists():  # a retry after a lost sequence race has moved it
                            os.replace(tmp, final)
                        self._save_manifest(manifest, final)
                        done = self._insert_release(conn, manifest.to_dict(), length, by, group)
                        if self.publish_pause:
                            time.sleep(self.publish_pause)  # uncommitted: a kill here undoes it
                        return done
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

    def rollout(
        self, name: str, version: str, group: str | None = None, by: str = "admin"
    ) -> Current:
        """A new release of a stored version for the devices of ``group`` (None: every device)."""
        if group is not None:
            _safe(group, "group")
        if self._version(name, version) is None:
            known = [m["version"] for m in self.models() if m["name"] == name]
            raise RegistryError(
                f"no version {version!r} of model {name!r} is stored (stored: "
                f"{', '.join(known) or 'none'})",
                code="unknown_version",
            )
        if group is not None:
            self._has_devices(group)
        now = self.current(name, group)
        if now is not None and now.version == version:
            if group is None and self._everywhere(name, version):
                raise RegistryError(
                    f"{name} {version} is the current release for every device already "
                    f"(sequence {now.sequence})",
                    code="already_current",
                )
            if group is not None and self._aimed_at(name, now.sequence) == group:
                raise RegistryError(
                    f"{name} {version} is the current release for group {group!r} already "
                    f"(sequence {now.sequence})",
                    code="already_current",
                )
        return self._release(name, version, by, group)

    def _everywhere(self, name: str, version: str) -> bool:
        """Whether ``version`` is what every device is told to serve: the release for all and,
        for each group a release was aimed at, that group's current release too. A release for
        every device comes after the groups' and so replaces them all."""
        with reading(self.engine) as conn:
            groups = conn.execute(
                select(releases.c.target_group)
                .where(releases.c.name == name, releases.c.target_group.is_not(None))
                .distinct()
            ).scalars()
            groups = list(groups)
        return all(
            (c := self.current(name, g)) is not None and c.version == version
            for g in [None, *groups]
        )

    def _has_devices(self, group: str) -> None:
        """RegistryError unless an active device is in ``group``: a mistyped group would
        otherwise take a release that reaches nobody, and say nothing."""
        active = devices.c.revoked.is_(None)
        with reading(self.engine) as conn:
            found = conn.execute(
                select(func.count()).where(devices.c.group_name == group, active)
            ).scalar()
            groups = conn.execute(
                select(devices.c.group_name)
                .where(devices.c.group_name.is_not(None), active)
                .distinct()
                .order_by(devices.c.group_name)
            ).scalars()
            known = ", ".join(groups)
        if not found:
            raise RegistryError(
                f"no active device is in group {group!r} (groups: {known or 'none'}); "
                "add-device NAME --group GROUP puts a device in one",
                code="unknown_group",
            )

    def _aimed_at(self, name: str, sequence: int) -> str | None:
        with reading(self.engine) as conn:
            return conn.execute(
                select(releases.c.target_group).where(
                    releases.c.name == name, releases.c.sequence == sequence
                )
            ).scalar()

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
        if now is not None and now.version == version and self._everywhere(name, version):
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

    def _release(self, name: str, version: str, by: str, group: str | None = None) -> Current:
        row = self._version(name, version)
        assert row is not None
        for attempt in range(ATTEMPTS):
            try:
                with writing(self.engine) as conn:
                    return self._insert_release(
                        conn, json.loads(row["manifest"]), row["length"], by, group
                    )
            except exc.IntegrityError:
                if attempt == ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _insert_release(  # type: ignore[no-untyped-def]
        self, conn, manifest: dict, length: int, by: str, group: str | None = None
    ) -> Current:
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
                target_group=group,
            )
        )
        log.info(
            "release %s %s (sequence %d, %s) by %s",
            name,
            release.version,
            release.sequence,
            f"group {group}" if group else "every device",
            by,
        )
        return Current(name, release.mode, release.version, release.sequence, doc)


__all__ = ["Current", "Registry", "RegistryError"]
