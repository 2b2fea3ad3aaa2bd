"""The edge process's configuration: defaults, then a TOML file, then HWR_EDGE_* variables, then flags.

Every layer may set only the fields of :class:`EdgeConfig`; an unknown key is an error, so a
misspelt setting fails at start instead of being ignored.
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

ENV_PREFIX = "HWR_EDGE_"
# Settings never written to the log or a flag.
SECRET_FIELDS = ("sync_token", "viewer_token", "tunnel_basic_auth")
# A viewer token guards a public URL: shorter ones are refused.
MIN_VIEWER_TOKEN_CHARS = 16


def default_data_dir() -> Path:
    """Per-user data directory: $XDG_DATA_HOME/hwr-edge, else ~/.local/share/hwr-edge."""
    return user_data_dir("hwr-edge")


def default_models_dir() -> Path:
    """The shipped models: models_export/ of a checkout, else the installed copy."""
    return assets.shipped_models_dir()


def default_web_dir() -> Path:
    """The canvas page and its assets: web/ of a checkout, else the installed copy."""
    return assets.web_dir()


@dataclass
class EdgeConfig:
    """Everything the edge process can be told; see :func:`load_config` for the layers."""

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = field(default_factory=default_data_dir)
    models_dir: Path = field(default_factory=default_models_dir)
    web_dir: Path = field(default_factory=default_web_dir)
    correction_cap: int = 5000  # corrections kept per mode; synced ones are dropped first
    max_body_bytes: int = 1 << 20  # largest HTTP request body
    ws_max_message_bytes: int = 256 << 10  # largest WebSocket message answered
    ws_messages_per_second: float = 30.0  # sustained rate per socket
    ws_burst: int = 60  # messages a socket may send at once before the rate applies
    recent_predictions: int = 1000  # predictions remembered for a correction by id
    threads: int = 32  # server threads: one per open WebSocket, plus HTTP
    model_threads: int = (
        2  # interpreter threads per model (2 halves a digit prediction: 0.60 -> 0.35 ms)
    )
    log_level: str = "info"
    # The school's sync server; with sync_url empty the device works offline only.
    sync_url: str = ""  # e.g. http://school-server:8100
    sync_token: str = ""  # the device token (environment or TOML; never a flag, never logged)
    sync_token_file: str = ""  # a file holding the device token, instead of sync_token
    sync_public_key: str = ""  # the server's Ed25519 public key (base64), pinned
    sync_interval: float = 2.0  # seconds between looks for pending corrections
    sync_batch: int = 100  # corrections per upload (the server takes at most 100)
    sync_connect_timeout: float = 3.0  # seconds to connect to the server
    sync_read_timeout: float = 15.0  # seconds to wait for an answer
    sync_backoff_max: float = 60.0  # longest wait between failed attempts
    heartbeat_interval: float = 30.0  # seconds between heartbeats
    model_poll_interval: float = 30.0  # seconds between release checks when no notice socket
    pending_limit: int = 10000  # pending corrections per mode before new ones are refused
    # Abuse limits (edge/guard.py, hwrcore/worker.py, edge/ws.py).
    allowed_hosts: str = ""  # more Host names to answer to, comma-separated
    request_timeout: float = 10.0  # seconds a client has to send a whole request
    connections_per_client: int = 64  # open connections one address may hold
    sockets_per_client: int = 8  # open WebSockets one address may hold
    ws_idle_timeout: float = 300.0  # seconds a WebSocket may stay silent before it is closed
    # The live viewer (edge/viewer.py) and remote access through an ngrok tunnel.
    viewer_token: str = ""  # signs a teacher in at /viewer (environment or TOML; never logged)
    viewer_token_file: str = ""  # a file holding the viewer token, instead of viewer_token
    viewer_session_minutes: int = 120  # how long a viewer sign-in lasts
    max_viewers: int = 8  # viewer sockets open at once
    tunnel: bool = False  # open an ngrok tunnel to the viewer (hwr-edge --tunnel)
    ngrok_token_file: str = ""  # a file holding the ngrok auth token (else NGROK_AUTHTOKEN)
    ngrok_path: str = ""  # the ngrok agent binary (else PATH, else pyngrok downloads it)
    ngrok_region: str = ""  # an ngrok region (us, eu, ap, ...); empty: ngrok's choice
    tunnel_timeout: float = 15.0  # seconds the tunnel may take to open before it is given up
    tunnel_basic_auth: str = ""  # ngrok-enforced basic auth: user:password,... (secret)
    tunnel_oauth_provider: str = ""  # ngrok-enforced OAuth (google, github, ...)
    tunnel_allow_emails: str = ""  # with OAuth: only these e-mail addresses, comma-separated
    tunnel_ip_allow: str = ""  # ngrok-enforced IP allow-list: addresses or CIDRs, comma-separated

    def __post_init__(self) -> None:
        # absolute now: Flask would read a relative path against its package, not the cwd
        self.data_dir = Path(self.data_dir).expanduser().absolute()
        self.models_dir = Path(self.models_dir).expanduser().absolute()
        self.web_dir = Path(self.web_dir).expanduser().absolute()
        self.validate()

    def validate(self) -> None:
        """Reject values the process cannot run with, naming the setting."""
        require_common(self.port, self.log_level)
        require_at_least(
            self,
            1,
            "correction_cap",
            "max_body_bytes",
            "ws_max_message_bytes",
            "ws_burst",
            "recent_predictions",
            "threads",
            "model_threads",
            "sync_batch",
            "pending_limit",
            "connections_per_client",
            "sockets_per_client",
            "viewer_session_minutes",
            "max_viewers",
        )
        require_positive(
            self,
            "ws_messages_per_second",
            "sync_interval",
            "sync_connect_timeout",
            "sync_read_timeout",
            "sync_backoff_max",
            "heartbeat_interval",
            "model_poll_interval",
            "request_timeout",
            "ws_idle_timeout",
            "tunnel_timeout",
        )
        if self.sync_batch > 100:
            raise ConfigError(
                f"sync_batch must be at most 100 (the server's limit), got {self.sync_batch}"
            )
        if self.sync_url and not self.sync_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"sync_url must start with http:// or https://, got {self.sync_url!r}"
            )
        if self.sync_token and self.sync_token_file:
            raise ConfigError("set sync_token or sync_token_file, not both")
        if self.viewer_token and self.viewer_token_file:
            raise ConfigError("set viewer_token or viewer_token_file, not both")

    def to_dict(self) -> dict[str, Any]:
        """Plain values (paths as strings, secrets masked), for the start-up log and for tests."""
        out = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}
        for secret in SECRET_FIELDS:
            if out.get(secret):
                out[secret] = "(set)"
        return out

    @property
    def sync_enabled(self) -> bool:
        """Whether a sync server is configured (its URL; the token and key are checked at start)."""
        return bool(self.sync_url)

    def device_token(self) -> str:
        """The device token, from ``sync_token`` or the file ``sync_token_file``; ConfigError if unset."""
        if self.sync_token:
            return self.sync_token.strip()
        if self.sync_token_file:
            return read_secret_file(self.sync_token_file, "sync_token_file")
        raise ConfigError("sync_url is set but no device token: set sync_token or sync_token_file")

    def viewer_secret(self) -> str:
        """The viewer token ('' when none is set: the viewer is then off); ConfigError if too short."""
        token = self.viewer_token.strip()
        if not token and self.viewer_token_file:
            token = read_secret_file(self.viewer_token_file, "viewer_token_file")
        if token and len(token) < MIN_VIEWER_TOKEN_CHARS:
            raise ConfigError(
                f"the viewer token must be at least {MIN_VIEWER_TOKEN_CHARS} characters "
                "(it guards a public URL); make one with: openssl rand -hex 16"
            )
        return token


_LAYERS = Layers(EdgeConfig, env_prefix=ENV_PREFIX, table="edge", secrets=SECRET_FIELDS)
read_toml = _LAYERS.read_toml
read_env = _LAYERS.read_env


def load_config(
    config_file: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> EdgeConfig:
    """Defaults, then ``config_file``, then ``env`` (os.environ if None), then ``overrides``."""
    return _LAYERS.load(config_file, env, overrides)


__all__ = ["ConfigError", "EdgeConfig", "default_data_dir", "default_models_dir", "load_config"]
