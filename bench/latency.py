"""Prediction latency and memory of a real ``hwr-edge`` process, with pendigits strokes.

Starts ``hwr-edge`` on a free local port with a fresh data directory, waits for /healthz, then
times sequential predict round trips for strokes drawn on a 280x280 canvas:

* over one WebSocket (``/ws``, websocket-client), and over HTTP keep-alive (``/api/predict``);
* the seed paper's way: the whole canvas as a base64 PNG to ``POST /predict`` (decoded,
  resized, same model), reported also as a ratio to the stroke path over HTTP;

and the server's resident memory (VmRSS summed over its process tree) after those predictions,
with both models loaded. ``--in-process`` instead times the pieces without a server:
strokes_to_input, Classifier.predict, Personaliser.decide, and the PNG path's decoding.

    .venv/bin/python bench/latency.py --out build/bench/latency.json
    .venv/bin/python bench/latency.py --in-process
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hwrcore.preprocess import strokes_to_png
from trainer.data import load_pendigits

ROOT = Path(__file__).resolve().parent.parent
CANVAS = 280
BOX = 200  # the drawing's longer side on the canvas, as a pupil's digit would be
TARGETS = {  # name -> (limit, unit); all "at most"
    "ws_p50_ms": 1.5,
    "ws_p99_ms": 5.0,
    "http_p99_ms": 15.0,
    "rss_mb": 120.0,
}
MODEL_CPU_MS = 0.5  # model time per image, each model


def default_models_dir(workdir: Path) -> Path:
    """The shipped models; where one is not shipped yet, a folder that fills in the development one."""
    shipped = ROOT / "models_export"
    names = ("digits", "characters")
    if all((shipped / f"{n}.json").is_file() for n in names):
        return shipped
    mixed = workdir / "models"
    mixed.mkdir(parents=True, exist_ok=True)
    for n in names:
        src = shipped if (shipped / f"{n}.json").is_file() else ROOT / "build" / "dev-models"
        manifest = json.loads((src / f"{n}.json").read_text())
        for f in (f"{n}.json", manifest["file"]):
            shutil.copy2(src / f, mixed / f)
    return mixed


def model_versions(models_dir: Path) -> str:
    """'digits 1.0.0, characters 0.0.0-dev' from the manifests."""
    out = []
    for n in ("digits", "characters"):
        m = json.loads((models_dir / f"{n}.json").read_text())
        out.append(f"{m['name']} {m['version']}")
    return ", ".join(out)


def canvas_strokes(data_dir: str | None, limit: int) -> list[tuple[list, int]]:
    """Pendigits test strokes fitted into a 200-pixel box centred on a 280x280 canvas (integers)."""
    out = []
    for s in load_pendigits(data_dir, "test")[:limit]:
        pts = np.concatenate([np.asarray(st, dtype=np.float64) for st in s.strokes])
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        scale = BOX / max(float((hi - lo).max()), 1.0)
        offset = (CANVAS - (hi - lo) * scale) / 2.0
        strokes = [
            [[int(round(v)) for v in (np.asarray(p) - lo) * scale + offset] for p in st]
            for st in s.strokes
        ]
        out.append((strokes, s.label))
    return out


def canvas_png(strokes: list) -> bytes:
    """The drawing as the seed page uploads it: the whole 280x280 canvas, RGBA PNG, ink on white."""
    with Image.open(io.BytesIO(strokes_to_png(strokes, CANVAS))) as im:
        buf = io.BytesIO()
        im.convert("RGBA").save(buf, format="PNG")
    return buf.getvalue()


def stats(samples_ns: list[int]) -> dict[str, float]:
    """p50, p99, mean and max in milliseconds."""
    a = np.asarray(samples_ns, dtype=np.float64) / 1e6
    return {
        "n": int(len(a)),
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
        "max_ms": float(a.max()),
    }


def timed_cpu(fn: Callable[[int], Any], n: int, warmup: int) -> tuple[list[int], float]:
    """:func:`timed`, and the CPU time of this process (every thread) per call, in ms."""
    timed(fn, 0, warmup)
    start = time.process_time_ns()
    samples = timed(fn, n, 0)
    return samples, (time.process_time_ns() - start) / 1e6 / max(1, n)


def timed(fn: Callable[[int], Any], n: int, warmup: int) -> list[int]:
    """Run fn(i) ``warmup`` times untimed, then ``n`` times timed; nanoseconds per call."""
    for i in range(warmup):
        fn(i)
    out = []
    for i in range(n):
        t = time.perf_counter_ns()
        fn(i)
        out.append(time.perf_counter_ns() - t)
    return out


# --- the server -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hwr_edge_command() -> str:
    """The ``hwr-edge`` script beside this interpreter (the project's venv), else on PATH."""
    beside = Path(sys.executable).parent / "hwr-edge"
    found = str(beside) if beside.is_file() else shutil.which("hwr-edge")
    if not found:
        raise FileNotFoundError("hwr-edge is not installed: pip install -e '.[edge]'")
    return found


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def rss_kb(pid: int) -> int:
    """VmRSS of one process in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid: int) -> int:
    """Proportional set size in KiB: shared pages split between the processes that share them."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class EdgeProcess:
    """A real ``hwr-edge`` subprocess on a free port with its own data directory."""

    def __init__(self, models_dir: Path, workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "bench.toml"
        # The per-socket rate limit guards a classroom; a benchmark sends as fast as it can.
        config.write_text("ws_messages_per_second = 1000000.0\nws_burst = 1000000\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("HWR_EDGE_")}
        env["HWR_EDGE_LOG_LEVEL"] = "warning"
        self.log_path = workdir / "hwr-edge.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [
            hwr_edge_command(),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--data-dir", str(workdir / "data"),
            "--models-dir", str(models_dir),
            "--config", str(config),
        ]  # fmt: skip
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 60.0) -> tuple[float, dict]:
        """Poll /healthz until it answers 200: (seconds since start, its body).

        Each poll uses a new connection, closed after: a connection accepted while the server
        is still starting may miss socket options set later (TCP_NODELAY), and would skew timings.
        """
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"hwr-edge exited with {self.proc.returncode}: {self.log_tail()}"
                )
            try:
                r = requests.get(self.url + "/healthz", timeout=2, headers={"Connection": "close"})
                if r.status_code == 200:
                    return time.perf_counter() - self.started, r.json()
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet, or still loading the models
            time.sleep(0.02)
        raise TimeoutError(
            f"hwr-edge did not answer /healthz in {timeout:.0f} s: {self.log_tail()}"
        )

    def log_tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-2000:]

    def memory_mb(self) -> dict[str, Any]:
        """Resident memory of the server's process tree (MiB): VmRSS summed, PSS summed, per process."""
        tree = process_tree(self.proc.pid)
        rss = {p: rss_kb(p) / 1024.0 for p in tree}
        pss = {p: pss_kb(p) / 1024.0 for p in tree}
        return {
            "rss_mb": sum(rss.values()),
            "pss_mb": sum(pss.values()),
            "by_pid": {
                str(p): {"rss_mb": round(rss[p], 1), "pss_mb": round(pss[p], 1)} for p in tree
            },
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self._log.close()


def run_server(args: argparse.Namespace) -> dict[str, Any]:
    """Start hwr-edge and time the WebSocket, HTTP and PNG paths; RSS at the end."""
    import requests
    import websocket

    drawings = canvas_strokes(args.data_dir, args.samples)
    pngs = [
        "data:image/png;base64," + base64.b64encode(canvas_png(s)).decode() for s, _ in drawings
    ]
    result: dict[str, Any] = {"models_dir": str(args.models_dir), "samples": len(drawings)}
    with tempfile.TemporaryDirectory(prefix="hwr-bench-") as tmp:
        server = EdgeProcess(args.models_dir, Path(tmp))
        try:
            ready_s, health = server.wait_ready(args.start_timeout)
            session = requests.Session()  # one keep-alive connection, opened once the server is up
            result["ready_s"] = ready_s
            result["models"] = health.get("models")
            pick = lambda i: drawings[i % len(drawings)]  # noqa: E731

            # First predict right after start (the issue: first answer within 2 s of start).
            r = session.post(
                server.url + "/api/predict", json={"mode": "digit", "strokes": pick(0)[0]}
            )
            r.raise_for_status()
            result["first_answer_s"] = time.perf_counter() - server.started

            ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws", timeout=10)
            ws_correct = 0

            def ws_predict(i: int) -> None:
                nonlocal ws_correct
                strokes, label = pick(i)
                ws.send(
                    json.dumps({"type": "predict", "seq": i, "mode": "digit", "strokes": strokes})
                )
                msg = json.loads(ws.recv())
                if msg.get("type") != "prediction" or msg.get("seq") != i:
                    raise RuntimeError(f"unexpected WebSocket answer: {str(msg)[:200]}")
                ws_correct += msg["label"] == str(label)

            result["ws"] = stats(timed(ws_predict, args.n, args.warmup))
            result["ws"]["accuracy"] = ws_correct / (args.n + args.warmup)
            ws.close()

            def http_predict(i: int) -> None:
                r = session.post(
                    server.url + "/api/predict", json={"mode": "digit", "strokes": pick(i)[0]}
                )
                if r.status_code != 200:
                    raise RuntimeError(f"/api/predict answered {r.status_code}: {r.text[:200]}")

            result["http"] = stats(timed(http_predict, args.n, args.warmup))

            def png_predict(i: int) -> None:
                r = session.post(server.url + "/predict", json={"image": pngs[i % len(pngs)]})
                if r.status_code != 200:
                    raise RuntimeError(f"/predict answered {r.status_code}: {r.text[:200]}")

            result["png"] = stats(timed(png_predict, args.n_png, min(args.warmup, args.n_png)))
            result["png"]["bytes_mean"] = float(np.mean([len(p) for p in pngs]))
            result["png_vs_http"] = {
                key: result["png"][key] / result["http"][key]
                for key in ("p50_ms", "p99_ms", "mean_ms")
            }
            # A few character predictions, so both models have run before memory is read.
            for i in range(20):
                session.post(
                    server.url + "/api/predict", json={"mode": "char", "strokes": pick(i)[0]}
                )
            result.update(server.memory_mb())
            result["predictions_before_rss"] = 2 * (args.n + args.warmup) + args.n_png + 21
        finally:
            server.stop()
    return result


# --- in process -------------------------------------------------------------------------


def run_in_process(args: argparse.Namespace) -> dict[str, Any]:
    """Time the pieces of one prediction without a server."""
    from edge.classifier import Classifier
    from edge.personal import Personaliser
    from hwrcore.preprocess import png_to_input, strokes_to_input

    drawings = canvas_strokes(args.data_dir, args.samples)
    clf = Classifier(args.models_dir / "digits.json")
    style = clf.manifest.style
    inputs = [strokes_to_input(s, style) for s, _ in drawings]
    preds = [clf.predict(x) for x in inputs]
    result: dict[str, Any] = {"models_dir": str(args.models_dir), "samples": len(drawings)}
    pick = lambda i: i % len(drawings)  # noqa: E731
    result["strokes_to_input"] = stats(
        timed(lambda i: strokes_to_input(drawings[pick(i)][0], style), args.n, args.warmup)
    )
    # The budget is model time per image: CPU time over all the interpreter's threads.
    wall, digits_cpu = timed_cpu(lambda i: clf.predict(inputs[pick(i)]), args.n, args.warmup)
    result["classifier_predict"] = stats(wall)
    chars = Classifier(args.models_dir / "characters.json")
    char_inputs = [strokes_to_input(s, chars.manifest.style) for s, _ in drawings]
    wall, chars_cpu = timed_cpu(lambda i: chars.predict(char_inputs[pick(i)]), args.n, args.warmup)
    result["classifier_predict_characters"] = stats(wall)
    result["model_cpu_ms"] = {"digits": digits_cpu, "characters": chars_cpu, "target": MODEL_CPU_MS}
    pngs = [canvas_png(s) for s, _ in drawings]
    b64 = [base64.b64encode(p).decode() for p in pngs]
    result["png_to_input"] = stats(
        timed(
            lambda i: png_to_input(b64[i % len(b64)], style),
            args.n_png,
            min(args.warmup, args.n_png),
        )
    )
    emb = np.stack([p.embedding for p in preds])
    labels = [str(lab) for _, lab in drawings]
    for stored in (0, 300, 2000):
        pers = Personaliser(clf.labels, cap=max(stored, 1))
        if stored:
            reps = int(np.ceil(stored / len(emb)))
            pers.load(np.tile(emb, (reps, 1))[:stored], (labels * reps)[:stored])
        result[f"personaliser_decide_{stored}"] = stats(
            timed(
                lambda i, pers=pers: pers.decide(
                    preds[pick(i)].probabilities, preds[pick(i)].embedding
                ),
                args.n,
                args.warmup,
            )
        )
    return result


# --- report ------------------------------------------------------------------------------


def table_server(r: dict[str, Any]) -> str:
    def ok(name: str, value: float) -> str:
        return "yes" if value <= TARGETS[name] else "**no**"

    rows = [
        "| measure | p50 ms | p99 ms | mean ms | n | target | met |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
        f"| WebSocket predict (strokes) | {r['ws']['p50_ms']:.2f} | {r['ws']['p99_ms']:.2f} "
        f"| {r['ws']['mean_ms']:.2f} | {r['ws']['n']} | p50 <= 1.5, p99 <= 5 "
        f"| {ok('ws_p50_ms', r['ws']['p50_ms'])}, {ok('ws_p99_ms', r['ws']['p99_ms'])} |",
        f"| HTTP /api/predict (strokes) | {r['http']['p50_ms']:.2f} | {r['http']['p99_ms']:.2f} "
        f"| {r['http']['mean_ms']:.2f} | {r['http']['n']} | p99 <= 15 | {ok('http_p99_ms', r['http']['p99_ms'])} |",
        f"| paper's way: HTTP /predict (280x280 PNG) | {r['png']['p50_ms']:.2f} | {r['png']['p99_ms']:.2f} "
        f"| {r['png']['mean_ms']:.2f} | {r['png']['n']} | - | - |",
        f"| PNG / strokes over HTTP (ratio) | {r['png_vs_http']['p50_ms']:.2f}x | "
        f"{r['png_vs_http']['p99_ms']:.2f}x | {r['png_vs_http']['mean_ms']:.2f}x | | | |",
        "",
        "| measure | value | target | met |",
        "| --- | ---: | --- | --- |",
        f"| resident memory, both models, after {r['predictions_before_rss']} predictions "
        f"| {r['rss_mb']:.1f} MiB | <= 120 MB | {ok('rss_mb', r['rss_mb'])} |",
        f"| the same as PSS (shared pages counted once) | {r['pss_mb']:.1f} MiB | | |",
        "| per process (RSS / PSS MiB) | "
        + ", ".join(f"{v['rss_mb']:.0f} / {v['pss_mb']:.0f}" for v in r["by_pid"].values())
        + " | | |",
        f"| /healthz answers after start | {r['ready_s']:.2f} s | | |",
        f"| first prediction answered after start | {r['first_answer_s']:.2f} s | <= 2 s | "
        f"{'yes' if r['first_answer_s'] <= 2 else '**no**'} |",
    ]
    return "\n".join(rows)


def table_in_process(r: dict[str, Any]) -> str:
    rows = ["| piece | p50 ms | p99 ms | mean ms | n |", "| --- | ---: | ---: | ---: | ---: |"]
    for key, value in r.items():
        if isinstance(value, dict) and "p50_ms" in value:
            rows.append(
                f"| {key} | {value['p50_ms']:.3f} | {value['p99_ms']:.3f} | {value['mean_ms']:.3f} | {value['n']} |"
            )
    cpu = r["model_cpu_ms"]
    rows += ["", "| model | CPU ms per image | target | met |", "| --- | ---: | --- | --- |"]
    for name in ("digits", "characters"):
        met = "yes" if cpu[name] <= cpu["target"] else "**no**"
        rows.append(f"| {name} | {cpu[name]:.3f} | <= {cpu['target']} | {met} |")
    return "\n".join(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="default: models_export, else build/dev-models",
    )
    ap.add_argument("--data-dir", default=None, help="data folder (default ../shared/data)")
    ap.add_argument("-n", type=int, default=1000, help="timed predictions per path (default 1000)")
    ap.add_argument("--n-png", type=int, default=None, help="timed PNG predictions (default: -n)")
    ap.add_argument("--warmup", type=int, default=50, help="untimed predictions first (default 50)")
    ap.add_argument(
        "--samples", type=int, default=500, help="distinct pendigits drawings cycled through"
    )
    ap.add_argument(
        "--start-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for /healthz (default 120)",
    )
    ap.add_argument("--in-process", action="store_true", help="time the pieces without a server")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    args.n_png = args.n if args.n_png is None else args.n_png
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    meta = {
        "cpus": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0],
        "n": args.n,
        "warmup": args.warmup,
    }
    with tempfile.TemporaryDirectory(prefix="hwr-bench-models-") as tmp:
        args.models_dir = args.models_dir or default_models_dir(Path(tmp))
        versions = model_versions(args.models_dir)
        if args.in_process:
            result = run_in_process(args)
            table = table_in_process(result)
        else:
            result = run_server(args)
            table = table_server(result)
            result["targets"] = TARGETS
    result["model_versions"] = versions
    result["machine"] = meta
    meta["loadavg_1m_after"] = os.getloadavg()[0]
    print(
        f"models: {versions}; {meta['cpus']} CPUs, load average {meta['loadavg_1m']:.2f} "
        f"(then {meta['loadavg_1m_after']:.2f})\n"
    )
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
