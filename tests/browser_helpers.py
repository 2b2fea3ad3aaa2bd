"""Helpers for the browser tests: a real hwr-edge process, Chromium, and drawing pen strokes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import requests

from tests.models import shipped_models

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CANVAS_SIZE = 280.0
# The drawing is fitted into the middle of the canvas, as a pupil would draw it.
DRAW_BOX = 180.0

Strokes = Sequence[Sequence[Sequence[float]]]


def hwr_edge_command() -> list[str] | None:
    """The hwr-edge console script beside this interpreter (or on PATH); None when absent.

    Where util-linux's setpriv is installed, the server is told to stop when the test process
    dies, so a test run that is killed leaves no server behind.
    """
    local = Path(sys.executable).parent / "hwr-edge"
    script = (
        str(local) if local.is_file() and os.access(local, os.X_OK) else shutil.which("hwr-edge")
    )
    if script is None:
        return None
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", script] if setpriv else [script]


def models_for_edge() -> Path | None:
    """The shipped models when present, else None."""
    return shipped_models()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EdgeProcess:
    """A running `hwr-edge` subprocess on a free local port, stopped by stop()."""

    def __init__(
        self,
        command: list[str],
        data_dir: Path,
        models_dir: Path,
        log_path: Path,
        port: int | None = None,
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.log_path = log_path
        args = [
            *command,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(data_dir),
            "--models-dir",
            str(models_dir),
        ]
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float = 120.0) -> dict:
        """Poll /healthz until it answers 200; raise with the server's log when it does not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hwr-edge exited with {self.proc.returncode}:\n{self.log()}")
            try:
                r = requests.get(f"{self.url}/healthz", timeout=2)
                if r.status_code == 200:
                    return r.json()
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(
            f"hwr-edge did not answer /healthz within {timeout:.0f} s:\n{self.log()}"
        )

    def health(self) -> dict:
        """The current /healthz body."""
        r = requests.get(f"{self.url}/healthz", timeout=5)
        r.raise_for_status()
        return r.json()

    def log(self) -> str:
        """The last part of the server's output."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        """Terminate the server, then kill it if it does not stop."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


def fit_strokes(strokes: Strokes, box: float = DRAW_BOX) -> list[list[list[float]]]:
    """Scale and centre strokes (any units, y down) into the 280x280 canvas, aspect kept."""
    points = [p for s in strokes for p in s]
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    width = max(xs) - min(xs)
    height = max(ys) - min(ys)
    scale = box / max(width, height, 1e-6)
    ox = (CANVAS_SIZE - width * scale) / 2 - min(xs) * scale
    oy = (CANVAS_SIZE - height * scale) / 2 - min(ys) * scale
    return [[[p[0] * scale + ox, p[1] * scale + oy] for p in s] for s in strokes]


def to_screen(page, strokes: Strokes, selector: str = "#canvas") -> list[list[tuple[float, float]]]:
    """Canvas-logical strokes -> the page's CSS pixel coordinates of where they lie on screen."""
    box = page.locator(selector).bounding_box()
    assert box is not None, f"{selector} is not on screen"
    sx = box["width"] / CANVAS_SIZE
    sy = box["height"] / CANVAS_SIZE
    return [[(box["x"] + x * sx, box["y"] + y * sy) for x, y in s] for s in strokes]


def draw_with_mouse(page, strokes: Strokes) -> None:
    """Draw canvas-logical strokes with the mouse: press, move through each point, release."""
    for stroke in to_screen(page, strokes):
        page.mouse.move(*stroke[0])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(x, y)
        page.mouse.up()


def draw_with_touch(page, strokes: Strokes) -> None:
    """Draw canvas-logical strokes with a finger, through CDP touch events (pointerType touch)."""
    cdp = page.context.new_cdp_session(page)
    try:
        for stroke in to_screen(page, strokes):
            x, y = stroke[0]
            cdp.send(
                "Input.dispatchTouchEvent",
                {"type": "touchStart", "touchPoints": [{"x": x, "y": y, "id": 1}]},
            )
            for x, y in stroke[1:]:
                cdp.send(
                    "Input.dispatchTouchEvent",
                    {"type": "touchMove", "touchPoints": [{"x": x, "y": y, "id": 1}]},
                )
            cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    finally:
        cdp.detach()


def densify(strokes: Strokes, step: float = 4.0) -> list[list[list[float]]]:
    """Strokes with points at most ``step`` canvas pixels apart, as a finger's moves come."""
    out = []
    for s in strokes:
        points = [list(s[0])]
        for (x0, y0), (x1, y1) in zip(s, s[1:], strict=False):
            n = max(1, int(((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5 // step))
            points += [[x0 + (x1 - x0) * k / n, y0 + (y1 - y0) * k / n] for k in range(1, n + 1)]
        out.append(points)
    return out


def draw_timed(page, strokes: Strokes, interval_ms: float = 16.0) -> None:
    """Draw with the mouse at a finger's pace: one move per ``interval_ms`` (60 Hz by default)."""
    for stroke in to_screen(page, densify(strokes)):
        page.mouse.move(*stroke[0])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(x, y)
            page.wait_for_timeout(interval_ms)
        page.mouse.up()


def worker_pids(proc: subprocess.Popen) -> list[int]:
    """The pids of a process's children (hwr-edge's gunicorn worker answers the requests)."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


def dispatch_touch(page, points: Sequence[tuple[float, float]]) -> None:
    """One finger along screen points (CSS pixels), through CDP touch events."""
    cdp = page.context.new_cdp_session(page)
    try:
        x, y = points[0]
        cdp.send(
            "Input.dispatchTouchEvent",
            {"type": "touchStart", "touchPoints": [{"x": x, "y": y, "id": 1}]},
        )
        for x, y in points[1:]:
            cdp.send(
                "Input.dispatchTouchEvent",
                {"type": "touchMove", "touchPoints": [{"x": x, "y": y, "id": 1}]},
            )
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    finally:
        cdp.detach()
