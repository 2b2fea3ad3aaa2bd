"""The edge's sync client: pending corrections go up to the school's server, heartbeats go with them.

One daemon thread (started by the app factory only when ``sync_url`` is set) runs rounds:

* a heartbeat (``POST /api/v1/heartbeat``) when the server was not reachable at the last try,
  and then every ``heartbeat_interval``; the answer's ``models`` go to ``on_models``;
* the pending corrections of each store, oldest first, in batches of ``sync_batch`` (at most
  100 items and 1 MiB: a larger batch is split) to ``POST /api/v1/corrections`` as
  docs/sync.md words them. Only the items answered ``stored`` or ``duplicate`` are marked
  synced (durably, by the store); ``rejected`` and ``conflict`` ones stay in the store,
  counted by code, and are skipped by later batches of this process so they block nothing.

Every request has a connect and a read timeout; a failed round waits an exponential backoff
with full jitter capped at ``sync_backoff_max``, and at least what a 429 or 503's
``Retry-After`` asks. Between rounds the thread waits on an event that :meth:`SyncClient.wake`
sets, so a correction stored while online is sent at once. No store lock is held while the
network is used, so sync never delays a prediction or a correction. The device token is sent
in a header only: it never appears in :meth:`SyncClient.status`, a log line or an exception.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import random as random_module
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from hwrcore import __version__
from hwrcore.errors import HwrError
from hwrcore.files import write_json
from hwrcore.store import CorrectionStore, PendingItem, StoreError

from .config import EdgeConfig

log = logging.getLogger(__name__)

CORRECTIONS_PATH = "/api/v1/corrections"
WITHDRAW_PATH = "/api/v1/corrections/withdraw"
WITHDRAWALS_PER_BATCH = 100
HEARTBEAT_PATH = "/api/v1/heartbeat"
MAX_ITEMS = 100  # the server's limit per batch
MAX_BODY_BYTES = 1 << 20  # the server's limit per body
RETRY_AFTER_MAX = 3600.0  # a Retry-After longer than this is taken as this
BATCHES_PER_ROUND = 20  # per store, before the loop looks at the heartbeat and stop() again
STOP_JOIN_SECONDS = 2.0
STATE_FILE = "sync_state.json"  # in the data directory: when corrections last reached the server
MODEL_NAMES = {"digit": "digits", "char": "characters"}  # when models_info() lacks a mode
_PREFIX = b'{"corrections":['
_SUFFIX = b"]}"
_ACKED = ("stored", "duplicate")
_REFUSED = ("rejected", "conflict")
# A withdrawal is done with on these answers (``unknown``: the server has no such correction).
_WITHDRAWN = ("withdrawn", "duplicate", "unknown")


class SyncError(HwrError):
    """A round that did not get through: the server unreachable, slow, busy or refusing."""

    code = "sync_failed"

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ):
        super().__init__(message)
        self.status = status  # the HTTP status, None when no answer came
        self.retry_after = retry_after  # seconds the server asked to wait (429, 503)


def _read_last_sync(path: Path) -> float | None:
    try:
        value = json.loads(path.read_text()).get("last_sync")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _write_last_sync(path: Path, when: float) -> None:
    """Replace the small state file (a lost write only shows an older time after a restart)."""
    try:
        write_json(path, {"last_sync": when})
    except OSError as exc:
        log.debug("sync: the time of the last sync could not be kept: %s", exc)


class Backoff:
    """Exponential backoff with full jitter: failure n waits random() * min(cap, base * 2**n)."""

    def __init__(self, base: float, cap: float, random: Callable[[], float]):
        self.base = base
        self.cap = cap
        self.random = random
        self.failures = 0

    def next(self, retry_after: float | None = None) -> float:
        """Seconds to wait after one more failure; never less than ``retry_after``."""
        ceiling = min(self.cap, self.base * 2.0 ** min(self.failures, 60))
        self.failures += 1
        delay = self.random() * ceiling
        if retry_after is not None:
            delay = max(delay, min(retry_after, RETRY_AFTER_MAX))
        return delay

    def reset(self) -> None:
        self.failures = 0


def parse_retry_after(value: str | None, now: float) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) as seconds from ``now``; None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now)


def encode_item(mode: str, model_name: str, item: PendingItem) -> bytes:
    """One correction as docs/sync.md's item, compact JSON; the stored strokes JSON goes in as is.

    The embedding is not sent: a model update embeds a correction again, and an item's content
    must stay the same for a resend to be answered ``duplicate``.
    """
    head = {
        "id": item.id,
        "mode": mode,
        "label": item.label,
        "image": item.image,
        "predicted": item.predicted,
        "confidence": item.confidence,
        "model": {"name": model_name, "version": item.model_version},
        "created": item.created,
        "updated": item.updated,
    }
    if item.kind != "correction":  # absent means a correction (docs/sync.md)
        head["kind"] = item.kind
    text = json.dumps(head, separators=(",", ":"), allow_nan=False)
    return (text[:-1] + ',"strokes":' + item.strokes + "}").encode("utf-8")


def frame(items: list[bytes]) -> bytes:
    """The upload body: ``{"corrections": [item, ...]}``."""
    return _PREFIX + b",".join(items) + _SUFFIX


def split_batches(
    encoded: list[tuple[str, bytes]],
    max_items: int = MAX_ITEMS,
    max_bytes: int = MAX_BODY_BYTES,
) -> tuple[list[list[tuple[str, bytes]]], list[str]]:
    """Batches in order, each at most ``max_items`` and ``max_bytes``; and the ids of items
    too large to go in any batch."""
    batches: list[list[tuple[str, bytes]]] = []
    too_large: list[str] = []
    current: list[tuple[str, bytes]] = []
    size = len(_PREFIX) + len(_SUFFIX)
    for cid, data in encoded:
        if len(_PREFIX) + len(data) + len(_SUFFIX) > max_bytes:
            too_large.append(cid)
            continue
        extra = len(data) + (1 if current else 0)
        if current and (len(current) >= max_items or size + extra > max_bytes):
            batches.append(current)
            current, size = [], len(_PREFIX) + len(_SUFFIX)
            extra = len(data)
        current.append((cid, data))
        size += extra
    if current:
        batches.append(current)
    return batches, too_large


def _display_url(url: str) -> str:
    """The server URL without any user:password part, for status and the log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class SyncClient:
    """Uploads the stores' pending corrections and sends heartbeats, in one background thread.

    ``models_info()`` gives the models served now, ``{mode: {"name", "version"}}``; the
    ``models`` of each heartbeat answer are passed to ``on_models`` (which may be set later).
    ``clock`` (unix time), ``monotonic`` (schedules) and ``random`` (jitter) are injectable for
    tests; :meth:`step` runs one round and returns the seconds to wait before the next.
    """

    def __init__(
        self,
        config: EdgeConfig,
        stores: Mapping[str, CorrectionStore],
        models_info: Callable[[], dict],
        on_models: Callable[[dict], None] | None = None,
        *,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = random_module.random,
    ):
        token = config.device_token()  # ConfigError when sync_url is set without one
        self.url = config.sync_url.rstrip("/")
        self.server = _display_url(self.url)
        self.stores = dict(stores)
        self.models_info = models_info
        self.on_models = on_models
        self.interval = config.sync_interval
        self.heartbeat_interval = config.heartbeat_interval
        self.batch = min(config.sync_batch, MAX_ITEMS)
        self.timeout = (config.sync_connect_timeout, config.sync_read_timeout)
        self._clock = clock
        self._monotonic = monotonic
        self._backoff = Backoff(config.sync_interval, config.sync_backoff_max, random)
        self._session = session or requests.Session()
        self._session.headers.update(
            {
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "User-Agent": f"hwr-edge/{__version__}",
            }
        )
        self._lock = threading.Lock()  # guards what status() reads
        self._wake = threading.Event()
        self._retry = False  # set by retry_now: the next wake ends a backoff's wait too
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = "offline"  # until the server has answered once
        # When corrections last reached the server, kept across restarts (a device that synced
        # yesterday is not "never synced" after a reboot).
        self._state_path = Path(config.data_dir) / STATE_FILE
        self._last_sync: float | None = _read_last_sync(self._state_path)
        self._last_error: str | None = None
        self._next_heartbeat = -float("inf")
        self._skip: set[str] = set()  # ids the server refused: not sent again by this process
        self._refused: Counter[str] = Counter()  # "rejected" / "conflict" -> count
        self._codes: Counter[str] = Counter()  # the refusals' error codes -> count
        self._uploaded = 0
        self._withdrawals_sent = 0  # the server withdrew them (or had already)
        self._withdrawals_unknown = 0  # the server had no such correction: done here all the same
        self._no_withdraw_route = False
        self.tunnel_url: Callable[[], str | None] = lambda: None  # the heartbeat's tunnel_url

    # -- the thread ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the background thread (once)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="hwr-sync", daemon=True)
        self._thread.start()
        log.info("sync: uploading to %s", self.server)

    def stop(self, timeout: float = STOP_JOIN_SECONDS) -> bool:
        """Stop the thread; waits at most ``timeout`` s. True when it has ended.

        A thread still inside a request (a server that does not answer) ends with its read
        timeout; it is a daemon, and what it learns then is not lost: an unacknowledged item
        is sent again and answered ``duplicate``.
        """
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.info("sync: the thread is still waiting for the server; it ends on its own")
                return False
        self._session.close()
        return True

    def wake(self) -> None:
        """Run the next round now instead of at the end of the wait (no effect while backing off)."""
        self._wake.set()

    def retry_now(self) -> None:
        """The server is back (its notify socket opened again): end a backoff's wait now, so
        corrections kept while it was down go within a second, not at the end of the backoff."""
        self._retry = True
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                delay = self.step()
            except Exception:  # the loop must survive anything; the traceback names code only
                log.exception("sync: a round failed unexpectedly")
                with self._lock:
                    self._state, self._last_error = "offline", "the sync client failed; see the log"
                delay = self._backoff.next()
            self._pause(delay, interruptible=self._state == "online")

    def _pause(self, seconds: float, *, interruptible: bool) -> None:
        """Wait ``seconds``; wake() ends the wait when online, stop() always."""
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self._wake.wait(remaining):
                self._wake.clear()
                if interruptible or self._retry:
                    self._retry = False
                    return

    # -- one round ----------------------------------------------------------------------------
    def step(self) -> float:
        """One round: heartbeat when due, then upload; returns the seconds until the next round."""
        try:
            if self._state != "online" or self._monotonic() >= self._next_heartbeat:
                self._heartbeat()
            more = self._upload()
        except SyncError as exc:
            delay = self._backoff.next(exc.retry_after)
            self._went_offline(exc.message, delay, refused=exc.status in (401, 403))
            return delay
        self._backoff.reset()
        return 0.0 if more else self.interval

    def _went_offline(self, message: str, delay: float, refused: bool = False) -> None:
        """Not through: ``refused`` when the server answered that this device's token is not
        (or no longer) accepted, a state of its own: it needs a person, not a wait."""
        state = "refused" if refused else "offline"
        with self._lock:
            was = self._state
            self._state, self._last_error = state, message
        if refused and was != "refused":
            log.error(
                "sync: %s refuses this device's token; corrections wait here until the device "
                "has a token the server accepts",
                self.server,
            )
        elif was == "online":
            log.warning(
                "sync: %s is offline (%s); trying again in %.1f s", self.server, message, delay
            )
        else:
            log.debug("sync: still offline (%s); trying again in %.1f s", message, delay)

    def _went_online(self) -> None:
        with self._lock:
            was = self._state
            self._state = "online"
        if was != "online":
            log.info("sync: %s is online", self.server)

    def _post(self, path: str, body: bytes) -> dict[str, Any]:
        """POST a JSON body; the decoded answer of a 200, else SyncError (never the token)."""
        connect, read = self.timeout
        try:
            resp = self._session.post(self.url + path, data=body, timeout=self.timeout)
        except requests.exceptions.ConnectTimeout:
            raise SyncError(f"connecting to the server timed out after {connect:g} s") from None
        except requests.exceptions.ReadTimeout:
            raise SyncError(f"the server did not answer within {read:g} s") from None
        except requests.exceptions.ConnectionError:
            raise SyncError("cannot reach the server (refused, unreachable or cut off)") from None
        except requests.exceptions.RequestException as exc:
            raise SyncError(f"the request failed ({type(exc).__name__})") from None
        if resp.status_code == 200:
            try:
                answer = resp.json()
            except ValueError:
                answer = None
            if not isinstance(answer, dict):
                raise SyncError("the server's answer is not a JSON object", status=200)
            return answer
        code = _error_code(resp)
        if resp.status_code in (401, 403):
            raise SyncError(
                f"the server refused this device's token ({resp.status_code} {code}): "
                "check sync_token or sync_token_file",
                status=resp.status_code,
            )
        retry_after = None
        if resp.status_code in (429, 503):
            retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._clock())
        raise SyncError(
            f"the server answered {resp.status_code} {code} to {path}",
            status=resp.status_code,
            retry_after=retry_after,
        )

    def _heartbeat(self) -> None:
        """Tell the server what is served and pending; hand its current models to on_models."""
        body = {
            "models": self.models_info(),
            "pending": self.pending(),
            "software": __version__,
            "clock": self._clock(),
            "tunnel_url": self.tunnel_url(),
        }
        try:
            answer = self._post(HEARTBEAT_PATH, json.dumps(body).encode("utf-8"))
        except SyncError as exc:
            if exc.status == 404:  # not a sync server there: a sync_url with a wrong path?
                raise SyncError(
                    f"{self.server} answered 404 to {HEARTBEAT_PATH}: is sync_url the address "
                    "of the school's server (its port, and no path)?",
                    status=404,
                ) from None
            if exc.status is None or exc.status >= 500 or exc.status in (401, 403, 429):
                raise
            # The server answers but not this route: uploads still go; said in status.
            log.warning("sync: heartbeat refused: %s", exc.message)
            with self._lock:
                self._last_error = exc.message
            self._went_online()
            self._next_heartbeat = self._monotonic() + self.heartbeat_interval
            return
        self._went_online()
        with self._lock:
            self._last_error = None
        self._next_heartbeat = self._monotonic() + self.heartbeat_interval
        models = answer.get("models")
        if isinstance(models, dict) and self.on_models is not None:
            try:
                self.on_models(models)
            except Exception:  # model delivery's failure is its own; sync goes on
                log.exception("sync: on_models failed")

    def _upload(self) -> bool:
        """Send each store's pending corrections; True when some are left for the next round."""
        info = self.models_info() or {}
        more = False
        for mode, store in self.stores.items():
            name = str((info.get(mode) or {}).get("name") or MODEL_NAMES.get(mode, mode))
            more = self._upload_store(mode, name, store) or more
            more = self._withdraw(store) or more
        return more

    def _withdraw(self, store: CorrectionStore) -> bool:
        """Send one batch of withdrawals the server has not heard of; True when more are left."""
        try:
            pending = [
                w
                for w in store.pending_withdrawals(WITHDRAWALS_PER_BATCH + len(self._skip))
                if w.id not in self._skip
            ][:WITHDRAWALS_PER_BATCH]
        except StoreError:
            return False
        if not pending:
            return False
        body = json.dumps(
            {"withdrawals": [{"id": w.id, "withdrawn": w.withdrawn, "by": w.by} for w in pending]},
            separators=(",", ":"),
        ).encode()
        try:
            answer = self._post(WITHDRAW_PATH, body)
        except SyncError as exc:
            if exc.status not in (404, 405):
                raise
            # A server without the route: the withdrawals wait on the device, uploads go on.
            if not self._no_withdraw_route:
                log.warning("sync: the server does not take withdrawals yet; they wait here")
            self._no_withdraw_route = True
            return False
        self._no_withdraw_route = False
        done: list[str] = []
        unknown = 0
        for res in answer.get("results") or []:
            if not isinstance(res, dict):
                continue
            if res.get("status") in _WITHDRAWN:
                done.append(res.get("id"))
                unknown += res.get("status") == "unknown"
            elif res.get("status") == "rejected":
                err = res.get("error")
                code = err.get("code") if isinstance(err, dict) else None
                self._refuse(str(res.get("id")), "rejected", str(code or "rejected"))
        if done:
            store.mark_withdrawal_synced(done)
            with self._lock:
                self._withdrawals_sent += len(done) - unknown
                self._withdrawals_unknown += unknown
            if unknown:
                log.warning("sync: the server has no correction for %d withdrawal(s)", unknown)
        return len(pending) == WITHDRAWALS_PER_BATCH

    def _upload_store(self, mode: str, name: str, store: CorrectionStore) -> bool:
        unacked: set[str] = set()  # sent this round without an answer for it: not sent again now
        for _ in range(BATCHES_PER_ROUND):
            if self._stopping.is_set():
                return False
            try:
                items = store.pending_rows(self.batch, exclude=self._skip | unacked)
            except StoreError:  # closed under us (shutdown): nothing more to send
                return False
            if not items:
                return False
            encoded = [(it.id, encode_item(mode, name, it)) for it in items]
            batches, too_large = split_batches(encoded)
            for cid in too_large:
                self._refuse(cid, "rejected", "too_large")
            for batch in batches:
                self._send(store, batch, unacked)
        return True

    def _send(
        self, store: CorrectionStore, batch: list[tuple[str, bytes]], unacked: set[str]
    ) -> None:
        """Upload one batch and mark synced what the server acknowledged."""
        try:
            answer = self._post(CORRECTIONS_PATH, frame([data for _, data in batch]))
        except SyncError as exc:
            if exc.status != 413:
                raise
            if len(batch) == 1:  # the server's limit is below ours: this one cannot go
                self._refuse(batch[0][0], "rejected", "too_large")
                return
            half = len(batch) // 2
            self._send(store, batch[:half], unacked)
            self._send(store, batch[half:], unacked)
            return
        self._went_online()
        sent = {cid for cid, _ in batch}
        results = answer.get("results")
        acked: list[str] = []
        answered: set[str] = set()
        for res in results if isinstance(results, list) else []:
            if not isinstance(res, dict) or res.get("id") not in sent:
                continue
            cid, status = res["id"], res.get("status")
            if status in _ACKED:
                acked.append(cid)
            elif status in _REFUSED:
                err = res.get("error")
                code = err.get("code") if isinstance(err, dict) else None
                self._refuse(cid, status, str(code or status))
            else:
                continue
            answered.add(cid)
        unacked.update(sent - answered)
        if acked:
            try:
                store.mark_synced(acked)
            except (StoreError, OSError) as exc:  # sent again later: the server says duplicate
                level = logging.INFO if self._stopping.is_set() else logging.ERROR
                log.log(level, "sync: could not mark %d corrections synced: %s", len(acked), exc)
                unacked.update(acked)
                return
        with self._lock:
            self._uploaded += len(acked)
            self._last_sync = self._clock()
            self._last_error = None
        _write_last_sync(self._state_path, self._last_sync)

    def _refuse(self, cid: str, status: str, code: str) -> None:
        """Keep a correction the server will not take: counted, shown, never sent again now."""
        if cid in self._skip:
            return
        self._skip.add(cid)
        with self._lock:
            self._refused[status] += 1
            self._codes[code] += 1
        log.warning("sync: the server answered %s (%s) for correction %s; kept", status, code, cid)

    # -- what /healthz shows ------------------------------------------------------------------
    def pending(self) -> int:
        """Corrections not yet acknowledged by the server, over every store."""
        total = 0
        for store in self.stores.values():
            try:
                total += store.pending_count()
            except StoreError:
                pass
        return total

    def status(self) -> dict[str, Any]:
        """``{"state", "last_sync", "last_error", "pending", "rejected", "conflicts", ...}``."""
        pending = self.pending()
        with self._lock:
            return {
                "state": self._state,
                "last_sync": self._last_sync,
                "last_error": self._last_error,
                "pending": pending,
                "rejected": self._refused["rejected"],
                "conflicts": self._refused["conflict"],
                "refused_codes": dict(self._codes),
                "uploaded": self._uploaded,
                "withdrawals_sent": self._withdrawals_sent,
                "withdrawals_unknown": self._withdrawals_unknown,
                "server": self.server,
            }


def _error_code(resp: requests.Response) -> str:
    """The error code of an answer in the wire's error shape, else the status's reason."""
    try:
        body = resp.json()
        code = body["error"]["code"]
        if isinstance(code, str) and code:
            return code[:64]
    except (ValueError, KeyError, TypeError):
        pass
    return (resp.reason or "error")[:64]


__all__ = [
    "Backoff",
    "SyncClient",
    "SyncError",
    "encode_item",
    "frame",
    "parse_retry_after",
    "split_batches",
]
