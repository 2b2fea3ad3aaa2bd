"""The wire's one error shape, its codes and statuses, and the message-shape helpers, pinned here."""

from __future__ import annotations

import json

import pytest

from hwrcore import protocol
from hwrcore.errors import HwrError


def test_error_body_is_the_one_shape():
    body = protocol.error_body("invalid_mode", "mode must be digit or char")
    assert body == {"error": {"code": "invalid_mode", "message": "mode must be digit or char"}}
    assert json.loads(json.dumps(body)) == body


def test_error_message_wraps_the_body_with_type_and_seq():
    msg = protocol.error_message("rate_limited", "slow down", seq=7)
    assert msg == {
        "type": "error",
        "seq": 7,
        "error": {"code": "rate_limited", "message": "slow down"},
    }
    assert protocol.error_message("invalid_json", "x")["seq"] is None


def test_every_code_has_an_error_status():
    assert protocol.STATUS, "no codes listed"
    for code, status in protocol.STATUS.items():
        assert code == code.lower() and " " not in code
        assert 400 <= status <= 599, code
    client = {c for c, s in protocol.STATUS.items() if s < 500}
    assert {"invalid_json", "invalid_mode", "invalid_label", "empty_drawing", "too_large"} <= client


@pytest.mark.parametrize(
    "code,status",
    [
        ("invalid_json", 400),
        ("unknown_prediction", 404),
        ("method_not_allowed", 405),
        ("already_corrected", 409),
        ("too_large", 413),
        ("rate_limited", 429),
        ("internal", 500),
        ("unavailable", 503),
        ("some_code_from_elsewhere", 400),
    ],
)
def test_http_status(code, status):
    assert protocol.http_status(code) == status


@pytest.mark.parametrize(
    "text",
    [b"{", b"", b"\xff\xfe\x00", "[" * 100_000, b"{'single': 'quotes'}", "NaN-ish", b"1 2"],
)
def test_parse_json_rejects_anything_undecodable(text):
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.parse_json(text)
    assert err.value.code == "invalid_json"
    assert isinstance(err.value, HwrError)


def test_parse_json_decodes_objects():
    assert protocol.parse_json(b'{"type": "predict", "seq": 1}') == {"type": "predict", "seq": 1}


@pytest.mark.parametrize("value", [[], "x", 1, None, True])
def test_require_object(value):
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.require_object(value)
    assert err.value.code == "invalid_message"


@pytest.mark.parametrize(
    "seq,ok",
    [
        (None, True),
        (0, True),
        (2**53, True),
        (-5, True),
        (2**53 + 1, False),
        (1.5, False),
        ("3", False),
        (True, False),
    ],
)
def test_seq(seq, ok):
    msg = {} if seq is None else {"seq": seq}
    if ok:
        assert protocol.get_seq(msg) == seq
    else:
        with pytest.raises(protocol.ProtocolError):
            protocol.get_seq(msg)


def test_type_and_mode():
    assert protocol.get_type({"type": "predict"}) == "predict"
    assert protocol.get_mode({"mode": "char"}) == "char"
    for bad in ({"type": "predikt"}, {}, {"type": ["predict"]}):
        with pytest.raises(protocol.ProtocolError) as err:
            protocol.get_type(bad)
        assert err.value.code == "unknown_type"
    for bad in ({"mode": "letters"}, {}, {"mode": 1}):
        with pytest.raises(protocol.ProtocolError) as err:
            protocol.get_mode(bad)
        assert err.value.code == "invalid_mode"


def test_label_and_id():
    assert protocol.get_label({"label": "7"}) == "7"
    for bad in ({}, {"label": ""}, {"label": 7}, {"label": None}):
        with pytest.raises(protocol.ProtocolError) as err:
            protocol.get_label(bad)
        assert err.value.code == "invalid_label"
    assert protocol.get_prediction_id({}) is None
    assert protocol.get_prediction_id({"id": "abc"}) == "abc"
    for bad in ({"id": 3}, {"id": ""}, {"id": "x" * 65}):
        with pytest.raises(protocol.ProtocolError):
            protocol.get_prediction_id(bad)


def test_drawing_is_exactly_one_of_strokes_or_image():
    strokes = [[[0, 0], [1, 1]]]
    assert protocol.get_drawing({"strokes": strokes}) == ("strokes", strokes)
    assert protocol.get_drawing({"image": "aGk="}) == ("image", "aGk=")
    cases = {
        "invalid_message": [{}, {"strokes": strokes, "image": "aGk="}],
        "invalid_drawing": [{"strokes": "0,0"}, {"strokes": {"x": 1}}],
        "invalid_image": [{"image": 5}, {"image": ["a"]}],
    }
    for code, msgs in cases.items():
        for msg in msgs:
            with pytest.raises(protocol.ProtocolError) as err:
                protocol.get_drawing(msg)
            assert err.value.code == code, msg


def test_error_messages_never_echo_a_drawing():
    secret = [[[123456.789, 1.0]]]
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.get_label({"label": secret})
    assert "123456" not in err.value.message
