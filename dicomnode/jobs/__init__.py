"""Jobs: the persisted state machine from a complete series to delivered results.

``models`` (states, deliveries), ``service`` (one step of one job at a time), ``executor``
(threads that drive the service inside ``dicomnode serve``), ``processing`` (the pipeline run).
"""

from dicomnode.jobs.models import Delivery, DeliveryState, JobState

__all__ = ["Delivery", "DeliveryState", "JobState"]
