"""Layered settings of a component: defaults, then a TOML file, then environment variables, then flags.

A component's settings are a dataclass (``edge.config.EdgeConfig``,
``sync_server.config.SyncConfig``); :class:`Layers` fills one from the layers in that order.
Every layer may set only the dataclass's fields, each coerced to the field's type: an unknown
key or a value of the wrong type is a :class:`ConfigError` naming the setting and where it came
from, so a misspelt setting fails at start instead of being ignored. Secrets may come from the
file or the environment, never from a flag (a command line is visible to every user).
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, Generic, TypeVar

from .errors import HwrError

T = TypeVar("T")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def user_data_dir(name: str) -> Path:
    """A component's per-user data directory: $XDG_DATA_HOME/<name>, else ~/.local/share/<name>."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / name


class ConfigError(HwrError):
    """A configuration value or key that cannot be used."""

    code = "invalid_config"


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def read_secret_file(path: str | os.PathLike, setting: str) -> str:
    """The secret in the file a ``*_token_file`` setting names, stripped; ConfigError when it
    cannot be read, is empty, or other users may read it (its group may: a service's group)."""
    p = Path(path).expanduser()
    try:
        mode = stat.S_IMODE(p.stat().st_mode)
        text = p.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(f"{setting} {p} cannot be read: {reason}") from None
    if mode & 0o007:
        raise ConfigError(
            f"{setting} {p} has mode {mode:04o}: every user of this machine can read the "
            f"token; chmod 600 {p}"
        )
    if not text:
        raise ConfigError(f"{setting} {p} is empty")
    return text


def require_at_least(settings: object, low: int, *names: str) -> None:
    """Each named setting must be ``low`` or more (0 or 1); a ConfigError names the first that is not."""
    want = "0 or more" if low == 0 else f"at least {low}"
    for name in names:
        if getattr(settings, name) < low:
            raise ConfigError(f"{name} must be {want}, got {getattr(settings, name)}")


def require_positive(settings: object, *names: str) -> None:
    """Each named setting must be more than 0 (NaN is not)."""
    for name in names:
        if not getattr(settings, name) > 0:
            raise ConfigError(f"{name} must be positive, got {getattr(settings, name)}")


def require_common(port: int, log_level: str) -> None:
    """The settings every server component has: its ``port`` and ``log_level``."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"port must be 0-65535, got {port}")
    if log_level.lower() not in LOG_LEVELS:
        raise ConfigError(f"log_level must be debug/info/warning/error, got {log_level!r}")


def _convert(kind: str, value: object) -> Any:
    """``value`` as the type named ``kind`` (annotations are postponed: they are strings)."""
    if kind == "Path":
        if not isinstance(value, (str, os.PathLike)):
            raise TypeError
        return Path(value)
    if kind == "int":
        if isinstance(value, (bool, float)):
            raise TypeError
        return int(value)  # type: ignore[arg-type]
    if kind == "bool":
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        if not isinstance(value, bool):
            raise TypeError
        return value
    if kind == "float":
        if isinstance(value, bool):
            raise TypeError
        return float(value)  # type: ignore[arg-type]
    if not isinstance(value, str):
        raise TypeError
    return value


class Layers(Generic[T]):
    """How one settings dataclass is filled: its variables' prefix, its TOML table, its secrets."""

    def __init__(self, cls: type[T], *, env_prefix: str, table: str, secrets: tuple[str, ...] = ()):
        self.cls = cls
        self.env_prefix = env_prefix
        self.table = table
        self.secrets = secrets
        self.fields = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]

    def coerce(self, name: str, value: object, source: str) -> Any:
        """A value from ``source`` as its field's type; ConfigError for an unknown key or bad value."""
        if name not in self.fields:
            raise ConfigError(
                f"unknown setting {name!r} in {source}; known: {', '.join(sorted(self.fields))}"
            )
        kind = self.fields[name].type
        try:
            return _convert(str(kind), value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"setting {name!r} in {source} must be {kind}, got {value!r}"
            ) from None

    def layer(self, values: Mapping[str, object], source: str) -> dict[str, Any]:
        return {name: self.coerce(name, value, source) for name, value in values.items()}

    def read_toml(self, path: str | os.PathLike) -> dict[str, Any]:
        """Settings from a TOML file: top-level keys, or the component's table (``[edge]``)."""
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {p} is not readable TOML ({exc})") from None
        if set(data) == {self.table} and isinstance(data[self.table], dict):
            data = data[self.table]
        return self.layer(data, f"config file {p}")

    def read_env(self, env: Mapping[str, str]) -> dict[str, Any]:
        """Settings from <PREFIX><SETTING> variables (e.g. HWR_EDGE_PORT=8080)."""
        values = {
            key[len(self.env_prefix) :].lower(): value
            for key, value in env.items()
            if key.startswith(self.env_prefix)
        }
        return self.layer(values, f"the environment ({self.env_prefix}*)")

    def load(
        self,
        config_file: str | os.PathLike | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, object] | None = None,
    ) -> T:
        """Defaults, then ``config_file``, then ``env`` (os.environ if None), then ``overrides``."""
        merged: dict[str, Any] = {}
        if config_file is not None:
            merged.update(self.read_toml(config_file))
        merged.update(self.read_env(os.environ if env is None else env))
        flags = {k: v for k, v in (overrides or {}).items() if v is not None}
        for secret in self.secrets:
            if secret in flags:
                raise ConfigError(
                    f"{secret} cannot be a flag: set {self.env_prefix}{secret.upper()} or a file"
                )
        merged.update(self.layer(flags, "flags"))
        return self.cls(**merged)


__all__ = ["ConfigError", "Layers", "user_data_dir"]
