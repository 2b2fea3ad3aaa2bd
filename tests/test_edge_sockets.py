"""The edge's event loop under sockets that open and close fast: a page reloaded, a pupil's tab
closed, a flaky Wi-Fi link. No closed socket may take the worker (and every other pupil) down."""

from __future__ import annotations

import json
import os
import selectors
import socket
import threading
import time
from pathlib import Path

import pytest
import requests
import websocket

from hwrcore.worker import Poller
from tests.models import require_models
from tests.test_edge_process import Edge


def _reuse_descriptor(fd: int) -> socket.socket:
    """A new socket given descriptor ``fd``, as the next accepted connection would be."""
    fresh = socket.socket()  # the lowest free descriptor: usually ``fd`` itself
    if fresh.fileno() == fd:
        return fresh
    try:
        os.dup2(fresh.fileno(), fd)
    finally:
        fresh.close()
    return socket.socket(fileno=fd)


def test_a_socket_closed_while_registered_does_not_block_the_next_with_its_number():
    warnings: list[str] = []
    old = socket.socket()
    fd = old.fileno()
    with Poller(lambda msg, *args: warnings.append(msg % args)) as poller:
        poller.register(old, selectors.EVENT_READ, "old")
        old.close()  # by another thread, behind the loop's back
        new = _reuse_descriptor(fd)
        try:
            key = poller.register(new, selectors.EVENT_READ, "new")
            assert key.fileobj is new and poller.get_map()[fd].data == "new"
            assert warnings == [
                f"dropped the stale event-loop entry of a closed socket (descriptor {fd})"
            ]
            with pytest.raises(KeyError):  # registering an open socket twice is still a bug
                poller.register(new, selectors.EVENT_READ, "again")
            with pytest.raises(ValueError):  # the closed one is no longer known
                poller.unregister(old)
            assert poller.get_map()[fd].data == "new"
        finally:
            new.close()


def test_the_plain_selector_fails_where_the_poller_heals():
    """The failure the poller exists for (so the test above proves something)."""
    old = socket.socket()
    fd = old.fileno()
    with selectors.DefaultSelector() as plain:
        plain.register(old, selectors.EVENT_READ)
        old.close()
        new = _reuse_descriptor(fd)
        try:
            with pytest.raises(KeyError, match="already registered"):
                plain.register(new, selectors.EVENT_READ)
        finally:
            new.close()


def test_sockets_opened_and_closed_fast_never_restart_the_worker(tmp_path: Path):
    """600 sockets from 6 threads, closed by a close frame or by dropping the TCP connection."""
    require_models()
    # Sockets dropped without a close frame hold their slot until the server notices (a second
    # at most): the per-address limit is raised so that only the event loop is under test.
    edge = Edge(tmp_path / "data", env={"HWR_EDGE_SOCKETS_PER_CLIENT": "24"})
    origin = edge.url.rstrip("/")
    failures: list[str] = []
    done = [0]
    lock = threading.Lock()

    def churn(i: int) -> None:
        for n in range(100):
            try:
                ws = websocket.create_connection(edge.ws_url, timeout=10, origin=origin)
                ws.send(json.dumps({"type": "health", "seq": n}))
                assert json.loads(ws.recv())["seq"] == n
                if (i + n) % 2:
                    ws.close()
                else:
                    ws.sock.close()  # the tab is gone: no close frame
                with lock:
                    done[0] += 1
            except Exception as e:  # noqa: BLE001 - every failure is reported below
                failures.append(f"{type(e).__name__}: {e}")
                return

    try:
        threads = [threading.Thread(target=churn, args=(i,)) for i in range(6)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        elapsed = time.monotonic() - t0
        assert requests.get(edge.url + "healthz", timeout=5).status_code == 200
    finally:
        edge.stop()
    log = edge.log_path.read_text()
    assert failures == [], failures[:5]
    assert done[0] == 600, f"{done[0]} of 600 sockets in {elapsed:.0f} s"
    assert log.count("Booting worker") == 1, "the worker was restarted"
    assert "already registered" not in log and "stale event-loop entry" not in log
