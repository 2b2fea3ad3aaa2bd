"""Personalisation: a device's own corrections, as embeddings, nudging the model's decision.

The model's penultimate-layer embedding of each stored correction is kept, L2-normalised, in
one float32 matrix. A query's cosine similarities to all of them come from one matrix-vector
product; its ``k`` nearest neighbours above a similarity threshold vote (weighted by how far
above the threshold they are) for their labels; that vote is combined with the model's
probabilities, with a weight that grows with the top neighbour's similarity. Far-away
corrections never vote, so a device personalised by one pupil leaves other drawings alone.

The rule's parameters are calibrated by ``bench/personalise.py`` on pendigits training writers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np

from hwrcore.errors import InvalidLabel

log = logging.getLogger(__name__)

RULES = ("geometric", "mixture")


@dataclass(frozen=True)
class PersonalOptions:
    """Parameters of the kNN vote and of its combination with the model."""

    # Defaults calibrated by bench/personalise.py on the digit model 1.3.0 (see bench/README.md).
    k: int = 3  # neighbours that vote
    threshold: float = 0.8  # cosine similarity a correction needs to vote at all
    weight: float = 0.25  # the vote's weight when the top neighbour is identical (similarity 1)
    eps: float = 0.001  # floor added to both distributions so neither can veto a class outright
    rule: str = "geometric"  # 'geometric': p^(1-g) * q^g; 'mixture': (1-g) p + g q
    cap: int = 2000  # corrections kept; the oldest go first

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if not -1.0 <= self.threshold < 1.0:
            raise ValueError(f"threshold must be in [-1, 1), got {self.threshold}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"weight must be in [0, 1], got {self.weight}")
        if self.eps <= 0:
            raise ValueError(f"eps must be positive, got {self.eps}")
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}")
        if self.cap < 1:
            raise ValueError(f"cap must be at least 1, got {self.cap}")

    @classmethod
    def from_kwargs(cls, **opts: object) -> PersonalOptions:
        """Options from keyword overrides; an unknown key is an error, not a silent no-op."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(opts) - known)
        if unknown:
            raise TypeError(f"unknown personalisation option(s) {unknown}; known: {sorted(known)}")
        return replace(cls(), **opts)  # type: ignore[arg-type]


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalise each row (float32); an all-zero row stays zero and so never matches."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def top_neighbours(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and similarities of the ``k`` most similar items per row, best first: (m, k') each."""
    sims = np.atleast_2d(sims)
    n = sims.shape[1]
    kk = min(k, n)
    if kk < n:
        idx = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
    else:
        idx = np.broadcast_to(np.arange(n), sims.shape).copy()
    part = np.take_along_axis(sims, idx, axis=1)
    order = np.argsort(-part, axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(part, order, axis=1)


def knn_vote(
    top_sims: np.ndarray, top_labels: np.ndarray, n_classes: int, k: int, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Class distribution (m, c) voted by each row's nearest corrections, and each row's strength.

    ``top_sims``/``top_labels`` are (m, j), best first; only the first ``k`` vote, each with
    weight (s - threshold) / (1 - threshold), so a correction at the threshold barely counts.
    Strength (m,) is the nearest one's weight in [0, 1]; 0 means nobody voted.
    """
    s = np.asarray(top_sims, dtype=np.float32)[:, :k]
    lab = np.asarray(top_labels, dtype=np.intp)[:, :k]
    w = np.minimum(np.maximum((s - threshold) * (1.0 / (1.0 - threshold)), 0.0), 1.0)
    m = s.shape[0]
    # One weighted count over (row, class) cells: vectorised, no loop over neighbours or items.
    cells = (lab + np.arange(m, dtype=np.intp)[:, None] * n_classes).ravel()
    votes = np.bincount(cells, weights=w.ravel(), minlength=m * n_classes).reshape(m, n_classes)
    total = votes.sum(axis=1, keepdims=True)
    return (votes / np.maximum(total, 1e-12)).astype(np.float32), w[:, 0]


def mix(probs: np.ndarray, knn: np.ndarray, gate: np.ndarray, eps: float, rule: str) -> np.ndarray:
    """Blend model probabilities with the vote; ``gate`` (m,) is the vote's share, 0 keeps the model."""
    g = np.asarray(gate, dtype=np.float32)[:, None]
    if rule == "geometric":
        logp = (1.0 - g) * np.log(probs + eps) + g * np.log(knn + eps)
        logp -= logp.max(axis=1, keepdims=True)
        out = np.exp(logp)
    elif rule == "mixture":
        out = (1.0 - g) * probs + g * knn
    else:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    return (out / out.sum(axis=1, keepdims=True)).astype(np.float32)


def combine(
    probs: np.ndarray,
    top_sims: np.ndarray,
    top_labels: np.ndarray,
    opts: PersonalOptions,
) -> tuple[np.ndarray, np.ndarray]:
    """Combine model probabilities (m, c) with the votes of each row's neighbours, best first.

    ``top_sims`` and ``top_labels`` are (m, j) with j >= 1 (only the first ``opts.k`` are used).
    Returns the combined probabilities (m, c) and a mask of rows where any neighbour voted;
    rows without one keep the model's probabilities exactly.
    """
    probs = np.atleast_2d(np.asarray(probs, dtype=np.float32))
    knn, strength = knn_vote(top_sims, top_labels, probs.shape[1], opts.k, opts.threshold)
    active = strength > 0
    if not active.any():
        return probs.copy(), active
    mixed = mix(probs, knn, opts.weight * strength, opts.eps, opts.rule)
    if active.all():
        return mixed, active
    return np.where(active[:, None], mixed, probs), active


class Personaliser:
    """Cosine kNN over a device's corrections, combined with the model; thread-safe and bounded."""

    def __init__(self, labels: list[str], *, k: int = PersonalOptions.k, **opts: object):
        self.labels = list(labels)
        if not self.labels:
            raise ValueError("a Personaliser needs the model's labels")
        self._index = {lab: i for i, lab in enumerate(self.labels)}
        self.options = PersonalOptions.from_kwargs(k=k, **opts)
        self._lock = threading.Lock()
        self._dim: int | None = None
        self._emb = np.zeros((0, 0), dtype=np.float32)  # ring buffer, grown up to the cap
        self._lab = np.zeros(0, dtype=np.int32)
        self._ids: list[str | None] = []  # the correction id of each row (None: not known)
        self._n = 0  # rows in use
        self._next = 0  # row the next correction goes to once the cap is reached

    def __len__(self) -> int:
        with self._lock:
            return self._n

    def _label_index(self, label: str) -> int:
        try:
            return self._index[label]
        except (KeyError, TypeError):
            raise InvalidLabel(
                f"label {label!r} is not one of the model's {len(self.labels)} labels"
            ) from None

    def _check_dim(self, d: int) -> None:
        if self._dim is None:
            self._dim = d
        elif d != self._dim:
            raise ValueError(f"embedding has {d} values; this Personaliser holds {self._dim}")

    def _reserve(self, rows: int) -> None:
        """Grow the matrix (doubling, at most to the cap) so it holds ``rows`` rows."""
        cap = self.options.cap
        have = self._emb.shape[0]
        if rows <= have or have >= cap:
            return
        size = min(cap, max(rows, 64, 2 * have))
        emb = np.zeros((size, self._dim or 0), dtype=np.float32)
        lab = np.zeros(size, dtype=np.int32)
        if have:
            emb[:have] = self._emb
            lab[:have] = self._lab
        self._emb, self._lab = emb, lab
        self._ids.extend([None] * (size - len(self._ids)))

    def _append(
        self, vectors: np.ndarray, labels: np.ndarray, ids: Sequence[str | None] | None = None
    ) -> None:
        """Store normalised rows, overwriting the oldest once the cap is reached (lock held)."""
        cap = self.options.cap
        row_ids = list(ids) if ids is not None else [None] * len(vectors)
        vectors, labels, row_ids = vectors[-cap:], labels[-cap:], row_ids[-cap:]
        self._reserve(self._n + len(vectors))
        take = min(cap - self._n, len(vectors))
        self._emb[self._n : self._n + take] = vectors[:take]
        self._lab[self._n : self._n + take] = labels[:take]
        self._ids[self._n : self._n + take] = row_ids[:take]
        self._n += take
        rest = len(vectors) - take
        if rest:
            # Full: the oldest rows are overwritten in a circle (row order does not affect the vote).
            pos = (self._next + np.arange(rest)) % cap
            self._emb[pos] = vectors[take:]
            self._lab[pos] = labels[take:]
            for p, i in zip(pos.tolist(), row_ids[take:], strict=True):
                self._ids[p] = i
            self._next = int((self._next + rest) % cap)

    def load(
        self,
        embeddings: np.ndarray,
        labels: Sequence[str],
        ids: Sequence[str | None] | None = None,
    ) -> None:
        """Replace the stored corrections with these (n, d) embeddings and their labels.

        ``ids`` (the corrections' ids) let :meth:`remove` take one out later. Labels the model
        does not know (from an older label set) are skipped with a warning.
        """
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2:
            raise ValueError(f"embeddings must be (n, d), got shape {emb.shape}")
        if len(labels) != len(emb):
            raise ValueError(f"{len(emb)} embeddings but {len(labels)} labels")
        if ids is not None and len(ids) != len(emb):
            raise ValueError(f"{len(emb)} embeddings but {len(ids)} ids")
        keep = [i for i, lab in enumerate(labels) if lab in self._index]
        if len(keep) < len(labels):
            log.warning(
                "skipped %d stored corrections with unknown labels", len(labels) - len(keep)
            )
        idx = np.array([self._index[labels[i]] for i in keep], dtype=np.int32)
        vectors = normalise_rows(emb[keep]) if keep else np.zeros((0, emb.shape[1]), np.float32)
        kept_ids = [ids[i] for i in keep] if ids is not None else None
        with self._lock:
            self._dim = None
            self._emb = np.zeros((0, 0), dtype=np.float32)
            self._lab = np.zeros(0, dtype=np.int32)
            self._ids = []
            self._n = self._next = 0
            if len(vectors):
                self._check_dim(emb.shape[1])
                self._append(vectors, idx, kept_ids)

    def add(self, embedding: np.ndarray, label: str, id: str | None = None) -> None:
        """Store one correction's embedding under its label (after it is stored on disk)."""
        vec = np.asarray(embedding, dtype=np.float32).reshape(-1)
        li = self._label_index(label)
        row = normalise_rows(vec[None, :])
        with self._lock:
            self._check_dim(vec.shape[0])
            self._append(row, np.array([li], dtype=np.int32), [id])

    def remove(self, id: str) -> bool:
        """Forget the correction with this id at once (it was withdrawn); False if not held."""
        with self._lock:
            try:
                row = self._ids.index(id, 0, self._n)
            except ValueError:
                return False
            last = self._n - 1
            # The last row takes the freed place: rows stay packed, and order never matters.
            self._emb[row] = self._emb[last]
            self._lab[row] = self._lab[last]
            self._ids[row] = self._ids[last]
            self._ids[last] = None
            self._n = last
            self._next = 0
            return True

    def decide(self, probs: np.ndarray, embedding: np.ndarray) -> tuple[np.ndarray, str]:
        """Combined probabilities over ``labels``; "personal" if the vote changed the top class."""
        p = np.asarray(probs, dtype=np.float32).reshape(-1)
        if p.shape[0] != len(self.labels):
            raise ValueError(f"{p.shape[0]} probabilities for {len(self.labels)} labels")
        q = normalise_rows(np.asarray(embedding, dtype=np.float32).reshape(1, -1))
        with self._lock:
            n = self._n
            if n == 0:
                return p, "model"
            if q.shape[1] != self._dim:
                raise ValueError(f"embedding has {q.shape[1]} values; stored ones have {self._dim}")
            sims = self._emb[:n] @ q[0]
            k = self.options.k
            idx = np.argpartition(sims, n - k)[n - k :] if n > k else np.arange(n)
            idx = idx[np.argsort(-sims[idx], kind="stable")]
            top, top_lab = sims[idx], self._lab[idx]
        if top[0] < self.options.threshold:
            return p, "model"
        out, _ = combine(p[None, :], top[None, :], top_lab[None, :], self.options)
        out = out[0]
        source = "personal" if int(np.argmax(out)) != int(np.argmax(p)) else "model"
        return out, source


__all__ = [
    "PersonalOptions",
    "Personaliser",
    "combine",
    "knn_vote",
    "mix",
    "normalise_rows",
    "top_neighbours",
]
