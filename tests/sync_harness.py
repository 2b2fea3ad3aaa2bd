"""Real processes for the sync tests: one ``hwr-sync-server``, several ``hwr-edge``s, and what they hold.

Each process is started as a pupil's device or a school's server would be, on 127.0.0.1 with
``--port 0`` (or a fixed port, so a server can be restarted where the devices look for it),
and found ready by polling until it answers. What each side holds is read from its own files:
the devices' corrections from their HDF5 stores (``read_store``), the server's from its SQLite
database.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

from hwrcore.manifest import load_manifest, sha256_file
from hwrcore.store import read_store

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MODELS = ROOT / "models_export"
ADMIN_TOKEN = "admin-" + "x" * 40
STROKES = {
    "digit": [[[60.0, 50.0], [220.0, 50.0], [130.0, 240.0]]],
    "char": [[[50.0, 50.0], [230.0, 50.0]], [[140.0, 50.0], [140.0, 250.0]]],
}


def _die_with_the_test() -> None:
    """In the child: SIGKILL if the test process dies, so nothing outlives the test."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, data_dir: Path, env: dict | None = None, check: bool = True) -> str:
    """Run an ``hwr-sync-server`` subcommand; its stdout."""
    proc = subprocess.run(
        [str(BIN / "hwr-sync-server"), *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HWR_SYNC_ADMIN_TOKEN": ADMIN_TOKEN, **(env or {})},
        cwd=ROOT,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"hwr-sync-server {args[0]} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1].strip()


class Process:
    """A server process that prints its URL on its first line of stdout and answers ``ready``."""

    name = "process"

    def __init__(self, cmd: list[str], log_path: Path, ready: str, env: dict | None = None):
        self.log_path = log_path
        self.log = open(log_path, "a")  # closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            preexec_fn=_die_with_the_test,
            start_new_session=True,  # a SIGKILL of the group takes the workers too
        )
        ready_out, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline() if ready_out else ""
        match = re.search(r"(http://\S+?)/?(\s|$)", line)
        if not match:
            self.stop(signal.SIGKILL)
            raise AssertionError(f"{self.name}: no URL printed: {line!r}\n{self.tail()}")
        self.url = match.group(1).rstrip("/")
        deadline = time.monotonic() + 90
        while True:
            try:
                if requests.get(self.url + ready, timeout=5).status_code < 500:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop(signal.SIGKILL)
                raise AssertionError(f"{self.name} did not answer:\n{self.tail()}")
            time.sleep(0.02)

    def tail(self, n: int = 4000) -> str:
        self.log.flush()
        return self.log_path.read_text()[-n:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Stop the process (SIGKILL: its whole group, as a power cut would)."""
        if self.proc.poll() is None:
            if sig == signal.SIGKILL:
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.log.close()
        return self.proc.returncode


class SyncServer(Process):
    name = "hwr-sync-server"

    def __init__(self, data_dir: Path, port: int = 0, env: dict | None = None):
        self.data_dir = data_dir
        self.port = port
        cmd = [
            str(BIN / "hwr-sync-server"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
        ]
        env = {"HWR_SYNC_ADMIN_TOKEN": ADMIN_TOKEN, **(env or {})}
        super().__init__(cmd, data_dir.parent / f"{data_dir.name}.log", "/api/v1/models", env)

    def summary(self) -> dict:
        r = requests.get(
            self.url + "/api/v1/admin/summary",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=10,
        )
        r.raise_for_status()
        return r.json()


def server_uuids(data_dir: Path) -> list[str]:
    """Every correction UUID in the server's SQLite database (a list: a repeat would show)."""
    db = sqlite3.connect(f"file:{data_dir / 'sync.db'}?mode=ro", uri=True, timeout=30)
    try:
        return [row[0] for row in db.execute("SELECT uuid FROM corrections")]
    finally:
        db.close()


class SyncedEdge(Process):
    """An ``hwr-edge`` that syncs with a server at ``sync_url`` (the server may be down)."""

    name = "hwr-edge"

    def __init__(
        self,
        data_dir: Path,
        sync_url: str,
        token: str,
        public_key: str,
        port: int = 0,
        env: dict | None = None,
    ):
        self.data_dir = data_dir
        cmd = [
            str(BIN / "hwr-edge"),
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--models-dir",
            str(MODELS),
        ]
        env = {
            "HWR_EDGE_SYNC_URL": sync_url,
            "HWR_EDGE_SYNC_TOKEN": token,
            "HWR_EDGE_SYNC_PUBLIC_KEY": public_key,
            "HWR_EDGE_SYNC_INTERVAL": "0.2",
            "HWR_EDGE_SYNC_BACKOFF_MAX": "1",
            "HWR_EDGE_SYNC_READ_TIMEOUT": "5",
            "HWR_EDGE_HEARTBEAT_INTERVAL": "2",
            "HWR_EDGE_MODEL_POLL_INTERVAL": "2",
            **(env or {}),
        }
        super().__init__(cmd, data_dir.parent / f"{data_dir.name}.log", "/healthz", env)

    def health(self) -> dict:
        return requests.get(self.url + "/healthz", timeout=10).json()

    def correct(self, mode: str = "digit", label: str | None = None) -> str:
        """One correction with its drawing; the id the device made, once durable."""
        label = label or ("7" if mode == "digit" else "T")
        r = requests.post(
            self.url + "/api/correct",
            json={"mode": mode, "strokes": STROKES[mode], "label": label},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        return r.json()["correction_id"]

    def uuids(self) -> set[str]:
        """Every correction the device holds, read from its files."""
        out: set[str] = set()
        for name in ("custom_digits.h5", "custom_characters.h5"):
            if (self.data_dir / name).exists() or (self.data_dir / f"{name}.journal").exists():
                out |= {c.id for c in read_store(self.data_dir / name)}
        return out


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll until ``predicate()`` is truthy; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except requests.RequestException as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def new_model_version(tmp: Path, version: str, *, distinct: bool = False) -> Path:
    """The shipped digit model under another version: a manifest beside a copy of its file.

    With ``distinct`` the file gets a few bytes more (the interpreter ignores them), so its
    sha256 is its own and a device cannot reuse a file it already has.
    """
    src = load_manifest(MODELS / "digits.json")
    out = tmp / f"digits-{version}"
    out.mkdir()
    shutil.copy(MODELS / src.file, out / src.file)
    m = src.to_dict()
    if distinct:
        with open(out / src.file, "ab") as f:
            f.write(version.encode())
        m["sha256"] = sha256_file(out / src.file)
    m.update(version=version, parent_version=src.version)
    (out / "digits.json").write_text(json.dumps(m))
    return out / "digits.json"


def new_id() -> str:
    return str(uuid.uuid4())


__all__ = [
    "ADMIN_TOKEN",
    "SyncServer",
    "SyncedEdge",
    "free_port",
    "last_line",
    "new_model_version",
    "run_cli",
    "server_uuids",
    "wait_for",
]
