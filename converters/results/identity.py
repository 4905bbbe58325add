"""Deterministic identity of derived objects: UIDs, series numbers, descriptions.

A re-run of the same pipeline and weights on the same source series must replace, not
duplicate, what a PACS already holds; so every UID is a name-based UUID (ISO/IEC 9834-8,
``2.25.<uuid>``, PS3.5 B.2) of (source Series Instance UID, pipeline, model, weights, object).
"""

from __future__ import annotations

import uuid

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


def series_number(source: Dataset, offset: int) -> int:
    """Source Series Number × 100 + ``offset``: derived series sort right after their source."""
    base = int(source.get("SeriesNumber") or 0)
    return (base * 100 + offset) % (2**31 - 1)


def series_description(pipeline: PipelineMetadata, what: str) -> str:
    """Series Description (0008,103E), LO: at most 64 characters."""
    return f"{what} ({pipeline.pipeline} {pipeline.weights_version})"[:64]
