"""The Flask app through its test client: every route, the error shape, durability, the config."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest

from edge.app import close_app, create_app, store_path
from edge.config import ConfigError, EdgeConfig, load_config
from edge.models import ModelLoadError, check_models
from edge.personal import normalise_rows
from hwrcore.preprocess import strokes_to_input, strokes_to_png
from hwrcore.store import Correction, CorrectionStore, read_store
from tests.models import require_models

ROOT = Path(__file__).resolve().parent.parent
SEVEN = [[[60.0, 50.0], [220.0, 50.0], [130.0, 240.0]]]
LETTER_T = [[[50.0, 50.0], [230.0, 50.0]], [[140.0, 50.0], [140.0, 250.0]]]
MARK = 137.913  # a coordinate that must never reach the log


def edge_models() -> Path:
    """The shipped models (skips the test when models_export/ has none)."""
    return require_models()


@pytest.fixture(scope="module")
def models_path() -> Path:
    d = edge_models()
    if not (d / "digits.json").is_file():
        pytest.skip(f"no models in {d}")
    return d


@pytest.fixture
def web_dir(tmp_path) -> Path:
    web = tmp_path / "web"
    (web / "static").mkdir(parents=True)
    (web / "index.html").write_text("<!doctype html><title>canvas</title>")
    (web / "static" / "app.js").write_text("console.log('local');\n")
    return web


@pytest.fixture
def config(tmp_path, models_path, web_dir) -> EdgeConfig:
    return EdgeConfig(
        data_dir=tmp_path / "data", models_dir=models_path, web_dir=web_dir, max_body_bytes=64_000
    )


@pytest.fixture
def app(config):
    app = create_app(config)
    yield app
    close_app(app)


@pytest.fixture
def client(app):
    return app.test_client()


def png(strokes, data_url=True) -> str:
    text = base64.b64encode(strokes_to_png(strokes)).decode()
    return "data:image/png;base64," + text if data_url else text


def assert_error(resp, status: int, code: str) -> None:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    assert resp.get_json() == {
        "error": {"code": code, "message": resp.get_json()["error"]["message"]}
    }
    assert resp.get_json()["error"]["message"]


def test_canvas_page_and_assets_are_served_locally(client):
    with client.get("/") as page:
        assert page.status_code == 200 and b"canvas" in page.data
        assert page.mimetype == "text/html"
    with client.get("/static/app.js") as js:
        assert js.status_code == 200 and b"local" in js.data
        assert js.headers["X-Content-Type-Options"] == "nosniff"
    assert_error(client.get("/static/missing.js"), 404, "not_found")
    assert_error(client.get("/static/../index.html"), 404, "not_found")
    assert_error(client.get("/static/%2e%2e/index.html"), 404, "not_found")


def test_the_repository_canvas_page_is_served(models_path, tmp_path):
    if not (ROOT / "web" / "index.html").is_file():
        pytest.skip("web/index.html is not there yet")
    app = create_app(EdgeConfig(data_dir=tmp_path, models_dir=models_path))
    try:
        with app.test_client().get("/") as page:
            assert page.status_code == 200 and page.mimetype == "text/html"
    finally:
        close_app(app)


@pytest.mark.parametrize("mode,strokes", [("digit", SEVEN), ("char", LETTER_T)])
def test_api_predict(client, mode, strokes):
    resp = client.post("/api/predict", json={"mode": mode, "strokes": strokes, "seq": 5})
    assert resp.status_code == 200
    body = resp.get_json()
    assert {"id", "label", "confidence", "top", "source", "model", "ms"} <= set(body)
    assert "type" not in body and "seq" not in body
    assert len(body["top"]) == 3 and body["top"][0]["label"] == body["label"]
    assert set(body["model"]) == {"name", "version"}
    img = client.post("/api/predict", json={"mode": mode, "image": png(strokes, False)})
    assert img.status_code == 200 and img.get_json()["model"] == body["model"]


def test_an_answer_sent_again_under_its_id_is_stored_once(models_path, web_dir, tmp_path):
    """The page names its answer (correction_id): sent again after the app restarted before
    answering, it is stored once; the id is one answer's."""
    config = EdgeConfig(data_dir=tmp_path / "data", models_dir=models_path, web_dir=web_dir)
    answer = str(uuid.uuid4())
    app = create_app(config)
    try:
        client = app.test_client()
        pred = client.post("/api/predict", json={"mode": "digit", "strokes": SEVEN}).get_json()
        body = {"id": pred["id"], "label": "1", "correction_id": answer}
        first = client.post("/api/correct", json=body)
        assert first.status_code == 200 and first.get_json()["correction_id"] == answer
    finally:
        close_app(app)  # its answer lost: the page shows "Not saved" and the pupil taps again
    app = create_app(config)
    try:
        client = app.test_client()
        drawing = {"mode": "digit", "strokes": SEVEN, "label": "1", "correction_id": answer}
        again = client.post("/api/correct", json=drawing)  # the prediction id is forgotten
        assert again.status_code == 200 and again.get_json()["correction_id"] == answer
        assert [c.id for c in read_store(store_path(config.data_dir, "digit"))] == [answer]
        other = client.post("/api/correct", json={**drawing, "label": "4"})
        assert_error(other, 409, "invalid_correction_id")
        assert_error(
            client.post("/api/confirm", json={**drawing, "label": "7"}),
            409,
            "invalid_correction_id",
        )
        bad = client.post("/api/correct", json={**drawing, "correction_id": "not-a-uuid"})
        assert_error(bad, 400, "invalid_message")
        client.post("/api/withdraw", json={"correction_id": answer, "by": "pupil"})
        taken = client.post("/api/correct", json=drawing)
        assert_error(taken, 409, "invalid_correction_id")
        assert "taken back" in taken.get_json()["error"]["message"]
        fresh = client.post("/api/correct", json={**drawing, "correction_id": str(uuid.uuid4())})
        assert fresh.status_code == 200
        assert len(read_store(store_path(config.data_dir, "digit"))) == 2
    finally:
        close_app(app)


def test_api_correct_is_durable_when_answered(client, app, config):
    pred = client.post("/api/predict", json={"mode": "digit", "strokes": SEVEN}).get_json()
    resp = client.post("/api/correct", json={"id": pred["id"], "label": "7"})
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["stored"] is True and body["correction_id"]
    # On disk at the moment of the answer: read the files as a new process would.
    on_disk = {c.id: c for c in read_store(store_path(config.data_dir, "digit"))}
    assert on_disk[body["correction_id"]].label == "7"
    assert on_disk[body["correction_id"]].strokes == SEVEN
    by_drawing = client.post(
        "/api/correct", json={"mode": "char", "strokes": LETTER_T, "label": "t"}
    )
    assert by_drawing.status_code == 200
    close_app(app)
    with h5py.File(store_path(config.data_dir, "digit"), "r") as f:
        assert body["correction_id"] in f["id"].asstr()[:].tolist()
    with h5py.File(store_path(config.data_dir, "char"), "r") as f:
        assert f["label"].asstr()[:].tolist() == ["t"]


def test_healthz(client):
    client.post("/api/correct", json={"mode": "digit", "strokes": SEVEN, "label": "7"})
    resp = client.get("/healthz")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["status"] == "ok" and body["pending"] == 1
    assert set(body["models"]) == {"digit", "char"}
    assert set(body["models"]["digit"]) == {"name", "version", "labels"}
    assert body["models"]["digit"]["labels"] == list("0123456789")
    assert len(body["models"]["char"]["labels"]) == 37
    assert body["corrections"]["digit"]["count"] == 1
    assert body["corrections"]["char"]["pending"] == 0
    assert body["uptime_s"] >= 0


def test_paper_endpoints_take_json_and_refuse_forms(client):
    form = client.post("/predict", json={"image": png(SEVEN)})
    assert form.status_code == 200
    body = form.get_json()
    assert body["prediction"] == body["label"] and body["model"]["name"]
    as_json = client.post("/predict", json={"image": png(LETTER_T), "mode": "char"})
    assert as_json.status_code == 200
    char_model = client.get("/healthz").get_json()["models"]["char"]
    assert as_json.get_json()["model"]["name"] == char_model["name"]
    corr = client.post("/correct", json={"image": png(SEVEN), "label": "7"})
    assert corr.status_code == 200 and corr.get_json()["stored"] is True
    assert_error(client.post("/predict", json={"mode": "digit"}), 400, "invalid_message")
    # /correct's errors carry the seed page's status and message beside the one error body.
    refused = client.post("/correct", json={"image": png(SEVEN)})
    assert refused.status_code == 400
    assert refused.get_json()["error"]["code"] == "invalid_label"
    assert refused.get_json()["status"] == "error" and refused.get_json()["message"]
    assert_error(client.post("/predict", json={"image": "!!"}), 400, "invalid_image")
    # A form is what any web site can make a browser send: refused.
    form = client.post("/correct", data={"image": png(SEVEN), "label": "7"})
    assert form.status_code == 415
    assert form.get_json()["error"]["code"] == "unsupported_media_type"
    assert_error(
        client.post("/predict", data=b"[1]", content_type="application/json"),
        400,
        "invalid_message",
    )


@pytest.mark.parametrize(
    "body,status,code",
    [
        (b"{", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b"[]", 400, "invalid_message"),
        (json.dumps({"mode": "x", "strokes": SEVEN}).encode(), 400, "invalid_mode"),
        (json.dumps({"mode": "digit", "strokes": []}).encode(), 400, "empty_drawing"),
        (b'{"mode": "digit", "strokes": [[[NaN, 1], [2, 3]]]}', 400, "invalid_drawing"),
        (b'{"mode": "digit", "strokes": [[[1e400, 1], [2, 3]]]}', 400, "invalid_drawing"),
        (b"[" * 30_000 + b"]" * 30_000, 400, "invalid_json"),
    ],
)
def test_api_bad_input(client, body, status, code):
    assert_error(
        client.post("/api/predict", data=body, content_type="application/json"), status, code
    )


def test_api_correct_bad_input(client, app):
    assert_error(
        client.post("/api/correct", json={"id": "f" * 32, "label": "7"}), 404, "unknown_prediction"
    )
    assert_error(
        client.post("/api/correct", json={"mode": "digit", "strokes": SEVEN}), 400, "invalid_label"
    )
    assert_error(
        client.post("/api/correct", json={"mode": "digit", "strokes": SEVEN, "label": "Q"}),
        400,
        "invalid_label",
    )
    ctx = app.extensions["hwr"]
    assert len(ctx.stores["digit"]) == 0 and len(ctx.stores["char"]) == 0


def test_oversized_bodies_get_413(client):
    big = json.dumps({"mode": "digit", "strokes": SEVEN, "pad": "x" * 70_000})
    assert_error(
        client.post("/api/predict", data=big, content_type="application/json"), 413, "too_large"
    )
    assert_error(client.post("/predict", json={"image": "A" * 70_000}), 413, "too_large")


def test_framework_errors_share_the_error_shape(client, app):
    assert_error(client.get("/nowhere"), 404, "not_found")
    resp = client.get("/api/predict")
    assert_error(resp, 405, "method_not_allowed")
    assert "POST" in resp.headers["Allow"]
    assert_error(client.put("/healthz"), 405, "method_not_allowed")
    assert_error(client.get("/ws"), 400, "bad_request")  # a plain GET is not a WebSocket


def test_unexpected_errors_are_500_with_the_error_shape(config, caplog):
    app = create_app(config)
    try:

        def boom():
            raise RuntimeError("broken")

        def left():
            raise ConnectionResetError(104, "Connection reset by peer")

        app.add_url_rule("/boom", "boom", boom)
        app.add_url_rule("/left", "left", left)
        assert_error(app.test_client().get("/boom"), 500, "internal")
        assert "unexpected error on GET /boom" in caplog.text
        # A client that hangs up mid-request is no error of the server's: no traceback.
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="hwrcore.web_errors"):
            assert_error(app.test_client().get("/left"), 400, "bad_request")
        assert "the client left during GET /left" in caplog.text
        assert "unexpected error" not in caplog.text and "Traceback" not in caplog.text
        ctx = app.extensions["hwr"]
        real = ctx.models["digit"].classifier.predict

        def failing(image):
            raise RuntimeError("interpreter failed")

        object.__setattr__(ctx.models["digit"].classifier, "predict", failing)
        try:
            resp = app.test_client().post("/api/predict", json={"mode": "digit", "strokes": SEVEN})
        finally:
            object.__setattr__(ctx.models["digit"].classifier, "predict", real)
        assert_error(resp, 500, "internal")
    finally:
        close_app(app)


def test_drawings_never_reach_the_log(client, caplog):
    caplog.set_level(logging.DEBUG)
    strokes = [[[MARK, 10.0], [200.0, 250.0]]]
    client.post("/api/predict", json={"mode": "digit", "strokes": strokes})
    client.post("/api/correct", json={"mode": "digit", "strokes": strokes, "label": "1"})
    client.post("/api/predict", json={"mode": "digit", "strokes": [[[MARK, float("nan")]]]})
    client.post("/api/predict", data=f'{{"mode": "digit", "strokes": [[[{MARK}, 1e999]]]}}')
    assert str(MARK) not in caplog.text


def test_shutdown_closes_the_stores_and_refuses_work(app, client):
    close_app(app)
    ctx = app.extensions["hwr"]
    assert all(s.stats()["closed"] for s in ctx.stores.values())
    assert_error(
        client.post("/api/predict", json={"mode": "digit", "strokes": SEVEN}), 503, "unavailable"
    )


def test_restart_keeps_corrections_and_personalisation(config):
    app = create_app(config)
    ids = [
        app.test_client()
        .post("/api/correct", json={"mode": "digit", "strokes": SEVEN, "label": "7"})
        .get_json()["correction_id"]
        for _ in range(2)
    ]
    close_app(app)
    again = create_app(config)
    try:
        ctx = again.extensions["hwr"]
        assert {c.id for c in ctx.stores["digit"].all()} == set(ids)
        assert len(ctx.personalisers["digit"]) == 2
    finally:
        close_app(again)


def test_a_model_update_keeps_personalisation_by_embedding_old_corrections_again(config, caplog):
    app = create_app(config)
    model = app.extensions["hwr"].models["digit"]
    version = model.manifest.version
    close_app(app)
    image = strokes_to_input(SEVEN, model.style)
    rng = np.random.default_rng(0)
    stale, current = rng.normal(size=(2, 128)).astype(np.float32)
    with CorrectionStore(store_path(config.data_dir, "digit")) as store:
        for label, emb, ver in (
            ("7", stale, "0.0.1"),
            ("1", None, version),
            ("4", current, version),
        ):
            store.add(
                Correction(
                    id=str(uuid.uuid4()),
                    label=label,
                    image=image,
                    strokes=SEVEN,
                    predicted="7",
                    confidence=0.9,
                    model_version=ver,
                    created=1.7e9,
                    embedding=emb,
                )
            )
    again = create_app(config)
    try:
        pers = again.extensions["hwr"].personalisers["digit"]
        assert len(pers) == 3
        fresh = normalise_rows(model.classifier.predict(image).embedding[None, :])[0]
        rows = pers._emb[: len(pers)]  # what the vote compares against, oldest first
        # The old version's vector and the missing one are the model's own for the stored input;
        # a vector of this version is kept as it was stored.
        np.testing.assert_allclose(rows[0], fresh, atol=1e-6)
        np.testing.assert_allclose(rows[1], fresh, atol=1e-6)
        np.testing.assert_allclose(rows[2], normalise_rows(current[None, :])[0], atol=1e-6)
    finally:
        close_app(again)
    # The new embeddings were kept: the store now says this version made all three, and the
    # next start computes none of them again.
    stored = read_store(store_path(config.data_dir, "digit"))
    assert [c.embedded_by for c in stored] == [version] * 3
    assert [c.model_version for c in stored] == ["0.0.1", version, version]
    np.testing.assert_allclose(normalise_rows(stored[0].embedding[None, :])[0], fresh, atol=1e-6)
    with caplog.at_level(logging.INFO, logger="edge.app"):
        third = create_app(config)
    close_app(third)
    assert "3 stored corrections (0 embedded again" in caplog.text


def test_missing_or_damaged_models_name_the_file(tmp_path, models_path):
    with pytest.raises(ModelLoadError, match="digits.json"):
        check_models(tmp_path)
    for name in ("digits.json", "digits.tflite", "characters.json", "characters.tflite"):
        (tmp_path / name).write_bytes((models_path / name).read_bytes())
    check_models(tmp_path)
    blob = bytearray((tmp_path / "characters.tflite").read_bytes())
    blob[-1] ^= 0xFF
    (tmp_path / "characters.tflite").write_bytes(bytes(blob))
    with pytest.raises(ModelLoadError, match="characters.tflite fails its sha256"):
        check_models(tmp_path)
    with pytest.raises(ModelLoadError, match="sha256"):
        create_app(EdgeConfig(data_dir=tmp_path / "d", models_dir=tmp_path))


def test_the_app_never_imports_tensorflow(tmp_path, models_path):
    code = textwrap.dedent(
        f"""
        import sys
        from edge.app import create_app, close_app
        from edge.config import EdgeConfig
        import edge.cli
        app = create_app(EdgeConfig(data_dir={str(tmp_path)!r}, models_dir={str(models_path)!r}))
        r = app.test_client().post("/api/predict", json={{"mode": "digit", "strokes": [[[0, 0], [9, 30]]]}})
        assert r.status_code == 200, r.data
        close_app(app)
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- configuration --------------------------------------------------------------------------


def test_config_layers_defaults_toml_env_flags(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    base = load_config(env={})
    assert (base.host, base.port, base.threads) == ("127.0.0.1", 8000, 32)
    assert base.data_dir == tmp_path / "xdg" / "hwr-edge"
    assert base.models_dir == ROOT / "models_export"
    toml = tmp_path / "edge.toml"
    toml.write_text(
        'port = 9000\nhost = "0.0.0.0"\ncorrection_cap = 10\nws_messages_per_second = 5\n'
    )
    cfg = load_config(toml, env={"HWR_EDGE_PORT": "9100", "OTHER": "x"}, overrides={"port": None})
    assert (cfg.port, cfg.host, cfg.correction_cap, cfg.ws_messages_per_second) == (
        9100,
        "0.0.0.0",
        10,
        5.0,
    )
    cfg = load_config(
        toml, env={"HWR_EDGE_PORT": "9100"}, overrides={"port": 9200, "data_dir": tmp_path}
    )
    assert cfg.port == 9200 and cfg.data_dir == tmp_path
    table = tmp_path / "table.toml"
    table.write_text("[edge]\nthreads = 8\n")
    assert load_config(table, env={}).threads == 8


@pytest.mark.parametrize(
    "toml,env,match",
    [
        ("prot = 1\n", {}, "unknown setting 'prot'"),
        ("", {"HWR_EDGE_TREADS": "4"}, "unknown setting 'treads'"),
        ('port = "eighty"\n', {}, "port"),
        ("", {"HWR_EDGE_PORT": "eighty"}, "port"),
        ("port = 70000\n", {}, "port must be"),
        ("threads = 0\n", {}, "threads must be at least 1, got 0"),
        ("sync_interval = -1.0\n", {}, "sync_interval must be positive, got -1.0"),
        ("ws_messages_per_second = nan\n", {}, "ws_messages_per_second must be positive"),
        ('log_level = "loud"\n', {}, "log_level must be"),
        ("max_body_bytes = 1.5\n", {}, "max_body_bytes"),
        ("port = [", {}, "not readable TOML"),
    ],
)
def test_config_rejects_unknown_keys_and_bad_values(tmp_path, toml, env, match):
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=match):
        load_config(path, env=env)


def test_relative_folders_name_folders_of_the_start_directory(
    tmp_path, models_path, web_dir, monkeypatch
):
    """``--web-dir web --data-dir data``: the canvas page is served, corrections land there."""
    monkeypatch.chdir(tmp_path)
    config = EdgeConfig(data_dir="data", models_dir=models_path, web_dir="web")
    assert (config.data_dir, config.web_dir) == (tmp_path / "data", tmp_path / "web")
    a = create_app(config)
    try:
        c = a.test_client()
        for path in ("/", "/static/app.js"):
            with c.get(path) as r:
                assert r.status_code == 200, path
    finally:
        close_app(a)


def test_config_file_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", env={})


def test_effective_config_is_logged(config, caplog):
    caplog.set_level(logging.INFO, logger="edge.app")
    app = create_app(config)
    close_app(app)
    assert "effective config" in caplog.text and str(config.data_dir) in caplog.text


def test_env_is_used_when_no_config_is_given(tmp_path, models_path, monkeypatch):
    monkeypatch.setenv("HWR_EDGE_DATA_DIR", str(tmp_path / "envdata"))
    monkeypatch.setenv("HWR_EDGE_MODELS_DIR", str(models_path))
    app = create_app()
    try:
        assert app.config["HWR_CONFIG"].data_dir == tmp_path / "envdata"
        assert os.path.exists(tmp_path / "envdata" / "custom_digits.h5")
    finally:
        close_app(app)
