"""The sync guarantees, proven with real processes: devices, a server, power cuts and a bad network.

Every test ends as CouchDB's replicator tests do: compare both sides record by record. The
server's UUIDs must equal the union of the devices' UUIDs, with nothing twice and nothing
missing, and every device's pending count must reach 0.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import requests
import websocket

from edge.config import EdgeConfig
from hwrcore.manifest import load_manifest
from sync_server.db import open_database
from sync_server.merge import Policy, training_set
from tests.fault_proxy import FaultProxy, Faults
from tests.models import require_models
from tests.sync_harness import (
    MODELS,
    STROKES,
    SyncedEdge,
    SyncServer,
    free_port,
    last_line,
    new_model_version,
    run_cli,
    server_uuids,
    wait_for,
)

pytestmark = pytest.mark.slow
SERVER_KILLS = 20


class School:
    """A server's data directory with devices added and its public key, before it serves."""

    def __init__(self, root: Path, devices: int):
        require_models()
        self.root = root
        self.data = root / "server"
        run_cli("init", data_dir=self.data)
        self.tokens = [
            last_line(run_cli("add-device", f"room-{i}", data_dir=self.data))
            for i in range(devices)
        ]
        self.public_key = last_line(run_cli("public-key", data_dir=self.data))
        self.edges: list[SyncedEdge] = []
        self.server: SyncServer | None = None

    def serve(self, port: int = 0) -> SyncServer:
        self.server = SyncServer(self.data, port)
        return self.server

    def start_edges(self, url: str, env: dict | None = None) -> list[SyncedEdge]:
        self.edges = [
            SyncedEdge(self.root / f"edge-{i}", url, token, self.public_key, env=env)
            for i, token in enumerate(self.tokens)
        ]
        return self.edges

    def stop(self) -> None:
        for e in self.edges:
            e.stop()
        if self.server is not None:
            self.server.stop()

    def assert_exactly_once(self, timeout: float = 60) -> set[str]:
        """Wait until no device has anything pending, then compare both sides record by record."""
        wait_for(
            lambda: all(e.health()["pending"] == 0 for e in self.edges),
            timeout,
            "every device to have sent everything",
        )
        union: set[str] = set()
        for e in self.edges:
            union |= e.uuids()
        on_server = server_uuids(self.data)
        assert len(on_server) == len(set(on_server)), "a correction is stored twice"
        assert set(on_server) == union, (
            f"missing on the server: {len(union - set(on_server))}, "
            f"not made by any device: {len(set(on_server) - union)}"
        )
        return union


@pytest.fixture
def school(tmp_path):
    s = School(tmp_path, devices=3)
    yield s
    s.stop()


class Writers:
    """One thread per device making corrections until stopped; every acknowledged id is kept."""

    def __init__(self, edges: list[SyncedEdge], pause: float = 0.01):
        self.ids: list[set[str]] = [set() for _ in edges]
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(e, i, pause), daemon=True)
            for i, e in enumerate(edges)
        ]
        for t in self._threads:
            t.start()

    def _run(self, edge: SyncedEdge, i: int, pause: float) -> None:
        n = 0
        while not self._stop.is_set():
            mode = "digit" if n % 3 else "char"
            try:
                self.ids[i].add(edge.correct(mode))
            except (AssertionError, requests.RequestException) as exc:
                self.errors.append(f"device {i}: {exc}")
            n += 1
            time.sleep(pause)

    def stop(self) -> int:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        return sum(len(s) for s in self.ids)


def test_corrections_made_while_the_server_is_down_all_arrive_exactly_once(school):
    port = free_port()
    edges = school.start_edges(f"http://127.0.0.1:{port}")
    for e in edges:
        for k in range(12):
            e.correct("digit" if k % 2 else "char")
    wait_for(
        lambda: all(e.health()["sync"]["state"] == "offline" for e in edges), 20, "offline state"
    )
    assert [e.health()["pending"] for e in edges] == [12, 12, 12]
    school.serve(port)
    union = school.assert_exactly_once()
    assert len(union) == 36
    assert school.server.summary()["corrections"] == {"digit": 18, "char": 18}
    assert all(e.health()["sync"]["state"] == "online" for e in edges)


def test_the_server_killed_mid_upload_twenty_times_loses_and_repeats_nothing(school):
    port = free_port()
    server = school.serve(port)
    edges = school.start_edges(server.url)
    writers = Writers(edges)
    rng = random.Random(8)
    for _ in range(SERVER_KILLS):
        time.sleep(rng.uniform(0.05, 0.5))
        school.server.stop(signal.SIGKILL)
        school.serve(port)
    made = writers.stop()
    assert not writers.errors, writers.errors[:3]
    union = school.assert_exactly_once(timeout=90)
    assert len(union) == made and made > 100


def test_a_network_that_cuts_requests_and_answers_loses_and_repeats_nothing(school):
    server = school.serve()
    host, port = server.url.rsplit("//", 1)[1].split(":")
    with FaultProxy((host, int(port)), Faults(cut_request=0.3, cut_response=0.3), seed=3) as proxy:
        edges = school.start_edges(proxy.url)
        writers = Writers(edges)
        time.sleep(8)
        made = writers.stop()
        assert not writers.errors, writers.errors[:3]
        proxy.faults = Faults()  # the network heals: what is pending must now drain
        union = school.assert_exactly_once(timeout=90)
        assert proxy.counts["cut_request"] > 3 and proxy.counts["cut_response"] > 3, proxy.counts
    assert len(union) == made


def test_a_device_killed_while_it_syncs_loses_and_repeats_nothing(school):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    edge = school.start_edges(url)[0]
    for e in school.edges[1:]:
        e.stop()
    school.edges = [edge]
    made = {edge.correct("digit") for _ in range(300)}
    school.serve(port)
    wait_for(lambda: len(server_uuids(school.data)) > 0, 30, "the first batch to arrive")
    edge.stop(signal.SIGKILL)
    arrived = len(server_uuids(school.data))
    school.edges = [SyncedEdge(edge.data_dir, url, school.tokens[0], school.public_key)]
    union = school.assert_exactly_once()
    assert union == made and 0 < arrived


# -- model delivery --------------------------------------------------------------------------
# Two thirds of the edge's per-socket message rate, whatever the time a prediction takes.
PREDICT_PAUSE = 1.5 / EdgeConfig().ws_messages_per_second


class Predictors:
    """One WebSocket per device predicting a digit over and over, under the socket's rate limit;
    each answer's model version."""

    def __init__(self, edges: list[SyncedEdge]):
        self.answers: list[list[tuple[float, str]]] = [[] for _ in edges]
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(e, i), daemon=True)
            for i, e in enumerate(edges)
        ]
        for t in self._threads:
            t.start()

    def _run(self, edge: SyncedEdge, i: int) -> None:
        ws = websocket.create_connection("ws" + edge.url[4:] + "/ws", timeout=10)
        seq = 0
        try:
            while not self._stop.is_set():
                seq += 1
                msg = {"type": "predict", "seq": seq, "mode": "digit", "strokes": STROKES["digit"]}
                ws.send(json.dumps(msg))
                reply = json.loads(ws.recv())
                if reply.get("type") != "prediction" or reply.get("seq") != seq:
                    self.errors.append(json.dumps(reply)[:200])
                    continue
                self.answers[i].append((time.monotonic(), reply["model"]["version"]))
                time.sleep(PREDICT_PAUSE)
        except (websocket.WebSocketException, OSError) as exc:
            self.errors.append(f"device {i}: {exc!r}")
        finally:
            ws.close()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def _serving(edges: list[SyncedEdge]) -> list[str]:
    return [e.health()["models"]["digit"]["version"] for e in edges]


def test_a_published_model_reaches_every_device_within_five_seconds_and_rolls_back(
    school, tmp_path
):
    server = school.serve()
    edges = school.start_edges(server.url)
    old = load_manifest(MODELS / "digits.json").version
    assert _serving(edges) == [old] * 3
    predictors = Predictors(edges)
    time.sleep(1.0)
    run_cli("publish", str(new_model_version(tmp_path, "9.0.0")), data_dir=school.data)
    t0 = time.monotonic()  # the release is committed when the command returns
    wait_for(lambda: _serving(edges) == ["9.0.0"] * 3, 15, "every device to serve 9.0.0")
    took = time.monotonic() - t0
    time.sleep(0.5)
    run_cli("rollback", "digits", old, data_dir=school.data)
    wait_for(lambda: _serving(edges) == [old] * 3, 15, f"every device to serve {old} again")
    time.sleep(0.5)
    predictors.stop()
    assert not predictors.errors, predictors.errors[:3]
    for answers in predictors.answers:
        versions = [v for _, v in answers]
        assert set(versions) == {old, "9.0.0"}
        # Each device swaps once each way: old ... new ... old, never back and forth.
        changes = [b for a, b in zip(versions, versions[1:], strict=False) if a != b]
        assert changes == ["9.0.0", old], changes
    assert took <= 5.0, f"publish to every device took {took:.2f} s"


# -- confirmations and withdrawals ----------------------------------------------------------
def _server_rows(data: Path) -> dict[str, tuple]:
    """uuid -> (kind, withdrawn, withdrawn_by) as the server's database holds them."""
    db = sqlite3.connect(f"file:{data / 'sync.db'}?mode=ro", uri=True, timeout=30)
    try:
        q = "SELECT uuid, kind, withdrawn, withdrawn_by FROM corrections"
        return {r[0]: r[1:] for r in db.execute(q)}
    finally:
        db.close()


def test_a_confirmation_and_an_undo_reach_the_server_and_the_undo_leaves_training(school):
    server = school.serve()
    edge = school.start_edges(server.url)[0]
    kept = edge.correct("digit", "7")
    undone = edge.correct("digit", "7")  # one the school would train on, were it not undone
    pred = requests.post(
        edge.url + "/api/predict", json={"mode": "digit", "strokes": STROKES["digit"]}, timeout=10
    ).json()
    confirmed = requests.post(
        edge.url + "/api/confirm", json={"id": pred["id"], "label": pred["label"]}, timeout=10
    ).json()["correction_id"]
    wait_for(lambda: edge.health()["pending"] == 0, 30, "the corrections to sync")
    rows = _server_rows(school.data)
    assert rows[confirmed][0] == "confirmation" and rows[kept][0] == "correction"
    assert rows[undone][1] is None

    r = requests.post(
        edge.url + "/api/withdraw", json={"correction_id": undone, "by": "teacher"}, timeout=10
    )
    assert r.status_code == 200 and r.json()["withdrawn"] is True
    wait_for(
        lambda: _server_rows(school.data)[undone][2] == "teacher", 30, "the withdrawal to sync"
    )
    wait_for(
        lambda: edge.health()["corrections"]["digit"].get("pending_withdrawals", 0) == 0,
        30,
        "the device to record the server's answer",
    )
    rows = _server_rows(school.data)
    assert rows[undone][1] > 0 and rows[kept][1] is None and len(rows) == 3  # nothing deleted
    engine = open_database(f"sqlite:///{school.data / 'sync.db'}")
    try:
        wait_for(lambda: kept in training_set(engine, "digit", Policy()).uuids, 60, "scoring")
        assert undone not in training_set(engine, "digit", Policy()).uuids
    finally:
        engine.dispose()
