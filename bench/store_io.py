"""Disk writes and start-up memory of the corrections store under large corrections.

Each measurement runs in a fresh child process on a real disk (never tmpfs): it adds ``-n``
corrections whose drawings are 4,096 points of long floats (as the edge accepts them), closes
the store, and reads ``write_bytes`` from ``/proc/self/io`` (bytes this process made the
kernel write, background compactions included); then a second child opens the store and loads
what start-up loads for the personaliser, and reports its peak RSS.

Write amplification is ``write_bytes / request bytes``, the request being the JSON a client
sends for the drawing (``{"mode", "strokes"}``) plus the correction (``{"id", "label"}``).

  python bench/store_io.py [-n 1000] [--code DIR]    # --code: a checkout whose hwrcore to use

Two drawings are measured: ``smooth`` (a pen path sampled far more densely than needed, which
simplification shrinks) and ``largest`` (random points: as many as the store accepts).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD_WRITE = r"""
import json, math, os, sys, time, uuid
import numpy as np
from hwrcore import store as S
path, n, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rng = np.random.default_rng(0)

def drawing(i):
    if kind == "smooth":  # one pen path, 4,096 points of long floats
        t = np.linspace(0, 2 * math.pi, 4096)
        x = 140 + 100 * np.sin(t * (1 + i % 3)) + rng.random(4096) * 1e-6
        y = 140 + 100 * np.cos(t * 2) + rng.random(4096) * 1e-6
        return [np.stack([x, y], 1).tolist()]
    k = int(sys.argv[4])  # random points: the most the current store accepts
    return [(rng.random((k, 2)) * 280).tolist()]

def write_bytes():
    for line in open("/proc/self/io"):
        if line.startswith("write_bytes:"):
            return int(line.split()[1])

store = S.CorrectionStore(path, cap=100_000, pending_limit=100_000)
image = np.zeros((28, 28), np.float32)
image[6:22, 12:16] = 1.0
request = 0
w0 = write_bytes()
t0 = time.perf_counter()
for i in range(n):
    strokes = drawing(i)
    cid = str(uuid.uuid4())
    request += len(json.dumps({"mode": "digit", "strokes": strokes}))
    request += len(json.dumps({"id": cid, "label": str(i % 10)}))
    store.add(S.Correction(id=cid, label=str(i % 10), image=image, strokes=strokes,
                           predicted="1", confidence=0.5, model_version="bench",
                           created=time.time(), embedding=rng.standard_normal(128).astype("f4")))
added = time.perf_counter() - t0
store.close()
w1 = write_bytes()
size = sum(p.stat().st_size for p in __import__("pathlib").Path(path).parent.iterdir())
print(json.dumps({"request_bytes": request, "write_bytes": w1 - w0, "seconds": added,
                  "files_bytes": size}))
"""

CHILD_START = r"""
import json, resource, sys, time
from hwrcore import store as S
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
store = S.CorrectionStore(sys.argv[1], cap=100_000, pending_limit=100_000)
if hasattr(store, "newest_vectors"):
    rows = store.newest_vectors(2000)
else:  # the schema-1 store: start-up read newest()
    rows = store.newest(2000)
labels = [r.label for r in rows]
took = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rows": len(labels), "base_rss_mib": base / 1024,
                  "peak_rss_mib": peak / 1024, "open_seconds": took}))
"""


def largest_points(code: Path) -> int:
    """Random points the current store accepts in one drawing (old code: the same count)."""
    probe = (
        "import numpy as np, sys\n"
        "from hwrcore import store as S\n"
        "if not hasattr(S, 'simplify_strokes'):\n"
        "    print(0); sys.exit()\n"
        "rng = np.random.default_rng(0)\n"
        "k = 4096\n"
        "while k > 10:\n"
        "    try:\n"
        "        S.simplify_strokes([(rng.random((k, 2)) * 280).tolist()]); break\n"
        "    except S.InvalidCorrection:\n"
        "        k = int(k * 0.95)\n"
        "print(k)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env=_env(code),
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


def _env(code: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(code)}


def run(code: Path, n: int, kind: str, points: int) -> dict:
    """One write run and one start-up run in fresh processes; their figures."""
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        path = str(Path(tmp) / "custom_digits.h5")
        env = _env(code)
        w = subprocess.run(
            [sys.executable, "-c", CHILD_WRITE, path, str(n), kind, str(points)],
            env=env,
            cwd=tmp,  # not the checkout: -c puts the working directory first on sys.path
            capture_output=True,
            text=True,
        )
        if w.returncode:
            raise SystemExit(w.stderr[-2000:])
        s = subprocess.run(
            [sys.executable, "-c", CHILD_START, path],
            env=env,
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        if s.returncode:
            raise SystemExit(s.stderr[-2000:])
        out = {**json.loads(w.stdout), **json.loads(s.stdout)}
    out["write_amplification"] = round(out["write_bytes"] / out["request_bytes"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1000, help="corrections to add (default 1000)")
    ap.add_argument("--code", type=Path, default=ROOT, help="checkout whose hwrcore is measured")
    ap.add_argument("--kind", choices=("smooth", "largest", "both"), default="both")
    args = ap.parse_args()
    points = largest_points(ROOT)  # the same drawings for old and new code
    kinds = ("smooth", "largest") if args.kind == "both" else (args.kind,)
    for kind in kinds:
        r = run(args.code.resolve(), args.n, kind, points)
        print(
            f"{kind:8s} n={args.n} points={'4096' if kind == 'smooth' else points}: "
            f"requests {r['request_bytes'] / 2**20:.1f} MiB, disk writes "
            f"{r['write_bytes'] / 2**20:.1f} MiB (x{r['write_amplification']}), files "
            f"{r['files_bytes'] / 2**20:.1f} MiB, add {r['seconds']:.1f} s; start-up: "
            f"{r['rows']} rows in {r['open_seconds']:.2f} s, peak RSS {r['peak_rss_mib']:.0f} MiB "
            f"(imports {r['base_rss_mib']:.0f} MiB)"
        )


if __name__ == "__main__":
    main()
