"""Jobs on other machines (``jobs.backend: celery``): serve publishes job ids to a Celery
broker (:mod:`.publisher`), ``dicomnode worker`` processes claim and run them with the same
job runner as the local executor (:mod:`.worker`). The job table stays the source of truth:
a broker message only says "look at job N"; the claim in the database decides who runs it.
"""

from dicomnode.distributed.app import CPU_QUEUE, GPU_QUEUE, QUEUES, RUN_JOB, celery_app, queue_for
from dicomnode.distributed.publisher import Publisher

__all__ = ["CPU_QUEUE", "GPU_QUEUE", "QUEUES", "RUN_JOB", "Publisher", "celery_app", "queue_for"]
