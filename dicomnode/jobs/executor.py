"""The local executor: threads that drive the stages inside ``dicomnode serve``.

* one *coordinator* thread routes complete series, attempts due deliveries, checks destination
  health and applies retention;
* ``workers`` threads take queued jobs by priority. Inference is serialised by the model
  runtime's device lock, so with two workers one job loads or encodes while another is on the
  GPU — the overlap the node needs without two models competing for GPU memory.

An idle worker loads ahead the volume of an image series that has been quiet for half of
``assembly.series_timeout`` (:meth:`~dicomnode.run.worker.Worker.prefetch_quiet`): its job,
if the files are still the same, then starts segmenting at once.

Threads sleep until :meth:`Executor.wake` (a series completed, a job was routed or finished) or
``jobs.poll_interval`` passes, so a new job starts at once rather than at the next poll.

With ``jobs.backend: celery`` the same coordinator runs but there are no worker threads: it
hands routed job ids to a :class:`JobPublisher` (:mod:`dicomnode.distributed`) and queues
again the jobs of workers whose lease ran out; ``dicomnode worker`` processes run the jobs with
the same :class:`~dicomnode.run.worker.Worker`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from dicomnode.config import Config
from dicomnode.jobs.stages import Stages
from dicomnode.logs import log_event
from dicomnode.run.priority import lower_thread_priority
from dicomnode.storage import free_bytes

LOGGER = logging.getLogger("dicomnode.jobs")

#: Seconds between retention passes.
PURGE_INTERVAL = 60.0


class Wakeup:
    """Wakes every waiting thread at once (an Event would let the first waiter clear it
    before the others see it)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._generation = 0

    def notify(self) -> None:
        with self._condition:
            self._generation += 1
            self._condition.notify_all()

    def wait(self, seen: int, timeout: float) -> int:
        """Wait until a notify after generation ``seen`` or ``timeout``; returns the newest."""
        with self._condition:
            self._condition.wait_for(lambda: self._generation != seen, timeout)
            return self._generation

    @property
    def generation(self) -> int:
        with self._condition:
            return self._generation


class JobPublisher(Protocol):
    """Hands routed jobs to remote workers (:class:`dicomnode.distributed.Publisher`)."""

    def publish(self) -> int: ...

    def republish_waiting(self) -> int: ...

    def close(self) -> None: ...


class Executor:
    """Runs until :meth:`stop`; every loop survives the failure of one iteration."""

    def __init__(self, config: Config, stages: Stages, publisher: JobPublisher | None = None):
        self.config = config
        self.stages = stages
        self.publisher = publisher
        self.workers = 0 if publisher else config.jobs.workers
        self.poll_interval = config.jobs.poll_interval
        self._stop = threading.Event()
        self._wakeup = Wakeup()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        # Remote workers may be running jobs right now: only their lost ones are queued again.
        control = self.stages.control
        if self.publisher is None:
            log_event(LOGGER, "executor.starting", workers=self.workers,
                      requeued=control.recover())
        else:
            log_event(LOGGER, "executor.starting", workers=0, backend=self.config.jobs.backend,
                      requeued=control.recover_lost(),
                      republished=self.publisher.republish_waiting())
        self._threads = [threading.Thread(target=self._coordinate, name="jobs-coordinator",
                                          daemon=True)]
        self._threads += [threading.Thread(target=self._work, name=f"jobs-worker-{i}", daemon=True)
                          for i in range(self.workers)]
        for thread in self._threads:
            thread.start()

    def wake(self) -> None:
        """Something changed (a series completed, a job was routed): look now."""
        self._wakeup.notify()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking work; wait up to ``timeout`` seconds in all for running steps.

        A job still running after that is left in its state and queued again by
        :meth:`JobControl.recover` at the next start: stopping never waits for a model.
        """
        self._stop.set()
        self._wakeup.notify()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        busy = [t.name for t in self._threads if t.is_alive()]
        if busy:
            log_event(LOGGER, "executor.interrupted", threads=busy,
                      note="their jobs are re-queued at the next start")
        if self.publisher is not None and not busy:
            self.publisher.close()

    def _coordinate(self) -> None:
        stages, config = self.stages, self.config
        last_echo = last_purge = last_lost = 0.0
        seen = self._wakeup.generation
        while not self._stop.is_set():
            try:
                if stages.router.route_pending():
                    self.wake()  # the workers: routed jobs are waiting
                now = time.monotonic()
                if self.publisher is not None:
                    if now - last_lost >= config.jobs.lease_seconds / 3:
                        last_lost = now
                        stages.control.recover_lost()
                    self.publisher.publish()
                stages.dispatcher.dispatch_due()
                interval = config.dispatch.echo_interval
                if interval and now - last_echo >= interval and stages.health.peers():
                    last_echo = now
                    stages.health.check()
                if now - last_purge >= PURGE_INTERVAL:
                    last_purge = now
                    stages.retention.purge(free_bytes=free_bytes(config.storage.path))
            except Exception:  # keep coordinating; the traceback goes to the log
                LOGGER.exception("coordinator iteration failed")
            seen = self._wakeup.wait(seen, self.poll_interval)

    def _work(self) -> None:
        worker = self.stages.worker
        log_event(LOGGER, "executor.worker_started", thread=threading.get_native_id(),
                  nice=lower_thread_priority(self.config.jobs.nice))
        seen = self._wakeup.generation
        while not self._stop.is_set():
            try:
                job_id = worker.claim_next()
                if job_id is None:
                    # Idle: load the volume of a series that is about to complete (quiet for
                    # half its timeout), so that its job does not wait for its files.
                    if worker.prefetch_quiet(self.config.assembly.series_timeout / 2):
                        continue
                    seen = self._wakeup.wait(seen, self.poll_interval)
                    continue
                worker.run_job(job_id)
                self.wake()  # its deliveries are due now
            except Exception:
                LOGGER.exception("worker iteration failed")
                self._stop.wait(self.poll_interval)
