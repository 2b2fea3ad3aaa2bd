# ruff: noqa: F811 - the database fixtures of tests/pg.py are imported by name
"""The merge policy, the quarantine and its review, jobs, snapshots, the gate and rollout.

The database tests run on SQLite and on a real PostgreSQL cluster. Scoring uses a scorer
that stands in for the model (a fixed guess and embedding per image), so each verdict is
known in advance; bench/quarantine.py measures the same policy with the real models.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
import uuid

import numpy as np
import pytest
from sqlalchemy import select

from hwrcore.labels import LABEL_SETS
from sync_server import db, jobs, merge
from sync_server.app import close_app, create_app
from sync_server.config import load_config
from sync_server.devices import add_device
from sync_server.merge import Policy, assess, capped
from sync_server.registry import RegistryError
from sync_server.retrain import gate
from sync_server.snapshots import make_snapshot, read_snapshot, split_by_device, write_snapshot
from tests import versions
from tests.pg import database_url, pg_cluster, pg_url  # noqa: F401 - SQLite and PostgreSQL
from tests.sync_server_helpers import MODELS_DIR, item, new_version
from tests.test_dashboard import sign_in

ADMIN = "admin-secret-for-learning-tests"
TABLES = "devices, corrections, models, releases, assessments, decisions, jobs, snapshots"
DIGITS = LABEL_SETS["digit"].labels
RNG = np.random.default_rng(5)


class FakeQueue:
    """Stands in for the Huey queue: records what was enqueued."""

    def __init__(self) -> None:
        self.retrains: list[int] = []
        self.pokes: list[str] = []

    def enqueue_retrain(self, job_id: int) -> None:
        self.retrains.append(job_id)

    def poke(self, mode: str) -> None:
        self.pokes.append(mode)

    def close(self) -> None:
        pass


@pytest.fixture
def app(tmp_path, database_url):
    config = load_config(
        env={"HWR_SYNC_ADMIN_TOKEN": ADMIN},
        overrides={
            "data_dir": tmp_path / "server",
            "database_url": database_url,
            "models_dir": MODELS_DIR,
            "rate_burst": 10_000,
            "release_poll_interval": 3600.0,
        },
    )
    a = create_app(config)
    a.extensions["hwr_sync"].jobs = FakeQueue()
    yield a
    close_app(a)


def st(app):
    return app.extensions["hwr_sync"]


ADMIN_H = {"Authorization": f"Bearer {ADMIN}"}


# -- a stand-in model: the image's first pixel says the class, the second its confidence ---------
def img(cls: int, conf: float = 0.99, style: float = 0.0) -> str:
    """A model input the fake scorer reads as digit ``cls`` at ``conf``; ``style`` moves its
    embedding (same style: cosine 1 to each other)."""
    a = np.zeros(784, dtype="<f4")
    a[0] = cls / 10.0
    a[1] = conf
    a[2] = style
    a[10] = RNG.random() * 1e-3  # every drawing distinct
    return base64.b64encode(a.tobytes()).decode("ascii")


def fake_scorer(images: np.ndarray):
    n = len(images)
    flat = images.reshape(n, -1)
    probs = np.zeros((n, 10), np.float32)
    emb = np.zeros((n, 16), np.float32)
    for i, a in enumerate(flat):
        cls = int(round(a[0] * 10))
        probs[i] = (1 - a[1]) / 9
        probs[i, cls] = a[1]
        emb[i, cls] = 1.0  # neighbours: same class the model sees
        emb[i, 10 + int(round(a[2] * 5))] = 2.0  # ... and the same style
    return probs, emb


def store(client, token: str, items: list[dict]) -> None:
    r = client.post(
        "/api/v1/corrections",
        json={"corrections": items},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200 and all(x["status"] == "stored" for x in r.json["results"])


def score(app, mode: str = "digit") -> dict:
    s = st(app)
    merge.score_pending(s.engine, mode, versions.digits(), fake_scorer)
    return merge.reassess(s.engine, mode, Policy.from_config(s.config))


def statuses(app) -> dict[str, str]:
    with db.reading(st(app).engine) as conn:
        return dict(conn.execute(select(db.assessments.c.uuid, db.assessments.c.status)).all())


# -- the policy, pure ---------------------------------------------------------------------------
def test_votes_on_one_drawing_settle_it_and_a_tie_goes_to_quarantine():
    pol = Policy()
    emb = np.eye(6, 8, dtype=np.float32)
    same = ["h1", "h1", "h1", "h2", "h2", "h3"]
    v = assess(
        [1, 2, 3, 1, 2, 1],
        ["3", "3", "8", "4", "9", "5"],
        same,
        ["3", "3", "3", "4", "4", "5"],
        [0.5] * 6,
        emb,
        pol,
    )
    assert [x.vote for x in v] == ["won", "won", "lost", "tie", "tie", None]
    assert [x.status for x in v] == ["accepted", "accepted"] + ["quarantined"] * 3 + ["accepted"]
    assert "outvoted" in v[2].reason and "tie" in v[3].reason


def test_confident_disagreement_with_model_and_neighbours_quarantines_and_devices_lift_it():
    pol = Policy(confidence=0.9, k=5, similarity=0.8, consensus=0.5, lift_devices=3)
    e = np.tile(np.eye(1, 8, dtype=np.float32), (6, 1))  # six drawings alike
    labels = ["3", "3", "3", "8", "3", "3"]
    v = assess([1, 2, 3, 4, 5, 6], labels, list("abcdef"), ["3"] * 6, [0.99] * 6, e, pol)
    assert v[3].status == "quarantined" and v[3].neighbour_label == "3"
    assert all(x.status == "accepted" for i, x in enumerate(v) if i != 3)
    # the same when the model is unsure: no quarantine without a confident model
    v = assess([1, 2, 3, 4, 5, 6], labels, list("abcdef"), ["3"] * 6, [0.6] * 6, e, pol)
    assert v[3].status == "accepted"
    # a style the model misreads, corrected alike on three devices: learnt, not quarantined
    v = assess([1, 2, 3], ["f", "f", "f"], list("abc"), ["F"] * 3, [0.99] * 3, e[:3], pol)
    assert [x.status for x in v] == ["accepted"] * 3 and v[0].support_devices == 3
    # a mixed neighbourhood: four devices say 3, three say 5; the 5s are lifted, a lone 8 is not
    e8 = np.tile(np.eye(1, 8, dtype=np.float32), (8, 1))
    mixed = ["3", "3", "3", "3", "5", "5", "5", "8"]
    v = assess(list(range(8)), mixed, list("abcdefgh"), ["3"] * 8, [0.99] * 8, e8, pol)
    assert [x.status for x in v[4:7]] == ["accepted"] * 3 and v[4].neighbour_label == "3"
    assert v[4].support_devices == 3 and v[7].status == "quarantined"
    # ...but one device alone, however often, lifts nothing: its own drawings are no neighbours
    v = assess([1, 1, 1], ["f", "f", "f"], list("abc"), ["F"] * 3, [0.99] * 3, e[:3], pol)
    assert [x.status for x in v] == ["quarantined"] * 3 and v[0].support_devices == 1


def test_one_device_contributes_at_most_its_share():
    keep = capped([1] * 8 + [2, 3], 0.5)
    assert keep.sum() == 7 and keep[:5].all() and not keep[5:8].any()
    assert capped([1, 1, 1], 0.5).sum() == 2  # a lone device keeps ceil(share * n)


def test_the_gate_refuses_each_kind_of_regression_with_its_reason():
    def m(acc, recalls, held):
        return {
            "base": {"accuracy": acc, "per_class_recall": recalls},
            "heldout": {"accuracy": held, "n": 50},
        }

    parent = m(0.990, {"0": 0.99, "1": 0.99}, 0.60)
    assert gate(parent, m(0.989, {"0": 0.98, "1": 0.99}, 0.70), 0.002, 0.03)["passed"]
    worse = gate(parent, m(0.987, {"0": 0.99, "1": 0.99}, 0.70), 0.002, 0.03)
    assert not worse["passed"] and worse["reason"].startswith("base test accuracy ")
    assert "points, where at most 0.20 may be lost" in worse["reason"]
    recall = gate(parent, m(0.990, {"0": 0.95, "1": 0.99}, 0.70), 0.002, 0.03)
    assert not recall["passed"] and "'0' by 4.0%" in recall["reason"]
    flat = gate(parent, m(0.990, {"0": 0.99, "1": 0.99}, 0.60), 0.002, 0.03)
    assert not flat["passed"] and flat["reason"].startswith("held-out corrections must be read")
    perfect = m(0.990, {"0": 0.99, "1": 0.99}, 1.0)
    told = gate(perfect, perfect, 0.002, 0.03)  # nothing left to do better on
    assert not told["passed"] and "already reads every held-out correction" in told["reason"]
    assert "already reads" not in flat["reason"]


def test_the_gate_judges_classes_of_one_shape_together_and_every_other_class_alone():
    """I and L (a vertical stroke is either) as the f loop's retrain moved them: I 64 -> 70,
    L 85 -> 80 of 100 each, every vertical stroke still read as one of the two."""

    def m(confusion, held):
        cm = np.asarray(confusion)
        recall = dict(zip("ILO", (cm.diagonal() / cm.sum(axis=1)).tolist(), strict=True))
        return {
            "base": {"accuracy": 0.9, "per_class_recall": recall, "labels": list("ILO"),
                     "confusion_matrix": cm.tolist()},
            "heldout": {"accuracy": held, "n": 50},
        }  # fmt: skip

    shapes = LABEL_SETS["char"].same_shape
    assert shapes == (("I", "L"),)
    parent = m([[64, 36, 0], [15, 85, 0], [0, 0, 100]], 0.0)
    moved = m([[70, 30, 0], [20, 80, 0], [0, 0, 100]], 0.2)
    alone = gate(parent, moved, 0.002, 0.03)
    assert not alone["passed"] and "'L' by 5.0%" in alone["reason"]
    together = gate(parent, moved, 0.002, 0.03, shapes)
    assert together["passed"], together["reason"]
    assert "I/L judged together" in together["checks"][1]["detail"]
    # Vertical strokes read as O are lost to the group: judged together, that still fails.
    lost = m([[70, 25, 5], [15, 80, 5], [0, 0, 100]], 0.2)
    refused = gate(parent, lost, 0.002, 0.03, shapes)
    assert not refused["passed"] and "'I/L' by 5.0%" in refused["reason"]
    # So does any other class's fall, and a record without a matrix has every class alone.
    o_fell = m([[64, 36, 0], [15, 85, 0], [0, 4, 96]], 0.2)
    assert "'O' by 4.0%" in gate(parent, o_fell, 0.002, 0.03, shapes)["reason"]
    bare = {**moved, "base": {**moved["base"], "confusion_matrix": []}}
    assert "'L' by 5.0%" in gate(parent, bare, 0.002, 0.03, shapes)["reason"]


# -- on the database ----------------------------------------------------------------------------
def test_flipped_labels_go_to_quarantine_and_the_review_is_recorded(app):
    client = app.test_client()
    tokens = [add_device(st(app).engine, f"room-{i}") for i in range(4)]
    honest = [[item(label="3", image=img(3)) for _ in range(3)] for _ in range(3)]
    for t, batch in zip(tokens, honest, strict=False):
        store(client, t, batch)
    bad = item(label="8", image=img(3))
    fine = item(label="5", image=img(5, style=0.2))
    store(client, tokens[3], [bad, fine])
    counts = score(app)
    assert counts == {"accepted": 10, "quarantined": 1}
    assert statuses(app)[bad["id"]] == "quarantined"
    q = merge.quarantine(st(app).engine, mode="digit")
    assert [i["id"] for i in q] == [bad["id"]]
    assert q[0]["model_label"] == "3" and q[0]["neighbour_label"] == "3" and q[0]["label"] == "8"
    assert q[0]["image_png"].startswith(b"\x89PNG") and q[0]["device"] == "room-3"
    rows = merge.training_set(st(app).engine, "digit", Policy(max_device_share=1.0))
    assert bad["id"] not in rows.uuids and len(rows.uuids) == 10
    # the admin approves it, then rejects another: each decision kept, with who and when
    assert merge.decide(st(app).engine, [bad["id"]], "approve", "ms-head") == 1
    assert merge.decide(st(app).engine, [fine["id"], "no-such-id"], "reject", "ms-head") == 1
    rows = merge.training_set(st(app).engine, "digit", Policy(max_device_share=1.0))
    assert bad["id"] in rows.uuids and fine["id"] not in rows.uuids
    made = merge.decisions(st(app).engine)
    assert [(d["correction_id"], d["decision"], d["by"]) for d in made] == [
        (fine["id"], "reject", "ms-head"),
        (bad["id"], "approve", "ms-head"),
    ]
    assert made[1]["previous"] == "quarantined/-" and time.time() - made[0]["at"] < 60
    assert merge.quarantine_count(st(app).engine, status="open") == 0
    assert {i["id"] for i in merge.quarantine(st(app).engine, status="all")} == {
        bad["id"],
        fine["id"],
    }
    with pytest.raises(merge.MergeError):
        merge.decide(st(app).engine, [bad["id"]], "delete", "ms-head")
    with db.reading(st(app).engine) as conn:  # nothing deleted
        assert conn.execute(select(db.corrections.c.uuid)).all().__len__() == 11


def test_a_quarantined_correction_its_device_withdrew_leaves_the_open_review(app):
    client = app.test_client()
    tokens = [add_device(st(app).engine, f"room-{i}") for i in range(4)]
    for t in tokens[:3]:
        store(client, t, [item(label="3", image=img(3)) for _ in range(3)])
    bad, other = item(label="8", image=img(3)), item(label="9", image=img(3))
    store(client, tokens[3], [bad, other])
    assert score(app) == {"accepted": 9, "quarantined": 2}
    assert merge.quarantine_count(st(app).engine, mode="digit") == 2
    r = client.post(
        "/api/v1/corrections/withdraw",
        json={"withdrawals": [{"id": bad["id"], "withdrawn": time.time(), "by": "teacher"}]},
        headers={"Authorization": f"Bearer {tokens[3]}"},
    )
    assert r.status_code == 200, r.json
    open_ = merge.quarantine(st(app).engine, mode="digit")
    assert [i["id"] for i in open_] == [other["id"]] and open_[0]["withdrawn"] is None
    assert merge.quarantine_count(st(app).engine, mode="digit") == 1
    every = {i["id"]: i for i in merge.quarantine(st(app).engine, status="all")}
    assert set(every) == {bad["id"], other["id"]}  # the history keeps it, marked
    assert every[bad["id"]]["withdrawn_by"] == "teacher" and every[bad["id"]]["withdrawn"] > 0
    assert merge.quarantine_count(st(app).engine, status="all") == 2
    assert [i["id"] for i in merge.quarantine(st(app).engine, status="withdrawn")] == [bad["id"]]
    sign_in(client, token=ADMIN)  # the dashboard shows the same, the withdrawn one marked
    waiting = client.get("/admin/quarantine").text
    assert other["id"] in waiting and bad["id"] not in waiting
    history = client.get("/admin/quarantine?show=withdrawn").text
    assert bad["id"] in history and "withdrawn</span> by the teacher" in history
    assert "approve-selected" not in history and "approve-one" not in history  # no decision


def test_device_agreement_counts_and_share(app):
    client = app.test_client()
    good = [add_device(st(app).engine, f"good-{i}") for i in range(3)]
    junk = add_device(st(app).engine, "junk")
    for t in good:
        store(client, t, [item(label="2", image=img(2)) for _ in range(4)])
    store(client, junk, [item(label="7", image=img(2)) for _ in range(4)])
    score(app)
    stats = {d["device"]: d for d in merge.device_stats(st(app).engine)}
    assert stats["junk"]["agreement"] == 0.0 and stats["junk"]["quarantined"] == 4
    assert stats["good-0"]["agreement"] == 1.0 and stats["good-0"]["accepted"] == 4
    assert stats["good-0"]["share"]["digit"] == pytest.approx(1 / 3)
    classes = {c["label"]: c for c in merge.class_counts(st(app).engine, "digit")}
    assert classes["2"]["accepted"] == 12 and classes["7"]["quarantined"] == 4
    assert [c["label"] for c in merge.class_counts(st(app).engine, "digit")] == list(DIGITS)
    over = merge.counts_over_time(st(app).engine, "digit", "hour")
    assert sum(b["total"] for b in over) == 16 and sum(b["quarantined"] for b in over) == 4


def test_uploads_poke_the_scoring_queue_and_stay_fast(app):
    client = app.test_client()
    t = add_device(st(app).engine, "room-1")
    store(client, t, [item(label="1", image=img(1)), item(mode="char", label="a")])
    assert sorted(set(st(app).jobs.pokes)) == ["char", "digit"]


def test_a_second_retrain_request_joins_the_first_and_a_stale_job_fails(app):
    s = st(app)
    first = jobs.request_retrain(s, "digits", "ms-head", trigger="admin")
    again = jobs.request_retrain(s, "digits", "mr-it", trigger="cli")
    other = jobs.request_retrain(s, "characters", "mr-it", trigger="cli")
    assert not first["joined"] and again["joined"] and again["id"] == first["id"]
    assert other["id"] != first["id"] and s.jobs.retrains == [first["id"], other["id"]]
    with pytest.raises(jobs.JobError):
        jobs.request_retrain(s, "nonsense", "ms-head")
    # a worker claims it, then dies: once the heartbeat is stale the job fails, and a new one runs
    assert jobs.claim(s.engine, first["id"])["status"] == "running"
    assert jobs.fail_stale(s.engine, stale_s=60) == []
    with db.writing(s.engine) as conn:
        conn.execute(
            db.jobs.update().where(db.jobs.c.id == first["id"]).values(heartbeat=time.time() - 600)
        )
    third = jobs.request_retrain(s, "digits", "ms-head")
    assert not third["joined"] and third["id"] != first["id"]
    dead = jobs.get_job(s.engine, first["id"])
    assert dead["status"] == "failed" and "worker stopped" in dead["reason"]


def test_accepted_corrections_start_a_retrain_after_n_at_most_once_an_interval(app):
    s = st(app)
    now = [time.time()]
    ctx = jobs.WorkerContext(s, clock=lambda: now[0])
    ctx.config = dataclasses.replace(s.config, retrain_after=3, retrain_min_interval=3600.0)
    client = app.test_client()
    t = add_device(s.engine, "room-1")

    def accepted(n: int) -> None:
        store(client, t, [item(label="1", image=img(1)) for _ in range(n)])
        score(app)

    accepted(3)
    assert ctx.maybe_retrain("digit", "digits") is None  # the first correction is too recent
    now[0] += 3601
    job = ctx.maybe_retrain("digit", "digits")
    assert job is not None and not job["joined"] and s.jobs.retrains == [job["id"]]
    assert jobs.get_job(s.engine, job["id"])["trigger"] == "auto"
    assert ctx.maybe_retrain("digit", "digits") is None  # one job at a time
    jobs.finish(s.engine, job["id"], "refused", "held-out accuracy did not rise")
    accepted(2)
    now[0] += 7200
    assert ctx.maybe_retrain("digit", "digits") is None  # 2 new since the last job, not 3
    accepted(1)
    now[0] = jobs.get_job(s.engine, job["id"])["requested"] + 1800
    assert ctx.maybe_retrain("digit", "digits") is None  # 3 new, but within the interval
    now[0] += 1801
    second = ctx.maybe_retrain("digit", "digits")
    assert second is not None and second["id"] != job["id"]
    assert ctx.maybe_retrain("char", "characters") is None  # no letters corrected
    ctx.config = dataclasses.replace(ctx.config, retrain_after=0)
    jobs.finish(s.engine, second["id"], "refused", "held-out accuracy did not rise")
    accepted(5)
    now[0] += 7200
    assert ctx.maybe_retrain("digit", "digits") is None  # 0: never automatically
    assert s.jobs.retrains == [job["id"], second["id"]]


def test_snapshots_are_content_addressed_and_split_by_device(app, tmp_path):
    client = app.test_client()
    tokens = [add_device(st(app).engine, f"room-{i}") for i in range(5)]
    for t in tokens:
        store(client, t, [item(label="4", image=img(4)) for _ in range(4)])
    score(app)
    rows = merge.training_set(st(app).engine, "digit", Policy())
    a = make_snapshot("digit", rows, 0.2)
    b = make_snapshot("digit", rows, 0.2)
    assert a.sha256 == b.sha256 and a.heldout.sum() == 4  # one whole device of five
    held = {d for d, h in zip(a.devices, a.heldout, strict=True) if h}
    assert len(held) == 1 and held == split_by_device(rows.device_names, 0.2)
    path = write_snapshot(st(app).engine, st(app).config.data_dir, a, job_id=None)
    assert path.name == f"{a.sha256}.h5"
    back = read_snapshot(path)
    assert back.uuids == a.uuids and np.array_equal(back.images, a.images)
    assert split_by_device(["x", "x"], 0.2) == set()  # one device: nothing to hold out


def test_a_snapshot_s_order_comes_from_its_drawings_not_the_devices_ids() -> None:
    """The same corrections under other UUIDs (another run of the same school) make a
    snapshot in the same order, so a job trains on them in the same order and makes the
    same model."""
    from sync_server.merge import TrainingRows

    images = RNG.random((6, 28, 28)).astype(np.float32)
    labels = list("012345")
    devs = ["room-1", "room-2"] * 3

    def rows(perm: list[int]) -> TrainingRows:
        return TrainingRows(
            uuids=[str(uuid.uuid4()) for _ in perm],
            device_ids=[1 + i % 2 for i in perm],
            device_names=[devs[i] for i in perm],
            labels=[labels[i] for i in perm],
            images=images[perm],
            dropped_by_share=0,
        )

    a = make_snapshot("digit", rows([0, 1, 2, 3, 4, 5]), 0.5)
    b = make_snapshot("digit", rows([5, 3, 1, 0, 2, 4]), 0.5)
    assert a.labels == b.labels and np.array_equal(a.images, b.images)
    assert list(a.heldout) == list(b.heldout) and a.uuids != b.uuids


def test_rollout_to_a_group_then_every_device(app, tmp_path):
    s = st(app)
    client = app.test_client()
    a = add_device(s.engine, "pilot-1", "pilot")
    b = add_device(s.engine, "room-9")
    s.registry.publish(new_version(tmp_path, versions.digits(1)), by="ms-head")  # to everyone
    s.registry.rollback("digits", versions.digits(), by="ms-head")
    s.registry.rollout("digits", versions.digits(1), "pilot", by="ms-head")

    def served(token):
        r = client.get("/api/v1/models", headers={"Authorization": f"Bearer {token}"})
        rel = r.json["models"]["digit"]["release"]["release"]
        hb = client.post(
            "/api/v1/heartbeat", json={}, headers={"Authorization": f"Bearer {token}"}
        ).json["models"]["digit"]
        assert hb["version"] == rel["version"] and hb["sequence"] == rel["sequence"]
        return rel["version"], rel["sequence"]

    assert served(a) == (versions.digits(1), 4) and served(b) == (versions.digits(), 3)
    sign_in(client, token=ADMIN)
    page = client.get("/admin/models").text
    assert f"; for group pilot: <strong>{versions.digits(1)}</strong>" in page
    with pytest.raises(Exception, match="already"):
        s.registry.rollout("digits", versions.digits(1), "pilot", by="ms-head")
    with pytest.raises(
        RegistryError, match=r"no active device is in group 'pilt' \(groups: pilot\)"
    ):
        s.registry.rollout("digits", versions.digits(1), "pilt", by="ms-head")  # a typo
    s.registry.rollout("digits", versions.digits(1), None, by="ms-head")
    assert served(a) == (versions.digits(1), 5) and served(b) == (versions.digits(1), 5)
    v = {x["version"]: x for x in s.registry.versions("digits")}
    assert v[versions.digits(1)]["current"] and v[versions.digits(1)]["published_by"] == "ms-head"
    assert [(r["sequence"], r["group"]) for r in v[versions.digits(1)]["rollouts"]] == [
        (2, None),
        (4, "pilot"),
        (5, None),
    ]


def test_every_device_gets_the_release_for_all_back_after_rollouts_to_its_groups(app, tmp_path):
    """Published to all, then the older version rolled out to each group: nobody serves the
    version for all, so neither a rollout to every device nor a rollback to it is "already"."""
    s = st(app)
    add_device(s.engine, "room-1", "year-3")
    add_device(s.engine, "room-2", "year-4")
    shipped, new = versions.digits(), versions.digits(1)
    s.registry.publish(new_version(tmp_path, new), by="ms-head")
    for group in ("year-3", "year-4"):
        s.registry.rollout("digits", shipped, group, by="ms-head")
    assert {s.registry.current("digits", g).version for g in ("year-3", "year-4")} == {shipped}
    back = s.registry.rollout("digits", new, None, by="ms-head")
    assert all(s.registry.current("digits", g).version == new for g in (None, "year-3", "year-4"))
    with pytest.raises(RegistryError, match="for every device already"):
        s.registry.rollout("digits", new, None, by="ms-head")
    s.registry.rollout("digits", shipped, "year-3", by="ms-head")
    again = s.registry.rollback("digits", new, by="ms-head")  # the CLI's way there
    assert again.sequence > back.sequence and s.registry.current("digits", "year-3").version == new
    with pytest.raises(RegistryError, match="is the current release already"):
        s.registry.rollback("digits", new, by="ms-head")


def test_admin_routes_need_the_token_and_answer_json(app, tmp_path):
    client = app.test_client()
    assert client.get("/api/v1/admin/quarantine").status_code == 401
    assert client.post("/api/v1/admin/retrain", json={"name": "digits"}).status_code == 401
    tokens = [add_device(st(app).engine, f"room-{i}") for i in range(3)]
    add_device(st(app).engine, "pilot-1", "pilot")  # the group rolled out to below
    for t in tokens[:2]:
        store(client, t, [item(label="6", image=img(6)) for _ in range(3)])
    bad = item(label="0", image=img(6))
    store(client, tokens[2], [bad])
    score(app)
    r = client.get("/api/v1/admin/quarantine?mode=digit", headers=ADMIN_H)
    assert r.status_code == 200 and r.json["total"] == 1
    assert base64.b64decode(r.json["items"][0]["image_png"]).startswith(b"\x89PNG")
    r = client.post(
        "/api/v1/admin/quarantine/decide",
        json={"ids": [bad["id"]], "decision": "reject", "by": "ms-head"},
        headers=ADMIN_H,
    )
    assert r.json == {"decided": 1}
    assert (
        client.get("/api/v1/admin/decisions", headers=ADMIN_H).json["items"][0]["by"] == "ms-head"
    )
    r1 = client.post("/api/v1/admin/retrain", json={"name": "digits"}, headers=ADMIN_H)
    r2 = client.post("/api/v1/admin/retrain", json={"name": "digits"}, headers=ADMIN_H)
    assert r1.status_code == r2.status_code == 202 and r2.json["joined"]
    assert r2.json["id"] == r1.json["id"]
    job = client.get(f"/api/v1/admin/jobs/{r1.json['id']}", headers=ADMIN_H).json
    assert job["status"] == "queued" and job["percent"] == 0.0
    assert client.get("/api/v1/admin/jobs/999", headers=ADMIN_H).status_code == 404
    devs = client.get("/api/v1/admin/devices/agreement", headers=ADMIN_H).json["devices"]
    assert {d["device"]: d["agreement"] for d in devs}["room-2"] == 0.0
    st(app).registry.publish(new_version(tmp_path, versions.digits(2)), by="x")
    r = client.post(
        "/api/v1/admin/rollout",
        json={"name": "digits", "version": versions.digits(), "group": "pilot"},
        headers=ADMIN_H,
    )
    assert r.status_code == 200 and r.json["group"] == "pilot"
    r = client.post(
        "/api/v1/admin/rollback", json={"name": "digits", "version": "9.9.9"}, headers=ADMIN_H
    )
    assert r.status_code == 404 and r.json["error"]["code"] == "unknown_version"
    vs = client.get("/api/v1/admin/versions?name=digits", headers=ADMIN_H).json["versions"]
    assert [v["version"] for v in vs] == [versions.digits(), versions.digits(2)]
    assert vs[0]["groups"] == ["pilot"]
    r = client.post("/api/v1/admin/retrain", data="x", headers=ADMIN_H)
    assert r.status_code == 400 and set(r.json) == {"error"}
    json.dumps(client.get("/api/v1/admin/corrections/classes?mode=digit", headers=ADMIN_H).json)
