"""Model delivery against a small real sync server on 127.0.0.1: install, refuse, resume, swap.

The server here (a Flask app in a thread) speaks docs/sync.md's release routes: the release
list with its ETag, the model file with ETag and Range, and the notify WebSocket. Releases are
made and signed with hwrcore.release; a "new version" is the shipped digit model with a few
bytes appended (so its sha256 differs) under a manifest naming another version.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask, Response, abort, request
from flask_sock import Sock
from werkzeug.serving import make_server

from edge.app import open_context
from edge.config import ConfigError, EdgeConfig
from edge.messages import Context, handle_message, health
from hwrcore.release import (
    generate_key,
    make_release,
    public_key_text,
    sign_release,
)
from tests import versions
from tests.models import require_models

TOKEN = "device-token-that-must-never-be-logged"
SEVEN = [[[60.0, 50.0], [220.0, 50.0], [130.0, 240.0]]]


# -- the server -------------------------------------------------------------------------------
class FakeSync:
    """Release routes of docs/sync.md on 127.0.0.1, in a thread; tests change what it serves."""

    def __init__(self, notify: bool = True, ping_interval: float | None = None):
        self.notify_opens = 0  # notify sockets opened by the device
        self.releases: dict[str, dict[str, Any]] = {}
        self.files: dict[str, bytes] = {}  # url -> bytes served
        self.cut_after: int | None = None  # cut the next file download after this many bytes
        self.log: list[tuple[str, str | None]] = []  # (path, Range header)
        self.bytes_sent = 0
        self.sockets: list[queue.Queue] = []
        self._closing = threading.Event()
        app = Flask(__name__)
        if ping_interval is not None:
            app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": ping_interval}
        self._routes(app)
        if notify:
            self._notify(app)
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _authorised(self) -> None:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            abort(401)

    def _etag(self) -> str:
        blob = json.dumps(self.releases, sort_keys=True).encode()
        return '"' + hashlib.sha256(blob).hexdigest()[:32] + '"'

    def _routes(self, app: Flask) -> None:
        @app.get("/api/v1/models")
        def models():
            self._authorised()
            self.log.append(("/api/v1/models", None))
            etag = self._etag()
            if request.headers.get("If-None-Match") == etag:
                return Response(status=304, headers={"ETag": etag})
            return Response(
                json.dumps({"models": self.releases}),
                content_type="application/json",
                headers={"ETag": etag},
            )

        @app.get("/api/v1/models/<name>/<version>")
        def model_file(name: str, version: str):
            self._authorised()
            path = request.path
            rng = request.headers.get("Range")
            self.log.append((path, rng))
            data = self.files.get(path)
            if data is None:
                abort(404)
            start, status = 0, 200
            headers = {"ETag": '"' + hashlib.sha256(data).hexdigest() + '"'}
            if rng and rng.startswith("bytes=") and rng.endswith("-"):
                start, status = int(rng[6:-1]), 206
                if start >= len(data):
                    return Response(status=416)
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            body = data[start:]
            headers["Content-Length"] = str(len(body))
            cut, self.cut_after = self.cut_after, None
            sock = request.environ.get("werkzeug.socket")

            def stream():
                if cut is None:
                    self.bytes_sent += len(body)
                    yield body
                    return
                self.bytes_sent += cut
                yield body[:cut]
                time.sleep(0.05)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # the connection drops mid-body

            return Response(stream(), status=status, headers=headers, direct_passthrough=True)

    def _notify(self, app: Flask) -> None:
        sock = Sock(app)

        @sock.route("/api/v1/notify")
        def notify(ws):
            if request.headers.get("Authorization") != f"Bearer {TOKEN}":
                ws.close()
                return
            q: queue.Queue = queue.Queue()
            self.notify_opens += 1
            self.sockets.append(q)
            try:
                for mode, item in list(self.releases.items()):
                    ws.send(json.dumps(_notice(mode, item)))
                while not self._closing.is_set():
                    try:
                        ws.send(json.dumps(q.get(timeout=0.1)))
                    except queue.Empty:
                        pass
            finally:
                self.sockets.remove(q)

    def publish(self, mode: str, doc: dict, data: bytes | None, notify: bool = True) -> None:
        rel = doc["release"]
        url = f"/api/v1/models/{rel['name']}/{rel['version']}"
        if data is not None:
            self.files[url] = data
        self.releases[mode] = {"release": doc, "url": url}
        if notify:
            for q in list(self.sockets):
                q.put(_notice(mode, self.releases[mode]))

    def downloads(self) -> list[tuple[str, str | None]]:
        return [e for e in self.log if e[0] != "/api/v1/models"]

    def close(self) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def _notice(mode: str, item: dict) -> dict:
    r = item["release"]["release"]
    return {"type": "release", "mode": mode, "name": r["name"], "version": r["version"],
            "sequence": r["sequence"]}  # fmt: skip


# -- releases ---------------------------------------------------------------------------------
def shipped() -> Path:
    return require_models()


def digit_version(version: str, **changes: Any) -> tuple[bytes, dict]:
    """The shipped digit model's bytes (padded so its sha256 is this version's) and manifest."""
    data = (shipped() / "digits.tflite").read_bytes() + version.encode() * 8
    manifest = json.loads((shipped() / "digits.json").read_text())
    manifest.update(version=version, sha256=hashlib.sha256(data).hexdigest(), **changes)
    return data, manifest


def signed(key, manifest: dict, data: bytes, sequence: int) -> dict:
    return sign_release(make_release(manifest, sequence=sequence, length=len(data)), key)


@pytest.fixture(scope="module")
def key():
    return generate_key()


@pytest.fixture
def server():
    s = FakeSync()
    yield s
    s.close()


def edge_config(tmp_path: Path, server: FakeSync, key, **more: Any) -> EdgeConfig:
    return EdgeConfig(
        data_dir=tmp_path / "data",
        models_dir=shipped(),
        sync_url=server.url,
        sync_token=TOKEN,
        sync_public_key=public_key_text(key),
        sync_connect_timeout=2.0,
        sync_read_timeout=3.0,
        **more,
    )


@pytest.fixture
def config(tmp_path, server, key) -> EdgeConfig:
    return edge_config(tmp_path, server, key)


@contextlib.contextmanager
def opened(config: EdgeConfig):
    ctx = open_context(config)
    try:
        yield ctx
    finally:
        ctx.close()


def version_of(ctx: Context, mode: str = "digit") -> str:
    return health(ctx)["models"][mode]["version"]


def predict(ctx: Context) -> dict:
    reply = handle_message({"type": "predict", "mode": "digit", "strokes": SEVEN}, ctx)
    assert reply["type"] == "prediction", reply
    return reply


def state_of(config: EdgeConfig) -> dict | None:
    p = config.data_dir / "models" / "state.json"
    return json.loads(p.read_text()) if p.exists() else None


def installed_dirs(config: EdgeConfig) -> list[str]:
    root = config.data_dir / "models"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def publish(server: FakeSync, key, version: str, sequence: int, **changes: Any) -> dict:
    data, manifest = digit_version(version, **changes)
    doc = signed(key, manifest, data, sequence)
    server.publish("digit", doc, data)
    return doc


# -- installing -------------------------------------------------------------------------------
def test_a_good_release_is_installed_served_and_trusted_across_a_restart(config, server, key):
    old, new = versions.digits(), versions.digits(1)
    publish(server, key, new, 2)
    with opened(config) as ctx:
        assert version_of(ctx) == old and ctx.model_changed_at is None
        assert ctx.delivery.check_now() == {"digit": "installed"}
        assert version_of(ctx) == new and predict(ctx)["model"]["version"] == new
        h = health(ctx)
        assert h["model_changed_at"] is not None and h["delivery"]["refusals"] == []
        assert h["delivery"]["serving"]["digit"]["source"] == "installed"
        assert h["delivery"]["serving"]["digit"]["sequence"] == 2
        assert h["delivery"]["previous"]["digit"]["version"] == old
        assert h["delivery"]["serving"]["char"]["source"] == "shipped"
        # Unchanged list: a 304, nothing fetched again.
        assert ctx.delivery.check_now() == {"*": "not_modified"}
    state = state_of(config)
    digit = state["modes"]["digit"]
    assert digit["trusted_sequence"] == 2 and digit["serving"]["version"] == new
    assert digit["serving"]["dir"] == f"digits-{new}"
    assert digit["previous"]["version"] == old
    assert installed_dirs(config) == [f"digits-{new}", "state.json"]
    assert len(server.downloads()) == 1
    with opened(config) as again:  # a restart serves the installed model, no download
        assert version_of(again) == new and predict(again)["model"]["version"] == new
        assert again.delivery.check_now() == {"digit": "current"}
        assert again.model_changed_at is None
    assert len(server.downloads()) == 1


def test_the_shipped_release_is_trusted_without_a_download(config, server, key):
    data = (shipped() / "digits.tflite").read_bytes()
    manifest = json.loads((shipped() / "digits.json").read_text())
    server.publish("digit", signed(key, manifest, data, 1), data)
    with opened(config) as ctx:
        assert ctx.delivery.check_now() == {"digit": "trusted"}
        assert version_of(ctx) == versions.digits() and ctx.model_changed_at is None
    assert state_of(config)["modes"]["digit"]["trusted_sequence"] == 1
    assert server.downloads() == []


def test_the_token_never_reaches_the_log(config, server, key, caplog):
    caplog.set_level(logging.DEBUG)
    publish(server, key, versions.digits(1), 2)
    with opened(config) as ctx:
        ctx.delivery.check_now()
        server.cut_after = 100
        publish(server, key, versions.digits(2), 3)
        assert ctx.delivery.check_now() == {"digit": "unreachable"}
        assert ctx.delivery.check_now() == {"digit": "installed"}
    assert "resumes at byte 100" in caplog.text  # the log was captured
    assert TOKEN not in caplog.text


# -- refusals ---------------------------------------------------------------------------------
def _tamper(doc: dict) -> dict:
    bad = json.loads(json.dumps(doc))
    bad["release"]["created"] = "2000-01-01T00:00:00Z"
    return bad


def _case(name: str, key) -> tuple[dict, bytes | None, str]:
    """(signed doc, bytes served, the refusal's code) for one way a release is wrong."""
    data, manifest = digit_version(versions.digits(1))
    if name == "bad_signature":
        return _tamper(signed(key, manifest, data, 2)), data, "bad_signature"
    if name == "other_key":
        return signed(generate_key(), manifest, data, 2), data, "bad_signature"
    if name == "sha256_mismatch":
        wrong = bytearray(data)
        wrong[1000] ^= 0xFF
        return signed(key, manifest, data, 2), bytes(wrong), "file_mismatch"
    if name == "truncated":
        return signed(key, manifest, data, 2), data[:-500], "file_mismatch"
    if name == "longer":
        return signed(key, manifest, data, 2), data + b"more", "file_mismatch"
    if name == "labels":
        _, manifest = digit_version(versions.digits(1), labels=list("0123456798"))
        return signed(key, manifest, data, 2), data, "incompatible_release"
    if name == "input":
        _, manifest = digit_version(versions.digits(1), pixels="black ink on white")
        return signed(key, manifest, data, 2), data, "incompatible_release"
    if name == "mode":
        chars = (shipped() / "characters.tflite").read_bytes()
        m = json.loads((shipped() / "characters.json").read_text())
        m.update(version=versions.characters(1))
        return signed(key, m, chars, 2), chars, "incompatible_release"
    if name == "other_model":  # the character model's file under a digit manifest: 37 outputs
        chars = (shipped() / "characters.tflite").read_bytes()
        _, manifest = digit_version(versions.digits(1))
        manifest["sha256"] = hashlib.sha256(chars).hexdigest()
        return signed(key, manifest, chars, 2), chars, "probe_failed"
    if name == "unloadable":  # signed and whole, but not a TFLite model
        junk = b"not a model " * 4000
        _, manifest = digit_version(versions.digits(1))
        manifest["sha256"] = hashlib.sha256(junk).hexdigest()
        return signed(key, manifest, junk, 2), junk, "load_failed"
    raise AssertionError(name)


REFUSALS = [
    "bad_signature",
    "other_key",
    "sha256_mismatch",
    "truncated",
    "longer",
    "labels",
    "input",
    "mode",
    "other_model",
    "unloadable",
]


@pytest.mark.parametrize("case", REFUSALS)
def test_a_bad_release_is_refused_and_the_old_model_keeps_serving(config, server, key, case):
    doc, data, code = _case(case, key)
    server.publish("digit", doc, data)
    with opened(config) as ctx:
        before = predict(ctx)
        outcome = ctx.delivery.check_now()
        assert outcome == {"digit": code}
        assert health(ctx)["delivery"]["last_check"]["result"] == "failed"  # not "ok"
        assert version_of(ctx) == versions.digits() and ctx.model_changed_at is None
        after = predict(ctx)
        assert after["model"] == before["model"] and after["label"] == before["label"]
        refusals = health(ctx)["delivery"]["refusals"]
        assert [r["code"] for r in refusals] == [code] and refusals[0]["mode"] == "digit"
        assert refusals[0]["reason"] and refusals[0]["at"] > 0
        # Refused once: the same list (304) is not fetched and refused again.
        assert ctx.delivery.check_now() == {"*": "not_modified"}
    assert state_of(config) is None  # nothing trusted written
    assert installed_dirs(config) == []  # no model folder, no temporary file


def test_a_replayed_old_release_is_refused(config, server, key):
    older, newest = versions.digits(1), versions.digits(2)
    publish(server, key, newest, 5)
    with opened(config) as ctx:
        assert ctx.delivery.check_now() == {"digit": "installed"}
        trusted = state_of(config)
        publish(server, key, older, 4)  # correctly signed, but older than the trusted one
        assert ctx.delivery.check_now() == {"digit": "replayed_release"}
        assert version_of(ctx) == newest
        publish(server, key, older, 5)  # the same sequence again, other content
        assert ctx.delivery.check_now() == {"digit": "replayed_release"}
        assert version_of(ctx) == newest
    assert state_of(config) == trusted
    assert installed_dirs(config) == [f"digits-{newest}", "state.json"]


def test_sync_without_the_public_key_is_a_config_error(tmp_path, server):
    config = EdgeConfig(
        data_dir=tmp_path / "data", models_dir=shipped(), sync_url=server.url, sync_token=TOKEN
    )
    with pytest.raises(ConfigError, match="sync_public_key"):
        open_context(config)


def test_without_sync_nothing_changes(tmp_path):
    with opened(EdgeConfig(data_dir=tmp_path / "data", models_dir=shipped())) as ctx:
        assert ctx.delivery is None and health(ctx)["delivery"] == {"state": "off"}
    assert not (tmp_path / "data" / "models").exists()


# -- resume, damage, rollback -----------------------------------------------------------------
def test_a_cut_download_resumes_with_range(config, server, key):
    doc = publish(server, key, versions.digits(1), 2)
    length = doc["release"]["length"]
    server.cut_after = 150_000
    with opened(config) as ctx:
        assert ctx.delivery.check_now() == {"digit": "unreachable"}
        assert version_of(ctx) == versions.digits() and state_of(config) is None
        parts = list((config.data_dir / "models").glob(".download-*.part"))
        assert len(parts) == 1 and parts[0].stat().st_size == 150_000
        # The list is fetched again (no ETag kept after a cut), the file from where it stopped.
        assert ctx.delivery.check_now() == {"digit": "installed"}
        assert version_of(ctx) == versions.digits(1)
    assert [r for _, r in server.downloads()] == [None, "bytes=150000-"]
    assert server.bytes_sent == length
    assert installed_dirs(config) == [f"digits-{versions.digits(1)}", "state.json"]


def test_a_damaged_installed_model_falls_back_to_the_shipped_one(config, server, key):
    old, new = versions.digits(), versions.digits(1)
    publish(server, key, new, 2)
    with opened(config) as ctx:
        ctx.delivery.check_now()
    installed = config.data_dir / "models" / f"digits-{new}" / "digits.tflite"
    data = bytearray(installed.read_bytes())
    data[5000] ^= 0xFF
    installed.write_bytes(bytes(data))
    with opened(config) as ctx:
        assert version_of(ctx) == old and predict(ctx)["model"]["version"] == old
        refusals = health(ctx)["delivery"]["refusals"]
        assert [r["code"] for r in refusals] == ["file_mismatch"]
        assert refusals[0]["version"] == new and "at start" in refusals[0]["reason"]
        assert state_of(config)["modes"]["digit"]["trusted_sequence"] == 2
        # The trusted release is installed again from the server.
        assert ctx.delivery.check_now() == {"digit": "installed"}
        assert version_of(ctx) == new
    assert len(server.downloads()) == 2


def test_an_installed_model_that_fails_to_load_at_start_falls_back(config, server, key):
    old, new = versions.digits(), versions.digits(1)
    publish(server, key, new, 2)
    with opened(config) as ctx:
        ctx.delivery.check_now()
    (config.data_dir / "models" / f"digits-{new}" / "digits.json").write_text("{not json")
    with opened(config) as ctx:
        assert version_of(ctx) == old
        assert [r["code"] for r in health(ctx)["delivery"]["refusals"]] == ["model_unavailable"]


def test_rollback_returns_to_an_older_version_without_downloading_it(config, server, key):
    old, first, second = versions.digits(), versions.digits(1), versions.digits(2)
    with opened(config) as ctx:
        publish(server, key, first, 2)
        assert ctx.delivery.check_now() == {"digit": "installed"}
        publish(server, key, second, 3)
        assert ctx.delivery.check_now() == {"digit": "installed"}
        assert installed_dirs(config) == sorted(
            [f"digits-{first}", f"digits-{second}", "state.json"]
        )
        publish(server, key, first, 4)  # the rollback: a new sequence naming the older one
        assert ctx.delivery.check_now() == {"digit": "installed"}
        assert version_of(ctx) == first and predict(ctx)["model"]["version"] == first
        st = state_of(config)["modes"]["digit"]
        assert st["trusted_sequence"] == 4 and st["previous"]["version"] == second
        # Back to the shipped version: its bytes are on the device already.
        data = (shipped() / "digits.tflite").read_bytes()
        manifest = json.loads((shipped() / "digits.json").read_text())
        server.publish("digit", signed(key, manifest, data, 5), data)
        assert ctx.delivery.check_now() == {"digit": "installed"}
        assert version_of(ctx) == old
    assert [p for p, _ in server.downloads()] == [
        f"/api/v1/models/digits/{first}",
        f"/api/v1/models/digits/{second}",
    ]
    assert installed_dirs(config) == sorted([f"digits-{old}", f"digits-{first}", "state.json"])


# -- live swap --------------------------------------------------------------------------------
def test_swaps_under_load_never_fail_nor_mix_models(config, server, key):
    later = [versions.digits(n) for n in range(1, 6)]
    with opened(config) as ctx:
        seen: list[str] = []
        errors: list[dict] = []
        corrected: list[str] = []
        stop = threading.Event()

        def predicting() -> None:
            while not stop.is_set():
                r = handle_message({"type": "predict", "mode": "digit", "strokes": SEVEN}, ctx)
                if r["type"] != "prediction" or not np.isfinite(r["confidence"]):
                    errors.append(r)
                else:
                    seen.append(r["model"]["version"])

        def correcting() -> None:
            while not stop.is_set():
                p = handle_message({"type": "predict", "mode": "digit", "strokes": SEVEN}, ctx)
                c = handle_message({"type": "correct", "id": p.get("id"), "label": "7"}, ctx)
                if c["type"] != "corrected":
                    errors.append(c)
                else:
                    corrected.append(c["correction_id"])
                time.sleep(0.005)

        threads = [threading.Thread(target=predicting) for _ in range(2)]
        threads.append(threading.Thread(target=correcting))
        for t in threads:
            t.start()
        try:
            for seq, v in enumerate(later, start=2):
                time.sleep(0.1)
                publish(server, key, v, seq)
                assert ctx.delivery.check_now() == {"digit": "installed"}
            deadline = time.monotonic() + 10
            while len(seen) < 2000 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert errors == []
        assert len(seen) >= 2000, len(seen)
        order = [versions.digits(), *later]
        # Every answer came from one whole model, and never from one older than an earlier answer.
        assert set(seen) <= set(order) and {versions.digits(), versions.digits(5)} <= set(seen)
        assert version_of(ctx) == versions.digits(5)
        # Each correction reached the personaliser that serves now exactly once.
        assert len(ctx.served["digit"].personaliser) == len(corrected) == len(ctx.stores["digit"])


def test_each_thread_sees_model_versions_only_grow(config, server, key):
    later = [versions.digits(n) for n in range(1, 6)]
    order = [versions.digits(), *later]
    with opened(config) as ctx:
        per_thread: list[list[str]] = [[], []]
        errors: list[dict] = []
        stop = threading.Event()

        def predicting(out: list[str]) -> None:
            while not stop.is_set():
                r = handle_message({"type": "predict", "mode": "digit", "strokes": SEVEN}, ctx)
                if r["type"] != "prediction":
                    errors.append(r)
                else:
                    out.append(r["model"]["version"])

        threads = [threading.Thread(target=predicting, args=(o,)) for o in per_thread]
        for t in threads:
            t.start()
        try:
            for seq, v in enumerate(later, start=2):
                time.sleep(0.05)
                publish(server, key, v, seq)
                ctx.delivery.check_now()
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert errors == []
        for out in per_thread:
            ranks = [order.index(v) for v in out]
            assert ranks == sorted(ranks) and ranks[-1] == len(order) - 1


# -- the background thread ---------------------------------------------------------------------
def _wait_for(ctx: Context, version: str, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if version_of(ctx) == version:
            return time.monotonic() - t0
        time.sleep(0.02)
    raise AssertionError(f"still serving {version_of(ctx)} after {timeout} s: {health(ctx)}")


def test_a_notice_on_the_socket_brings_the_new_model_within_seconds(config, server, key):
    with opened(config) as ctx:
        ctx.delivery.start()
        deadline = time.monotonic() + 5
        while health(ctx)["delivery"]["notify"] != "connected" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert health(ctx)["delivery"]["notify"] == "connected"
        publish(server, key, versions.digits(1), 2)
        assert _wait_for(ctx, versions.digits(1), 5) < 5
        t0 = time.monotonic()
        ctx.delivery.stop()
        assert time.monotonic() - t0 < 5 and health(ctx)["delivery"]["notify"] == "stopped"


def test_the_servers_pings_keep_one_notify_socket_open(tmp_path, key):
    """A ping is a sign of life: the socket stays open across many, and a notice still arrives."""
    server = FakeSync(ping_interval=0.6)  # longer than the read timeout, as 25 s is than 15 s
    try:
        config = dataclasses.replace(edge_config(tmp_path, server, key), sync_read_timeout=0.3)
        with opened(config) as ctx:
            ctx.delivery.start()
            wait_until = time.monotonic() + 5
            while health(ctx)["delivery"]["notify"] != "connected":
                assert time.monotonic() < wait_until, "the notify socket did not open"
                time.sleep(0.05)
            time.sleep(3.0)  # five pings, each once read as the start of a notice
            assert server.notify_opens == 1
            publish(server, key, versions.digits(1), 2)
            assert _wait_for(ctx, versions.digits(1), 5) < 5
    finally:
        server.close()


def test_without_a_socket_it_polls_and_a_heartbeat_wakes_it(tmp_path, key):
    server = FakeSync(notify=False)
    try:
        config = edge_config(tmp_path, server, key, model_poll_interval=0.3)
        with opened(config) as ctx:
            ctx.delivery.start()
            publish(server, key, versions.digits(1), 2)
            _wait_for(ctx, versions.digits(1), 5)
            assert health(ctx)["delivery"]["notify"] == "polling"
            polls = len(server.log)
            time.sleep(1.0)
            assert len(server.log) > polls  # it keeps polling, with its ETag
            assert server.downloads() == [(f"/api/v1/models/digits/{versions.digits(1)}", None)]
        slow = edge_config(tmp_path, server, key, model_poll_interval=60)
        with opened(slow) as ctx:
            ctx.delivery.start()
            time.sleep(0.3)  # the first check at start finds nothing new
            publish(
                server,
                key,
                versions.digits(2),
                3,
            )
            ctx.delivery.on_models(
                {"digit": {"name": "digits", "version": versions.digits(2), "sequence": 3}}
            )
            _wait_for(ctx, versions.digits(2), 5)
    finally:
        server.close()


def test_a_server_that_is_down_changes_nothing(tmp_path, key):
    old = versions.digits()
    server = FakeSync()
    server.close()
    config = edge_config(tmp_path, server, key, model_poll_interval=0.2)
    with opened(config) as ctx:
        assert ctx.delivery.check_now() == {"*": "unreachable"}
        assert version_of(ctx) == old and predict(ctx)["model"]["version"] == old
        assert health(ctx)["delivery"]["last_check"]["result"] == "unreachable"
        ctx.delivery.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        ctx.delivery.stop()
        assert time.monotonic() - t0 < 5
    assert state_of(config) is None


def test_a_refused_token_is_reported_as_unauthorized_not_ok(tmp_path, server, key):
    """A revoked or replaced token: the server answers, and /healthz says it refuses the device."""
    config = edge_config(tmp_path, server, key)
    config.sync_token = "a-token-the-server-does-not-know"
    with opened(config) as ctx:
        assert ctx.delivery.check_now() == {"*": "unauthorized"}
        assert health(ctx)["delivery"]["last_check"]["result"] == "unauthorized"
        assert version_of(ctx) == versions.digits()


def test_a_model_whose_outputs_differ_from_its_manifest_fails_its_probe(config, server, key):
    data, manifest = digit_version(versions.digits(1))
    manifest["outputs"]["embedding"]["shape"] = [1, 64]  # the model's embedding has 128
    server.publish("digit", signed(key, manifest, data, 2), data)
    with opened(config) as ctx:
        assert ctx.delivery.check_now() == {"digit": "probe_failed"}
        assert version_of(ctx) == versions.digits()
        assert "(64,)" in health(ctx)["delivery"]["refusals"][0]["reason"]
    assert state_of(config) is None and installed_dirs(config) == []
