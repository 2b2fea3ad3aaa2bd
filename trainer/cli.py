"""``hwr-train``: download data, train, export int8 models, evaluate them."""

from __future__ import annotations

import argparse
import logging
import sys

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
    p.add_argument("--no-mixed-precision", dest="mixed_precision", action="store_false", default=None)


def cmd_train(args) -> int:
    from .config import load_config
    from .train import train

    keys = ("data_dir", "out_dir", "arch", "epochs", "batch_size", "lr", "threads", "max_steps",
            "limit", "extra", "mixed_precision")
    cfg = load_config(args.task, args.config, {k: getattr(args, k) for k in keys})
    path = train(cfg)
    print(f"model written to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hwr-train", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handlers = {"train": cmd_train}
    try:
        return handlers[args.command](args)
    except (ValueError, OSError) as exc:
        print(f"hwr-train: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
