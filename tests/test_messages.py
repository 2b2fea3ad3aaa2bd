"""handle_message on real models and real stores: predictions, corrections, and every bad input."""

from __future__ import annotations

import base64
import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from edge.app import store_path
from edge.messages import Context, RecentPredictions, Served, handle_message
from edge.models import load_models
from edge.personal import Personaliser
from hwrcore.preprocess import strokes_to_png
from hwrcore.store import CorrectionStore
from tests.models import require_models

ROOT = Path(__file__).resolve().parent.parent
SEVEN = [[[60.0, 50.0], [220.0, 50.0], [130.0, 240.0]]]
FOUR = [[[150.0, 40.0], [60.0, 170.0], [210.0, 170.0]], [[170.0, 100.0], [165.0, 250.0]]]
LETTER_T = [[[50.0, 50.0], [230.0, 50.0]], [[140.0, 50.0], [140.0, 250.0]]]
# A coordinate that must never appear in a log line or an error message.
MARK = 137.913


def edge_models() -> Path:
    """The shipped models (skips the test when models_export/ has none)."""
    return require_models()


@pytest.fixture(scope="module")
def models():
    return load_models(edge_models())


@pytest.fixture
def ctx(models, tmp_path):
    stores = {mode: CorrectionStore(store_path(tmp_path, mode)) for mode in models}
    personalisers = {mode: Personaliser(m.labels) for mode, m in models.items()}
    c = Context(models, stores, personalisers, RecentPredictions(50))
    yield c
    c.close()


def png(strokes, data_url: bool = False) -> str:
    text = base64.b64encode(strokes_to_png(strokes)).decode()
    return "data:image/png;base64," + text if data_url else text


def assert_prediction(reply: dict, mode: str, models, seq=None) -> None:
    assert reply["type"] == "prediction", reply
    assert reply["seq"] == seq
    labels = models[mode].labels
    assert isinstance(reply["id"], str) and len(reply["id"]) == 32
    assert reply["label"] in labels
    top = reply["top"]
    assert len(top) == 3 and all(t["label"] in labels for t in top)
    ps = [t["p"] for t in top]
    assert ps == sorted(ps, reverse=True) and 0 <= ps[-1] and sum(ps) <= 1.0001
    assert (top[0]["label"], top[0]["p"]) == (reply["label"], reply["confidence"])
    assert reply["source"] in ("model", "personal")
    assert reply["model"] == {
        "name": models[mode].manifest.name,
        "version": models[mode].manifest.version,
    }
    assert reply["ms"] >= 0


@pytest.mark.parametrize("mode,strokes", [("digit", SEVEN), ("char", LETTER_T)])
def test_predict_strokes(ctx, models, mode, strokes):
    reply = handle_message({"type": "predict", "seq": 4, "mode": mode, "strokes": strokes}, ctx)
    assert_prediction(reply, mode, models, seq=4)
    recent = ctx.recent.get(reply["id"])
    assert recent.mode == mode and json.loads(recent.strokes) == strokes
    assert recent.image.shape == (28, 28) and recent.label == reply["label"]


@pytest.mark.parametrize("mode,strokes", [("digit", FOUR), ("char", LETTER_T)])
@pytest.mark.parametrize("data_url", [False, True])
def test_predict_image(ctx, models, mode, strokes, data_url):
    reply = handle_message({"type": "predict", "mode": mode, "image": png(strokes, data_url)}, ctx)
    assert_prediction(reply, mode, models)
    assert ctx.recent.get(reply["id"]).strokes is None


def test_strokes_and_their_png_predict_alike(ctx):
    a = handle_message({"type": "predict", "mode": "digit", "strokes": FOUR}, ctx)
    b = handle_message({"type": "predict", "mode": "digit", "image": png(FOUR)}, ctx)
    ia, ib = ctx.recent.get(a["id"]).image, ctx.recent.get(b["id"]).image
    assert float(np.abs(ia - ib).mean()) < 0.08


def test_correct_by_id_stores_the_drawing_with_its_prediction(ctx, models):
    pred = handle_message({"type": "predict", "seq": 1, "mode": "digit", "strokes": SEVEN}, ctx)
    reply = handle_message({"type": "correct", "seq": 2, "id": pred["id"], "label": "7"}, ctx)
    assert reply["type"] == "corrected" and reply["seq"] == 2 and reply["stored"] is True
    assert reply["pending"] == 1 and reply["label"] == "7"
    c = ctx.stores["digit"].get(reply["correction_id"])
    assert c is not None and c.label == "7"
    assert c.predicted == pred["label"] and c.confidence == pytest.approx(pred["confidence"])
    assert c.strokes == SEVEN and c.image.shape == (28, 28)
    assert c.model_version == models["digit"].manifest.version
    assert c.embedding is not None and c.embedding.ndim == 1 and not c.synced
    assert np.array_equal(c.image, ctx.recent.get(pred["id"]).image)
    assert len(ctx.stores["char"]) == 0


def test_correct_by_drawing(ctx):
    reply = handle_message(
        {"type": "correct", "mode": "char", "strokes": LETTER_T, "label": "t"}, ctx
    )
    assert reply["type"] == "corrected", reply
    c = ctx.stores["char"].get(reply["correction_id"])
    assert c.label == "t" and c.strokes == LETTER_T and c.predicted
    img = handle_message(
        {"type": "correct", "mode": "digit", "image": png(FOUR, True), "label": "4"}, ctx
    )
    assert img["type"] == "corrected", img
    c = ctx.stores["digit"].get(img["correction_id"])
    assert c.label == "4" and c.strokes is None


@pytest.mark.parametrize(
    "typed,stored", [("o", "O"), ("O", "O"), ("a", "a"), ("A", "A"), ("s", "S")]
)
def test_letters_map_onto_their_class(ctx, typed, stored):
    reply = handle_message(
        {"type": "correct", "mode": "char", "strokes": LETTER_T, "label": typed}, ctx
    )
    assert reply["label"] == stored
    assert ctx.stores["char"].get(reply["correction_id"]).label == stored


def test_repeated_correction_is_stored_once_and_a_change_is_refused(ctx):
    pred = handle_message({"type": "predict", "mode": "digit", "strokes": SEVEN}, ctx)
    first = handle_message({"type": "correct", "id": pred["id"], "label": "7"}, ctx)
    again = handle_message({"type": "correct", "id": pred["id"], "label": "7"}, ctx)
    assert again["correction_id"] == first["correction_id"]
    other = handle_message({"type": "correct", "id": pred["id"], "label": "1"}, ctx)
    assert other["type"] == "error" and other["error"]["code"] == "already_corrected"
    assert len(ctx.stores["digit"]) == 1


def test_corrections_personalise_later_predictions(ctx, models):
    # A full-weight vote: the calibrated defaults may rightly keep a confident model's answer,
    # and this checks the wiring from corrections to later predictions.
    ctx.swap("digit", Served(models["digit"], Personaliser(models["digit"].labels, weight=1.0)))
    pred = handle_message({"type": "predict", "mode": "digit", "strokes": FOUR}, ctx)
    target = next(lab for lab in models["digit"].labels if lab != pred["label"])
    for _ in range(3):
        handle_message({"type": "correct", "mode": "digit", "strokes": FOUR, "label": target}, ctx)
    assert len(ctx.personalisers["digit"]) == 3
    again = handle_message({"type": "predict", "mode": "digit", "strokes": FOUR}, ctx)
    assert again["label"] == target and again["source"] == "personal"


def test_health(ctx, models):
    handle_message({"type": "correct", "mode": "digit", "strokes": SEVEN, "label": "7"}, ctx)
    reply = handle_message({"type": "health", "seq": 9}, ctx)
    assert reply["type"] == "health" and reply["seq"] == 9 and reply["status"] == "ok"
    assert reply["models"]["digit"]["version"] == models["digit"].manifest.version
    assert reply["models"]["char"]["name"] == models["char"].manifest.name
    assert reply["pending"] == 1
    assert reply["corrections"]["digit"]["count"] == 1
    assert reply["corrections"]["char"]["count"] == 0
    assert reply["uptime_s"] >= 0


def _many_points(n):
    return [[[float(i % 200), float(i // 200)] for i in range(n)]]


BAD = [
    ([1, 2], "invalid_message"),
    ("predict", "invalid_message"),
    ({"type": "guess", "mode": "digit", "strokes": SEVEN}, "unknown_type"),
    ({"mode": "digit", "strokes": SEVEN}, "unknown_type"),
    ({"type": "predict", "seq": "1", "mode": "digit", "strokes": SEVEN}, "invalid_message"),
    ({"type": "predict", "strokes": SEVEN}, "invalid_mode"),
    ({"type": "predict", "mode": "letters", "strokes": SEVEN}, "invalid_mode"),
    ({"type": "predict", "mode": ["digit"], "strokes": SEVEN}, "invalid_mode"),
    ({"type": "predict", "mode": "digit"}, "invalid_message"),
    ({"type": "predict", "mode": "digit", "strokes": SEVEN, "image": "aGk="}, "invalid_message"),
    ({"type": "predict", "mode": "digit", "strokes": []}, "empty_drawing"),
    ({"type": "predict", "mode": "digit", "strokes": [[], []]}, "empty_drawing"),
    ({"type": "predict", "mode": "digit", "strokes": "1,2"}, "invalid_drawing"),
    ({"type": "predict", "mode": "digit", "strokes": [[[1, 2, 3]]]}, "invalid_drawing"),
    ({"type": "predict", "mode": "digit", "strokes": [[["1", 2]]]}, "invalid_drawing"),
    ({"type": "predict", "mode": "digit", "strokes": [[[True, 2], [3, 4]]]}, "invalid_drawing"),
    (
        {"type": "predict", "mode": "digit", "strokes": [[[float("nan"), MARK], [9, 9]]]},
        "invalid_drawing",
    ),
    (
        {"type": "predict", "mode": "digit", "strokes": [[[float("inf"), 1], [9, 9]]]},
        "invalid_drawing",
    ),
    ({"type": "predict", "mode": "digit", "strokes": [[[1e12, MARK], [9, 9]]]}, "out_of_range"),
    ({"type": "predict", "mode": "digit", "strokes": [[[10**400, 1], [9, 9]]]}, "out_of_range"),
    (
        {"type": "predict", "mode": "digit", "strokes": [[[i, i], [i + 5, i]] for i in range(65)]},
        "too_many_strokes",
    ),
    ({"type": "predict", "mode": "digit", "strokes": _many_points(5000)}, "too_many_points"),
    ({"type": "predict", "mode": "digit", "strokes": [[[5, 5], [5.5, 5.5]]]}, "drawing_too_small"),
    ({"type": "predict", "mode": "digit", "image": "not base64 at all!"}, "invalid_image"),
    (
        {"type": "predict", "mode": "digit", "image": base64.b64encode(b"GIF89a....").decode()},
        "invalid_image",
    ),
    ({"type": "predict", "mode": "digit", "image": 12}, "invalid_image"),
    ({"type": "correct", "mode": "digit", "strokes": SEVEN}, "invalid_label"),
    ({"type": "correct", "mode": "digit", "strokes": SEVEN, "label": "77"}, "invalid_label"),
    ({"type": "correct", "mode": "digit", "strokes": SEVEN, "label": "x"}, "invalid_label"),
    ({"type": "correct", "mode": "digit", "strokes": SEVEN, "label": 7}, "invalid_label"),
    ({"type": "correct", "mode": "char", "strokes": LETTER_T, "label": "7"}, "invalid_label"),
    ({"type": "correct", "mode": "char", "strokes": LETTER_T, "label": "\u00e9"}, "invalid_label"),
    ({"type": "correct", "id": "0" * 32, "label": "7"}, "unknown_prediction"),
    ({"type": "correct", "id": 17, "label": "7"}, "invalid_message"),
    ({"type": "correct", "id": "x" * 500, "label": "7"}, "invalid_message"),
    ({"type": "correct", "mode": "digit", "label": "7"}, "invalid_message"),
    ({"type": "correct", "label": "7"}, "invalid_mode"),
    ({"type": "correct", "mode": "digit", "strokes": [], "label": "7"}, "empty_drawing"),
    (
        {"type": "correct", "mode": "digit", "strokes": [[[MARK, 1e9], [1, 1]]], "label": "7"},
        "out_of_range",
    ),
]


@pytest.mark.parametrize("msg,code", BAD, ids=[f"{i}-{c}" for i, (_, c) in enumerate(BAD)])
def test_bad_input_gets_its_code_and_stores_nothing(ctx, msg, code, caplog):
    caplog.set_level(logging.DEBUG)
    reply = handle_message(msg, ctx)
    assert reply["type"] == "error", reply
    assert reply["error"]["code"] == code, reply
    assert set(reply) == {"type", "seq", "error"} and isinstance(reply["error"]["message"], str)
    if isinstance(msg, dict) and isinstance(msg.get("seq"), int):
        assert reply["seq"] == msg["seq"]
    assert len(ctx.stores["digit"]) == 0 and len(ctx.stores["char"]) == 0
    assert str(MARK) not in caplog.text


def test_blank_png_is_an_empty_drawing(ctx):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (280, 280), 255).save(buf, format="PNG")
    reply = handle_message(
        {"type": "predict", "mode": "digit", "image": base64.b64encode(buf.getvalue()).decode()},
        ctx,
    )
    assert reply["error"]["code"] == "empty_drawing"


def test_correction_of_a_forgotten_prediction_is_refused(models, tmp_path):
    stores = {m: CorrectionStore(store_path(tmp_path, m)) for m in models}
    c = Context(models, stores, {}, RecentPredictions(2))
    try:
        ids = [
            handle_message({"type": "predict", "mode": "digit", "strokes": SEVEN}, c)["id"]
            for _ in range(3)
        ]
        assert len(c.recent) == 2
        gone = handle_message({"type": "correct", "id": ids[0], "label": "7"}, c)
        assert gone["error"]["code"] == "unknown_prediction"
        kept = handle_message({"type": "correct", "id": ids[2], "label": "7"}, c)
        assert kept["type"] == "corrected"
    finally:
        c.close()


def test_recent_predictions_forget_the_least_recently_used():
    r = RecentPredictions(2)
    r.put("a", "A")  # type: ignore[arg-type]
    r.put("b", "B")  # type: ignore[arg-type]
    assert r.get("a") == "A"  # a is now the most recent
    r.put("c", "C")  # type: ignore[arg-type]
    assert r.get("b") is None and r.get("a") == "A" and r.get("c") == "C"


def test_mode_must_match_the_prediction(ctx):
    pred = handle_message({"type": "predict", "mode": "digit", "strokes": SEVEN}, ctx)
    reply = handle_message({"type": "correct", "id": pred["id"], "mode": "char", "label": "A"}, ctx)
    assert reply["error"]["code"] == "invalid_mode"
    both = handle_message(
        {"type": "correct", "id": pred["id"], "strokes": SEVEN, "label": "7"}, ctx
    )
    assert both["error"]["code"] == "invalid_message"
    assert len(ctx.stores["digit"]) == 0


def test_a_closed_store_answers_unavailable(ctx):
    ctx.stores["digit"].close()
    reply = handle_message(
        {"type": "correct", "mode": "digit", "strokes": SEVEN, "label": "7"}, ctx
    )
    assert reply["type"] == "error" and reply["error"]["code"] == "unavailable"
    # The other mode's store still works.
    ok = handle_message({"type": "correct", "mode": "char", "strokes": LETTER_T, "label": "T"}, ctx)
    assert ok["type"] == "corrected"


def test_shutting_down_answers_unavailable(ctx):
    ctx.closing.set()
    reply = handle_message({"type": "predict", "seq": 3, "mode": "digit", "strokes": SEVEN}, ctx)
    assert reply["error"]["code"] == "unavailable" and reply["seq"] == 3


def test_concurrent_predictions_and_corrections(ctx, models):
    errors: list[object] = []

    def work(i: int) -> None:
        for _ in range(10):
            p = handle_message({"type": "predict", "mode": "digit", "strokes": SEVEN}, ctx)
            if p["type"] != "prediction":
                errors.append(p)
                continue
            c = handle_message({"type": "correct", "id": p["id"], "label": str(i)}, ctx)
            if c["type"] != "corrected":
                errors.append(c)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(ctx.stores["digit"]) == 40 and len(ctx.personalisers["digit"]) == 40


def test_trained_digit_model_reads_pendigits_strokes(data_dir):
    shipped = ROOT / "models_export"
    if not (shipped / "digits.json").is_file():
        pytest.skip("needs the trained digit model in models_export/")
    from edge.models import load_model
    from trainer.data import load_pendigits

    samples = load_pendigits(data_dir, "test")[::10]
    c = Context({"digit": load_model(shipped, "digit")}, {}, {}, RecentPredictions(10))
    right = sum(
        handle_message({"type": "predict", "mode": "digit", "strokes": s.strokes}, c)["label"]
        == str(s.label)
        for s in samples
    )
    assert right / len(samples) > 0.9, f"{right}/{len(samples)}"
