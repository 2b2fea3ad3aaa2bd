"""The server's system of record: SQLAlchemy Core tables, the engine, and Alembic migrations.

Everything that knows it may be talking to SQLite lives here (WAL, foreign keys, busy timeout,
write transactions that take the lock up front); the rest of the server uses :func:`reading`
and :func:`writing` and runs unchanged on PostgreSQL (``postgresql+psycopg://...``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import (
    Column,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    exc,
    text,
)
from sqlalchemy.engine import Connection

from hwrcore.errors import HwrError

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_MS = 30_000
WRITE_OPTION = "hwr_write"

metadata = MetaData()

devices = Table(
    "devices",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("group_name", String(100), nullable=True),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("created", Float, nullable=False),
    Column("revoked", Float, nullable=True),
    Column("last_seen", Float, nullable=True),
    Column("hb_models", Text, nullable=True),  # JSON: the versions the device serves
    Column("hb_pending", Integer, nullable=True),
    Column("hb_software", String(64), nullable=True),
    Column("hb_clock", Float, nullable=True),
    Column("hb_tunnel_url", Text, nullable=True),
)

corrections = Table(
    "corrections",
    metadata,
    Column("uuid", String(36), primary_key=True),
    Column("device_id", Integer, ForeignKey("devices.id"), nullable=False),
    Column("mode", String(8), nullable=False),
    Column("label", String(8), nullable=False),
    Column("image", LargeBinary, nullable=False),  # 784 little-endian float32
    Column("strokes", Text, nullable=True),  # compact JSON, or NULL for a PNG drawing
    Column("predicted", String(8), nullable=True),
    Column("confidence", Float, nullable=True),
    Column("model_name", String(64), nullable=True),
    Column("model_version", String(64), nullable=True),
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
    Column("received", Float, nullable=False),
    Column("content_sha256", String(64), nullable=False),
    Column("embedding", LargeBinary, nullable=True),
    Column("embedding_version", String(64), nullable=True),
    # "correction", or "confirmation": the pupil said the model was right (label == predicted).
    Column("kind", String(16), nullable=False, server_default="correction"),
    Column("withdrawn", Float, nullable=True),  # when the device withdrew it (an undo)
    Column("withdrawn_by", String(16), nullable=True),  # "pupil" or "teacher"
    Column("withdrawal_received", Float, nullable=True),
    Index("ix_corrections_mode", "mode"),
    Index("ix_corrections_device", "device_id"),
)

models = Table(
    "models",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("version", String(64), nullable=False),
    Column("mode", String(8), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("length", Integer, nullable=False),
    Column("manifest", Text, nullable=False),  # JSON
    Column("path", String(255), nullable=False),  # relative to the data directory
    Column("created", Float, nullable=False),
    Column("published_by", String(100), nullable=False),
    Column("parent", String(64), nullable=True),
    Column("metrics", Text, nullable=True),  # JSON: base test and held-out figures (0002)
    Column("gate", Text, nullable=True),  # JSON: the gate's checks and verdict (0002)
    Column("snapshot", String(64), nullable=True),  # sha256 of the training snapshot (0002)
    Column("job_id", Integer, nullable=True),  # the retraining job that made it (0002)
    UniqueConstraint("name", "version", name="uq_models_name_version"),
)

releases = Table(
    "releases",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("sequence", Integer, nullable=False),
    Column("version", String(64), nullable=False),
    Column("mode", String(8), nullable=False),
    Column("document", Text, nullable=False),  # the signed release, canonical JSON
    Column("created", Float, nullable=False),
    Column("created_by", String(100), nullable=False),
    Column("target_group", String(100), nullable=True),  # NULL: every device (0002)
    UniqueConstraint("name", "sequence", name="uq_releases_name_sequence"),
)

# The server's assessment of each correction (sync_server/merge.py), one row per correction.
assessments = Table(
    "assessments",
    metadata,
    Column("uuid", String(36), ForeignKey("corrections.uuid"), primary_key=True),
    Column("mode", String(8), nullable=False),
    Column("image_sha256", String(64), nullable=False),
    Column("model_version", String(64), nullable=False),  # the version that scored it
    Column("model_label", String(8), nullable=False),
    Column("model_confidence", Float, nullable=False),
    Column("embedding", LargeBinary, nullable=False),  # float32, made by model_version
    Column("neighbour_label", String(8), nullable=True),  # consensus of other devices' neighbours
    Column("neighbour_share", Float, nullable=True),
    Column("support_devices", Integer, nullable=False, default=0),
    Column("vote", String(8), nullable=True),  # same image, other devices: won / lost / tie
    Column("status", String(16), nullable=False),  # accepted / quarantined
    Column("reason", Text, nullable=True),
    Column("review", String(16), nullable=True),  # approved / rejected (an admin's decision)
    Column("reviewed_by", String(100), nullable=True),
    Column("reviewed_at", Float, nullable=True),
    Column("scored", Float, nullable=False),
    Index("ix_assessments_mode_status", "mode", "status"),
    Index("ix_assessments_image", "image_sha256"),
)

# Every admin decision on a correction, never deleted.
decisions = Table(
    "decisions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("uuid", String(36), ForeignKey("corrections.uuid"), nullable=False),
    Column("decision", String(16), nullable=False),  # approve / reject
    Column("previous", String(32), nullable=True),  # status and review before it
    Column("by", String(100), nullable=False),
    Column("at", Float, nullable=False),
    Index("ix_decisions_uuid", "uuid"),
)

ACTIVE_JOB = ("queued", "running")

# Retraining jobs (sync_server/jobs.py); at most one queued or running per model name.
jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("mode", String(8), nullable=False),
    Column("status", String(16), nullable=False),  # queued running published refused failed
    Column("stage", String(32), nullable=True),
    Column("epoch", Integer, nullable=True),
    Column("epochs", Integer, nullable=True),
    Column("percent", Float, nullable=False, default=0.0),
    Column("trigger", String(16), nullable=False),  # cli / admin / auto
    Column("requested_by", String(100), nullable=False),
    Column("requested", Float, nullable=False),
    Column("started", Float, nullable=True),
    Column("finished", Float, nullable=True),
    Column("heartbeat", Float, nullable=True),
    Column("worker", String(100), nullable=True),  # host:pid of the worker running it
    Column("parent", String(64), nullable=True),
    Column("version", String(64), nullable=True),  # the version it made
    Column("snapshot", String(64), nullable=True),
    Column("metrics", Text, nullable=True),  # JSON
    Column("gate", Text, nullable=True),  # JSON
    Column("reason", Text, nullable=True),
    Index(
        "uq_jobs_active",
        "name",
        unique=True,
        sqlite_where=text("status IN ('queued', 'running')"),
        postgresql_where=text("status IN ('queued', 'running')"),
    ),
)

# Immutable training snapshots (sync_server/snapshots.py), named by the sha256 of their content.
snapshots = Table(
    "snapshots",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("mode", String(8), nullable=False),
    Column("path", String(255), nullable=False),  # relative to the data directory
    Column("n_train", Integer, nullable=False),
    Column("n_heldout", Integer, nullable=False),
    Column("devices", Text, nullable=False),  # JSON: {"train": [...], "heldout": [...]}
    Column("classes", Text, nullable=False),  # JSON: training corrections per label
    Column("created", Float, nullable=False),
    Column("job_id", Integer, nullable=True),
)

# Failed dashboard sign-ins of the last minute (sync_server/auth.py), shared by every worker.
signin_failures = Table(
    "signin_failures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("address", String(64), nullable=False),
    Column("at", Float, nullable=False),
    Index("ix_signin_failures_at", "at"),
)


class DatabaseError(HwrError):
    """The database cannot be opened or migrated."""

    code = "database_error"


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(url: str, pool_size: int = 10) -> Engine:
    """An engine for ``url``; on SQLite with WAL, foreign keys, a busy timeout and locking writes."""
    try:
        if url.startswith("sqlite"):
            engine = create_engine(
                url,
                pool_size=pool_size,
                max_overflow=10,
                connect_args={"timeout": SQLITE_BUSY_MS / 1000, "check_same_thread": False},
            )
            _sqlite_events(engine)
        else:
            engine = create_engine(url, pool_size=pool_size, max_overflow=5, pool_pre_ping=True)
    except (exc.ArgumentError, exc.NoSuchModuleError, ImportError) as e:
        raise DatabaseError(f"cannot use database URL: {e}") from None
    return engine


def _sqlite_events(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn, record) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None  # SQLAlchemy's "begin" event below emits BEGIN
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
        cur.execute("PRAGMA synchronous=FULL")  # committed means on disk before the answer
        cur.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        # A writer takes the lock at BEGIN: a read-then-write transaction can then never fail
        # on a snapshot another writer made stale (WAL's SQLITE_BUSY_SNAPSHOT), it just waits.
        if conn.get_execution_options().get(WRITE_OPTION):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A connection in a read transaction."""
    with engine.connect() as conn, conn.begin():
        yield conn


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """A connection in a write transaction, committed on leaving (rolled back on an exception)."""
    with engine.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
        yield conn


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent; retried once on a race)."""
    # Set before the import, which already logs its plugins at INFO: not lines per start.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    for attempt in (1, 2):
        try:
            with engine.connect().execution_options(**{WRITE_OPTION: True}) as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                conn.commit()
            return
        except exc.DBAPIError as e:
            if attempt == 2:
                raise DatabaseError(f"cannot migrate the database: {e.orig}") from None
            time.sleep(0.3)  # another process may be migrating the same database


def open_database(url: str, pool_size: int = 10) -> Engine:
    """An engine on ``url`` with the schema migrated; DatabaseError if it cannot be reached."""
    engine = make_engine(url, pool_size)
    try:
        migrate(engine)
    except exc.DBAPIError as e:
        engine.dispose()
        raise DatabaseError(f"cannot open the database: {e.orig}") from None
    except BaseException:
        engine.dispose()
        raise
    return engine


__all__ = [
    "ACTIVE_JOB",
    "DatabaseError",
    "assessments",
    "corrections",
    "decisions",
    "devices",
    "is_sqlite",
    "jobs",
    "make_engine",
    "metadata",
    "migrate",
    "models",
    "open_database",
    "reading",
    "releases",
    "snapshots",
    "writing",
]
