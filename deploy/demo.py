"""``make demo``: a school on this machine: one sync server and two classroom devices, all local.

Starts ``hwr-sync-server`` on http://127.0.0.1:8100 (data in build/demo/server), registers two
devices the first time (their tokens kept in build/demo/<name>.token, mode 0600), and starts an
``hwr-edge`` for each on ports 8001 and 8002, synced with the server. Draw and correct on either
canvas: the correction reaches the server (see its summary below, or the devices' footers).
Publish a model to see both devices swap to it live:

    .venv/bin/hwr-sync-server publish path/to/digits.json --data-dir build/demo/server

Ctrl-C stops everything; the next ``make demo`` starts where this one stopped.
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=ROOT / "build" / "demo")
    p.add_argument("--server-port", type=int, default=8100)
    p.add_argument("--first-device-port", type=int, default=8001)
    args = p.parse_args(argv)
    base: Path = args.dir
    data = base / "server"
    base.mkdir(parents=True, exist_ok=True)
    admin = _secret_file(base / "admin.token", lambda: secrets.token_urlsafe(32))
    env = {**os.environ, "HWR_SYNC_ADMIN_TOKEN": admin}
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
        print(
            "  publish a model:  .venv/bin/hwr-sync-server publish DIGITS.json "
            f"--data-dir {data}\n",
            flush=True,
        )
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
