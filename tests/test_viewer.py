"""The viewer's hub (the drawing as events, slow viewers), its sign-in and the tunnel's gate."""

from __future__ import annotations

import json
import time

import pytest

from edge.viewer import LIVE_LIMIT, QUEUE_LIMIT, Viewer, ViewerHub
from edge.viewer_auth import FAILS_PER_CLIENT, FAILS_REMOTE, MAX_CLIENTS_TRACKED, ViewerAuth

DOWN = [[10.0, 10.0], [10.0, 40.0], [10.0, 80.0], [10.0, 120.0]]
ACROSS = [[0.0, 60.0], [40.0, 60.0], [80.0, 60.0]]
PREDICTION = {
    "type": "prediction",
    "seq": 1,
    "id": "f" * 32,
    "mode": "digit",
    "label": "1",
    "confidence": 0.9,
    "top": [{"label": "1", "p": 0.9}],
    "source": "model",
    "model": {"name": "digits", "version": "1.0.0"},
    "ms": 1.0,
}


def predict(hub: ViewerHub, strokes, canvas: str = "ws-a", mode: str = "digit", reply=None):
    """What messages.handle_message publishes for a predict message and its answer."""
    msg = {"type": "predict", "mode": mode, "strokes": json.loads(json.dumps(strokes))}
    hub.publish(canvas, msg, reply or {**PREDICTION, "mode": mode})


def drain(hub: ViewerHub, viewer: Viewer) -> list[dict]:
    return [json.loads(t) for t in hub.next_batch(viewer, 0)]


class Mirror:
    """A viewer that applies the protocol exactly as web/static/viewer.js does."""

    def __init__(self) -> None:
        self.strokes: list[list] = []
        self.seq: int | None = None
        self.waiting = True
        self.prediction = None
        self.correction = None
        self.answer = None
        self.gaps = 0

    def apply(self, msg: dict) -> None:
        kind = msg["type"]
        if kind == "snapshot":
            self.strokes = [list(s) for s in msg["strokes"]]
            self.prediction, self.seq, self.waiting = msg["prediction"], msg["seq"], False
            self.correction = (msg["correction"] or {}).get("label")
            self.answer = msg["answer"]
            return
        if self.waiting:
            return
        if kind == "points":
            if msg["seq"] != self.seq:
                self.gaps += 1
                self.waiting = True
                return
            while len(self.strokes) <= msg["stroke"]:
                self.strokes.append([])
            stroke = self.strokes[msg["stroke"]]
            del stroke[msg["from"] :]
            stroke.extend(msg["points"])
            return
        if msg["seq"] <= self.seq:
            return
        if msg["seq"] != self.seq + 1:
            self.gaps += 1
            self.waiting = True
            return
        self.seq = msg["seq"]
        if kind == "clear":
            self.strokes, self.prediction, self.correction = [], None, None
            if msg.get("closed"):
                self.answer = None
        elif kind == "stroke":
            while len(self.strokes) < msg["stroke"]:
                self.strokes.append([])
            self.strokes[msg["stroke"] : msg["stroke"] + 1] = [list(msg["points"])]
        elif kind == "undo":
            del self.strokes[msg["strokes"] :]
        elif kind == "prediction":
            self.prediction = msg
        elif kind == "corrected":
            if msg["kind"] != "confirmation":
                self.correction = msg["label"]
            self.answer = {k: msg[k] for k in ("label", "kind", "predicted")}
        elif kind == "withdrawn":
            self.correction = self.answer = None


def test_a_viewer_joins_with_a_snapshot_of_what_is_on_the_canvas():
    hub = ViewerHub()
    predict(hub, [DOWN[:2]])
    viewer = hub.join("s")
    (snap,) = drain(hub, viewer)
    assert snap["type"] == "snapshot" and snap["mode"] == "digit" and snap["open"] is True
    assert snap["strokes"] == [DOWN[:2]]
    assert snap["prediction"]["label"] == "1"
    assert "id" not in snap["prediction"]  # a viewer has nothing to correct with
    assert drain(hub, viewer) == []


def test_drawing_becomes_live_points_finished_strokes_undo_and_a_new_drawing():
    hub = ViewerHub()
    viewer = hub.join("s")
    base = drain(hub, viewer)[0]["seq"]
    predict(hub, [DOWN[:2]])
    predict(hub, [DOWN[:3]])
    predict(hub, [DOWN, ACROSS[:2]])
    predict(hub, [DOWN])  # undo
    predict(hub, [ACROSS], mode="char")  # another mode: a new drawing
    events = drain(hub, viewer)
    kinds = [(e["type"], e.get("stroke"), e.get("from")) for e in events]
    assert kinds == [
        ("clear", None, None),
        ("points", 0, 0),
        ("prediction", None, None),
        ("points", 0, 2),
        ("prediction", None, None),
        ("stroke", 0, None),  # finished once a new stroke began: every point, not thinned
        ("points", 1, 0),
        ("prediction", None, None),
        ("undo", None, None),
        ("prediction", None, None),
        ("clear", None, None),
        ("points", 0, 0),
        ("prediction", None, None),
    ]
    assert events[3]["points"] == [DOWN[2]]
    assert events[5]["points"] == DOWN
    assert events[8]["strokes"] == 1
    strict = [e["seq"] for e in events if e["type"] != "points"]
    assert strict == list(range(base + 1, base + 1 + len(strict)))
    for i, e in enumerate(events):  # live points carry the seq of the last counted event
        if e["type"] == "points":
            assert e["seq"] == max([base] + [x["seq"] for x in events[:i] if x["type"] != "points"])


def test_a_mirror_fed_every_event_ends_with_the_canvas(tmp_path):
    hub = ViewerHub()
    viewer = hub.join("s")
    mirror = Mirror()
    drawing: list[list] = []
    for stroke in (DOWN, ACROSS, DOWN[::-1]):
        drawing.append([])
        for point in stroke:
            drawing[-1].append(point)
            predict(hub, drawing)
            for msg in drain(hub, viewer):
                mirror.apply(msg)
    assert mirror.strokes == drawing and mirror.gaps == 0
    hub.publish(
        "ws-a",
        {"type": "correct", "id": "f" * 32, "label": "7"},
        {"type": "corrected", "label": "7", "correction_id": "c", "stored": True},
    )
    for msg in drain(hub, viewer):
        mirror.apply(msg)
    assert mirror.correction == "7"


def answer_then_clear(hub: ViewerHub, kind: str, label: str, cid: str) -> None:
    """The pupil's page saves an answer (``correct`` or ``confirm``), then clears its drawing."""
    reply = {"correct": "corrected", "confirm": "confirmed"}[kind]
    hub.publish(
        "ws-a",
        {"type": kind, "id": "e" * 32, "label": label},
        {"type": reply, "label": label, "correction_id": cid, "stored": True},
    )
    hub.publish("ws-a", {"type": "clear"}, {"type": "cleared"})


def test_a_saved_answer_outlives_the_clear_that_follows_it_until_taken_back():
    """The page clears its drawing once an answer is saved: viewers keep the answer in view,
    and one who joins after the clear is given it in the snapshot."""
    hub = ViewerHub()
    viewer = hub.join("s")
    mirror = Mirror()
    predict(hub, [DOWN])  # read as "1"
    answer_then_clear(hub, "correct", "7", "c1")
    for msg in drain(hub, viewer):
        mirror.apply(msg)
    assert mirror.strokes == [] and mirror.correction is None
    assert mirror.answer == {"label": "7", "kind": "correction", "predicted": "1"}
    late = Mirror()
    for msg in drain(hub, hub.join("t")):
        late.apply(msg)
    assert late.answer == mirror.answer
    # a confirmation: "Right!" on the page, kept as right
    predict(hub, [ACROSS])
    answer_then_clear(hub, "confirm", "1", "c2")
    for msg in drain(hub, viewer):
        mirror.apply(msg)
    assert mirror.answer == {"label": "1", "kind": "confirmation", "predicted": "1"}
    assert mirror.correction is None
    # taking back an older answer changes nothing; taking back the last one removes it
    hub.publish("ws-a", {"type": "withdraw"}, {"type": "withdrawn", "correction_id": "c1"})
    assert drain(hub, viewer) == []
    hub.publish("ws-a", {"type": "withdraw"}, {"type": "withdrawn", "correction_id": "c2"})
    for msg in drain(hub, viewer):
        mirror.apply(msg)
    assert mirror.answer is None and mirror.gaps == 0
    assert hub.snapshot()["answer"] is None


def test_a_repeated_drawing_finishes_its_last_stroke_and_a_dot_still_shows():
    hub = ViewerHub()
    viewer = hub.join("s")
    drain(hub, viewer)
    too_small = {"type": "error", "seq": 1, "error": {"code": "drawing_too_small", "message": ""}}
    predict(hub, [[[5.0, 5.0]]], reply=too_small)
    predict(hub, [DOWN])
    predict(hub, [DOWN])
    events = drain(hub, viewer)
    assert [e["type"] for e in events] == [
        "clear", "points", "clear", "points", "prediction", "stroke", "prediction"
    ]  # fmt: skip
    assert events[1]["points"] == [[5.0, 5.0]]
    assert events[5] == {"type": "stroke", "stroke": 0, "points": DOWN, "seq": events[5]["seq"]}


def test_what_is_not_a_valid_stroke_drawing_is_never_published():
    hub = ViewerHub()
    viewer = hub.join("s")
    drain(hub, viewer)
    bad = {"type": "error", "seq": 1, "error": {"code": "invalid_drawing", "message": ""}}
    hub.publish("ws-a", {"type": "predict", "mode": "digit", "strokes": [["x"]]}, bad)
    hub.publish("ws-a", {"type": "predict", "mode": "digit", "image": "iVBOR"}, PREDICTION)
    hub.publish("ws-a", {"type": "health"}, {"type": "health"})
    hub.publish("ws-a", {"type": "correct", "label": "7"}, {"type": "error", "error": {}})
    assert drain(hub, viewer) == []
    assert hub.snapshot()["strokes"] == []


def test_another_canvas_is_a_new_drawing_and_a_closed_canvas_clears_the_viewers():
    hub = ViewerHub()
    predict(hub, [DOWN], canvas="ws-a")
    predict(hub, [DOWN, ACROSS], canvas="ws-b")
    viewer = hub.join("s")
    assert drain(hub, viewer)[0]["strokes"] == [DOWN, ACROSS]
    hub.canvas_closed("ws-a")  # not the one on screen: nothing changes
    assert drain(hub, viewer) == []
    hub.canvas_closed("ws-b")
    (cleared,) = drain(hub, viewer)
    assert cleared["type"] == "clear" and cleared["closed"] is True
    snap = hub.snapshot()
    assert snap["strokes"] == [] and snap["prediction"] is None


def test_a_cleared_canvas_clears_the_viewers_and_the_next_drawing_follows_it():
    hub = ViewerHub()
    predict(hub, [DOWN, ACROSS], canvas="ws-a")
    viewer = hub.join("s")
    mirror = Mirror()
    for msg in drain(hub, viewer):
        mirror.apply(msg)
    assert mirror.strokes == [DOWN, ACROSS] and mirror.prediction is not None
    hub.publish("ws-b", {"type": "clear"}, {"type": "cleared", "seq": 1})  # another page
    assert drain(hub, viewer) == []
    hub.publish("ws-a", {"type": "clear"}, {"type": "cleared", "seq": 2})
    (cleared,) = drain(hub, viewer)
    assert cleared["type"] == "clear" and cleared["mode"] == "digit" and "closed" not in cleared
    mirror.apply(cleared)
    assert mirror.strokes == [] and mirror.prediction is None
    assert hub.snapshot()["strokes"] == [] and hub.snapshot()["prediction"] is None
    predict(hub, [ACROSS], canvas="ws-a")
    for msg in drain(hub, viewer):
        mirror.apply(msg)
    assert mirror.strokes == [ACROSS] and mirror.gaps == 0


def test_a_slow_viewer_loses_live_points_only_then_gets_the_stroke_whole():
    hub = ViewerHub()
    slow = hub.join("slow")
    fast = hub.join("fast")
    for v in (slow, fast):
        drain(hub, v)
    drawing = [[]]
    fast_mirror, slow_mirror = Mirror(), Mirror()
    fast_mirror.apply(hub.snapshot())
    slow_mirror.apply(hub.snapshot())
    for i in range(200):
        drawing[0].append([float(i), float(i)])
        predict(hub, drawing, reply={"type": "error", "error": {"code": "drawing_too_small"}})
        for msg in drain(hub, fast):
            fast_mirror.apply(msg)
    assert fast_mirror.strokes == drawing
    assert slow.dropped > 0 and len(slow.queue) <= LIVE_LIMIT  # never more queued
    for msg in drain(hub, slow):  # caught up: the open stroke comes whole
        slow_mirror.apply(msg)
    for msg in drain(hub, slow):
        slow_mirror.apply(msg)
    assert slow_mirror.strokes == drawing and slow_mirror.gaps == 0


def test_a_viewer_far_behind_gets_a_fresh_snapshot_and_publishing_never_waits():
    hub = ViewerHub()
    stuck = hub.join("stuck")  # never reads
    drain(hub, stuck)
    began = time.perf_counter()
    for i in range(QUEUE_LIMIT + 50):  # finished strokes (never dropped) fill the queue
        predict(hub, [DOWN] * (i % 60 + 1), canvas="ws-a")
    spent = time.perf_counter() - began
    assert spent < 2.0, spent
    assert stuck.resyncs >= 1 and len(stuck.queue) <= QUEUE_LIMIT
    batch = drain(hub, stuck)
    assert batch[0]["type"] == "snapshot" and batch[0]["strokes"] == hub.snapshot()["strokes"]


def test_a_viewer_that_asks_gets_a_snapshot_instead_of_what_was_queued():
    hub = ViewerHub()
    viewer = hub.join("s")
    drain(hub, viewer)
    predict(hub, [DOWN])
    hub.request_snapshot(viewer)
    (snap,) = drain(hub, viewer)
    assert snap["type"] == "snapshot" and snap["strokes"] == [DOWN]


def test_only_so_many_viewers_watch_at_once_and_a_signed_out_session_is_closed():
    hub = ViewerHub(max_viewers=2)
    a, b = hub.join("one"), hub.join("two")
    assert hub.join("three") is None and hub.count() == 2
    hub.close_session("one")
    assert a.closed and not b.closed
    hub.leave(a)
    assert hub.count() == 1


def test_the_viewer_token_is_checked_in_constant_time_and_sessions_expire():
    now = [1000.0]
    auth = ViewerAuth("a-long-viewer-token-1234", 1, clock=lambda: now[0])
    for wrong in ("", None, 7, "a-long-viewer-token-123", "x" * 600):
        assert not auth.matches(wrong)
    assert auth.matches("a-long-viewer-token-1234")
    sid = auth.start()
    assert auth.valid(sid) and not auth.valid(sid + "x") and not auth.valid(None)
    now[0] += 61
    assert not auth.valid(sid)
    sid = auth.start()
    auth.end(sid)
    assert not auth.valid(sid)


def test_sessions_outlive_a_restart_of_the_device_but_not_a_new_token(tmp_path):
    path = tmp_path / "viewer_sessions.json"
    now = [1000.0]
    auth = ViewerAuth("a-long-viewer-token-1234", 60, clock=lambda: now[0], path=path)
    kept, ended = auth.start(), auth.start()
    auth.end(ended)
    assert path.stat().st_mode & 0o777 == 0o600
    assert kept not in path.read_text() and "a-long-viewer-token-1234" not in path.read_text()
    again = ViewerAuth("a-long-viewer-token-1234", 60, clock=lambda: now[0], path=path)
    assert again.valid(kept) and not again.valid(ended)
    shorter = ViewerAuth("a-long-viewer-token-1234", 1, clock=lambda: now[0], path=path)
    now[0] += 61  # the lifetime now set holds for sessions made under a longer one
    assert not shorter.valid(kept) and again.valid(kept)
    other = ViewerAuth("another-viewer-token-5678", 60, clock=lambda: now[0], path=path)
    assert not other.valid(kept)
    path.write_text("{not json")
    assert not ViewerAuth("a-long-viewer-token-1234", 60, path=path).valid(kept)


def test_failed_sign_ins_are_limited_per_client_and_never_shut_the_classroom_out():
    now = [0.0]
    auth = ViewerAuth("a-long-viewer-token-1234", 60, clock=lambda: now[0])
    for _ in range(FAILS_PER_CLIENT):
        assert auth.retry_after("tunnel 203.0.113.9", True) == 0
        auth.failed("tunnel 203.0.113.9", True)
    assert auth.retry_after("tunnel 203.0.113.9", True) == pytest.approx(60.0)
    assert auth.retry_after("tunnel 198.51.100.7", True) == 0  # another teacher is not locked out
    now[0] += 61
    assert auth.retry_after("tunnel 203.0.113.9", True) == 0
    # many addresses together: remote sign-ins wait, the classroom's own network does not
    for i in range(FAILS_REMOTE):
        auth.failed(f"tunnel 10.0.{i // 250}.{i % 250}", True)
    assert auth.retry_after("tunnel 198.51.100.7", True) == pytest.approx(60.0)
    assert auth.retry_after("192.168.1.20", False) == 0
    for _ in range(FAILS_PER_CLIENT):
        auth.failed("192.168.1.66", False)
    assert auth.retry_after("192.168.1.66", False) > 0
    assert auth.retry_after("192.168.1.20", False) == 0
    for i in range(MAX_CLIENTS_TRACKED + 10):  # what is kept stays bounded
        auth.failed(f"c{i}")
    assert len(auth._fails) == MAX_CLIENTS_TRACKED
