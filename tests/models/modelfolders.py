"""Builds nnU-Net model folders in the official release layouts, with random weights.

The weights of the seed models cannot be downloaded on development machines, so the tests make
their own: a real ``nnUNetTrainer`` (or a subclass with the name TotalSpineSeg's trainer has) is
constructed from a ``plans.json`` / ``dataset.json`` shaped like VertebralBodiesCT's, initialised
(which builds the network from the plans with nnU-Net's own code and He initialisation) and
asked to ``save_checkpoint``, exactly as training would. The trainer writes into
``$nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>/fold_<f>/``, which is the release
layout. Networks are tiny (3 stages, 4–16 features, 16×32×32 patch) so CPU inference takes seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

DATASET = "Dataset601_VertebralBodies"
LABELS: dict[str, int] = {"background": 0, **{f"T{i}": i for i in range(1, 13)},
                          **{f"L{i}": 12 + i for i in range(1, 6)},
                          "L6": 18, "sacrum": 19, "coccyx": 20, "T13": 21}


def dataset_json(channel: str = "CT") -> dict[str, Any]:
    return {"channel_names": {"0": channel}, "labels": dict(LABELS), "numTraining": 1216,
            "file_ending": ".nii.gz", "name": "VertebralBodies", "release": "2024-08-29"}


#: The tiny default network: 3 stages, 4–16 features.
TINY_ARCH: dict[str, Any] = {
    "n_stages": 3, "features_per_stage": [4, 8, 16], "kernel_sizes": [[3, 3, 3]] * 3,
    "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]], "n_blocks_per_stage": [1, 1, 1],
    "n_conv_per_stage_decoder": [1, 1]}

#: Plausible CT foreground intensities (bone-ish HU), used when a caller has no fingerprint.
DEFAULT_INTENSITIES: dict[str, float] = {
    "max": 1800.0, "mean": 350.0, "median": 300.0, "min": -1000.0,
    "percentile_00_5": -150.0, "percentile_99_5": 1400.0, "std": 280.0}


def plans_json(plans_name: str, spacing: Sequence[float] = (2.0, 1.5, 1.5),
               patch_size: Sequence[int] = (16, 32, 32), *,
               arch: dict[str, Any] | None = None,
               intensities: dict[str, float] | None = None,
               median_shape: Sequence[int] = (40, 64, 64)) -> dict[str, Any]:
    """A ResEnc plans file in nnU-Net 2.5+ format (architecture stored in the plans).

    ``arch`` overrides the stage layout (keys of :data:`TINY_ARCH`); ``intensities`` are the
    ``foreground_intensity_properties_per_channel`` of the CT channel that CTNormalization uses.
    """
    resampling = {"order": 3, "order_z": 0, "force_separate_z": None}
    layout = {**TINY_ARCH, **(arch or {})}
    return {
        "dataset_name": DATASET, "plans_name": plans_name,
        "original_median_spacing_after_transp": list(spacing),
        "original_median_shape_after_transp": list(median_shape),
        "image_reader_writer": "SimpleITKIO",  # VertebralBodiesCT: "trained using SimpleITKIO"
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "nnUNetPlannerResEncM", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": dict(intensities or DEFAULT_INTENSITIES)},
        "configurations": {"3d_fullres": {
            "data_identifier": f"{plans_name}_3d_fullres",
            "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": list(patch_size),
            "median_image_size_in_voxels": list(median_shape),
            "spacing": list(spacing), "normalization_schemes": ["CTNormalization"],
            "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, **resampling},
            "resampling_fn_seg_kwargs": {"is_seg": True, **resampling, "order": 1},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, **resampling, "order": 1},
            "architecture": {
                "network_class_name":
                    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
                "arch_kwargs": {
                    **layout, "conv_op": "torch.nn.modules.conv.Conv3d",
                    "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                    "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                    "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                    "nonlin_kwargs": {"inplace": True}},
                "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
            "batch_dice": True}},
    }


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _trainer_class(name: str) -> type:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    if name == "nnUNetTrainer":
        return nnUNetTrainer
    # A trainer nnunetv2 does not ship (like AugLab's nnUNetTrainerDAExtGPU): same network,
    # different name in the checkpoint.
    return type(name, (nnUNetTrainer,), {})


def build_model_folder(results: Path, plans_name: str, folds: Sequence[int | str], *,
                       trainer: str = "nnUNetTrainer", seed: int = 0,
                       spacing: Sequence[float] = (2.0, 1.5, 1.5),
                       patch_size: Sequence[int] = (16, 32, 32),
                       plans: dict[str, Any] | None = None,
                       train: Callable[[Any], None] | None = None) -> Path:
    """A model folder with one checkpoint per fold; random weights unless ``train`` is given.

    ``plans`` replaces the default :func:`plans_json`; ``train`` is called with each initialised
    trainer (network built from the plans) before ``save_checkpoint``, in place of the
    random-weight logit spreading.
    """
    import torch

    plans = plans if plans is not None else plans_json(plans_name, spacing, patch_size)
    dataset = dataset_json()
    preprocessed = results.parent / f"{results.name}-preprocessed"
    # The trainer refuses to initialise without a preprocessed folder to infer its data format from.
    data = preprocessed / DATASET / plans["configurations"]["3d_fullres"]["data_identifier"]
    data.mkdir(parents=True, exist_ok=True)
    (data / "case_0000.b2nd").touch()
    folder = results / DATASET / f"{trainer}__{plans_name}__3d_fullres"
    with _environment(nnUNet_results=str(results), nnUNet_preprocessed=str(preprocessed)):
        for i, fold in enumerate(folds):
            torch.manual_seed(seed + i)
            instance = _trainer_class(trainer)({**plans, "continue_training": False}, "3d_fullres",
                                               fold, dataset, device=torch.device("cpu"))
            instance.initialize()
            (train or _spread_logits_of)(instance)
            instance.save_checkpoint(str(folder / f"fold_{fold}" / "checkpoint_final.pth"))
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return folder


def _spread_logits_of(trainer: Any) -> None:
    _spread_logits(trainer.network)


def _spread_logits(network: Any) -> None:
    """Scale the output layers so that random weights predict many labels, not one everywhere."""
    import torch

    with torch.no_grad():
        for layer in network.decoder.seg_layers:
            layer.weight.mul_(20.0)


def zip_folder(folder: Path, archive: Path, prefix: str = "") -> Path:
    """Zip a folder's contents, each member under ``prefix`` (as a release zip would)."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{prefix}{path.relative_to(folder)}")
    return archive
