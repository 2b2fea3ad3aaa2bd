"""Personalisation on pendigits writers: does one writer's corrections help them and spare others?

Protocol, per writer W: the first N samples of each digit that W wrote (file order; or a seeded
random N with ``--selection random``) become W's corrections in a fresh personaliser; W's
accuracy on the rest of their samples is measured before and after, and, with W's corrections
still loaded, the accuracy on every other writer's samples (pooled) before and after.

The combination rule's parameters are chosen on pendigits *training-file* writers (a grid
search: largest mean gain for the writer, subject to no writer's corrections costing the other
writers more than ``--max-drop`` points): by default only those the model's training held out
(the manifest says which were used), since a model already fits the writers it trained on. The
test writers, never used in training, are then measured once with those parameters.

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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge.classifier import Classifier
from edge.personal import PersonalOptions, combine, knn_vote, mix, normalise_rows, top_neighbours
from hwrcore.preprocess import strokes_to_input
from trainer.data import load_pendigits
from trainer.datasets import pendigits_writer_split

ROOT = Path(__file__).resolve().parent.parent
MODEL_CANDIDATES = (
    ROOT / "models_export" / "digits.json",
    ROOT / "build" / "dev-models" / "digits.json",
)

GRID = {
    "rule": ("geometric", "mixture"),
    "k": (1, 3, 5, 7),
    "threshold": (0.5, 0.8, 0.9, 0.93, 0.95, 0.96, 0.97, 0.98, 0.99),
    "weight": (0.1, 0.25, 0.5, 0.75, 1.0),
    "eps": (0.001, 0.01),
}
LL_FLOOR = 1e-4  # int8 probabilities hold exact zeros
MAX_OWN_LOSS = 1.0  # points a writer may lose on their own drawings in any stress condition


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

    def only(self, writers: set[int]) -> Features:
        """The samples of these writers only."""
        keep = np.isin(self.writers, sorted(writers))
        return Features(self.probs[keep], self.unit[keep], self.labels[keep], self.writers[keep])


@dataclass
class WriterSplit:
    """One writer's corrections, and the neighbours of every sample among them."""

    writer: int
    corrections: np.ndarray  # indices of the writer's samples used as corrections
    own_rest: np.ndarray  # the writer's other samples
    others: np.ndarray  # every other writer's samples
    top_idx: np.ndarray  # (m, kmax) nearest corrections of every sample, best first
    top_sims: np.ndarray  # (m, kmax)
    stored: np.ndarray  # (m,) the label each sample would be stored under as a correction

    def mislabelled(self, n_wrong: int, n_classes: int, rng: np.random.Generator) -> WriterSplit:
        """The same split with ``n_wrong`` of its corrections stored under a wrong label."""
        stored = self.stored.copy()
        for i in rng.choice(self.corrections, min(n_wrong, len(self.corrections)), replace=False):
            stored[i] = (stored[i] + rng.integers(1, n_classes)) % n_classes
        return replace(self, stored=stored)

    def only_digits(self, f: Features, n_digits: int, rng: np.random.Generator) -> WriterSplit:
        """The same writer with the corrections of ``n_digits`` random digits only.

        On a device, corrections are sparse: most classes have none, and a drawing of such a
        class still finds a nearest correction, of another class, that must not outvote the model.
        """
        digits = rng.choice(f.probs.shape[1], n_digits, replace=False)
        corr = self.corrections[np.isin(f.labels[self.corrections], digits)]
        idx, top = top_neighbours(f.unit @ f.unit[corr].T, self.top_idx.shape[1])
        return replace(self, corrections=corr, top_idx=corr[idx], top_sims=top)


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


def calibration_writers(manifest: Any, samples: list, choice: str) -> tuple[set[int], str]:
    """Training-file writers to calibrate on, and why: those the model never saw, where known.

    A digit model trained on pendigits training writers (``pendigits_variants`` >= 0 in its
    manifest) held ``pendigits_val_writers`` of them out; only those are unseen.
    """
    every = {s.writer for s in samples}
    cfg = (manifest.training or {}).get("config", {})
    trained_on_pen = int(cfg.get("pendigits_variants", -1)) >= 0
    if choice == "all" or (choice == "auto" and not trained_on_pen):
        return every, "all training-file writers"
    n_val = int(cfg.get("pendigits_val_writers", 0))
    _, held_out = pendigits_writer_split(samples, n_val)
    if not held_out:
        raise ValueError(
            "the model holds no pendigits training writers out: use --calibrate-on all"
        )
    return held_out, "training-file writers held out of the model's training"


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
        others = np.flatnonzero(f.writers != w)
        out.append(WriterSplit(int(w), corr, rest, others, corr[idx], top, f.labels.copy()))
    return out


def personal_pred(f: Features, sp: WriterSplit, opts: PersonalOptions) -> np.ndarray:
    """Every sample's decision with this writer's corrections loaded (the edge's combine rule)."""
    pred = f.model_pred.copy()
    rows = np.flatnonzero(sp.top_sims[:, 0] >= opts.threshold)
    if len(rows):
        mixed, _ = combine(f.probs[rows], sp.top_sims[rows], sp.stored[sp.top_idx[rows]], opts)
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


def _prepare(f: Features, splits: list[WriterSplit], k: int, thr: float) -> list[tuple]:
    """Per writer: the rows with a voter above the threshold, their vote, and which are the writer's."""
    out = []
    for sp in splits:
        rows = np.flatnonzero(sp.top_sims[:, 0] >= thr)
        knn, strength = knn_vote(
            sp.top_sims[rows], sp.stored[sp.top_idx[rows]], f.probs.shape[1], k, thr
        )
        own = (f.writers[rows] == sp.writer) & ~np.isin(rows, sp.corrections)
        out.append((rows, knn, strength, own, f.writers[rows] != sp.writer))
    return out


def _score(
    f: Features,
    splits: list[WriterSplit],
    prepared: list[tuple],
    weight: float,
    eps: float,
    rule: str,
) -> dict:
    """Summary of one setting from prepared votes (the same figures ``evaluate`` gives)."""
    correct = f.model_pred == f.labels
    own_n = np.array([len(sp.own_rest) for sp in splits], dtype=np.float64)
    others_n = np.array([len(sp.others) for sp in splits], dtype=np.float64)
    own_before = np.array([correct[sp.own_rest].sum() for sp in splits]) / own_n * 100.0
    others_before = np.array([correct[sp.others].sum() for sp in splits]) / others_n * 100.0
    gain = np.empty(len(splits))
    drop = np.empty(len(splits))
    loglik = np.empty(len(splits))
    for i, (rows, knn, strength, own, others) in enumerate(prepared):
        mixed = mix(f.probs[rows], knn, weight * strength, eps, rule)
        truth = f.labels[rows]
        delta = (mixed.argmax(axis=1) == truth).astype(np.int64) - correct[rows]
        gain[i] = delta[own].sum() / own_n[i] * 100.0
        drop[i] = -delta[others].sum() / others_n[i] * 100.0
        # Smooth signal for ties: change in log-probability of the true class.
        ll = np.log(np.take_along_axis(mixed, truth[:, None], 1)[:, 0] + LL_FLOOR)
        ll -= np.log(np.take_along_axis(f.probs[rows], truth[:, None], 1)[:, 0] + LL_FLOOR)
        loglik[i] = ll[own].sum() / own_n[i] + ll[others].sum() / others_n[i]
    return {
        "before": float(own_before.mean()),
        "after": float((own_before + gain).mean()),
        "gain_mean": float(gain.mean()),
        "gain_min": float(gain.min()),
        "others_before": float(others_before.mean()),
        "others_after": float((others_before - drop).mean()),
        "others_drop_mean": float(drop.mean()),
        "others_drop_max": float(drop.max()),
        "loglik_gain": float(loglik.mean()),
    }


def is_safe(summary: dict[str, dict], max_drop: float) -> bool:
    """The grid's safety rule over a setting's summaries, one per condition (see calibrate)."""
    return all(
        v["others_drop_max"] <= max_drop
        and v["gain_min"] >= -MAX_OWN_LOSS
        and (name == "clean" or v["gain_mean"] >= 0.0)
        for name, v in summary.items()
    )


def calibrate(
    f: Features, conditions: dict[str, list[WriterSplit]], max_drop: float
) -> tuple[PersonalOptions, dict[str, dict], int]:
    """Grid search: the best mean gain for the writer (``clean`` condition) among safe settings.

    Safe, in every condition (correct corrections; some mislabelled, as when a pupil taps the
    wrong key; corrections of a few digits only, as on a real device): no writer's corrections
    cost the other writers more than ``max_drop`` points or themselves more than
    ``MAX_OWN_LOSS``, and with wrong or sparse corrections the writers' own mean accuracy does
    not fall. The vote depends only on (k, threshold), so it is computed once per pair.
    """
    best: tuple | None = None
    tried = 0
    for k, thr in itertools.product(GRID["k"], GRID["threshold"]):
        votes = {name: _prepare(f, splits, k, thr) for name, splits in conditions.items()}
        for rule, weight, eps in itertools.product(GRID["rule"], GRID["weight"], GRID["eps"]):
            tried += 1
            summary = {
                name: _score(f, conditions[name], votes[name], weight, eps, rule) for name in votes
            }
            safe = is_safe(summary, max_drop)
            clean = summary["clean"]
            # Safe first, then largest gain, then the true classes' log-probability in the worst
            # condition: accuracy ties where the model rarely errs, but a vote that would
            # mislead shows as lost probability long before it flips a decision.
            score = (
                safe,
                round(clean["gain_mean"], 6),
                round(min(v["loglik_gain"] for v in summary.values()), 6),
            )
            if best is None or score > best[0]:
                opts = PersonalOptions(k=k, threshold=thr, weight=weight, eps=eps, rule=rule)
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
        "--mislabelled",
        type=float,
        default=0.1,
        help="share of each writer's corrections given a wrong label in the robustness check (0.1)",
    )
    ap.add_argument(
        "--draws",
        type=int,
        default=5,
        help="random variants per writer of each stress condition (default 5)",
    )
    ap.add_argument(
        "--few-digits",
        type=int,
        default=3,
        help="digits whose corrections are kept in the sparse-corrections check (default 3)",
    )
    ap.add_argument(
        "--calibrate-on",
        choices=("auto", "heldout", "all"),
        default="auto",
        help="training-file writers to calibrate on: those held out of the model's training "
        "(auto, when the manifest says it trained on pendigits) or all",
    )
    ap.add_argument(
        "--options",
        default=None,
        help="measure these settings (JSON, e.g. the edge's defaults '{\"weight\": 0.5}' over "
        "PersonalOptions()) instead of the grid's choice; the report says whether they are safe",
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
    train_samples = load_pendigits(args.data_dir, "train")
    cal_writers, cal_why = calibration_writers(m, train_samples, args.calibrate_on)
    train = featurise(train_samples, clf, cache_for("train")).only(cal_writers)
    test = featurise(load_pendigits(args.data_dir, "test"), clf, cache_for("test"))
    t1 = time.perf_counter()
    print(
        f"model outputs for {len(train.labels)} + {len(test.labels)} samples in {t1 - t0:.0f} s",
        file=sys.stderr,
    )
    train_splits = split_writers(train, args.per_digit, args.selection, args.seed, kmax)
    test_splits = split_writers(test, args.per_digit, args.selection, args.seed, kmax)
    n_classes = test.probs.shape[1]
    n_wrong = int(round(args.mislabelled * args.per_digit * n_classes))
    rng = np.random.default_rng(args.seed + 1)

    def conditions(f: Features, splits: list[WriterSplit]) -> dict[str, list[WriterSplit]]:
        """Each writer as measured, plus ``--draws`` random variants per writer of each stress."""
        draws = range(args.draws)
        return {
            "clean": splits,
            "mislabelled": [
                sp.mislabelled(n_wrong, n_classes, rng) for _ in draws for sp in splits
            ],
            "few_digits": [sp.only_digits(f, args.few_digits, rng) for _ in draws for sp in splits],
        }

    train_cond = conditions(train, train_splits)
    test_cond = conditions(test, test_splits)
    opts, train_summary, tried = calibrate(train, train_cond, args.max_drop)
    grid_choice = {k: getattr(opts, k) for k in GRID}
    # The search's shortcut and the edge's own combine rule must agree on the chosen setting.
    for name, splits in train_cond.items():
        got, want = summarise(evaluate(train, splits, opts)), train_summary[name]
        if any(abs(got[key] - want[key]) > 1e-6 for key in ("gain_mean", "others_drop_max")):
            raise RuntimeError(f"calibration and evaluation disagree ({name}): {want} vs {got}")
    if args.options is not None:
        opts = PersonalOptions.from_kwargs(**json.loads(args.options))
        train_summary = {
            name: summarise(evaluate(train, sp, opts)) for name, sp in train_cond.items()
        }
    t2 = time.perf_counter()
    print(f"calibrated over {tried} settings in {t2 - t1:.0f} s", file=sys.stderr)
    rows = evaluate(test, test_splits, opts)
    s = summarise(rows)
    test_summary = {name: summarise(evaluate(test, sp, opts)) for name, sp in test_cond.items()}

    chosen = {k: getattr(opts, k) for k in GRID}
    how_chosen = (
        f"chosen over {tried} settings on"
        if args.options is None
        else f"given by --options ({'safe' if is_safe(train_summary, args.max_drop) else 'NOT safe'}"
        f" by the grid's rule; the grid chose `{json.dumps(grid_choice)}` over {tried} settings) on"
    )
    how = "the first" if args.selection == "first" else f"a random (seed {args.seed})"
    per_writer = args.per_digit * n_classes
    described = {
        "clean": f"{per_writer} correct corrections (the table above)",
        "mislabelled": f"{n_wrong} of the {per_writer} stored under a wrong label",
        "few_digits": f"only the corrections of {args.few_digits} random digits",
    }
    robust = [
        "| corrections | writers | own change mean | own change smallest | others change mean "
        "| others change worst |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for where, summ in (("test", test_summary), ("calibration", train_summary)):
        for name, v in summ.items():
            robust.append(
                f"| {described[name]} | {where} | {v['gain_mean']:+.2f} | {v['gain_min']:+.2f} "
                f"| {-v['others_drop_mean']:+.2f} | {-v['others_drop_max']:+.2f} |"
            )
    report = "\n".join(
        [
            f"## Personalisation on pendigits test writers ({m.name} {m.version})",
            "",
            f"Corrections: {how} {args.per_digit} samples of each digit per writer; "
            "n: that writer's remaining samples; others: every other test writer's samples, "
            "pooled, with that writer's corrections loaded.",
            "",
            markdown(rows, s, f"Test writers ({len(rows)}), parameters from training-file writers"),
            "",
            "### Safety: wrong and sparse corrections (points; others' target: no worse than -0.50)",
            "",
            *robust,
            "",
            f"Parameters: `{json.dumps(chosen)}`, {how_chosen} "
            f"{len(train_splits)} pendigits {cal_why} "
            f"({', '.join(map(str, sorted(cal_writers)))}); the grid's rule: the largest mean "
            "gain among settings "
            f"where, in all three conditions ({args.draws} random draws per writer of each stress), "
            f"no writer's corrections cost the others more than {args.max_drop} points or "
            f"themselves more than {MAX_OWN_LOSS:g}, and with wrong or sparse corrections the "
            "writers' own mean accuracy does not fall.",
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
                        "calibration_writers": sorted(cal_writers),
                        "mislabelled_corrections": n_wrong,
                        "few_digits": args.few_digits,
                        "draws": args.draws,
                    },
                    "parameters": asdict(opts),
                    "grid_choice": grid_choice,
                    "calibration": train_summary,
                    "test": test_summary,
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
