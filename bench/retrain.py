"""Time one retraining job end to end: score, snapshot, fine-tune, export, evaluate, gate, publish.

A school of ``--devices`` devices sends ``--corrections`` corrections of handwriting the
shipped model was not trained on; the job runs with the server's default settings (3 epochs,
300 replayed base images per class, the whole base test split) in this process, exactly as
the worker runs it, and the time of each stage is printed.

* digits: USPS digits (another writer population: US postal codes), each rescaled to the MNIST
  convention through hwrcore.preprocess, labelled with their true digit: every USPS digit the
  shipped model misreads, and others it reads right, up to ``--corrections``;
* characters: lower-case ``f`` from the EMNIST letters training split (the class the shipped
  model misreads as ``F``) and other letters from the same split, with their true labels.

    .venv/bin/python bench/retrain.py digits [--corrections 1000] [--devices 5]
"""

from __future__ import annotations

import argparse
import base64
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hwrcore.labels import LABEL_SETS  # noqa: E402
from sync_server import jobs  # noqa: E402
from sync_server.config import load_config  # noqa: E402
from sync_server.corrections import merge as merge_batch  # noqa: E402
from sync_server.devices import add_device, authenticate  # noqa: E402
from sync_server.state import open_state  # noqa: E402


def school_images(task: str, data_dir: Path, n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    if task == "digits":
        import h5py

        from edge.classifier import Classifier
        from hwrcore.preprocess import image_to_input

        with h5py.File(data_dir / "usps" / "usps.h5", "r") as f:
            x = np.concatenate([f["train"]["data"][()], f["test"]["data"][()]])
            y = np.concatenate([f["train"]["target"][()], f["test"]["target"][()]])
        imgs = np.stack([image_to_input(a.reshape(16, 16).astype(np.float32), "mnist") for a in x])
        probs, _ = Classifier(ROOT / "models_export" / "digits.json").predict_batch(imgs)
        wrong = np.flatnonzero(probs.argmax(1) != y)  # the drawings a school would correct
        right = rng.choice(np.setdiff1d(np.arange(len(y)), wrong), n - len(wrong), replace=False)
        pick = np.concatenate([wrong, right])
        rng.shuffle(pick)
        print(f"USPS: the shipped model misreads {len(wrong)} of {len(y)}; all are corrections")
        return imgs[pick].astype(np.float32), [str(int(y[i])) for i in pick]
    from trainer.data import load_task

    labels = LABEL_SETS["char"].labels
    x, y = load_task("characters", data_dir, "train")
    f_idx = np.flatnonzero(y == labels.index("f"))
    n_f = min(len(f_idx), n // 2)
    rest = rng.choice(np.flatnonzero(y != labels.index("f")), n - n_f, replace=False)
    pick = np.concatenate([rng.choice(f_idx, n_f, replace=False), rest])
    rng.shuffle(pick)
    return x[pick].astype(np.float32) / 255.0, [labels[y[i]] for i in pick]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("task", choices=("digits", "characters"))
    p.add_argument("--corrections", type=int, default=1000)
    p.add_argument("--devices", type=int, default=5)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--keep", action="store_true", help="keep the server's data directory")
    p.add_argument(
        "--server",
        action="store_true",
        help="run the job in a real server's worker and time device heartbeats meanwhile",
    )
    args = p.parse_args(argv)
    if args.server:
        return live(args)
    mode = "digit" if args.task == "digits" else "char"
    root = Path(tempfile.mkdtemp(prefix="hwr-bench-retrain-"))
    cfg = load_config(
        env={}, overrides={"data_dir": root, "base_data_dir": args.data_dir, "retrain_after": 0}
    )
    st = open_state(cfg)
    st.jobs = jobs.JobQueue(cfg, immediate=True)
    jobs.set_worker_context(jobs.WorkerContext(st))
    images, labels = school_images(args.task, Path(args.data_dir), args.corrections, seed=7)
    now = time.time()
    for d in range(args.devices):
        token = add_device(st.engine, f"room-{d}")
        device = authenticate(st.engine, token)
        items = [
            {
                "id": str(uuid.uuid4()), "mode": mode, "label": lab,
                "image": base64.b64encode(im.astype("<f4").tobytes()).decode(),
                "strokes": None, "predicted": None, "confidence": None, "model": None,
                "created": now, "updated": now,
            }
            for im, lab in zip(images[d :: args.devices], labels[d :: args.devices], strict=True)
        ]  # fmt: skip
        for k in range(0, len(items), 100):
            merge_batch(st.engine, device.id, items[k : k + 100])
    stamps: list[tuple[str, float]] = []
    original = jobs.Progress.stage

    def stage(self, name, within=0.0, **values):  # type: ignore[no-untyped-def]
        if not stamps or stamps[-1][0] != name:
            stamps.append((name, time.monotonic()))
        return original(self, name, within, **values)

    original_epoch = jobs.Progress.epoch

    def epoch(self, *args):  # type: ignore[no-untyped-def]
        if stamps[-1][0] != "training":
            stamps.append(("training", time.monotonic()))
        return original_epoch(self, *args)

    jobs.Progress.stage = stage  # type: ignore[method-assign]
    jobs.Progress.epoch = epoch  # type: ignore[method-assign]
    t0 = time.monotonic()
    job = jobs.request_retrain(st, args.task, "bench", trigger="cli")
    total = time.monotonic() - t0
    job = jobs.get_job(st.engine, job["id"])
    stamps.append(("end", t0 + total))
    print(f"{args.task}: {args.corrections} corrections from {args.devices} devices")
    for (name, t), (_, t_next) in zip(stamps, stamps[1:], strict=False):
        print(f"  {name:11s} {t_next - t:7.1f} s")
    print(
        f"  total       {total:7.1f} s: {job['status']} {job['version'] or ''} {job['reason'] or ''}"
    )
    m = job["metrics"] or {}
    if m:
        pb, nb = m["parent"]["base"], m["base"]
        print(
            f"  base test {pb['accuracy']:.2%} -> {nb['accuracy']:.2%} ({nb['n']:,}); held-out "
            f"corrections {m['parent']['heldout']['accuracy']:.2%} -> {m['heldout']['accuracy']:.2%}"
            f" ({m['heldout']['n']})"
        )
        worst = min(
            nb["per_class_recall"],
            key=lambda k: nb["per_class_recall"][k] - pb["per_class_recall"][k],
        )
        print(
            f"  largest recall change: {worst!r} {pb['per_class_recall'][worst]:.1%} -> {nb['per_class_recall'][worst]:.1%}"
        )
        if "f" in nb["per_class_recall"]:
            print(
                f"  recall of f: {pb['per_class_recall']['f']:.1%} -> {nb['per_class_recall']['f']:.1%}"
            )
    st.close()
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if job["status"] == "published" else 1


def live(args: argparse.Namespace) -> int:
    """A real ``hwr-sync-server serve`` (and its worker): the job, and heartbeat latency during it."""
    import requests

    from tests.sync_harness import ADMIN_TOKEN, SyncServer, last_line, run_cli

    mode = "digit" if args.task == "digits" else "char"
    root = Path(tempfile.mkdtemp(prefix="hwr-bench-retrain-live-"))
    data = root / "server"
    run_cli("init", data_dir=data)
    tokens = [
        last_line(run_cli("add-device", f"room-{d}", data_dir=data)) for d in range(args.devices)
    ]
    server = SyncServer(
        data, env={"HWR_SYNC_BASE_DATA_DIR": args.data_dir, "HWR_SYNC_RETRAIN_AFTER": "0"}
    )
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        images, labels = school_images(args.task, Path(args.data_dir), args.corrections, seed=7)
        now = time.time()
        for d, token in enumerate(tokens):
            items = [
                {
                    "id": str(uuid.uuid4()), "mode": mode, "label": lab,
                    "image": base64.b64encode(im.astype("<f4").tobytes()).decode(),
                    "strokes": None, "predicted": None, "confidence": None, "model": None,
                    "created": now, "updated": now,
                }
                for im, lab in zip(images[d :: args.devices], labels[d :: args.devices], strict=True)
            ]  # fmt: skip
            for k in range(0, len(items), 100):
                requests.post(
                    server.url + "/api/v1/corrections", json={"corrections": items[k : k + 100]},
                    headers={"Authorization": f"Bearer {token}"}, timeout=30,
                ).raise_for_status()  # fmt: skip
        t0 = time.monotonic()
        job = requests.post(
            server.url + "/api/v1/admin/retrain", json={"name": args.task, "by": "bench"},
            headers=admin, timeout=30,
        ).json()  # fmt: skip
        hb = {"Authorization": f"Bearer {tokens[0]}"}
        times: list[float] = []
        while True:
            t = time.perf_counter()
            requests.post(
                server.url + "/api/v1/heartbeat", json={"pending": 0}, headers=hb, timeout=30
            )
            times.append((time.perf_counter() - t) * 1000)
            j = requests.get(
                f"{server.url}/api/v1/admin/jobs/{job['id']}", headers=admin, timeout=30
            ).json()
            if j["status"] in ("published", "refused", "failed"):
                break
            time.sleep(0.05)
        took = time.monotonic() - t0
        ms = np.sort(np.asarray(times))
        print(
            f"{args.task}: job {j['status']} {j['version'] or ''} in {took:.0f} s through the worker; "
            f"{len(ms)} device heartbeats meanwhile: p50 {np.percentile(ms, 50):.1f} ms, "
            f"p99 {np.percentile(ms, 99):.1f} ms, max {ms[-1]:.1f} ms"
        )
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
