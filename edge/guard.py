"""Who may write to the edge: a known Host, the device's own Origin, a JSON content type.

Checked before every request (``init_app`` registers :func:`check_request`):

* ``Host`` must name this device: an IP address (DNS rebinding needs a name, so an address is
  always this machine as the client reached it) or one of :class:`AllowedHosts` (localhost, the
  machine's hostname and ``hostname.local``, the bound host, ``allowed_hosts`` of the config,
  and names added at run time with :meth:`AllowedHosts.add`, e.g. a tunnel's). Else 421
  ``unknown_host``.
* A write (any method but GET, HEAD and OPTIONS) or a WebSocket upgrade that carries an
  ``Origin`` must come from this same origin (scheme and Host of the request): else 403
  ``forbidden_origin``. A browser always sends Origin on cross-site writes and upgrades.
* The write routes take ``Content-Type: application/json`` only (415 ``unsupported_media_type``):
  a cross-site page can send text/plain or a form without asking, never JSON.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterable
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, request

from .config import EdgeConfig

EXTENSION = "hwr_hosts"
JSON_ROUTES = frozenset(
    {
        "/api/predict",
        "/api/correct",
        "/api/confirm",
        "/api/withdraw",
        "/predict",
        "/correct",
        "/stats",
    }
)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Bound addresses that mean "every interface": they name no host.
WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})


def _name_of(host: str) -> str:
    """The name part of a Host header or URL netloc, lower case, without port or brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class AllowedHosts:
    """The names this device answers to; thread-safe, so a tunnel can add its host later."""

    def __init__(self, names: Iterable[str] = ()):
        self._names: set[str] = set()
        self._lock = threading.Lock()
        for n in names:
            self.add(n)

    @classmethod
    def for_config(cls, config: EdgeConfig) -> AllowedHosts:
        """localhost, the machine's own names, the bound host and ``config.allowed_hosts``."""
        names = ["localhost", "127.0.0.1", "::1"]
        hostname = socket.gethostname()
        if hostname:
            names += [hostname, f"{hostname}.local"]
        if config.host not in WILDCARDS:
            names.append(config.host)
        names += [n for n in config.allowed_hosts.split(",") if n.strip()]
        return cls(names)

    def add(self, name: str) -> None:
        """Answer to ``name`` from now on (e.g. a tunnel's public host)."""
        with self._lock:
            self._names.add(_name_of(name))

    def remove(self, name: str) -> None:
        """Stop answering to ``name`` (e.g. when the tunnel closes)."""
        with self._lock:
            self._names.discard(_name_of(name))

    def __contains__(self, host: object) -> bool:
        if not isinstance(host, str):
            return False
        name = _name_of(host)
        if _is_address(name):
            return True
        with self._lock:
            return name in self._names

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._names)


def allowed_hosts(app: Flask) -> AllowedHosts:
    """The app's allowed hosts (the hook for adding a tunnel's host)."""
    return app.extensions[EXTENSION]


def _error(code: str, message: str) -> Response:
    from .api import error_response  # api imports this module's init_app

    return error_response(code, message)


def check_request() -> Response | None:
    """Refuse a request for another host, a write from another origin or a non-JSON write."""
    host = request.headers.get("Host")
    if host is not None and host not in allowed_hosts(current_app):
        return _error("unknown_host", "this device does not answer to that host name")
    upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
    if request.method not in SAFE_METHODS or upgrade:
        origin = request.headers.get("Origin")
        if origin is not None and not same_origin(origin, host):
            return _error("forbidden_origin", "writes are accepted from this device's page only")
    if request.method == "POST" and request.path in JSON_ROUTES:
        if request.mimetype != "application/json":
            return _error(
                "unsupported_media_type",
                "send the request as JSON (Content-Type: application/json)",
            )
    return None


def same_origin(origin: str, host: str | None) -> bool:
    """Whether an Origin header names the origin the request was sent to (its Host)."""
    if host is None:
        return False
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    return parts.netloc.lower() == host.strip().lower()


def init_app(app: Flask) -> AllowedHosts:
    """Keep the allowed hosts on the app and check every request before its route."""
    hosts = AllowedHosts.for_config(app.config["HWR_CONFIG"])
    app.extensions[EXTENSION] = hosts
    app.before_request(check_request)
    return hosts


__all__ = ["AllowedHosts", "allowed_hosts", "check_request", "init_app", "same_origin"]
