"""A real ``hwr-edge`` process: HTTP, a WebSocket session, abuse of one socket, kill and restart."""

from __future__ import annotations

import ctypes
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import requests
import websocket

from hwrcore.store import read_store
from tests.models import require_models

ROOT = Path(__file__).resolve().parent.parent
HWR_EDGE = Path(sys.executable).parent / "hwr-edge"
SEVEN = [[[60.0, 50.0], [220.0, 50.0], [130.0, 240.0]]]
LETTER_T = [[[50.0, 50.0], [230.0, 50.0]], [[140.0, 50.0], [140.0, 250.0]]]
WS_LIMIT = 20_000  # the fixture server answers messages up to this size
pytestmark = pytest.mark.slow


def edge_models() -> Path:
    """The shipped models (skips the test when models_export/ has none)."""
    return require_models()


def _die_with_the_test() -> None:
    """In the server's process: get SIGTERM if the test process dies, so no server outlives it."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by a process and its children that are alive."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


class Edge:
    """A running hwr-edge subprocess, its URL and how long it took to answer first."""

    def __init__(self, data_dir: Path, *args: str, module: bool = False, env: dict | None = None):
        cmd = [sys.executable, "-m", "edge.cli"] if module else [str(HWR_EDGE)]
        cmd += [
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
            "--models-dir",
            str(edge_models()),
            *args,
        ]
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"{data_dir.name}-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w")  # closed in stop()
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            preexec_fn=_die_with_the_test,
        )
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline() if ready else ""
        match = re.search(r"(http://\S+/)", line)
        if not match:
            self.stop()
            raise AssertionError(f"no URL printed: {line!r}\n{self.log_path.read_text()}")
        self.url = match.group(1)
        self.ws_url = "ws" + self.url[4:] + "ws"
        deadline = t0 + 90
        while True:
            try:
                if requests.get(self.url + "healthz", timeout=5).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet, or the worker is still loading
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise AssertionError(f"hwr-edge did not answer:\n{self.log_path.read_text()}")
            time.sleep(0.02)
        self.first_answer_s = time.monotonic() - t0
        self.first_answer_cpu_s = cpu_seconds(self.proc.pid)

    def health(self) -> dict:
        return requests.get(self.url + "healthz", timeout=5).json()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # the worker dies with its master
                self.proc.wait(10)
        self.proc.stdout.close()
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    if not (edge_models() / "digits.json").is_file():
        pytest.skip(f"no models in {edge_models()}")
    server = Edge(
        tmp_path_factory.mktemp("edge") / "data",
        env={"HWR_EDGE_WS_MAX_MESSAGE_BYTES": str(WS_LIMIT), "HWR_EDGE_WS_BURST": "40"},
    )
    yield server
    server.stop()


def connect(edge: Edge) -> websocket.WebSocket:
    return websocket.create_connection(edge.ws_url, timeout=10)


def close(ws: websocket.WebSocket) -> None:
    """Close a client socket, also when the server already closed it."""
    try:
        ws.close(timeout=2)
    except (websocket.WebSocketException, OSError):
        pass
    ws.shutdown()


def ask(ws: websocket.WebSocket, msg: dict | str) -> dict:
    ws.send(msg if isinstance(msg, str) else json.dumps(msg))
    return json.loads(ws.recv())


def test_first_answer_within_two_seconds(edge):
    # Start-up work, in CPU seconds of the master and its worker: it does not grow when other
    # work on the machine (training) takes the CPU, as the wall-clock time does.
    assert edge.first_answer_cpu_s < 2.0, f"first answer after {edge.first_answer_cpu_s:.2f} CPU s"
    if os.getloadavg()[0] < (os.cpu_count() or 1):
        assert edge.first_answer_s < 2.0, f"first answer after {edge.first_answer_s:.2f} s"


def test_http_predict_and_correct(edge):
    pred = requests.post(
        edge.url + "api/predict", json={"mode": "digit", "strokes": SEVEN}, timeout=5
    )
    assert pred.status_code == 200
    body = pred.json()
    model = edge.health()["models"]["digit"]
    assert len(body["top"]) == 3 and body["model"] == {k: model[k] for k in ("name", "version")}
    before = edge.health()["pending"]
    corr = requests.post(edge.url + "api/correct", json={"id": body["id"], "label": "7"}, timeout=5)
    assert corr.status_code == 200 and corr.json()["stored"] is True
    assert edge.health()["pending"] == before + 1
    missing = requests.get(edge.url + "nope", timeout=5)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    # The stored drawing is the device's user's alone, like every file the edge made.
    made = [edge.data_dir, *edge.data_dir.rglob("*")]
    assert any(p.suffix in (".h5", ".hdf5") for p in made), made
    loose = [f"{p}: {oct(p.stat().st_mode)}" for p in made if p.stat().st_mode & 0o077]
    assert not loose


def test_oversized_http_body_gets_413(edge):
    resp = requests.post(
        edge.url + "api/predict",
        data=b'{"pad": "' + b"x" * (1 << 20) + b'"}',
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "too_large"
    assert requests.get(edge.url + "healthz", timeout=5).status_code == 200


def test_websocket_session_echoes_seq(edge):
    ws = connect(edge)
    try:
        for seq in (1, 2, 99):
            reply = ask(ws, {"type": "predict", "seq": seq, "mode": "digit", "strokes": SEVEN})
            assert reply["type"] == "prediction" and reply["seq"] == seq
            assert {"id", "label", "confidence", "top", "source", "model", "ms"} <= set(reply)
        char = ask(ws, {"type": "predict", "seq": 3, "mode": "char", "strokes": LETTER_T})
        assert char["type"] == "prediction"
        assert char["model"]["version"] == edge.health()["models"]["char"]["version"]
        corr = ask(ws, {"type": "correct", "seq": 4, "id": char["id"], "label": "T"})
        assert corr == {**corr, "type": "corrected", "seq": 4, "stored": True}
        health = ask(ws, {"type": "health", "seq": 5})
        assert health["type"] == "health" and health["corrections"]["char"]["count"] >= 1
    finally:
        close(ws)


def test_bad_frames_get_errors_and_the_socket_keeps_working(edge):
    ws = connect(edge)
    try:
        ws.send_binary(b"\x00\x01binary")
        reply = json.loads(ws.recv())
        assert reply["type"] == "error" and reply["error"]["code"] == "binary_frame"
        cases = [
            ("{not json", "invalid_json"),
            ("[1, 2]", "invalid_message"),
            (json.dumps({"type": "draw", "seq": 1}), "unknown_type"),
            (
                json.dumps({"type": "predict", "seq": 2, "mode": "x", "strokes": SEVEN}),
                "invalid_mode",
            ),
            (
                json.dumps({"type": "predict", "seq": 3, "mode": "digit", "strokes": []}),
                "empty_drawing",
            ),
            (
                json.dumps({"type": "correct", "seq": 4, "id": "0" * 32, "label": "1"}),
                "unknown_prediction",
            ),
            (
                json.dumps({"type": "predict", "seq": 5, "mode": "digit", "pad": "x" * WS_LIMIT}),
                "too_large",
            ),
        ]
        for text, code in cases:
            reply = ask(ws, text)
            assert reply["type"] == "error" and reply["error"]["code"] == code, (text[:40], reply)
        ok = ask(ws, {"type": "predict", "seq": 6, "mode": "digit", "strokes": SEVEN})
        assert ok["type"] == "prediction" and ok["seq"] == 6
    finally:
        close(ws)


def test_a_huge_message_closes_only_its_own_socket(edge):
    other = connect(edge)
    ws = connect(edge)
    try:
        ws.send("x" * (WS_LIMIT * 5))
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
            ws.recv()
            ws.recv()
        reply = ask(other, {"type": "predict", "seq": 1, "mode": "digit", "strokes": SEVEN})
        assert reply["type"] == "prediction"
    finally:
        close(other)
        close(ws)


def test_a_flood_on_one_socket_is_limited_and_others_are_served(edge):
    flood = connect(edge)
    other = connect(edge)
    try:
        n = 200
        msg = {"type": "predict", "mode": "digit", "strokes": SEVEN}
        for seq in range(n):
            flood.send(json.dumps({**msg, "seq": seq}))
        mid = ask(other, {**msg, "seq": 7})
        assert mid["type"] == "prediction" and mid["seq"] == 7
        replies = [json.loads(flood.recv()) for _ in range(n)]
        assert [r["seq"] for r in replies] == list(range(n))
        limited = [r for r in replies if r["type"] == "error"]
        assert limited and all(r["error"]["code"] == "rate_limited" for r in limited)
        assert sum(r["type"] == "prediction" for r in replies) >= 40
        time.sleep(1.0)
        again = ask(flood, {**msg, "seq": 1000})
        assert again["type"] == "prediction" and again["seq"] == 1000
    finally:
        close(flood)
        close(other)


def test_kill_and_restart_keeps_corrections(tmp_path):
    data = tmp_path / "data"
    first = Edge(data)
    ids = []
    try:
        for label in "0123":
            r = requests.post(
                first.url + "api/correct",
                json={"mode": "digit", "strokes": SEVEN, "label": label},
                timeout=5,
            )
            ids.append(r.json()["correction_id"])
        ws = connect(first)
        pred = ask(ws, {"type": "predict", "seq": 1, "mode": "char", "strokes": LETTER_T})
        ids.append(
            ask(ws, {"type": "correct", "seq": 2, "id": pred["id"], "label": "t"})["correction_id"]
        )
        close(ws)
    finally:
        first.stop(signal.SIGKILL)
    second = Edge(data, module=True)  # python -m edge.cli serves as well
    try:
        health = second.health()
        assert health["corrections"]["digit"]["count"] == 4
        assert health["corrections"]["char"]["count"] == 1 and health["pending"] == 5
    finally:
        assert second.stop() == 0
    stored = {c.id: c.label for c in read_store(data / "custom_digits.h5")}
    stored.update({c.id: c.label for c in read_store(data / "custom_characters.h5")})
    assert {i: stored.get(i) for i in ids} == dict(zip(ids, "0123t", strict=True))


def test_sigterm_closes_open_sockets_and_writes_the_snapshot(tmp_path):
    data = tmp_path / "data"
    server = Edge(data)
    ws = connect(server)
    try:
        cid = ask(
            ws, {"type": "correct", "seq": 1, "mode": "digit", "strokes": SEVEN, "label": "7"}
        )
        assert cid["type"] == "corrected"
        assert server.stop(signal.SIGTERM) == 0
    finally:
        close(ws)
    with h5py.File(data / "custom_digits.h5", "r") as f:
        assert f["id"].asstr()[:].tolist() == [cid["correction_id"]]
    assert (data / "custom_digits.h5.journal").stat().st_size == 0


def _run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(HWR_EDGE), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_missing_models_exit_2_with_one_line(tmp_path):
    out = _run_cli("--port", "0", "--data-dir", str(tmp_path / "d"), "--models-dir", str(tmp_path))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "digits.json" in lines[0] and lines[0].startswith("hwr-edge:")


def test_a_failure_in_the_worker_exits_2_without_saying_serving(tmp_path):
    """The app is made in the worker: until it answers, nothing says the device is serving."""
    env = {
        "HWR_EDGE_SYNC_URL": "http://127.0.0.1:9",
        "HWR_EDGE_SYNC_TOKEN": "a-device-token",
        "HWR_EDGE_SYNC_PUBLIC_KEY": "not-a-key",
    }
    args = ["--port", "0", "--data-dir", str(tmp_path / "d"), "--models-dir", str(edge_models())]
    out = _run_cli(*args, env=env)
    assert out.returncode == 2 and out.stdout == "", out.stdout
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("hwr-edge: ") and "public key is not base64" in last, last


def test_port_in_use_exits_2(edge, tmp_path):
    port = edge.url.rsplit(":", 1)[1].strip("/")
    args = ["--port", port, "--data-dir", str(tmp_path), "--models-dir", str(edge_models())]
    out = _run_cli(*args)
    assert out.returncode == 2
    assert "cannot listen" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_unknown_setting_exits_2(tmp_path):
    out = _run_cli("--port", "0", "--data-dir", str(tmp_path), env={"HWR_EDGE_PROT": "1"})
    assert out.returncode == 2 and "unknown setting 'prot'" in out.stderr
