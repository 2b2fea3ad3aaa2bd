"""Load on one real ``hwr-sync-server`` (SQLite): N devices each upload a batch at once.

    .venv/bin/python bench/sync_load.py [--devices 100] [--per-device 100] [--workers 2]

Starts the server on a free port in a temporary data directory, registers the devices, builds
every body first, then releases all device threads at once (one HTTP connection each) and
prints corrections merged per second, p50/p99 of one batch, and the exact-once check: the
server's count equals the distinct UUIDs sent, and a replay of every batch is all duplicates.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sync_server.config import load_config  # noqa: E402
from sync_server.devices import add_device  # noqa: E402
from sync_server.state import open_state  # noqa: E402
from tests.sync_server_helpers import MODELS_DIR, item  # noqa: E402

ADMIN = "bench-admin-token-0123"


def start_server(data: Path, workers: int, threads: int) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HWR_SYNC_")}
    env.update(
        HWR_SYNC_ADMIN_TOKEN=ADMIN,
        HWR_SYNC_MODELS_DIR=str(MODELS_DIR),
        HWR_SYNC_RATE_BURST="1000",
        HWR_SYNC_WORKERS=str(workers),
        HWR_SYNC_THREADS=str(threads),
        HWR_SYNC_LOG_LEVEL="warning",
    )
    cli = Path(sys.executable).parent / "hwr-sync-server"
    proc = subprocess.Popen(
        [str(cli), "serve", "--port", "0", "--data-dir", str(data)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    m = re.search(r"serving (http://\S+)/", proc.stdout.readline())
    if not m:
        proc.kill()
        raise SystemExit("the server printed no URL")
    url = m.group(1)
    for _ in range(300):
        try:
            requests.get(url + "/api/v1/models", timeout=5)
            return proc, url
        except requests.RequestException:  # accepted before the worker is ready
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not answer")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def run(url: str, tokens: list[str], bodies: list[bytes]) -> tuple[float, list[float], list]:
    """All devices at once; wall time, each batch's latency, each batch's statuses."""
    barrier = threading.Barrier(len(tokens) + 1)
    latencies: list[float] = [0.0] * len(tokens)
    statuses: list = [None] * len(tokens)

    def device(i: int) -> None:
        s = requests.Session()
        h = {"Authorization": f"Bearer {tokens[i]}", "Content-Type": "application/json"}
        barrier.wait()
        t0 = time.perf_counter()
        r = s.post(url + "/api/v1/corrections", data=bodies[i], headers=h, timeout=120)
        latencies[i] = time.perf_counter() - t0
        statuses[i] = [x["status"] for x in r.json()["results"]] if r.ok else r.status_code
        s.close()

    threads = [threading.Thread(target=device, args=(i,)) for i in range(len(tokens))]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, latencies, statuses


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--per-device", type=int, default=100)
    p.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    p.add_argument("--threads", type=int, default=32, help="threads per worker")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="hwr-sync-bench-") as tmp:
        data = Path(tmp) / "data"
        st = open_state(load_config(env={}, overrides={"data_dir": data, "models_dir": MODELS_DIR}))
        tokens = [add_device(st.engine, f"device-{i:03d}") for i in range(args.devices)]
        st.close()
        bodies = [
            json.dumps({"corrections": [item() for _ in range(args.per_device)]}).encode()
            for _ in range(args.devices)
        ]
        proc, url = start_server(data, args.workers, args.threads)
        try:
            wall, lat, statuses = run(url, tokens, bodies)
            replay_wall, _, replayed = run(url, tokens, bodies)
            summary = requests.get(
                url + "/api/v1/admin/summary",
                headers={"Authorization": f"Bearer {ADMIN}"},
                timeout=10,
            ).json()
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    sent = args.devices * args.per_device
    stored = sum(s.count("stored") for s in statuses if isinstance(s, list))
    dup = sum(s.count("duplicate") for s in replayed if isinstance(s, list))
    count = summary["corrections"]["digit"] + summary["corrections"]["char"]
    print(
        f"{args.devices} devices x {args.per_device} corrections, {args.workers} worker(s) x "
        f"{args.threads} threads, SQLite, {os.cpu_count()} CPUs"
    )
    print(f"merged: {sent} in {wall:.2f} s = {sent / wall:,.0f} corrections/s")
    print(
        f"batch of {args.per_device}: p50 {pct(lat, 0.5) * 1000:.0f} ms, "
        f"p99 {pct(lat, 0.99) * 1000:.0f} ms"
    )
    print(f"replay of every batch: {replay_wall:.2f} s, {dup}/{sent} duplicate")
    exact = stored == sent and count == sent and dup == sent
    print(
        f"exactly once: {'yes' if exact else 'NO'} (stored {stored}, server count {count}, "
        f"distinct sent {sent})"
    )
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
