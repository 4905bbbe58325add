"""What a pipeline is: a volume in, a label map on the same grid plus its meaning and provenance
out.

A pipeline takes the volume from ``converters.load_series`` (or any object with a SimpleITK
``.image``), runs its models on an :class:`~dicomnode.models.runtime.NnUNetRuntime` it is given
(warm, shared), and returns a :class:`PipelineResult`:

* ``labelmap`` — a SimpleITK integer image with exactly the input image's size, spacing, origin and
  direction (the SEG writer maps it back to the source slices with ``converters.to_source_grid``);
* ``mapping`` — a ``converters.vocabulary.LabelMapping`` from its label values to the canonical
  spine vocabulary (the values are the official pipeline's own, so outputs compare voxel for
  voxel with the official tools);
* ``metadata`` — pipeline, model, weights version and inference settings, for the SEG's algorithm
  identification and the SR.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from dicomnode.config import PipelineName

if TYPE_CHECKING:
    import SimpleITK as sitk

    from converters.results.metadata import PipelineMetadata
    from converters.vocabulary import LabelMapping
    from dicomnode.models.registry import ModelStore
    from dicomnode.models.runtime import NnUNetRuntime


class PipelineError(Exception):
    """A pipeline cannot process this volume (wrong modality, dimensions, …)."""


class VolumeLike(Protocol):
    """The part of ``converters.Volume`` a pipeline needs."""

    image: sitk.Image


@dataclass(frozen=True)
class RunProvenance:
    """Provenance of a label map (pipeline and model versions, settings), for the job record;
    :meth:`for_encoders` turns it into the encoders' ``converters.PipelineMetadata``."""

    pipeline: str
    pipeline_version: str
    model: str
    weights_version: str
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def for_encoders(self) -> PipelineMetadata:
        """The ``converters`` SEG/SR writers' metadata (algorithm name, version, parameters)."""
        from converters.results.metadata import PipelineMetadata
        from dicomnode import __version__

        parameters = {"pipeline_version": self.pipeline_version,
                      **{k: str(v) for k, v in self.settings.items()}}
        return PipelineMetadata(pipeline=self.pipeline, model=self.model,
                               weights_version=self.weights_version,
                               software_version=__version__, parameters=parameters)


@dataclass(frozen=True)
class PipelineResult:
    labelmap: sitk.Image
    mapping: LabelMapping
    metadata: RunProvenance

    @property
    def all(self) -> tuple[PipelineResult, ...]:
        """Every label map of this result, each for its own SEG series (pipelines with
        overlapping label maps, SPINEPS, return more than one)."""
        return (self,)


class Pipeline(ABC):
    """A segmentation pipeline bound to a model store and a runtime."""

    #: Name used in ``config.yaml`` rules and ``dicomnode process --pipeline``.
    name: ClassVar[PipelineName]
    #: Bumped whenever the pipeline's output for the same weights can change (SEG/SR UIDs use it).
    version: ClassVar[str]
    #: Registry entries it can run; the first is the default.
    models: ClassVar[tuple[str, ...]]

    def __init__(self, store: ModelStore, runtime: NnUNetRuntime, model: str | None = None):
        if model is None:
            model = self.models[0]
        if model not in self.models:
            raise PipelineError(f"pipeline {self.name} runs {' or '.join(self.models)}, "
                                f"not {model}")
        self.store = store
        self.runtime = runtime
        self.model = model

    @abstractmethod
    def run(self, volume: VolumeLike) -> PipelineResult:
        """Segment one volume."""


def check_scalar_3d(image: sitk.Image, pipeline: str) -> None:
    """Pipelines segment single-component 3D images; say so plainly otherwise."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise PipelineError(f"{pipeline} needs a 3D greyscale volume; this one has "
                            f"{image.GetDimension()} dimensions and "
                            f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel")


def labelmap_like(array: Any, image: sitk.Image) -> sitk.Image:
    """A label image from a (z, y, x) array, with the geometry of ``image``."""
    import numpy as np
    import SimpleITK as sitk

    array = np.asarray(array)
    if array.shape != image.GetSize()[::-1]:
        raise PipelineError(f"label map shape {array.shape} does not match the volume "
                            f"{image.GetSize()[::-1]}")
    dtype = np.uint8 if array.max(initial=0) < 256 else np.uint16
    labelmap = sitk.GetImageFromArray(array.astype(dtype, copy=False))
    labelmap.CopyInformation(image)
    return labelmap
