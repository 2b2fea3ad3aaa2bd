"""Devices and their tokens: 32 random bytes shown once, only their sha256 kept, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass, field

from sqlalchemy import Engine, exc, select, update

from hwrcore.errors import HwrError

from .db import devices, reading, writing

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_TOKEN_CHARS = 200


class DeviceError(HwrError):
    """A device that cannot be added, found or revoked."""

    code = "invalid_device"


@dataclass(frozen=True)
class Device:
    """A device as the server knows it (never its token)."""

    id: int
    name: str
    group: str | None
    created: float
    revoked: float | None
    last_seen: float | None
    token_sha256: str = field(default="", repr=False)  # the token it authenticated with


def token_digest(token: str) -> str:
    """The sha256 (hex) of a token: what is stored and compared."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _device(row) -> Device:  # type: ignore[no-untyped-def]
    return Device(
        id=row.id,
        name=row.name,
        group=row.group_name,
        created=row.created,
        revoked=row.revoked,
        last_seen=row.last_seen,
        token_sha256=row.token_sha256,
    )


def add_device(engine: Engine, name: str, group: str | None = None) -> str:
    """Register a device and return its new token (the only time it is seen in clear)."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise DeviceError(
            f"device name {name!r} must be 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if group is not None and not NAME_RE.match(group):
        raise DeviceError(f"group {group!r} must be 1-100 letters, digits, '.', '_' or '-'")
    token = secrets.token_urlsafe(32)
    try:
        with writing(engine) as conn:
            conn.execute(
                devices.insert().values(
                    name=name,
                    group_name=group,
                    token_sha256=token_digest(token),
                    created=time.time(),
                )
            )
    except exc.IntegrityError:
        raise DeviceError(f"a device named {name!r} exists already", code="device_exists") from None
    return token


def revoke_device(engine: Engine, name: str) -> None:
    """Revoke a device's token: every later call with it gets 401."""
    with writing(engine) as conn:
        done = conn.execute(
            update(devices)
            .where(devices.c.name == name, devices.c.revoked.is_(None))
            .values(revoked=time.time())
        ).rowcount
        if not done:
            row = conn.execute(select(devices.c.revoked).where(devices.c.name == name)).first()
            if row is None:
                raise DeviceError(f"no device named {name!r}", code="unknown_device")


def new_token(engine: Engine, name: str) -> str:
    """Give device ``name`` a new token and return it: the old one is refused from now on (a lost
    or leaked token), a revoked device is active again, and its history (corrections, group,
    heartbeats) stays with its name."""
    token = secrets.token_urlsafe(32)
    with writing(engine) as conn:
        done = conn.execute(
            update(devices)
            .where(devices.c.name == name)
            .values(token_sha256=token_digest(token), revoked=None)
        ).rowcount
    if not done:
        raise DeviceError(f"no device named {name!r}", code="unknown_device")
    return token


def list_devices(engine: Engine) -> list[dict]:
    """Every device with its last heartbeat, by name."""
    with reading(engine) as conn:
        rows = conn.execute(select(devices).order_by(devices.c.name)).all()
    out = []
    for r in rows:
        d = {k: v for k, v in r._mapping.items() if k != "token_sha256"}
        d["group"] = d.pop("group_name")
        out.append(d)
    return out


def authenticate(engine: Engine, token: str | None) -> Device | None:
    """The device a bearer token belongs to, or None (missing, malformed, unknown or revoked)."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        return None
    digest = token_digest(token)
    with reading(engine) as conn:
        row = conn.execute(select(devices).where(devices.c.token_sha256 == digest)).first()
    if row is None or not hmac.compare_digest(row.token_sha256, digest) or row.revoked is not None:
        return None
    return _device(row)


def token_withdrawn(engine: Engine, device: Device) -> bool:
    """Whether the token ``device`` authenticated with no longer holds: the device was revoked or
    removed, or given a new token, since."""
    with reading(engine) as conn:
        row = conn.execute(
            select(devices.c.revoked, devices.c.token_sha256).where(devices.c.id == device.id)
        ).first()
    return (
        row is None
        or row.revoked is not None
        or not hmac.compare_digest(row.token_sha256, device.token_sha256)
    )


__all__ = [
    "Device",
    "DeviceError",
    "add_device",
    "authenticate",
    "list_devices",
    "new_token",
    "revoke_device",
    "token_digest",
    "token_withdrawn",
]
