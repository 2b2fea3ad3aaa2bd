"""The viewer's sign-in: the viewer token, the signed-in sessions and a limit on failed tries.

Sessions are kept by the sha256 of their id with a wall-clock expiry; with ``path`` they are also
written there (0600, replaced whole), so a restart of the device does not sign every teacher out.
The file names the token's own digest: sessions made under another token are dropped on load.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from hwrcore.files import write_json

log = logging.getLogger(__name__)

MAX_TOKEN_CHARS = 500
# Failed sign-ins in FAIL_WINDOW_S before sign-in is refused for a while: per client, and from
# every remote client together (a classroom's own network is never shut out by the second, so
# no one on the internet can lock the teachers out; 100 a minute still leaves a 16-character
# token out of reach of guessing).
FAILS_PER_CLIENT = 5
FAILS_REMOTE = 100
FAIL_WINDOW_S = 60.0
MAX_CLIENTS_TRACKED = 10_000  # clients with recent failures kept; past it, the oldest go
MAX_SESSIONS = 1_000  # signed-in sessions kept; past it, the oldest go


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class ViewerAuth:
    """The viewer token, the signed-in sessions and a limit on failed sign-ins."""

    def __init__(
        self,
        token: str,
        minutes: int,
        clock: Callable[[], float] = time.time,
        path: Path | None = None,
    ):
        self._token = _digest(token)
        self.lifetime = minutes * 60.0
        self._clock = clock
        self._sessions: dict[bytes, float] = {}  # sha256 of the session id -> expiry
        self._fails: dict[str, deque[float]] = {}  # client -> its recent failures, oldest first
        self._remote_fails: deque[float] = deque()
        self._lock = threading.Lock()
        self._path = path
        # What the file names the token by: not the token's own digest, which the memory holds
        self._mark = hashlib.sha256(b"hwr viewer sessions\0" + self._token).hexdigest()
        self._load()

    # -- the sessions' file -------------------------------------------------------------------
    def _load(self) -> None:
        if self._path is None or not self._path.exists():
            return
        try:
            held = json.loads(self._path.read_text())
            if held.get("token") != self._mark:
                log.info("viewer sessions of another viewer token dropped")
                return
            now = self._clock()
            for key, expires in held["sessions"].items():
                expires = min(float(expires), now + self.lifetime)  # a shorter lifetime holds
                if expires > now:
                    self._sessions[bytes.fromhex(key)] = expires
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("the viewer sessions file could not be read (%s); none kept", exc)
            self._sessions.clear()

    def _save(self) -> None:
        """Write the sessions (under the lock); a failure only costs sign-ins after a restart."""
        if self._path is None:
            return
        body = {"token": self._mark, "sessions": {k.hex(): v for k, v in self._sessions.items()}}
        try:
            write_json(self._path, body, mode=0o600)
        except OSError as exc:
            log.warning("the viewer sessions could not be saved: %s", exc)

    def matches(self, token: object) -> bool:
        """Whether ``token`` is the viewer token (constant time; any length)."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
            return False
        return hmac.compare_digest(_digest(token.strip()), self._token)

    def retry_after(self, client: str = "", remote: bool = False) -> float:
        """Seconds until ``client`` may try to sign in again (0: now)."""
        now = self._clock()
        with self._lock:
            mine = self._recent(self._fails.get(client), now)
            waits = [0.0]
            if mine is not None and len(mine) >= FAILS_PER_CLIENT:
                waits.append(mine[0] + FAIL_WINDOW_S - now)
            every = self._recent(self._remote_fails, now)
            if remote and len(every) >= FAILS_REMOTE:
                waits.append(every[0] + FAIL_WINDOW_S - now)
            return max(waits)

    def failed(self, client: str = "", remote: bool = False) -> None:
        """Count a wrong token from ``client`` (and, ``remote``, from the tunnel's side)."""
        now = self._clock()
        with self._lock:
            mine = self._fails.pop(client, None) or deque()
            mine.append(now)
            self._fails[client] = mine  # the newest last: the dict's order is by last failure
            while len(self._fails) > MAX_CLIENTS_TRACKED:
                del self._fails[next(iter(self._fails))]
            if remote:
                self._remote_fails.append(now)
                while len(self._remote_fails) > FAILS_REMOTE:
                    self._remote_fails.popleft()

    @staticmethod
    def _recent(fails: deque[float] | None, now: float) -> deque[float] | None:
        while fails and fails[0] <= now - FAIL_WINDOW_S:
            fails.popleft()
        return fails

    def start(self) -> str:
        """A new session; returns its id (the cookie's value)."""
        sid = secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            for key, expires in list(self._sessions.items()):
                if expires <= now:
                    del self._sessions[key]
            self._sessions[_digest(sid)] = now + self.lifetime
            while len(self._sessions) > MAX_SESSIONS:
                del self._sessions[next(iter(self._sessions))]
            self._save()
        return sid

    def valid(self, sid: str | None) -> bool:
        if not sid or len(sid) > 100:
            return False
        expires = self._sessions.get(_digest(sid))
        return expires is not None and expires > self._clock()

    def end(self, sid: str | None) -> None:
        if sid:
            with self._lock:
                if self._sessions.pop(_digest(sid), None) is not None:
                    self._save()


__all__ = ["FAIL_WINDOW_S", "FAILS_PER_CLIENT", "FAILS_REMOTE", "MAX_CLIENTS_TRACKED", "ViewerAuth"]
