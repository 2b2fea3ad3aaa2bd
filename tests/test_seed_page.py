"""The seed paper's own canvas page against the edge: its exact requests, every field it reads.

The seed's page posts JSON to relative URLs from the page's own origin: ``/predict`` with
``{"data_url", "mode": "digits" | "characters"}``, ``/correct`` with the same and
``"true_label"``, ``/stats`` with ``{}``. It reads ``prediction``, ``confidence`` (0-1),
``source``, ``time`` (seconds) and ``image`` (the base64 PNG of the 28x28 model input); for
/stats ``digits`` and ``chars``; on failure ``error`` (predict) or ``status: "error"`` with
``message`` (correct).
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from edge.app import close_app, create_app
from edge.config import EdgeConfig
from hwrcore.preprocess import strokes_to_png
from tests.models import require_models

SEVEN = [[[60.0, 50.0], [220.0, 50.0], [130.0, 240.0]]]
LETTER_T = [[[50.0, 50.0], [230.0, 50.0]], [[140.0, 50.0], [140.0, 250.0]]]
# What a browser sends with the seed page's fetch from the device's own page.
BROWSER = {"Origin": "http://localhost", "Host": "localhost"}


def canvas_data_url(strokes) -> str:
    """The canvas as the seed's page sends it: ``canvas.toDataURL()`` of a drawing."""
    return "data:image/png;base64," + base64.b64encode(strokes_to_png(strokes)).decode()


@pytest.fixture
def client(tmp_path):
    app = create_app(EdgeConfig(data_dir=tmp_path / "data", models_dir=require_models()))
    try:
        yield app.test_client()
    finally:
        close_app(app)


def post(client, path: str, body: dict):
    return client.post(path, json=body, headers=BROWSER)


def assert_model_input_png(text: str) -> None:
    img = Image.open(io.BytesIO(base64.b64decode(text, validate=True)))
    assert img.format == "PNG" and img.size == (28, 28)
    pixels = np.asarray(img.convert("L"))
    assert pixels.max() > 128 and pixels[0, 0] == 0  # white ink on black, as the model sees it


@pytest.mark.parametrize(("mode", "strokes"), [("digits", SEVEN), ("characters", LETTER_T)])
def test_seed_predict_answers_every_field_its_page_reads(client, mode, strokes):
    resp = post(client, "/predict", {"data_url": canvas_data_url(strokes), "mode": mode})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    assert isinstance(body["prediction"], str) and len(body["prediction"]) == 1
    assert 0.0 <= body["confidence"] <= 1.0
    assert body["source"] in ("model", "personal")
    assert 0.0 < body["time"] < 5.0  # seconds
    assert_model_input_png(body["image"])
    # The project's own fields stay beside them.
    assert body["label"] == body["prediction"] and body["id"]
    assert body["mode"] == {"digits": "digit", "characters": "char"}[mode]


def test_seed_correct_and_stats_count_what_was_stored(client):
    before = post(client, "/stats", {})
    assert before.status_code == 200
    assert (before.get_json()["digits"], before.get_json()["chars"]) == (0, 0)
    for body in (
        {"data_url": canvas_data_url(SEVEN), "mode": "digits", "true_label": "7"},
        {"data_url": canvas_data_url(LETTER_T), "mode": "characters", "true_label": "T"},
        {"data_url": canvas_data_url(LETTER_T), "mode": "characters", "true_label": "t"},
    ):
        resp = post(client, "/correct", body)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        answer = resp.get_json()
        assert answer["status"] == "success" and answer["message"]
        assert answer["stored"] is True and answer["correction_id"]
    after = post(client, "/stats", {}).get_json()
    assert (after["digits"], after["chars"]) == (1, 2)


def test_seed_failures_carry_the_fields_its_page_reads(client):
    bad = post(client, "/predict", {"data_url": "data:image/png;base64,!!", "mode": "digits"})
    assert bad.status_code == 400
    assert bad.get_json()["error"]["code"] == "invalid_image"  # the page shows `error`
    no_label = post(client, "/correct", {"data_url": canvas_data_url(SEVEN), "mode": "digits"})
    assert no_label.status_code == 400
    body = no_label.get_json()
    assert body["status"] == "error" and body["message"] == body["error"]["message"]
    wrong_mode = post(
        client, "/correct", {"data_url": canvas_data_url(SEVEN), "mode": "x", "true_label": "7"}
    )
    assert wrong_mode.get_json()["status"] == "error"
    assert wrong_mode.get_json()["error"]["code"] == "invalid_mode"


def test_seed_requests_pass_the_same_origin_checks_and_others_do_not(client):
    body = {"data_url": canvas_data_url(SEVEN), "mode": "digits"}
    for path in ("/predict", "/correct", "/stats"):
        other = client.post(
            path, json=body, headers={"Origin": "http://evil.example", "Host": "localhost"}
        )
        assert other.status_code == 403, path
        form = client.post(path, data={"x": "1"}, headers=BROWSER)
        assert form.status_code == 415, path
    assert post(client, "/stats", {}).get_json()["digits"] == 0
