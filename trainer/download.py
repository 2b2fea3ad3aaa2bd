"""Fetch the official MNIST and EMNIST files into the layout trainer.data reads, verified.

Layout written under the data directory::

    mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    emnist/emnist-bymerge-{train,test}-{images-idx3,labels-idx1}-ubyte.gz
    emnist/emnist-bymerge-mapping.txt
    emnist/SHA256SUMS        (sha256 of the files extracted from the verified zip)

Checksums: the four MNIST files are checked against their well-known sha256. EMNIST is
published as one zip (``gzip.zip``, all splits); no official sha256 of it is published, so it
is checked against its published size and the md5 that its distributors (torchvision) pin,
then the ByMerge files are extracted and their sha256 recorded in ``emnist/SHA256SUMS`` so a
later run can tell they are intact. Downloads go to a temporary file that is renamed into
place only once verified; files already present with the right checksum are not fetched again.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

# The original host (yann.lecun.com/exdb/mnist/) no longer serves the files reliably; this
# mirror serves the identical bytes (same sha256) and is the one TensorFlow's loaders use.
MNIST_BASE_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
EMNIST_ZIP_URL = "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip"
USER_AGENT = "hwr-train/0.1"
CHUNK = 1 << 20
TIMEOUT_S = 30.0
RETRIES = 3
MAX_RETRY_AFTER_S = 60.0
EMNIST_SUMS = "emnist/SHA256SUMS"


class DownloadError(Exception):
    """A file could not be fetched or is not the file expected; the message says which and why."""


class ChecksumError(DownloadError):
    """A fetched file does not match its published checksum or size."""


@dataclass(frozen=True)
class Remote:
    """One file to fetch: where it goes under the data directory, and how to know it is right."""

    path: str
    url: str
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None


MNIST_REMOTES: tuple[Remote, ...] = (
    Remote(
        "mnist/train-images-idx3-ubyte.gz",
        MNIST_BASE_URL + "train-images-idx3-ubyte.gz",
        sha256="440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        size=9_912_422,
    ),
    Remote(
        "mnist/train-labels-idx1-ubyte.gz",
        MNIST_BASE_URL + "train-labels-idx1-ubyte.gz",
        sha256="3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        size=28_881,
    ),
    Remote(
        "mnist/t10k-images-idx3-ubyte.gz",
        MNIST_BASE_URL + "t10k-images-idx3-ubyte.gz",
        sha256="8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        size=1_648_877,
    ),
    Remote(
        "mnist/t10k-labels-idx1-ubyte.gz",
        MNIST_BASE_URL + "t10k-labels-idx1-ubyte.gz",
        sha256="f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        size=4_542,
    ),
)
EMNIST_ZIP = Remote(
    "emnist/gzip.zip",
    EMNIST_ZIP_URL,
    md5="58c8d27c78d21e728a6bc7b3cc06412e",
    size=561_753_746,
)
# Members of the zip (found by file name, whatever folder holds them) -> path under the data dir.
BYMERGE_MEMBERS = {
    name: f"emnist/{name}"
    for name in (
        "emnist-bymerge-train-images-idx3-ubyte.gz",
        "emnist-bymerge-train-labels-idx1-ubyte.gz",
        "emnist-bymerge-test-images-idx3-ubyte.gz",
        "emnist-bymerge-test-labels-idx1-ubyte.gz",
        "emnist-bymerge-mapping.txt",
    )
}


@dataclass
class Fetcher:
    """HTTP GET with an explicit timeout and bounded retries (connection errors, 5xx, 429).

    ``sleep`` is injectable so tests can run retries without waiting.
    """

    timeout: float = TIMEOUT_S
    retries: int = RETRIES
    sleep: Callable[[float], None] = time.sleep
    backoff: float = 1.0

    def fetch(self, remote: Remote, dest: Path) -> None:
        """Download ``remote`` to ``dest`` atomically, verifying it; raises DownloadError."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        attempt = 0
        while True:
            try:
                self._get(remote.url, part)
                break
            except _Retryable as exc:
                part.unlink(missing_ok=True)
                if attempt >= self.retries:
                    raise DownloadError(
                        f"cannot fetch {remote.url}: {exc.reason} (after {attempt + 1} "
                        "attempts); check the network, or pass --base-url for a local mirror"
                    ) from None
                wait = exc.retry_after if exc.retry_after is not None else self.backoff * 2**attempt
                log.warning("%s: %s; retrying in %.1f s", remote.url, exc.reason, wait)
                self.sleep(wait)
                attempt += 1
            except BaseException:
                part.unlink(missing_ok=True)
                raise
        try:
            verify(part, remote)
        except ChecksumError:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, dest)

    def _get(self, url: str, part: Path) -> None:
        req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                expected = resp.headers.get("Content-Length")
                got = 0
                with open(part, "wb") as f:
                    while chunk := resp.read(CHUNK):
                        f.write(chunk)
                        got += len(chunk)
                    f.flush()
                    os.fsync(f.fileno())
                if expected is not None and expected.isdigit() and got != int(expected):
                    raise _Retryable(f"connection closed after {got} of {expected} bytes")
        except urllib.error.HTTPError as exc:
            if exc.code == 429 or exc.code >= 500:
                raise _Retryable(f"HTTP {exc.code} {exc.reason}", _retry_after(exc)) from None
            raise DownloadError(f"cannot fetch {url}: HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise _Retryable(str(exc.reason)) from None
        except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            raise _Retryable(
                f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            ) from None


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    value = exc.headers.get("Retry-After") if exc.headers else None
    if value is None:
        return None
    try:
        return min(max(0.0, float(value)), MAX_RETRY_AFTER_S)
    except ValueError:
        return None  # an HTTP date: fall back to the usual backoff


def file_digests(path: Path) -> tuple[str, str, int]:
    """sha256, md5 and size of a file, read once."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), md5.hexdigest(), size


def verify(path: Path, remote: Remote) -> None:
    """Check a file against every checksum and size the remote lists; ChecksumError if any differ."""
    sha, md5, size = file_digests(path)
    name = PurePosixPath(remote.path).name
    if remote.sha256 is not None and sha != remote.sha256:
        raise ChecksumError(
            f"{name} from {remote.url} fails its sha256: expected {remote.sha256}, got {sha}"
        )
    if remote.md5 is not None and md5 != remote.md5:
        raise ChecksumError(
            f"{name} from {remote.url} fails its md5: expected {remote.md5}, got {md5}"
        )
    if remote.size is not None and size != remote.size:
        raise ChecksumError(
            f"{name} from {remote.url} has {size} bytes, expected {remote.size}: "
            "not the official file (or a truncated one)"
        )


def is_verified(path: Path, remote: Remote) -> bool:
    """True when ``path`` exists and matches the remote's checksums."""
    if not path.is_file():
        return False
    try:
        verify(path, remote)
    except ChecksumError:
        return False
    return True


def rebase(remotes: tuple[Remote, ...] | list[Remote], base_url: str) -> list[Remote]:
    """The same files fetched from a mirror: ``<base_url>/<path under the data dir>``."""
    base = base_url.rstrip("/") + "/"
    return [replace(r, url=base + r.path) for r in remotes]


def extract_members(zip_path: Path, members: dict[str, str], data_dir: Path) -> dict[str, str]:
    """Extract named members of a zip (matched by file name) atomically; their sha256 by path."""
    sums: dict[str, str] = {}
    try:
        with zipfile.ZipFile(zip_path) as zf:
            by_name = {PurePosixPath(n).name: n for n in zf.namelist() if not n.endswith("/")}
            missing = sorted(set(members) - set(by_name))
            if missing:
                raise DownloadError(f"{zip_path} does not hold {', '.join(missing)}")
            for name, rel in members.items():
                dest = data_dir / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                part = dest.with_name(dest.name + ".part")
                sha = hashlib.sha256()
                with zf.open(by_name[name]) as src, open(part, "wb") as out:
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
                        sha.update(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(part, dest)
                sums[rel] = sha.hexdigest()
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise DownloadError(f"{zip_path} is not a readable zip ({exc})") from None
    return sums


def _read_sums(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[1]] = parts[0]
    return out


def _write_sums(path: Path, sums: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{sha}  {rel}\n" for rel, sha in sorted(sums.items())))
    os.replace(tmp, path)


def _members_intact(data_dir: Path, members: dict[str, str]) -> bool:
    sums = _read_sums(data_dir / EMNIST_SUMS)
    for rel in members.values():
        path = data_dir / rel
        if rel not in sums or not path.is_file() or file_digests(path)[0] != sums[rel]:
            return False
    return True


@dataclass
class DownloadReport:
    fetched: list[str]
    present: list[str]
    extracted: list[str]


def download(
    data_dir: str | os.PathLike,
    base_url: str | None = None,
    only: str | None = None,
    fetcher: Fetcher | None = None,
    mnist: tuple[Remote, ...] | list[Remote] = MNIST_REMOTES,
    emnist_zip: Remote = EMNIST_ZIP,
    members: dict[str, str] = BYMERGE_MEMBERS,
    keep_zip: bool = False,
) -> DownloadReport:
    """Fetch MNIST and EMNIST ByMerge into ``data_dir``; skip what is already there and intact.

    ``base_url`` fetches every file from a mirror laid out like the data directory
    (``<base>/mnist/...``, ``<base>/emnist/gzip.zip``). ``only``: 'mnist' or 'emnist'.
    Raises DownloadError (ChecksumError for a wrong file).
    """
    if only not in (None, "mnist", "emnist"):
        raise ValueError(f"only must be 'mnist' or 'emnist': got {only!r}")
    root = Path(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    fetcher = fetcher or Fetcher()
    remotes = list(mnist)
    zip_remote = emnist_zip
    if base_url:
        remotes = rebase(remotes, base_url)
        zip_remote = rebase([emnist_zip], base_url)[0]
    report = DownloadReport([], [], [])
    if only in (None, "mnist"):
        for remote in remotes:
            dest = root / remote.path
            if is_verified(dest, remote):
                report.present.append(remote.path)
                continue
            log.info("fetching %s", remote.url)
            fetcher.fetch(remote, dest)
            report.fetched.append(remote.path)
    if only in (None, "emnist"):
        if _members_intact(root, members):
            report.present += sorted(members.values())
            return report
        zip_path = root / zip_remote.path
        if is_verified(zip_path, zip_remote):
            report.present.append(zip_remote.path)
        else:
            # The zip and the files taken from it, with room to spare.
            need = 2 * (zip_remote.size or 0)
            if not free_space_ok(root, need):
                raise DownloadError(
                    f"not enough free disk space in {root} for {zip_remote.url} "
                    f"({_size_text(need)} needed)"
                )
            log.info("fetching %s (%s)", zip_remote.url, _size_text(zip_remote.size))
            fetcher.fetch(zip_remote, zip_path)
            report.fetched.append(zip_remote.path)
        try:
            sums = extract_members(zip_path, members, root)
        except DownloadError:
            zip_path.unlink(missing_ok=True)  # of no use; fetch it afresh next time
            raise
        _write_sums(root / EMNIST_SUMS, {**_read_sums(root / EMNIST_SUMS), **sums})
        report.extracted += sorted(sums)
        if not keep_zip:
            zip_path.unlink(missing_ok=True)
    return report


def _size_text(size: int | None) -> str:
    return f"{size / 1e6:.0f} MB" if size else "size unknown"


def free_space_ok(path: Path, need: int) -> bool:
    """Whether the file system holding ``path`` has ``need`` bytes free."""
    return shutil.disk_usage(path).free >= need
