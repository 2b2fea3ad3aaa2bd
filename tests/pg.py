"""A throw-away PostgreSQL cluster for the tests: initdb, pg_ctl start on 127.0.0.1, stop, remove.

PostgreSQL refuses to run as root, so as root the cluster is made and run by the ``postgres``
system user (Debian's package makes it) in a temporary directory given to that user. Tests
get a fresh database each from :meth:`Cluster.new_database`. Without ``initdb`` on this
machine the fixture skips, saying so.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

SUPERUSER = "hwr"


def find_bin() -> Path | None:
    """The newest PostgreSQL bin directory holding initdb and pg_ctl, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A running PostgreSQL server in a temporary directory, on 127.0.0.1:port, trust auth."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="hwr-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.run_as: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self.run_as = pwd.getpwnam("postgres")
            os.chown(self.root, self.run_as.pw_uid, self.run_as.pw_gid)
        self.log = self.root / "server.log"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        user = self.run_as

        def demote() -> None:
            if user is not None:
                os.setgid(user.pw_gid)
                os.setuid(user.pw_uid)

        env = {**os.environ, "LC_ALL": "C", "HOME": str(self.root)}
        return subprocess.run(
            cmd,
            preexec_fn=demote if user is not None else None,
            env=env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )

    def start(self) -> Cluster:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        opts = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "start")
        return self

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=30)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A new empty database; its SQLAlchemy URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}" STRATEGY FILE_COPY')
        return self.url(name)


def start_cluster() -> Cluster:
    """Start a cluster, or skip the test with the reason there is none."""
    bindir = find_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
    cluster = Cluster(bindir)
    t0 = time.monotonic()
    try:
        cluster.start()
    except subprocess.CalledProcessError as exc:
        log = cluster.log.read_text() if cluster.log.exists() else ""
        cluster.stop()
        raise RuntimeError(f"PostgreSQL did not start: {exc.stderr}\n{log}") from None
    cluster.started_in = time.monotonic() - t0  # type: ignore[attr-defined]
    return cluster


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One PostgreSQL cluster for the test session."""
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def pg_url(pg_cluster: Cluster) -> str:
    """One database on the session's PostgreSQL cluster (``database_url`` empties it)."""
    return pg_cluster.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """'' (SQLite in the data directory) or the session's PostgreSQL database, emptied: a test
    taking it runs on both."""
    if request.param == "sqlite":
        return ""
    from sqlalchemy import create_engine, inspect

    from sync_server.db import metadata

    url = request.getfixturevalue("pg_url")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            present = [t.name for t in metadata.sorted_tables if inspect(conn).has_table(t.name)]
            if present:
                conn.exec_driver_sql(f"TRUNCATE {', '.join(present)} RESTART IDENTITY CASCADE")
    finally:
        engine.dispose()
    return url


__all__ = ["Cluster", "database_url", "find_bin", "pg_cluster", "pg_url", "start_cluster"]
