"""Segmentation pipelines by name (``config.yaml`` rules and ``dicomnode process --pipeline``)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from dicomnode.config import PIPELINES as PIPELINE_NAMES
from dicomnode.models.pipelines.base import (
    Pipeline,
    PipelineError,
    PipelineResult,
    RunProvenance,
    VolumeLike,
)
from dicomnode.models.pipelines.spineps import Spineps
from dicomnode.models.pipelines.totalspineseg import TotalSpineSeg
from dicomnode.models.pipelines.vertebral_bodies_ct import VertebralBodiesCT
from dicomnode.models.registry import ModelStore

if TYPE_CHECKING:
    from dicomnode.config import ModelsConfig
    from dicomnode.models.runtime import NnUNetRuntime

PIPELINES: Mapping[str, type[Pipeline]] = MappingProxyType(
    {p.name: p for p in (VertebralBodiesCT, TotalSpineSeg, Spineps)})
# One class for each name the configuration accepts (``dicomnode.config.PipelineName``).
assert tuple(PIPELINES) == PIPELINE_NAMES, (tuple(PIPELINES), PIPELINE_NAMES)


def get_pipeline(name: str) -> type[Pipeline]:
    try:
        return PIPELINES[name]
    except KeyError:
        raise PipelineError(f"unknown pipeline {name!r}; "
                            f"available: {', '.join(PIPELINES)}") from None


def create_pipeline(name: str, models: ModelsConfig, runtime: NnUNetRuntime,
                    model: str | None = None) -> Pipeline:
    """A pipeline on the node's weights directory and runtime; the model is ``model``, else
    ``models.pipeline_models[name]``, else the pipeline's default; its options come from the
    ``models.<pipeline>`` section."""
    return get_pipeline(name)(ModelStore(models.path), runtime,
                              model or models.pipeline_models.get(name),
                              **models.pipeline_options(name))


__all__ = ["PIPELINES", "Pipeline", "PipelineError", "RunProvenance", "PipelineResult",
           "VolumeLike", "create_pipeline", "get_pipeline"]
