"""The learning loop end to end with real processes: a school teaches its model ``f``; a poisoner fails.

* Two ``hwr-edge`` devices and one ``hwr-sync-server`` (with its worker). EMNIST ``f`` images of
  the TRAINING split stand in for pupils' drawings: each is drawn on a device as a PNG
  (``POST /api/predict``, mode ``char``) and, where the device does not read it as ``f``,
  corrected as a pupil would (``POST /api/correct`` with the prediction's id, label ``f``); the
  devices sync; a retrain passes the gate and is published; both devices swap to it; and the
  ``f`` images of the EMNIST TEST split, never used, are read as ``f`` more often, through the
  devices' own ``/api/predict`` and by the model alone.
* One device of five sends 30% flipped labels among honest corrections: most flipped labels
  end in quarantine, and the model retrained on the rest loses no more than the gate allows.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.learning_harness import School, correction, require_data
from tests.sync_harness import SyncedEdge, wait_for

pytestmark = pytest.mark.slow


def png_drawing(image_u8: np.ndarray, scale: int = 8) -> str:
    """A 28x28 EMNIST image (white ink on black, upright) as a canvas PNG: black ink on white."""
    im = Image.fromarray(255 - image_u8, "L").resize((28 * scale, 28 * scale), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def emnist_f(split: str) -> np.ndarray:
    from hwrcore.labels import LABEL_SETS
    from trainer.data import load_emnist

    x, y = load_emnist(require_data(), split, "letters")
    return x[y == LABEL_SETS["char"].labels.index("f")]


def reads_f(manifest: Path, images: np.ndarray) -> np.ndarray:
    """Which ``images`` (as canvas PNGs, preprocessed as a device does) a model reads as f."""
    from edge.classifier import Classifier
    from hwrcore.preprocess import png_to_input

    clf = Classifier(manifest)
    x = np.stack([png_to_input(png_drawing(im), clf.manifest.style) for im in images])
    probs, _ = clf.predict_batch(x)
    return np.asarray([clf.labels[i] == "f" for i in probs.argmax(1)])


def predict(edge: SyncedEdge, image_u8: np.ndarray) -> dict:
    r = requests.post(
        edge.url + "/api/predict", json={"mode": "char", "image": png_drawing(image_u8)}, timeout=30
    )
    assert r.status_code == 200, r.text
    return r.json()


def read_as(edge: SyncedEdge, images: np.ndarray) -> list[str]:
    return [predict(edge, im)["label"] for im in images]


def test_f_drawings_the_model_misreads_corrected_on_two_devices_teach_the_school_model(tmp_path):
    """The drawings a school corrects are the ones its model gets wrong: the training ``f``
    images the shipped model does not read as ``f`` are drawn and corrected on the two devices
    (draw, then the right letter on the keypad), half on each. Once a device holds a few of
    them its own personalisation reads most such drawings right already; the school's model
    learns from both devices, and the gate judges it on the device it did not learn from."""
    env = {
        "HWR_SYNC_RETRAIN_LAYERS": "head",
        "HWR_SYNC_RETRAIN_MAX_STEPS": "80",
        "HWR_SYNC_RETRAIN_LR": "0.0005",
        "HWR_SYNC_REPLAY_PER_CLASS": "150",
        "HWR_SYNC_EVAL_LIMIT": "0",  # the whole test split: a sample's recalls are too noisy
    }
    school = School(tmp_path, devices=2, env=env)
    edges: list[SyncedEdge] = []
    try:
        server = school.serve()
        edges = [
            SyncedEdge(tmp_path / f"edge-{i}", server.url, t, school.public_key)
            for i, t in enumerate(school.tokens)
        ]
        parent = edges[0].health()["models"]["char"]["version"]
        shipped = school.data / "models" / "characters" / f"{parent}.json"
        train_f = emnist_f("train")
        misread = train_f[~reads_f(shipped, train_f)]
        test_f = emnist_f("test")
        before = read_as(edges[0], test_f)
        for i, im in enumerate(misread):
            r = requests.post(
                edges[i % 2].url + "/api/correct",
                json={"mode": "char", "image": png_drawing(im), "label": "f"},
                timeout=30,
            )
            assert r.status_code == 200 and r.json()["stored"], r.text
        print(f"\n{len(misread)} of {len(train_f)} training f misread by the shipped model")
        assert len(misread) >= 40  # something to teach, and to hold out
        n_corrected = len(misread)
        wait_for(lambda: all(e.health()["pending"] == 0 for e in edges), 60, "both devices to sync")
        school.scored(n_corrected)
        q = school.admin("GET", "quarantine?mode=char").json()
        assert q["total"] <= 0.05 * n_corrected, q["total"]  # honest f: learnt, not held back
        job = school.admin("POST", "retrain", json={"name": "characters", "by": "ms-head"}).json()
        done = school.wait_job(
            job["id"], lambda j: j["status"] in ("published", "refused", "failed"), 900, "the job"
        )
        assert done["status"] == "published", done["reason"]
        new = done["version"]
        wait_for(
            lambda: all(e.health()["models"]["char"]["version"] == new for e in edges),
            60,
            f"both devices to serve {new}",
        )
        after = [read_as(e, test_f) for e in edges]
        recall_before = np.mean([g == "f" for g in before])
        recall = [float(np.mean([g == "f" for g in a])) for a in after]
        print(
            f"\nEMNIST test f ({len(test_f)}) read as f: {recall_before:.1%} before, "
            f"{recall[0]:.1%} / {recall[1]:.1%} after (devices 0 / 1); job metrics base "
            f"{done['metrics']['parent']['base']['accuracy']:.2%} -> "
            f"{done['metrics']['base']['accuracy']:.2%}, held-out "
            f"{done['metrics']['parent']['heldout']['accuracy']:.2%} -> "
            f"{done['metrics']['heldout']['accuracy']:.2%}"
        )
        # Each device also reads through its own corrections (personalisation); the model alone:
        model_recall = {
            v: float(reads_f(school.data / "models" / "characters" / f"{v}.json", test_f).mean())
            for v in (done["parent"], new)
        }
        print(
            f"the model alone (no personalisation): {model_recall[done['parent']]:.1%} -> "
            f"{model_recall[new]:.1%}"
        )
        assert min(recall) > recall_before and min(recall) >= 0.8
        assert model_recall[new] > model_recall[done["parent"]]  # the model itself learnt f
        m = done["metrics"]
        assert m["base"]["accuracy"] >= m["parent"]["base"]["accuracy"] - 0.002
    finally:
        for e in edges:
            e.stop()
        school.stop()


def test_one_device_of_five_sending_flipped_labels_is_caught_and_the_gate_holds(tmp_path):
    from trainer.data import load_mnist

    school = School(tmp_path, devices=5)
    try:
        school.serve()
        x, y = load_mnist(require_data(), "train")
        rng = np.random.default_rng(4)
        pick = rng.choice(len(y), 5 * 120, replace=False)
        flipped: set[str] = set()
        for d in range(5):
            items = []
            for i in pick[d::5]:
                label = int(y[i])
                if d == 4 and rng.random() < 0.3:
                    label = int(rng.choice([v for v in range(10) if v != label]))
                c = correction("digit", str(label), x[i].astype(np.float32) / 255.0)
                if label != y[i]:
                    flipped.add(c["id"])
                items.append(c)
            school.upload(d, items)
        school.scored(600)
        q = school.admin("GET", "quarantine?mode=digit&limit=1000").json()["items"]
        held = {i["id"] for i in q}
        caught = len(held & flipped) / len(flipped)
        false = len(held - flipped) / (600 - len(flipped))
        print(
            f"\n{len(flipped)} flipped labels: {caught:.0%} quarantined; honest ones "
            f"quarantined: {false:.1%}"
        )
        assert caught >= 0.8 and false <= 0.02
        devs = {d["device"]: d for d in school.admin("GET", "devices/agreement").json()["devices"]}
        assert devs["room-4"]["agreement"] < min(devs[f"room-{i}"]["agreement"] for i in range(4))
        job = school.admin("POST", "retrain", json={"name": "digits", "by": "ms-head"}).json()
        done = school.wait_job(
            job["id"], lambda j: j["status"] in ("published", "refused", "failed"), 400, "the job"
        )
        assert done["status"] in ("published", "refused"), done["reason"]
        for v in school.admin("GET", "versions?name=digits").json()["versions"]:
            if v["gate"] is not None:  # every published retrain passed the gate's limits
                m = v["metrics"]
                assert m["base"]["accuracy"] >= m["parent"]["base"]["accuracy"] - 0.002
                assert all(
                    m["parent"]["base"]["per_class_recall"][k] - r <= 0.03
                    for k, r in m["base"]["per_class_recall"].items()
                )
    finally:
        school.stop()
