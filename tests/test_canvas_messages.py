"""The canvas's confirm and withdraw messages through the Flask app: stored, counted, undone."""

from __future__ import annotations

import pytest

from edge.app import close_app, create_app
from edge.config import EdgeConfig
from hwrcore.store import CorrectionStore
from tests.models import require_models

SEVEN = [[[60.0, 50.0], [220.0, 50.0], [130.0, 240.0]]]
# A 1 with a long flag: digits 1.3.0 reads it 1 at 47%, 7 at 43%.
ONE_OR_SEVEN = [[[100.0, 70.0], [150.0, 40.0], [150.0, 240.0]]]


@pytest.fixture
def config(tmp_path) -> EdgeConfig:
    return EdgeConfig(data_dir=tmp_path / "data", models_dir=require_models())


@pytest.fixture
def app(config):
    app = create_app(config)
    yield app
    close_app(app)


@pytest.fixture
def client(app):
    return app.test_client()


def predict(client, strokes=SEVEN) -> dict:
    resp = client.post("/api/predict", json={"mode": "digit", "strokes": strokes})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


def digit_stats(client) -> dict:
    return client.get("/healthz").get_json()["corrections"]["digit"]


def test_a_withdrawn_correction_leaves_the_personaliser_at_once(client, app, config):
    # A drawing the model hesitates over, so that one correction decides it.
    first = predict(client, ONE_OR_SEVEN)
    assert first["label"] in "17" and first["confidence"] < 0.6
    wrong = "7" if first["label"] == "1" else "1"
    corrected = client.post("/api/correct", json={"id": first["id"], "label": wrong}).get_json()
    taught = predict(client, ONE_OR_SEVEN)
    assert (taught["label"], taught["source"]) == (wrong, "personal")
    assert client.get("/healthz").get_json()["pending"] == 1

    resp = client.post(
        "/api/withdraw", json={"correction_id": corrected["correction_id"], "by": "pupil"}
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["withdrawn"] is True and body["mode"] == "digit" and body["pending"] == 0
    again = predict(client, ONE_OR_SEVEN)
    assert (again["label"], again["source"]) == (first["label"], "model")
    assert again["top"] == first["top"]
    stats = digit_stats(client)
    assert (stats["withdrawn"], stats["corrections"]) == (1, 0)
    # A retry is answered the same way; the prediction can be answered again.
    retry = client.post("/api/withdraw", json={"correction_id": corrected["correction_id"]})
    assert retry.status_code == 200 and retry.get_json()["withdrawn"] is True
    redo = client.post("/api/correct", json={"id": first["id"], "label": wrong})
    assert redo.status_code == 200 and redo.get_json()["correction_id"] != body["correction_id"]

    # Kept in the store as withdrawn, by whom, across a restart (it was journalled).
    close_app(app)
    with CorrectionStore(config.data_dir / "custom_digits.h5") as store:
        kept = store.get(corrected["correction_id"])
        assert kept is not None and kept.withdrawn is not None and kept.withdrawn_by == "pupil"
        assert store.stats()["withdrawn"] == 1


def test_right_is_stored_as_a_confirmation_counted_apart(client):
    shown = predict(client)
    resp = client.post("/api/confirm", json={"id": shown["id"], "label": shown["label"]})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["kind"] == "confirmation" and body["label"] == shown["label"]
    assert body["confirmation_id"] == body["correction_id"]
    stats = digit_stats(client)
    assert (stats["confirmations"], stats["corrections"]) == (1, 0)
    # It teaches nothing: the same drawing reads exactly as before.
    assert predict(client)["top"] == shown["top"]
    # The same prediction cannot then be corrected, until the confirmation is taken back.
    other = "1" if shown["label"] != "1" else "2"
    refused = client.post("/api/correct", json={"id": shown["id"], "label": other})
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "already_corrected"
    client.post("/api/withdraw", json={"correction_id": body["confirmation_id"], "by": "teacher"})
    assert client.post("/api/correct", json={"id": shown["id"], "label": other}).status_code == 200


def test_confirm_and_withdraw_refuse_what_they_cannot_do(client):
    shown = predict(client)
    other = "1" if shown["label"] != "1" else "2"
    wrong = client.post("/api/confirm", json={"id": shown["id"], "label": other})
    assert wrong.status_code == 400 and wrong.get_json()["error"]["code"] == "invalid_label"
    unknown = client.post("/api/withdraw", json={"correction_id": "0" * 32})
    assert unknown.status_code == 404
    assert unknown.get_json()["error"]["code"] == "unknown_correction"
    bad_by = client.post("/api/withdraw", json={"correction_id": "x", "by": "robot"})
    assert bad_by.status_code == 400
    form = client.post("/api/withdraw", data={"correction_id": "x"})
    assert form.status_code == 415  # JSON only, like every write
    by_drawing = client.post(
        "/api/confirm", json={"mode": "digit", "strokes": SEVEN, "label": shown["label"]}
    )
    assert by_drawing.status_code == 200 and by_drawing.get_json()["kind"] == "confirmation"


def test_personaliser_remove_forgets_one_correction_by_id():
    import numpy as np

    from edge.personal import Personaliser

    p = Personaliser(["0", "1", "2"], cap=3, weight=0.5)  # an identical drawing decides
    e = np.eye(4, dtype=np.float32)
    p.load(e[:2], ["1", "2"], ["a", "b"])
    p.add(e[2], "1", "c")
    probs = np.array([0.9, 0.05, 0.05], dtype=np.float32)
    assert p.decide(probs, e[1])[1] == "personal"
    assert p.remove("b") is True and len(p) == 2
    assert p.remove("b") is False and p.remove("unknown") is False
    out, source = p.decide(probs, e[1])
    assert source == "model" and out.tolist() == pytest.approx(probs.tolist())
    assert p.decide(probs, e[2])[1] == "personal"  # the others stay
    p.add(e[3], "2", "d")  # room again under the cap
    assert len(p) == 3 and p.remove("a") and p.decide(probs, e[0])[1] == "model"
