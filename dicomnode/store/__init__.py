"""The index database: studies, series, instances, association audit, rejections, operator
actions, and the job record (jobs, deliveries, destination health, the webhook outbox) with its
states."""

from dicomnode.store.database import (
    DatabaseError,
    create_schema,
    is_sqlite,
    make_engine,
    session_factory,
)
from dicomnode.store.index import HeldInstance, IndexOutcome, InstanceIndex, InstanceRecord
from dicomnode.store.jobs import (
    CANCELLABLE_STATES,
    FINISHED_STATES,
    RETRYABLE_STATES,
    RUNNING_STATES,
    WAITING_STATES,
    Delivery,
    DeliveryState,
    DestinationHealth,
    Job,
    JobError,
    JobState,
    error_kind,
)
from dicomnode.store.models import (
    Association,
    AssociationOutcome,
    Base,
    Instance,
    OperatorAction,
    Rejection,
    Series,
    SeriesState,
    Study,
    WebhookEvent,
    WebhookState,
    as_utc,
    utcnow,
)

__all__ = [
    "CANCELLABLE_STATES", "FINISHED_STATES", "RETRYABLE_STATES", "RUNNING_STATES",
    "WAITING_STATES", "Association", "AssociationOutcome", "Base", "DatabaseError", "Delivery",
    "DeliveryState", "DestinationHealth", "HeldInstance", "IndexOutcome", "Instance",
    "InstanceIndex", "InstanceRecord", "Job", "JobError", "JobState", "OperatorAction",
    "Rejection", "Series",
    "SeriesState", "Study", "WebhookEvent", "WebhookState", "as_utc", "create_schema",
    "error_kind", "is_sqlite", "make_engine", "session_factory", "utcnow",
]
