"""Dashboard sign-in: the admin token checked in constant time, server-side sessions, CSRF, limits.

A person signs in at ``/admin/signin`` with the admin token (and a name recorded with their
decisions). The browser then holds a signed session cookie (HttpOnly, SameSite=Strict, Secure
when the request came over https, path ``/admin``) naming a random session id; the session
itself is a file under ``<data_dir>/admin_sessions/`` (its id's sha256 as the name), so signing
out ends it on the server at once, in every worker process. The cookie's signing key is made at
first start in ``<data_dir>/admin_session.key`` (mode 0600), never in the repository. Every form
carries a Flask-WTF CSRF token; failed sign-ins are limited per client address and overall.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from flask import Flask, Request, request, session
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import Engine, func, select
from werkzeug.middleware.proxy_fix import ProxyFix

from hwrcore.errors import HwrError
from hwrcore.tunnel import agent_client

from .config import SyncConfig
from .db import reading, signin_failures, writing

SECRET_FILE = "admin_session.key"
SESSIONS_DIR = "admin_sessions"
COOKIE = "hwr_admin"
NAME_RE = re.compile(r"^[\w .@'-]{1,40}$")
MAX_TOKEN_CHARS = 500
# Failed sign-ins in the last FAIL_WINDOW_S: per client address, and over every address outside
# the school's networks together (the tunnel's side, public addresses). The school's own network
# is never held up by that second limit, so no device on it can keep the admin out by sending
# wrong tokens; a 16-character token stays out of reach of 5 guesses a minute per address.
FAILS_PER_ADDRESS = 5
FAILS_REMOTE = 30
FAIL_WINDOW_S = 60.0
REMOTE = "remote "  # how an address from outside the school's networks is recorded

csrf = CSRFProtect()


class AuthError(HwrError):
    """A session secret that cannot be made or read safely."""

    code = "insecure_secret"


@dataclass(frozen=True)
class AdminSession:
    """A signed-in person: who they said they are and when the session ends."""

    sid_hash: str
    who: str
    created: float
    expires: float


def load_or_create_secret(data_dir: Path) -> bytes:
    """The cookie-signing key of ``data_dir`` (made on first use, mode 0600; a loose mode refused)."""
    path = Path(data_dir) / SECRET_FILE
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # another worker's file, made first, wins
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise AuthError(
            f"the session secret {path} has mode {mode:04o}; it must be readable by its owner "
            f"only: chmod 600 {path}"
        )
    data = path.read_bytes().strip()
    if len(data) < 32:
        raise AuthError(f"the session secret {path} is too short; delete it to make a new one")
    return data


def token_matches(given: str, secret: str) -> bool:
    """Whether ``given`` is the admin token, compared in constant time (False with no token set)."""
    if not secret or not given or len(given) > MAX_TOKEN_CHARS:
        return False
    return hmac.compare_digest(
        hashlib.sha256(given.encode("utf-8")).digest(),
        hashlib.sha256(secret.encode("utf-8")).digest(),
    )


def clean_name(name: str | None) -> str | None:
    """The name a person signs in under ('admin' when blank), or None if it is not acceptable."""
    name = (name or "").strip() or "admin"
    return name if NAME_RE.match(name) else None


class SignInLimiter:
    """Failed sign-ins in the last minute, per address and overall; over either, refuse a while.

    Counted in the database, so the limits hold for the server as a whole, whatever the number
    of worker processes; a failure older than the window is deleted at the next one.
    """

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time):
        self.engine = engine
        self.clock = clock

    def wait(self, addr: str) -> float:
        """Seconds until ``addr`` may try again (0.0: now)."""
        now = self.clock()
        t = signin_failures
        recent = t.c.at > now - FAIL_WINDOW_S
        with reading(self.engine) as conn:
            mine = conn.execute(
                select(func.count(), func.min(t.c.at)).where(recent, t.c.address == addr[:64])
            ).one()
            remote = t.c.address.startswith(REMOTE)
            every = conn.execute(select(func.count(), func.min(t.c.at)).where(recent, remote)).one()
        waits = [0.0]
        if mine[0] >= FAILS_PER_ADDRESS:
            waits.append(mine[1] + FAIL_WINDOW_S - now)
        if addr.startswith(REMOTE) and every[0] >= FAILS_REMOTE:
            waits.append(every[1] + FAIL_WINDOW_S - now)
        return max(waits)

    def failed(self, addr: str) -> None:
        """Count a failed attempt from ``addr``."""
        now = self.clock()
        with writing(self.engine) as conn:
            conn.execute(
                signin_failures.delete().where(signin_failures.c.at <= now - FAIL_WINDOW_S)
            )
            conn.execute(signin_failures.insert().values(address=addr[:64], at=now))


class SessionStore:
    """Admin sessions as small files (one per session) that every worker process sees."""

    def __init__(self, data_dir: Path, lifetime_s: float):
        self.folder = Path(data_dir) / SESSIONS_DIR
        self.folder.mkdir(mode=0o700, exist_ok=True)
        self.lifetime_s = lifetime_s

    def _path(self, sid_hash: str) -> Path:
        return self.folder / f"{sid_hash}.json"

    def create(self, who: str) -> tuple[str, AdminSession]:
        """A new session for ``who``: its id (for the cookie) and its record."""
        self.sweep()
        sid = secrets.token_urlsafe(32)
        now = time.time()
        s = AdminSession(hashlib.sha256(sid.encode()).hexdigest(), who, now, now + self.lifetime_s)
        tmp = self.folder / f".{s.sid_hash}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, json.dumps({"who": who, "created": now, "expires": s.expires}).encode())
        finally:
            os.close(fd)
        os.replace(tmp, self._path(s.sid_hash))
        return sid, s

    def get(self, sid: object) -> AdminSession | None:
        """The live session of a cookie's id, or None (unknown, signed out or expired)."""
        if not isinstance(sid, str) or not 20 <= len(sid) <= 100:
            return None
        sid_hash = hashlib.sha256(sid.encode()).hexdigest()
        try:
            data = json.loads(self._path(sid_hash).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not time.time() < float(data.get("expires", 0)):
            return None
        return AdminSession(sid_hash, str(data["who"]), float(data["created"]), data["expires"])

    def end(self, sid_hash: str) -> None:
        """Sign a session out: its file goes, so its cookie is worth nothing anywhere."""
        self._path(sid_hash).unlink(missing_ok=True)

    def sweep(self) -> None:
        """Delete the files of expired sessions."""
        now = time.time()
        for p in self.folder.glob("*.json"):
            try:
                if float(json.loads(p.read_text()).get("expires", 0)) <= now:
                    p.unlink(missing_ok=True)
            except (OSError, ValueError, AttributeError):
                p.unlink(missing_ok=True)


class _SessionCookies(SecureCookieSessionInterface):
    """Flask's signed cookie, marked Secure exactly when this request came over https."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure


def init_app(app: Flask, config: SyncConfig) -> None:
    """Cookie settings, the secret, CSRF (checked by the dashboard only), proxy headers if told."""
    lifetime = timedelta(minutes=config.admin_session_minutes)
    app.secret_key = load_or_create_secret(config.data_dir)
    app.session_interface = _SessionCookies()
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_PATH="/admin",
        PERMANENT_SESSION_LIFETIME=lifetime,
        SESSION_REFRESH_EACH_REQUEST=False,
        WTF_CSRF_CHECK_DEFAULT=False,  # the device API takes bearer tokens, not forms
        WTF_CSRF_TIME_LIMIT=int(lifetime.total_seconds()),
        WTF_CSRF_SSL_STRICT=True,
    )
    csrf.init_app(app)
    if config.proxy_hops:
        hops = config.proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)  # type: ignore[method-assign]
    app.extensions["hwr_admin_sessions"] = SessionStore(config.data_dir, lifetime.total_seconds())
    app.extensions["hwr_signin_limiter"] = SignInLimiter(app.extensions["hwr_sync"].engine)


def sessions(app: Flask) -> SessionStore:
    return app.extensions["hwr_admin_sessions"]


def current_session(app: Flask) -> AdminSession | None:
    """The signed-in session of this request, or None."""
    return sessions(app).get(session.get("sid"))


def start_session(app: Flask, who: str) -> AdminSession:
    """Sign ``who`` in: a new session id in a fresh cookie (a fixed-session attack gets nothing)."""
    sid, s = sessions(app).create(who)
    session.clear()
    session.permanent = True
    session["sid"] = sid
    return s


def end_session(app: Flask) -> None:
    """Sign out: the server forgets the session and the cookie is cleared."""
    s = current_session(app)
    if s is not None:
        sessions(app).end(s.sid_hash)
    session.clear()


def client_address(req: Request) -> str:
    """The client's address as the sign-in limits count it (the forwarded one only when
    proxy_hops says to trust it): ``"remote <ip>"`` from outside the school's networks (a
    request the tunnel's agent forwarded from this machine, or a public address), else the
    address itself."""
    addr = req.remote_addr or "-"
    seen = agent_client(req.remote_addr, req.headers.get("X-Forwarded-For"))
    if seen is not None:  # through the tunnel: the address ngrok's agent saw
        return REMOTE + seen
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    if ip.is_private or ip.is_loopback or ip.is_link_local:
        return addr
    return REMOTE + addr


__all__ = [
    "AdminSession",
    "AuthError",
    "SessionStore",
    "SignInLimiter",
    "clean_name",
    "csrf",
    "current_session",
    "end_session",
    "init_app",
    "load_or_create_secret",
    "start_session",
    "token_matches",
]
