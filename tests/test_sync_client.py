"""The edge's sync client against a real HTTP server on 127.0.0.1 that speaks docs/sync.md.

The server here is small and scripted (stored / duplicate / rejected / conflict, 429 and 503
with Retry-After, 500s, answers that never come, connections cut after the batch was stored);
only the clock and the jitter are injected, where backoff is measured. The last test runs the
client against the real ``hwr-sync-server`` when it is there.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from edge.config import ConfigError, EdgeConfig
from edge.sync import MAX_BODY_BYTES, Backoff, SyncClient, parse_retry_after
from hwrcore import __version__
from hwrcore import store as store_module
from hwrcore.store import Correction, CorrectionStore

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "s3cr3t-device-token-DO-NOT-LOG"
ITEM_KEYS = {
    "id",
    "mode",
    "label",
    "image",
    "strokes",
    "predicted",
    "confidence",
    "model",
    "created",
    "updated",
}
SERVED = {
    "digit": {"name": "digits", "version": "1.2.0"},
    "char": {"name": "characters", "version": "1.0.0"},
}
SEVEN = [[[60.0, 50.0], [220.0, 50.0], [130.0, 240.0]]]


# -- the server ---------------------------------------------------------------------------------
def _digest(item: dict) -> str:
    content = {k: v for k, v in item.items() if k != "updated"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


class FakeSyncServer:
    """docs/sync.md's device API, kept small; ``script[path]`` holds actions for next requests.

    Actions: ``"500"``, ``"503:RA"`` / ``"429:RA"`` (with ``Retry-After: RA`` when RA is given),
    ``"drop"`` (cut the connection before answering), ``"store_then_drop"`` (store the batch,
    then cut), ``"garbage"`` (a 200 that is not JSON), ``"hang:S"`` (answer after S seconds, or
    when ``release`` is set).
    """

    def __init__(self, token: str = TOKEN):
        self.token = token
        self.items: dict[str, str] = {}  # id -> content digest
        self.stored = Counter()  # id -> times answered "stored" (exactly once: 1)
        self.bodies: list[dict[str, Any]] = []  # every corrections request: ids, sizes
        self.oversized = 0  # corrections requests over max_body (answered 413)
        self.max_body = MAX_BODY_BYTES
        self.heartbeats: list[dict] = []
        self.script: dict[str, deque[str]] = {}
        self.always: dict[str, str] = {}  # an action for every request to a path
        self.reject_labels = {"bad"}
        self.takes_withdrawals = False  # off: an older server, the route is 404
        self.withdrawn: set[str] = set()
        self.models = {"digit": {"name": "digits", "version": "1.3.0", "sequence": 4}}
        self.release = threading.Event()
        self.entered = threading.Event()  # set when a request starts to hang
        self.connections: set[socket.socket] = set()  # open (kept-alive) connections
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with outer.lock:
                    outer.connections.add(self.connection)

            def finish(self) -> None:
                with outer.lock:
                    outer.connections.discard(self.connection)
                super().finish()

            def do_GET(self) -> None:  # model delivery's routes: not served here
                self._send(404, {"error": {"code": "not_found", "message": "no such route"}})

            def do_POST(self) -> None:
                outer._post(self)

            def _send(self, status: int, body: Any, headers: dict | None = None) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped (a test's stop() mid-answer): nothing to report

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Go down as a server does: stop listening and cut every open connection."""
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        with self.lock:
            for conn in self.connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def plan(self, path: str, *actions: str) -> None:
        with self.lock:
            self.script.setdefault(path, deque()).extend(actions)

    def _action(self, path: str) -> str | None:
        with self.lock:
            queue = self.script.get(path)
            if queue:
                return queue.popleft()
            return self.always.get(path)

    def _post(self, h: Any) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        path = h.path
        if h.headers.get("Authorization") != f"Bearer {self.token}":
            h._send(401, {"error": {"code": "unauthorized", "message": "bad token"}})
            return
        action = self._action(path) or ""
        if action.startswith("hang:"):
            self.entered.set()
            self.release.wait(float(action[5:]))
            action = ""
        if action in ("drop", "store_then_drop"):
            if action == "store_then_drop" and path.endswith("/corrections"):
                self._corrections(body)
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if action == "garbage":
            h._send(200, b"<html>proxy error</html>")
            return
        if action[:3] in ("500", "503", "429"):
            status, _, ra = action.partition(":")
            headers = {"Retry-After": ra} if ra else {}
            code = {"500": "internal", "503": "unavailable", "429": "rate_limited"}[status]
            h._send(int(status), {"error": {"code": code, "message": "not now"}}, headers)
            return
        if path == "/api/v1/heartbeat":
            with self.lock:
                self.heartbeats.append(json.loads(body))
            h._send(200, {"models": self.models, "server_time": time.time()})
        elif path == "/api/v1/corrections":
            if len(body) > self.max_body:
                with self.lock:
                    self.oversized += 1
                h._send(413, {"error": {"code": "too_large", "message": "over 1 MiB"}})
                return
            h._send(200, {"results": self._corrections(body)})
        elif path == "/api/v1/corrections/withdraw" and self.takes_withdrawals:
            results = []
            with self.lock:
                for w in json.loads(body)["withdrawals"]:
                    known = w["id"] in self.items
                    results.append({"id": w["id"], "status": "withdrawn" if known else "unknown"})
                    self.withdrawn |= {w["id"]} if known else set()
            h._send(200, {"results": results})
        else:
            h._send(404, {"error": {"code": "not_found", "message": "no such route"}})

    def _corrections(self, body: bytes) -> list[dict]:
        items = json.loads(body)["corrections"]
        results = []
        with self.lock:
            self.bodies.append(
                {"bytes": len(body), "ids": [i["id"] for i in items], "items": items}
            )
            for item in items:
                cid, digest = item["id"], _digest(item)
                if item["label"] in self.reject_labels:
                    err = {"code": "invalid_label", "message": "not a label of this mode"}
                    results.append({"id": cid, "status": "rejected", "error": err})
                elif cid not in self.items:
                    self.items[cid] = digest
                    self.stored[cid] += 1
                    results.append({"id": cid, "status": "stored"})
                elif self.items[cid] == digest:
                    results.append({"id": cid, "status": "duplicate"})
                else:
                    err = {"code": "conflict", "message": "known with other content"}
                    results.append({"id": cid, "status": "conflict", "error": err})
        return results

    def sent_ids(self) -> list[str]:
        with self.lock:
            return [i for b in self.bodies for i in b["ids"]]


@pytest.fixture
def server():
    s = FakeSyncServer()
    yield s
    s.stop()


# -- the device side ----------------------------------------------------------------------------
def correction(
    i: int, label: str | None = None, strokes: list | None = None, png: bool = False
) -> Correction:
    """A correction derived from ``i``; ``png``: one drawn as an image (no strokes)."""
    rng = np.random.default_rng(i)
    return Correction(
        id=str(uuid.uuid4()),
        label=label if label is not None else str(i % 10),
        image=rng.random((28, 28), dtype=np.float32),
        strokes=None if png else (strokes or [[[float(i), 2.5], [3, 4]]]),
        predicted=str((i + 1) % 10),
        confidence=0.5 + i / 10_000,
        model_version="1.2.0",
        created=1_700_000_000.25 + i,
        embedding=rng.standard_normal(8).astype(np.float32),
    )


@pytest.fixture
def stores(tmp_path):
    opened = {
        "digit": CorrectionStore(tmp_path / "custom_digits.h5", fsync=False),
        "char": CorrectionStore(tmp_path / "custom_characters.h5", fsync=False),
    }
    yield opened
    for s in opened.values():
        s.close()


def sync_config(tmp_path: Path, url: str, **kw: Any) -> EdgeConfig:
    settings: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "sync_url": url,
        "sync_token": TOKEN,
        "sync_interval": 0.05,
        "sync_backoff_max": 0.2,
        "heartbeat_interval": 30.0,
        "sync_connect_timeout": 1.0,
        "sync_read_timeout": 2.0,
    }
    settings.update(kw)
    return EdgeConfig(**settings)


def make_client(tmp_path: Path, url: str, stores: dict, **kw: Any) -> SyncClient:
    extra = {k: kw.pop(k) for k in ("on_models", "clock", "monotonic", "random") if k in kw}
    return SyncClient(sync_config(tmp_path, url, **kw), stores, lambda: SERVED, **extra)


def wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def pending_ids(store: CorrectionStore) -> set[str]:
    return {c.id for c in store.pending()}


# -- what is sent and what is marked --------------------------------------------------------------
def test_items_follow_the_contract_and_only_stored_or_duplicate_are_marked_synced(
    tmp_path, server, stores
):
    digits = [correction(i) for i in range(4)]
    bad = correction(4, label="bad")
    clash = correction(5)
    letter = correction(6, label="A", png=True)
    for c in [*digits, bad, clash]:
        stores["digit"].add(c)
    stores["char"].add(letter)
    server.items[clash.id] = "another device's content"
    client = make_client(tmp_path, server.url, stores)

    assert client.step() == pytest.approx(0.05)  # idle afterwards: the interval
    assert pending_ids(stores["digit"]) == {bad.id, clash.id}
    assert pending_ids(stores["char"]) == set()
    st = client.status()
    assert (st["state"], st["pending"], st["rejected"], st["conflicts"]) == ("online", 2, 1, 1)
    assert st["refused_codes"] == {"invalid_label": 1, "conflict": 1}
    assert st["last_sync"] is not None and st["last_error"] is None
    assert st["server"] == server.url and st["uploaded"] == 5

    sent = {i["id"]: i for b in server.bodies for i in b["items"]}
    item = sent[digits[1].id]
    assert set(item) == ITEM_KEYS
    image = np.frombuffer(base64.b64decode(item["image"]), dtype="<f4").reshape(28, 28)
    assert np.array_equal(image, digits[1].image)
    assert item["mode"] == "digit" and item["model"] == {"name": "digits", "version": "1.2.0"}
    assert item["strokes"] == digits[1].strokes and item["label"] == digits[1].label
    assert (item["predicted"], item["confidence"], item["created"]) == (
        digits[1].predicted,
        digits[1].confidence,
        digits[1].created,
    )
    assert item["updated"] >= item["created"]
    assert sent[letter.id]["mode"] == "char" and sent[letter.id]["strokes"] is None
    assert sent[letter.id]["model"] == {"name": "characters", "version": "1.2.0"}

    # The refused ones stay in the store but are not sent again; a new one goes alone.
    late = correction(7)
    stores["digit"].add(late)
    before = len(server.bodies)
    client.step()
    assert [b["ids"] for b in server.bodies[before:]] == [[late.id]]
    assert pending_ids(stores["digit"]) == {bad.id, clash.id}
    assert client.status()["rejected"] == 1 and client.status()["conflicts"] == 1


def test_a_server_without_the_withdraw_route_keeps_withdrawals_waiting_and_blocks_nothing(
    tmp_path, server, stores
):
    first = correction(1)
    stores["digit"].add(first)
    client = make_client(tmp_path, server.url, stores)
    client.step()
    assert stores["digit"].withdraw(first.id, "pupil")  # synced, then undone on the device
    late = correction(2)
    stores["digit"].add(late)
    client.step()
    client.step()
    assert client.status()["state"] == "online"  # the 404 of the route is not "offline"
    assert late.id in server.sent_ids()
    assert [w.id for w in stores["digit"].pending_withdrawals()] == [first.id]


def test_a_withdrawal_the_server_has_no_correction_for_is_done_but_not_counted_as_sent(
    tmp_path, server, stores
):
    """``unknown`` (a server that lost the correction, or a new database) ends the withdrawal on
    the device, as docs/sync.md says, and is counted apart from those the server withdrew."""
    server.takes_withdrawals = True
    kept, lost = correction(1), correction(2)
    for c in (kept, lost):
        stores["digit"].add(c)
    client = make_client(tmp_path, server.url, stores)
    client.step()
    del server.items[lost.id]  # the server forgot it
    for c in (kept, lost):
        assert stores["digit"].withdraw(c.id, "teacher")
    client.step()
    assert stores["digit"].pending_withdrawals() == []
    assert server.withdrawn == {kept.id}
    st = client.status()
    assert st["withdrawals_sent"] == 1 and st["withdrawals_unknown"] == 1, st


def test_an_answer_lost_after_the_server_stored_the_batch_is_sent_again_as_duplicate(
    tmp_path, server, stores
):
    items = [correction(i) for i in range(5)]
    for c in items:
        stores["digit"].add(c)
    client = make_client(tmp_path, server.url, stores)
    server.plan("/api/v1/corrections", "store_then_drop")
    client.step()
    assert client.status()["state"] == "offline"
    assert stores["digit"].pending_count() == 5  # nothing marked without an answer
    assert client.step() == pytest.approx(0.05)
    assert stores["digit"].pending_count() == 0
    assert server.sent_ids().count(items[0].id) == 2
    assert set(server.stored.values()) == {1} and len(server.stored) == 5  # stored once each


def test_a_batch_never_exceeds_100_items_or_1_mib(tmp_path, server, stores):
    small = [correction(i) for i in range(230)]
    for c in small:
        stores["digit"].add(c)
    client = make_client(tmp_path, server.url, stores)
    client.step()
    assert [len(b["ids"]) for b in server.bodies] == [100, 100, 30]

    # About 13 KB of strokes each (a zigzag the store cannot simplify): 100 would be 1.3 MB,
    # so batches are split by size.
    points = [[x * 0.2 + (x % 2) * 7.5, float(x * 37 % 280)] for x in range(1100)]
    big = [correction(1000 + i, strokes=[points]) for i in range(120)]
    for c in big:
        stores["char"].add(c)
    before = len(server.bodies)
    client.step()
    sizes = [(len(b["ids"]), b["bytes"]) for b in server.bodies[before:]]
    assert all(n <= 100 and nbytes <= MAX_BODY_BYTES for n, nbytes in sizes)
    assert len(sizes) >= 3 and max(nbytes for _, nbytes in sizes) > MAX_BODY_BYTES * 0.8
    assert stores["char"].pending_count() == 0 and stores["digit"].pending_count() == 0
    assert server.oversized == 0  # split before sending, not after a 413
    assert len(server.stored) == 350 and set(server.stored.values()) == {1}


def test_a_correction_too_large_for_any_batch_is_kept_and_blocks_nothing(
    tmp_path, server, stores, monkeypatch
):
    # The store bounds strokes far below a batch; a store that did not is what this guards.
    monkeypatch.setattr(store_module, "simplify_strokes", lambda s: json.dumps(s))
    huge = correction(0, strokes=[[[x * 0.5, 1.0] for x in range(120_000)]])
    rest = [correction(i) for i in range(1, 4)]
    for c in [huge, *rest]:
        stores["digit"].add(c)
    client = make_client(tmp_path, server.url, stores)
    client.step()
    assert pending_ids(stores["digit"]) == {huge.id}
    assert client.status()["refused_codes"] == {"too_large": 1}
    assert huge.id not in server.sent_ids() and server.oversized == 0


def test_a_server_with_a_lower_limit_gets_halved_batches_after_a_413(tmp_path, server, stores):
    zigzag = [[[x * 0.5, float(x % 2 * 9)] for x in range(300)]]  # kept whole by the store
    items = [correction(i, strokes=zigzag) for i in range(40)]
    for c in items:
        stores["digit"].add(c)
    server.max_body = 100_000  # about 10 of these items
    client = make_client(tmp_path, server.url, stores)
    client.step()
    assert stores["digit"].pending_count() == 0 and len(server.stored) == 40
    assert server.oversized >= 1 and max(len(b["ids"]) for b in server.bodies) <= 10


# -- failures, backoff, timeouts ----------------------------------------------------------------
def test_backoff_grows_with_full_jitter_is_capped_and_honours_retry_after(tmp_path, server, stores):
    stores["digit"].add(correction(0))
    rolls = iter([0.5, 0.5, 0.5, 0.5, 0.5, 0.25, 0.0, 0.0, 0.0, 0.5])
    client = make_client(
        tmp_path,
        server.url,
        stores,
        sync_interval=1.0,
        sync_backoff_max=8.0,
        random=lambda: next(rolls),
    )
    server.always["/api/v1/heartbeat"] = "500"
    # Full jitter: random() * min(cap, base * 2**n): ceilings 1, 2, 4, 8, 8, 8.
    assert [client.step() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 2.0]
    assert client.status()["state"] == "offline"
    assert "500" in client.status()["last_error"]
    server.always.clear()
    server.plan("/api/v1/heartbeat", "429:7", "503:3")
    assert client.step() == 7.0  # the jitter rolled 0: the server's Retry-After wins
    assert client.step() == 3.0
    server.plan("/api/v1/heartbeat", "503")
    assert client.step() == 0.0  # no Retry-After: the jitter alone (rolled 0)
    assert client.step() == 1.0  # answered: back online, the normal interval
    assert stores["digit"].pending_count() == 0
    server.plan("/api/v1/corrections", "500")
    stores["digit"].add(correction(1))
    assert client.step() == 0.5  # a success reset the backoff: ceiling 1 again


def test_backoff_and_retry_after_in_isolation():
    b = Backoff(2.0, 60.0, random=lambda: 1.0)
    assert [b.next() for _ in range(8)] == [2, 4, 8, 16, 32, 60, 60, 60]
    b.reset()
    assert b.next(retry_after=30.0) == 30.0 and b.next(retry_after=1.0) == 4.0
    assert Backoff(1.0, 10.0, random=lambda: 0.0).next(retry_after=1e9) == 3600.0
    now = time.time()
    assert parse_retry_after("12", now) == 12.0
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 90))
    assert 85 <= parse_retry_after(date, now) <= 91  # type: ignore[operator]
    assert parse_retry_after("soon", now) is None and parse_retry_after(None, now) is None


def test_the_read_timeout_is_applied(tmp_path, server, stores):
    server.plan("/api/v1/heartbeat", "hang:10")
    client = make_client(tmp_path, server.url, stores, sync_read_timeout=0.5)
    t0 = time.monotonic()
    client.step()
    elapsed = time.monotonic() - t0
    assert 0.4 <= elapsed < 3.0
    st = client.status()
    assert st["state"] == "offline" and st["last_error"] == "the server did not answer within 0.5 s"


def test_the_connect_timeout_is_applied(tmp_path, stores):
    # A listener whose accept queue is full drops new SYNs: connecting hangs until the timeout.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        time.sleep(0.2)
        client = make_client(tmp_path, f"http://127.0.0.1:{port}", stores, sync_connect_timeout=0.5)
        t0 = time.monotonic()
        client.step()
        elapsed = time.monotonic() - t0
        st = client.status()
        assert st["last_error"] == "connecting to the server timed out after 0.5 s", st
        assert 0.4 <= elapsed < 3.0
    finally:
        for s in fillers:
            s.close()
        listener.close()


def test_the_loop_survives_server_errors_drops_and_garbage(tmp_path, server, stores):
    items = [correction(i) for i in range(30)]
    for c in items[:20]:
        stores["digit"].add(c)
    server.plan("/api/v1/heartbeat", "drop", "500")
    server.plan(
        "/api/v1/corrections", "500", "garbage", "drop", "store_then_drop", "503:0", "429:0"
    )
    client = make_client(tmp_path, server.url, stores, sync_backoff_max=0.05)
    client.start()
    try:
        for c in items[20:]:
            stores["digit"].add(c)
            client.wake()
        wait_for(lambda: stores["digit"].pending_count() == 0, what="every correction synced")
    finally:
        assert client.stop()
    assert set(server.stored) == {c.id for c in items} and set(server.stored.values()) == {1}
    assert client.status()["state"] == "online"


def test_a_wrong_token_is_shown_and_the_token_never_appears_in_status_or_logs(
    tmp_path, server, stores, caplog
):
    stores["digit"].add(correction(0))
    server.token = "another-token"
    client = make_client(tmp_path, server.url, stores, sync_read_timeout=0.3)
    with caplog.at_level(logging.DEBUG):
        client.step()
        assert "refused this device's token (401 unauthorized)" in client.status()["last_error"]
        assert client.status()["state"] == "refused"  # a person must act: not "offline"
        server.token = TOKEN
        server.plan("/api/v1/heartbeat", "hang:5", "500", "drop")
        for _ in range(4):
            client.step()
        assert client.status()["state"] == "online"
        client.stop()
    logged = "\n".join(r.getMessage() + str(r.exc_text or "") for r in caplog.records)
    assert "offline" in logged and TOKEN not in logged
    assert TOKEN not in json.dumps(client.status()) and TOKEN not in repr(client)
    assert stores["digit"].pending_count() == 0


# -- heartbeat, wake, stop ----------------------------------------------------------------------
def test_retry_now_ends_a_backoff_so_what_waited_goes_at_once(tmp_path, server, stores):
    """When the server is back (the notify socket opened again) the device does not sit out a
    backoff of 30 s: what waited is sent at once."""
    stores["digit"].add(correction(1))
    server.script["/api/v1/heartbeat"] = deque(["503:30"])  # down, and says: try in 30 s
    client = make_client(tmp_path, server.url, stores)
    client.start()
    try:
        wait_for(lambda: client.status()["state"] == "offline", 10, "the first refusal")
        time.sleep(0.5)
        assert server.stored == {}  # waiting out the 30 s
        client.retry_now()
        wait_for(lambda: sum(server.stored.values()) == 1, 5, "the upload after retry_now")
    finally:
        client.stop()


def test_the_time_of_the_last_sync_outlives_a_restart(tmp_path, server, stores):
    """A device that synced is not "never synced" after a reboot."""
    (tmp_path / "data").mkdir(exist_ok=True)
    fresh = make_client(tmp_path, server.url, stores)
    assert fresh.status()["last_sync"] is None
    stores["digit"].add(correction(1))
    fresh.step()
    synced = fresh.status()["last_sync"]
    assert synced is not None and sum(server.stored.values()) == 1
    again = make_client(tmp_path, server.url, stores)  # the next start of the device
    assert again.status()["last_sync"] == synced
    (tmp_path / "data" / "sync_state.json").write_text("not json")
    assert make_client(tmp_path, server.url, stores).status()["last_sync"] is None


def test_a_sync_url_with_a_wrong_path_is_offline_and_says_so(tmp_path, server, stores):
    """A server that answers 404 to the heartbeat is not the sync server (a URL with /admin/):
    the device is offline with a hint, not "online" with nothing uploaded."""
    stores["digit"].add(correction(1))
    client = make_client(tmp_path, server.url + "/admin", stores)
    delay = client.step()
    status = client.status()
    assert status["state"] == "offline" and delay > 0
    assert "answered 404 to /api/v1/heartbeat: is sync_url the address" in status["last_error"]
    assert server.stored == {}


def test_heartbeats_report_what_is_served_and_hand_the_answer_to_on_models(
    tmp_path, server, stores
):
    for i in range(3):
        stores["digit"].add(correction(i, label="bad"))  # stays pending: rejected
    now = [1000.0]
    seen: list[dict] = []
    client = make_client(
        tmp_path,
        server.url,
        stores,
        heartbeat_interval=30.0,
        on_models=seen.append,
        monotonic=lambda: now[0],
    )
    client.step()
    beat = server.heartbeats[-1]
    assert beat["models"] == SERVED and beat["pending"] == 3 and beat["software"] == __version__
    assert abs(beat["clock"] - time.time()) < 5 and beat["tunnel_url"] is None
    assert seen == [server.models]
    client.step()
    now[0] += 29.0
    client.step()
    assert len(server.heartbeats) == 1  # not due yet
    now[0] += 1.0
    client.step()
    assert len(server.heartbeats) == 2
    # Offline, then back: a heartbeat at once, however recent the last one was.
    server.plan("/api/v1/corrections", "500")
    stores["digit"].add(correction(9))
    client.step()
    assert client.status()["state"] == "offline"
    client.step()
    assert len(server.heartbeats) == 3 and client.status()["state"] == "online"
    assert len(seen) == 3


def test_wake_sends_a_new_correction_within_a_second(tmp_path, server, stores):
    client = make_client(tmp_path, server.url, stores, sync_interval=30.0)
    client.start()
    try:
        wait_for(lambda: client.status()["state"] == "online", what="online")
        c = correction(0)
        stores["digit"].add(c)
        t0 = time.monotonic()
        client.wake()
        wait_for(lambda: stores["digit"].pending_count() == 0, timeout=1.0, what="the upload")
        assert time.monotonic() - t0 < 1.0 and server.sent_ids() == [c.id]
    finally:
        t0 = time.monotonic()
        assert client.stop()
        assert time.monotonic() - t0 < 0.5  # idle: stop ends the wait at once


def test_stop_returns_promptly_while_a_request_hangs(tmp_path, server, stores):
    server.always["/api/v1/heartbeat"] = "hang:20"
    client = make_client(tmp_path, server.url, stores, sync_read_timeout=20.0)
    client.start()
    assert server.entered.wait(5)
    t0 = time.monotonic()
    assert client.stop(timeout=0.5) is False  # still inside the request: it ends on its own
    assert time.monotonic() - t0 < 1.5


def test_a_missing_token_is_a_config_error(tmp_path, stores):
    config = EdgeConfig(data_dir=tmp_path, sync_url="http://127.0.0.1:9")
    with pytest.raises(ConfigError, match="no device token"):
        SyncClient(config, stores, lambda: SERVED)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o644)
    config = EdgeConfig(
        data_dir=tmp_path, sync_url="http://127.0.0.1:9/", sync_token_file=str(token_file)
    )
    with pytest.raises(ConfigError, match=r"mode 0644: every user .* chmod 600"):
        SyncClient(config, stores, lambda: SERVED)
    token_file.chmod(0o640)  # its group may read it: the service's group
    client = SyncClient(config, stores, lambda: SERVED)
    assert client.status()["server"] == "http://127.0.0.1:9"
    with pytest.raises(ConfigError, match="not both"):
        EdgeConfig(data_dir=tmp_path, sync_token="t" * 20, sync_token_file=str(token_file))


def test_the_edge_refuses_to_start_with_a_sync_url_and_no_token(tmp_path):
    from tests.models import require_models

    models = require_models()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HWR_EDGE_")}
    env.update(HWR_EDGE_SYNC_URL="http://127.0.0.1:9", HWR_EDGE_MODELS_DIR=str(models))
    proc = subprocess.run(
        [sys.executable, "-m", "edge.cli", "--port", "0", "--data-dir", str(tmp_path / "d")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no device token" in lines[0]
    assert not (tmp_path / "d" / "custom_digits.h5").exists()


# -- through the edge app -----------------------------------------------------------------------
@pytest.fixture
def models_dir():
    from tests.models import require_models

    return require_models()


def edge_app(tmp_path: Path, models_dir: Path, **kw: Any):
    from edge.app import create_app

    settings: dict[str, Any] = {"data_dir": tmp_path / "edge", "models_dir": models_dir}
    if kw.get("sync_url"):
        from hwrcore.release import generate_key, public_key_text

        settings.update(
            sync_token=TOKEN,
            sync_public_key=public_key_text(generate_key()),
            sync_interval=0.05,
            sync_backoff_max=0.2,
            sync_connect_timeout=0.5,
            sync_read_timeout=2.0,
        )
    settings.update(kw)
    return create_app(EdgeConfig(**settings))


def predict(client, mode: str = "digit") -> dict:
    resp = client.post("/api/predict", json={"mode": mode, "strokes": SEVEN})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


def correct(client, label: str = "7"):
    return client.post("/api/correct", json={"id": predict(client)["id"], "label": label})


def test_healthz_says_sync_off_without_a_server_and_a_full_store_refuses_clearly(
    tmp_path, models_dir
):
    from edge.app import close_app

    app = edge_app(tmp_path, models_dir, pending_limit=2)
    try:
        client = app.test_client()
        health = client.get("/healthz").get_json()
        assert health["sync"] == {"state": "off"} and health["pending"] == 0
        assert correct(client).status_code == 200 and correct(client).status_code == 200
        resp = correct(client)
        assert resp.status_code == 507, resp.get_data(as_text=True)
        err = resp.get_json()["error"]
        assert err["code"] == "store_full"
        assert "2 corrections not yet sent to the school's server" in err["message"]
        assert "connect it to sync" in err["message"]
        assert client.get("/healthz").get_json()["pending"] == 2
    finally:
        close_app(app)


def test_healthz_sync_goes_online_uploads_and_goes_offline(tmp_path, models_dir, server):
    from edge.app import close_app

    app = edge_app(tmp_path, models_dir, sync_url=server.url, heartbeat_interval=0.3)
    try:
        client = app.test_client()

        def sync() -> dict:
            return client.get("/healthz").get_json()["sync"]

        wait_for(lambda: sync()["state"] == "online", what="online")
        assert sync()["last_sync"] is None and sync()["server"] == server.url
        assert correct(client).status_code == 200
        wait_for(lambda: sync()["pending"] == 0 and sync()["last_sync"], what="the upload")
        health = client.get("/healthz").get_json()
        assert health["pending"] == 0 and health["sync"]["uploaded"] == 1
        assert server.heartbeats[-1]["models"]["digit"]["name"] == "digits"
        server.stop()
        wait_for(lambda: sync()["state"] == "offline", what="offline")
        assert correct(client).status_code == 200  # offline, a correction is still stored
        assert sync()["pending"] == 1 and "cannot reach the server" in sync()["last_error"]
    finally:
        t0 = time.monotonic()
        close_app(app)
        assert time.monotonic() - t0 < 5


def test_a_prediction_is_not_delayed_while_an_upload_hangs(tmp_path, models_dir, server):
    from edge.app import close_app

    server.plan("/api/v1/corrections", "hang:20")
    app = edge_app(tmp_path, models_dir, sync_url=server.url, sync_read_timeout=20.0)
    try:
        client = app.test_client()
        predict(client)  # warm
        assert correct(client).status_code == 200
        assert server.entered.wait(5)  # the upload is now waiting on the server
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            predict(client)
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        assert correct(client).status_code == 200
        correct_s = time.perf_counter() - t0
        assert max(times) < 0.5 and correct_s < 1.0, (times, correct_s)
        assert client.get("/healthz").get_json()["sync"]["pending"] == 2
    finally:
        server.release.set()
        close_app(app)


# -- against the real server --------------------------------------------------------------------
def test_against_the_real_sync_server(tmp_path, stores):
    if not (ROOT / "sync_server" / "cli.py").is_file():
        pytest.skip("sync_server/ is not there")
    pytest.importorskip("sqlalchemy")
    data = tmp_path / "server"
    base = [sys.executable, "-m", "sync_server.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HWR_SYNC_")}
    env["HWR_SYNC_ADMIN_TOKEN"] = "admin-token-for-the-test"
    made = subprocess.run(
        [*base, "init", "--data-dir", str(data)], cwd=ROOT, env=env, capture_output=True
    )
    assert made.returncode == 0, made.stderr
    added = subprocess.run(
        [*base, "add-device", "tablet-1", "--data-dir", str(data)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip().splitlines()[-1]
    proc = subprocess.Popen(
        [*base, "serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        match = re.search(r"serving (http://\S+?)/? ", line)
        assert match, line
        url = match.group(1).rstrip("/")
        good = [correction(i) for i in range(25)]
        bad = correction(99, label="Q?")
        for c in [*good, bad]:
            stores["digit"].add(c)
        letter = correction(100, label="A")
        stores["char"].add(letter)
        config = sync_config(tmp_path, url, sync_token=token, sync_read_timeout=10.0)
        client = SyncClient(config, stores, lambda: SERVED)
        deadline = time.monotonic() + 30
        while client.status()["pending"] > 1 and time.monotonic() < deadline:
            time.sleep(min(client.step(), 0.2))
        st = client.status()
        assert st["state"] == "online" and st["pending"] == 1 and st["rejected"] == 1, st
        assert pending_ids(stores["digit"]) == {bad.id} and stores["char"].pending_count() == 0
        client.stop()
        # Another device state holding the same corrections (a replay): duplicates, no change.
        with CorrectionStore(tmp_path / "replay.h5", fsync=False) as again:
            for c in good[:5]:
                again.add(c)
            replay = SyncClient(config, {"digit": again}, lambda: SERVED)
            replay.step()
            assert again.pending_count() == 0 and replay.status()["uploaded"] == 5
            replay.stop()
        resp = requests.get(
            url + "/api/v1/admin/summary",
            headers={"Authorization": "Bearer admin-token-for-the-test"},
            timeout=10,
        )
        assert resp.status_code == 200, resp.text
        summary = resp.json()
        assert summary["devices"] == 1 and summary["corrections"]["digit"] == 25
        assert summary["corrections"]["char"] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()  # type: ignore[union-attr]


# -- the canvas page ----------------------------------------------------------------------------
def test_the_canvas_shows_the_server_state_the_last_sync_and_a_full_store(
    tmp_path, server, monkeypatch
):
    from tests.browser_helpers import (
        CHROMIUM,
        CHROMIUM_ARGS,
        EdgeProcess,
        draw_with_mouse,
        fit_strokes,
        hwr_edge_command,
        models_for_edge,
    )

    command, models = hwr_edge_command(), models_for_edge()
    if command is None or models is None or not CHROMIUM.is_file():
        pytest.skip("needs hwr-edge, the shipped models and Debian's chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    from hwrcore.release import generate_key, public_key_text

    for key, value in {
        "SYNC_URL": server.url,
        "SYNC_TOKEN": TOKEN,
        "SYNC_PUBLIC_KEY": public_key_text(generate_key()),
        "HEARTBEAT_INTERVAL": "0.5",
        "SYNC_BACKOFF_MAX": "0.5",
        "PENDING_LIMIT": "1",
    }.items():
        monkeypatch.setenv(f"HWR_EDGE_{key}", value)
    edge = EdgeProcess(command, tmp_path / "data", models, tmp_path / "edge.log")
    try:
        edge.wait_healthy()
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1024, "height": 700})
                page.set_default_timeout(20_000)
                page.goto(edge.url + "/")
                page.wait_for_selector("#sync[data-state=online]")
                assert page.inner_text("#sync") == "Server online \u00b7 never synced"

                def correct_on_page(label: str) -> str:
                    page.click("#clear")
                    draw_with_mouse(page, fit_strokes(SEVEN))
                    page.wait_for_selector("#result[data-state=shown]")
                    page.click(f"#keypad [data-label='{label}']")
                    page.wait_for_selector(
                        "#correction[data-state=ok], #correction[data-state=error]"
                    )
                    return page.inner_text("#correction")

                assert correct_on_page("7") == "Saved \u2713 7"
                page.wait_for_function(
                    "document.getElementById('sync').textContent.includes('synced ')"
                )
                page.wait_for_selector("#pending[data-count='0']")
                server.stop()
                page.wait_for_selector("#sync[data-state=offline]")
                assert page.inner_text("#sync").startswith("Server offline \u00b7 synced")
                assert "cannot reach the server" in page.get_attribute("#sync", "title")
                assert correct_on_page("1") == "Saved \u2713 1"
                text = correct_on_page("4")
                assert text.startswith("Not saved: this device holds 1 corrections not yet sent")
                assert "connect it to sync" in text
                page.wait_for_selector("#pending[data-state=full][data-count='1']")
            finally:
                browser.close()
    finally:
        edge.stop()
