"""``make demo``: a school on this machine: one sync server and two classroom devices, all local.

Starts ``hwr-sync-server`` on http://127.0.0.1:8100 (data in build/demo/server), registers two
devices the first time (their tokens kept in build/demo/<name>.token, mode 0600), and starts an
``hwr-edge`` for each on ports 8001 and 8002, synced with the server. Draw and correct on either
canvas: the correction reaches the server (see its summary below, or the devices' footers).
Publish a model to see both devices swap to it live:

    .venv/bin/hwr-sync-server publish path/to/digits.json --data-dir build/demo/server

Or retrain from the corrections (the dashboard at http://127.0.0.1:8100/admin/, or
``.venv/bin/hwr-sync-server retrain characters --data-dir build/demo/server``).

``make demo-loop`` (``--auto``) runs the whole loop by itself: the training ``f`` images of
EMNIST that the devices misread (their model reads many a lower-case f as ``F``) are corrected on
the two devices, half on each; they sync; a retrain is asked for, passes the gate and is
published; both devices swap to it, and the test split's ``f`` are read again on each device.
The retrain uses the short settings the end-to-end test uses (the head only, 80 steps an
epoch), about three minutes on a 2-core machine.

Ctrl-C stops everything; the next ``make demo`` starts where this one stopped.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEVICES = ("room-1", "room-2")
DATA = ROOT.parent / "shared" / "data"
# The end-to-end test's retrain settings: short enough to watch (HWR_SYNC_* for the server).
LOOP_SETTINGS = {
    "HWR_SYNC_RETRAIN_LAYERS": "head",
    "HWR_SYNC_RETRAIN_MAX_STEPS": "80",
    "HWR_SYNC_RETRAIN_LR": "0.0005",
    "HWR_SYNC_REPLAY_PER_CLASS": "150",
}


def _cli(*args: str, data: Path, env: dict[str, str]) -> str:
    """Run an hwr-sync-server subcommand; its last line of output."""
    out = subprocess.run(
        [str(BIN / "hwr-sync-server"), *args, "--data-dir", str(data)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"demo: hwr-sync-server {args[0]} failed: {out.stderr.strip()}")
    return out.stdout.strip().splitlines()[-1].strip()


def _secret_file(path: Path, make) -> str:
    """The secret kept in ``path`` (mode 0600), made by ``make()`` the first time."""
    if path.is_file():
        return path.read_text().strip()
    value = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


def _wait(url: str, proc: subprocess.Popen, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: {what} exited with status {proc.returncode}")
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit(f"demo: {what} did not answer at {url} within {timeout:.0f} s")


def _png(image_u8) -> str:  # type: ignore[no-untyped-def]
    """A 28x28 EMNIST image (white ink on black) as a canvas PNG: black ink on white, 8x."""
    from PIL import Image

    im = Image.fromarray(255 - image_u8, "L").resize((224, 224), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _reads(url: str, images) -> list[str]:  # type: ignore[no-untyped-def]
    out = []
    for im in images:
        r = requests.post(url + "api/predict", json={"mode": "char", "image": _png(im)}, timeout=30)
        r.raise_for_status()
        out.append(r.json()["label"])
    return out


def _serves(url: str) -> str:
    return requests.get(url + "healthz", timeout=5).json()["models"]["char"]["version"]


def loop(server_url: str, admin: str, devices: list[tuple[str, str]], data_dir: Path) -> None:
    """Correct the f the devices misread, retrain, and watch both devices swap."""
    from hwrcore.labels import LABEL_SETS
    from trainer.data import load_emnist

    f = LABEL_SETS["char"].labels.index("f")
    x, y = load_emnist(data_dir, "train", "letters")
    train_f = x[y == f]
    x, y = load_emnist(data_dir, "test", "letters")
    test_f = x[y == f]
    (first, url0), (_, url1) = devices
    print(f"demo: {len(train_f)} training f drawn on {first} (nothing stored yet)", flush=True)
    misread = [im for im, g in zip(train_f, _reads(url0, train_f), strict=True) if g != "f"]
    before = _reads(url0, test_f).count("f")
    print(f"demo: {len(misread)} read otherwise; correcting them on the two devices", flush=True)
    for i, im in enumerate(misread):
        url = (url0, url1)[i % 2]
        requests.post(
            url + "api/correct", json={"mode": "char", "image": _png(im), "label": "f"}, timeout=30
        ).raise_for_status()
    headers = {"Authorization": f"Bearer {admin}"}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all(requests.get(u + "healthz", timeout=5).json()["pending"] == 0 for _, u in devices):
            break
        time.sleep(1)
    old = _serves(url0)
    job = requests.post(
        server_url + "/api/v1/admin/retrain",
        json={"name": "characters", "by": "demo"},
        headers=headers,
        timeout=30,
    ).json()
    print(f"demo: synced; retrain job {job['id']} asked for (characters {old})", flush=True)
    shown = None
    while True:
        j = requests.get(
            f"{server_url}/api/v1/admin/jobs/{job['id']}", headers=headers, timeout=30
        ).json()
        state = (j["status"], j.get("stage"), int(j.get("percent") or 0) // 25)
        if state != shown:  # each stage, and each quarter of the way
            stage = j.get("stage") if j.get("stage") not in (None, j["status"]) else ""
            print(f"demo: job {job['id']} {j['status']} {stage} {int(j.get('percent') or 0)}%")
            shown = state
        if j["status"] not in ("queued", "running"):
            break
        time.sleep(2)
    if j["status"] != "published":
        print(f"demo: the job was {j['status']}: {j.get('reason')}", flush=True)
        return
    m = j["metrics"]
    print(
        f"demo: published {j['version']}: base test {m['parent']['base']['accuracy']:.2%} -> "
        f"{m['base']['accuracy']:.2%}, held-out corrections "
        f"{m['parent']['heldout']['accuracy']:.0%} -> {m['heldout']['accuracy']:.0%}",
        flush=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(_serves(u) != j["version"] for _, u in devices):
        time.sleep(1)
    for name, url in devices:
        after = _reads(url, test_f).count("f")
        print(
            f"demo: {name} serves {_serves(url)}; test f read as f: {before} -> {after} "
            f"of {len(test_f)}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=ROOT / "build" / "demo")
    p.add_argument("--server-port", type=int, default=8100)
    p.add_argument("--first-device-port", type=int, default=8001)
    p.add_argument("--auto", action="store_true", help="run the learning loop by itself")
    p.add_argument("--data-dir", type=Path, default=DATA, help="MNIST and EMNIST (--auto)")
    args = p.parse_args(argv)
    base: Path = args.dir
    data = base / "server"
    base.mkdir(parents=True, exist_ok=True)
    admin = _secret_file(base / "admin.token", lambda: secrets.token_urlsafe(32))
    env = {
        **os.environ,
        "HWR_SYNC_ADMIN_TOKEN": admin,
        "HWR_SYNC_BASE_DATA_DIR": str(args.data_dir),
    }
    if args.auto:
        env.update(LOOP_SETTINGS)
    _cli("init", data=data, env=env)  # a new school the first time; its key again after
    for name in DEVICES:  # registered once; the devices read their tokens from these files
        _secret_file(
            base / f"{name}.token", lambda n=name: _cli("add-device", n, data=data, env=env)
        )
    public_key = _cli("public-key", data=data, env=env)
    server_url = f"http://127.0.0.1:{args.server_port}"
    procs: list[subprocess.Popen] = []

    def stop(*_: object) -> None:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()

    def terminated(*_: object) -> None:
        raise KeyboardInterrupt  # SIGTERM stops the school as Ctrl-C does

    signal.signal(signal.SIGTERM, terminated)
    try:
        server = subprocess.Popen(
            [str(BIN / "hwr-sync-server"), "serve", "--port", str(args.server_port)]
            + ["--data-dir", str(data)],
            env=env,
        )
        procs.append(server)
        _wait(server_url + "/api/v1/models", server, "the sync server")
        urls = []
        for i, name in enumerate(DEVICES):
            port = args.first_device_port + i
            edge_env = {
                **os.environ,
                "HWR_EDGE_SYNC_URL": server_url,
                "HWR_EDGE_SYNC_TOKEN_FILE": str(base / f"{name}.token"),
                "HWR_EDGE_SYNC_PUBLIC_KEY": public_key,
                "HWR_EDGE_HEARTBEAT_INTERVAL": "5",
            }
            edge = subprocess.Popen(
                [str(BIN / "hwr-edge"), "--port", str(port), "--data-dir", str(base / name)],
                env=edge_env,
            )
            procs.append(edge)
            url = f"http://127.0.0.1:{port}/"
            _wait(url + "healthz", edge, f"device {name}")
            urls.append((name, url))
        print("\ndemo: a school on this machine (Ctrl-C stops it)")
        print(f"  sync server  {server_url}   (admin token in {base / 'admin.token'})")
        for name, url in urls:
            print(f"  {name:<12} {url}")
        print(f"  dashboard    {server_url}/admin/")
        print(
            "  publish a model:  .venv/bin/hwr-sync-server publish DIGITS.json "
            f"--data-dir {data}\n",
            flush=True,
        )
        if args.auto:
            loop(server_url, admin, urls, args.data_dir)
        headers = {"Authorization": f"Bearer {admin}"}
        last = None
        while all(proc.poll() is None for proc in procs):
            try:
                summary = requests.get(
                    server_url + "/api/v1/admin/summary", headers=headers, timeout=5
                ).json()
                line = f"demo: the server holds {summary['corrections']} corrections"
                if line != last:
                    print(line, flush=True)
                    last = line
            except (requests.RequestException, ValueError, KeyError):
                pass
            time.sleep(2)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop()


if __name__ == "__main__":
    sys.exit(main())
