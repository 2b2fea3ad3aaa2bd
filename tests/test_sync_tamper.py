"""A real device behind a network that alters what the real server sends: every forgery refused.

An attacker between a classroom device and the school's server (a relay here, on 127.0.0.1)
changes the release list or the model file on its way. The device must refuse each forgery,
keep serving the model it has, and say why in /healthz: a changed signature, a file with a
flipped byte, a file cut short, and an old release replayed after a newer one was trusted.
"""

from __future__ import annotations

import json
import threading

import pytest
import requests
from flask import Flask, Response, request
from werkzeug.serving import make_server

from tests.sync_harness import (
    SyncedEdge,
    SyncServer,
    last_line,
    new_model_version,
    run_cli,
    wait_for,
)

pytestmark = pytest.mark.slow
HOP_HEADERS = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
}


class TamperRelay:
    """Forwards to the real server; ``mode`` says what to forge in the digit model's answers."""

    def __init__(self, target: str):
        self.target = target
        self.mode: str | None = None
        self.old_release: dict | None = None  # served in "replay" mode
        app = Flask(__name__)
        app.add_url_rule(
            "/<path:path>", "relay", self._relay, methods=["GET", "POST"], strict_slashes=False
        )
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _relay(self, path: str) -> Response:
        if path == "api/v1/notify":
            return Response(status=404)  # no notice socket through here: the device polls
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in {"host", "if-none-match", "range"} | HOP_HEADERS
        }
        upstream = requests.request(
            request.method,
            f"{self.target}/{path}",
            data=request.get_data(),
            headers=headers,
            timeout=30,
        )
        body = upstream.content
        if path == "api/v1/models" and upstream.status_code == 200:
            body = json.dumps(self._forge_list(upstream.json())).encode()
        elif path.startswith("api/v1/models/digits/") and upstream.status_code == 200:
            if self.mode == "flip_byte":
                body = body[:1000] + bytes([body[1000] ^ 0xFF]) + body[1001:]
            elif self.mode == "truncate":
                body = body[: len(body) // 2]
        out = Response(body, status=upstream.status_code)
        for k, v in upstream.headers.items():
            if k.lower() not in HOP_HEADERS | {"etag"}:
                out.headers[k] = v
        return out

    def _forge_list(self, listing: dict) -> dict:
        digit = listing["models"]["digit"]
        if self.mode == "signature":
            sig = digit["release"]["signature"]
            digit["release"]["signature"] = ("B" if sig[0] != "B" else "C") + sig[1:]
        elif self.mode == "replay" and self.old_release is not None:
            listing["models"]["digit"] = self.old_release
        return listing

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(5)


def _device_get(url: str, token: str) -> dict:
    r = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    r.raise_for_status()
    return r.json()


def test_every_forgery_on_the_way_is_refused_and_the_old_model_keeps_serving(tmp_path):
    data = tmp_path / "server"
    run_cli("init", data_dir=data)
    token = last_line(run_cli("add-device", "room-1", data_dir=data))
    key = last_line(run_cli("public-key", data_dir=data))
    server = SyncServer(data)
    relay = TamperRelay(server.url)
    edge = None
    try:
        first = _device_get(server.url + "/api/v1/models", token)["models"]["digit"]
        edge = SyncedEdge(
            tmp_path / "edge", relay.url, token, key, env={"HWR_EDGE_MODEL_POLL_INTERVAL": "0.5"}
        )

        def serving() -> str:
            return edge.health()["models"]["digit"]["version"]

        def refusals() -> list[dict]:
            return edge.health()["delivery"]["refusals"]

        run_cli("publish", str(new_model_version(tmp_path, "9.0.0", distinct=True)), data_dir=data)
        wait_for(lambda: serving() == "9.0.0", 30, "the honest release to be installed")
        assert refusals() == []

        forged = [("signature", "bad_signature"), ("flip_byte", "file_mismatch")]
        forged.append(("truncate", "file_mismatch"))
        for n, (mode, code) in enumerate(forged, start=1):
            relay.mode = mode
            version = f"9.0.{n}"
            run_cli(
                "publish", str(new_model_version(tmp_path, version, distinct=True)), data_dir=data
            )
            found = wait_for(
                lambda v=version: [r for r in refusals() if r["version"] == v],
                30,
                f"the forged {version} ({mode}) to be refused",
            )
            assert [r["code"] for r in found] == [code], found
            assert serving() == "9.0.0", f"{mode}: the device serves {serving()}"
            files = {p.name for p in (edge.data_dir / "models").iterdir()}
            assert f"digits-{version}" not in files, f"{mode}: a forged model was installed"

        # The device trusts a newer sequence now: the shipped release, though validly signed,
        # is an old one replayed.
        relay.mode, relay.old_release = "replay", first
        run_cli("publish", str(new_model_version(tmp_path, "9.1.0", distinct=True)), data_dir=data)
        found = wait_for(
            lambda: [r for r in refusals() if r["code"] == "replayed_release"],
            30,
            "the replayed release to be refused",
        )
        assert found[0]["version"] == first["release"]["release"]["version"]
        assert serving() == "9.0.0"

        relay.mode = None  # the network is honest again: the newest release arrives
        wait_for(lambda: serving() == "9.1.0", 30, "the honest 9.1.0 to be installed")
    finally:
        if edge is not None:
            edge.stop()
        relay.close()
        server.stop()
