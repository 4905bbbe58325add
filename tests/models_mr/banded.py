"""Hand-set nnU-Net networks that label intensity bands, so test outputs have structure.

Random weights give speckle, and the official post-processing (TotalSpineSeg's landmark
labelling, SPINEPS's corpus centres and instance cut-outs) then finds nothing to work on, so most of
the pipeline would never be compared. Instead the tests build real nnU-Net ``PlainConvUNet`` s (two
stages, no normalisation layers) and *set* their weights:

* the first (1×1×1) convolution turns an input channel into ramps ``leaky_relu(x - t)``;
* the deeper stage and the transposed convolution are zero, the decoder passes the ramps on;
* the 1×1 segmentation layer adds ``ramp(lo) - 2·ramp(mid) + ramp(hi)``, a triangle that is
  positive only inside ``(lo, hi)`` (the leaky parts cancel exactly outside), minus a threshold.

So output channel ``c`` is "the intensity lies in one of the bands of ``c``". Everything runs
through nnU-Net's own preprocessing, sliding window, Gaussian blending and export.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Band = tuple[float, float]  # (lo, hi) intensity interval of input channel 0


def plain_unet_architecture(features: int, smooth: int = 1) -> dict[str, Any]:
    """The ``architecture`` block of a plans configuration for these networks.

    ``smooth`` is the (odd) kernel size of the first stage: the ramps then see the local mean
    intensity (a box filter), which turns speckle on real images into coherent regions.
    """
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": 2, "features_per_stage": [features, features],
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[smooth] * 3, [1, 1, 1]], "strides": [[1, 1, 1], [2, 2, 2]],
            "n_conv_per_stage": [1, 1], "n_conv_per_stage_decoder": [1],
            "conv_bias": True, "norm_op": None, "norm_op_kwargs": None,
            "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def features_needed(outputs: Sequence[Sequence[Band]], extra_channels: int = 0) -> int:
    return 3 * len({b for bands in outputs for b in bands}) + extra_channels


def build_network(outputs: Sequence[Sequence[Band]], input_channels: int, *, scale: float,
                  on_fraction: float, off_bias: float, extra: dict[int, float] | None = None,
                  predict_nothing: bool = False, smooth: int = 1) -> Any:
    """A PlainConvUNet whose output ``c`` is ``scale·(Σ triangles − on_fraction·peak)``.

    ``outputs[c]`` lists the bands of output ``c`` (an empty list: the constant ``off_bias``).
    ``extra`` maps an output to the weight of a ramp ``leaky_relu(channel1 - 0.5)`` (a binary
    second input channel). ``predict_nothing`` sets every output to ``off_bias``.
    """
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    bands = sorted({b for bs in outputs for b in bs})
    ramps: list[tuple[int, float]] = []
    for lo, hi in bands:
        ramps += [(0, lo), (0, (lo + hi) / 2), (0, hi)]
    if extra:
        ramps.append((1, 0.5))
    arch = plain_unet_architecture(len(ramps), smooth)
    network = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"],
                                     arch["_kw_requires_import"], input_channels, len(outputs),
                                     allow_init=True, deep_supervision=False)
    with torch.no_grad():
        for p in network.parameters():
            p.zero_()
        first = network.encoder.stages[0][0].convs[0].conv
        decoder = network.decoder.stages[0].convs[0].conv
        seg = network.decoder.seg_layers[0]
        centre = smooth // 2
        for k, (channel, threshold) in enumerate(ramps):
            first.weight[k, channel] = 1.0 / smooth**3  # box filter (identity when smooth == 1)
            first.bias[k] = -threshold
            # the decoder stage has the first stage's kernel size; input = cat(upsampled, skip)
            decoder.weight[k, len(ramps) + k, centre, centre, centre] = 1.0
        for c, output in enumerate(outputs):
            seg.bias[c] = off_bias
            for lo, hi in output:
                k = 3 * bands.index((lo, hi))
                seg.weight[c, k, 0, 0, 0] += scale
                seg.weight[c, k + 1, 0, 0, 0] += -2 * scale
                seg.weight[c, k + 2, 0, 0, 0] += scale
                seg.bias[c] = -scale * on_fraction * (hi - lo) / 2
            if extra and c in extra:
                seg.weight[c, len(ramps) - 1, 0, 0, 0] = extra[c]
            if predict_nothing:
                seg.weight[c].zero_()
                seg.bias[c] = off_bias
    return network


def plans_json(dataset_name: str, spacing: float, channels: int, features: int,
               patch_size: Sequence[int] = (64, 64, 64), reader: str = "SimpleITKIO",
               smooth: int = 1) -> dict[str, Any]:
    """nnU-Net 2.5+ plans for a banded network: isotropic ``spacing``, ``NoNormalization``.

    No normalisation keeps the bands meaning the same intensities on every image; nnU-Net
    applies the scheme identically on both compared paths, so it does not weaken a comparison.
    """
    resampling = {"order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": dataset_name, "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [spacing] * 3,
        "original_median_shape_after_transp": [64, 64, 64], "image_reader_writer": reader,
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {str(c): {
            "max": 1500.0, "mean": 300.0, "median": 300.0, "min": 0.0, "percentile_00_5": 0.0,
            "percentile_99_5": 1400.0, "std": 150.0} for c in range(channels)},
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": list(patch_size),
            "median_image_size_in_voxels": [64, 64, 64],
            "spacing": [spacing] * 3, "normalization_schemes": ["NoNormalization"] * channels,
            "use_mask_for_norm": [False] * channels,
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, **resampling},
            "resampling_fn_seg_kwargs": {"is_seg": True, **resampling, "order": 1},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, **resampling, "order": 1},
            "architecture": plain_unet_architecture(features, smooth), "batch_dice": False}},
    }


def save_model_folder(folder: Path, plans: dict[str, Any], dataset: dict[str, Any],
                      checkpoints: dict[str, Any], trainer: str,
                      mirroring: tuple[int, ...] | None) -> Path:
    """Write ``plans.json``, ``dataset.json`` and ``fold_0/<name>`` checkpoints (nnU-Net's
    format)."""
    import torch

    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    for name, network in checkpoints.items():
        torch.save({"network_weights": network.state_dict(), "trainer_name": trainer,
                    "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0,
                                  "dataset_json": dataset, "device": "cpu"},
                    "inference_allowed_mirroring_axes": mirroring, "current_epoch": 100,
                    "optimizer_state": None, "grad_scaler_state": None, "logging": {},
                    "_best_ema": 0.0}, folder / "fold_0" / name)
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return folder
