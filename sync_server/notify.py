"""Release notices: the WebSocket ``/api/v1/notify`` and the thread that watches the releases table.

``publish`` and ``rollback`` may run in another process (the CLI writes the database), so the
server learns of a new release by polling one cheap query (the highest sequence of each model)
every ``release_poll_interval`` seconds. Each connected device gets one
``{"type": "release", "mode", "name", "version", "sequence"}`` per model when it connects and
one more whenever a model's sequence grows. Messages from the device are read and ignored. A
device revoked while its socket is open is told so and the socket closed (within REVOKED_CHECK_S,
and before any later notice).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Any

from flask import current_app, g
from flask_sock import Sock
from simple_websocket import ConnectionClosed

from hwrcore import protocol

from .api import UNAUTHORIZED, bp
from .devices import token_withdrawn
from .registry import Current, Registry

log = logging.getLogger(__name__)

sock = Sock()
WAIT_S = 0.5  # how often a quiet socket looks whether the server is closing
QUEUE_MAX = 64  # notices waiting for one slow socket before the oldest are dropped
REVOKED_CHECK_S = 5.0  # how often an open socket looks whether its token was withdrawn
CLOSE_REVOKED = 1008  # WebSocket close code: policy violation


def release_message(c: Current) -> dict[str, Any]:
    """The notice of one release."""
    return {
        "type": "release",
        "mode": c.mode,
        "name": c.name,
        "version": c.version,
        "sequence": c.sequence,
    }


class Notifier:
    """Watches the releases table in a thread and hands each new release to every subscriber."""

    def __init__(self, registry: Registry, interval: float):
        self.registry = registry
        self.interval = float(interval)
        self._subscribers: set[queue.Queue] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._seen: dict[str, int] = {}
        self._thread: threading.Thread | None = None

    def start(self) -> Notifier:
        """Start watching (the sequences now are the baseline)."""
        self._seen = self.registry.sequences()
        self._thread = threading.Thread(target=self._run, name="release-notifier", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def subscribe(self, group: str | None = None) -> queue.Queue:
        q: queue.Queue = queue.Queue(QUEUE_MAX)
        q.group = group  # type: ignore[attr-defined]  (the device's group: its releases)
        with self._lock:
            self._subscribers.add(q)
        return q

    def unsubscribe(self, q: queue.Queue) -> None:
        with self._lock:
            self._subscribers.discard(q)

    def current_messages(self, group: str | None = None) -> list[dict[str, Any]]:
        """One notice per model, for a socket (of a device in ``group``) that has just connected."""
        return [release_message(c) for _, c in sorted(self.registry.current_all(group).items())]

    def poll(self) -> list[dict[str, Any]]:
        """Look once for releases above the ones seen; broadcast and return their notices."""
        seqs = self.registry.sequences()
        changed = [n for n, s in seqs.items() if s > self._seen.get(n, 0)]
        if not changed:
            return []
        for n in changed:
            self._seen[n] = seqs[n]
        with self._lock:
            groups = {getattr(q, "group", None) for q in self._subscribers} | {None}
        sent: list[dict[str, Any]] = []
        for group in sorted(groups, key=lambda g: g or ""):
            # A device hears of the release it is to serve: every device's, or its group's.
            current = self.registry.current_all(group)
            messages = [release_message(current[n]) for n in sorted(changed) if n in current]
            self.broadcast(messages, group)
            if group is None:
                sent = messages
        return sent

    def broadcast(self, messages: list[dict[str, Any]], group: str | None = None) -> None:
        with self._lock:
            targets = [q for q in self._subscribers if getattr(q, "group", None) == group]
        for q in targets:
            for m in messages:
                try:
                    q.put_nowait(m)
                except queue.Full:  # a socket that does not read: it catches up on reconnect
                    pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                for m in self.poll():
                    log.info("notice: %s %s (sequence %d)", m["name"], m["version"], m["sequence"])
            except Exception as exc:  # a database hiccup must not end the watching
                log.warning("cannot poll the releases: %s", exc)


@sock.route("/notify", bp=bp)
def notify(ws: Any) -> None:
    """Send the current releases, then each new one, until the device or the server leaves."""
    st = current_app.extensions["hwr_sync"]
    notifier: Notifier = st.notifier
    device = g.device
    group = device.group
    q = notifier.subscribe(group or None)
    checked = time.monotonic()
    try:
        for m in notifier.current_messages(group or None):
            ws.send(json.dumps(m))
        while ws.connected and not st.closing.is_set():
            while ws.receive(timeout=0) is not None:
                pass  # the device has nothing to say here
            try:
                m = q.get(timeout=WAIT_S)
            except queue.Empty:
                m = None
            if m is not None or time.monotonic() - checked >= REVOKED_CHECK_S:
                checked = time.monotonic()
                if token_withdrawn(st.engine, device):
                    ws.send(json.dumps(protocol.error_body("unauthorized", UNAUTHORIZED)))
                    ws.close(CLOSE_REVOKED, "the device's token was withdrawn")
                    return
            if m is not None:
                ws.send(json.dumps(m))
    except ConnectionClosed:
        pass
    finally:
        notifier.unsubscribe(q)


__all__ = ["Notifier", "notify", "release_message", "sock"]
