"""ngrok HTTP tunnels through pyngrok 9.x: opened in the background, never unauthenticated.

How pyngrok 9.x drives the agent (learnt from its source, and what tests/fake_ngrok.py speaks):
it runs ``ngrok start --none --log stdout [--config P] [--authtoken T] [--region R]``, reads
stdout (logfmt) until it has seen ``msg="starting web service" addr=HOST:PORT`` (the local agent
API), ``msg="client session established"`` and ``msg="tunnel session started"`` and
``GET /api/endpoints`` answers 200; an ``lvl=eror`` line is kept as the start-up error. It then
``POST``s the endpoint definition to ``/api/endpoints`` (``PyngrokConfig.config_version`` is "3"
by default since 9.0: agent *endpoints*, not v2 *tunnels*), reads ``url``/``uri`` back, and later
``DELETE``s that ``uri``; ``ngrok.kill`` sends SIGKILL and waits.

Protection that ngrok itself enforces is passed as the endpoint's ``traffic_policy`` (v3 endpoints
take no v2 ``basic_auth``/``oauth``/``ip_restriction`` fields), rules in this order:

- ``ip_allow=["203.0.113.0/24"]``: ``restrict-ips`` action, ``{"enforce": true, "allow": [...]}``
- ``basic_auth=["user:password"]``: ``basic-auth`` action, ``{"credentials": [...]}`` (at most
  10 pairs, passwords 8 to 128 characters)
- ``oauth_provider="google"``: ``oauth`` action ``{"provider": ...}``; with
  ``allow_emails=[...]`` a following ``deny`` rule for
  ``!(actions.ngrok.oauth.identity.email in [...])``

The auth token comes from ``NGROK_AUTHTOKEN`` or a token file, goes to the agent in a private
(0600) config file rather than on its command line, and is masked in every message, exception and
pyngrok log record. pyngrok's own loggers are set to WARNING (ngrok's echoed lines to silent)
unless the application set their levels itself. The policy is sent as an object, the shape of an
``endpoints:`` entry in the agent config file (the cloud API's string form is not used here).

pyngrok keeps one agent per binary path per Python process and holds one global lock while any
agent starts, so a process runs one Tunnel at a time; the time bound here kills a stuck start.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from hwrcore import leftover_agent
from hwrcore.errors import HwrError

log = logging.getLogger(__name__)

TOKEN_ENV = "NGROK_AUTHTOKEN"
NOT_OPENED = "ngrok tunnel not opened"
LOCAL_ONLY = "serving locally only"
PYNGROK_LOGGERS = (
    "pyngrok",
    "pyngrok.conf",
    "pyngrok.installer",
    "pyngrok.ngrok",
    "pyngrok.process",
    "pyngrok.process.ngrok",
)
_OFFLINE_HINTS = (
    "failed to dial",
    "failed to reconnect session",
    "no such host",
    "lookup ",
    "server misbehaving",
    "network is unreachable",
    "connection refused",
    "i/o timeout",
    "tls handshake timeout",
    "temporary failure in name resolution",
)
_TOKEN_HINTS = ("authentication failed", "authtoken", "err_ngrok_105", "err_ngrok_107")
_EMAIL = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
_PROVIDER = re.compile(r"^[a-z][a-z0-9_-]{1,31}$")


class TunnelError(HwrError):
    """A tunnel that cannot be opened as asked."""

    code = "tunnel_error"


class TunnelRefused(TunnelError):
    """A tunnel refused before anything starts: no auth token, or an app that is not protected."""

    code = "tunnel_refused"


class TunnelOptionsError(TunnelError):
    """Extra protection options that ngrok would refuse (bad credentials, CIDRs, e-mails)."""

    code = "invalid_tunnel_options"


LOOPBACK = ("127.0.0.1", "::1")


def agent_client(remote_addr: str | None, forwarded_for: str | None) -> str | None:
    """For a request the ngrok agent forwarded from this machine, the client address it saw
    (the last X-Forwarded-For hop, the one it appends); None for any other request. A hop a
    sender put there itself comes before the agent's and is not believed."""
    if not forwarded_for or remote_addr not in LOOPBACK:
        return None
    return forwarded_for.rsplit(",", 1)[-1].strip()[:48]


def require_authentication(protected: bool, what: str) -> None:
    """Refuse a tunnel unless every route it exposes requires a token (the URL is public)."""
    if not protected:
        raise TunnelRefused(
            f"ngrok tunnel refused: {what} would be open to anyone with the public URL; "
            "set its token before opening one"
        )


def read_auth_token(
    token_file: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None
) -> str:
    """The ngrok auth token from NGROK_AUTHTOKEN, else from the named file; TunnelRefused if none."""
    env = os.environ if environ is None else environ
    token = (env.get(TOKEN_ENV) or "").strip()
    if token:
        return token
    if token_file:
        path = Path(token_file)
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise TunnelRefused(
                f"ngrok tunnel refused: cannot read the auth token file {path}: {exc.strerror}"
            ) from None
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("ngrok auth token file %s is readable by other users; chmod 600 it", path)
        if token:
            return token
        raise TunnelRefused(f"ngrok tunnel refused: the auth token file {path} is empty")
    raise TunnelRefused(
        f"ngrok tunnel refused: no auth token; set {TOKEN_ENV} or name a token file in the config"
    )


def traffic_policy(
    *,
    basic_auth: Iterable[str] = (),
    oauth_provider: str | None = None,
    allow_emails: Iterable[str] = (),
    ip_allow: Iterable[str] = (),
) -> dict | None:
    """The ngrok traffic policy enforcing the extra protection asked for, or None for none."""
    creds = list(basic_auth)
    emails = list(allow_emails)
    cidrs = [_cidr(c) for c in ip_allow]
    if len(creds) > 10:
        raise TunnelOptionsError("basic_auth takes at most 10 user:password pairs")
    for cred in creds:
        user, sep, password = cred.partition(":")
        if not sep or not user or not 8 <= len(password) <= 128:
            raise TunnelOptionsError(
                "basic_auth entries are user:password with a password of 8 to 128 characters"
            )
    if oauth_provider is not None and not _PROVIDER.match(oauth_provider):
        raise TunnelOptionsError(
            f"oauth_provider must be a provider name like google, not {oauth_provider!r}"
        )
    if emails and oauth_provider is None:
        raise TunnelOptionsError("allow_emails needs oauth_provider (the e-mail comes from OAuth)")
    for email in emails:
        if not _EMAIL.match(email):
            raise TunnelOptionsError(f"allow_emails: not an e-mail address: {email!r}")
    rules: list[dict] = []
    if cidrs:
        rules.append(
            {"actions": [{"type": "restrict-ips", "config": {"enforce": True, "allow": cidrs}}]}
        )
    if creds:
        rules.append({"actions": [{"type": "basic-auth", "config": {"credentials": creds}}]})
    if oauth_provider is not None:
        rules.append({"actions": [{"type": "oauth", "config": {"provider": oauth_provider}}]})
        if emails:
            listed = ", ".join(f"'{e}'" for e in emails)
            rules.append(
                {
                    "expressions": [f"!(actions.ngrok.oauth.identity.email in [{listed}])"],
                    "actions": [{"type": "deny"}],
                }
            )
    return {"on_http_request": rules} if rules else None


def _cidr(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise TunnelOptionsError(f"ip_allow: not an IP address or CIDR: {text!r}") from None


class _Mask(logging.Filter):
    """Replaces every known secret in a record's message before any handler sees it."""

    def __init__(self) -> None:
        super().__init__("hwrcore.tunnel.mask")
        self.secrets: set[str] = set()

    def mask(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return re.sub(r"(Your authtoken:\s*)\S+", r"\1***", text)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = self.mask(record.getMessage())
            record.args = None
        return True


_MASK = _Mask()
_quiet_lock = threading.Lock()
_open_paths: set[str] = set()


def _quiet_pyngrok(secrets_: Iterable[str]) -> None:
    """Mask secrets in pyngrok's log records; quiet its loggers unless the app chose levels."""
    with _quiet_lock:
        _MASK.secrets.update(s for s in secrets_ if s)
        for name in PYNGROK_LOGGERS:
            logger = logging.getLogger(name)
            if _MASK not in logger.filters:
                logger.addFilter(_MASK)
                if logger.level == logging.NOTSET:
                    silent = name == "pyngrok.process.ngrok"
                    logger.setLevel(logging.CRITICAL + 10 if silent else logging.WARNING)


def _resolve_ngrok_path(ngrok_path: str | os.PathLike | None) -> tuple[str, bool]:
    """(path, exists): the configured binary, else PYNGROK_NGROK_PATH, ngrok on PATH, pyngrok's."""
    if ngrok_path is not None:
        return str(ngrok_path), os.path.isfile(ngrok_path)
    env = os.environ.get("PYNGROK_NGROK_PATH")
    if env:
        return env, os.path.isfile(env)
    found = shutil.which("ngrok")
    if found and not _is_pyngrok_script(found):
        return found, True
    from pyngrok import conf

    return conf.DEFAULT_NGROK_PATH, os.path.isfile(conf.DEFAULT_NGROK_PATH)


def _is_pyngrok_script(path: str) -> bool:
    """Whether ``path`` is pyngrok's own ``ngrok`` console script: it runs the agent as a child,
    so killing it would leave the agent running."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return head.startswith(b"#!") and b"pyngrok" in head


class Tunnel:
    """One ngrok HTTP tunnel to 127.0.0.1:<port>, opened in a background thread.

    ``start()`` returns at once; ``state`` goes starting -> open | failed, then closed.
    ``on_change(tunnel)`` is called on each of those. ``close()`` is bounded in time.
    """

    def __init__(
        self,
        local_port: int,
        *,
        auth_token: str,
        ngrok_path: str | os.PathLike | None = None,
        region: str | None = None,
        basic_auth: Iterable[str] = (),
        oauth_provider: str | None = None,
        allow_emails: Iterable[str] = (),
        ip_allow: Iterable[str] = (),
        timeout: float = 15.0,
        download: bool = True,
        on_change: Callable[[Tunnel], None] | None = None,
        pid_file: str | os.PathLike | None = None,
    ) -> None:
        if not auth_token or not auth_token.strip():
            raise TunnelRefused(f"ngrok tunnel refused: no auth token; set {TOKEN_ENV}")
        if not 0 < int(local_port) < 65536:
            raise TunnelOptionsError(f"local_port out of range: {local_port}")
        self.local_port = int(local_port)
        self._token = auth_token.strip()
        self._basic_auth = list(basic_auth)
        self.policy = traffic_policy(
            basic_auth=self._basic_auth,
            oauth_provider=oauth_provider,
            allow_emails=allow_emails,
            ip_allow=ip_allow,
        )
        self.ngrok_path = ngrok_path
        self.region = region
        self.timeout = float(timeout)
        self.download = download
        self.on_change = on_change
        # where the agent is recorded, so the next process stops it if this one is killed
        self.pid_file = Path(pid_file) if pid_file is not None else None
        self._secrets = [self._token] + [c.partition(":")[2] for c in self._basic_auth]
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._state = "idle"
        self._url: str | None = None
        self._error: str | None = None
        self._config = None  # the PyngrokConfig, once made
        self._dir: str | None = None
        self._path: str | None = None
        self._pid: int | None = None
        self._config_path: str | None = None
        self._ngrok_logs: deque = deque(maxlen=50)
        self._worker: threading.Thread | None = None
        self._proc = None  # the agent's Popen, from pyngrok's process table
        self._ngrok_process = None
        self._owned = False  # whether this tunnel holds the agent at self._path

    # -- what callers read ------------------------------------------------------------------
    @property
    def state(self) -> str:
        """idle, starting, open, failed or closed."""
        self._check_agent()
        return self._state

    @property
    def url(self) -> str | None:
        """The public URL while the tunnel is open."""
        return self._url if self.state == "open" else None

    def _check_agent(self) -> None:
        """An open tunnel whose agent process has exited is failed, said once in the log."""
        proc = self._proc
        if self._state != "open" or proc is None or proc.poll() is None:
            return
        message = (
            f"ngrok tunnel lost: the ngrok agent exited (code {proc.returncode}); {LOCAL_ONLY}"
        )
        with self._lock:
            if self._state != "open":
                return
            log.warning("%s", message)
            self._state, self._error, self._url = "failed", message, None
        self._bounded(self._kill_agent, 3.0)
        self._notify()

    @property
    def error(self) -> str | None:
        """The one-line reason when the tunnel failed (the token masked)."""
        return self._error

    @property
    def pid(self) -> int | None:
        """The ngrok agent's process id, once started."""
        return self._pid

    def status(self) -> dict:
        """The tunnel as health reports it: state, url, error."""
        url = self.url
        return {"state": self._state, "url": url, "error": self._error}

    def mask(self, text: str) -> str:
        """``text`` with this tunnel's token and basic-auth passwords replaced by ***."""
        for secret in sorted((s for s in self._secrets if s), key=len, reverse=True):
            text = text.replace(secret, "***")
        return _MASK.mask(text)

    # -- opening and closing ----------------------------------------------------------------
    def start(self) -> Tunnel:
        """Begin opening in the background and return at once."""
        with self._lock:
            if self._state != "idle":
                raise TunnelError(f"tunnel already {self._state}")
            self._state = "starting"
        _quiet_pyngrok(self._secrets)
        self._deadline = time.monotonic() + self.timeout
        self._worker = threading.Thread(target=self._open, name="ngrok-tunnel", daemon=True)
        self._worker.start()
        threading.Thread(target=self._watch, name="ngrok-tunnel-watch", daemon=True).start()
        return self

    def wait(self, timeout: float | None = None) -> str | None:
        """Block until open or failed (at most ``timeout`` s); the URL, or None."""
        self._done.wait(timeout)
        return self.url

    def open(self) -> str:
        """Start and wait for the tunnel; the public URL, or TunnelError with the reason."""
        if self._state == "idle":
            self.start()
        self._done.wait(self.timeout + 5)
        if self._state != "open" or self._url is None:
            raise TunnelError(self._error or f"{NOT_OPENED}: still starting")
        return self._url

    def close(self, timeout: float = 5.0) -> None:
        """Disconnect the tunnel and kill the ngrok agent; returns within about ``timeout`` s."""
        with self._lock:
            previous, self._state = self._state, "closed"
            url = self._url
        if previous in ("idle", "closed"):
            self._cleanup_files()
            return
        end = time.monotonic() + timeout
        if previous == "open" and url and self._config is not None:
            self._bounded(lambda: self._disconnect(url), max(0.1, end - time.monotonic()))
        self._kill_agent()
        if self._worker is not None:
            self._worker.join(max(0.0, end - time.monotonic()))
        self._cleanup_files()
        self._done.set()
        log.info("ngrok tunnel closed")
        self._notify()

    # -- internals --------------------------------------------------------------------------
    def _open(self) -> None:
        try:
            url = self._connect()
        except Exception as exc:  # noqa: BLE001 - any failure is one line, never a crash
            self._fail(self._describe(exc))
            return
        with self._lock:
            if self._state != "starting":  # closed or timed out while starting
                abandoned = True
            else:
                abandoned = False
                self._url, self._state = url, "open"
        if abandoned:
            self._kill_agent()
            return
        log.info("ngrok tunnel open: %s -> http://127.0.0.1:%d", url, self.local_port)
        self._notify()
        self._done.set()

    def _connect(self) -> str:
        try:
            from pyngrok import conf, ngrok
        except ImportError:
            raise TunnelError(
                f"{NOT_OPENED}: pyngrok is not installed (pip install 'pyngrok>=9,<10')"
            ) from None
        path, exists = _resolve_ngrok_path(self.ngrok_path)
        if not exists and (self.ngrok_path is not None or not self.download):
            raise TunnelError(
                f"{NOT_OPENED}: no ngrok agent at {path} (install it ahead; see the README)"
            )
        if self.pid_file is not None:
            leftover_agent.stop_leftover(self.pid_file)
        with _quiet_lock:
            if path in _open_paths:
                raise TunnelError(f"{NOT_OPENED}: another tunnel already runs the agent at {path}")
            _open_paths.add(path)
            self._path, self._owned = path, True
        self._dir = tempfile.mkdtemp(prefix=leftover_agent.CONFIG_DIR_PREFIX)
        config_path = os.path.join(self._dir, "ngrok.yml")
        self._config_path = config_path
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            # JSON is YAML; a quoted string keeps any token character literal.
            f.write(f'version: "3"\nagent:\n  authtoken: {json.dumps(self._token)}\n')
        remaining = max(1.0, self._deadline - time.monotonic())
        cfg = conf.PyngrokConfig(
            ngrok_path=path,
            config_path=config_path,
            region=self.region,
            startup_timeout=max(1, math.ceil(remaining)),
            request_timeout=min(4.0, remaining),
            log_event_callback=self._ngrok_logs.append,
        )
        cfg.auth_token = None  # PyngrokConfig reads NGROK_AUTHTOKEN and would put it on argv
        cfg.api_key = None
        self._config = cfg
        if not exists:
            ngrok.install_ngrok(cfg)  # pyngrok's download, only when no binary is configured
        if self._state != "starting":
            raise TunnelError(f"{NOT_OPENED}: closed while starting")
        options: dict = {}
        if self.policy is not None:
            options["traffic_policy"] = self.policy
        name = f"hwr-{self.local_port}-{secrets.token_hex(4)}"
        self._pid_watch = threading.Thread(target=self._find_pid, daemon=True)
        self._pid_watch.start()
        tunnel = ngrok.connect(
            addr=f"http://127.0.0.1:{self.local_port}",
            proto="http",
            name=name,
            pyngrok_config=cfg,
            **options,
        )
        if not tunnel.public_url:
            raise TunnelError(f"{NOT_OPENED}: the agent returned no public URL")
        self._remember_pid()
        return tunnel.public_url

    def _find_pid(self) -> None:
        """Note the agent's pid as soon as pyngrok has started it (the watchdog may need it)."""
        while self._state == "starting" and self._pid is None:
            self._remember_pid()
            time.sleep(0.02)

    def _remember_pid(self) -> None:
        from pyngrok import process

        if not self._owned:
            return
        current = getattr(process, "_current_processes", {}).get(self._path)
        if current is not None:
            first = self._pid is None
            self._ngrok_process = current
            self._pid = current.proc.pid
            self._proc = current.proc
            if first and self.pid_file is not None and self._config_path is not None:
                try:
                    leftover_agent.record(self.pid_file, self._pid, self._config_path)
                except OSError as e:
                    log.warning("cannot record the ngrok agent in %s: %s", self.pid_file, e)

    def _watch(self) -> None:
        """Enforce the time bound: pyngrok's start-up loop blocks in readline on a silent agent."""
        if self._done.wait(max(0.0, self._deadline - time.monotonic())):
            return
        if self._state == "starting":
            self._fail(self._describe(None))
            self._kill_agent()

    def _fail(self, message: str) -> None:
        with self._lock:
            if self._state != "starting":
                return
            log.warning("%s", message)  # in the log before /healthz can say "failed"
            self._state, self._error, self._url = "failed", message, None
        self._kill_agent()
        self._notify()
        self._done.set()

    def _describe(self, exc: BaseException | None) -> str:
        """One line saying why, with the token masked: offline, bad token, timeout, or other."""
        lines = [getattr(entry, "line", str(entry)) for entry in list(self._ngrok_logs)]
        text = " ".join(lines + ([str(exc)] if exc is not None else [])).lower()
        if isinstance(exc, TunnelError):
            reason = str(exc)
            return self.mask(reason if LOCAL_ONLY in reason else f"{reason}; {LOCAL_ONLY}")
        if any(h in text for h in _TOKEN_HINTS):
            code = re.search(r"err_ngrok_\d+", text)
            tag = f" ({code.group(0).upper()})" if code else ""
            return (
                f"{NOT_OPENED}: ngrok refused the auth token{tag}; check {TOKEN_ENV}; {LOCAL_ONLY}"
            )
        if any(h in text for h in _OFFLINE_HINTS):
            return f"{NOT_OPENED}: cannot reach the ngrok service (offline?); {LOCAL_ONLY}"
        if exc is None:
            return (
                f"{NOT_OPENED}: the ngrok agent was not connected within {self.timeout:g} s; "
                f"{LOCAL_ONLY}"
            )
        detail = " ".join(str(exc).split())[:200]
        return self.mask(f"{NOT_OPENED}: {type(exc).__name__}: {detail}; {LOCAL_ONLY}")

    def _disconnect(self, url: str) -> None:
        from pyngrok import ngrok

        self._config.request_timeout = 2.0
        ngrok.disconnect(url, self._config)

    def _kill_agent(self) -> None:
        """SIGKILL our agent directly (pyngrok's kill waits on a lock its start-up loop holds)."""
        if not self._owned:
            return
        if self._proc is None:
            self._remember_pid()
        proc = self._proc
        if proc is not None:
            try:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=2)
            except Exception:  # noqa: BLE001 - already gone
                pass
            monitor = getattr(self._ngrok_process, "_monitor_thread", None)
            if monitor is not None and monitor is not threading.current_thread():
                monitor.join(1.0)  # it reads the pipe until EOF; close the pipe after it
            if proc.stdout is not None and (monitor is None or not monitor.is_alive()):
                proc.stdout.close()
        self._bounded(self._pyngrok_kill, 2.0)
        if self.pid_file is not None and self._pid is not None:
            leftover_agent.forget(self.pid_file, self._pid)
        with _quiet_lock:
            _open_paths.discard(self._path)
        self._owned = False

    def _pyngrok_kill(self) -> None:
        from pyngrok import ngrok

        if self._config is not None:
            ngrok.kill(self._config)

    @staticmethod
    def _bounded(fn: Callable[[], None], timeout: float) -> None:
        """Run ``fn`` in a helper thread and give up waiting after ``timeout`` s."""

        def run() -> None:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - best effort on shutdown
                log.debug("ngrok shutdown step failed: %s", type(exc).__name__)

        helper = threading.Thread(target=run, daemon=True)
        helper.start()
        helper.join(timeout)

    def _cleanup_files(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _notify(self) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(self)
        except Exception:  # noqa: BLE001 - a callback must not break the tunnel
            log.exception("tunnel on_change callback failed")


def start_tunnel(
    local_port: int,
    *,
    protected: bool,
    what: str,
    token_file: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
    **options,
) -> Tunnel:
    """Check the app is protected, read the token, and start a Tunnel in the background."""
    require_authentication(protected, what)
    token = read_auth_token(token_file, environ)
    return Tunnel(local_port, auth_token=token, **options).start()


def options_from_settings(settings: Any) -> dict[str, Any]:
    """:func:`start_tunnel`'s options from a component's settings (``ngrok_path``,
    ``ngrok_region``, ``tunnel_basic_auth``... as EdgeConfig and SyncConfig name them; the
    lists comma-separated)."""

    def split(text: str) -> list[str]:
        return [part.strip() for part in text.split(",") if part.strip()]

    return {
        "ngrok_path": settings.ngrok_path or None,
        "region": settings.ngrok_region or None,
        "basic_auth": split(settings.tunnel_basic_auth),
        "oauth_provider": settings.tunnel_oauth_provider or None,
        "allow_emails": split(settings.tunnel_allow_emails),
        "ip_allow": split(settings.tunnel_ip_allow),
        "timeout": settings.tunnel_timeout,
    }
