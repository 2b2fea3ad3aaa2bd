"""A school for the learning-loop tests: a real server with its worker, devices, the admin API.

Retraining settings are kept small (one epoch of a few steps, a small replay sample, a sample
of the base test split) so each job takes about a minute on a 2-core machine.
"""

from __future__ import annotations

import base64
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.sync_harness import ADMIN_TOKEN, SyncServer, last_line, run_cli, wait_for

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
FAST = {
    "HWR_SYNC_BASE_DATA_DIR": str(SHARED),
    "HWR_SYNC_RETRAIN_EPOCHS": "1",
    "HWR_SYNC_RETRAIN_MAX_STEPS": "15",
    "HWR_SYNC_RETRAIN_BATCH": "64",
    "HWR_SYNC_REPLAY_PER_CLASS": "20",
    "HWR_SYNC_EVAL_LIMIT": "1000",
    "HWR_SYNC_RETRAIN_AFTER": "0",
    "HWR_SYNC_SCORE_DELAY": "0.2",
    "HWR_SYNC_RETRAIN_THREADS": "2",
}


def require_data() -> Path:
    if not (SHARED / "mnist").is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


def floats_b64(image: np.ndarray) -> str:
    return base64.b64encode(np.asarray(image, dtype="<f4").reshape(-1).tobytes()).decode("ascii")


def correction(mode: str, label: str, image: np.ndarray) -> dict:
    now = time.time()
    return {
        "id": str(uuid.uuid4()),
        "mode": mode,
        "label": label,
        "image": floats_b64(image),
        "strokes": None,
        "predicted": None,
        "confidence": None,
        "model": None,
        "created": now,
        "updated": now,
    }


class School:
    """A server's data directory with devices added; ``serve`` starts server and worker."""

    def __init__(self, root: Path, devices: int, env: dict | None = None, groups=None):
        require_data()
        self.root = root
        self.data = root / "server"
        self.env = {**FAST, **(env or {})}
        self.tokens = []
        run_cli("init", data_dir=self.data)
        for i in range(devices):
            extra = ["--group", groups[i]] if groups and groups[i] else []
            out = run_cli("add-device", f"room-{i}", *extra, data_dir=self.data)
            self.tokens.append(last_line(out))
        self.public_key = last_line(run_cli("public-key", data_dir=self.data))
        self.server: SyncServer | None = None

    def serve(self, port: int = 0, **env: str) -> SyncServer:
        self.server = SyncServer(self.data, port, env={**self.env, **env})
        return self.server

    def stop(self, sig=None) -> None:
        if self.server is not None:
            self.server.stop(*([sig] if sig else []))

    def admin(self, method: str, path: str, **kw) -> requests.Response:
        return requests.request(
            method,
            self.server.url + "/api/v1/admin/" + path,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=30,
            **kw,
        )

    def upload(self, device: int, items: list[dict]) -> None:
        for k in range(0, len(items), 100):
            r = requests.post(
                self.server.url + "/api/v1/corrections",
                json={"corrections": items[k : k + 100]},
                headers={"Authorization": f"Bearer {self.tokens[device]}"},
                timeout=30,
            )
            assert r.status_code == 200, r.text
            assert {x["status"] for x in r.json()["results"]} == {"stored"}, r.json()

    def scored(self, n: int, timeout: float = 120) -> None:
        """Wait until the worker has assessed ``n`` corrections."""

        def done():
            stats = self.admin("GET", "devices/agreement").json()["devices"]
            return sum(d["scored"] for d in stats) >= n

        wait_for(done, timeout, f"the worker to score {n} corrections", interval=0.5)

    def job(self, job_id: int) -> dict:
        return self.admin("GET", f"jobs/{job_id}").json()

    def wait_job(self, job_id: int, pred, timeout: float, what: str) -> dict:
        return wait_for(
            lambda: (lambda j: j if pred(j) else None)(self.job(job_id)), timeout, what, 0.3
        )

    def served(self, device: int) -> dict:
        r = requests.get(
            self.server.url + "/api/v1/models",
            headers={"Authorization": f"Bearer {self.tokens[device]}"},
            timeout=30,
        )
        return {m: v["release"]["release"] for m, v in r.json()["models"].items()}


__all__ = ["FAST", "School", "correction", "floats_b64", "require_data"]
