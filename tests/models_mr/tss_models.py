"""TotalSpineSeg model folders for tests: the official release layout with hand-set weights.

The official weights cannot be downloaded here, so the tests build both steps themselves, in the
layout of the release zips (``Dataset101_TotalSpineSeg_step1/nnUNetTrainerDAExtGPU__nnUNetPlans__
3d_fullres/{dataset.json,plans.json,fold_0/checkpoint_best.pth}``, the same for step 2) with the
region-based label definitions of ``dataset_step1.json`` / ``dataset_step2.json`` and two input
channels (``MRI`` + ``noNorm`` odd discs) for step 2.

Random weights would make the iterative labelling fail on every input (it needs a landmark disc of
more than 200 voxels that is the majority landmark of its disc component), so nothing after step 1
would ever be compared. The networks are therefore the hand-set intensity-band networks of
:mod:`tests.models_mr.banded`: each output region is "the image has one of these intensities
here" (within ±5); the phantom
of :func:`lumbar_phantom` paints each structure with the intensity its region answers to, so the
official pipeline and ours get a real spine to label (T12–sacrum, two landmark discs). On real MR
images the same networks give scattered labels, which still exercises every step up to labelling.
The step-2 network also adds the odd-disc channel to its disc region, so a misplaced second
channel would show up as extra disc voxels.

``checkpoint_final.pth`` holds a network that predicts nothing, so loading it instead of
``checkpoint_best.pth`` (the official preference) makes a test fail loudly.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from tests.models_mr.banded import build_network, features_needed, plans_json, save_model_folder

TRAINER = "nnUNetTrainerDAExtGPU"
FOLDER = f"{TRAINER}__nnUNetPlans__3d_fullres"
STEP1 = "Dataset101_TotalSpineSeg_step1"
STEP2 = "Dataset102_TotalSpineSeg_step2"
RELEASE = "r20251124"

#: Phantom intensities (what each painted structure looks like).
DISC, DISC_T12_L1, DISC_L5_S = 100, 130, 160
VERT_ODD, VERT_EVEN, SACRUM = 300, 330, 360
CANAL, CORD = 500, 530

#: Step 1 regions in dataset.json order (label → raw value of its region), and which phantom
#: intensities switch each region on.
STEP1_LABELS: dict[str, Any] = {
    "background": 0, "disc": [1, 2, 3, 4, 5], "disc_C2_C3": 2, "disc_C7_T1": 3, "disc_T12_L1": 4,
    "disc_L5_S": 5, "vertebrae": [6, 7], "C1": 7, "canal": [8, 9], "cord": 9,
}
STEP1_REGIONS: list[tuple[int, ...]] = [
    (DISC, DISC_T12_L1, DISC_L5_S), (), (), (DISC_T12_L1,), (DISC_L5_S,),
    (VERT_ODD, VERT_EVEN, SACRUM), (), (CANAL, CORD), (CORD,),
]
STEP2_LABELS: dict[str, Any] = {
    "background": 0, "disc": [1, 2, 3, 4, 5], "disc_C2_C3": 2, "disc_C7_T1": 3, "disc_T12_L1": 4,
    "disc_L5_S": 5, "vertebrae": [6, 7, 8, 9], "vertebrae_odd": 7, "vertebrae_even": 8,
    "sacrum": 9, "canal": [10, 11], "cord": 11,
}
STEP2_REGIONS: list[tuple[int, ...]] = [
    (DISC, DISC_T12_L1, DISC_L5_S), (), (), (DISC_T12_L1,), (DISC_L5_S,),
    (VERT_ODD, VERT_EVEN, SACRUM), (VERT_ODD,), (VERT_EVEN,), (SACRUM,), (CANAL, CORD), (CORD,),
]
HALF_WIDTH = 10.0  # ramps at v-10, v, v+10: the hat is > 5 (on) within ±5 of v
SCALE = 10.0


def dataset_json(step: int) -> dict[str, Any]:
    labels = STEP1_LABELS if step == 1 else STEP2_LABELS
    channels = {"0": "MRI"} if step == 1 else {"0": "MRI", "1": "noNorm"}
    return {"channel_names": channels, "labels": labels,
            "regions_class_order": list(range(1, len(labels))), "numTraining": 1,
            "file_ending": ".nii.gz", "name": f"TotalSpineSeg_step{step}"}


def build_step(root: Path, step: int) -> Path:
    """Write ``<root>/Dataset10<step>_…/nnUNetTrainerDAExtGPU__nnUNetPlans__3d_fullres``."""
    regions = STEP1_REGIONS if step == 1 else STEP2_REGIONS
    outputs = [[(v - HALF_WIDTH, v + HALF_WIDTH) for v in region] for region in regions]
    channels = 1 if step == 1 else 2
    features = features_needed(outputs, extra_channels=channels - 1)
    dataset_name = STEP1 if step == 1 else STEP2
    # on within ±5 of each value; step 2 adds the odd-disc channel to its disc region
    networks = {checkpoint: build_network(
        outputs, channels, scale=SCALE, on_fraction=0.5, off_bias=-SCALE * HALF_WIDTH / 2,
        predict_nothing=nothing, extra=None if step == 1 else {0: 4 * SCALE * HALF_WIDTH})
        for checkpoint, nothing in (("checkpoint_best.pth", False), ("checkpoint_final.pth", True))}
    return save_model_folder(root / dataset_name / FOLDER,
                             plans_json(dataset_name, 1.0, channels, features),
                             dataset_json(step), networks, TRAINER, None)


def build_release(root: Path) -> Path:
    """Both steps under ``<root>/nnUNet/results/`` (TotalSpineSeg's data dir layout); returns
    root."""
    results = root / "nnUNet" / "results"
    for step in (1, 2):
        build_step(results, step)
    return root


def release_zips(root: Path, out: Path) -> list[Path]:
    """The two release zips (``Dataset10N_TotalSpineSeg_stepN_r20251124.zip``) of a built
    release."""
    out.mkdir(parents=True, exist_ok=True)
    zips = []
    for dataset in (STEP1, STEP2):
        archive = out / f"{dataset}_{RELEASE}.zip"
        base = root / "nnUNet" / "results"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted((base / dataset).rglob("*")):
                if path.is_file():
                    zf.write(path, str(path.relative_to(base)))
        zips.append(archive)
    return zips


def lumbar_phantom() -> np.ndarray:
    """A 1 mm RAS (x, y, z) int16 phantom: canal with cord, T12–sacrum with discs in between.

    y grows anteriorly (bodies in front of the canal), z superiorly. L5-S and T12-L1 are the
    landmark discs; vertebrae alternate between the "odd" and "even" intensities as the step-2
    labels do (L5 even … T12 odd).
    """
    data = np.zeros((32, 40, 110), dtype=np.int16)
    x, y = np.mgrid[0:32, 0:40]
    radius = np.hypot(x - 16, y - 10)
    data[radius <= 5.0] = CANAL
    data[radius <= 2.5] = CORD
    body = (slice(8, 24), slice(18, 34))
    blocks = [(0, 14, SACRUM), (14, 18, DISC_L5_S)]
    z = 18
    for i, level in enumerate(["L5", "L4", "L3", "L2", "L1", "T12"]):
        blocks.append((z, z + 12, VERT_EVEN if i % 2 == 0 else VERT_ODD))
        z += 12
        if level != "T12":
            blocks.append((z, z + 4, DISC_T12_L1 if level == "L1" else DISC))
            z += 4
    for z0, z1, value in blocks:
        data[body[0], body[1], z0:z1] = value
    return data
