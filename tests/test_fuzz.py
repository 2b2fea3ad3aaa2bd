"""Generated messages: handle_message never raises or stores junk; the running server never answers 5xx."""

from __future__ import annotations

import base64
import json
import math
from urllib.parse import quote

import numpy as np
import pytest
import requests
import websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.app import store_path
from edge.messages import Context, RecentPredictions, handle_message
from edge.models import load_models
from edge.personal import Personaliser
from hwrcore import protocol
from hwrcore.labels import label_set_for_mode
from hwrcore.preprocess import strokes_to_png, validate_strokes
from hwrcore.store import CorrectionStore
from tests.test_edge_process import Edge, edge_models

RECENT = "<a recent prediction id>"
ANSWER_TYPES = {"prediction", "corrected", "health", "error"}

coordinate = st.one_of(
    st.floats(min_value=0, max_value=280),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, 1e6, -1e6, 100_000.0, 10**400]),
)
point = st.one_of(
    st.lists(coordinate, min_size=2, max_size=2),
    st.lists(coordinate, max_size=3),
    st.tuples(st.text(max_size=2), coordinate).map(list),
    st.none(),
)
stroke = st.one_of(st.lists(point, max_size=40), st.text(max_size=5), st.integers())
strokes = st.one_of(
    st.lists(stroke, max_size=6), st.lists(st.lists(point, max_size=3), max_size=70)
)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)
good_png = st.sampled_from(
    [
        base64.b64encode(strokes_to_png([[[60.0, 50.0], [220.0, 50.0], [130.0, 240.0]]])).decode(),
        "data:image/png;base64,"
        + base64.b64encode(strokes_to_png([[[140.0, 30.0], [142.0, 250.0]]])).decode(),
    ]
)
image = st.one_of(
    good_png,
    st.text(max_size=40),
    st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
    json_value,
)
label = st.one_of(
    st.sampled_from(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrtcosxyz")),
    st.text(max_size=3),
    json_value,
)
message = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(st.sampled_from(["predict", "correct", "health"]), json_value),
        "seq": st.one_of(st.integers(), json_value),
        "mode": st.one_of(st.sampled_from(["digit", "char"]), json_value),
        "strokes": st.one_of(strokes, json_value),
        "image": image,
        "label": label,
        "id": st.one_of(st.just(RECENT), st.text(max_size=40), json_value),
    },
)
anything = st.one_of(message, json_value)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    d = edge_models()
    if not (d / "digits.json").is_file():
        pytest.skip(f"no models in {d}")
    models = load_models(d)
    data = tmp_path_factory.mktemp("fuzz")
    stores = {mode: CorrectionStore(store_path(data, mode)) for mode in models}
    personalisers = {mode: Personaliser(m.labels) for mode, m in models.items()}
    c = Context(models, stores, personalisers, RecentPredictions(100))
    yield c
    c.close()


def _check_stored(ctx: Context) -> None:
    """Every stored correction is a real drawing with a label of its model."""
    for mode, store in ctx.stores.items():
        labels = set(ctx.models[mode].labels)
        for c in store.all():
            assert c.label in labels and label_set_for_mode(mode).canonical(c.label) == c.label
            assert c.image.shape == (28, 28) and np.all(np.isfinite(c.image))
            assert 0.0 <= float(c.image.min()) and float(c.image.max()) <= 1.0
            assert float(c.image.max()) > 0.0
            if c.strokes is not None:
                validate_strokes(c.strokes)
            assert c.predicted in labels and math.isfinite(c.confidence)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msg=anything)
def test_handle_message_never_raises_and_stores_no_junk(ctx, msg):
    if isinstance(msg, dict) and msg.get("id") == RECENT:
        recent = handle_message(
            {"type": "predict", "mode": "digit", "strokes": [[[0, 0], [9, 40]]]}, ctx
        )
        msg = {**msg, "id": recent["id"]}
    before = sum(len(s) for s in ctx.stores.values())
    reply = handle_message(msg, ctx)
    assert isinstance(reply, dict) and reply["type"] in ANSWER_TYPES
    json.dumps(reply, allow_nan=False)
    if reply["type"] == "error":
        assert reply["error"]["code"] in protocol.STATUS and reply["error"]["message"]
        assert reply["error"]["code"] != "internal", reply
    after = sum(len(s) for s in ctx.stores.values())
    if reply["type"] == "corrected":
        assert after - before in (0, 1)
    else:
        assert after == before, reply
    if after != before:
        _check_stored(ctx)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not (edge_models() / "digits.json").is_file():
        pytest.skip(f"no models in {edge_models()}")
    edge = Edge(tmp_path_factory.mktemp("fuzz-server") / "data")
    yield edge
    edge.stop()


PATHS = [
    "/",
    "/api/predict",
    "/api/correct",
    "/predict",
    "/correct",
    "/healthz",
    "/ws",
    "/static/x.js",
]
request_strategy = st.tuples(
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
    st.one_of(
        st.sampled_from(PATHS),
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz/._-%~", max_size=20).map(
            lambda p: "/" + quote(p, safe="/")
        ),
    ),
    st.one_of(
        anything.map(lambda m: ("json", json.dumps(m).encode())),
        st.binary(max_size=200).map(lambda b: ("raw", b)),
        st.dictionaries(
            st.sampled_from(["image", "mode", "label"]), st.text(max_size=20), max_size=3
        ).map(lambda d: ("form", d)),
    ),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(req=request_strategy)
def test_generated_requests_never_get_a_5xx(server, req):
    method, path, (kind, body) = req
    kwargs: dict = {"timeout": 20}
    if kind == "json":
        kwargs.update(data=body, headers={"Content-Type": "application/json"})
    elif kind == "raw":
        kwargs.update(data=body, headers={"Content-Type": "application/octet-stream"})
    else:
        kwargs.update(data=body)
    resp = requests.request(method, server.url.rstrip("/") + path, **kwargs)
    assert resp.status_code < 500, (method, path, resp.status_code, resp.text[:200])
    if resp.status_code >= 400 and method != "HEAD":
        err = resp.json()["error"]
        assert set(err) == {"code", "message"} and err["code"] in protocol.STATUS


@pytest.fixture(scope="module")
def socket_(server):
    ws = websocket.create_connection(server.ws_url, timeout=20)
    yield ws
    ws.close()


frame_strategy = st.one_of(
    message.map(lambda m: ("text", json.dumps(m))),
    st.text(max_size=50).map(lambda t: ("text", t)),
    st.binary(max_size=50).map(lambda b: ("binary", b)),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(frame=frame_strategy)
def test_generated_frames_get_one_answer_each_and_the_socket_stays(socket_, frame):
    kind, data = frame
    if kind == "binary":
        socket_.send_binary(data)
    else:
        socket_.send(data)
    reply = json.loads(socket_.recv())
    assert reply["type"] in ANSWER_TYPES
    if reply["type"] == "error":
        assert reply["error"]["code"] in protocol.STATUS and reply["error"]["code"] != "internal"
