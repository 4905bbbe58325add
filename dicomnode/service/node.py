"""The running node: the receiver, the assembler, the jobs, their webhooks and the operator
console over one index database and spool."""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from dicomnode.assembler import Assembler
from dicomnode.config import Config
from dicomnode.distributed import Publisher
from dicomnode.jobs.executor import Executor
from dicomnode.jobs.stages import Stages
from dicomnode.logs import log_event
from dicomnode.receiver import ReceiverPool, open_spool
from dicomnode.receiver.recovery import mark_clean, recover
from dicomnode.run import CaseRunner
from dicomnode.storage import StorageLayout, StorageLock
from dicomnode.store import InstanceIndex, create_schema, make_engine
from dicomnode.web import WebServer

#: Seconds without an open association before each warm-up step runs.
WARM_UP_IDLE = 2.0

LOGGER = logging.getLogger("dicomnode.service")


class Node:
    """Wires receiver → spool + index → assembler → jobs (route, segment, encode, dispatch);
    :meth:`serve` runs until SIGTERM/SIGINT."""

    def __init__(self, config: Config):
        self.config = config
        layout = StorageLayout.of(config.storage)
        self.write_engine: Engine = make_engine(layout.database_url, immediate=True)
        self.scheduler_engine: Engine = make_engine(layout.database_url)
        self.lock = StorageLock(layout.lock_file)
        self.spool = open_spool(config.storage)
        self.index = InstanceIndex(self.write_engine)
        self.runner = CaseRunner(config.models, config.results)
        sessions = sessionmaker(self.write_engine, expire_on_commit=False)
        self.stages = Stages.build(config, sessions, self.spool, self.runner)
        self.stages.webhooks.prepare()  # an unreadable signing key stops serve here, at once
        self.stages.dispatcher.prepare()  # so does an unreadable de-identification key
        # jobs.backend: celery — serve routes and dispatches; `dicomnode worker`s run the jobs.
        self.remote_workers = config.jobs.backend == "celery"
        publisher = Publisher(config, sessions) if self.remote_workers else None
        self.executor = Executor(config, self.stages, publisher)
        # A completed series wakes the executor: its job is routed and started at once rather
        # than at the next poll.
        self.assembler = Assembler(self.write_engine, self.scheduler_engine,
                                   config.assembly.series_timeout, on_job=self.executor.wake)
        # Associations are served by processes of their own (node.receiver_processes).
        self.receiver = ReceiverPool(config, self.assembler.series_started)
        # The console reads with an engine of its own; its actions go through the stages'
        # controls (and their writer sessions), as `dicomnode jobs` does.
        self.web_engine: Engine | None = None
        self.web: WebServer | None = None
        if config.web.enabled:
            self.web_engine = make_engine(layout.database_url)
            self.web = WebServer(config, layout, self.web_engine, sessions, self.stages.control,
                                 self.stages.health, self.executor.wake, self.runner)
        self._stopping = threading.Event()

    def start(self) -> None:
        """Take the storage lock, check and bind the console, recover from any crash, then
        start timers, listen, and serve the console."""
        self.lock.acquire()
        if self.web is not None:
            try:  # refuses an open console off loopback, a busy port, bad TLS
                self.web.prepare()
            except Exception:
                self.lock.release()
                raise
        create_schema(self.write_engine)
        partial = self.spool.prepare()
        cut_off = self.index.close_open_associations()
        self.assembler.scheduler.start(paused=True)  # timers can be armed, none fire yet
        reindexed = recover(self.spool, self.index, self.assembler.series_started)
        log_event(LOGGER, "node.starting", spool=str(self.spool.root),
                  database=self.write_engine.url.render_as_string(hide_password=True),
                  partial_files_removed=partial, associations_cut_off=cut_off,
                  reindexed=reindexed)
        self.assembler.start()
        # Before the executor: events left pending by the last run go out whether or not
        # jobs run now.
        self.stages.webhooks.start()
        if self.config.jobs.enabled:
            self.executor.start()
        self.receiver.start()
        if self.web is not None:
            self.web.start()
        if self.config.jobs.enabled and not self.remote_workers:  # workers warm their own
            threading.Thread(target=self._warm_up, name="warm-up", daemon=True).start()

    def _warm_up(self) -> None:
        """Run the case runner's warm-up steps, each once the receiver has been idle for
        ``WARM_UP_IDLE`` seconds: the imports hold the GIL and would slow a transfer."""
        started = time.monotonic()
        try:
            for step in self.runner.warm_up_steps():
                idle_since = time.monotonic()
                while time.monotonic() - idle_since < WARM_UP_IDLE:
                    if self._stopping.wait(0.2):
                        return
                    if self.receiver.busy():
                        idle_since = time.monotonic()
                log_event(LOGGER, "node.warm_up_step", step=step.__name__)
                step()
        except Exception as exc:  # noqa: BLE001 - the first job will report the same problem
            log_event(LOGGER, "node.warm_up_failed", logging.WARNING, error=str(exc))
        else:
            log_event(LOGGER, "node.warmed_up", seconds=round(time.monotonic() - started, 2))

    def stop(self) -> None:
        """Graceful stop: no new associations, running C-STOREs answered, timers kept."""
        if self.web is not None:
            self.web.stop()
        self.receiver.stop()
        mark_clean(self.spool)
        self.assembler.stop()
        self.executor.stop()
        self.stages.webhooks.stop()
        self.write_engine.dispose()
        self.scheduler_engine.dispose()
        if self.web_engine is not None:
            self.web_engine.dispose()
        self.lock.release()
        log_event(LOGGER, "node.stopped")

    def request_stop(self, signum: int = 0, _frame: FrameType | None = None) -> None:
        log_event(LOGGER, "node.stopping", signal=signum)
        self._stopping.set()

    def serve(self) -> None:
        """Start, block until SIGTERM or SIGINT, stop."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.start()
        try:
            while not self._stopping.wait(1.0):
                pass
        finally:
            self.stop()
