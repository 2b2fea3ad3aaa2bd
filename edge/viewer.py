"""The live viewer: a teacher watches the pupil's canvas, read-only, at ``/viewer``.

Routes, the only ones a tunnel's host reaches (:class:`RemoteGate` refuses every other one with
403 ``remote_only_viewer``):

* ``GET /viewer`` - the page (web/viewer.html); ``GET /viewer/static/viewer.js|viewer.css``.
* ``GET /viewer/session`` - ``{"signed_in": bool}``.
* ``POST /viewer/signin`` ``{"token": "..."}`` (JSON) - the viewer token, compared in constant
  time, starts a session: cookie ``hwr_viewer`` (HttpOnly, SameSite=Strict, Path=/viewer, Secure
  over https); 401 ``unauthorized`` for a wrong token, 429 ``rate_limited`` after too many.
* ``POST /viewer/signout`` - ends the session (its sockets close within a second).
* ``GET /viewer/ws`` - the WebSocket, for a signed-in session only (401 before the upgrade).

Without a viewer token the viewer is off: every route answers 404 ``viewer_off``.

The socket's protocol, server to viewer (every message JSON with a ``type`` and a ``seq``):

* ``snapshot`` ``{seq, drawing, mode, strokes, open, prediction, correction, answer}``: what is on the
  canvas now (``open``: the last stroke may still grow). First on join, and whenever asked.
* ``clear`` ``{seq, drawing, mode}``: a new drawing (``closed: true``: the canvas page left).
* ``stroke`` ``{seq, stroke: i, points}``: stroke ``i`` is finished; its points, all of them.
* ``undo`` ``{seq, strokes: n}``: only the first ``n`` strokes are left.
* ``prediction`` ``{seq, mode, label, confidence, top, source, model}``: the pupil's live guess.
* ``corrected`` ``{seq, label, kind, predicted}``: the pupil saved an answer (``kind``
  "correction", or "confirmation": the guess was kept as right). The page clears its drawing
  once an answer is saved, so the answer is also held as the canvas's last ``answer``, which a
  clear does not forget: a snapshot carries it, until the pupil saves another or takes it back.
* ``withdrawn`` ``{seq}``: the pupil (or a teacher) took the last answer back.
* ``points`` ``{seq, stroke: i, from: k, points}``: live points of the stroke being drawn, put
  at index ``k`` of stroke ``i``. These may be thinned for a slow viewer, so they do not count:
  their ``seq`` is that of the last event that did. Every other event's ``seq`` is one more than
  the one before; a viewer that sees a gap sends ``{"type": "snapshot"}`` and waits for one.

A frame holds one message, or a JSON array of messages to apply in order (a viewer gets at
most one frame every ``FRAME_GAP_S`` seconds; what came meanwhile is sent together).

Viewer to server: ``{"type": "snapshot"}`` and ``{"type": "ping"}`` only. Anything else (a
predict, a correction, a health or any write) is answered ``read_only`` and does nothing: a
viewer never reaches ``handle_message``, so it can neither draw, correct nor read the store.

The pupil's page sends the whole drawing in each predict message while drawing; the hub keeps
the current drawing of the canvas that sent last (a new canvas, another mode or other first
strokes is a new drawing) and turns each change into the events above. Publishing never waits
for a viewer: each viewer has a bounded queue; past ``LIVE_LIMIT`` queued messages live points
are dropped (the stroke is sent whole once the viewer has caught up), past ``QUEUE_LIMIT`` the
queue is dropped and the viewer gets a fresh snapshot. Nothing here is written to disk or log.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Iterable
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    jsonify,
    request,
    send_from_directory,
)
from simple_websocket import ConnectionClosed, Server

from hwrcore import protocol
from hwrcore.tunnel import agent_client
from hwrcore.web_body import read_json

from .api import error_response
from .config import EdgeConfig
from .guard import _name_of, allowed_hosts
from .viewer_auth import ViewerAuth
from .ws import EXTENSION as SOCKETS
from .ws import RateLimit, _handshake_error, _Upgraded, finish

log = logging.getLogger(__name__)

EXTENSION = "hwr_viewer"
GATE = "hwr_remote"
COOKIE = "hwr_viewer"
QUEUE_LIMIT = 256  # messages queued for one viewer before it is given a snapshot instead
LIVE_LIMIT = 32  # queued messages past which live points are dropped for that viewer
POLL_S = 0.25  # how often a viewer's socket looks for what the viewer sent
# A viewer gets at most one frame per this many seconds; what came meanwhile goes in one frame,
# so a fast pupil costs each viewer's thread a bounded number of sends a second.
FRAME_GAP_S = 0.02
MAX_VIEWER_MESSAGE = 4096
ASSETS = frozenset({"viewer.js", "viewer.css"})
# Headers a proxy (ngrok's agent included) adds: with a tunnel configured, such a request is
# remote whatever its Host says.
FORWARD_HEADERS = ("X-Forwarded-For", "X-Forwarded-Host", "Forwarded")
READ_ONLY = "this socket only watches: a viewer cannot draw, correct or read corrections"

bp = Blueprint("viewer", __name__, url_prefix="/viewer")
VIEWER_ENDPOINTS = frozenset(
    {
        "viewer.page",
        "viewer.asset",
        "viewer.session_state",
        "viewer.signin",
        "viewer.signout",
        "viewer.ws",
    }
)


def _encode(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), allow_nan=False)


# ---- the hub ---------------------------------------------------------------------------------


class Viewer:
    """One watching socket: its bounded queue of encoded messages and what it is owed."""

    def __init__(self, session: str, queue_limit: int = QUEUE_LIMIT, live_limit: int = LIVE_LIMIT):
        self.session = session
        self.queue_limit = queue_limit
        self.live_limit = live_limit
        self.queue: deque[str] = deque()
        self.cond = threading.Condition(threading.Lock())
        self.resync = True  # owed a snapshot (the first thing a viewer gets)
        self.repair = False  # live points were dropped: owed the open stroke whole
        self.closed = False
        self.dropped = 0  # live messages dropped
        self.resyncs = 0  # times the queue overflowed into a snapshot

    def offer(self, text: str, live: bool) -> None:
        """Queue one message without ever waiting on the viewer (called under the hub's lock)."""
        with self.cond:
            if self.resync or self.closed:
                return  # a snapshot is owed: it will hold this change
            if live and len(self.queue) >= self.live_limit:
                self.repair = True
                self.dropped += 1
                return
            if len(self.queue) >= self.queue_limit:
                self.queue.clear()
                self.resync, self.repair = True, False
                self.resyncs += 1
            else:
                self.queue.append(text)
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()


class ViewerHub:
    """The current drawing of the device's canvas, and the viewers it is published to."""

    def __init__(
        self,
        max_viewers: int = 8,
        queue_limit: int = QUEUE_LIMIT,
        live_limit: int = LIVE_LIMIT,
    ):
        self.max_viewers = max_viewers
        self.queue_limit = queue_limit
        self.live_limit = live_limit
        self._lock = threading.Lock()
        self._viewers: list[Viewer] = []
        self._owner: str | None = None  # the canvas whose drawing this is
        self._drawing = 0
        self._mode: str | None = None
        self._strokes: list[list] = []
        self._open = False
        self._prediction: dict[str, Any] | None = None
        self._correction: dict[str, Any] | None = None
        self._answer: dict[str, Any] | None = None  # the last answer saved on this canvas
        self._answer_id: str | None = None
        self._seq = 0

    # -- viewers ------------------------------------------------------------------------------
    def join(self, session: str) -> Viewer | None:
        """A new viewer (owed a snapshot), or None when ``max_viewers`` already watch."""
        with self._lock:
            if len(self._viewers) >= self.max_viewers:
                return None
            viewer = Viewer(session, self.queue_limit, self.live_limit)
            self._viewers = [*self._viewers, viewer]
            return viewer

    def leave(self, viewer: Viewer) -> None:
        viewer.close()
        with self._lock:
            self._viewers = [v for v in self._viewers if v is not viewer]

    def count(self) -> int:
        """How many viewers watch now (the canvas shows the pupil that someone does)."""
        return len(self._viewers)

    def close_session(self, session: str) -> None:
        """Close the sockets of a session that signed out."""
        for viewer in list(self._viewers):
            if viewer.session == session:
                viewer.close()

    def close(self) -> None:
        for viewer in list(self._viewers):
            viewer.close()

    def request_snapshot(self, viewer: Viewer) -> None:
        """The viewer saw a gap: its queue is dropped and a snapshot comes next."""
        with viewer.cond:
            viewer.queue.clear()
            viewer.resync, viewer.repair = True, False
            viewer.cond.notify()

    def next_batch(self, viewer: Viewer, timeout: float) -> list[str]:
        """What to send this viewer now (waits up to ``timeout`` s for something)."""
        with viewer.cond:
            if not (viewer.queue or viewer.resync or viewer.repair or viewer.closed):
                viewer.cond.wait(timeout)
            resync = viewer.resync and not viewer.closed
            repair = viewer.repair and not viewer.queue
        if resync or repair:
            # Made under the hub's lock and queued before the cond is let go: nothing published
            # in between can be lost or come out of order.
            with self._lock:
                text = self._snapshot_text() if resync else self._open_stroke_text()
                with viewer.cond:
                    if resync:
                        viewer.queue.clear()
                        viewer.resync = False
                    viewer.repair = False
                    if text is not None:
                        viewer.queue.append(text)
        with viewer.cond:
            batch = list(viewer.queue)
            viewer.queue.clear()
        return batch

    def snapshot(self) -> dict[str, Any]:
        """What is on the canvas now, as a snapshot message."""
        with self._lock:
            return json.loads(self._snapshot_text())

    def _snapshot_text(self) -> str:
        return _encode(
            {
                "type": "snapshot",
                "seq": self._seq,
                "drawing": self._drawing,
                "mode": self._mode,
                "strokes": self._strokes,
                "open": self._open,
                "prediction": self._prediction,
                "correction": self._correction,
                "answer": self._answer,
            }
        )

    def _open_stroke_text(self) -> str | None:
        if not (self._strokes and self._open):
            return None
        last = len(self._strokes) - 1
        return _encode(
            {
                "type": "points",
                "seq": self._seq,
                "stroke": last,
                "from": 0,
                "points": self._strokes[last],
            }
        )

    # -- publishing (called by the pupil's requests) --------------------------------------------
    def publish(self, canvas: str, msg: dict[str, Any], reply: dict[str, Any]) -> None:
        """Take the drawing, guess or correction of one answered message; never raises."""
        try:
            self._publish(canvas, msg, reply)
        except Exception:  # the pupil's answer must not fail because of a viewer
            log.exception("publishing to the viewers failed")

    def _publish(self, canvas: str, msg: dict[str, Any], reply: dict[str, Any]) -> None:
        kind, answered = msg.get("type"), reply.get("type")
        if kind == "predict":
            strokes = msg.get("strokes")
            if not isinstance(strokes, list):
                return  # a PNG: not the canvas
            if answered == "prediction":
                guess = {k: reply.get(k) for k in ("mode", "label", "confidence", "top", "source")}
                guess["model"] = reply.get("model")
            elif answered == "error" and reply["error"].get("code") == "drawing_too_small":
                guess = None  # checked and valid, only too small to read
            else:
                return
            drawn = [s for s in strokes if s]
            with self._lock:
                events = self._update(canvas, str(msg.get("mode")), drawn)
                if guess is not None:
                    self._prediction = guess
                    events.append(self._strict({"type": "prediction", **guess}))
                self._send(events)
        elif kind == "clear" and answered == "cleared":
            self._reset(canvas, closed=False)
        elif (kind, answered) in (("correct", "corrected"), ("confirm", "confirmed")):
            with self._lock:
                answer = {
                    "label": reply.get("label"),
                    "kind": "confirmation" if answered == "confirmed" else "correction",
                    "predicted": (self._prediction or {}).get("label"),
                }
                if answered == "corrected":
                    self._correction = {"label": answer["label"]}
                self._answer, self._answer_id = answer, reply.get("correction_id")
                self._send([self._strict({"type": "corrected", **answer})])
        elif kind == "withdraw" and answered == "withdrawn":
            with self._lock:
                if self._answer is None or reply.get("correction_id") != self._answer_id:
                    return
                self._answer = self._answer_id = self._correction = None
                self._send([self._strict({"type": "withdrawn"})])

    def canvas_closed(self, canvas: str) -> None:
        """The canvas page's socket closed: its drawing is no longer on any screen."""
        self._reset(canvas, closed=True)

    def _reset(self, canvas: str, *, closed: bool) -> None:
        """The canvas that viewers see was cleared (or its page left): they see it empty."""
        try:
            with self._lock:
                if canvas != self._owner:
                    return
                event: dict[str, Any] = {"type": "clear", "drawing": self._drawing + 1}
                if closed:
                    self._owner, self._mode = None, None
                    self._answer = self._answer_id = None
                    event["closed"] = True
                else:
                    event["mode"] = self._mode
                self._strokes, self._open = [], False
                self._prediction = self._correction = None
                self._drawing += 1
                self._send([self._strict(event)])
        except Exception:
            log.exception("clearing the viewers failed")

    def _strict(self, event: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        self._seq += 1
        event["seq"] = self._seq
        return False, event

    def _live(self, event: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        event["seq"] = self._seq
        return True, event

    def _send(self, events: Iterable[tuple[bool, dict[str, Any]]]) -> None:
        viewers = self._viewers
        if not viewers:
            return
        for live, event in events:
            text = _encode(event)
            for viewer in viewers:
                viewer.offer(text, live)

    def _update(self, canvas: str, mode: str, new: list[list]) -> list[tuple[bool, dict]]:
        """The events that turn the drawing held into ``new`` (under the lock)."""
        old = self._strokes
        events: list[tuple[bool, dict]] = []
        same = canvas == self._owner and mode == self._mode
        p = 0
        if same:
            limit = min(len(old), len(new))
            while p < limit and old[p] == new[p]:
                p += 1
        if same and p == len(old) == len(new):
            if self._open:  # sent again unchanged: the last stroke is finished
                self._open = False
                last = len(new) - 1
                events.append(self._strict({"type": "stroke", "stroke": last, "points": new[last]}))
        elif same and p == len(old):
            if self._open and old:  # a new stroke began: the one before it is finished
                last = len(old) - 1
                events.append(self._strict({"type": "stroke", "stroke": last, "points": old[last]}))
            self._add(events, new, p)
        elif same and p == len(old) - 1 and p < len(new) and _grows(old[p], new[p]):
            if p < len(new) - 1:
                events.append(self._strict({"type": "stroke", "stroke": p, "points": new[p]}))
                self._add(events, new, p + 1)
            else:
                start = len(old[p])
                events.append(
                    self._live(
                        {"type": "points", "stroke": p, "from": start, "points": new[p][start:]}
                    )
                )
                self._open = True
        elif same and p > 0:
            events.append(self._strict({"type": "undo", "strokes": p}))
            self._open = False
            self._add(events, new, p)
        else:
            if canvas != self._owner:  # another canvas page: its own answers, none yet
                self._answer = self._answer_id = None
            self._owner, self._mode = canvas, mode
            self._drawing += 1
            self._prediction = self._correction = None
            self._open = False
            events.append(self._strict({"type": "clear", "drawing": self._drawing, "mode": mode}))
            self._add(events, new, 0)
        self._strokes = new
        return events

    def _add(self, events: list, new: list[list], start: int) -> None:
        """Strokes ``start`` on are new: all but the last are finished; the last may grow."""
        for i in range(start, len(new)):
            if i < len(new) - 1:
                events.append(self._strict({"type": "stroke", "stroke": i, "points": new[i]}))
            else:
                events.append(
                    self._live({"type": "points", "stroke": i, "from": 0, "points": new[i]})
                )
                self._open = True


def _grows(before: list, after: list) -> bool:
    """Whether stroke ``after`` is stroke ``before`` with points added at its end."""
    return len(after) > len(before) and after[: len(before)] == before


# ---- who is remote ---------------------------------------------------------------------------


class RemoteGate:
    """Requests through a tunnel reach only the viewer: told apart by their Host (and proxies)."""

    def __init__(self, tunnel_configured: bool = False):
        self.tunnel_configured = tunnel_configured
        self._hosts: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def add(self, host: str) -> None:
        with self._lock:
            self._hosts = self._hosts | {_name_of(host)}

    def remove(self, host: str) -> None:
        with self._lock:
            self._hosts = self._hosts - {_name_of(host)}

    def hosts(self) -> list[str]:
        return sorted(self._hosts)

    def is_remote(self) -> bool:
        """Whether this request came through the tunnel."""
        host = request.headers.get("Host")
        if host is not None and _name_of(host) in self._hosts:
            return True
        return self.tunnel_configured and any(h in request.headers for h in FORWARD_HEADERS)


def check_remote() -> Response | None:
    """Refuse a tunnel request for anything but the viewer (403 in the one error body)."""
    gate: RemoteGate = current_app.extensions[GATE]
    if request.endpoint in VIEWER_ENDPOINTS or not gate.is_remote():
        return None
    return error_response(
        "remote_only_viewer",
        "only the viewer (/viewer) can be reached from outside the classroom",
        403,
    )


# ---- routes ----------------------------------------------------------------------------------


def _auth() -> ViewerAuth | None:
    return current_app.extensions[EXTENSION]["auth"]


def _hub() -> ViewerHub:
    return current_app.extensions[EXTENSION]["hub"]


@bp.before_request
def _viewer_on() -> Response | None:
    if _auth() is None:
        return error_response(
            "viewer_off", "the viewer is off on this device: set viewer_token to turn it on", 404
        )
    return None


@bp.after_request
def _no_store(resp: Response) -> Response:
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["Content-Security-Policy"] = (
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )
    return resp


@bp.get("")
@bp.get("/")
def page() -> Response:
    """The viewer's page (it holds no data: it signs in, then opens the socket)."""
    return send_from_directory(current_app.config["HWR_CONFIG"].web_dir, "viewer.html")


@bp.get("/static/<name>")
def asset(name: str) -> Response:
    """The viewer page's script and stylesheet, and nothing else of web/static."""
    if name not in ASSETS:
        return error_response("not_found", "there is nothing at this address", 404)
    return send_from_directory(current_app.config["HWR_CONFIG"].web_dir / "static", name)


@bp.get("/session")
def session_state() -> Response:
    """Whether this browser is signed in."""
    return jsonify({"signed_in": _auth().valid(request.cookies.get(COOKIE))})


def _secure() -> bool:
    return request.is_secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def _client() -> str:
    """Who is signing in: the address the tunnel's agent saw (the last X-Forwarded-For hop it
    added) for a request it forwarded from this machine, else the connection's own address.
    A hop anyone else claims is not believed."""
    seen = agent_client(request.remote_addr, request.headers.get("X-Forwarded-For"))
    if seen is not None:
        return "tunnel " + seen
    return request.remote_addr or ""


@bp.post("/signin")
def signin() -> Response:
    """Check the viewer token and start a session (a cookie)."""
    auth = _auth()
    if request.mimetype != "application/json":
        return error_response("unsupported_media_type", "send the token as JSON", 415)
    client, remote = _client(), current_app.extensions[GATE].is_remote()
    wait = auth.retry_after(client, remote)
    if wait > 0:
        resp = error_response(
            "rate_limited", "too many wrong tokens: wait a minute and try again", 429
        )
        resp.headers["Retry-After"] = str(max(1, int(wait + 0.999)))
        return resp
    try:
        body = protocol.require_object(read_json(4096))
    except protocol.ProtocolError as exc:
        return error_response(exc.code, exc.message)
    if not auth.matches(body.get("token")):
        auth.failed(client, remote)
        log.warning("viewer: a sign-in with a wrong token was refused")
        return error_response("unauthorized", "that is not this device's viewer token", 401)
    sid = auth.start()
    log.info("viewer: signed in%s", " (remote)" if current_app.extensions[GATE].is_remote() else "")
    resp = jsonify({"signed_in": True})
    resp.set_cookie(
        COOKIE,
        sid,
        max_age=int(auth.lifetime),
        path="/viewer",
        secure=_secure(),
        httponly=True,
        samesite="Strict",
    )
    return resp


@bp.post("/signout")
def signout() -> Response:
    """End this browser's session and close its sockets."""
    sid = request.cookies.get(COOKIE)
    _auth().end(sid)
    if sid:
        _hub().close_session(sid)
    resp = jsonify({"signed_in": False})
    resp.delete_cookie(COOKIE, path="/viewer", secure=_secure(), httponly=True, samesite="Strict")
    return resp


def viewer_answer(data: str | bytes, hub: ViewerHub, viewer: Viewer, limit: Any) -> dict | None:
    """The answer to one frame a viewer sent: a snapshot is queued, a ping ponged, all else refused."""
    allowed = limit.allow()
    if isinstance(data, (bytes, bytearray)):
        return protocol.error_message("binary_frame", "send JSON text frames, not binary ones")
    if len(data) > MAX_VIEWER_MESSAGE:
        return protocol.error_message("too_large", READ_ONLY)
    try:
        msg = protocol.require_object(protocol.parse_json(data))
        seq = protocol.get_seq(msg)
    except protocol.ProtocolError as exc:
        return protocol.error_message(exc.code, exc.message)
    if not allowed:
        return protocol.error_message("rate_limited", "too many messages on this socket", seq)
    kind = msg.get("type")
    if kind == "snapshot":
        hub.request_snapshot(viewer)
        return None
    if kind == "ping":
        return {"type": "pong", "seq": seq}
    return protocol.error_message("read_only", READ_ONLY, seq)


def serve_viewer(ws: Any, hub: ViewerHub, viewer: Viewer, auth: ViewerAuth, sid: str) -> None:
    """Send a viewer what the hub queues for it, and answer what it sends, until it goes."""
    closing = current_app.extensions["hwr"].closing
    limit = RateLimit(10.0, 20)
    while not closing.is_set() and ws.connected and not viewer.closed:
        if not auth.valid(sid):
            _close(ws, 4001, "signed out")
            return
        batch = hub.next_batch(viewer, POLL_S)
        if batch:
            ws.send(batch[0] if len(batch) == 1 else "[" + ",".join(batch) + "]")
            closing.wait(FRAME_GAP_S)  # what comes meanwhile goes in the next frame
        while True:
            data = ws.receive(timeout=0)
            if data is None:
                break
            reply = viewer_answer(data, hub, viewer, limit)
            if reply is not None:
                ws.send(_encode(reply))
    if closing.is_set():
        _close(ws, 1001, "the device is shutting down")
    elif viewer.closed:
        _close(ws, 4001, "signed out")


def _close(ws: Any, code: int, reason: str) -> None:
    if ws.connected:
        try:
            ws.close(code, reason)
        except (ConnectionClosed, OSError):
            pass


@bp.route("/ws", websocket=True)
def ws() -> Response:
    """The viewer's WebSocket: a signed-in session only, at most ``max_viewers`` at once."""
    auth = _auth()
    sid = request.cookies.get(COOKIE)
    if not auth.valid(sid):
        return error_response("unauthorized", "sign in with the viewer token first", 401)
    refused = _handshake_error()
    if refused is not None:
        return refused
    app = current_app
    hub = _hub()
    slots = app.extensions[SOCKETS]
    client = f"viewer {request.remote_addr or ''}"
    if not slots.take(client):
        return error_response("busy", "too many open sockets; try again in a moment")
    try:
        viewer = hub.join(sid)
        if viewer is None:
            return error_response(
                "busy", f"{hub.max_viewers} viewers already watch this device; try later"
            )
        try:
            try:
                sock = Server(request.environ, **app.config.get("SOCK_SERVER_OPTIONS", {}))
            except Exception:
                return error_response("bad_request", "the WebSocket handshake is not valid")
            log.info("viewer: watching (%d now)", hub.count())
            try:
                serve_viewer(sock, hub, viewer, auth, sid)
            except (ConnectionClosed, OSError):
                pass
            finally:
                finish(sock)
            return _Upgraded(sock.mode)
        finally:
            hub.leave(viewer)
            log.info("viewer: left (%d watch)", hub.count())
    finally:
        slots.give_back(client)


def init_app(app: Flask) -> ViewerHub:
    """The viewer's routes, its hub (``ctx.viewers``) and the gate that keeps tunnels to it."""
    config: EdgeConfig = app.config["HWR_CONFIG"]
    token = config.viewer_secret()
    hub = ViewerHub(config.max_viewers)
    auth = None
    if token:
        sessions = config.data_dir / "viewer_sessions.json"  # a restart keeps teachers signed in
        auth = ViewerAuth(token, config.viewer_session_minutes, path=sessions)
    app.extensions[EXTENSION] = {"hub": hub, "auth": auth}
    app.extensions[GATE] = RemoteGate(tunnel_configured=config.tunnel)
    app.before_request(check_remote)
    app.register_blueprint(bp)
    return hub


def remote_gate(app: Flask) -> RemoteGate:
    """The app's gate: add a tunnel's host to it (and to the guard's known hosts)."""
    return app.extensions[GATE]


def add_remote_host(app: Flask, host: str) -> None:
    """Answer to ``host`` from now on, as a remote host that reaches only the viewer."""
    remote_gate(app).add(host)
    allowed_hosts(app).add(host)


def remove_remote_host(app: Flask, host: str) -> None:
    allowed_hosts(app).remove(host)
    remote_gate(app).remove(host)


__all__ = [
    "RemoteGate",
    "Viewer",
    "ViewerAuth",
    "ViewerHub",
    "add_remote_host",
    "init_app",
    "remove_remote_host",
    "viewer_answer",
]
