"""Retraining with real processes: a worker killed mid-job, a server killed mid-publish, the gate.

Each test runs ``hwr-sync-server serve`` (which starts and supervises its ``worker``) on a
fresh data directory; corrections arrive over the device API with device tokens; jobs are
asked for with the CLI or the admin API and followed through the admin API.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3

import numpy as np
import pytest
import requests

from tests import versions
from tests.learning_harness import School, correction, require_data
from tests.sync_harness import free_port, run_cli, wait_for

pytestmark = pytest.mark.slow


def mnist(n: int, seed: int, digit: int | None = None):
    from trainer.data import load_mnist

    x, y = load_mnist(require_data(), "train")
    idx = np.flatnonzero(y == digit) if digit is not None else np.arange(len(y))
    pick = np.random.default_rng(seed).choice(idx, n, replace=False)
    return x[pick].astype(np.float32) / 255.0, y[pick]


def model_rows(data_dir) -> list[tuple[str, str]]:
    db = sqlite3.connect(f"file:{data_dir / 'sync.db'}?mode=ro", uri=True, timeout=30)
    try:
        return [tuple(r) for r in db.execute("SELECT name, version FROM models ORDER BY id")]
    finally:
        db.close()


def test_a_killed_worker_and_a_server_killed_mid_publish_leave_nothing_half_done(tmp_path):
    # Drawings the model cannot read (white on black inverted), corrected by two devices; the
    # gate is loosened here: this test is about crashes, test_the_gate_... about the gate.
    env = {
        "HWR_SYNC_QUARANTINE_CONFIDENCE": "1.0",
        "HWR_SYNC_GATE_MAX_ACCURACY_DROP": "1.0",
        "HWR_SYNC_GATE_MAX_RECALL_DROP": "1.0",
        "HWR_SYNC_RETRAIN_LR": "0.002",
        "HWR_SYNC_RETRAIN_MAX_STEPS": "25",
    }
    school = School(tmp_path, devices=2, env=env)
    port = free_port()
    try:
        # 280 images make 4 steps an epoch, and the stage reads "training" from the end of the
        # first epoch: many epochs keep it there long enough to be seen (the worker dies then)
        school.serve(port, HWR_SYNC_RETRAIN_EPOCHS="60")
        shipped = model_rows(school.data)  # the shipped versions, nothing else
        x, y = mnist(160, seed=1)
        for d in range(2):
            school.upload(
                d,
                [
                    correction("digit", str(v), 1.0 - im)
                    for im, v in zip(x[d::2], y[d::2], strict=True)
                ],
            )
        school.scored(160)
        # 1. the worker is SIGKILLed while it trains: the job fails, nothing is published
        out = run_cli("retrain", "digits", data_dir=school.data, env=school.env)
        job_id = int(out.split("job ")[1].split(":")[0])
        job = school.wait_job(job_id, lambda j: j["stage"] == "training", 240, "training")
        worker_pid = int(job["worker"].rsplit(":", 1)[1])
        os.kill(worker_pid, signal.SIGKILL)
        job = school.wait_job(job_id, lambda j: j["status"] == "failed", 60, "the job to fail")
        assert "worker stopped during training" in job["reason"]
        assert model_rows(school.data) == shipped
        assert school.served(0)["digit"]["version"] == versions.digits()
        # 2. run again; the whole server (and its worker) is SIGKILLed inside the publish
        school.stop()
        school.serve(port, HWR_SYNC_PUBLISH_PAUSE="30")
        job2 = school.admin("POST", "retrain", json={"name": "digits", "by": "ms-head"}).json()
        assert job2["id"] != job_id and not job2["joined"]
        school.wait_job(job2["id"], lambda j: j["stage"] == "publishing", 400, "the publish")
        wait_for(
            lambda: (
                school.data / "models" / "digits" / f"{versions.digits()}-r{job2['id']}.tflite"
            ).exists(),
            30,
            "the new file in place before the commit",
        )
        school.stop(signal.SIGKILL)
        assert model_rows(school.data) == shipped
        school.serve(port)
        assert school.served(1)["digit"]["version"] == versions.digits()
        r = requests.get(
            f"{school.server.url}/api/v1/models/digits/{versions.digits()}-r{job2['id']}",
            headers={"Authorization": f"Bearer {school.tokens[0]}"},
            timeout=10,
        )
        assert r.status_code == 404  # a file without its committed release is never served
        failed = school.wait_job(job2["id"], lambda j: j["status"] == "failed", 60, "failed")
        assert "publishing" in failed["reason"]
        # 3. and the job can be run again, to the end
        job3 = school.admin("POST", "retrain", json={"name": "digits", "by": "ms-head"}).json()
        done = school.wait_job(
            job3["id"], lambda j: j["status"] in ("published", "refused", "failed"), 400, "job 3"
        )
        assert done["status"] == "published", done["reason"]
        rel = school.served(0)["digit"]
        assert rel["version"] == done["version"] == f"{versions.digits()}-r{job3['id']}"
        blob = requests.get(
            f"{school.server.url}/api/v1/models/digits/{rel['version']}",
            headers={"Authorization": f"Bearer {school.tokens[0]}"},
            timeout=30,
        ).content
        assert hashlib.sha256(blob).hexdigest() == rel["sha256"] and len(blob) == rel["length"]
        assert rel["manifest"]["parent_version"] == versions.digits()
        assert rel["manifest"]["training"]["snapshot"] == done["snapshot"]
        v = {
            x["version"]: x for x in school.admin("GET", "versions?name=digits").json()["versions"]
        }
        assert (
            v[done["version"]]["published_by"] == "ms-head" and v[done["version"]]["gate"]["passed"]
        )
        assert (
            v[done["version"]]["metrics"]["heldout"]["accuracy"]
            > v[done["version"]]["metrics"]["parent"]["heldout"]["accuracy"]
        )
    finally:
        school.stop()


def test_the_gate_refuses_a_model_taught_flipped_labels_by_three_devices(tmp_path):
    # Three devices agree that every 1 is a 7: their neighbours concur, so the quarantine lifts
    # it (several devices, one style); the gate is what stops the model that learns it.
    env = {"HWR_SYNC_RETRAIN_MAX_STEPS": "40", "HWR_SYNC_RETRAIN_LR": "0.002"}
    school = School(tmp_path, devices=4, env=env)
    try:
        school.serve()
        ones, _ = mnist(240, seed=2, digit=1)
        for d in range(3):
            school.upload(d, [correction("digit", "7", im) for im in ones[d * 60 : (d + 1) * 60]])
        honest, hy = mnist(60, seed=3)
        school.upload(
            3, [correction("digit", str(v), im) for im, v in zip(honest, hy, strict=True)]
        )
        school.scored(240)
        job = school.admin("POST", "retrain", json={"name": "digits", "by": "ms-head"}).json()
        done = school.wait_job(
            job["id"], lambda j: j["status"] in ("published", "refused", "failed"), 400, "the job"
        )
        assert done["status"] == "refused", done
        assert "largest recall fall: '1'" in done["reason"] and "may be lost" in done["reason"]
        assert not done["gate"]["passed"] and done["gate"]["checks"][1]["check"] == "class_recall"
        assert school.served(0)["digit"]["version"] == versions.digits()
        assert len(school.admin("GET", "versions?name=digits").json()["versions"]) == 1
    finally:
        school.stop()
