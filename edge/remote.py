"""Remote access to the edge: ``hwr-edge --tunnel`` opens an ngrok tunnel to the viewer only.

:func:`check_tunnel` runs in the master before anything is bound: the tunnel is refused (the
process exits 2 with one line) unless the viewer token is set, since the URL is public, and an
ngrok auth token is found (``NGROK_AUTHTOKEN`` or ``ngrok_token_file``). :func:`open_tunnel`
then starts it in the worker's background (hwrcore/tunnel.py): start-up never waits for it;
offline it fails with one line after ``tunnel_timeout`` seconds and the device keeps serving
locally. While it is open its host is a known Host of the guard and a remote one of the viewer's
gate: requests for it reach the viewer's routes only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Flask

from hwrcore.leftover_agent import AGENT_PID_FILE
from hwrcore.tunnel import (
    Tunnel,
    TunnelRefused,
    options_from_settings,
    read_auth_token,
    require_authentication,
    start_tunnel,
    traffic_policy,
)

from .config import EdgeConfig

log = logging.getLogger(__name__)

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})
WHAT = "the edge viewer (no viewer_token is set)"


def tunnel_options(config: EdgeConfig) -> dict[str, Any]:
    """The Tunnel's options from the settings: agent path, region, ngrok-enforced protection."""
    return options_from_settings(config)


def check_tunnel(config: EdgeConfig) -> None:
    """Refuse ``--tunnel`` before start-up unless the viewer is protected and ngrok has a token."""
    if config.host not in WILDCARDS and config.host not in LOCAL_HOSTS:
        raise TunnelRefused(
            f"ngrok tunnel refused: it forwards to 127.0.0.1, but the device listens on "
            f"{config.host} only; listen on 127.0.0.1 or 0.0.0.0"
        )
    require_authentication(bool(config.viewer_secret()), WHAT)
    read_auth_token(config.ngrok_token_file or None)
    opts = tunnel_options(config)
    traffic_policy(
        basic_auth=opts["basic_auth"],
        oauth_provider=opts["oauth_provider"],
        allow_emails=opts["allow_emails"],
        ip_allow=opts["ip_allow"],
    )


class EdgeTunnel:
    """The device's tunnel as /healthz and the heartbeat report it."""

    def __init__(self, tunnel: Tunnel):
        self.tunnel = tunnel

    def status(self) -> dict[str, Any]:
        """state, url, error, and viewer_url (the link a teacher opens) while open."""
        status = self.tunnel.status()
        url = status.get("url")
        return {**status, "viewer_url": f"{url}/viewer" if url else None}

    def viewer_url(self) -> str:
        """The viewer's public link, '' while the tunnel is not open."""
        url = self.tunnel.url
        return f"{url}/viewer" if url else ""

    def close(self) -> None:
        self.tunnel.close()


def open_tunnel(app: Flask, config: EdgeConfig) -> EdgeTunnel:
    """Start the tunnel in the background; its host reaches the viewer only while it is open."""
    from .viewer import add_remote_host, remove_remote_host

    hosts: list[str] = []

    def on_change(tunnel: Tunnel) -> None:
        url = tunnel.url
        if url and not hosts:
            host = urlsplit(url).netloc
            hosts.append(host)
            add_remote_host(app, host)
            log.info("remote viewer: %s/viewer", url)
        elif not url:
            while hosts:
                remove_remote_host(app, hosts.pop())

    tunnel = start_tunnel(
        config.port,
        protected=bool(config.viewer_secret()),
        what=WHAT,
        token_file=config.ngrok_token_file or None,
        on_change=on_change,
        pid_file=Path(config.data_dir) / AGENT_PID_FILE,
        **tunnel_options(config),
    )
    return EdgeTunnel(tunnel)


__all__ = ["EdgeTunnel", "check_tunnel", "open_tunnel", "tunnel_options"]
