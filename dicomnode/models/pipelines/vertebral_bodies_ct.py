"""``vertebral-bodies-ct``: the VertebralBodiesCT nnU-Net as BodyComposition runs it.

Official pipeline (``fohofmann/BodyComposition``, ``actions/segm_int_vertebrae.py``; see
``seed-models.md`` section A), reproduced step by step:

* the image is read **in its stored voxel order, never reoriented** ("models were trained using
  SimpleITKIO"): our volume's SimpleITK array is already (z, y, x) with spacing reversed, which is
  exactly BodyComposition's ``data.transpose(2, 1, 0)`` / ``spacing[::-1]`` of the nibabel array;
* the intensities are **cast to int16** as its ``NiftiDataContainer`` does (``astype``: fractions
  truncate toward zero), before nnU-Net turns them into float32 again;
* ``nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
  perform_everything_on_device=True)`` with ``checkpoint_final.pth``; ResEnc M uses ``fold_all``,
  ResEnc L the 5-fold ensemble;
* the labels are the model's own (1–12 T1–T12, 13–17 L1–L5, 18 L6, 19 sacrum, 20 coccyx, 21 T13).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from dicomnode.models.pipelines.base import (
    Pipeline,
    PipelineResult,
    RunProvenance,
    VolumeLike,
    check_scalar_3d,
    labelmap_like,
)
from dicomnode.models.runtime import InferenceSettings

if TYPE_CHECKING:
    from dicomnode.config import PipelineName

#: BodyComposition's predictor settings.
OFFICIAL_SETTINGS = InferenceSettings(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                      perform_everything_on_device=True)


class VertebralBodiesCT(Pipeline):
    name: ClassVar[PipelineName] = "vertebral-bodies-ct"
    version: ClassVar[str] = "1"
    models: ClassVar[tuple[str, ...]] = ("vertebral-bodies-ct-m", "vertebral-bodies-ct-l")

    def run(self, volume: VolumeLike) -> PipelineResult:
        import SimpleITK as sitk

        from converters.vocabulary import vertebral_bodies_ct

        image = volume.image
        check_scalar_3d(image, self.name)
        installed = self.store.require(self.model)
        folder = installed.model_folder("bodies")
        # Official int16 cast (truncation), then nnU-Net's (c, z, y, x) layout.
        array = sitk.GetArrayViewFromImage(image).astype(np.int16)[None]
        labels = self.runtime.predict(folder, OFFICIAL_SETTINGS, array, image.GetSpacing()[::-1])
        loaded = self.runtime.model(folder, OFFICIAL_SETTINGS)
        metadata = RunProvenance(
            pipeline=self.name, pipeline_version=self.version, model=self.model,
            weights_version=installed.version,
            settings={**OFFICIAL_SETTINGS.as_dict(), **folder.describe(),
                      "trainer_loaded": loaded.trainer_name, "input_dtype": "int16",
                      "device": str(self.runtime.device)})
        return PipelineResult(labelmap_like(labels, image), vertebral_bodies_ct(), metadata)
