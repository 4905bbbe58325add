"""The local executor: threads that drive :class:`JobService` inside ``dicomnode serve``.

* one *coordinator* thread routes complete series, attempts due deliveries, checks destination
  health and applies retention;
* ``workers`` threads take queued jobs by priority. Inference is serialised by the model
  runtime's device lock, so with two workers one job loads or encodes while another is on the
  GPU — the overlap the node needs without two models competing for GPU memory.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

from dicomnode.jobs.service import JobService
from dicomnode.logs import log_event

LOGGER = logging.getLogger("dicomnode.jobs")


class Executor:
    """Runs until :meth:`stop`; every loop survives the failure of one iteration."""

    def __init__(self, service: JobService, *, workers: int = 2, poll_interval: float = 0.5):
        self.service = service
        self.workers = workers
        self.poll_interval = poll_interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        requeued = self.service.recover()
        log_event(LOGGER, "executor.starting", workers=self.workers, requeued=requeued)
        self._threads = [threading.Thread(target=self._coordinate, name="jobs-coordinator",
                                          daemon=True)]
        self._threads += [threading.Thread(target=self._work, name=f"jobs-worker-{i}", daemon=True)
                          for i in range(self.workers)]
        for thread in self._threads:
            thread.start()

    def wake(self) -> None:
        """Something changed (a series completed): look now rather than at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking work; wait up to ``timeout`` seconds in all for running steps.

        A job still running after that is left in its state and queued again by
        :meth:`JobService.recover` at the next start: stopping never waits for a model.
        """
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        busy = [t.name for t in self._threads if t.is_alive()]
        if busy:
            log_event(LOGGER, "executor.interrupted", threads=busy,
                      note="their jobs are re-queued at the next start")

    def _sleep(self) -> None:
        self._wake.wait(self.poll_interval)
        self._wake.clear()

    def _coordinate(self) -> None:
        config = self.service.config
        last_echo = last_purge = 0.0
        while not self._stop.is_set():
            try:
                self.service.route_pending()
                self.service.dispatch_due()
                now = time.monotonic()
                interval = config.dispatch.echo_interval
                if interval and now - last_echo >= interval and config.destinations:
                    last_echo = now
                    self.service.check_destinations()
                if now - last_purge >= 60:
                    last_purge = now
                    self.service.purge(free_bytes=_free_bytes(config.storage.path))
            except Exception:  # keep coordinating; the traceback goes to the log
                LOGGER.exception("coordinator iteration failed")
            self._sleep()

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                job_id = self.service.claim_next()
                if job_id is None:
                    self._stop.wait(self.poll_interval)
                    continue
                self.service.run_job(job_id)
                self._wake.set()  # its deliveries are due now
            except Exception:
                LOGGER.exception("worker iteration failed")
                self._stop.wait(self.poll_interval)


def _free_bytes(path: Path) -> int:
    path.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(path).free
