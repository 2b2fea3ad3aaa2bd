"""Model delivery: signed releases from the school's server, verified, installed and swapped live.

Learnt from TUF's ngclient, kept small (one pinned key, one role): :meth:`ModelUpdater.check_now`
refreshes the release list (``GET /api/v1/models`` with its ETag), checks each mode's release
(:func:`hwrcore.release.verify_release`: shape, signature, a sequence above the trusted one,
mode, labels, input), downloads its file to a temporary file (resuming a cut download with
``Range``), checks its length and sha256 (:func:`hwrcore.release.verify_file`), and only then
installs it: ``<data_dir>/models/<name>-<version>/``, a classifier loaded beside the serving one,
run on probe inputs, a personaliser made of the device's corrections embedded by the new model,
and one atomic swap of the mode's :class:`edge.messages.Served` pair. The trust state
(``state.json``) is written after the swap. Anything failing on the way is a refusal: nothing
trusted is written, the old model keeps serving, the reason is logged and shown in /healthz.

A background thread listens on the notify WebSocket (``/api/v1/notify``) and checks on each
release notice; when the socket cannot be opened it polls every ``model_poll_interval``
seconds. :meth:`ModelUpdater.on_models` takes the heartbeat's answer and checks when it names
a sequence above the trusted one.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import random
import re
import select
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
import urllib3

from hwrcore.errors import HwrError
from hwrcore.release import (
    FileMismatch,
    MalformedRelease,
    Release,
    ReleaseError,
    canonical_json,
    verify_file,
    verify_release,
)

from .config import ConfigError, EdgeConfig
from .installed import (
    STATE_FILE,
    DeliveryError,
    InstallError,
    Startup,
    TrustState,
    describe,
    entry_for,
    folder_name,
    fsync_dir,
    keep_embeddings,
    model_file,
    personaliser_for,
    probe,
    problem,
    public_key_of,
    shipped_entry,
    state_dir,
)
from .messages import Served
from .models import MODEL_FILES, ModelLoadError, load_model

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from .messages import Context

log = logging.getLogger(__name__)
# What a check may find for a mode when nothing went wrong.
CHECK_OK = frozenset({"current", "trusted", "installed", "not_modified"})

PROBE_CORRECTIONS = 4  # stored corrections a new model is run on before it serves
MAX_LIST_BYTES = 1 << 20  # largest /api/v1/models answer read
REFUSALS_KEPT = 20  # refusals shown in /healthz
CHUNK = 64 << 10
LISTEN_TICK = 0.5  # seconds between looks at wake() and stop() while the socket is open
# The server pings an open notify socket every 25 s: one silent this long is dead, and reopened.
NOTIFY_SILENT_S = 90.0


class Unreachable(DeliveryError):
    """The server could not be reached or answered 5xx/429: tried again later, nothing refused."""

    code = "unreachable"

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


# -- the updater --------------------------------------------------------------------------------
class ModelUpdater:
    """Checks the server for new signed releases of each mode and swaps them in; see the module."""

    def __init__(
        self,
        ctx: Context,
        *,
        sync_url: str,
        token: str,
        public_key: Ed25519PublicKey,
        state_dir: Path,
        trust: TrustState | None = None,
        models_dir: Path | None = None,
        model_threads: int = 1,
        correction_cap: int = 5000,
        connect_timeout: float = 3.0,
        read_timeout: float = 15.0,
        poll_interval: float = 30.0,
        problems: list[dict[str, Any]] | None = None,
    ):
        self.ctx = ctx
        self.base = sync_url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {token}"}
        self.key = public_key
        self.root = Path(state_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.trust = trust or TrustState.load(self.root / STATE_FILE)
        self.models_dir = Path(models_dir) if models_dir is not None else None
        self.model_threads = model_threads
        self.cap = correction_cap
        self.timeout = (connect_timeout, read_timeout)
        self.poll_interval = poll_interval
        self._session = requests.Session()
        self._etag: str | None = None
        # Called when the notify socket opens again (the server is back): set by the app.
        self.on_server_back: Callable[[], None] | None = None
        self._check_lock = threading.Lock()  # one check at a time
        self._lock = threading.Lock()  # guards what status() reads
        self._refusals: collections.deque[dict[str, Any]] = collections.deque(
            problems or (), maxlen=REFUSALS_KEPT
        )
        self._last_check: dict[str, Any] | None = None
        self._since: dict[str, float] = {}
        self._notify = "stopped"
        self._retry_at: float | None = None
        self._retry_hint: float | None = None
        self._backoff = 1.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ws: Any = None

    @classmethod
    def from_config(
        cls, config: EdgeConfig, ctx: Context, startup: Startup | None = None
    ) -> ModelUpdater:
        """An updater on ``config``'s server, token and pinned key (ConfigError if one is unset)."""
        if not config.sync_enabled:
            raise ConfigError("model delivery needs sync_url")
        return cls(
            ctx,
            sync_url=config.sync_url,
            token=config.device_token(),
            public_key=public_key_of(config),
            state_dir=state_dir(config),
            trust=startup.trust if startup else None,
            models_dir=config.models_dir,
            model_threads=config.model_threads,
            correction_cap=config.correction_cap,
            connect_timeout=config.sync_connect_timeout,
            read_timeout=config.sync_read_timeout,
            poll_interval=config.model_poll_interval,
            problems=startup.problems if startup else None,
        )

    # -- what /healthz shows --
    def status(self) -> dict[str, Any]:
        """``{"state", "notify", "serving", "previous", "last_check", "refusals"}`` for /healthz."""
        serving, previous = {}, {}
        for mode, s in self.ctx.served.items():
            st = self.trust.modes.get(mode, {})
            entry = st.get("serving") or {}
            installed = bool(entry.get("dir")) and entry.get("sha256") == s.model.manifest.sha256
            serving[mode] = {
                **s.model.info,
                "source": "installed" if installed else "shipped",
                "sequence": self.trust.trusted(mode),
                "since": self._since.get(mode),
            }
            prev = st.get("previous")
            if prev:
                previous[mode] = {"name": prev.get("name"), "version": prev.get("version")}
        with self._lock:
            return {
                "state": "on",
                "notify": self._notify,
                "serving": serving,
                "previous": previous,
                "last_check": dict(self._last_check) if self._last_check else None,
                "refusals": list(self._refusals),
            }

    def _refuse(self, mode: str, version: str | None, exc: HwrError) -> None:
        """Record a refusal; the same one again (each poll of an unchanged list) only counts."""
        with self._lock:
            last = self._refusals[-1] if self._refusals else None
            if last is not None and (last["mode"], last["version"], last["code"]) == (
                mode,
                version,
                exc.code,
            ):
                last["at"] = time.time()
                last["times"] = last.get("times", 1) + 1
                return
            self._refusals.append(problem(mode, version, exc.code, exc.message))
        log.error("model delivery refused %s %s: %s: %s", mode, version, exc.code, exc.message)

    # -- one check --
    def check_now(self) -> dict[str, str]:
        """Fetch the releases and install what is new; returns each mode's outcome."""
        with self._check_lock:
            self._retry_hint = None
            outcomes = self._check()
        result = "ok"
        if any(v == "unreachable" for v in outcomes.values()):
            result = "unreachable"
        elif any(v == "unauthorized" for v in outcomes.values()):
            result = "unauthorized"  # the server answers, but not to this device's token
        elif any(v not in CHECK_OK for v in outcomes.values()):
            result = "failed"  # a release refused, or the list not read (the modes say why)
        with self._lock:
            self._last_check = {"at": time.time(), "result": result, "modes": outcomes}
        if result == "unreachable":
            wait = max(self._backoff * random.uniform(0.5, 1.0), self._retry_hint or 0.0)
            self._retry_at = time.monotonic() + wait
            self._backoff = min(self._backoff * 2, self.poll_interval)
        else:
            self._retry_at, self._backoff = None, 1.0
        return outcomes

    def _check(self) -> dict[str, str]:
        try:
            listing = self._fetch_list()
        except Unreachable as exc:
            log.warning("model delivery: the server cannot be reached: %s", exc.message)
            self._retry_hint = exc.retry_after
            return {"*": "unreachable"}
        except (DeliveryError, ReleaseError) as exc:
            self._refuse("*", None, exc)
            return {"*": exc.code}
        if listing is None:
            return {"*": "not_modified"}
        body, etag = listing
        outcomes: dict[str, str] = {}
        for mode in list(self.ctx.served):
            item = body.get(mode)
            if item is None:
                continue
            try:
                outcomes[mode] = self._consider(mode, item)
            except Unreachable as exc:
                log.warning("model delivery for %r: %s; tried again later", mode, exc.message)
                outcomes[mode] = "unreachable"
            except HwrError as exc:
                self._refuse(mode, _version_of(item), exc)
                outcomes[mode] = exc.code
            except Exception as exc:  # a bug must not stop delivery nor the old model serving
                log.error("model delivery for %r failed: %s: %s", mode, type(exc).__name__, exc)
                self._refuse(mode, _version_of(item), DeliveryError(f"{type(exc).__name__}: {exc}"))
                outcomes[mode] = "delivery_failed"
        if "unreachable" not in outcomes.values():
            self._etag = etag  # a cut download is tried again; a refusal is not fetched again
        return outcomes

    def _get(self, path: str, headers: dict[str, str], stream: bool = False) -> requests.Response:
        try:
            resp = self._session.get(
                self.base + path,
                headers={**self._auth, **headers},
                timeout=self.timeout,
                stream=stream,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise Unreachable(f"GET {path}: {type(exc).__name__}") from None
        if resp.status_code == 429 or resp.status_code >= 500:
            resp.close()
            raise Unreachable(f"GET {path} answered {resp.status_code}", _retry_after(resp.headers))
        if resp.status_code in (401, 403):
            resp.close()
            raise DeliveryError(
                f"GET {path} answered {resp.status_code}: the device token is not accepted",
                code="unauthorized",
            )
        return resp

    def _fetch_list(self) -> tuple[dict[str, Any], str | None] | None:
        """The server's ``models`` object and its ETag, or None when unchanged (304)."""
        headers = {"If-None-Match": self._etag} if self._etag else {}
        resp = self._get("/api/v1/models", headers, stream=True)
        with resp:
            if resp.status_code == 304:
                return None
            if resp.status_code != 200:
                raise DeliveryError(f"GET /api/v1/models answered {resp.status_code}")
            raw = b""
            try:
                for chunk in resp.iter_content(CHUNK):
                    raw += chunk
                    if len(raw) > MAX_LIST_BYTES:
                        raise MalformedRelease("the release list is larger than 1 MiB")
            except requests.RequestException as exc:
                raise Unreachable(f"GET /api/v1/models cut off: {type(exc).__name__}") from None
            try:
                body = json.loads(raw)
            except ValueError:
                raise MalformedRelease("the release list is not JSON") from None
            if not isinstance(body, dict) or not isinstance(body.get("models"), dict):
                raise MalformedRelease('the release list has no "models" object')
            return body["models"], resp.headers.get("ETag")

    def _consider(self, mode: str, item: Any) -> str:
        """Install the mode's release if it is new; 'current', 'trusted' or 'installed'."""
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            raise MalformedRelease(f"the release list's {mode!r} item has no release and url")
        doc, url = item.get("release"), item["url"]
        served = self.ctx.served[mode]
        st = self.trust.mode(mode)
        trusted = int(st.get("trusted_sequence") or 0)
        entry = st.get("serving") or {}
        same_doc = entry.get("release") is not None and _same(entry["release"], doc)
        if same_doc and entry.get("sha256") == served.model.manifest.sha256:
            return "current"
        # The trusted release itself may be installed again (its copy was damaged at start).
        floor = trusted - 1 if same_doc else trusted
        release = verify_release(
            doc, self.key, trusted_sequence=floor, mode=mode, labels=served.model.labels
        )
        if not url.startswith("/api/v1/"):
            raise MalformedRelease(f"the release's url {url[:80]!r} is not a path of the server")
        m = served.model.manifest
        if (release.name, release.version, release.sha256) == (m.name, m.version, m.sha256):
            # What serves already (the shipped model, as the server first lists it): trust it.
            st["trusted_sequence"] = release.sequence
            same_file = entry.get("dir") and entry.get("sha256") == release.sha256
            st["serving"] = entry_for(release, doc, entry["dir"] if same_file else None)
            self.trust.save()
            log.info(
                "release %s %s (sequence %d) already serves %r",
                release.name,
                release.version,
                release.sequence,
                mode,
            )
            return "trusted"
        self._install(mode, release, doc, url)
        return "installed"

    # -- download, install, swap --
    def _local_copy(self, release: Release, fname: str) -> Path | None:
        """A file this device already has with the release's bytes (a rollback), if any."""
        candidates = [self.root / folder_name(release) / fname]
        if self.models_dir is not None:
            candidates.append(self.models_dir / fname)
        for s in self.ctx.served.values():  # the shipped or serving model of any version
            candidates.append(s.model.manifest.model_path(s.model.classifier.manifest_path))
        for c in candidates:
            if c.is_file() and c.stat().st_size == release.length:
                try:
                    verify_file(release, c)
                except FileMismatch:
                    continue
                return c
        return None

    def _part(self, release: Release) -> Path:
        return self.root / f".download-{release.sha256}.part"

    def _download(self, release: Release, path: str) -> Path:
        """The release's file in a temporary file of the state dir, checked; resumes a cut one."""
        part = self._part(release)
        have = part.stat().st_size if part.exists() else 0
        if have > release.length:
            part.unlink()
            have = 0
        if have < release.length:
            headers = {"Accept-Encoding": "identity"}  # offsets are the file's bytes
            if have:
                headers["Range"] = f"bytes={have}-"
                headers["If-Range"] = f'"{release.sha256}"'
            resp = self._get(path, headers, stream=True)
            with resp:
                if resp.status_code == 416:
                    part.unlink(missing_ok=True)
                    raise Unreachable(
                        f"GET {path}: the partial download was refused; starting over"
                    )
                if resp.status_code == 206 and have and _range_start(resp.headers) == have:
                    mode = "ab"
                elif resp.status_code == 200:
                    mode, have = "wb", 0
                else:
                    raise DeliveryError(
                        f"GET {path} answered {resp.status_code}", code="download_failed"
                    )
                if have:
                    log.info(
                        "model download of %s %s resumes at byte %d",
                        release.name,
                        release.version,
                        have,
                    )
                with open(part, mode) as f:
                    try:
                        # read1: what arrived is kept even when the connection then drops.
                        while chunk := resp.raw.read1(CHUNK):
                            if self._stop.is_set():
                                raise Unreachable("stopping")
                            have += len(chunk)
                            if have > release.length:
                                raise FileMismatch(
                                    f"model file of {release.name} {release.version} is longer "
                                    f"than the release's {release.length} bytes"
                                )
                            f.write(chunk)
                    except (
                        requests.RequestException,
                        urllib3.exceptions.HTTPError,
                        OSError,
                    ) as exc:
                        raise Unreachable(
                            f"GET {path} cut off at byte {have}: {type(exc).__name__}"
                        ) from None
                    finally:
                        f.flush()
                        os.fsync(f.fileno())
        verify_file(release, part)
        return part

    def _install(self, mode: str, release: Release, doc: dict, url: str) -> None:
        manifest = release.manifest_object()
        fname = model_file(manifest)
        folder = self.root / folder_name(release)
        part: Path | None = None
        try:
            source = self._local_copy(release, fname)
            if source is None:
                part = self._download(release, url)
            staging = self.root / f".staging-{mode}-{uuid.uuid4().hex[:8]}"
            staging.mkdir()
            try:
                if part is not None:
                    os.replace(part, staging / fname)
                else:
                    shutil.copyfile(source, staging / fname)
                verify_file(release, staging / fname)
                manifest.save(staging / MODEL_FILES[mode])
                fsync_dir(staging)
                if folder.exists():
                    shutil.rmtree(folder)
                os.replace(staging, folder)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        except Unreachable:
            raise  # the partial download stays, to be resumed
        except OSError as exc:
            self._part(release).unlink(missing_ok=True)
            raise InstallError(f"{folder.name} cannot be written: {exc.strerror or exc}") from None
        except BaseException:
            self._part(release).unlink(missing_ok=True)
            raise
        try:
            self._swap_in(mode, release, doc, folder)
        except BaseException:
            if folder.name not in self._kept():  # nothing of a refused release stays
                shutil.rmtree(folder, ignore_errors=True)
            raise

    def _swap_in(self, mode: str, release: Release, doc: dict, folder: Path) -> None:
        try:
            model = load_model(folder, mode, self.model_threads)
        except ModelLoadError as exc:
            raise InstallError(exc.message, code="load_failed") from None
        if (model.manifest.name, model.manifest.version) != (release.name, release.version):
            raise InstallError("the installed manifest names another model", code="load_failed")
        store = self.ctx.stores.get(mode)
        images = (
            [c.image for c in store.newest_vectors(PROBE_CORRECTIONS)] if store is not None else []
        )
        probe(model, images)
        embedded = personaliser_for(model, store, self.cap) if store is not None else None
        if embedded is not None:
            log.info("%s", describe(model, embedded))
        # The writer's lock: a correction stored now reaches the old pair (it read it under
        # this lock) or, stored after, the new one; those stored since embedding are added here.
        with self.ctx.write_locks[mode]:
            if self.ctx.closing.is_set():
                raise DeliveryError("the edge is shutting down")
            if embedded is not None and store is not None:
                for c in store.newest_vectors(self.cap):
                    if c.id not in embedded.ids:
                        emb = model.classifier.predict(c.image).embedding
                        embedded.personaliser.add(emb, c.label, c.id)
            old = self.ctx.swap(mode, Served(model, embedded.personaliser if embedded else None))
        self._since[mode] = time.time()
        was = old.model if old is not None else None
        log.info(
            "model %s %s (sequence %d) now serves %r%s",
            release.name,
            release.version,
            release.sequence,
            mode,
            f" (was {was.manifest.version})" if was else "",
        )
        if embedded is not None and store is not None:
            keep_embeddings(model, store, embedded.redone)
        st = self.trust.mode(mode)
        prev = st.get("serving")
        if was is not None and (not prev or prev.get("sha256") != was.manifest.sha256):
            prev = shipped_entry(was)  # what served was the shipped model (or a fallback)
        if prev and prev.get("version") != release.version:
            st["previous"] = prev
        st["serving"] = entry_for(release, doc, folder.name)
        st["trusted_sequence"] = release.sequence
        try:
            self.trust.save()
        except OSError as exc:
            log.error("model delivery: %s cannot be written: %s", self.trust.path, exc)
        self._prune()

    def _kept(self) -> set[str]:
        out = set()
        for st in self.trust.modes.values():
            for key in ("serving", "previous"):
                e = st.get(key) or {}
                if e.get("dir"):
                    out.add(e["dir"])
        return out

    def _prune(self) -> None:
        """Remove installed folders neither serving nor kept for rollback, and old downloads."""
        keep = self._kept()
        for p in self.root.iterdir():
            if p.is_dir() and not p.name.startswith(".") and p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)
            elif p.name.startswith(".download-"):
                p.unlink(missing_ok=True)

    # -- the background thread --
    def on_models(self, models: object) -> None:
        """The heartbeat's ``models``: check soon when one names a sequence above the trusted."""
        if not isinstance(models, dict):
            return
        for mode, info in models.items():
            seq = info.get("sequence") if isinstance(info, dict) else None
            if isinstance(seq, int) and seq > self.trust.trusted(mode):
                self.wake()
                return

    def wake(self) -> None:
        """Check soon, from the background thread (never in the caller's)."""
        self._wake.set()

    def start(self) -> None:
        """Start the background thread (once)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._wake.set()  # a first check at start
        self._thread = threading.Thread(target=self._run, name="model-delivery", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread within ``timeout`` seconds; an install in progress finishes or fails."""
        self._stop.set()
        self._wake.set()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                ws.abort()
        t, self._thread = self._thread, None
        if t is not None:
            t.join(timeout)
            if t.is_alive():
                log.warning("model delivery did not stop within %.0f s", timeout)
        self._session.close()
        with self._lock:
            self._notify = "stopped"

    def _check_safely(self) -> None:
        try:
            self.check_now()
        except Exception as exc:  # the thread must live on
            log.error("model delivery check failed: %s: %s", type(exc).__name__, exc)

    def _run(self) -> None:
        next_poll = 0.0
        reconnect = 1.0
        while not self._stop.is_set():
            ws = self._open_notify()
            if ws is not None:
                reconnect = 1.0
                try:
                    self._listen(ws)
                finally:
                    self._ws = None
                    with contextlib.suppress(Exception):
                        ws.close()
                next_poll = 0.0
                continue
            with self._lock:
                self._notify = "polling"
            now = time.monotonic()
            due = self._retry_at is not None and now >= self._retry_at
            if self._wake.is_set() or now >= next_poll or due:
                self._wake.clear()
                self._check_safely()
                next_poll = time.monotonic() + self.poll_interval
            wait = min(reconnect, max(0.0, next_poll - time.monotonic()))
            self._wake.wait(wait * random.uniform(0.5, 1.0) if wait > 0 else 0)
            reconnect = min(reconnect * 2, self.poll_interval)

    def _open_notify(self) -> Any:
        import websocket

        url = "ws" + self.base[len("http") :] + "/api/v1/notify"
        try:
            ws = websocket.create_connection(
                url,
                header=[f"{k}: {v}" for k, v in self._auth.items()],
                timeout=self.timeout[0],
                enable_multithread=True,
            )
        except (websocket.WebSocketException, OSError) as exc:
            log.debug("notify socket cannot be opened: %s", type(exc).__name__)
            return None
        ws.settimeout(self.timeout[1])
        self._ws = ws
        with self._lock:
            self._notify = "connected"
        log.info("model delivery: notify socket open")
        self._wake.set()  # catch up on what was published while it was closed
        if self.on_server_back is not None:
            try:
                self.on_server_back()  # the sync client sends what waited, now
            except Exception:
                log.exception("model delivery: on_server_back failed")
        return ws

    def _listen(self, ws: Any) -> None:
        """Read notices until the socket closes or falls silent; a ping is answered and read as
        a sign of life (it used to be read as the start of a notice that never came)."""
        import websocket

        heard = time.monotonic()
        while not self._stop.is_set():
            due = self._retry_at is not None and time.monotonic() >= self._retry_at
            if self._wake.is_set() or due:
                self._wake.clear()
                self._check_safely()
            try:
                ready, _, _ = select.select([ws.sock], [], [], LISTEN_TICK)
                if not ready:
                    if time.monotonic() - heard > NOTIFY_SILENT_S:
                        log.info("model delivery: notify socket silent; opening it again")
                        return
                    continue
                opcode, data = ws.recv_data(control_frame=True)  # a ping is ponged in there
            except (websocket.WebSocketException, OSError, ValueError, TypeError):
                log.info("model delivery: notify socket closed")
                return
            heard = time.monotonic()
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                log.info("model delivery: notify socket closed by the server")
                return
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue
            text = data.decode("utf-8", "replace")
            if not text:
                return
            try:
                msg = json.loads(text)
            except ValueError:
                continue
            if isinstance(msg, dict) and msg.get("type") == "release":
                self._wake.set()


def _version_of(item: Any) -> str | None:
    try:
        v = item["release"]["release"]["version"]
    except (KeyError, TypeError):
        return None
    return v if isinstance(v, str) else None


def _same(a: Any, b: Any) -> bool:
    try:
        return canonical_json(a) == canonical_json(b)
    except (TypeError, ValueError):
        return False


def _range_start(headers: Any) -> int | None:
    """N of ``Content-Range: bytes N-M/L``, or None."""
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)$", headers.get("Content-Range", ""))
    return int(m.group(1)) if m else None


def _retry_after(headers: Any) -> float | None:
    try:
        return max(0.0, float(headers.get("Retry-After", "")))
    except ValueError:
        return None


__all__ = ["ModelUpdater", "Unreachable"]
