"""``hwr-train download`` against a real HTTP server on 127.0.0.1 serving small generated files.

Only the internet is replaced (by the local server) and the clock (retry waits are recorded,
not slept, where a test calls the library); the CLI tests run the real command.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import socket
import struct
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from hwrcore.labels import BYMERGE_LABELS
from trainer.data import load_emnist, load_mnist
from trainer.download import (
    BYMERGE_MEMBERS,
    EMNIST_SUMS,
    MNIST_REMOTES,
    ChecksumError,
    DownloadError,
    Fetcher,
    Remote,
    download,
)

ROOT = Path(__file__).resolve().parent.parent


def idx_bytes(a: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes, as the official MNIST/EMNIST files are."""
    a = np.ascontiguousarray(a, dtype=np.uint8)
    return bytes([0, 0, 0x08, a.ndim]) + struct.pack(">" + "I" * a.ndim, *a.shape) + a.tobytes()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


@dataclass
class Served:
    """What the test server serves, how it misbehaves, and what it was asked for."""

    files: dict[str, bytes] = field(default_factory=dict)
    # path -> statuses to answer (in order) before serving the file; "cut" sends half a body.
    faults: dict[str, list[object]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(served: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            with served.lock:
                served.requests.append(self.path)
                faults = served.faults.get(self.path)
                fault = faults.pop(0) if faults else None
            body = served.files.get(self.path)
            if isinstance(fault, int):
                self.send_response(fault)
                self.send_header("Retry-After", "7")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if fault == "cut":
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
                return
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[str, Served]]:
    served = Served()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@dataclass
class Generated:
    mnist: dict[str, np.ndarray]
    emnist_upright: dict[str, np.ndarray]
    mnist_files: dict[str, bytes]
    zip_bytes: bytes


def generate(rng: np.random.Generator) -> Generated:
    """Small MNIST-layout gz files and an EMNIST-style gzip.zip (ByMerge plus a decoy split)."""
    mnist = {
        "train_x": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "train_y": rng.integers(0, 10, 12, dtype=np.uint8),
        "test_x": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, 5, dtype=np.uint8),
    }
    mnist_files = {
        "mnist/train-images-idx3-ubyte.gz": gz(idx_bytes(mnist["train_x"])),
        "mnist/train-labels-idx1-ubyte.gz": gz(idx_bytes(mnist["train_y"])),
        "mnist/t10k-images-idx3-ubyte.gz": gz(idx_bytes(mnist["test_x"])),
        "mnist/t10k-labels-idx1-ubyte.gz": gz(idx_bytes(mnist["test_y"])),
    }
    upright = {}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for split, n in (("train", 9), ("test", 4)):
            x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
            y = rng.integers(0, 47, n, dtype=np.uint8)
            upright[f"{split}_x"], upright[f"{split}_y"] = x, y
            # The official files store each image transposed.
            zf.writestr(
                f"gzip/emnist-bymerge-{split}-images-idx3-ubyte.gz",
                gz(idx_bytes(x.transpose(0, 2, 1))),
            )
            zf.writestr(f"gzip/emnist-bymerge-{split}-labels-idx1-ubyte.gz", gz(idx_bytes(y)))
        mapping = "".join(f"{i} {ord(c)}\n" for i, c in enumerate(BYMERGE_LABELS))
        zf.writestr("gzip/emnist-bymerge-mapping.txt", mapping)
        zf.writestr("gzip/emnist-letters-train-images-idx3-ubyte.gz", gz(b"decoy"))
    return Generated(mnist, upright, mnist_files, buf.getvalue())


def serve_generated(served: Served, gen: Generated) -> tuple[list[Remote], Remote]:
    """Put the generated files on the server; Remotes that know their checksums and sizes."""
    remotes = []
    for path, body in gen.mnist_files.items():
        served.files[f"/{path}"] = body
        remotes.append(Remote(path, "", sha256=hashlib.sha256(body).hexdigest(), size=len(body)))
    served.files["/emnist/gzip.zip"] = gen.zip_bytes
    zip_remote = Remote(
        "emnist/gzip.zip",
        "",
        md5=hashlib.md5(gen.zip_bytes).hexdigest(),
        size=len(gen.zip_bytes),
    )
    return remotes, zip_remote


class Clock:
    """Records the retry waits instead of sleeping them."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)


def test_download_fetches_verifies_and_lays_out_the_files(server, tmp_path: Path) -> None:
    url, served = server
    gen = generate(np.random.default_rng(1))
    remotes, zip_remote = serve_generated(served, gen)
    data = tmp_path / "data"
    report = download(data, base_url=url, mnist=remotes, emnist_zip=zip_remote)
    assert sorted(report.fetched) == sorted([r.path for r in remotes] + ["emnist/gzip.zip"])
    assert sorted(report.extracted) == sorted(BYMERGE_MEMBERS.values())
    # The readers the trainer uses read what was fetched: MNIST as is, EMNIST made upright.
    x, y = load_mnist(data, "train")
    np.testing.assert_array_equal(x, gen.mnist["train_x"])
    np.testing.assert_array_equal(y, gen.mnist["train_y"])
    ex, ey = load_emnist(data, "test", "all")
    np.testing.assert_array_equal(ex, gen.emnist_upright["test_x"])
    np.testing.assert_array_equal(ey, gen.emnist_upright["test_y"])
    # Only ByMerge is extracted; the zip is removed; nothing half-written is left behind.
    assert sorted(p.name for p in (data / "emnist").iterdir()) == sorted(
        [Path(p).name for p in BYMERGE_MEMBERS.values()] + [Path(EMNIST_SUMS).name]
    )
    assert not list(data.rglob("*.part")) and not list(data.rglob("*.tmp"))
    sums = (data / EMNIST_SUMS).read_text().splitlines()
    assert len(sums) == 5
    for line in sums:
        sha, rel = line.split()
        assert hashlib.sha256((data / rel).read_bytes()).hexdigest() == sha


def test_files_present_and_intact_are_not_fetched_again(server, tmp_path: Path) -> None:
    url, served = server
    remotes, zip_remote = serve_generated(served, generate(np.random.default_rng(2)))
    download(tmp_path, base_url=url, mnist=remotes, emnist_zip=zip_remote)
    assert len(served.requests) == 5
    again = download(tmp_path, base_url=url, mnist=remotes, emnist_zip=zip_remote)
    assert len(served.requests) == 5
    assert again.fetched == [] and again.extracted == [] and len(again.present) == 9
    # A damaged file is fetched again, and only that one.
    (tmp_path / "mnist/t10k-labels-idx1-ubyte.gz").write_bytes(b"damaged")
    (tmp_path / "emnist/emnist-bymerge-mapping.txt").write_text("0 48\n")
    third = download(tmp_path, base_url=url, mnist=remotes, emnist_zip=zip_remote)
    assert third.fetched == ["mnist/t10k-labels-idx1-ubyte.gz", "emnist/gzip.zip"]
    assert served.requests[5:] == ["/mnist/t10k-labels-idx1-ubyte.gz", "/emnist/gzip.zip"]
    load_emnist(tmp_path, "train", "letters")  # the mapping is whole again


def test_checksum_mismatch_is_refused_and_nothing_is_kept(server, tmp_path: Path) -> None:
    url, served = server
    remotes, _ = serve_generated(served, generate(np.random.default_rng(3)))
    wrong = [Remote(r.path, "", sha256="0" * 64) for r in remotes]
    with pytest.raises(ChecksumError, match="fails its sha256: expected 0000"):
        download(tmp_path, base_url=url, only="mnist", mnist=wrong)
    assert not (tmp_path / "mnist").exists() or not list((tmp_path / "mnist").iterdir())


def test_zip_checked_by_md5_and_size(server, tmp_path: Path) -> None:
    url, served = server
    gen = generate(np.random.default_rng(4))
    _, zip_remote = serve_generated(served, gen)
    bad_md5 = Remote(zip_remote.path, "", md5="f" * 32, size=zip_remote.size)
    with pytest.raises(ChecksumError, match="md5"):
        download(tmp_path, base_url=url, only="emnist", emnist_zip=bad_md5)
    bad_size = Remote(zip_remote.path, "", size=(zip_remote.size or 0) + 1)
    with pytest.raises(ChecksumError, match="bytes, expected"):
        download(tmp_path, base_url=url, only="emnist", emnist_zip=bad_size)
    assert not (tmp_path / "emnist/gzip.zip").exists()


def test_a_zip_without_the_bymerge_files_is_an_error(server, tmp_path: Path) -> None:
    url, served = server
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("gzip/emnist-letters-train-images-idx3-ubyte.gz", b"x")
    served.files["/emnist/gzip.zip"] = buf.getvalue()
    with pytest.raises(DownloadError, match="does not hold emnist-bymerge"):
        download(tmp_path, base_url=url, only="emnist", emnist_zip=Remote("emnist/gzip.zip", ""))
    served.files["/emnist/gzip.zip"] = b"not a zip"
    with pytest.raises(DownloadError, match="not a readable zip"):
        download(tmp_path, base_url=url, only="emnist", emnist_zip=Remote("emnist/gzip.zip", ""))


def test_server_errors_are_retried_honouring_retry_after(server, tmp_path: Path) -> None:
    url, served = server
    remotes, _ = serve_generated(served, generate(np.random.default_rng(5)))
    served.faults["/mnist/train-labels-idx1-ubyte.gz"] = [503, 429]
    served.faults["/mnist/t10k-labels-idx1-ubyte.gz"] = ["cut"]
    clock = Clock()
    report = download(
        tmp_path, base_url=url, only="mnist", mnist=remotes, fetcher=Fetcher(sleep=clock.sleep)
    )
    assert len(report.fetched) == 4
    # Two waits as the server asked (Retry-After: 7), one backoff after the cut-off body.
    assert clock.waits == [7.0, 7.0, 1.0]
    assert served.requests.count("/mnist/train-labels-idx1-ubyte.gz") == 3
    assert load_mnist(tmp_path, "test")[0].shape == (5, 28, 28)


def test_retries_are_bounded(server, tmp_path: Path) -> None:
    url, served = server
    remotes, _ = serve_generated(served, generate(np.random.default_rng(6)))
    served.faults["/mnist/train-images-idx3-ubyte.gz"] = ["cut"] * 10
    clock = Clock()
    with pytest.raises(DownloadError, match=r"after 3 attempts"):
        download(
            tmp_path,
            base_url=url,
            only="mnist",
            mnist=remotes,
            fetcher=Fetcher(retries=2, sleep=clock.sleep),
        )
    assert clock.waits == [1.0, 2.0]
    assert served.requests.count("/mnist/train-images-idx3-ubyte.gz") == 3
    assert not list(tmp_path.rglob("*.part"))


def test_not_found_is_not_retried(server, tmp_path: Path) -> None:
    url, served = server
    clock = Clock()
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(tmp_path, base_url=url, only="mnist", fetcher=Fetcher(sleep=clock.sleep))
    assert clock.waits == [] and len(served.requests) == 1


def test_a_silent_server_times_out(tmp_path: Path) -> None:
    """A server that accepts the connection and never answers costs the timeout, not forever."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        fetcher = Fetcher(timeout=0.3, retries=0)
        with pytest.raises(DownloadError, match="timed out"):
            download(tmp_path, base_url=f"http://127.0.0.1:{port}", only="mnist", fetcher=fetcher)


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "no_proxy": "127.0.0.1,localhost"}
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        env.pop(var, None)
    return subprocess.run(
        [sys.executable, "-m", "trainer.cli", "download", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, stderr
    assert stderr.rstrip().splitlines()[-1] == lines[0]
    return lines[0]


def test_cli_refuses_files_that_fail_the_official_checksums(server, tmp_path: Path) -> None:
    """A mirror serving other bytes under the official names fails MNIST's published sha256."""
    url, served = server
    serve_generated(served, generate(np.random.default_rng(7)))
    proc = _run_cli("--data-dir", str(tmp_path), "--base-url", url, "--only", "mnist")
    assert proc.returncode == 2
    line = _error_line(proc.stderr)
    assert line.startswith("hwr-train: error: train-images-idx3-ubyte.gz from " + url)
    assert f"expected {MNIST_REMOTES[0].sha256}" in line
    assert not (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").exists()
    assert not list(tmp_path.rglob("*.part"))


def test_cli_offline_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port now: every connection is refused.
    proc = _run_cli(
        "--data-dir",
        str(tmp_path),
        "--base-url",
        f"http://127.0.0.1:{port}",
        "--retries",
        "1",
        "--timeout",
        "2",
    )
    assert proc.returncode == 2
    line = _error_line(proc.stderr)
    assert f"cannot fetch http://127.0.0.1:{port}/mnist/train-images-idx3-ubyte.gz" in line
    assert "refused" in line.lower() and "after 2 attempts" in line
    assert not list(tmp_path.rglob("*.gz"))
