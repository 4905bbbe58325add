"""``spineps`` (``spineps-t2w``, ``spineps-t1w``): SPINEPS with its models kept warm, in memory.

Official pipeline: ``spineps.seg_run.segment_image`` (package 2.1.3; ``seed-models.md`` section
C), which the official API (``spineps.segment`` / ``SpinepsPipeline.segment``) and CLI call. Every
model-specific step is the package's own code, called here in memory:

* preprocessing — ``phase_pre.preprocess_input``: normalisation to [0, 1500] (cast back to the
  input dtype), crop to the foreground, N4 bias correction (ANTs), pad by 4;
* semantic model — ``SegmentationModelNNunet.segment_scan``: PIR reorientation, rescale into the
  model's resolution range (spline order 3), TPTBox's nnU-Net predictor (float16 input, half
  precision logit accumulation on the GPU, TF32), label mapping, then
  ``clean_cc_artifacts`` / ``semantic_bounding_box_clean`` / hole filling;
* instance model — ``phase_instance.predict_instance_mask``: corpus centres, cut-outs, SPINEPS's
  3D U-Net, the official coupling and merging of the overlapping predictions;
* post-processing — ``phase_post.phase_postprocess_combined`` with the official labelling
  offset (MRI: the top vertebra is 2 unless a VERIDAH labelling model is given), discs as
  100 + vertebra, endplates as 200 + vertebra.

``segment_image`` takes the image in memory (its ``_nii`` argument) and returns the masks in memory
(``return_output_instead_of_save``): nothing is written. It still wants a ``BIDS_FILE`` for naming
and for its input/model compatibility check (format key and acquisition plane from the file
name); we give it the name ``sub-dicomnode_<T2w|T1w>.nii.gz`` in an empty temporary folder, and
switch every "reuse existing output" shortcut off (``override_*``) so it never reads from there.

Why not the shared nnU-Net runtime for the semantic model: SPINEPS runs nnU-Net through TPTBox's
own predictor copy (float16 input, half-precision accumulation, its own tiling), which is not
numerically the same as nnunetv2's; using nnunetv2's predictor would change the output. The
official ``SegmentationModel`` objects are loaded once per pipeline (the service builds each
pipeline once) and run under the runtime's device lock, so they share the GPU safely with the
nnU-Net runtime's models; the global torch flags TPTBox sets (TF32, cuDNN autotuning) are on only
while SPINEPS runs. SPINEPS chooses the GPU itself, so it runs on ``cuda:0`` or the CPU.

Two label maps come back, because they overlap: the vertebra/disc/endplate instances
(``seg-vert``, the primary result) and the vertebral subregions (``seg-spine``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from dicomnode.models.pipelines.base import (
    Pipeline,
    PipelineError,
    PipelineResult,
    RunProvenance,
    VolumeLike,
    check_scalar_3d,
)
from dicomnode.models.pipelines.nifti import labelmap_on, to_nifti

if TYPE_CHECKING:
    import SimpleITK as sitk

    from dicomnode.config import PipelineName
    from dicomnode.models.registry import ModelStore
    from dicomnode.models.runtime import NnUNetRuntime

#: ``segment_image`` arguments that differ from its defaults: in memory, never reuse files.
IN_MEMORY: dict[str, Any] = dict(
    return_output_instead_of_save=True, save_raw=False, override_semantic=True,
    override_instance=True, override_postpair=True, override_ctd=True,
    log_inference_time=False, verbose=False)


@contextmanager
def _torch_flags_restored(spineps_gpu: bool = False) -> Iterator[None]:
    """Run SPINEPS with the torch flags it sets, without leaking them to the other models.

    TPTBox's ``load_inf_model`` turns on cuDNN autotuning and TF32 *globally* when it loads a
    model on CUDA; the official tool then runs with them on. Here they are on while SPINEPS
    runs (``spineps_gpu``) and restored afterwards, so the nnU-Net runtime's other models keep
    their own precision (the CT model must not run in TF32).
    """
    import torch

    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32)
    if spineps_gpu and torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = saved


class SpinepsError(PipelineError):
    """SPINEPS refused the image or found no spine in it (its ``ErrCode`` says which)."""


@dataclass(frozen=True)
class SpinepsResult(PipelineResult):
    """The instance label map (``labelmap``) plus the overlapping subregion label map."""

    subregions: PipelineResult | None = None

    @property
    def all(self) -> tuple[PipelineResult, ...]:
        """Every label map of this result, each for its own SEG series."""
        return (self,) if self.subregions is None else (self, self.subregions)


class Spineps(Pipeline):
    """SPINEPS semantic + instance models and post-processing, faithful to ``spineps.segment``."""

    name: ClassVar[PipelineName] = "spineps"
    version: ClassVar[str] = "1"
    models: ClassVar[tuple[str, ...]] = ("spineps-t2w", "spineps-t1w")

    def __init__(self, store: ModelStore, runtime: NnUNetRuntime, model: str | None = None):
        super().__init__(store, runtime, model)
        self._loaded: dict[tuple[str, str], Any] = {}

    @property
    def contrast(self) -> str:
        """The BIDS format key SPINEPS's compatibility check expects for this model."""
        return "T1w" if self.model.endswith("t1w") else "T2w"

    def spineps_models(self) -> tuple[Any, Any]:
        """The official semantic and instance model objects, loaded once per device."""
        from spineps.get_models import get_actual_model

        installed = self.store.require(self.model)
        device = self.runtime.device
        if device.type == "cuda" and (device.index or 0) != 0:
            # spineps picks "cuda" / "cuda:0" itself (SegmentationModel.load); no device argument
            raise SpinepsError(f"SPINEPS runs on cuda:0 or the CPU only, not {device}")
        loaded = []
        for role in ("semantic", "instance"):
            key = (str(installed.component(role)), str(device))
            if key not in self._loaded:
                with self.runtime.device_lock(), _torch_flags_restored():
                    model = get_actual_model(installed.component(role),
                                             use_cpu=device.type == "cpu")
                    model.default_allow_tqdm = False
                    self._loaded[key] = model.load()
            loaded.append(self._loaded[key])
        return loaded[0], loaded[1]

    def segment(self, image: sitk.Image) -> tuple[Any, Any]:
        """SPINEPS on one SimpleITK image: (subregion NII, instance NII) on its voxel grid."""
        from spineps.seg_enums import ErrCode
        from spineps.seg_run import segment_image
        from TPTBox import BIDS_FILE, NII

        semantic, instance = self.spineps_models()
        nii = NII(to_nifti(image), seg=False)
        with tempfile.TemporaryDirectory(prefix="dicomnode-spineps-") as tmp:
            name = Path(tmp) / f"sub-dicomnode_{self.contrast}.nii.gz"
            reference = BIDS_FILE(str(name), dataset=tmp, verbose=False)
            with self.runtime.device_lock(), _torch_flags_restored(spineps_gpu=True):
                raw = segment_image(img_ref=reference, model_semantic=semantic,
                                    model_instance=instance, model_labeling=None, _nii=nii,
                                    **IN_MEMORY)
        if len(raw) != 4 or raw[-1] not in (ErrCode.OK, ErrCode.ALL_DONE):
            code = raw[-1]
            why = {ErrCode.COMPATIBILITY: "the image is not a sagittal or isotropic "
                                          f"{self.contrast} image as the model requires",
                   ErrCode.EMPTY: "the semantic model found no spine"}.get(code, str(code))
            raise SpinepsError(f"SPINEPS ({self.model}) produced no segmentation: {why}")
        return raw[0], raw[1]

    def run(self, volume: VolumeLike) -> SpinepsResult:
        from converters.vocabulary import spineps_instances, spineps_subregions

        check_scalar_3d(volume.image, self.name)
        subregions, instances = self.segment(volume.image)
        installed = self.store.require(self.model)
        semantic, instance = self.spineps_models()
        metadata = RunProvenance(
            pipeline=self.name, pipeline_version=self.version, model=self.model,
            weights_version=installed.version,
            settings={"semantic": semantic.inference_config.log_name,
                      "instance": instance.inference_config.log_name,
                      "step_size": semantic.inference_config.default_step_size,
                      "mirroring": semantic.inference_config.inference_augmentation,
                      # no VERIDAH model: levels are counted from the top vertebra (= 2, C2)
                      "vertebra_numbering": "positional (no labeling model)",
                      "device": str(self.runtime.device)})
        vert = labelmap_on(instances.nii, volume.image)
        spine = labelmap_on(subregions.nii, volume.image)
        present = np.unique(instances.get_seg_array())
        second = PipelineResult(spine, spineps_subregions(), metadata)
        return SpinepsResult(vert, spineps_instances(present), metadata, subregions=second)
