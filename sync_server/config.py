"""The sync server's configuration: defaults, then a TOML file, then HWR_SYNC_* variables, then flags.

Every layer may set only the fields of :class:`SyncConfig`; an unknown key is an error, so a
misspelt setting fails at start instead of being ignored. The admin token is read from
``HWR_SYNC_ADMIN_TOKEN`` or the file named by ``admin_token_file``, never from a flag, and is
never logged.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwrcore import assets
from hwrcore.settings import (
    ConfigError,
    Layers,
    read_secret_file,
    require_at_least,
    require_common,
    require_positive,
    user_data_dir,
)

ENV_PREFIX = "HWR_SYNC_"
ADMIN_TOKEN_ENV = "HWR_SYNC_ADMIN_TOKEN"
# Settings never written to the log or taken from a flag.
SECRET_FIELDS = ("admin_token", "tunnel_basic_auth")


def default_data_dir() -> Path:
    """Per-user data directory: $XDG_DATA_HOME/hwr-sync, else ~/.local/share/hwr-sync."""
    return user_data_dir("hwr-sync")


def default_models_dir() -> Path:
    """The shipped models (the registry's first releases): a checkout's, else the installed copy."""
    return assets.shipped_models_dir()


MIN_ADMIN_TOKEN_CHARS = 16


@dataclass
class SyncConfig:
    """Everything the sync server can be told; see :func:`load_config` for the layers."""

    host: str = "127.0.0.1"
    port: int = 8100
    data_dir: Path = field(default_factory=default_data_dir)
    database_url: str = ""  # empty: sqlite:///<data_dir>/sync.db
    models_dir: Path = field(default_factory=default_models_dir)
    admin_token: str = ""  # from HWR_SYNC_ADMIN_TOKEN or TOML; never a flag, never logged
    admin_token_file: str = ""  # a file holding the admin token, instead of admin_token
    max_body_bytes: int = 1 << 20  # largest request body (the contract's 1 MiB)
    request_timeout: float = 10.0  # seconds a client has to send a whole request
    # open connections one address may hold, per worker: a school's devices behind one NAT, or
    # all of them through a tunnel's local agent, come from one address
    connections_per_client: int = 512
    max_batch: int = 100  # corrections per upload (the contract's 100)
    rate_per_second: float = 10.0  # sustained requests per device
    rate_burst: int = 30  # requests a device may make at once before the rate applies
    release_poll_interval: float = 0.5  # seconds between looks at the releases table
    workers: int = 2  # gunicorn worker processes (the device API's rate limits count per worker)
    threads: int = 32  # threads per worker: one per open notify socket, plus HTTP
    log_level: str = "info"
    admin_session_minutes: int = 480  # how long a dashboard sign-in lasts
    proxy_hops: int = 0  # proxies (a tunnel, nginx) in front that set X-Forwarded-*; 0: none
    # Remote access through an ngrok tunnel (hwr-sync-server serve --tunnel; sync_server/remote.py).
    tunnel: bool = False  # open an ngrok tunnel to this server (refused without an admin token)
    ngrok_token_file: str = ""  # a file holding the ngrok auth token (else NGROK_AUTHTOKEN)
    ngrok_path: str = ""  # the ngrok agent binary (else PATH, else pyngrok downloads it)
    ngrok_region: str = ""  # an ngrok region (us, eu, ap, ...); empty: ngrok's choice
    tunnel_timeout: float = 15.0  # seconds the tunnel may take to open before it is given up
    tunnel_basic_auth: str = ""  # ngrok-enforced basic auth: user:password,... (secret)
    tunnel_oauth_provider: str = ""  # ngrok-enforced OAuth (google, github, ...)
    tunnel_allow_emails: str = ""  # with OAuth: only these e-mail addresses, comma-separated
    tunnel_ip_allow: str = ""  # ngrok-enforced IP allow-list: addresses or CIDRs, comma-separated
    # -- the learning loop (sync_server/merge.py, jobs.py, retrain.py) ---------------------------
    start_worker: bool = True  # serve starts an hwr-sync-server worker beside itself
    worker_threads: int = 2  # Huey worker threads (scoring goes on while one job trains)
    worker_nice: int = 10  # the worker's CPU priority below the server's (0: the same)
    jobs_db: str = ""  # Huey's SQLite file; empty: <data_dir>/jobs.db
    base_data_dir: str = (
        ""  # MNIST/EMNIST for replay and the gate; empty: $HWR_DATA_DIR, ../shared/data
    )
    relabel: str = (
        "auto"  # characters: relabel list for replay and base test ('auto': the trainer's)
    )
    score_delay: float = 0.5  # seconds a merged batch waits before its scoring task runs
    quarantine_confidence: float = 0.50  # the model disagrees "at high confidence" from here
    neighbours: int = 11  # nearest stored neighbours (other devices) asked for a consensus
    neighbour_similarity: float = 0.60  # cosine on the embedding for a neighbour to count
    neighbour_consensus: float = 0.5  # share of the neighbours that makes their label a consensus
    lift_devices: int = 2  # distinct devices labelling neighbours the same way lift a quarantine
    max_device_share: float = 0.5  # most of a training set one device may contribute
    heldout_share: float = 0.2  # corrections (whole devices) held out of training for the gate
    retrain_after: int = 1000  # new accepted corrections that start a retrain (0: never)
    retrain_min_interval: float = 6 * 3600.0  # seconds between automatic retrains of a model
    retrain_epochs: int = 3
    retrain_max_steps: int = 0  # >0: at most this many steps an epoch (tests)
    retrain_batch: int = 64
    retrain_lr: float = 3e-4
    retrain_threads: int = 0  # TensorFlow threads (0: its default)
    retrain_layers: str = "auto"  # "all"; "head": embedding and output layers; auto: per model
    replay_per_class: int = 300  # base training images per class replayed beside corrections
    eval_limit: int = 0  # >0: the gate reads only this many base test images (tests)
    gate_max_accuracy_drop: float = 0.002  # base test accuracy may fall by at most 0.2 points
    gate_max_recall_drop: float = 0.03  # no class's base test recall may fall by more
    job_stale_s: float = 120.0  # a running job without a heartbeat this long has lost its worker
    publish_pause: float = 0.0  # seconds a publish waits before it commits (tests kill it there)

    def __post_init__(self) -> None:
        # absolute now: Flask would read a relative path against its package, not the cwd
        self.data_dir = Path(self.data_dir).expanduser().absolute()
        self.models_dir = Path(self.models_dir).expanduser().absolute()
        self.validate()

    def validate(self) -> None:
        """Reject values the server cannot run with, naming the setting."""
        require_common(self.port, self.log_level)
        if self.admin_token and self.admin_token_file:
            raise ConfigError("set admin_token or admin_token_file, not both")
        if not 0 <= self.proxy_hops <= 5:
            raise ConfigError(f"proxy_hops must be 0-5, got {self.proxy_hops}")
        require_at_least(
            self,
            1,
            "max_body_bytes",
            "connections_per_client",
            "max_batch",
            "rate_burst",
            "workers",
            "threads",
            "admin_session_minutes",
            "worker_threads",
            "neighbours",
            "lift_devices",
            "retrain_epochs",
            "retrain_batch",
        )
        require_positive(
            self, "rate_per_second", "release_poll_interval", "tunnel_timeout", "request_timeout"
        )
        for name in (
            "quarantine_confidence",
            "neighbour_similarity",
            "neighbour_consensus",
            "max_device_share",
            "heldout_share",
        ):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must lie in (0, 1], got {getattr(self, name)}")
        if self.retrain_layers not in ("auto", "all", "head"):
            raise ConfigError(
                f"retrain_layers must be 'auto', 'all' or 'head', got {self.retrain_layers!r}"
            )
        require_at_least(
            self, 0, "retrain_after", "replay_per_class", "eval_limit", "retrain_max_steps"
        )
        if self.admin_token and self.admin_token_file:
            raise ConfigError(
                "set admin_token (HWR_SYNC_ADMIN_TOKEN) or admin_token_file, not both"
            )
        if self.database_url and "://" not in self.database_url:
            raise ConfigError(
                f"database_url must be a SQLAlchemy URL such as sqlite:///path or "
                f"postgresql+psycopg://user@host/db, got {self.database_url!r}"
            )

    @property
    def jobs_path(self) -> Path:
        """Huey's SQLite file: ``jobs_db``, else jobs.db in the data directory."""
        return (
            Path(self.jobs_db).expanduser().absolute()
            if self.jobs_db
            else self.data_dir / "jobs.db"
        )

    @property
    def db_url(self) -> str:
        """The database URL: ``database_url``, else SQLite in the data directory."""
        return self.database_url or f"sqlite:///{self.data_dir / 'sync.db'}"

    def admin_secret(self) -> str:
        """The admin token ('' when none is set: the admin routes then refuse everyone); one
        shorter than MIN_ADMIN_TOKEN_CHARS is refused, since it may guard a public URL."""
        token = ""
        if self.admin_token:
            token = self.admin_token.strip()
        elif self.admin_token_file:
            token = read_secret_file(self.admin_token_file, "admin_token_file")
        if token and len(token) < MIN_ADMIN_TOKEN_CHARS:
            raise ConfigError(
                f"the admin token must be at least {MIN_ADMIN_TOKEN_CHARS} characters (it opens "
                "the dashboard, and with --tunnel a public URL); make one with: openssl rand -hex 16"
            )
        return token

    def to_dict(self) -> dict[str, Any]:
        """Plain values (paths as strings, secrets and URL passwords masked), for the log."""
        out = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}
        for secret in SECRET_FIELDS:
            if out.get(secret):
                out[secret] = "(set)"
        out["database_url"] = mask_url(self.db_url)
        return out


def mask_url(url: str) -> str:
    """A database URL with its password replaced by ***."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in creds:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


_LAYERS = Layers(SyncConfig, env_prefix=ENV_PREFIX, table="sync", secrets=SECRET_FIELDS)
read_toml = _LAYERS.read_toml
read_env = _LAYERS.read_env


def load_config(
    config_file: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> SyncConfig:
    """Defaults, then ``config_file``, then ``env`` (os.environ if None), then ``overrides``."""
    return _LAYERS.load(config_file, env, overrides)


__all__ = ["ConfigError", "SyncConfig", "load_config", "mask_url"]
