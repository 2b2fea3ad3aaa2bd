"""Model delivery and the cost of sync, with real processes: one server, many devices.

1. Publish to 20 devices: one ``hwr-sync-server``, 20 ``hwr-edge`` devices synced with it; a
   new digit model version is published with ``hwr-sync-server publish``; each device's
   ``/healthz`` is polled until it serves the new version. Prints the time from the publish
   command's return (the release is committed then) to each device serving it.
2. Live prediction with and without sync: an ``hwr-edge`` with the sync client off, then on
   (uploading the corrections made meanwhile; the server's job worker off, since here it would
   share the device's cores); each run makes a
   correction every 0.2 s over HTTP while 1,000 WebSocket predictions are timed, so both runs
   write the same corrections and differ only in sync. Runs alternate off/on ``--rounds`` times.

    .venv/bin/python bench/sync_delivery.py --devices 20 --out build/bench/sync-delivery.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import websocket

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.sync_harness import (  # noqa: E402  (the repository's test harness)
    MODELS,
    STROKES,
    SyncedEdge,
    SyncServer,
    last_line,
    new_model_version,
    run_cli,
    wait_for,
)

FAST_WS = {"HWR_EDGE_WS_MESSAGES_PER_SECOND": "1000000", "HWR_EDGE_WS_BURST": "1000000"}


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def publish_to_devices(work: Path, n: int) -> dict:
    """Seconds from a publish to each of ``n`` devices serving it."""
    data = work / "server"
    run_cli("init", data_dir=data)
    tokens = [last_line(run_cli("add-device", f"d{i}", data_dir=data)) for i in range(n)]
    key = last_line(run_cli("public-key", data_dir=data))
    server = SyncServer(data)
    edges: list[SyncedEdge] = []
    # The devices die with the thread that started them (PR_SET_PDEATHSIG), so the pool's
    # threads live until the devices are stopped.
    pool = ThreadPoolExecutor(4)
    try:
        edges = list(
            pool.map(
                lambda i: SyncedEdge(
                    work / f"edge-{i}",
                    server.url,
                    tokens[i],
                    key,
                    env={"HWR_EDGE_LOG_LEVEL": "warning", "HWR_EDGE_MODEL_POLL_INTERVAL": "30"},
                ),
                range(n),
            )
        )
        wait_for(
            lambda: all(e.health()["delivery"].get("notify") == "connected" for e in edges),
            60,
            "every device's notice socket",
        )
        manifest = new_model_version(work, "9.0.0")
        t_cmd = time.monotonic()
        run_cli("publish", str(manifest), data_dir=data)
        t0 = time.monotonic()
        served: dict[int, float] = {}
        while len(served) < n and time.monotonic() - t0 < 60:
            for i, e in enumerate(edges):
                if i not in served and e.health()["models"]["digit"]["version"] == "9.0.0":
                    served[i] = time.monotonic() - t0
            time.sleep(0.05)
        times = sorted(served.values())
        return {
            "devices": n,
            "served": len(served),
            "publish_command_s": round(t0 - t_cmd, 3),
            "first_s": round(times[0], 3) if times else None,
            "median_s": round(statistics.median(times), 3) if times else None,
            "last_s": round(times[-1], 3) if times else None,
        }
    finally:
        for e in edges:
            e.stop()
        pool.shutdown()
        server.stop()


def _ws_latency(edge: SyncedEdge, n: int, warmup: int = 50) -> list[float]:
    ws = websocket.create_connection("ws" + edge.url[4:] + "/ws", timeout=10)
    out = []
    try:
        for i in range(n + warmup):
            msg = {"type": "predict", "seq": i, "mode": "digit", "strokes": STROKES["digit"]}
            t = time.perf_counter()
            ws.send(json.dumps(msg))
            reply = json.loads(ws.recv())
            dt = (time.perf_counter() - t) * 1000.0
            if reply.get("type") != "prediction":
                raise RuntimeError(f"unexpected answer: {str(reply)[:200]}")
            if i >= warmup:
                out.append(dt)
    finally:
        ws.close()
    return out


def prediction_cost_of_sync(work: Path, rounds: int, n: int) -> dict:
    """WebSocket predict p50/p99 with the sync client off and on, under the same corrections."""
    data = work / "server"
    run_cli("init", data_dir=data)
    token = last_line(run_cli("add-device", "bench", data_dir=data))
    key = last_line(run_cli("public-key", data_dir=data))
    # The server shares this machine's two cores with the device here; on a school's network it
    # has its own. Its job worker (which scores each correction) is left off so that the figure
    # is the device's own cost of syncing.
    server = SyncServer(data, env={"HWR_SYNC_START_WORKER": "false"})
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    try:
        for r in range(rounds):
            for variant in ("off", "on"):
                url = server.url if variant == "on" else ""
                env = {
                    **FAST_WS,
                    "HWR_EDGE_LOG_LEVEL": "warning",
                    "HWR_EDGE_HEARTBEAT_INTERVAL": "1",
                }
                edge = SyncedEdge(work / f"lat-{variant}-{r}", url, token, key, env=env)
                stop = threading.Event()

                def correct(e: SyncedEdge = edge, s: threading.Event = stop) -> None:
                    while not s.wait(0.2):
                        try:
                            e.correct("digit")
                        except (AssertionError, requests.RequestException):
                            pass

                writer = threading.Thread(target=correct, daemon=True)
                writer.start()
                try:
                    lat = _ws_latency(edge, n)
                    sync = edge.health()["sync"]
                finally:
                    stop.set()
                    writer.join(5)
                    edge.stop()
                runs[variant].append(
                    {
                        "p50_ms": round(statistics.median(lat), 3),
                        "p99_ms": round(_percentile(lat, 0.99), 3),
                        "uploaded": sync.get("uploaded"),
                        "state": sync.get("state"),
                    }
                )
    finally:
        server.stop()

    def summary(rs: list[dict]) -> dict:
        return {
            "p50_ms": round(statistics.median(r["p50_ms"] for r in rs), 3),
            "p99_ms": round(statistics.median(r["p99_ms"] for r in rs), 3),
            "runs": rs,
        }

    off, on = summary(runs["off"]), summary(runs["on"])
    return {
        "predictions_per_run": n,
        "off": off,
        "on": on,
        "p50_ratio": round(on["p50_ms"] / off["p50_ms"], 3),
        "p99_ratio": round(on["p99_ms"] / off["p99_ms"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--out", type=Path)
    p.add_argument("--skip-publish", action="store_true")
    p.add_argument("--work", type=Path, help="keep the processes' folders and logs here")
    args = p.parse_args(argv)
    result: dict = {"models": str(MODELS)}
    with tempfile.TemporaryDirectory(prefix="hwr-bench-sync-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if not args.skip_publish:
            (work / "pub").mkdir()
            result["publish"] = publish_to_devices(work / "pub", args.devices)
            print("publish:", json.dumps(result["publish"]), flush=True)
        (work / "lat").mkdir()
        result["latency"] = prediction_cost_of_sync(work / "lat", args.rounds, args.n)
    lat = result["latency"]
    print(
        f"WebSocket predict, sync off: p50 {lat['off']['p50_ms']} ms, p99 {lat['off']['p99_ms']} ms;"
        f" sync on: p50 {lat['on']['p50_ms']} ms, p99 {lat['on']['p99_ms']} ms"
        f" (x{lat['p50_ratio']} / x{lat['p99_ratio']})"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
