"""The listening socket of a server process, bound before the server starts, and its URL.

``hwr-edge`` and ``hwr-sync-server`` bind here, in the supervising process, so a port in use is
reported at once as one line; gunicorn then serves on the inherited socket (``fd://N``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket

PR_SET_PDEATHSIG = 1
PRIVATE_UMASK = 0o077


def keep_private() -> None:
    """Make every file and folder this process creates from now on its user's alone (0600,
    0700): stores and databases hold pupils' drawings, which other local users must not read."""
    os.umask(PRIVATE_UMASK)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (SO_REUSEADDR, so a restart rebinds at once)."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family in (socket.AF_INET, socket.AF_INET6):
            # Set before listen(): connections accepted early inherit it, so no answer waits
            # on Nagle's algorithm.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port/`` of a bound socket (IPv6 in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def die_with_parent(expected_ppid: int) -> None:
    """In a worker: get SIGKILL when the supervisor dies (Linux), as a power cut would end both.

    Exits at once when the supervisor is already gone (it died before this ran).
    """
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: gunicorn's own parent check ends the worker a little later
    if os.getppid() != expected_ppid:
        os._exit(1)


__all__ = ["bind", "die_with_parent", "url_of"]
