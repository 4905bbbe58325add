"""TotalSpineSeg model folders for tests: the official release layout with hand-set weights.

The official weights cannot be downloaded here, so the tests build both steps themselves, in the
layout of the release zips (``Dataset101_TotalSpineSeg_step1/nnUNetTrainerDAExtGPU__nnUNetPlans__
3d_fullres/{dataset.json,plans.json,fold_0/checkpoint_best.pth}``, the same for step 2) with the
region-based label definitions of ``dataset_step1.json`` / ``dataset_step2.json`` and two input
channels (``MRI`` + ``noNorm`` odd discs) for step 2.

Random weights would make the iterative labelling fail on every input (it needs a landmark disc of
more than 200 voxels that is the majority landmark of its disc component), so nothing after step 1
would ever be compared. The networks are therefore real nnU-Net ``PlainConvUNet`` s whose weights
are *set*, not trained: the first convolution turns the input intensity into ramps
``leaky_relu(x - t)``, the deeper stage is zeroed, the decoder passes the ramps on, and the
segmentation layer combines three ramps into a "hat" that is positive only within ±5 of one
intensity. Each output region is thus "the image has one of these intensities here"; the phantom
of :func:`lumbar_phantom` paints each structure with the intensity its region answers to, so the
official pipeline and ours get a real spine to label (T12–sacrum, two landmark discs). On real MR
images the same networks give scattered labels, which still exercises every step up to labelling.
The step-2 network also adds the odd-disc channel to its disc region, so a misplaced second
channel would show up as extra disc voxels.

``checkpoint_final.pth`` holds a network that predicts nothing, so loading it instead of
``checkpoint_best.pth`` (the official preference) makes a test fail loudly.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

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


def plans_json(step: int, features: int, patch_size: Sequence[int] = (32, 32, 32)) -> dict[str, Any]:
    """nnU-Net 2.5+ plans: 1 mm spacing, SimpleITKIO, a two-stage PlainConvUNet without norms.

    Intensity normalisation is ``NoNormalization`` (the release presumably z-scores ``MRI``) so
    that the hand-set intensity bands mean the same thing on every image; nnU-Net applies it
    identically on both paths, so this choice does not weaken the comparison.
    """
    channels = 1 if step == 1 else 2
    resampling = {"order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": STEP1 if step == 1 else STEP2, "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [64, 64, 64], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "nnUNetPlannerResEncL", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {str(c): {
            "max": 1000.0, "mean": 300.0, "median": 300.0, "min": 0.0, "percentile_00_5": 0.0,
            "percentile_99_5": 900.0, "std": 150.0} for c in range(channels)},
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": list(patch_size), "median_image_size_in_voxels": [64, 64, 64],
            "spacing": [1.0, 1.0, 1.0], "normalization_schemes": ["NoNormalization"] * channels,
            "use_mask_for_norm": [False] * channels,
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, **resampling},
            "resampling_fn_seg_kwargs": {"is_seg": True, **resampling, "order": 1},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, **resampling, "order": 1},
            "architecture": {
                "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                "arch_kwargs": {
                    "n_stages": 2, "features_per_stage": [features, features],
                    "conv_op": "torch.nn.modules.conv.Conv3d",
                    "kernel_sizes": [[3, 3, 3]] * 2, "strides": [[1, 1, 1], [2, 2, 2]],
                    "n_conv_per_stage": [1, 1], "n_conv_per_stage_decoder": [1],
                    "conv_bias": True, "norm_op": None, "norm_op_kwargs": None,
                    "dropout_op": None, "dropout_op_kwargs": None,
                    "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
                "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
            "batch_dice": False}},
    }


def _set_weights(network: Any, regions: list[tuple[int, ...]], odd_channel: bool,
                 predict_nothing: bool) -> None:
    """Hand-set a two-stage PlainConvUNet so that region c is on where the intensity is in its set."""
    import torch

    values = sorted({v for r in regions for v in r})
    # feature k: (input channel, threshold)
    ramps = [(0, v + d) for v in values for d in (-HALF_WIDTH, 0.0, HALF_WIDTH)]
    if odd_channel:
        ramps.append((1, 0.5))
    with torch.no_grad():
        for p in network.parameters():
            p.zero_()
        first = network.encoder.stages[0][0].convs[0].conv
        decoder = network.decoder.stages[0].convs[0].conv
        seg = network.decoder.seg_layers[0]
        features = first.out_channels
        for k, (channel, threshold) in enumerate(ramps):
            first.weight[k, channel, 1, 1, 1] = 1.0
            first.bias[k] = -threshold
            decoder.weight[k, features + k, 1, 1, 1] = 1.0  # input = cat(upsampled, skip)
        for c, region in enumerate(regions):
            seg.bias[c] = -SCALE * HALF_WIDTH / 2
            for v in region:
                k = 3 * values.index(v)
                seg.weight[c, k, 0, 0, 0] += SCALE
                seg.weight[c, k + 1, 0, 0, 0] += -2 * SCALE
                seg.weight[c, k + 2, 0, 0, 0] += SCALE
            if odd_channel and c == 0:
                seg.weight[c, len(ramps) - 1, 0, 0, 0] = 4 * SCALE * HALF_WIDTH
            if predict_nothing:
                seg.weight[c].zero_()
                seg.bias[c] = -SCALE * HALF_WIDTH


def build_step(root: Path, step: int) -> Path:
    """Write ``<root>/Dataset10<step>_…/nnUNetTrainerDAExtGPU__nnUNetPlans__3d_fullres``."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    regions = STEP1_REGIONS if step == 1 else STEP2_REGIONS
    n_values = len({v for r in regions for v in r})
    features = 3 * n_values + (0 if step == 1 else 1)
    plans, dataset = plans_json(step, features), dataset_json(step)
    folder = root / (STEP1 if step == 1 else STEP2) / FOLDER
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    for checkpoint, nothing in (("checkpoint_best.pth", False), ("checkpoint_final.pth", True)):
        network = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"],
                                         arch["_kw_requires_import"], 1 if step == 1 else 2,
                                         len(regions), allow_init=True, deep_supervision=False)
        _set_weights(network, regions, odd_channel=step == 2, predict_nothing=nothing)
        torch.save({"network_weights": network.state_dict(), "trainer_name": TRAINER,
                    "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0,
                                  "dataset_json": dataset, "device": "cpu"},
                    "inference_allowed_mirroring_axes": None, "current_epoch": 100,
                    "optimizer_state": None, "grad_scaler_state": None, "logging": {},
                    "_best_ema": 0.0}, folder / "fold_0" / checkpoint)
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return folder


def build_release(root: Path) -> Path:
    """Both steps under ``<root>/nnUNet/results/`` (TotalSpineSeg's data dir layout); returns root."""
    results = root / "nnUNet" / "results"
    for step in (1, 2):
        build_step(results, step)
    return root


def release_zips(root: Path, out: Path) -> list[Path]:
    """The two release zips (``Dataset10N_TotalSpineSeg_stepN_r20251124.zip``) of a built release."""
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
