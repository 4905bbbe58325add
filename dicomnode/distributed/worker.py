"""``dicomnode worker``: run jobs that serve published, on this machine's device.

One worker process runs one job at a time (prefetch 1) on one device and keeps its pipelines
warm between jobs. For each job id the broker delivers it claims the job in the database with
a lease (:meth:`dicomnode.run.worker.Worker.claim`) and runs it with the same job runner as the
local executor; a delivery whose job another worker holds, or that is finished, is dropped.
A heartbeat thread renews the lease and writes the worker's row in the ``workers`` table.
SIGTERM is Celery's warm shutdown: the running job finishes, then the worker exits.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Config
from dicomnode.dispatcher import Dispatcher
from dicomnode.distributed.app import QUEUES, RUN_JOB, celery_app
from dicomnode.logs import log_event
from dicomnode.run import CaseRunner
from dicomnode.run.priority import lower_thread_priority
from dicomnode.run.worker import Worker
from dicomnode.storage import ResultsStore, Spool, StorageLayout
from dicomnode.store import RUNNING_STATES, Instance, Job, make_engine, utcnow
from dicomnode.store.jobs import WorkerRecord
from dicomnode.webhooks import Outbox

if TYPE_CHECKING:
    from celery import Celery

LOGGER = logging.getLogger("dicomnode.distributed")

#: Spool files of queued jobs looked for to tell the node's storage from an empty folder.
PROBE_FILES = 20


class WorkerStartError(Exception):
    """The worker cannot run jobs here: a sentence saying what to fix."""


def check_reach(config: Config, engine: Engine, layout: StorageLayout) -> None:
    """Refuse to start unless this machine sees the node's database and storage: a worker
    that cannot read the spool would fail every job it takes."""
    if config.jobs.backend != "celery":
        raise WorkerStartError("jobs.backend is 'local': serve runs the jobs itself; set "
                               "jobs.backend: celery in the configuration of serve and workers")
    url = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
    except Exception as exc:  # noqa: BLE001 - any driver error, said in one sentence
        raise WorkerStartError(f"cannot reach the node's database {url} "
                               f"(storage.database_url): {exc}") from exc
    if not {"jobs", "workers"} <= tables:
        raise WorkerStartError(f"the database {url} holds no job table of a node: start "
                               "dicomnode serve with this storage.database_url first")
    if not layout.spool.is_dir():
        raise WorkerStartError(
            f"cannot see the node's storage: {layout.spool.resolve()} does not exist; mount the "
            "folder serve uses (storage.path) at the same path on this machine")
    try:
        layout.jobs.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=layout.jobs, prefix=".worker-probe-"):
            pass
    except OSError as exc:
        raise WorkerStartError(f"cannot write results under {layout.jobs.resolve()}: {exc}"
                               ) from exc
    with Session(engine) as session:
        queued = select(Job.series_id).where(Job.state.in_(("routed", *RUNNING_STATES)))
        paths = session.scalars(select(Instance.path).where(Instance.series_id.in_(queued))
                                .limit(PROBE_FILES)).all()
    if paths and not any((layout.spool / path).is_file() for path in paths):
        raise WorkerStartError(
            f"cannot see the node's storage: the spool files its database lists (e.g. "
            f"{layout.spool.resolve() / paths[0]}) are not under {layout.spool.resolve()}; "
            "mount the folder serve uses (storage.path) at the same path on this machine")


class RemoteWorker:
    """The job runner of one worker process, its heartbeat and its Celery task."""

    def __init__(self, config: Config, queues: list[str], device: str | None,
                 name: str | None = None):
        self.config = config
        self.queues = queues
        self.device = device
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.lease = config.jobs.lease_seconds
        layout = StorageLayout.of(config.storage)
        self.layout = layout
        self.engine = make_engine(layout.database_url, immediate=True)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        fsync = config.storage.fsync
        results = ResultsStore(layout, fsync=fsync)
        # Final states reached here (failed) write their webhook events like serve's do;
        # serve's deliverer sends them.
        Outbox(config, on_event=lambda: None).watch(self.sessions)
        self.runner = CaseRunner(config.models, config.results, device=device)
        self.jobs = Worker(self.sessions, Spool(layout.spool, fsync=fsync), results,
                           self.runner, Dispatcher(config, self.sessions, results))
        self._current: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started = utcnow()

    def check(self) -> None:
        check_reach(self.config, self.engine, self.layout)

    def run_job(self, job_id: int) -> str:
        """The task body: claim, run, release. Returns what happened, for Celery's log."""
        if not self.jobs.claim(job_id, self.name, self.lease):
            log_event(LOGGER, "job.delivery_dropped", job=job_id, worker=self.name,
                      reason="held by another worker, or finished")
            return "dropped"
        with self._lock:
            self._current = job_id
        self._beat_once()
        log_event(LOGGER, "job.claimed", job=job_id, worker=self.name,
                  nice=lower_thread_priority(self.config.jobs.nice))
        try:
            self.jobs.run_job(job_id, owner=self.name)
        finally:
            with self._lock:
                self._current = None
            self._beat_once()
        return "ran"

    def heartbeat(self, state: str = "running") -> None:
        """Renew the running job's lease and write this worker's row."""
        now = utcnow()
        with self._lock:
            current = self._current
        with self.sessions.begin() as session:
            if current is not None:
                session.execute(update(Job).where(
                    Job.id == current, Job.claimed_by == self.name,
                    Job.state.in_(RUNNING_STATES))
                    .values(lease_until=now + timedelta(seconds=self.lease)))
            session.merge(WorkerRecord(
                name=self.name, host=socket.gethostname(), pid=os.getpid(),
                queues=",".join(self.queues), device=self.device or self.config.models.device,
                started_at=self._started, heartbeat_at=now, job_id=current, state=state,
                lease_seconds=self.lease))

    def _beat_once(self) -> None:
        try:
            self.heartbeat()
        except Exception:  # noqa: BLE001 - the database is away: the lease may run out
            LOGGER.exception("worker heartbeat failed")

    def _beat(self) -> None:
        while not self._stop.wait(self.lease / 3):
            self._beat_once()

    def warm_up(self) -> None:
        """Imports, the device, and the pipelines the rules name, before the first job."""
        try:
            for step in self.runner.warm_up_steps():
                step()
            for pipeline in sorted({p for rule in self.config.routing.rules
                                    for p in rule.pipelines}):
                self.runner.pipeline(pipeline)
        except Exception as exc:  # noqa: BLE001 - the first job reports the same problem
            log_event(LOGGER, "worker.warm_up_failed", logging.WARNING, error=str(exc))

    def app(self) -> Celery:
        app = celery_app(self.config)
        app.task(name=RUN_JOB, acks_late=True, reject_on_worker_lost=True)(self.run_job)
        return app

    def serve(self) -> None:
        """Check, warm up, and take jobs until SIGTERM/SIGINT (warm shutdown)."""
        self.check()
        self.heartbeat()
        beat = threading.Thread(target=self._beat, name="worker-heartbeat", daemon=True)
        beat.start()
        log_event(LOGGER, "worker.starting", worker=self.name, queues=self.queues,
                  device=self.device or self.config.models.device)
        self.warm_up()
        app = self.app()
        try:
            # The threads pool with one thread: the main thread keeps the broker connection's
            # heartbeats going while a long job runs.
            worker = app.Worker(hostname=f"{self.name}@{socket.gethostname()}",
                                queues=[QUEUES[q] for q in self.queues], pool_cls="threads",
                                concurrency=1, loglevel=self.config.logging.level,
                                without_gossip=True, without_mingle=True,
                                without_heartbeat=True, optimization="fair")
            worker.start()
        finally:
            self._stop.set()
            beat.join(timeout=5)
            try:
                self.heartbeat(state="stopped")
            except Exception:  # noqa: BLE001 - stopping anyway
                LOGGER.exception("could not record the worker's stop")
            log_event(LOGGER, "worker.stopped", worker=self.name)
            app.close()
            self.engine.dispose()
