"""The Celery application of a node, built from its configuration (never a module-level app:
serve and each worker build their own from the config they run with)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dicomnode.config import Config

if TYPE_CHECKING:
    from celery import Celery

#: The task a worker runs: its only argument is a job id.
RUN_JOB = "dicomnode.run_job"
GPU_QUEUE, CPU_QUEUE = "dicomnode.gpu", "dicomnode.cpu"
QUEUES = {"gpu": GPU_QUEUE, "cpu": CPU_QUEUE}
#: RabbitMQ priority levels (x-max-priority): rule priorities are clamped into 0..9.
MAX_PRIORITY = 9
#: Redis only: seconds before an unacknowledged message is delivered again. It must outlast
#: the longest job, or a running job's id goes to a second worker (whose claim then drops it,
#: but only while the first one's lease holds).
REDIS_VISIBILITY_TIMEOUT = 12 * 3600


def queue_for(config: Config, pipeline: str | None) -> str:
    """The broker queue of a pipeline's jobs: ``cpu`` for ``jobs.cpu_pipelines``, else
    ``gpu`` (every nnU-Net pipeline wants one)."""
    return CPU_QUEUE if pipeline in config.jobs.cpu_pipelines else GPU_QUEUE


def broker_priority(priority: int) -> int:
    return max(0, min(MAX_PRIORITY, priority))


def celery_app(config: Config) -> Celery:
    from celery import Celery
    from kombu import Exchange, Queue

    url = config.jobs.broker_url
    app = Celery("dicomnode", broker=url, set_as_current=False)
    exchange = Exchange("dicomnode", type="direct", durable=True)
    transport: dict[str, Any] = (
        {"visibility_timeout": REDIS_VISIBILITY_TIMEOUT} if url.startswith(("redis", "rediss"))
        # The broker confirms each publish: serve marks a job published only once it is.
        else {"confirm_publish": True})
    app.conf.update(
        # A message is acknowledged after its job ran, and given back when the worker dies:
        # a job is delivered again rather than lost; the claim in the database drops repeats.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One job at a time per worker process: a second prefetched id would wait behind a
        # long job while another worker idles.
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        task_queues=[Queue(name, exchange, routing_key=name, durable=True,
                           queue_arguments={"x-max-priority": MAX_PRIORITY + 1})
                     for name in QUEUES.values()],
        task_default_queue=GPU_QUEUE,
        task_default_exchange="dicomnode",
        task_default_routing_key=GPU_QUEUE,
        task_create_missing_queues=False,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # The job table and the workers table say what runs where; no result backend,
        # no events, no remote control queues on the broker.
        worker_send_task_events=False,
        worker_enable_remote_control=False,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )
    return app
