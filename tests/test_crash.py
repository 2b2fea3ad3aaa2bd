"""Power cuts: a process writing corrections is killed (SIGKILL) at random moments, again and
again; every correction it acknowledged must be there afterwards, and the files must open.

Two levels: the store itself, in a small writer process; and the real ``hwr-edge`` process,
fed corrections over HTTP by a client that records what was acknowledged.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import pytest

from hwrcore.journal import scan_journal
from hwrcore.store import CorrectionStore, read_store
from tests.browser_helpers import free_port
from tests.models import require_models

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
ROUNDS = 20  # kills of the store's writer process
EDGE_ROUNDS = 20  # kills of hwr-edge

# Far above what the rounds can add, so that eviction by the cap never removes what they check.
CAP = 1_000_000
# Adds corrections for ever, printing "add <id> <label>" once add() has returned, and now and then
# marks the oldest pending ones synced, printing "synced <id> ..." once mark_synced() has returned.
# A tiny compaction threshold makes kills land during compactions as well as during appends.
WRITER = f"""
import random, sys, time, uuid
import numpy as np
from hwrcore.store import Correction, CorrectionStore
store = CorrectionStore(sys.argv[1], compact_every=int(sys.argv[2]), cap={CAP})
rng = np.random.default_rng()
print("open", flush=True)
while True:
    cid, label = str(uuid.uuid4()), str(random.randrange(10))
    store.add(Correction(id=cid, label=label, image=rng.random((28, 28), dtype=np.float32),
                         strokes=[[[1, 2], [3, 4]]], predicted="1", confidence=0.5,
                         model_version="crash", created=time.time(),
                         embedding=rng.random(8, dtype=np.float32)))
    print("add", cid, label, flush=True)
    if random.random() < 0.1:
        ids = [c.id for c in store.pending(limit=3)]
        store.mark_synced(ids)
        print("synced", *ids, flush=True)
"""


def acknowledged(stdout: bytes, added: dict[str, str], synced: set[str]) -> None:
    """Fold the complete lines a killed writer printed into ``added`` and ``synced``."""
    for line in stdout.decode().splitlines(keepends=True):
        if not line.endswith("\n"):
            continue  # cut off by the kill: not acknowledged
        word, *rest = line.split()
        if word == "add":
            added[rest[0]] = rest[1]
        elif word == "synced":
            synced.update(rest)


def check_files(path: Path) -> None:
    """The snapshot (or, between a compaction's renames, its backup) opens; the journal parses."""
    snap = path if path.exists() else path.with_name(path.name + ".bak")
    with h5py.File(snap, "r") as f:
        assert len(f["id"]) == len(f["image"]) == len(f["label"])
    journal = path.with_name(path.name + ".journal")
    if journal.exists():
        assert scan_journal(journal.read_bytes()).skipped == 0  # at most a torn tail


def test_store_survives_sigkill_at_random_moments(tmp_path: Path) -> None:
    path = tmp_path / "custom_digits.h5"
    added: dict[str, str] = {}
    synced: set[str] = set()
    rnd = random.Random()
    for round_ in range(ROUNDS):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(rnd.choice([8, 20, 64]))],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        # Most kills land while corrections stream in; every fifth may land during start-up
        # and recovery (the first line comes only after the store has opened).
        if round_ % 5 == 0:
            time.sleep(rnd.uniform(0.0, 0.8))
        else:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert first == b"open\n", first
            time.sleep(rnd.uniform(0.0, 0.4))
        proc.kill()
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        acknowledged(out, added, synced)
        if added:
            check_files(path)
            got = {c.id: c for c in read_store(path)}
            lost = [i for i in added if i not in got]
            assert not lost, f"round {round_}: {len(lost)} acknowledged corrections lost"
            assert all(got[i].label == label for i, label in added.items())
            assert all(got[i].synced for i in synced)
    assert len(added) > 100, "too few corrections were acknowledged to prove anything"
    with CorrectionStore(path, cap=CAP) as store:
        assert {c.id for c in store.all()} >= set(added)
        assert all(store.get(i).label == label for i, label in added.items())  # type: ignore[union-attr]
        assert all(store.get(i).synced for i in synced)  # type: ignore[union-attr]
    with h5py.File(path, "r") as f:
        assert set(f["id"].asstr()[:]) >= set(added)
    assert scan_journal(path.with_name(path.name + ".journal").read_bytes()).records == []


# -- the real device process ----------------------------------------------------------------


def edge_command() -> list[str]:
    """``hwr-edge`` beside this interpreter, or skip naming why it cannot run."""
    exe = Path(sys.executable).with_name("hwr-edge")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "edge.cli"]
    try:
        proc = subprocess.run(
            [*cmd, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"hwr-edge cannot run: {e}")
    if proc.returncode != 0 or "--data-dir" not in proc.stdout:
        pytest.skip(f"hwr-edge --help failed (rc {proc.returncode}): {proc.stderr.strip()[-300:]}")
    return cmd


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """A copy of the shipped models (models_export/)."""
    dst = tmp_path / "models"
    shutil.copytree(require_models(), dst)
    return dst


def digit_strokes(rnd: random.Random) -> list[list[list[float]]]:
    """A random scribble of one or two strokes, in canvas pixels."""
    strokes = []
    for _ in range(rnd.randint(1, 2)):
        x, y = rnd.uniform(60, 220), rnd.uniform(60, 220)
        pts = []
        for _ in range(rnd.randint(8, 30)):
            x = min(max(x + rnd.uniform(-15, 15), 0), 280)
            y = min(max(y + rnd.uniform(-15, 15), 0), 280)
            pts.append([round(x, 1), round(y, 1)])
        strokes.append(pts)
    return strokes


class Client(threading.Thread):
    """Streams corrections to the edge, half by prediction id and half with the drawing."""

    def __init__(self, base: str, seed: int):
        super().__init__(daemon=True)
        self.base, self.rnd = base, random.Random(seed)
        self.stop = threading.Event()
        self.acked: dict[str, str] = {}
        self.errors: list[str] = []

    def post(self, route: str, body: dict) -> dict | None:
        import requests

        try:
            r = requests.post(self.base + route, json=body, timeout=10)
        except requests.RequestException:
            return None  # the process was killed mid-request: nothing was acknowledged
        if r.status_code != 200:
            self.errors.append(f"{route} {r.status_code} {r.text[:200]}")
            return None
        return r.json()

    def run(self) -> None:
        while not self.stop.is_set():
            label = str(self.rnd.randrange(10))
            strokes = digit_strokes(self.rnd)
            if self.rnd.random() < 0.5:
                pred = self.post("/api/predict", {"mode": "digit", "strokes": strokes})
                if pred is None:
                    continue
                reply = self.post("/api/correct", {"id": pred["id"], "label": label})
            else:
                reply = self.post(
                    "/api/correct", {"mode": "digit", "strokes": strokes, "label": label}
                )
            if reply is not None and reply.get("stored") is True:
                self.acked[reply["correction_id"]] = label


def wait_healthy(base: str, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"hwr-edge exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if requests.get(base + "/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    pytest.fail(f"hwr-edge did not answer /healthz in {timeout} s: {log.read_text()[-2000:]}")


def test_edge_keeps_every_acknowledged_correction_through_sigkills(
    tmp_path: Path, models: Path
) -> None:
    cmd = edge_command()
    data = tmp_path / "data"
    log = tmp_path / "edge.log"
    rnd = random.Random()
    acked: dict[str, str] = {}
    errors: list[str] = []
    for round_ in range(EDGE_ROUNDS):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [*cmd, "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data)]
                + ["--models-dir", str(models)],
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the kill takes the whole process group, workers too
            )
        try:
            wait_healthy(base, proc, log)
            client = Client(base, seed=round_)
            client.start()
            time.sleep(rnd.uniform(0.1, 0.8))
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        client.stop.set()
        client.join(timeout=15)
        assert not client.is_alive()
        acked.update(client.acked)
        errors += client.errors
    assert not errors, errors[:5]
    assert len(acked) >= 40, f"only {len(acked)} corrections were acknowledged"
    path = data / "custom_digits.h5"
    check_files(path)
    with CorrectionStore(path) as store:
        got = {c.id: c.label for c in store.all()}
    lost = [i for i in acked if i not in got]
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged corrections were lost"
    assert all(got[i] == label for i, label in acked.items())
    with h5py.File(path, "r") as f:
        assert set(f["id"].asstr()[:]) >= set(acked)
