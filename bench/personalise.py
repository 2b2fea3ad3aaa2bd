"""Personalisation on pendigits writers: does one writer's corrections help them and spare others?

Protocol, per writer W: the first N samples of each digit that W wrote (file order; or a seeded
random N with ``--selection random``) become W's corrections in a fresh personaliser; W's
accuracy on the rest of their samples is measured before and after, and, with W's corrections
still loaded, the accuracy on every other writer's samples (pooled) before and after.

The combination rule's parameters are chosen on the pendigits *training* writers (a grid
search: largest mean gain for the writer, subject to no writer's corrections costing the other
writers more than ``--max-drop`` points); the test writers, never used in training, are then
measured once with those parameters.

Each sample is rendered with hwrcore.preprocess.strokes_to_input and run through the model once;
the kNN part reuses the cached probabilities and embeddings, with the same code the edge runs.

    .venv/bin/python bench/personalise.py --out build/bench/personalise.md
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge.classifier import Classifier
from edge.personal import PersonalOptions, combine, knn_vote, mix, normalise_rows, top_neighbours
from hwrcore.preprocess import strokes_to_input
from trainer.data import load_pendigits

ROOT = Path(__file__).resolve().parent.parent
MODEL_CANDIDATES = (
    ROOT / "models_export" / "digits.json",
    ROOT / "build" / "dev-models" / "digits.json",
)

GRID = {
    "rule": ("geometric", "mixture"),
    "k": (1, 3, 5, 7),
    "threshold": (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.96, 0.98),
    "weight": (0.25, 0.5, 0.75, 1.0),
    "eps": (0.001, 0.01, 0.05),
}


@dataclass
class Features:
    """One split's model outputs, computed once per sample."""

    probs: np.ndarray  # (m, c)
    unit: np.ndarray  # (m, d) L2-normalised embeddings
    labels: np.ndarray  # (m,) class index
    writers: np.ndarray  # (m,)

    @property
    def model_pred(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


@dataclass
class WriterSplit:
    """One writer's corrections, and the neighbours of every sample among them."""

    writer: int
    corrections: np.ndarray  # indices of the writer's samples used as corrections
    own_rest: np.ndarray  # the writer's other samples
    others: np.ndarray  # every other writer's samples
    top_idx: np.ndarray  # (m, kmax) nearest corrections of every sample, best first
    top_sims: np.ndarray  # (m, kmax)


def default_model() -> Path:
    """The shipped digit model, else the untrained development one."""
    for cand in MODEL_CANDIDATES:
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"no digit model: looked for {', '.join(map(str, MODEL_CANDIDATES))}")


def featurise(samples: list, clf: Classifier, cache: Path | None = None) -> Features:
    """Render and predict every sample once (cached on disk by model sha256 when asked)."""
    labels = np.array([s.label for s in samples], dtype=np.int32)
    writers = np.array([s.writer for s in samples], dtype=np.int32)
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            if z["labels"].shape == labels.shape and np.array_equal(z["labels"], labels):
                return Features(z["probs"], normalise_rows(z["emb"]), labels, writers)
    style = clf.manifest.style
    index = {lab: i for i, lab in enumerate(clf.labels)}
    if [index[str(d)] for d in range(10)] != list(range(10)):
        raise ValueError(f"expected digit labels 0-9 in order, got {clf.labels}")
    probs, embs = [], []
    for s in samples:
        p = clf.predict(strokes_to_input(s.strokes, style))
        probs.append(p.probabilities)
        embs.append(p.embedding)
    P, E = np.stack(probs).astype(np.float32), np.stack(embs).astype(np.float32)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, probs=P, emb=E, labels=labels)
    return Features(P, normalise_rows(E), labels, writers)


def pick_corrections(
    f: Features, writer: int, per_digit: int, selection: str, rng: np.random.Generator
) -> np.ndarray:
    """Indices of a writer's corrections: the first (or random) ``per_digit`` samples of each digit."""
    chosen = []
    for d in range(f.probs.shape[1]):
        idx = np.flatnonzero((f.writers == writer) & (f.labels == d))
        if selection == "random":
            idx = rng.permutation(idx)
        chosen.extend(idx[:per_digit].tolist())
    return np.array(sorted(chosen), dtype=np.int64)


def split_writers(
    f: Features, per_digit: int, selection: str, seed: int, kmax: int
) -> list[WriterSplit]:
    """Corrections and nearest-correction tables for each writer of a split."""
    rng = np.random.default_rng(seed)
    out = []
    for w in np.unique(f.writers):
        corr = pick_corrections(f, int(w), per_digit, selection, rng)
        mine = np.flatnonzero(f.writers == w)
        rest = np.setdiff1d(mine, corr)
        sims = f.unit @ f.unit[corr].T  # (m, n_corr): one product for the whole split
        idx, top = top_neighbours(sims, kmax)
        out.append(WriterSplit(int(w), corr, rest, np.flatnonzero(f.writers != w), corr[idx], top))
    return out


def personal_pred(f: Features, sp: WriterSplit, opts: PersonalOptions) -> np.ndarray:
    """Every sample's decision with this writer's corrections loaded (the edge's combine rule)."""
    pred = f.model_pred.copy()
    rows = np.flatnonzero(sp.top_sims[:, 0] >= opts.threshold)
    if len(rows):
        mixed, _ = combine(f.probs[rows], sp.top_sims[rows], f.labels[sp.top_idx[rows]], opts)
        pred[rows] = mixed.argmax(axis=1)
    return pred


def accuracy(pred: np.ndarray, truth: np.ndarray, idx: np.ndarray) -> float:
    return float((pred[idx] == truth[idx]).mean() * 100.0) if len(idx) else float("nan")


def evaluate(f: Features, splits: list[WriterSplit], opts: PersonalOptions) -> list[dict]:
    """Per writer: own before/after on the rest of their samples, others' before/after."""
    base = f.model_pred
    rows = []
    for sp in splits:
        pred = personal_pred(f, sp, opts)
        rows.append(
            {
                "writer": sp.writer,
                "corrections": len(sp.corrections),
                "n": len(sp.own_rest),
                "before": accuracy(base, f.labels, sp.own_rest),
                "after": accuracy(pred, f.labels, sp.own_rest),
                "others_n": len(sp.others),
                "others_before": accuracy(base, f.labels, sp.others),
                "others_after": accuracy(pred, f.labels, sp.others),
            }
        )
    return rows


def summarise(rows: list[dict]) -> dict:
    gain = [r["after"] - r["before"] for r in rows]
    drop = [r["others_before"] - r["others_after"] for r in rows]
    return {
        "before": float(np.mean([r["before"] for r in rows])),
        "after": float(np.mean([r["after"] for r in rows])),
        "gain_mean": float(np.mean(gain)),
        "gain_min": float(np.min(gain)),
        "others_before": float(np.mean([r["others_before"] for r in rows])),
        "others_after": float(np.mean([r["others_after"] for r in rows])),
        "others_drop_mean": float(np.mean(drop)),
        "others_drop_max": float(np.max(drop)),
    }


def calibrate(
    f: Features, splits: list[WriterSplit], max_drop: float
) -> tuple[PersonalOptions, dict, int]:
    """Grid search on training writers: best mean gain with every writer's others' drop <= max_drop.

    The vote depends only on (k, threshold), so it is computed once per pair and every
    combination setting reuses it; only rows with a neighbour above the threshold can change.
    """
    correct = f.model_pred == f.labels
    n_classes = f.probs.shape[1]
    own_n = np.array([len(sp.own_rest) for sp in splits], dtype=np.float64)
    others_n = np.array([len(sp.others) for sp in splits], dtype=np.float64)
    own_before = np.array([correct[sp.own_rest].sum() for sp in splits]) / own_n * 100.0
    others_before = np.array([correct[sp.others].sum() for sp in splits]) / others_n * 100.0
    mixes = list(itertools.product(GRID["rule"], GRID["weight"], GRID["eps"]))
    best: tuple | None = None
    tried = 0
    for k, thr in itertools.product(GRID["k"], GRID["threshold"]):
        # Per writer: the rows that have a voter, the vote, and who those rows belong to.
        prepared = []
        for sp in splits:
            rows = np.flatnonzero(sp.top_sims[:, 0] >= thr)
            knn, strength = knn_vote(
                sp.top_sims[rows], f.labels[sp.top_idx[rows]], n_classes, k, thr
            )
            own = f.writers[rows] == sp.writer
            own &= ~np.isin(rows, sp.corrections)
            prepared.append((rows, knn, strength, own))
        for rule, weight, eps in mixes:
            gain = np.empty(len(splits))
            drop = np.empty(len(splits))
            for i, (rows, knn, strength, own) in enumerate(prepared):
                pred = mix(f.probs[rows], knn, weight * strength, eps, rule).argmax(axis=1)
                delta = (pred == f.labels[rows]).astype(np.int64) - correct[rows]
                gain[i] = delta[own].sum() / own_n[i] * 100.0
                drop[i] = -delta[f.writers[rows] != splits[i].writer].sum() / others_n[i] * 100.0
            tried += 1
            opts = PersonalOptions(k=k, threshold=thr, weight=weight, eps=eps, rule=rule)
            summary = {
                "before": float(own_before.mean()),
                "after": float((own_before + gain).mean()),
                "gain_mean": float(gain.mean()),
                "gain_min": float(gain.min()),
                "others_before": float(others_before.mean()),
                "others_after": float((others_before - drop).mean()),
                "others_drop_mean": float(drop.mean()),
                "others_drop_max": float(drop.max()),
            }
            feasible = summary["others_drop_max"] <= max_drop
            # Feasible first, then largest gain, then least harm, then the gentlest weight.
            score = (
                feasible,
                round(summary["gain_mean"], 6),
                -round(summary["others_drop_mean"], 6),
                -weight,
            )
            if best is None or score > best[0]:
                best = (score, opts, summary)
    assert best is not None
    return best[1], best[2], tried


def markdown(rows: list[dict], s: dict, title: str) -> str:
    lines = [
        f"### {title}",
        "",
        "| writer | corrections | n | before % | after % | change | others n | others before % | others after % | others change |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['writer']} | {r['corrections']} | {r['n']} | {r['before']:.2f} | {r['after']:.2f} "
            f"| {r['after'] - r['before']:+.2f} | {r['others_n']} | {r['others_before']:.2f} "
            f"| {r['others_after']:.2f} | {r['others_after'] - r['others_before']:+.2f} |"
        )
    lines.append(
        f"| **mean** | | | **{s['before']:.2f}** | **{s['after']:.2f}** | **{s['gain_mean']:+.2f}** | "
        f"| **{s['others_before']:.2f}** | **{s['others_after']:.2f}** | **{-s['others_drop_mean']:+.2f}** |"
    )
    lines.append("")
    lines.append(
        f"Writer's own gain: mean {s['gain_mean']:+.2f}, smallest {s['gain_min']:+.2f} points. "
        f"Other writers: mean change {-s['others_drop_mean']:+.2f}, worst "
        f"{-s['others_drop_max']:+.2f} points (target: no worse than -0.50)."
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None, help="data folder (default ../shared/data)")
    ap.add_argument("--model", type=Path, default=None, help="digit model manifest")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown report here too")
    ap.add_argument("--json", type=Path, default=None, help="write the figures as JSON here")
    ap.add_argument("--per-digit", type=int, default=3, help="corrections per digit (default 3)")
    ap.add_argument("--selection", choices=("first", "random"), default="first")
    ap.add_argument("--seed", type=int, default=0, help="seed for --selection random")
    ap.add_argument(
        "--max-drop",
        type=float,
        default=0.25,
        help="calibration: largest drop for other writers allowed on training writers",
    )
    ap.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="folder for cached model outputs (keyed by model sha256)",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = args.model or default_model()
    t0 = time.perf_counter()
    clf = Classifier(model)
    m = clf.manifest
    print(f"model {m.name} {m.version} ({model})", file=sys.stderr)

    def cache_for(split: str) -> Path | None:
        return args.cache / f"pendigits-{split}-{m.sha256[:16]}.npz" if args.cache else None

    kmax = max(GRID["k"])
    train = featurise(load_pendigits(args.data_dir, "train"), clf, cache_for("train"))
    test = featurise(load_pendigits(args.data_dir, "test"), clf, cache_for("test"))
    t1 = time.perf_counter()
    print(
        f"model outputs for {len(train.labels)} + {len(test.labels)} samples in {t1 - t0:.0f} s",
        file=sys.stderr,
    )
    train_splits = split_writers(train, args.per_digit, args.selection, args.seed, kmax)
    test_splits = split_writers(test, args.per_digit, args.selection, args.seed, kmax)
    opts, train_summary, tried = calibrate(train, train_splits, args.max_drop)
    # The search's shortcut and the edge's own combine rule must agree on the chosen setting.
    check = summarise(evaluate(train, train_splits, opts))
    if any(abs(check[key] - train_summary[key]) > 1e-6 for key in ("gain_mean", "others_drop_max")):
        raise RuntimeError(f"calibration and evaluation disagree: {train_summary} vs {check}")
    t2 = time.perf_counter()
    print(f"calibrated over {tried} settings in {t2 - t1:.0f} s", file=sys.stderr)
    rows = evaluate(test, test_splits, opts)
    s = summarise(rows)

    chosen = {k: getattr(opts, k) for k in GRID}
    how = "the first" if args.selection == "first" else f"a random (seed {args.seed})"
    report = "\n".join(
        [
            f"## Personalisation on pendigits test writers ({m.name} {m.version})",
            "",
            f"Corrections: {how} {args.per_digit} samples of each digit per writer; "
            "n: that writer's remaining samples; others: every other test writer's samples, "
            "pooled, with that writer's corrections loaded.",
            "",
            markdown(rows, s, f"Test writers ({len(rows)}), parameters from training writers"),
            "",
            f"Parameters (chosen on {len(train_splits)} pendigits training writers over {tried} "
            f"settings, others' drop <= {args.max_drop} points for every writer): `{json.dumps(chosen)}`. "
            f"On training writers: gain {train_summary['gain_mean']:+.2f}, "
            f"others worst {-train_summary['others_drop_max']:+.2f} points.",
            "",
        ]
    )
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "model": {"name": m.name, "version": m.version, "sha256": m.sha256},
                    "protocol": {
                        "per_digit": args.per_digit,
                        "selection": args.selection,
                        "seed": args.seed,
                        "max_drop": args.max_drop,
                    },
                    "parameters": asdict(opts),
                    "train": train_summary,
                    "test": s,
                    "test_writers": rows,
                },
                indent=2,
            )
            + "\n"
        )
    print(f"done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
