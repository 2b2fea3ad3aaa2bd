"""``hwr-train``: download data, train, export int8 models, evaluate them."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("hwr-train")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model (resumes from its last epoch checkpoint)")
    p.add_argument("task", choices=["digits", "characters"])
    p.add_argument("--config", help="TOML file of settings")
    p.add_argument("--data-dir")
    p.add_argument("--out-dir")
    p.add_argument("--arch")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--threads", type=int)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--limit", type=int)
    p.add_argument("--extra")
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--init-from", help="a trained .keras model to fine-tune from")
    p.add_argument(
        "--relabel", help="characters: a relabel list (hwr-train relabel) for the training split"
    )
    p.add_argument(
        "--val-size", type=int, help="training images held out for validation (0: train on all)"
    )
    p.add_argument(
        "--no-mixed-precision", dest="mixed_precision", action="store_false", default=None
    )


def cmd_train(args) -> int:
    from .config import load_config
    from .train import train

    keys = (
        "data_dir",
        "out_dir",
        "arch",
        "epochs",
        "batch_size",
        "lr",
        "threads",
        "max_steps",
        "limit",
        "extra",
        "mixed_precision",
        "warmup_epochs",
        "init_from",
        "val_size",
        "relabel",
    )
    cfg = load_config(args.task, args.config, {k: getattr(args, k) for k in keys})
    path = train(cfg)
    print(f"model written to {path}")
    return 0


def _add_download(sub) -> None:
    p = sub.add_parser(
        "download",
        help="fetch the official MNIST and EMNIST files, verified by checksum",
        description="Fetch MNIST and EMNIST ByMerge into the data directory. A mirror given by "
        "--base-url must be laid out like the data directory: <base>/mnist/<file>.gz and "
        "<base>/emnist/gzip.zip.",
    )
    p.add_argument("--data-dir", default="data", help="where to write (default: ./data)")
    p.add_argument("--base-url", help="fetch every file from this mirror instead")
    p.add_argument("--only", choices=["mnist", "emnist"], help="fetch one data set only")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per connect/read")
    p.add_argument("--retries", type=int, default=3, help="retries of a failed transfer")
    p.add_argument("--keep-zip", action="store_true", help="keep EMNIST's gzip.zip")


def cmd_download(args) -> int:
    from .download import Fetcher, download

    if args.timeout <= 0 or args.retries < 0:
        raise ValueError("--timeout must be positive and --retries not negative")
    report = download(
        args.data_dir,
        base_url=args.base_url,
        only=args.only,
        fetcher=Fetcher(timeout=args.timeout, retries=args.retries),
        keep_zip=args.keep_zip,
    )
    print(
        f"{args.data_dir}: {len(report.fetched)} fetched, {len(report.extracted)} extracted, "
        f"{len(report.present)} already present and verified"
    )
    return 0


def _add_relabel(sub) -> None:
    p = sub.add_parser(
        "relabel",
        help="find lower-case f shapes inside EMNIST's F class; write the relabel list",
        description="Train positive-unlabelled CNNs ('f' against the mixed 'F', out of fold) on "
        "the training split and list the F images whose chance of being an f shape is over the "
        "threshold, keyed by image content; the test split's F images are scored by the same "
        "models (never trained on) for a relabelled copy of the test figure.",
    )
    p.add_argument("task", choices=["characters"])
    p.add_argument("--data-dir")
    p.add_argument("--out", help="the list to write (default: trainer/relabels/characters-f.json)")
    p.add_argument("--source", default="F", help="the mixed class (default F)")
    p.add_argument("--target", default="f", help="the class its images move to (default f)")
    p.add_argument("--threshold", type=float, default=0.5, help="posterior over which to move")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--sheets", help="a folder for contact-sheet PNGs of the scored images")


def cmd_relabel(args) -> int:
    import numpy as np

    from hwrcore.labels import CHARACTER_LABELS

    from .data import load_task
    from .relabel import DEFAULT_LIST, contact_sheet, relabel_list, save_list

    if not 0.0 < args.threshold < 1.0 or args.folds < 2 or args.epochs < 1:
        raise ValueError("--threshold must lie in (0, 1), --folds be 2 or more, --epochs 1 or more")
    labels = list(CHARACTER_LABELS)
    for name in (args.source, args.target):
        if name not in labels:
            raise ValueError(f"unknown class {name!r}; known: {labels}")
    tx, ty = load_task(args.task, args.data_dir, "train")
    vx, vy = load_task(args.task, args.data_dir, "test")
    src, dst = labels.index(args.source), labels.index(args.target)
    doc, result, post, test_post = relabel_list(
        tx,
        ty,
        vx,
        vy,
        source=src,
        target=dst,
        labels=labels,
        threshold=args.threshold,
        folds=args.folds,
        epochs=args.epochs,
        seed=args.seed,
    )
    out = Path(args.out) if args.out else DEFAULT_LIST
    save_list(doc, out)
    if args.sheets:
        sheets = Path(args.sheets)
        sheets.mkdir(parents=True, exist_ok=True)
        contact_sheet(tx[ty == src], post, sheets / f"train-{args.source}-by-posterior.png")
        contact_sheet(
            tx[ty == dst],
            result.pos_scores / max(result.c, 1e-6),
            sheets / f"train-{args.target}-by-score.png",
        )
        contact_sheet(vx[vy == src], test_post, sheets / f"test-{args.source}-by-posterior.png")
        np.savez(sheets / "scores.npz", post=post, pos=result.pos_scores, test_post=test_post)
    print(
        f"{out}: {doc['train']['moved']} of {doc['train']['n_source']} training "
        f"{args.source!r} images move to {args.target!r} (expected {doc['expected_positives_in_source']}, "
        f"c = {doc['c']:.3f}); test: {doc['test']['moved']} of {doc['test']['n_source']}"
    )
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate an int8 model on its test split; write reports and manifest metrics",
    )
    p.add_argument("task", choices=["digits", "characters"])
    p.add_argument("--manifest", help="default: models_export/TASK.json")
    p.add_argument("--data-dir")
    p.add_argument("--limit", type=int, help="evaluate only the first N test images")
    p.add_argument("--threads", type=int, default=1, help="interpreter threads")
    p.add_argument(
        "--relabel",
        help="a relabel list for a relabelled test copy (default: the model's own; '' for none)",
    )


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate

    if args.limit is not None and args.limit <= 0:
        raise ValueError("--limit must be a positive number of images")
    manifest = args.manifest or f"models_export/{args.task}.json"
    report = evaluate(
        args.task,
        manifest,
        args.data_dir,
        limit=args.limit,
        threads=args.threads,
        relabel=args.relabel,
    )
    test = report["test"]
    print(
        f"{report['name']} {report['version']}: accuracy {test['accuracy']:.4f}, "
        f"macro recall {test['macro_recall']:.4f}, macro F1 {test['macro_f1']:.4f} "
        f"on {report['measured_on']}"
    )
    if "test_relabelled" in report:
        re = report["test_relabelled"]
        print(
            f"relabelled test copy ({re['moved']} images moved): accuracy {re['accuracy']:.4f}, "
            f"macro recall {re['macro_recall']:.4f}"
        )
    for w in report["warnings"]:
        print(f"hwr-train: warning: {w}", file=sys.stderr)
    if "pendigits" in report:
        pen = report["pendigits"]
        print(f"pendigits test writers: accuracy {pen['accuracy']:.4f} ({pen['n']} drawings)")
    print(f"reports: {', '.join(report['files'].values())} beside {manifest}")
    return 0


def _add_refit(sub) -> None:
    p = sub.add_parser(
        "refit",
        help="refit a trained model's output layer on the (relabelled) training split",
    )
    p.add_argument("task", choices=["digits", "characters"])
    p.add_argument("--init-from", required=True, help="the trained .keras model")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--data-dir")
    p.add_argument("--relabel", default="", help="a relabel list for the training split")
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--steps", type=int, default=800)


def cmd_refit(args) -> int:
    from .refit import RefitConfig, refit_head

    if args.steps < 1 or args.val_size < 0:
        raise ValueError("--steps must be positive and --val-size not negative")
    path = refit_head(
        args.task,
        args.init_from,
        args.out_dir,
        data_dir=args.data_dir,
        relabel=args.relabel,
        val_size=args.val_size,
        seed=args.seed,
        cfg=RefitConfig(steps=args.steps),
    )
    print(f"model written to {path}")
    return 0


def _add_validate(sub) -> None:
    p = sub.add_parser(
        "validate",
        help="score an int8 model on the validation slice held out of the training split",
    )
    p.add_argument("task", choices=["digits", "characters"])
    p.add_argument("--manifest", required=True)
    p.add_argument("--data-dir")
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--relabel", help="a relabel list: also score the relabelled slice")
    p.add_argument("--classes", default="", help="classes whose recall to print, e.g. fFILgq")
    p.add_argument("--out", help="write every figure to this JSON file")
    p.add_argument(
        "--baseline",
        help="the shipped model's manifest: exit 1 unless the model beats it on this slice",
    )
    p.add_argument(
        "--min-recall",
        type=float,
        default=0.6,
        help="with --baseline: every class's recall must reach this (default 0.6)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="with --baseline, for a candidate chosen for speed: points each figure may fall "
        "(e.g. 0.1; default 0: it must be better)",
    )
    p.add_argument(
        "--pendigits-val-writers",
        type=int,
        help="digits: pendigits writers held out (default: the candidate's training config)",
    )


def cmd_validate(args) -> int:
    import json

    from .evaluate import validate

    # A baseline is read on the same slices as the model, the same writers included.
    models = [args.manifest, *([args.baseline] if args.baseline else [])]
    res, *base = validate(
        args.task,
        models,
        args.data_dir,
        val_size=args.val_size,
        seed=args.seed,
        relabel=args.relabel,
        pendigits_val_writers=args.pendigits_val_writers,
    )
    for key in ("as_is", "relabelled", "pendigits"):
        if key not in res:
            continue
        r = res[key]
        recall = {c["label"]: c["recall"] for c in r["per_class"] if c["support"]}
        some = " ".join(f"{c} {recall[c]:.3f}" for c in args.classes if c in recall)
        what = (
            f"{r['n']} strokes of the held-out pendigits writers"
            if key == "pendigits"
            else f"{res['n']} validation images"
        )
        print(
            f"{key}: accuracy {r['accuracy']:.4f}, macro recall {r['macro_recall']:.4f}, "
            f"min recall {min(recall.values()):.3f} ({min(recall, key=recall.get)}) on "
            f"{what}; {some}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    if not args.baseline:
        return 0
    from .evaluate import beats, paired

    ok, reasons = beats(res, base[0], args.min_recall, args.tolerance / 100)
    for key in ("as_is", "relabelled", "pendigits"):
        if key in res and key in base[0]:
            d = paired(res[key]["correct"], base[0][key]["correct"])
            verdict = "within chance" if d["p_value"] >= 0.05 else "unlikely by chance"
            print(
                f"{key}, item by item: right only with the model {d['only_candidate']}, only "
                f"with the baseline {d['only_baseline']} (McNemar exact p = {d['p_value']:.3f}: "
                f"{verdict})"
            )
    print(("better than the baseline: " if ok else "not better than the baseline: ") + reasons)
    return 0 if ok else 1


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export", help="export a trained Keras model to int8 TFLite with its manifest"
    )
    p.add_argument("task", choices=["digits", "characters"])
    p.add_argument("--model", required=True, help="the trained model, e.g. build/TASK/model.keras")
    p.add_argument("--out", default="models_export", help="output folder")
    p.add_argument("--version", help="model version (default: the UTC time)")
    p.add_argument("--parent-version", help="the version this model was fine-tuned from")
    p.add_argument("--data-dir")


def cmd_export(args) -> int:
    from .evaluate import export_with_agreement

    path, agree = export_with_agreement(
        args.task,
        args.model,
        args.out,
        data_dir=args.data_dir,
        version=args.version,
        parent_version=args.parent_version,
    )
    print(f"exported {path}; int8 and Keras agree on {agree:.2%} of test images")
    return 0


def main(argv: list[str] | None = None) -> int:
    from hwrcore.errors import HwrError

    from .data import DataError
    from .download import DownloadError

    parser = argparse.ArgumentParser(prog="hwr-train", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_download(sub)
    _add_train(sub)
    _add_export(sub)
    _add_evaluate(sub)
    _add_relabel(sub)
    _add_validate(sub)
    _add_refit(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handlers = {
        "download": cmd_download,
        "train": cmd_train,
        "export": cmd_export,
        "evaluate": cmd_evaluate,
        "relabel": cmd_relabel,
        "validate": cmd_validate,
        "refit": cmd_refit,
    }
    try:
        return handlers[args.command](args)
    except (ValueError, OSError, DownloadError, DataError, HwrError) as exc:
        message = " ".join(str(exc).split())
        print(f"hwr-train: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
