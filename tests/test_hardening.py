"""The edge under attack and abuse: bad images, cross-site writes, gunicorn's own errors, slow
clients, memory under large PNGs, workers that cannot start, raw generated HTTP requests."""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import http.server
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import requests
import websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from edge.app import close_app, create_app, store_path
from edge.config import EdgeConfig
from hwrcore import preprocess, protocol
from hwrcore.errors import InvalidDrawing
from hwrcore.preprocess import decode_png, strokes_to_png
from hwrcore.store import CorrectionStore
from tests.models import require_models
from tests.test_edge_process import Edge

ROOT = Path(__file__).resolve().parent.parent
SEVEN = [[[60.0, 50.0], [220.0, 50.0], [130.0, 240.0]]]
POST_ROUTES = ("/api/predict", "/api/correct", "/predict", "/correct")
RUNTIME_NOISE = "INFO: Created TensorFlow Lite XNNPACK delegate"


def b64png(strokes=SEVEN) -> str:
    return "data:image/png;base64," + base64.b64encode(strokes_to_png(strokes)).decode()


def big_png(side: int, mode: str = "RGBA") -> bytes:
    """A canvas of ``side`` pixels a side with one drawn 7: small as a file, large decoded."""
    img = Image.new(mode, (side, side), (255, 255, 255, 0) if mode == "RGBA" else 255)
    d = ImageDraw.Draw(img)
    s = side / 280
    d.line(
        [(60 * s, 50 * s), (220 * s, 50 * s), (130 * s, 240 * s)],
        fill=(0, 0, 0, 255) if mode == "RGBA" else 0,
        width=int(20 * s),
    )
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def assert_error_body(body: bytes | str, code: str | None = None) -> dict:
    err = json.loads(body)["error"]
    assert set(err) == {"code", "message"} and err["code"] in protocol.STATUS and err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


# ---- images: PNG only, size checked before decoding, decoded small ------------------------


def test_a_data_url_without_comma_is_an_invalid_image():
    for data in ("data:", "data:image/png;base64"):
        with pytest.raises(InvalidDrawing) as info:
            decode_png(data)
        assert info.value.code == "invalid_image"


@pytest.mark.parametrize("fmt", ["JPEG", "BMP", "GIF", "TIFF", "WEBP", "ICO"])
def test_only_png_is_decoded(fmt, monkeypatch):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(buf, format=fmt)
    opened = []
    monkeypatch.setattr(preprocess.Image, "open", lambda *a, **k: opened.append(a))
    with pytest.raises(InvalidDrawing) as info:
        decode_png(base64.b64encode(buf.getvalue()).decode())
    assert info.value.code == "invalid_image" and not opened


def test_png_size_is_checked_before_a_pixel_is_decoded(monkeypatch):
    data = big_png(2000)
    assert len(data) < 100_000
    opened = []
    monkeypatch.setattr(preprocess.Image, "open", lambda *a, **k: opened.append(a))
    with pytest.raises(InvalidDrawing) as info:
        decode_png(data)
    assert info.value.code == "too_large" and not opened


def test_the_largest_png_taken_is_reduced_before_float_copies():
    side = 1024
    assert side * side <= preprocess.MAX_PNG_PIXELS
    gray = decode_png(big_png(side))
    assert gray.shape == (preprocess.WORK_SIDE, preprocess.WORK_SIDE)
    assert gray.dtype == np.float32 and gray.max() > 0.5


# ---- the app: every write route, the guard, health ----------------------------------------


@pytest.fixture
def app(tmp_path):
    models = require_models()
    web = tmp_path / "web"
    (web / "static").mkdir(parents=True)
    (web / "index.html").write_text("<!doctype html><title>canvas</title>")
    config = EdgeConfig(
        data_dir=tmp_path / "data", models_dir=models, web_dir=web, allowed_hosts="school-pi"
    )
    app = create_app(config)
    yield app
    close_app(app)


@pytest.fixture
def client(app):
    return app.test_client()


def stored(app) -> int:
    return sum(len(s) for s in app.extensions["hwr"].stores.values())


@pytest.mark.parametrize("route", POST_ROUTES)
def test_data_url_without_comma_is_a_400_on_every_route(client, route):
    resp = client.post(route, json={"mode": "digit", "image": "data:", "label": "7"})
    assert resp.status_code == 400
    assert_error_body(resp.data, "invalid_image")


@pytest.mark.parametrize("route", POST_ROUTES)
def test_writes_must_be_json(client, app, route):
    body = json.dumps({"mode": "digit", "strokes": SEVEN, "image": b64png(), "label": "1"})
    for kwargs in (
        {"data": body, "content_type": "text/plain"},
        {"data": {"image": b64png(), "label": "1"}},  # a form
        {"data": body},  # no content type at all
    ):
        resp = client.post(route, **kwargs)
        assert resp.status_code == 415, (kwargs, resp.data)
        assert_error_body(resp.data, "unsupported_media_type")
    assert stored(app) == 0


def test_writes_from_another_origin_are_refused(client, app):
    msg = {"mode": "digit", "strokes": SEVEN, "label": "1"}
    for origin in ("http://evil.example", "http://localhost:9999", "null", "file://"):
        resp = client.post("/api/correct", json=msg, headers={"Origin": origin})
        assert resp.status_code == 403, origin
        assert_error_body(resp.data, "forbidden_origin")
    assert stored(app) == 0
    own = client.post("/api/correct", json=msg, headers={"Origin": "http://localhost"})
    assert own.status_code == 200 and stored(app) == 1
    # A read from another page carries no write: the health check is not refused.
    assert client.get("/healthz", headers={"Origin": "http://evil.example"}).status_code == 200


def test_the_host_header_must_name_this_device(client, app):
    for host in ("evil.example", "evil.example:8000", "localhost.evil.example"):
        for resp in (
            client.get("/", headers={"Host": host}),
            client.post(
                "/api/predict", json={"mode": "digit", "strokes": SEVEN}, headers={"Host": host}
            ),
        ):
            assert resp.status_code == 421, host
            assert_error_body(resp.data, "unknown_host")
    ok_hosts = ["localhost:8000", "127.0.0.1:8000", "[::1]:8000", "192.168.1.20", "school-pi"]
    ok_hosts += [socket.gethostname(), f"{socket.gethostname()}.local:8000"]
    for host in ok_hosts:
        assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
    hosts = app.extensions["hwr_hosts"]
    hosts.add("abc.tunnel.example")  # the hook a tunnel uses
    assert client.get("/healthz", headers={"Host": "abc.tunnel.example"}).status_code == 200


def test_websocket_handshakes_that_cannot_succeed_get_the_error_body(client):
    base = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    cases = [
        ({**base}, 426, "upgrade_required"),
        ({**base, "Sec-WebSocket-Version": "8"}, 426, "upgrade_required"),
        ({**base, "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "short"}, 400, "bad_request"),
        ({**base, "Sec-WebSocket-Version": "13", "Connection": "keep-alive"}, 400, "bad_request"),
        (
            {**base, "Sec-WebSocket-Version": "13", "Origin": "http://evil.example"},
            403,
            "forbidden_origin",
        ),
        ({}, 400, "bad_request"),
    ]
    for headers, status, code in cases:
        resp = client.get("/ws", headers=headers)
        assert resp.status_code == status, (headers, resp.data)
        assert_error_body(resp.data, code)


def test_health_shows_no_path_and_says_when_the_snapshot_cannot_be_written(client, app, tmp_path):
    body = client.get("/healthz").get_data(as_text=True)
    assert str(tmp_path) not in body and "path" not in json.loads(body)["corrections"]["digit"]
    assert json.loads(body)["status"] == "ok"
    store = app.extensions["hwr"].stores["digit"]
    blocker = store_path(tmp_path / "data", "digit").with_name("custom_digits.h5.tmp")
    blocker.mkdir()  # the snapshot's temporary file cannot be made: every compaction fails
    for _ in range(2):
        store._background_compact()
    health = client.get("/healthz").get_json()
    assert health["status"] == "degraded"
    assert any("digit snapshot" in r for r in health["reasons"]), health["reasons"]
    assert health["corrections"]["digit"]["compaction_failures"] == 2
    blocker.rmdir()
    store._background_compact()
    assert client.get("/healthz").get_json()["status"] == "ok"


# ---- a real server: gunicorn's own errors, bodies, sockets --------------------------------

SERVER_ENV = {
    "HWR_EDGE_REQUEST_TIMEOUT": "2",
    "HWR_EDGE_WS_IDLE_TIMEOUT": "2",
    "HWR_EDGE_CONNECTIONS_PER_CLIENT": "400",
}


def start(data_dir: Path, env: dict | None = None) -> Edge:
    require_models()
    return Edge(data_dir, module=True, env=env)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    edge = start(tmp_path_factory.mktemp("hardening") / "data", SERVER_ENV)
    yield edge
    edge.stop()


def port_of(edge: Edge) -> int:
    return int(edge.url.rsplit(":", 1)[1].strip("/"))


def raw(
    port: int, data: bytes, timeout: float = 10.0, source: str = "127.0.0.1"
) -> tuple[int, dict, bytes]:
    """Send bytes, read one response: (status, lower-case headers, body); (0, {}, b"") if none."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    try:
        try:
            s.sendall(data)
        except OSError:
            pass  # the server may answer and close before it has read everything
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
            head, sep, body = out.partition(b"\r\n\r\n")
            m = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
            if sep and m and len(body) >= int(m.group(1)):
                break
    finally:
        s.close()
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/"):
        return 0, {}, out
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), headers, body


def chunked(body: bytes, size: int = 65536) -> bytes:
    parts = [
        b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size])
        for i in range(0, len(body), size)
    ]
    return b"".join(parts) + b"0\r\n\r\n"


def test_gunicorn_s_own_errors_are_the_error_body(server):
    port = port_of(server)
    get = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n"
    cases = [
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 414),
        (get + b"X-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (get + b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n", 431),
        (get + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (get + b"X-Nul: a\x00b\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    ]
    for data, status in cases:
        got, headers, body = raw(port, data)
        assert got == status, (data[:60], got, body[:200])
        assert headers["content-type"] == "application/json", headers
        assert_error_body(body)
    got, headers, body = raw(port, b"GET //healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert got in (200, 404) and headers["content-type"] == "application/json"


def test_chunked_bodies_do_not_get_round_the_size_limit(server):
    port = port_of(server)
    head = (
        b"POST /api/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    valid = json.dumps({"mode": "digit", "strokes": SEVEN}).encode()
    for pad in (3 << 20, (1 << 20) + 1000):  # refused while reading, and by the app
        got, _, body = raw(port, head + chunked(valid + b" " * pad))
        assert got == 413, (pad, body[:200])
        assert_error_body(body, "too_large")
    big = json.dumps({"mode": "digit", "pad": "x" * (2 << 20)}).encode()
    got, _, body = raw(port, head + chunked(big))
    assert got == 413
    got, _, body = raw(port, head + chunked(valid))
    assert got == 200 and json.loads(body)["label"]
    long = b"POST /api/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 5000000\r\n\r\n"
    got, _, body = raw(port, long)
    assert got == 413


def test_bad_images_and_handshakes_log_no_traceback(server):
    port = port_of(server)
    for route in POST_ROUTES:
        r = requests.post(
            server.url + route.lstrip("/"),
            json={"mode": "digit", "image": "data:", "label": "7"},
            timeout=5,
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_image"
    ws = websocket.create_connection(server.ws_url, timeout=5)
    try:
        ws.send(json.dumps({"type": "predict", "seq": 1, "mode": "digit", "image": "data:"}))
        reply = json.loads(ws.recv())
        assert reply["type"] == "error" and reply["error"]["code"] == "invalid_image"
    finally:
        ws.close()
    upgrade = b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    for extra in (b"", b"Sec-WebSocket-Version: 99\r\n"):
        got, headers, body = raw(port, upgrade + extra + b"\r\n")
        assert got == 426 and headers["sec-websocket-version"] == "13"
        assert_error_body(body, "upgrade_required")
    time.sleep(0.2)
    log = server.log_path.read_text()
    assert "Traceback" not in log and "unexpected error" not in log


def test_a_websocket_from_another_origin_is_refused_before_the_upgrade(server):
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(server.ws_url, timeout=5, origin="http://evil.example")
    assert info.value.status_code == 403
    own = websocket.create_connection(server.ws_url, timeout=5, origin=server.url.rstrip("/"))
    own.close()


# ---- slow and idle clients ----------------------------------------------------------------


def _pupil_latencies(port: int, n: int) -> list[float]:
    """``n`` predictions from another address (127.0.0.2) on one kept-alive connection, in ms."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0)
    )
    body = json.dumps({"mode": "digit", "strokes": SEVEN})
    headers = {"Content-Type": "application/json"}
    out = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            conn.request("POST", "/api/predict", body, headers)
            resp = conn.getresponse()
            data = resp.read()
            out.append((time.perf_counter() - t0) * 1000)
            assert resp.status == 200, data
    finally:
        conn.close()
    return out


def _attackers(port: int, url: str, n: int) -> tuple[list[socket.socket], list, int]:
    """``n`` connections from 127.0.0.1: idle, half a header, half a body, idle WebSockets."""
    socks: list[socket.socket] = []
    sockets: list = []
    refused_ws = 0
    for i in range(n):
        kind = i % 4
        if kind == 3:
            try:
                sockets.append(websocket.create_connection(url, timeout=5))
            except websocket.WebSocketBadStatusException as e:
                assert e.status_code == 503
                refused_ws += 1
            continue
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if kind == 1:
            s.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\n")
        elif kind == 2:
            s.sendall(
                b"POST /api/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"mode": '
            )
        socks.append(s)
    return socks, sockets, refused_ws


def _closed_by_server(s: socket.socket, within: float) -> bool:
    s.settimeout(within)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_200_slow_and_idle_connections_do_not_slow_a_pupil(tmp_path):
    timeout = 6.0
    env = {
        "HWR_EDGE_REQUEST_TIMEOUT": str(timeout),
        "HWR_EDGE_WS_IDLE_TIMEOUT": str(timeout),
        "HWR_EDGE_CONNECTIONS_PER_CLIENT": "400",
    }
    edge = start(tmp_path / "data", env)
    port = port_of(edge)
    try:
        quiet = _pupil_latencies(port, 300)
        t_open = time.monotonic()
        socks, sockets, refused_ws = _attackers(port, edge.ws_url, 200)
        time.sleep(0.2)
        held = sum(not _closed_by_server(s, 0.001) for s in socks)
        lat = _pupil_latencies(port, 300)
        assert time.monotonic() - t_open < timeout, "the pupil's run must end before the cut-off"
        p99 = float(np.percentile(lat, 99))
        print(
            f"held {held} http + {len(sockets)} ws (refused {refused_ws} ws); pupil p50 "
            f"{np.percentile(lat, 50):.2f} ms p99 {p99:.2f} ms (quiet: p50 "
            f"{np.percentile(quiet, 50):.2f} p99 {np.percentile(quiet, 99):.2f})"
        )
        assert held == 150, "every slow HTTP connection is held, none needs a thread"
        assert len(sockets) == 8 and refused_ws == 42  # sockets_per_client
        # 15 ms is the target on an otherwise idle machine; where other work takes the CPU
        # (load above the core count), the pupil must do no worse than twice as badly as
        # without the attack. (gunicorn's plain gthread worker: every predict times out.)
        limit = 15.0
        if os.getloadavg()[0] >= (os.cpu_count() or 1):
            limit = max(limit, 2 * float(np.percentile(quiet, 99)))
        assert p99 <= limit, f"p99 {p99:.2f} ms"
        # Cut off after request_timeout and ws_idle_timeout.
        left = max(0.1, timeout + 3.0 - (time.monotonic() - t_open))
        assert all(_closed_by_server(s, left) for s in socks)
        for ws in sockets:
            ws.settimeout(left)
            with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
                while True:
                    op, _ = ws.recv_data(control_frame=True)
                    if op == websocket.ABNF.OPCODE_CLOSE:
                        raise websocket.WebSocketConnectionClosedException("closed")
        assert requests.get(edge.url + "healthz", timeout=5).status_code == 200
    finally:
        for s in socks:
            s.close()
        for ws in sockets:
            ws.shutdown()
        edge.stop()


def test_one_address_may_hold_only_so_many_connections(tmp_path):
    edge = start(tmp_path / "data", {"HWR_EDGE_CONNECTIONS_PER_CLIENT": "8"})
    port = port_of(edge)
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(8)]
    try:
        time.sleep(0.3)
        got, _, body = raw(port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert got == 503
        assert_error_body(body, "busy")
        assert _pupil_latencies(port, 3)  # another address is served
    finally:
        for s in socks:
            s.close()
        edge.stop()


# ---- memory under large PNGs --------------------------------------------------------------


def worker_pid(edge: Edge) -> int:
    children = Path(f"/proc/{edge.proc.pid}/task/{edge.proc.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    kib = {k: int(v.split()[0]) for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(.*)$", status, re.M)}
    return kib["VmRSS"] / 1024, kib["VmHWM"] / 1024


def test_memory_stays_bounded_under_30_clients_posting_large_pngs(tmp_path):
    edge = start(tmp_path / "data")
    try:
        pid = worker_pid(edge)
        for _ in range(20):
            requests.post(
                edge.url + "api/predict", json={"mode": "digit", "image": b64png()}, timeout=5
            )
        base, _ = rss_mib(pid)
        figures = {}
        for side in (2000, 1024):
            image = base64.b64encode(big_png(side)).decode()
            body = json.dumps({"mode": "digit", "image": image})

            def post(_: int, body: str = body) -> int:
                return requests.post(
                    edge.url + "api/predict",
                    data=body,
                    headers={"Content-Type": "application/json"},
                    timeout=60,
                ).status_code

            with concurrent.futures.ThreadPoolExecutor(30) as pool:
                codes = list(pool.map(post, range(90)))
            expected = 413 if side * side > preprocess.MAX_PNG_PIXELS else 200
            assert set(codes) == {expected}, codes
            time.sleep(0.5)
            figures[side] = rss_mib(pid)
        idle, peak = rss_mib(pid)
        print(
            f"worker RSS: {base:.1f} MiB before, peak {peak:.1f} MiB, idle after {idle:.1f} MiB; {figures}"
        )
        assert peak - base <= 60, (base, peak)
        assert peak <= 200, peak
        assert idle - base <= 25, (base, idle)
    finally:
        edge.stop()


# ---- workers that cannot start ------------------------------------------------------------


def run_edge(
    data_dir: Path, user: list[str] | None = None, timeout: float = 40
) -> subprocess.CompletedProcess:
    cmd = [
        *(user or []),
        sys.executable,
        "-m",
        "edge.cli",
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
        "--models-dir",
        str(require_models()),
    ]
    env = {**os.environ, "HWR_EDGE_LOG_LEVEL": "warning"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def assert_one_line_and_status_2(out: subprocess.CompletedProcess, *words: str) -> None:
    lines = [
        ln for ln in out.stderr.splitlines() if ln.strip() and not ln.startswith(RUNTIME_NOISE)
    ]
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("hwr-edge: "), out.stderr[-2000:]
    for w in words:
        assert w in lines[0], lines[0]


def test_a_second_edge_on_the_same_data_dir_exits_2_with_one_line(server):
    t0 = time.monotonic()
    out = run_edge(Path(server.log_path).parent / "data")
    assert_one_line_and_status_2(out, "open in another process")
    assert time.monotonic() - t0 < 30  # the store waits 10 s for a lock a restart may still hold


def test_a_snapshot_of_a_newer_schema_exits_2_with_one_line(tmp_path):
    data = tmp_path / "data"
    CorrectionStore(store_path(data, "digit")).close()
    with h5py.File(store_path(data, "digit"), "r+") as f:
        f.attrs["schema_version"] = 99
    out = run_edge(data, timeout=30)
    assert_one_line_and_status_2(out, "schema 99")


def test_a_journal_it_cannot_write_exits_2_with_one_line():
    # As root every file is writable: the server then runs as nobody, the journal root's.
    user = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv")
        user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    data = Path(tempfile.mkdtemp(prefix="hwr-ro-"))
    try:
        os.chmod(data, 0o777)
        for mode in ("digit", "char"):
            CorrectionStore(store_path(data, mode)).close()
        for p in data.iterdir():
            os.chmod(p, 0o666)
        journal = store_path(data, "digit").with_name("custom_digits.h5.journal")
        os.chmod(journal, 0o444)
        out = run_edge(data, user, timeout=30)
        assert_one_line_and_status_2(out, "journal")
    finally:
        shutil.rmtree(data, ignore_errors=True)


# ---- another web site in a real browser ---------------------------------------------------

EVIL_PAGE = """<!doctype html><title>another site</title>
<iframe name="sink"></iframe>
<form id="f" method="post" target="sink" action="EDGE/correct">
  <input name="image" value="IMAGE"><input name="label" value="1"><input name="mode" value="digit">
</form>
<script>
window.results = {};
async function attack() {
  try {
    const r = await fetch("EDGE/api/correct", {method: "POST", mode: "no-cors",
      headers: {"Content-Type": "text/plain"},
      body: JSON.stringify({mode: "digit", strokes: STROKES, label: "1"})});
    window.results.fetch = r.type;
  } catch (e) { window.results.fetch = "error " + e; }
  document.getElementById("f").submit();
  window.results.form = "sent";
  await new Promise((resolve) => {
    const ws = new WebSocket("WSURL");
    ws.onopen = () => { ws.send(JSON.stringify({type: "correct", seq: 1, mode: "digit",
      strokes: STROKES, label: "1"})); window.results.ws = "open"; setTimeout(resolve, 500); };
    ws.onerror = () => { window.results.ws = "refused"; resolve(); };
  });
  window.results.done = true;
}
attack();
</script>"""


@pytest.mark.browser
def test_a_page_from_another_origin_stores_nothing(tmp_path):
    from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS

    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found (Debian's chromium; never downloaded)")
    sync_api = pytest.importorskip("playwright.sync_api")
    edge = start(tmp_path / "data")
    page_html = (
        EVIL_PAGE.replace("EDGE/", edge.url)
        .replace("WSURL", edge.ws_url)
        .replace("IMAGE", b64png())
        .replace("STROKES", json.dumps(SEVEN))
    )

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            data = page_html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{other.server_address[1]}/")
                page.wait_for_function("window.results && window.results.done", timeout=60_000)
                results = page.evaluate("window.results")
                page.wait_for_timeout(1000)  # the form's answer lands in the iframe
                # The same writes from the device's own page are stored: the check can fail.
                own = browser.new_page()
                own.goto(edge.url)
                status = own.evaluate(
                    """async (s) => (await fetch("api/correct", {method: "POST",
                    headers: {"Content-Type": "application/json"},
                    body: JSON.stringify({mode: "digit", strokes: s, label: "7"})})).status""",
                    SEVEN,
                )
            finally:
                browser.close()
        assert results["ws"] == "refused", results
        health = edge.health()
        counts = {m: c["count"] for m, c in health["corrections"].items()}
        assert status == 200 and counts == {"digit": 1, "char": 0}, (results, counts)
    finally:
        other.shutdown()
        other.server_close()
        edge.stop()


# ---- generated raw HTTP requests ----------------------------------------------------------

token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-ABCXYZ0123456789", min_size=1, max_size=12)
header_value = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
    st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
    st.sampled_from(
        [
            "application/json",
            "text/plain",
            "websocket",
            "Upgrade",
            "chunked",
            "13",
            "http://evil.example",
            "localhost",
            "evil.example",
            "100-continue",
            "gzip",
        ]
    ),
)
header = st.tuples(
    st.one_of(
        token,
        st.sampled_from(
            [
                "Content-Type",
                "Origin",
                "Host",
                "Upgrade",
                "Connection",
                "Sec-WebSocket-Version",
                "Sec-WebSocket-Key",
                "Transfer-Encoding",
                "Expect",
                "Cookie",
                "Range",
                "Accept-Encoding",
            ]
        ),
    ),
    header_value,
)
raw_request = st.fixed_dictionaries(
    {
        "method": st.one_of(
            st.sampled_from(
                ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE"]
            ),
            token,
        ),
        "path": st.one_of(
            st.sampled_from(
                [
                    "/",
                    "/api/predict",
                    "/api/correct",
                    "/predict",
                    "/correct",
                    "/healthz",
                    "/ws",
                    "/static/app.js",
                    "//healthz",
                    "/static/../index.html",
                    "*",
                    "http://localhost/healthz",
                    "/%00",
                    "/api/predict?x=1",
                ]
            ),
            st.text(alphabet="abcdefghijklmnopqrstuvwxyz/._-%~?=&", max_size=30).map(
                lambda p: "/" + p
            ),
        ),
        "version": st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.x"]),
        "host": st.sampled_from(["localhost", "127.0.0.1", None, "evil.example"]),
        "headers": st.lists(header, max_size=6),
        "body": st.one_of(
            st.binary(max_size=300),
            st.just(json.dumps({"mode": "digit", "strokes": SEVEN, "label": "7"}).encode()),
            st.just(json.dumps({"mode": "digit", "image": "data:"}).encode()),
        ),
        "framing": st.sampled_from(["length", "chunked", "none"]),
    }
)


def encode_request(r: dict) -> bytes:
    lines = [f"{r['method']} {r['path']} {r['version']}"]
    if r["host"]:
        lines.append(f"Host: {r['host']}")
    body = r["body"]
    for name, value in r["headers"]:
        if name.lower() not in ("content-length", "transfer-encoding"):
            lines.append(f"{name}: {value}")
    if r["framing"] == "length":
        lines.append(f"Content-Length: {len(body)}")
    elif r["framing"] == "chunked":
        lines.append("Transfer-Encoding: chunked")
        body = chunked(body, 50) if body else b"0\r\n\r\n"
    else:
        body = b""
    lines.append("Connection: close")
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(req=raw_request)
def test_generated_raw_requests_never_get_a_5xx_or_html(server, req):
    data = encode_request(req)
    status, headers, body = raw(port_of(server), data, timeout=10)
    if status == 0:
        return  # closed without an answer (e.g. an upgraded socket, or nothing parseable)
    assert status < 500, (data[:200], status, body[:200])
    if status == 101:
        return
    if status >= 300:
        assert headers.get("content-type") == "application/json", (data[:200], status, headers)
        if req["method"] != "HEAD" and body:
            assert_error_body(body)
    elif body:
        assert not body.lstrip().lower().startswith(b"<html"), (data[:200], body[:200])
