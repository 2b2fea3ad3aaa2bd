"""The server's Ed25519 signing key: made at first start, kept in a file only its owner can read."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hwrcore import release
from hwrcore.errors import HwrError

KEY_FILE = "signing_key.pem"


class SigningKeyError(HwrError):
    """The signing key file is unsafe or unreadable."""

    code = "insecure_key"


def key_path(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / KEY_FILE


def _write_new(path: Path) -> None:
    """Create the key file atomically with mode 0600 (a concurrent creator's file wins)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        data = release.private_key_bytes(release.generate_key())
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process made one first: theirs is kept
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


def load_or_create_key(data_dir: str | os.PathLike) -> Ed25519PrivateKey:
    """The signing key of ``data_dir``, made on first use; SigningKeyError if its mode is loose."""
    path = key_path(data_dir)
    if not path.exists():
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        _write_new(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise SigningKeyError(f"the signing key {path} cannot be read: {exc.strerror}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise SigningKeyError(
            f"the signing key {path} has mode {stat.S_IMODE(st.st_mode):04o}; it must be readable "
            f"by its owner only: chmod 600 {path}"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"the signing key {path} cannot be read: {exc.strerror}") from None
    try:
        return release.load_private_key(data)
    except release.ReleaseError as exc:
        raise SigningKeyError(f"{path}: {exc.message}") from None


__all__ = ["KEY_FILE", "SigningKeyError", "key_path", "load_or_create_key"]
