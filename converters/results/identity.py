"""Deterministic identity of derived objects: UIDs, series numbers, descriptions.

A re-run of the same pipeline and weights on the same source series must replace, not
duplicate, what a PACS already holds; so every UID is a name-based UUID (ISO/IEC 9834-8,
``2.25.<uuid>``, PS3.5 B.2) of (source Series Instance UID, pipeline, model, weights, object).
SOP Instance UIDs also name the exact source instances: when a series grows after it was
segmented (a late instance), the new objects go into the same derived series under new SOP
Instance UIDs, since different content must never reuse a UID (a PACS that keeps the first
copy of a UID would silently hold on to the partial result).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence

from pydicom.dataset import Dataset

from .metadata import PipelineMetadata

# Fixed namespace so that every node derives the same UIDs from the same inputs.
_NAMESPACE = uuid.UUID("6f1c2a57-2a4e-5d8c-9b7e-3c1d0e5a9f21")

#: Offsets added to 100 × the source Series Number: SEG layers 91.., SR 95, preview 96.
SEG_SERIES_OFFSET = 91
SR_SERIES_OFFSET = 95
SC_SERIES_OFFSET = 96


def source_series_uid(source: Dataset) -> str:
    """Series Instance UID (0020,000E) of the source; ``ValueError`` when it is empty."""
    uid = str(source.get("SeriesInstanceUID", "") or "")
    if not uid:
        raise ValueError("source image has an empty SeriesInstanceUID (0020,000E)")
    return uid


def derived_uid(source: Dataset, pipeline: PipelineMetadata, *parts: str) -> str:
    """The UID of one derived object/series, stable across runs.

    ``parts`` name the object ("seg", layer name, segmentation type, "instance", ...).
    """
    stack = (f"stack={pipeline.stack}",) if pipeline.stack else ()
    name = "\x1f".join(
        (source_series_uid(source), pipeline.pipeline, pipeline.model, pipeline.weights_version,
         *stack, *parts)
    )
    return f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"


def instance_uid(sources: Sequence[Dataset], pipeline: PipelineMetadata, *parts: str) -> str:
    """The SOP Instance UID of one derived object made from exactly ``sources``.

    Stable across re-runs on the same source instances, in any order; new when the set changes.
    """
    if not sources:
        raise ValueError("no source images")
    content = hashlib.sha256("\x1f".join(sorted(str(ds.SOPInstanceUID) for ds in sources))
                             .encode()).hexdigest()
    return derived_uid(sources[0], pipeline, *parts, f"sources={content}")


def series_number(source: Dataset, offset: int) -> int:
    """Source Series Number × 100 + ``offset``: derived series sort right after their source."""
    base = int(source.get("SeriesNumber") or 0)
    return (base * 100 + offset) % (2**31 - 1)


def series_description(pipeline: PipelineMetadata, what: str) -> str:
    """Series Description (0008,103E), LO: at most 64 characters."""
    return f"{what} ({pipeline.pipeline} {pipeline.weights_version})"[:64]
