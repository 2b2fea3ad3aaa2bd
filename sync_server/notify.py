"""Release notices: the WebSocket ``/api/v1/notify`` and the thread that watches the releases table.

``publish`` and ``rollback`` may run in another process (the CLI writes the database), so the
server learns of a new release by polling one cheap query (the highest sequence of each model)
every ``release_poll_interval`` seconds. Each connected device gets one
``{"type": "release", "mode", "name", "version", "sequence"}`` per model when it connects and
one more whenever a model's sequence grows. Messages from the device are read and ignored.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from typing import Any

from flask import current_app
from flask_sock import Sock
from simple_websocket import ConnectionClosed

from .api import bp
from .registry import Current, Registry

log = logging.getLogger(__name__)

sock = Sock()
WAIT_S = 0.5  # how often a quiet socket looks whether the server is closing
QUEUE_MAX = 64  # notices waiting for one slow socket before the oldest are dropped


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

    def subscribe(self) -> queue.Queue:
        q: queue.Queue = queue.Queue(QUEUE_MAX)
        with self._lock:
            self._subscribers.add(q)
        return q

    def unsubscribe(self, q: queue.Queue) -> None:
        with self._lock:
            self._subscribers.discard(q)

    def current_messages(self) -> list[dict[str, Any]]:
        """One notice per model, for a socket that has just connected."""
        return [release_message(c) for _, c in sorted(self.registry.current_all().items())]

    def poll(self) -> list[dict[str, Any]]:
        """Look once for releases above the ones seen; broadcast and return their notices."""
        seqs = self.registry.sequences()
        changed = [n for n, s in seqs.items() if s > self._seen.get(n, 0)]
        if not changed:
            return []
        current = self.registry.current_all()
        messages = [release_message(current[n]) for n in sorted(changed) if n in current]
        for m in messages:
            self._seen[m["name"]] = max(m["sequence"], self._seen.get(m["name"], 0))
        self.broadcast(messages)
        return messages

    def broadcast(self, messages: list[dict[str, Any]]) -> None:
        with self._lock:
            targets = list(self._subscribers)
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
    q = notifier.subscribe()
    try:
        for m in notifier.current_messages():
            ws.send(json.dumps(m))
        while ws.connected and not st.closing.is_set():
            while ws.receive(timeout=0) is not None:
                pass  # the device has nothing to say here
            try:
                m = q.get(timeout=WAIT_S)
            except queue.Empty:
                continue
            ws.send(json.dumps(m))
    except ConnectionClosed:
        pass
    finally:
        notifier.unsubscribe(q)


__all__ = ["Notifier", "notify", "release_message", "sock"]
