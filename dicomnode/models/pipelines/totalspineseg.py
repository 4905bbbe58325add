"""``totalspineseg``: TotalSpineSeg's two nnU-Net steps and labelling, warm and in memory.

Official pipeline: ``totalspineseg.inference.inference()`` (package 20260807; ``seed-models.md``
section B). It works folder by folder: every step reads ``.nii.gz`` files and writes new ones, and
each nnU-Net step builds a fresh ``nnUNetPredictor`` and reloads the weights. Here the same steps
run on one case in memory:

============================  =====================================================================
official step (inference.py)  here
============================  =====================================================================
copy to ``input_raw``         :func:`~dicomnode.models.pipelines.nifti.to_nifti` of the volume
``average4d``                 not needed: volumes are 3D, and for 3D data it is a float64 round trip
``reorient_canonical``        ``nib.as_closest_canonical`` (the call ``_reorient_canonical``
                              makes; the package exports only the folder version), then the
                              official cast back to the input dtype
``resample`` (1 mm, linear)   ``totalspineseg.utils.resample.resample`` + cast back to the input
                              dtype (``astype``: integer images are truncated, not rounded)
step 1 nnU-Net                the runtime's warm predictor (fold 0, ``checkpoint_best.pth`` if
                              present, step 0.5, Gaussian, no mirroring), on the array nnU-Net's
                              SimpleITK reader would produce
``largest_component``         ``totalspineseg.largest_component(binarize=True, dilate=5)``
``iterative_label``           ``totalspineseg.iterative_label`` with the step-1 parameters
``fill_canal``                ``totalspineseg.fill_canal(2, 1, True, True)``
``transform_seg2image``       ``totalspineseg.transform_seg2image`` (nearest)
``crop_image2seg`` (10)       ``totalspineseg.crop_image2seg`` + cast back to the input dtype
odd discs channel             ``transform_seg2image`` + ``extract_alternate(range(63, 101))``
step 2 nnU-Net                warm predictor, two channels (image, odd discs)
step-2 post-processing        the same official functions with the step-2 parameters
back to the source grid       ``transform_seg2image`` to the input image (nearest)
============================  =====================================================================

Between steps each image passes through :func:`~dicomnode.models.pipelines.nifti.file_handoff`
and the official "ensure dtype" conversion its file wrapper applies (``_as_image`` /
``_as_seg``), so the next step sees exactly what it would have read from disk (float32 affine,
uint8 labels, input dtype for images). nnU-Net's outputs get the header SimpleITK would write
(:func:`~dicomnode.models.pipelines.nifti.itk_written`): on oblique images the final
nearest-neighbour resampling can fall exactly half-way between voxels, and a one-ulp difference in
the affine then moves whole slices of labels.

Not reproduced: the localizer option (``--loc``), ``--iso`` output and the extra outputs
(soft cord/canal, disc levels, previews) — the node returns the labelled segmentation only.
Where the labelling finds no landmark disc the official tool writes no segmentation (step 2) or
stops with ``ValueError`` (step 1); here both raise :class:`NoSpineFound`.
"""

from __future__ import annotations

from dataclasses import dataclass
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
from dicomnode.models.pipelines.nifti import file_handoff, itk_written, labelmap_on, to_nifti
from dicomnode.models.runtime import InferenceSettings, ModelFolder

if TYPE_CHECKING:
    import nibabel as nib

    from converters.vocabulary import LabelMapping
    from dicomnode.config import PipelineName
    from dicomnode.models.registry import ModelStore
    from dicomnode.models.runtime import NnUNetRuntime

#: ``utils/predict_nnunet.py``: ``nnUNetPredictor(tile_step_size=0.5, use_gaussian=True,
#: use_mirroring=not disable_tta, perform_everything_on_device=True)`` with ``disable_tta=True``.
OFFICIAL_SETTINGS = InferenceSettings(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                      perform_everything_on_device=True)
RESAMPLE_MM = (1.0, 1.0, 1.0)
STEP2_CROP_MARGIN = 10
#: Disc output labels whose alternate members form step 2's second channel.
ODD_DISC_LABELS = list(range(63, 101))
_DISCS = dict(selected_disc_landmarks=[2, 5, 3, 4], disc_labels=[1, 2, 3, 4, 5],
              disc_landmark_labels=[2, 3, 4, 5], disc_landmark_output_labels=[63, 71, 91, 100])
#: ``iterative_label`` arguments of ``inference.py`` (no localizer).
STEP1_LABELLING: dict[str, Any] = dict(
    _DISCS, canal_labels=[8], canal_output_label=2, cord_labels=[9], cord_output_label=1,
    sacrum_labels=[6], sacrum_output_label=50, map_input_dict={7: 11})
STEP2_LABELLING: dict[str, Any] = dict(
    _DISCS, vertebrae_labels=[7, 8, 9], vertebrae_landmark_output_labels=[13, 21, 41, 50],
    vertebrae_extra_labels=[6], canal_labels=[10], canal_output_label=2, cord_labels=[11],
    cord_output_label=1, sacrum_labels=[9], sacrum_output_label=50)
FILL_CANAL: dict[str, Any] = dict(canal_label=2, cord_label=1, largest_canal=True,
                                  largest_cord=True)
LARGEST_COMPONENT: dict[str, Any] = dict(binarize=True, dilate=5)
#: Step-1 value 50 is "any vertebra" (no vertebra numbering yet), not the sacrum.
STEP1_UNNUMBERED_VERTEBRAE = 50


class NoSpineFound(PipelineError):
    """TotalSpineSeg's labelling found no landmark disc, so it produces no segmentation."""


@dataclass
class TotalSpineSegSteps:
    """Intermediate images of one run, named after the official output folders."""

    input: nib.Nifti1Image | None = None  #: 1 mm canonical image (``input/``)
    step1_raw: nib.Nifti1Image | None = None
    step1_output: nib.Nifti1Image | None = None  #: on the 1 mm grid (before the final resampling)
    step2_input: list[nib.Nifti1Image] | None = None
    step2_raw: nib.Nifti1Image | None = None
    step2_output: nib.Nifti1Image | None = None  #: on the 1 mm grid


def _as_image(nii: nib.Nifti1Image, dtype: np.dtype) -> nib.Nifti1Image:
    """The official image wrappers' last act: cast to the input dtype, fix the header, save."""
    return _wrapper_output(np.asanyarray(nii.dataobj), nii, dtype)


def _as_seg(nii: nib.Nifti1Image) -> nib.Nifti1Image:
    """The official segmentation wrappers' last act: round to uint8, fix the header, save."""
    return _wrapper_output(np.asanyarray(nii.dataobj).round(), nii, np.dtype(np.uint8))


def _wrapper_output(data: np.ndarray, nii: nib.Nifti1Image, dtype: np.dtype) -> nib.Nifti1Image:
    import nibabel as nib

    out = nib.Nifti1Image(data.astype(dtype), nii.affine, nii.header)
    out.set_data_dtype(dtype)
    out.set_qform(out.affine)
    out.set_sform(out.affine)
    return file_handoff(out)


def _nnunet_input(channels: list[nib.Nifti1Image]) -> tuple[np.ndarray, tuple[float, ...]]:
    """(c, z, y, x) float32 and (z, y, x) spacing, as nnU-Net's SimpleITKIO reads the files."""
    array = np.stack([np.asanyarray(c.dataobj).transpose(2, 1, 0) for c in channels])
    spacing = tuple(float(z) for z in channels[0].header.get_zooms()[:3])[::-1]
    return array.astype(np.float32), spacing


class TotalSpineSeg(Pipeline):
    """TotalSpineSeg on the shared runtime: cord, canal, C1–L5(+L6), sacrum and every disc."""

    name: ClassVar[PipelineName] = "totalspineseg"
    version: ClassVar[str] = "1"
    models: ClassVar[tuple[str, ...]] = ("totalspineseg",)

    def __init__(self, store: ModelStore, runtime: NnUNetRuntime, model: str | None = None, *,
                 step1_only: bool = False):
        super().__init__(store, runtime, model)
        self.step1_only = step1_only

    def folders(self) -> tuple[ModelFolder, ModelFolder]:
        installed = self.store.require(self.model)
        return installed.model_folder("step1"), installed.model_folder("step2")

    def run(self, volume: VolumeLike) -> PipelineResult:
        check_scalar_3d(volume.image, self.name)
        step1, step2 = self.folders()
        labels = self.segment(volume.image, step1, step2)
        installed = self.store.require(self.model)
        metadata = RunProvenance(
            pipeline=self.name, pipeline_version=self.version, model=self.model,
            weights_version=installed.version,
            settings={**OFFICIAL_SETTINGS.as_dict(), "step1": step1.describe(),
                      "step2": step2.describe(), "step1_only": self.step1_only,
                      "resample_mm": list(RESAMPLE_MM), "device": str(self.runtime.device)})
        return PipelineResult(labelmap_on(labels, volume.image), self.mapping(), metadata)

    def mapping(self) -> LabelMapping:
        """TotalSpineSeg's final labels (``tss_map.json``); after step 1 alone, without 50."""
        from converters.vocabulary import LabelMapping, totalspineseg

        full = totalspineseg()
        if not self.step1_only:
            return full
        # Step 1 gives every vertebra the value 50 (numbering is step 2's job): leaving it out
        # keeps it from being called "sacrum"; C1 (11), discs, cord and canal are numbered.
        return LabelMapping(f"{full.name}-step1", {v: k for v, k in full.labels.items()
                                                   if v != STEP1_UNNUMBERED_VERTEBRAE})

    def segment(self, image: Any, step1: ModelFolder, step2: ModelFolder,
                steps: TotalSpineSegSteps | None = None) -> nib.Nifti1Image:
        """The official pipeline on one SimpleITK image; the label map on its voxel grid (NIfTI).

        ``steps``, when given, receives the intermediate images (for tests and debugging).
        """
        import nibabel as nib
        from totalspineseg.utils.crop_image2seg import crop_image2seg
        from totalspineseg.utils.extract_alternate import extract_alternate
        from totalspineseg.utils.fill_canal import fill_canal
        from totalspineseg.utils.iterative_label import iterative_label
        from totalspineseg.utils.largest_component import largest_component
        from totalspineseg.utils.resample import resample
        from totalspineseg.utils.transform_seg2image import transform_seg2image

        steps = steps if steps is not None else TotalSpineSegSteps()
        raw = to_nifti(image)
        dtype = np.asanyarray(raw.dataobj).dtype
        canonical = _as_image(nib.as_closest_canonical(raw), dtype)
        steps.input = iso = _as_image(resample(canonical, RESAMPLE_MM), dtype)

        steps.step1_raw = self._predict(step1, [iso])
        seg = _as_seg(largest_component(steps.step1_raw, **LARGEST_COMPONENT))
        seg = self._label(iterative_label, seg, STEP1_LABELLING, "step 1")
        seg = _as_seg(fill_canal(seg, **FILL_CANAL))
        steps.step1_output = seg = _as_seg(transform_seg2image(iso, seg))

        if not self.step1_only:
            cropped = _as_image(crop_image2seg(iso, seg, margin=STEP2_CROP_MARGIN), dtype)
            odd = _as_seg(transform_seg2image(cropped, seg))
            odd = _as_seg(extract_alternate(odd, labels=ODD_DISC_LABELS))
            steps.step2_input = [cropped, odd]
            steps.step2_raw = self._predict(step2, [cropped, odd])
            seg = _as_seg(largest_component(steps.step2_raw, **LARGEST_COMPONENT))
            seg = self._label(iterative_label, seg, STEP2_LABELLING, "step 2")
            seg = _as_seg(fill_canal(seg, **FILL_CANAL))
            steps.step2_output = seg = _as_seg(transform_seg2image(iso, seg))
        return _as_seg(transform_seg2image(raw, seg))

    def _predict(self, folder: ModelFolder, channels: list[nib.Nifti1Image]) -> nib.Nifti1Image:
        array, spacing = _nnunet_input(channels)
        labels = self.runtime.predict(folder, OFFICIAL_SETTINGS, array, spacing)
        return itk_written(labels.transpose(2, 1, 0), channels[0])

    @staticmethod
    def _label(iterative_label: Any, seg: nib.Nifti1Image, parameters: dict[str, Any],
               step: str) -> nib.Nifti1Image:
        try:
            return _as_seg(iterative_label(seg, **parameters))
        except ValueError as exc:  # the official wrapper drops the case on ValueError
            raise NoSpineFound(f"TotalSpineSeg {step}: the iterative labelling found no landmark "
                               f"disc or no canal ({exc}); the official tool produces no "
                               f"segmentation for this image either") from exc
