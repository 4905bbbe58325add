"""SPINEPS model folders for tests, in the layout of the release zips.

* ``semantic/T2w_semantic_test/`` (or ``T1w``): ``inference_config.json`` plus an nnU-Net model
  folder (``plans.json``, ``dataset.json``, ``fold_0/checkpoint_final.pth``), what ``t2w.zip``
  unpacks to. The network is the hand-set intensity-band net of :mod:`tests.models_mr.banded`
  working on SPINEPS's preprocessed intensities (normalised to [0, 1500] and N4-corrected):
  bands fitted to the shared T2w images (dark grey → vertebral arch, mid-grey → corpus, bright →
  canal, brightest → cord). This gives corpus and canal blobs, so the instance phase, the merging
  and the post-processing have something to work on. The plans use ``NoNormalization`` so the
  bands keep their meaning (SPINEPS normalises before nnU-Net anyway).
* ``instance/instance_test/``: ``inference_config.json`` and ``*weights*.ckpt``, a PyTorch
  Lightning checkpoint of SPINEPS's own ``spineps.architectures.pl_unet.PLNet`` (3D U-Net, 10
  one-hot input channels, 4 output classes), with random weights whose output layer is scaled so
  the classes vary within a cut-out. The cut-out is 64×64×32 voxels at 1.5 mm (the release uses
  248×304×64 at 0.75×0.75×1.65 mm) so CPU inference takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.models_mr.banded import build_network, features_needed, plans_json, save_model_folder

#: nnU-Net output index → SPINEPS Location name, and the band (preprocessed intensity) of each.
SEMANTIC: list[tuple[str, tuple[float, float] | None]] = [
    ("Arcus_Vertebrae", (28.0, 45.0)), ("Spinosus_Process", None),
    ("Costal_Process_Left", None), ("Costal_Process_Right", None),
    ("Superior_Articular_Left", None), ("Superior_Articular_Right", None),
    ("Inferior_Articular_Left", None), ("Inferior_Articular_Right", None),
    ("Vertebra_Corpus_border", (45.0, 110.0)), ("Spinal_Cord", (260.0, 1501.0)),
    ("Spinal_Canal", (110.0, 260.0)), ("Vertebra_Disc", None),
    ("Vertebra_Corpus", None), ("Endplate", None),
]
SEMANTIC_ZOOM = 1.5
INSTANCE_ZOOM = 1.5
CUTOUT = (64, 64, 32)
SMOOTH = 5  # the semantic net bands the 5×5×5 mean intensity: coherent regions on real images


def semantic_inference_config(contrast: str) -> dict[str, Any]:
    return {
        "log_name": f"{contrast}_semantic_test", "modality": contrast, "acquisition": "sag",
        "modeltype": "nnunet", "model_expected_orientation": ["P", "I", "R"],
        "available_folds": 1, "inference_augmentation": False,
        "resolution_range": [SEMANTIC_ZOOM] * 3, "default_step_size": 0.5,
        "labels": {str(i + 1): name for i, (name, _) in enumerate(SEMANTIC)},
    }


def instance_inference_config() -> dict[str, Any]:
    return {
        "log_name": "instance_test", "modality": "SEG", "acquisition": "sag", "modeltype": "unet",
        "model_expected_orientation": ["P", "I", "R"], "available_folds": 1,
        "inference_augmentation": False, "resolution_range": [INSTANCE_ZOOM] * 3,
        "default_step_size": 0.5, "labels": {"1": 1, "2": 2, "3": 3},
        "expected_inputs": ["seg"], "cutout_size": list(CUTOUT),
    }


def build_semantic(root: Path, contrast: str = "T2w") -> Path:
    """``<root>/<contrast>_semantic_test/`` with an nnU-Net folder and ``inference_config.json``."""
    import torch

    outputs = [[] if band is None else [band] for _, band in SEMANTIC]
    features = features_needed(outputs)
    labels = {"background": 0, **{name: i + 1 for i, (name, _) in enumerate(SEMANTIC)}}
    dataset = {"channel_names": {"0": contrast}, "labels": labels, "numTraining": 1,
               "file_ending": ".nii.gz", "name": f"spineps_{contrast}_test"}
    plans = plans_json("Dataset001_spineps_test", SEMANTIC_ZOOM, 1, features, reader="NibabelIO",
                       smooth=SMOOTH)
    # background logit 0; a class wins inside its band (triangle above 5 % of its peak)
    network = build_network([[], *outputs], 1, scale=0.1, on_fraction=0.05, off_bias=-20.0,
                            smooth=SMOOTH)
    with torch.no_grad():
        network.decoder.seg_layers[0].bias[0] = 0.0
    folder = save_model_folder(root / f"{contrast}_semantic_test", plans, dataset,
                               {"checkpoint_final.pth": network}, "nnUNetTrainer", (0, 1, 2))
    (folder / "inference_config.json").write_text(
        json.dumps(semantic_inference_config(contrast), indent=2))
    return folder


def build_instance(root: Path, seed: int = 0) -> Path:
    """``<root>/instance_test/`` with SPINEPS's PLNet checkpoint and ``inference_config.json``."""
    import pytorch_lightning as pl
    import torch
    from spineps.architectures.pl_unet import PLNet

    torch.manual_seed(seed)
    model = PLNet()
    with torch.no_grad():
        model.network.final_conv.weight.mul_(20.0)
    folder = root / "instance_test"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": pl.__version__, "epoch": 0, "global_step": 0},
               folder / "instance_weights_test.ckpt")
    (folder / "inference_config.json").write_text(json.dumps(instance_inference_config(), indent=2))
    return folder


def build_release(root: Path, contrast: str = "T2w") -> Path:
    """Both parts as ``install`` expects a folder: ``semantic/…`` and ``instance/…``."""
    build_semantic(root / "semantic", contrast)
    build_instance(root / "instance")
    return root
