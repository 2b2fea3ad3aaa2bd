"""Retraining jobs and scoring on Huey: the job records, the queue, and the worker's tasks.

The queue is ``huey.SqliteHuey`` in the data directory (``jobs.db``; Redis or PostgreSQL
storage are Huey options past one machine, the task code unchanged). The consumer is a
separate process, ``hwr-sync-server worker`` (``serve`` starts one unless ``start_worker`` is
off); TensorFlow is imported there only, inside a retrain (sync_server/retrain.py).

A job record (table ``jobs``) is what the admin API and the dashboard show: status (queued,
running, published, refused, failed), stage, epoch, percent, metrics, gate result and reason.
At most one job per model is queued or running (a partial unique index): a second request
joins it. A worker killed mid-job leaves its job ``running`` with a stopped heartbeat: the next
worker start, or the next request once the heartbeat is ``job_stale_s`` old, marks it failed,
and a new request runs it again. Nothing is published but by the registry's one transaction.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, exc, select, update

from hwrcore.errors import HwrError
from hwrcore.labels import LABEL_SETS

from .db import ACTIVE_JOB, corrections, jobs, reading, writing
from .state import StartError

if TYPE_CHECKING:
    from .config import SyncConfig
    from .state import SyncState

log = logging.getLogger(__name__)

TRIGGERS = ("cli", "admin", "auto")
FINISHED = ("published", "refused", "failed")
# Each stage's share of a job's percent: (start, end).
STAGES = {
    "queued": (0.0, 0.0),
    "scoring": (0.0, 5.0),
    "snapshot": (5.0, 10.0),
    "loading": (10.0, 15.0),
    "training": (15.0, 75.0),
    "exporting": (75.0, 85.0),
    "evaluating": (85.0, 97.0),
    "gate": (97.0, 98.0),
    "publishing": (98.0, 100.0),
    "done": (100.0, 100.0),
}
HEARTBEAT_S = 5.0


class JobError(HwrError):
    """A retrain that cannot be requested as asked."""

    code = "invalid_job"


def _job(row: Any) -> dict[str, Any]:
    d = dict(row._mapping)
    for k in ("metrics", "gate"):
        d[k] = json.loads(d[k]) if d[k] else None
    return d


def get_job(engine: Engine, job_id: int) -> dict[str, Any] | None:
    """One job: ``{"id", "name", "mode", "status" (queued running published refused failed),
    "stage", "epoch", "epochs", "percent", "trigger" (cli admin auto), "requested_by",
    "requested", "started", "finished", "heartbeat", "worker", "parent", "version" (the version
    it made), "snapshot", "metrics" (dict or None, as in Registry.versions), "gate" (dict or
    None: {"passed", "checks": [{"check", "passed", "value", "limit", "detail"}], "reason"}),
    "reason" (why it was refused or failed)}``, or None."""
    with reading(engine) as conn:
        row = conn.execute(select(jobs).where(jobs.c.id == int(job_id))).first()
    return _job(row) if row is not None else None


def list_jobs(engine: Engine, *, name: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Jobs newest first (of model ``name``), each as :func:`get_job` gives it."""
    q = select(jobs).order_by(jobs.c.id.desc()).limit(max(1, min(int(limit), 1000)))
    if name is not None:
        q = q.where(jobs.c.name == name)
    with reading(engine) as conn:
        return [_job(r) for r in conn.execute(q)]


def active_job(engine: Engine, name: str) -> dict[str, Any] | None:
    """The queued or running job of model ``name``, or None."""
    with reading(engine) as conn:
        row = conn.execute(
            select(jobs).where(jobs.c.name == name, jobs.c.status.in_(ACTIVE_JOB))
        ).first()
    return _job(row) if row is not None else None


def finish(
    engine: Engine, job_id: int, status: str, reason: str | None = None, **values: Any
) -> None:
    """End a job (published, refused or failed) with its reason."""
    assert status in FINISHED
    for k in ("metrics", "gate"):
        if k in values and values[k] is not None:
            values[k] = json.dumps(values[k])
    with writing(engine) as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(status=status, reason=reason, finished=time.time(), **values)
        )


def fail_stale(engine: Engine, stale_s: float | None = None) -> list[int]:
    """Mark failed every running job whose worker stopped (all of them when ``stale_s`` is None)."""
    now = time.time()
    q = select(jobs.c.id, jobs.c.stage, jobs.c.heartbeat, jobs.c.started).where(
        jobs.c.status == "running"
    )
    with reading(engine) as conn:
        rows = conn.execute(q).all()
    failed = []
    for r in rows:
        beat = r.heartbeat or r.started or 0.0
        if stale_s is not None and now - beat < stale_s:
            continue
        with writing(engine) as conn:
            done = conn.execute(
                update(jobs)
                .where(jobs.c.id == r.id, jobs.c.status == "running")
                .values(
                    status="failed",
                    finished=now,
                    reason=f"the worker stopped during {r.stage or 'the job'} (killed or "
                    "restarted); nothing was published; request the retrain again",
                )
            ).rowcount
        if done:
            failed.append(r.id)
            log.warning("job %d failed: its worker stopped during %s", r.id, r.stage)
    return failed


def mode_of(state: SyncState, name: str) -> str:
    """The mode a model name serves ('digits' -> 'digit'); JobError for an unknown model."""
    current = state.registry.current(name)
    if current is None:
        known = sorted(state.registry.current_all())
        raise JobError(
            f"no model named {name!r} is released (known: {', '.join(known) or 'none'})",
            code="unknown_model",
        )
    return current.mode


def request_retrain(state: SyncState, name: str, by: str, trigger: str = "admin") -> dict[str, Any]:
    """Queue a retrain of model ``name``, or join the one queued or running; the job as
    :func:`get_job` gives it, with ``"joined": bool``."""
    if trigger not in TRIGGERS:
        raise JobError(f"trigger must be one of {', '.join(TRIGGERS)}")
    if not isinstance(by, str) or not by.strip() or len(by) > 100:
        raise JobError("by must name who asks (1-100 characters)")
    mode = mode_of(state, name)
    fail_stale(state.engine, state.config.job_stale_s)
    now = time.time()
    try:
        with writing(state.engine) as conn:
            job_id = conn.execute(
                jobs.insert().values(
                    name=name,
                    mode=mode,
                    status="queued",
                    stage="queued",
                    percent=0.0,
                    trigger=trigger,
                    requested_by=by,
                    requested=now,
                )
            ).inserted_primary_key[0]
    except exc.IntegrityError:
        joined = active_job(state.engine, name)
        if joined is None:  # it finished between our insert and our look: ask again
            return request_retrain(state, name, by, trigger)
        return {**joined, "joined": True}
    queue = state.jobs
    if queue is None:
        finish(state.engine, job_id, "failed", "no job queue is configured")
    else:
        try:
            queue.enqueue_retrain(int(job_id))
        except Exception as e:  # the queue's file cannot be written: say so on the job
            finish(state.engine, job_id, "failed", f"cannot queue the job: {e}")
    log.info("retrain of %s requested by %s (%s): job %d", name, by, trigger, job_id)
    job = get_job(state.engine, int(job_id))
    assert job is not None
    return {**job, "joined": False}


class Progress:
    """Writes a running job's stage, epoch and percent, and beats its heartbeat in a thread."""

    def __init__(self, engine: Engine, job_id: int):
        self.engine = engine
        self.job_id = job_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"job-{job_id}", daemon=True)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write(heartbeat=time.time())
            except Exception as e:  # a busy database: the next beat will do
                log.debug("heartbeat of job %d: %s", self.job_id, e)

    def _write(self, **values: Any) -> None:
        with writing(self.engine) as conn:
            conn.execute(update(jobs).where(jobs.c.id == self.job_id).values(**values))

    def stage(self, stage: str, within: float = 0.0, **values: Any) -> None:
        """Enter ``stage`` (``within``: how far through it, 0..1)."""
        lo, hi = STAGES[stage]
        pct = round(lo + (hi - lo) * min(1.0, max(0.0, within)), 2)
        self._write(stage=stage, percent=pct, heartbeat=time.time(), **values)

    def epoch(self, epoch: int, epochs: int, within: float) -> None:
        """Training progress: ``epoch`` of ``epochs`` (1-based), ``within`` the whole training."""
        lo, hi = STAGES["training"]
        pct = round(lo + (hi - lo) * min(1.0, max(0.0, within)), 2)
        self._write(
            stage="training", epoch=epoch, epochs=epochs, percent=pct, heartbeat=time.time()
        )


def claim(engine: Engine, job_id: int) -> dict[str, Any] | None:
    """Move a queued job to running for this worker; None if it is not queued any more."""
    now = time.time()
    with writing(engine) as conn:
        done = conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status == "queued")
            .values(
                status="running",
                stage="scoring",
                started=now,
                heartbeat=now,
                worker=f"{socket.gethostname()[:60]}:{os.getpid()}",
            )
        ).rowcount
    return get_job(engine, job_id) if done else None


# -- the queue -----------------------------------------------------------------------------------
@dataclass
class JobQueue:
    """The Huey queue as the server and the CLI see it: enqueue scoring and retrain tasks."""

    config: SyncConfig
    immediate: bool = False
    _last_poke: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.huey, self.tasks = make_huey(self.config, immediate=self.immediate)

    def poke(self, mode: str) -> None:
        """Corrections of ``mode`` were stored: have them scored within about ``score_delay``."""
        now = time.monotonic()
        with self._lock:
            if now - self._last_poke.get(mode, -1e9) < self.config.score_delay:
                return  # a task is already scheduled to run after this batch
            self._last_poke[mode] = now
        try:
            if self.immediate:
                self.tasks.score(mode)
            else:
                self.tasks.score.schedule(args=(mode,), delay=self.config.score_delay)
        except Exception as e:  # never fail an upload over its scoring: the sweep catches up
            log.warning("cannot queue the scoring of %s corrections: %s", mode, e)

    def enqueue_retrain(self, job_id: int) -> None:
        self.tasks.retrain(job_id)

    def close(self) -> None:
        storage = getattr(self.huey, "storage", None)
        if storage is not None and hasattr(storage, "close"):
            try:
                storage.close()
            except Exception:  # closing a per-thread connection from another thread
                pass


@dataclass
class Tasks:
    """The tasks registered on one Huey object."""

    score: Any
    retrain: Any
    sweep: Any


def make_huey(config: SyncConfig, immediate: bool = False) -> tuple[Any, Tasks]:
    """A Huey on the jobs file of ``config`` with the server's tasks registered on it."""
    from huey import SqliteHuey, crontab

    try:
        config.jobs_path.parent.mkdir(parents=True, exist_ok=True)
        h = SqliteHuey(
            name="hwr-sync",
            filename=str(config.jobs_path),
            immediate=immediate,
            results=False,
            utc=True,
        )
    except (OSError, sqlite3.Error) as e:
        raise StartError(f"cannot open the job queue {config.jobs_path}: {e}") from None

    def score(mode: str) -> None:
        worker_context().score(mode)

    def retrain(job_id: int) -> None:
        worker_context().retrain(job_id)

    def sweep() -> None:
        ctx = worker_context()
        for mode in LABEL_SETS:
            ctx.score(mode)

    tasks = Tasks(
        score=h.task(name="score")(score),
        retrain=h.task(name="retrain")(retrain),
        sweep=h.periodic_task(crontab(minute="*"), name="sweep")(sweep),
    )
    return h, tasks


# -- the worker's side -------------------------------------------------------------------------
_CONTEXT: WorkerContext | None = None


def worker_context() -> WorkerContext:
    """The worker process's context (set by :func:`run_worker`, or by a test)."""
    if _CONTEXT is None:
        raise RuntimeError("no worker context: tasks run in hwr-sync-server worker")
    return _CONTEXT


def set_worker_context(ctx: WorkerContext | None) -> None:
    global _CONTEXT
    _CONTEXT = ctx


class WorkerContext:
    """What the worker's tasks share: the state, one classifier per model version, locks."""

    def __init__(self, state: SyncState, clock: Callable[[], float] = time.time):
        self.state = state
        self.config = state.config
        self.clock = clock  # wall-clock seconds, for the automatic retrain's interval
        self._scorers: dict[tuple[str, str], Any] = {}
        self._score_locks = {mode: threading.Lock() for mode in LABEL_SETS}
        self._train_lock = threading.Lock()

    def scorer(self, name: str, version: str):  # type: ignore[no-untyped-def]
        """A batch scorer (images -> probabilities, embeddings) for a stored version."""
        key = (name, version)
        if key not in self._scorers:
            from edge.classifier import Classifier, ClassifierOptions

            path = self.state.registry.manifest_path(name, version)
            if path is None:
                raise JobError(f"model {name} {version} is not stored")
            clf = Classifier(path, ClassifierOptions(num_threads=1))
            self._scorers = {k: v for k, v in self._scorers.items() if k[0] != name}
            self._scorers[key] = clf.predict_batch
        return self._scorers[key]

    def score(self, mode: str) -> dict[str, int]:
        """Score what the current model of ``mode`` has not scored, then assess them all."""
        from . import merge

        current = self.state.registry.current_by_mode().get(mode)
        if current is None:
            return {}
        with self._score_locks[mode]:
            n = merge.score_pending(
                self.state.engine, mode, current.version, self.scorer(current.name, current.version)
            )
            counts = merge.reassess(self.state.engine, mode, merge.Policy.from_config(self.config))
        if n:
            log.info("scored %d %s corrections with %s: %s", n, mode, current.version, counts)
        self.maybe_retrain(mode, current.name)
        return counts

    def maybe_retrain(self, mode: str, name: str) -> dict[str, Any] | None:
        """Start a retrain when ``retrain_after`` new accepted corrections came in, at most once
        every ``retrain_min_interval`` seconds (counted from the first correction too)."""
        from . import merge

        cfg = self.config
        if not cfg.retrain_after:
            return None
        last = list_jobs(self.state.engine, name=name, limit=1)
        if last and last[0]["status"] in ACTIVE_JOB:
            return None
        with reading(self.state.engine) as conn:
            first = conn.execute(
                select(corrections.c.received)
                .where(corrections.c.mode == mode)
                .order_by(corrections.c.received)
                .limit(1)
            ).scalar()
        if first is None:
            return None
        since = last[0]["requested"] if last else 0.0
        if self.clock() - max(since, first) < cfg.retrain_min_interval:
            return None
        if merge.accepted_count(self.state.engine, mode, since) < cfg.retrain_after:
            return None
        return request_retrain(self.state, name, "auto", trigger="auto")

    def retrain(self, job_id: int) -> None:
        """Run one retraining job (sync_server/retrain.py does the training's part)."""
        with self._train_lock:
            job = claim(self.state.engine, job_id)
            if job is None:
                log.info("job %d is not queued any more; skipped", job_id)
                return
            from .retrain import run_job

            with Progress(self.state.engine, job_id) as progress:
                try:
                    run_job(self, job, progress)
                except Exception as e:
                    log.exception("job %d failed", job_id)
                    finish(self.state.engine, job_id, "failed", f"{type(e).__name__}: {e}")


def run_worker(config: SyncConfig) -> int:
    """The worker process: fail the jobs a dead worker left, then consume the queue until stopped."""
    from .state import open_state

    if config.worker_nice:
        try:  # the device API comes first: scoring and training take what CPU is left
            os.nice(config.worker_nice)
        except OSError as e:
            log.warning("cannot lower the worker's priority: %s", e)
    state = open_state(config, create=False)  # serve, which starts it, made the school
    state.jobs = JobQueue(config)
    failed = fail_stale(state.engine)
    if failed:
        log.warning("jobs %s were left running by a stopped worker: marked failed", failed)
    set_worker_context(WorkerContext(state))
    consumer = state.jobs.huey.create_consumer(
        workers=config.worker_threads,
        periodic=True,
        initial_delay=0.1,
        backoff=1.15,
        max_delay=0.5,
        check_worker_health=True,
    )
    for mode in LABEL_SETS:
        state.jobs.tasks.score(mode)  # catch up with what arrived while no worker ran
    print(f"hwr-sync-server: worker consuming {config.jobs_path} (pid {os.getpid()})", flush=True)
    try:
        consumer.run()
    finally:
        set_worker_context(None)
        state.close()
    return 0


__all__ = [
    "JobError",
    "JobQueue",
    "Progress",
    "WorkerContext",
    "active_job",
    "fail_stale",
    "get_job",
    "list_jobs",
    "make_huey",
    "request_retrain",
    "run_worker",
]
