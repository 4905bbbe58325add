"""Segmentation pipelines by name (``config.yaml`` rules and ``dicomnode process --pipeline``)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from dicomnode.models.pipelines.base import (
    Pipeline,
    PipelineError,
    PipelineMetadata,
    PipelineResult,
    VolumeLike,
)
from dicomnode.models.pipelines.vertebral_bodies_ct import VertebralBodiesCT

PIPELINES: Mapping[str, type[Pipeline]] = MappingProxyType({p.name: p for p in (VertebralBodiesCT,)})


def get_pipeline(name: str) -> type[Pipeline]:
    try:
        return PIPELINES[name]
    except KeyError:
        raise PipelineError(f"unknown pipeline {name!r}; available: {', '.join(PIPELINES)}") from None


__all__ = ["PIPELINES", "Pipeline", "PipelineError", "PipelineMetadata", "PipelineResult",
           "VolumeLike", "get_pipeline"]
