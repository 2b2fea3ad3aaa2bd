"""The live viewer's cost and speed against a real ``hwr-edge``: 5 viewers watch a pupil draw.

Starts ``hwr-edge`` with a viewer token on a free local port, signs 5 viewers in, and measures:

* stroke to viewer: a pupil's socket sends the growing drawing as the canvas page does (the
  whole drawing in each predict message, every ``--interval-ms``); each viewer socket (in a
  separate process, so the pupil's client does not share a GIL with them) notes when the
  points of each message reach it; the latency is from the pupil's send to the viewer's
  receipt, over all 5 viewers (target: p95 <= 250 ms);
* what watching costs the pupil: predict round trips on the pupil's WebSocket, in alternating
  blocks with no viewer and with 5 viewers watching, sent as a canvas sends live guesses (one
  every ``--pace-ms``, 30 ms: five times the page's rate) (target: p50 with viewers at most 10%
  above p50 without); and the same back to back, which measures the viewers' CPU competing
  with the pupil on this machine's cores (the viewer clients run on it too).

    .venv/bin/python bench/viewer.py --out build/bench/viewer.json
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests
import websocket

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-viewer-token-0123456789"
VIEWERS = 5
TARGETS = {"stroke_to_viewer_p95_ms": 250.0, "watching_p50_overhead": 0.10}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drawing(kind: int) -> list[list[list[float]]]:
    """A two-stroke drawing of 40 points a stroke, on the 280x280 canvas (one of a few shapes)."""
    t = np.linspace(0.0, 1.0, 40)
    if kind % 3 == 0:  # an O and a tail
        a = [
            [140 + 70 * math.cos(2 * math.pi * v), 140 + 90 * math.sin(2 * math.pi * v)] for v in t
        ]
    elif kind % 3 == 1:  # a zigzag
        a = [[60 + 160 * v, 60 + 160 * abs(math.sin(3 * math.pi * v))] for v in t]
    else:  # a hook
        a = [[80 + 120 * v, 60 + 160 * v * v] for v in t]
    b = [[140.0, 40 + 200 * v] for v in t]
    return [[[round(x, 1), round(y, 1)] for x, y in s] for s in (a, b)]


def growing(kind: int, step: int = 2):
    """The drawing as the page sends it while drawing: every ``step`` points, the whole of it."""
    strokes = drawing(kind)
    for i, stroke in enumerate(strokes):
        for n in range(step, len(stroke) + 1, step):
            yield [*strokes[:i], stroke[:n]], (i, n)


class Edge:
    """A real hwr-edge with a viewer token; the per-socket rate limit lifted for the benchmark."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "bench.toml"
        config.write_text("ws_messages_per_second = 1000000.0\nws_burst = 1000000\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("HWR_EDGE_")}
        env.update(HWR_EDGE_LOG_LEVEL="warning", HWR_EDGE_VIEWER_TOKEN=TOKEN)
        script = Path(sys.executable).parent / "hwr-edge"
        cmd = [str(script) if script.is_file() else shutil.which("hwr-edge") or "hwr-edge"]
        cmd += ["--port", str(self.port), "--data-dir", str(workdir / "data")]
        cmd += ["--models-dir", str(ROOT / "models_export"), "--config", str(config)]
        self.log = open(workdir / "hwr-edge.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hwr-edge exited with {self.proc.returncode}")
            try:
                if requests.get(self.url + "/healthz", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise TimeoutError("hwr-edge did not answer")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def sign_in(url: str) -> str:
    r = requests.post(url + "/viewer/signin", json={"token": TOKEN}, timeout=10)
    r.raise_for_status()
    return r.cookies["hwr_viewer"]


def watch(url: str, cookie: str, ready: Any, stop: Any, out: Any, parse: bool) -> None:
    """In the viewer process: 5 sockets; each notes (drawing, stroke, points) -> first receipt
    (with ``parse`` off they only read what comes, as cheaply as a client can)."""
    ws_url = url.replace("http", "ws", 1) + "/viewer/ws"
    seen: list[dict] = [{} for _ in range(VIEWERS)]
    socks = [
        websocket.create_connection(ws_url, header=[f"Cookie: hwr_viewer={cookie}"], timeout=1)
        for _ in range(VIEWERS)
    ]

    def run(i: int) -> None:
        ws, drawing_id = socks[i], None
        while not stop.is_set():
            try:
                data = ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketException, OSError):
                return
            if not parse:
                continue
            now = time.perf_counter()
            frame = json.loads(data)
            for msg in frame if isinstance(frame, list) else [frame]:
                if msg["type"] in ("snapshot", "clear"):
                    drawing_id = msg["drawing"]
                elif msg["type"] == "points":
                    key = (drawing_id, msg["stroke"], msg["from"] + len(msg["points"]))
                    seen[i].setdefault(key, now)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(VIEWERS)]
    for t in threads:
        t.start()
    ready.set()
    stop.wait()
    for t in threads:
        t.join(3)
    for ws in socks:
        ws.close()
    out.put([{json.dumps(k): v for k, v in s.items()} for s in seen])


class Viewers:
    """5 viewer sockets in another process."""

    def __init__(self, url: str, parse: bool = True):
        ctx = mp.get_context("spawn")
        self.ready, self.stop_event, self.out = ctx.Event(), ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(
            target=watch, args=(url, sign_in(url), self.ready, self.stop_event, self.out, parse)
        )
        self.proc.start()
        if not self.ready.wait(30):
            raise RuntimeError("the viewers did not connect")
        deadline = time.monotonic() + 10
        while requests.get(url + "/healthz", timeout=5).json()["viewers"] < VIEWERS:
            if time.monotonic() > deadline:
                raise RuntimeError("the edge does not count 5 viewers")
            time.sleep(0.05)

    def close(self) -> list[dict]:
        self.stop_event.set()
        seen = self.out.get(timeout=30)
        self.proc.join(10)
        return [{tuple(json.loads(k)): v for k, v in s.items()} for s in seen]


def pupil_socket(url: str) -> websocket.WebSocket:
    return websocket.create_connection(url.replace("http", "ws", 1) + "/ws", timeout=10)


def ask(ws: websocket.WebSocket, msg: dict) -> dict:
    ws.send(json.dumps(msg))
    while True:
        reply = json.loads(ws.recv())
        if reply.get("type") != "watching":
            return reply


def current_drawing(url: str) -> int:
    """The drawing id a fresh viewer would be told (to know the next drawings' ids)."""
    s = requests.Session()
    s.post(url + "/viewer/signin", json={"token": TOKEN}, timeout=10)
    ws = websocket.create_connection(
        url.replace("http", "ws", 1) + "/viewer/ws",
        header=[f"Cookie: hwr_viewer={s.cookies['hwr_viewer']}"],
        timeout=10,
    )
    try:
        frame = json.loads(ws.recv())
        return (frame[0] if isinstance(frame, list) else frame)["drawing"]
    finally:
        ws.close()


def stroke_to_viewer(url: str, drawings: int, interval_ms: float) -> dict[str, Any]:
    """Latency from the pupil's send of new points to each viewer's receipt of them."""
    first = current_drawing(url) + 1
    time.sleep(0.3)  # the socket above has left
    viewers = Viewers(url)
    ws = pupil_socket(url)
    sent: dict[tuple, float] = {}
    seq = 0
    try:
        for d in range(drawings):
            for strokes, (stroke, n) in growing(d):
                seq += 1
                t = time.perf_counter()
                sent[(first + d, stroke, n)] = t
                reply = ask(
                    ws, {"type": "predict", "seq": seq, "mode": "digit", "strokes": strokes}
                )
                assert reply["type"] in ("prediction", "error"), reply
                time.sleep(max(0.0, interval_ms / 1000.0 - (time.perf_counter() - t)))
        time.sleep(0.5)
    finally:
        ws.close()
        seen = viewers.close()
    lat, missing = [], 0
    for per_viewer in seen:
        for key, t_sent in sent.items():
            if key in per_viewer:
                lat.append((per_viewer[key] - t_sent) * 1000.0)
            else:
                missing += 1
    a = np.asarray(lat)
    return {
        "sent": len(sent),
        "received": int(a.size),
        "thinned": missing,
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "max_ms": float(a.max()),
    }


def predict_blocks(url: str, blocks: int, per_block: int, pace_ms: float) -> dict[str, Any]:
    """Pupil predict round trips in alternating blocks: no viewer, then 5 viewers watching.

    ``pace_ms``: one predict per this many ms, as a canvas sends them (0: back to back).
    """
    samples: dict[str, list[float]] = {"without": [], "with": []}
    seq = 0
    for b in range(blocks * 2):
        watched = b % 2 == 1
        viewers = Viewers(url, parse=False) if watched else None
        ws = pupil_socket(url)
        try:
            for i in range(20):  # warm up this socket
                seq += 1
                ask(ws, {"type": "predict", "seq": seq, "mode": "digit", "strokes": drawing(i)})
            n = 0
            while n < per_block:
                for strokes, _ in growing(n // 40):
                    seq += 1
                    t = time.perf_counter()
                    reply = ask(
                        ws, {"type": "predict", "seq": seq, "mode": "digit", "strokes": strokes}
                    )
                    samples["with" if watched else "without"].append(
                        (time.perf_counter() - t) * 1000.0
                    )
                    assert reply["type"] in ("prediction", "error"), reply
                    n += 1
                    time.sleep(max(0.0, pace_ms / 1000.0 - (time.perf_counter() - t)))
                    if n >= per_block:
                        break
        finally:
            ws.close()
            if viewers is not None:
                viewers.close()
    out: dict[str, Any] = {}
    for name, values in samples.items():
        a = np.asarray(values)
        out[name] = {
            "n": int(a.size),
            "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)),
        }
    out["p50_overhead"] = out["with"]["p50_ms"] / out["without"]["p50_ms"] - 1.0
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--drawings", type=int, default=30, help="drawings sent for the latency")
    p.add_argument("--interval-ms", type=float, default=30.0, help="between the pupil's sends")
    p.add_argument("--blocks", type=int, default=6, help="pairs of blocks without/with viewers")
    p.add_argument("--per-block", type=int, default=150, help="predictions per block")
    p.add_argument("--pace-ms", type=float, default=30.0, help="one live predict per this many ms")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="hwr-bench-viewer-"))
    edge = Edge(work)
    try:
        latency = stroke_to_viewer(edge.url, args.drawings, args.interval_ms)
        cost = predict_blocks(edge.url, args.blocks, args.per_block, args.pace_ms)
        flat_out = predict_blocks(edge.url, args.blocks, args.per_block, 0.0)
    finally:
        edge.stop()
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "viewers": VIEWERS,
        "stroke_to_viewer": latency,
        "pupil_predict": {**cost, "pace_ms": args.pace_ms},
        "pupil_predict_back_to_back": flat_out,
        "load_average": os.getloadavg(),
        "targets": TARGETS,
        "pass": {
            "stroke_to_viewer_p95_ms": latency["p95_ms"] <= TARGETS["stroke_to_viewer_p95_ms"],
            "watching_p50_overhead": cost["p50_overhead"] <= TARGETS["watching_p50_overhead"],
        },
        "cpus": os.cpu_count(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0 if all(result["pass"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
