"""The index database: studies, series, instances, association audit, rejections and jobs."""

from dicomnode.store.database import (DatabaseError, create_schema, is_sqlite, make_engine,
                                      session_factory)
from dicomnode.store.index import (HeldInstance, IndexOutcome, InstanceIndex, InstanceRecord, SeriesKey,
                                   StudyKey)
from dicomnode.store.models import (Association, Base, Instance, Job, Rejection, Series, Study,
                                    utcnow)

__all__ = [
    "Association", "Base", "DatabaseError", "HeldInstance", "IndexOutcome", "Instance", "InstanceIndex",
    "InstanceRecord", "Job", "Rejection", "Series", "SeriesKey", "Study", "StudyKey",
    "create_schema", "is_sqlite", "make_engine", "session_factory", "utcnow",
]
