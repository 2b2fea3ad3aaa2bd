"""What the server holds while it runs: the database, the signing key, the registry, the notifier.

:func:`open_state` is what every entry point runs first (the server's factory and each CLI
command): make the data directory, make or check the signing key, migrate the database and
import the shipped models as the first releases. Only ``serve`` and ``init`` make a new school;
the other commands need one there.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine

from hwrcore.errors import HwrError

from .config import SyncConfig
from .db import open_database
from .keys import key_path, load_or_create_key
from .registry import Registry

if TYPE_CHECKING:
    from .jobs import JobQueue
    from .notify import Notifier
    from .ratelimit import RateLimiter

log = logging.getLogger(__name__)


class StartError(HwrError):
    """The server cannot start: a data directory it cannot write, a port in use."""

    code = "cannot_start"


@dataclass
class SyncState:
    """The long-lived objects of one server process (kept at ``app.extensions["hwr_sync"]``)."""

    config: SyncConfig
    engine: Engine
    key: Ed25519PrivateKey
    registry: Registry
    admin_token: str = ""
    limiter: RateLimiter | None = None
    notifier: Notifier | None = None
    jobs: JobQueue | None = None  # the Huey queue (scoring and retraining tasks)
    closing: threading.Event = field(default_factory=threading.Event)

    def close(self) -> None:
        """Refuse new work, stop the notifier, close the database connections."""
        self.closing.set()
        if self.notifier is not None:
            self.notifier.close()
        if self.jobs is not None:
            self.jobs.close()
        self.engine.dispose()


def make_private(data_dir: Path) -> list[str]:
    """Take group and other access off the data directory and the files directly in it that
    this user owns (the database holds every pupil's drawing); returns what was changed.

    A school made before its folder was private, or by a command run with a looser umask, is
    mended here when the server starts instead of staying readable by every local user."""
    changed = []
    me = os.geteuid()
    paths = [data_dir]
    try:
        paths += sorted(p for p in data_dir.iterdir() if p.is_file() and not p.is_symlink())
    except OSError:
        return changed
    for path in paths:
        try:
            st = path.lstat()
            if st.st_uid != me or not st.st_mode & 0o077:
                continue
            path.chmod(stat.S_IMODE(st.st_mode) & 0o700)
            changed.append(f"{path.name or path} {stat.S_IMODE(st.st_mode):04o}")
        except OSError as exc:
            log.warning("cannot make %s private: %s", path, exc)
    return changed


def hold_data_dir(data_dir: Path) -> int:
    """Lock ``data_dir`` for one serving process (``server.lock``, flock); returns the open file,
    held until the process ends. A second ``serve`` on the same folder would run a second job
    worker on the same queue and answer for the same school: it is refused instead."""
    path = data_dir / "server.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        held = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StartError(
            f"another hwr-sync-server serves {data_dir} already (pid {held}); stop it first, "
            "or give this one another --data-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def open_state(config: SyncConfig, import_shipped: bool = True, create: bool = True) -> SyncState:
    """Data directory, signing key, migrated database and registry, for ``config``.

    ``create=False`` (the admin's commands) refuses a data directory that holds no school (no
    signing key) instead of making one: a command run without the server's ``--data-dir`` would
    otherwise add a device to, or publish a model in, a new school no device ever hears of.
    """
    if not create and not key_path(config.data_dir).exists():
        raise StartError(
            f"{config.data_dir} holds no school's server (no signing key there); pass the "
            f"--data-dir the server runs with, or make a new school with "
            f"`hwr-sync-server init --data-dir {config.data_dir}`"
        )
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartError(f"cannot create the data directory {config.data_dir}: {exc}") from None
    if not os.access(config.data_dir, os.W_OK):
        raise StartError(f"the data directory {config.data_dir} is not writable")
    key = load_or_create_key(config.data_dir)
    admin = config.admin_secret()
    engine = open_database(config.db_url, pool_size=min(config.threads, 20))
    try:
        registry = Registry(engine, config.data_dir, key, publish_pause=config.publish_pause)
        if import_shipped:
            imported = registry.import_shipped(config.models_dir)
            if imported:
                log.info("imported the shipped models %s as their first releases", imported)
    except BaseException:
        engine.dispose()
        raise
    return SyncState(config=config, engine=engine, key=key, registry=registry, admin_token=admin)


__all__ = ["StartError", "SyncState", "hold_data_dir", "make_private", "open_state"]
