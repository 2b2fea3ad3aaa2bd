"""One function that answers every request of the wire, for HTTP and the WebSocket alike.

``handle_message(msg, ctx)`` takes a decoded message (``{"type": "predict" | "correct" |
"confirm" | "withdraw" | "health", "seq"?, ...}``) and returns the answer as a dict: ``{"type":
"prediction" | "corrected" | "confirmed" | "withdrawn" | "health", "seq", ...}`` or ``{"type":
"error", "seq", "error": {code, message}}``. It never raises and never logs a drawing. Recent
predictions are remembered (bounded, LRU) so a correction by prediction id stores the drawing
exactly as it was predicted.

* ``correct`` stores a correction (the pupil's label differs from the guess, or not: it is
  stored as they said); ``confirm`` stores the guess as right (a confirmation, ``kind
  "confirmation"`` in the store, counted apart from corrections). Both take a prediction ``id``
  or the drawing with a ``label``, and both answer once the sample is durable.
* ``withdraw`` (``{"correction_id", "by": "pupil" | "teacher"}``) takes a stored correction or
  confirmation back: the store keeps it as withdrawn (journalled, synced later), the
  personaliser forgets it at once, and its prediction can be answered again.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hwrcore import protocol
from hwrcore.errors import HwrError, InvalidLabel
from hwrcore.labels import label_set_for_mode
from hwrcore.preprocess import png_to_input, strokes_to_input
from hwrcore.store import (
    Correction,
    CorrectionStore,
    DiskFull,
    InvalidCorrection,
    StoreError,
    StoreFull,
)

from .models import LoadedModel
from .personal import Personaliser

log = logging.getLogger(__name__)

TOP_K = 3
CORRECTION = "correction"
CONFIRMATION = "confirmation"
WITHDRAWERS = ("pupil", "teacher")
DISK_FULL = "this device's storage is full; free some space on it (a teacher's job)"
# Under this much free space /healthz says "degraded" before corrections start failing.
LOW_DISK_BYTES = 32 << 20


@dataclass
class Recent:
    """What a prediction saw and said, kept so a correction by id can store it."""

    mode: str
    image: np.ndarray  # (28, 28) float32 model input
    strokes: str | None  # the validated strokes as compact JSON (nested lists cost ten times more)
    label: str
    confidence: float
    embedding: np.ndarray
    model_version: str
    # (sample id, label, kind) once corrected or confirmed; None again once withdrawn.
    correction: tuple[str, str, str] | None = None


def _compact(strokes: list | None) -> str | None:
    """Strokes as compact JSON text, as a Recent keeps them."""
    return None if strokes is None else json.dumps(strokes, separators=(",", ":"))


class RecentPredictions:
    """Bounded id -> Recent map; the least recently used prediction is forgotten first."""

    def __init__(self, capacity: int = 1000):
        self.capacity = capacity
        self._items: OrderedDict[str, Recent] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def put(self, pid: str, item: Recent) -> None:
        with self._lock:
            self._items[pid] = item
            self._items.move_to_end(pid)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, pid: str) -> Recent | None:
        with self._lock:
            item = self._items.get(pid)
            if item is not None:
                self._items.move_to_end(pid)
            return item

    def release(self, sample_id: str) -> None:
        """The prediction answered by this sample can be answered again (it was withdrawn)."""
        with self._lock:
            for item in self._items.values():
                if item.correction is not None and item.correction[0] == sample_id:
                    item.correction = None


@dataclass(frozen=True)
class Served:
    """What one mode serves: a model and the personaliser built on its embeddings, as one value.

    A request reads ``ctx.served[mode]`` once and uses only that pair, so a swap never mixes a
    model with another model's personalisation, and a prediction in flight finishes on its pair.
    """

    model: LoadedModel
    personaliser: Personaliser | None = None


class Context:
    """The long-lived state a message needs: what each mode serves, stores, recent predictions."""

    def __init__(
        self,
        models: dict[str, LoadedModel],
        stores: dict[str, CorrectionStore],
        personalisers: dict[str, Personaliser],
        recent: RecentPredictions,
    ):
        # Replaced as a whole under _swap_lock, never changed in place: one read sees one state.
        self.served: dict[str, Served] = {
            mode: Served(m, personalisers.get(mode)) for mode, m in models.items()
        }
        self.stores = stores
        self.recent = recent
        self.started = time.monotonic()
        self.closing = threading.Event()
        # One writer per store: a correction is checked, stored and remembered as one step.
        self.write_locks: dict[str, threading.Lock] = {
            "digit": threading.Lock(),
            "char": threading.Lock(),
        }
        self.model_changed_at: float | None = None  # unix time of the last swap; None: none yet
        # Set by the app when model delivery runs: an object with ``status() -> dict`` (healthz)
        # and ``stop()`` (called by close).
        self.delivery: Any = None
        # Set by the app when a sync server is configured: the edge.sync.SyncClient.
        self.sync: Any = None
        # Set by the app: the edge.viewer.ViewerHub that answered messages are published to,
        # and the hwrcore.tunnel.Tunnel when one was asked for.
        self.viewers: Any = None
        self.tunnel: Any = None
        # Set when a correction could not be stored because the disk is full; cleared by the
        # next one stored. /healthz reports it, and the page tells the pupil to fetch a teacher.
        self.disk_full_at: float | None = None
        self._swap_lock = threading.Lock()

    @property
    def models(self) -> dict[str, LoadedModel]:
        """The models served now, by mode (a snapshot; a request reads ``served`` instead)."""
        return {mode: s.model for mode, s in self.served.items()}

    @property
    def personalisers(self) -> dict[str, Personaliser]:
        """The personalisers served now, by mode (a snapshot)."""
        return {
            mode: s.personaliser for mode, s in self.served.items() if s.personaliser is not None
        }

    def swap(self, mode: str, served: Served) -> Served | None:
        """Serve ``served`` for ``mode`` from the next request on; returns what served before."""
        with self._swap_lock:
            old = self.served.get(mode)
            self.served = {**self.served, mode: served}
            self.model_changed_at = time.time()
        return old

    def close(self) -> None:
        """Refuse new work, stop model delivery and close the stores (each waits for its writer)."""
        self.closing.set()
        if self.delivery is not None:
            self.delivery.stop()
        for mode, store in self.stores.items():
            with self.write_locks[mode]:
                try:
                    store.close()
                except Exception:  # one store failing to close must not keep the other open
                    log.exception("closing the %s corrections store failed", mode)


class Unavailable(HwrError):
    """The process is shutting down or a store cannot be written."""

    code = "unavailable"


class Internal(HwrError):
    """A failure of this process, not of the request."""

    code = "internal"


def handle_message(msg: object, ctx: Context, canvas: str = "http") -> dict[str, Any]:
    """Answer one decoded message; errors come back as the wire's error message, never raised.

    The answer is then published to the viewers (``ctx.viewers``) as coming from ``canvas``,
    the pupil's socket (HTTP requests all share the canvas "http").
    """
    reply = _answer(msg, ctx)
    if ctx.viewers is not None and isinstance(msg, dict):
        ctx.viewers.publish(canvas, msg, reply)
    return reply


def _answer(msg: object, ctx: Context) -> dict[str, Any]:
    """The answer to one decoded message, as ``handle_message`` returns it."""
    t0 = time.perf_counter()
    seq = None
    try:
        body = protocol.require_object(msg)
        seq = protocol.get_seq(body)
        kind = protocol.get_type(body)
        if ctx.closing.is_set():
            raise Unavailable("the server is shutting down; try again in a moment")
        if kind == "predict":
            reply = _predict(body, ctx, t0)
        elif kind == "correct":
            reply = _correct(body, ctx, CORRECTION)
        elif kind == "confirm":
            reply = _correct(body, ctx, CONFIRMATION)
        elif kind == "withdraw":
            reply = _withdraw(body, ctx)
        elif kind == "clear":
            reply = {}  # nothing to do here; the viewers are told (ViewerHub.publish)
        else:
            reply = health(ctx)
        return {"type": protocol.REQUEST_TYPES[kind], "seq": seq, **reply}
    except HwrError as exc:
        return protocol.error_message(exc.code, exc.message, seq)
    except Exception:  # the wire must get an answer whatever went wrong
        # The traceback names code, not the message: drawings never reach the log.
        log.exception("unexpected error answering a message")
        return protocol.error_message("internal", "the server failed to answer; it was logged", seq)


def _served(ctx: Context, mode: str) -> Served:
    """The mode's model and personaliser, read once for the whole request."""
    return ctx.served[mode]


def _drawing_input(body: dict[str, Any], model: LoadedModel) -> tuple[np.ndarray, list | None]:
    """The model input of the message's drawing, and its strokes (None for an image)."""
    kind, drawing = protocol.get_drawing(body)
    try:
        if kind == "strokes":
            return strokes_to_input(drawing, model.style), drawing
        return png_to_input(drawing, model.style), None
    except HwrError:
        raise
    except (OverflowError, ValueError, TypeError):
        # e.g. an integer coordinate too large for a float: still just a bad drawing.
        raise protocol.ProtocolError(
            "the drawing has numbers that cannot be used", code="invalid_drawing"
        ) from None


def _canonical_label(label: str, mode: str, model: LoadedModel) -> str:
    canon = label_set_for_mode(mode).canonical(label)
    if canon not in model.labels:
        raise InvalidLabel(f"label {label!r} is not one of this model's classes")
    return canon


def _classify(served: Served, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Model probabilities, nudged by the device's corrections: (probs, embedding, source)."""
    pred = served.model.classifier.predict(image)
    probs = np.asarray(pred.probabilities, dtype=np.float32)
    personaliser = served.personaliser
    source = "model"
    if personaliser is not None:
        probs, source = personaliser.decide(probs, pred.embedding)
    return np.asarray(probs, dtype=np.float32), pred.embedding, source


def _predict(body: dict[str, Any], ctx: Context, t0: float) -> dict[str, Any]:
    mode = protocol.get_mode(body)
    served = _served(ctx, mode)
    model = served.model
    image, strokes = _drawing_input(body, model)
    probs, embedding, source = _classify(served, image)
    labels = model.labels
    order = np.argsort(-probs, kind="stable")[:TOP_K]
    top = [{"label": labels[i], "p": round(float(probs[i]), 6)} for i in order]
    pid = uuid.uuid4().hex
    ctx.recent.put(
        pid,
        Recent(
            mode=mode,
            image=image,
            strokes=_compact(strokes),
            label=top[0]["label"],
            confidence=top[0]["p"],
            embedding=np.asarray(embedding, dtype=np.float32),
            model_version=model.manifest.version,
        ),
    )
    return {
        "id": pid,
        "mode": mode,
        "label": top[0]["label"],
        "confidence": top[0]["p"],
        "top": top,
        "source": source,
        "model": model.info,
        "ms": round((time.perf_counter() - t0) * 1000.0, 3),
    }


def _correct(body: dict[str, Any], ctx: Context, kind: str) -> dict[str, Any]:
    """Store a correction or a confirmation of a prediction (by id) or of a drawing."""
    pid = protocol.get_prediction_id(body)
    if kind == CONFIRMATION and pid is not None and body.get("label") is None:
        label = None  # a confirmation by id confirms the guess as it was
    else:
        label = protocol.get_label(body)
    if pid is not None:
        if body.get("strokes") is not None or body.get("image") is not None:
            raise protocol.ProtocolError("send either a prediction id or a drawing, not both")
        recent = ctx.recent.get(pid)
        if recent is None:
            raise protocol.ProtocolError(
                "no recent prediction has this id (it may have been forgotten): send the drawing",
                code="unknown_prediction",
            )
        if body.get("mode") is not None and body.get("mode") != recent.mode:
            raise protocol.ProtocolError(
                f"mode does not match the prediction's mode {recent.mode!r}", code="invalid_mode"
            )
        mode = recent.mode
        model = _served(ctx, mode).model
        canon = recent.label if label is None else _canonical_label(label, mode, model)
        if kind == CONFIRMATION and canon != recent.label:
            raise protocol.ProtocolError(
                f"the guess was {recent.label!r}, not {canon!r}: send a correction instead",
                code="invalid_label",
            )
    else:
        mode = protocol.get_mode(body)
        served = _served(ctx, mode)
        model = served.model
        canon = _canonical_label(label, mode, model)
        image, strokes = _drawing_input(body, model)
        probs, embedding, _ = _classify(served, image)
        best = int(np.argmax(probs))
        if kind == CONFIRMATION and model.labels[best] != canon:
            raise protocol.ProtocolError(
                f"this drawing now reads {model.labels[best]!r}, not {canon!r}: answer it again",
                code="invalid_label",
            )
        recent = Recent(
            mode=mode,
            image=image,
            strokes=_compact(strokes),
            label=model.labels[best],
            confidence=round(float(probs[best]), 6),
            embedding=np.asarray(embedding, dtype=np.float32),
            model_version=model.manifest.version,
        )
    sample_id = _store(ctx, recent, canon, kind, _answer_id(body))
    key = "confirmation_id" if kind == CONFIRMATION else "correction_id"
    return {
        key: sample_id,
        # A confirmation is withdrawn by the same message as a correction: it names its id too.
        "correction_id": sample_id,
        "kind": kind,
        "stored": True,
        "label": canon,
        "mode": recent.mode,
        "pending": pending_total(ctx),
    }


def _answer_id(body: dict[str, Any]) -> str | None:
    """The id a page gives its answer (``correction_id``, a UUID), or None: the same answer sent
    again after its reply was lost (the app restarted mid-answer) is then stored once."""
    cid = body.get("correction_id")
    if cid is None:
        return None
    try:
        if isinstance(cid, str) and str(uuid.UUID(cid)) == cid:
            return cid
    except ValueError:
        pass
    raise protocol.ProtocolError("correction_id must be a UUID in its canonical form, or absent")


def _correction_id(body: dict[str, Any]) -> str:
    cid = body.get("correction_id")
    if not isinstance(cid, str) or not cid or len(cid) > protocol.MAX_ID_CHARS:
        raise protocol.ProtocolError("correction_id must be the id of a stored correction")
    return cid


def _withdraw(body: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Take a stored correction or confirmation back (kept in the store as withdrawn)."""
    cid = _correction_id(body)
    by = body.get("by", "pupil")
    if by not in WITHDRAWERS:
        raise protocol.ProtocolError(f"by must be one of {', '.join(WITHDRAWERS)}")
    found = [mode for mode, store in ctx.stores.items() if cid in store]
    if not found:
        raise protocol.ProtocolError("no stored correction has this id", code="unknown_correction")
    mode = found[0]
    with ctx.write_locks[mode]:
        if ctx.closing.is_set():
            raise Unavailable("the server is shutting down; try again in a moment")
        try:
            changed = ctx.stores[mode].withdraw(cid, by)  # False: withdrawn before (a retry)
        except (StoreError, OSError, RuntimeError) as exc:
            log.error("withdrawing a %s correction failed: %s", mode, exc)
            raise Unavailable("the correction could not be taken back; try again") from None
        if changed and ctx.sync is not None:
            ctx.sync.wake()
        served = _served(ctx, mode)
    if served.personaliser is not None:
        served.personaliser.remove(cid)  # the same drawing reads as the model says at once
    ctx.recent.release(cid)
    return {
        "correction_id": cid,
        "withdrawn": True,
        "by": by,
        "mode": mode,
        "pending": pending_total(ctx),
    }


def _store(
    ctx: Context, recent: Recent, label: str, kind: str = CORRECTION, answer_id: str | None = None
) -> str:
    """Store a correction durably, then teach the personaliser; returns the correction's id."""
    with ctx.write_locks[recent.mode]:
        if ctx.closing.is_set():
            raise Unavailable("the server is shutting down; try again in a moment")
        if answer_id is not None:
            done = _answered_before(ctx, answer_id, label, kind)
            if done:
                recent.correction = (answer_id, label, kind)
                return answer_id  # stored before, its reply lost: stored once
        if recent.correction is not None:
            done_id, done_label, done_kind = recent.correction
            if done_label == label and done_kind == kind:
                return done_id  # a repeated request (a retry): already stored
            said = "kept as right" if done_kind == CONFIRMATION else "corrected to"
            raise protocol.ProtocolError(
                f"this prediction was already {said} {done_label!r}",
                code="already_corrected",
            )
        correction = Correction(
            id=answer_id or str(uuid.uuid4()),
            label=label,
            image=recent.image,
            strokes=None if recent.strokes is None else json.loads(recent.strokes),
            predicted=recent.label,
            confidence=recent.confidence,
            model_version=recent.model_version,
            created=time.time(),
            embedding=recent.embedding,
            kind=kind,
        )
        try:
            ctx.stores[recent.mode].add(correction)
        except StoreFull as exc:  # the teacher must act: the message says what to do
            log.warning("a %s correction was refused: %s", recent.mode, exc.message)
            raise Unavailable(exc.message, code=exc.code) from None
        except DiskFull as exc:  # a teacher must free space: /healthz says so until then
            log.error("storing a %s correction failed: %s", recent.mode, exc.message)
            ctx.disk_full_at = time.time()
            raise Unavailable(DISK_FULL, code=exc.code) from None
        except (StoreError, OSError, RuntimeError) as exc:
            log.error("storing a %s correction failed: %s", recent.mode, exc)
            raise Unavailable("the correction could not be stored; try again") from None
        except InvalidCorrection as exc:
            # Everything was checked before; a refusal here is a bug, not the client's fault.
            log.error("the store refused a %s correction: %s", recent.mode, exc)
            raise Internal("the correction could not be stored; it was logged") from None
        recent.correction = (correction.id, label, kind)
        ctx.disk_full_at = None
        if ctx.sync is not None:
            ctx.sync.wake()  # send it now when the server is reachable (sets an event, no I/O)
        # Read under the writer's lock: a swap takes it too, and the new personaliser is given
        # every correction stored before it, so each correction reaches exactly one of them.
        served = _served(ctx, recent.mode)
    personaliser = served.personaliser
    # A confirmation only says what the model already says: it does not personalise.
    if personaliser is not None and kind == CORRECTION:
        try:
            embedding = recent.embedding
            if served.model.manifest.version != recent.model_version:
                # Predicted by the model served before a swap: embed it by the one serving now.
                embedding = served.model.classifier.predict(recent.image).embedding
            personaliser.add(embedding, label, correction.id)
        except (HwrError, ValueError) as exc:
            # The correction is stored; only this session's personalisation misses it.
            log.error("personalisation could not take a %s correction: %s", recent.mode, exc)
    return correction.id


def correction_counts(ctx: Context) -> dict[str, int]:
    """Corrections stored per mode, confirmations and withdrawn ones left out."""
    out = {}
    for mode, store in ctx.stores.items():
        stats = store.stats()
        out[mode] = int(stats.get("corrections", stats.get("count", 0)))
    return out


def pending_total(ctx: Context) -> int:
    """Corrections not yet synced, over both stores."""
    return int(sum(int(store.pending_count()) for store in ctx.stores.values()))


def _answered_before(ctx: Context, answer_id: str, label: str, kind: str) -> bool:
    """Whether ``answer_id`` is stored already as this answer; ProtocolError when it is stored
    as another one (an id is one answer's)."""
    for store in ctx.stores.values():
        if answer_id not in store:
            continue
        stored = store.get(answer_id)
        if stored is not None and stored.withdrawn is None:
            if stored.label == label and stored.kind == kind:
                return True
        said = (
            "was taken back" if stored is not None and stored.withdrawn else "is another answer's"
        )
        raise protocol.ProtocolError(
            f"this correction_id {said}: make a new one for a new answer",
            code="invalid_correction_id",
        )
    return False


def storage(ctx: Context) -> dict[str, Any]:
    """Free space where the stores are, and whether the last correction failed for want of it."""
    free = None
    for store in ctx.stores.values():
        try:
            free = shutil.disk_usage(Path(store.path).parent).free
        except OSError:
            continue
        break
    return {"free_bytes": free, "full": ctx.disk_full_at is not None}


def health(ctx: Context) -> dict[str, Any]:
    """Model versions and labels, store state and pending corrections, as /healthz answers."""
    return {
        "status": "ok",
        "models": {
            mode: {**s.model.info, "labels": list(s.model.labels)} for mode, s in ctx.served.items()
        },
        "model_changed_at": ctx.model_changed_at,
        "delivery": ctx.delivery.status() if ctx.delivery is not None else {"state": "off"},
        "corrections": {mode: _plain(store.stats()) for mode, store in ctx.stores.items()},
        "pending": pending_total(ctx),
        "sync": ctx.sync.status() if ctx.sync is not None else {"state": "off"},
        "tunnel": ctx.tunnel.status() if ctx.tunnel is not None else {"state": "off"},
        "viewers": ctx.viewers.count() if ctx.viewers is not None else 0,
        "uptime_s": round(time.monotonic() - ctx.started, 3),
        "storage": storage(ctx),
    }


def _plain(value: Any) -> Any:
    """numpy scalars and arrays inside a stats dict -> JSON-ready Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


__all__ = [
    "Context",
    "Recent",
    "Served",
    "RecentPredictions",
    "correction_counts",
    "handle_message",
    "health",
    "pending_total",
]
