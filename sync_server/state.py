"""What the server holds while it runs: the database, the signing key, the registry, the notifier.

:func:`open_state` is what every entry point runs first (the server's factory and each CLI
command): make the data directory, make or check the signing key, migrate the database and
import the shipped models as the first releases.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine

from hwrcore.errors import HwrError

from .config import SyncConfig
from .db import open_database
from .keys import load_or_create_key
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


def open_state(config: SyncConfig, import_shipped: bool = True) -> SyncState:
    """Data directory, signing key, migrated database and registry, for ``config``."""
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


__all__ = ["StartError", "SyncState", "open_state"]
