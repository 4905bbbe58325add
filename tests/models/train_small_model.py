"""Train the small VertebralBodiesCT-shaped test model on TotalSegmentator's example CT.

Usage: ``.venv/bin/python tests/models/train_small_model.py OUTDIR [--max-seconds S]``

Writes ``OUTDIR/nnUNetTrainer__nnUNetResEncUNetMPlans__3d_fullres/{plans.json,dataset.json,
fold_all/checkpoint_final.pth}``: a ResEnc-M-named nnU-Net model folder (trainer
``nnUNetTrainer``, plans ``nnUNetResEncUNetMPlans``, ``fold_all``)
whose network has learnt the vertebrae of ``example_ct.nii.gz`` from TotalSegmentator's labels
(``spine_report/example_ct_report/totalseg.nii.gz``) mapped onto VertebralBodiesCT's label values.
The committed fixture ``tests/models/fixtures/vbct-small/`` was made with this script.

What the network sees is made the way ``dicomnode process --pipeline vertebral-bodies-ct`` will
make it when the CT arrives as a DICOM series (see ``test_trained_model.py``):

* the volume in the series' voxel order (axial slices, LPS; the pipeline never reorients) with
  HU as the series stores them (12-bit, rescale intercept −1024, so clipped to [−1024, 3071]),
  cast to int16 as the official pipeline does;
* nnU-Net's own ``DefaultPreprocessor.run_case_npy`` (the predictor's code path: crop to non-zero,
  CTNormalization, resampling to the plans' 6 mm) with the foreground intensity
  properties computed as nnU-Net's fingerprinting does (``collect_foreground_intensities``);
* the network built from the plans by a real ``nnUNetTrainer`` (via ``modelfolders``), which also
  writes the checkpoint; the optimizer state is then stripped to keep the fixture small.

Training is a plain loop: Adam, nnU-Net's Dice+CE loss, random 64×32×32 crops of the 6 mm volume
(the whole z extent; half of them centred on a vertebra), no augmentation; seeds fixed, 2 CPU
threads. It stops once the whole-volume training Dice of every one of L1–L5 reaches the target, or
at the time limit; ``--init`` continues from an earlier run's checkpoint (how the fixture was made
on a loaded machine, see its README).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a script, too
from tests.shared_data import SHARED_DATA  # noqa: E402

DATA = SHARED_DATA / "totalsegmentator-ref"
CT = DATA / "example_ct.nii.gz"
LABELS = DATA / "spine_report" / "example_ct_report" / "totalseg.nii.gz"

#: TotalSegmentator ``total`` ids → VertebralBodiesCT label values.
TOTALSEG_TO_VBCT: dict[int, int] = {27: 17, 28: 16, 29: 15, 30: 14, 31: 13, 32: 12, 33: 11, 26: 19}
LUMBAR = (13, 14, 15, 16, 17)  # L1–L5
PLANS_NAME = "nnUNetResEncUNetMPlans"
#: The committed model this script made, as `dicomnode models install vertebral-bodies-ct-m`
#: takes it (tests and benchmarks that need real vertebral bodies install it).
TRAINED_CT_MODEL = (REPO / "tests" / "models" / "fixtures" / "vbct-small"
                    / f"nnUNetTrainer__{PLANS_NAME}__3d_fullres")
#: nnU-Net resamples the 3 mm CT to this spacing (and the probabilities back to 3 mm). On 2 shared
#: CPU cores a 3 mm network trains at several seconds a step. At 6 mm the patch spans the whole
#: scan along z (56 slices: sacrum to ribs, the context that tells the levels apart) and 19 cm
#: across, and a step takes under a second.
SPACING = (6.0, 6.0, 6.0)
PATCH = (64, 32, 32)
#: 4 stages, 8–64 features: ~0.6 M parameters (a ~2.5 MB checkpoint); the receptive field spans
#: most of the lumbar spine, which the network needs to tell the levels apart.
ARCH: dict[str, Any] = {
    "n_stages": 4, "features_per_stage": [8, 16, 32, 64], "kernel_sizes": [[3, 3, 3]] * 4,
    "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]], "n_blocks_per_stage": [1, 2, 2, 2],
    "n_conv_per_stage_decoder": [1, 1, 1]}


def series_arrays() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(HU int16 (z, y, x), VBCT labels uint8 (z, y, x), spacing (z, y, x)) as the DICOM
    series written from the CT will load: LPS voxel order, 12-bit stored values."""
    import SimpleITK as sitk

    image = sitk.DICOMOrient(sitk.ReadImage(str(CT)), "LPS")
    labels = sitk.DICOMOrient(sitk.ReadImage(str(LABELS)), "LPS")
    hu = np.clip(sitk.GetArrayFromImage(image).astype(np.int64), -1024, 3071).astype(np.int16)
    source = sitk.GetArrayFromImage(labels)
    mapped = np.zeros(source.shape, np.uint8)
    for total_id, vbct_id in TOTALSEG_TO_VBCT.items():
        mapped[source == total_id] = vbct_id
    return hu, mapped, tuple(image.GetSpacing()[::-1])


def data_shape(shape: tuple[int, ...], spacing: tuple[float, ...]) -> list[int]:
    """The volume's shape at the plans' spacing (median_image_size_in_voxels of one case)."""
    return [round(n * s / t) for n, s, t in zip(shape, spacing, SPACING, strict=False)]


def fingerprint_intensities(hu: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Foreground intensity properties as ``nnUNetv2_extract_fingerprint`` computes them."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
        DatasetFingerprintExtractor,
    )

    # nnU-Net samples 10^8 foreground voxels over the whole dataset; 10^6 from one case gives the
    # same statistics to well under a HU without allocating gigabytes.
    sampled, _ = DatasetFingerprintExtractor.collect_foreground_intensities(
        labels[None], hu[None].astype(np.float32), seed=1234, num_samples=10**6)
    values = sampled[0]
    low, median, high = np.percentile(values, (0.5, 50.0, 99.5))
    return {"max": float(np.max(values)), "mean": float(np.mean(values)), "median": float(median),
            "min": float(np.min(values)), "percentile_00_5": float(low),
            "percentile_99_5": float(high), "std": float(np.std(values))}


def preprocess(hu: np.ndarray, labels: np.ndarray, spacing: tuple[float, ...],
               plans: dict[str, Any], dataset: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The predictor's preprocessing, applied to the training case (image and labels)."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    data, seg, _ = DefaultPreprocessor(verbose=False).run_case_npy(
        hu[None].astype(np.float32), labels[None].astype(np.int16), {"spacing": list(spacing)},
        manager, manager.get_configuration("3d_fullres"), dataset)
    return data.astype(np.float32), np.maximum(seg, 0).astype(np.int64)  # -1 = outside nonzero


def _pad_centred(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    pad = [(0, 0)] + [(max(0, s - a) // 2, max(0, s - a) - max(0, s - a) // 2)
                      for a, s in zip(array.shape[1:], shape, strict=False)]
    return np.pad(array, pad)


def dice_per_label(pred: np.ndarray, truth: np.ndarray,
                   labels: tuple[int, ...]) -> dict[int, float]:
    out = {}
    for label in labels:
        p, t = pred == label, truth == label
        denom = p.sum() + t.sum()
        out[label] = float(2 * (p & t).sum() / denom) if denom else 1.0
    return out


class Trainer:
    """The training loop, run on an initialised nnU-Net trainer's network."""

    def __init__(self, data: np.ndarray, seg: np.ndarray, *, max_seconds: float, target: float,
                 seed: int = 0, init: Path | None = None) -> None:
        self.data, self.seg, self.init = data, seg, init
        self.max_seconds, self.target = max_seconds, target
        self.rng = np.random.default_rng(seed)
        self.report: dict[str, Any] = {}

    def _crop(self, data: np.ndarray, seg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Where the volume is smaller than the patch, place it at a random offset in a canvas of
        # zeros: the predictor pads such images with 0 (normalised), centred.
        pad = []
        for p, s in zip(PATCH, data.shape[1:], strict=False):
            extra = max(0, p - s)
            before = int(self.rng.integers(0, extra + 1))
            pad.append((before, extra - before))
        data = np.pad(data, [(0, 0)] + pad)
        seg = np.pad(seg, [(0, 0)] + pad)
        shape = data.shape[1:]
        if self.rng.random() < 0.5:  # foreground oversampling, as nnU-Net does (there 1/3)
            fg = np.argwhere(seg[0] > 0)
            centre = fg[self.rng.integers(len(fg))]
            start = [int(np.clip(c - p // 2, 0, s - p))
                     for c, p, s in zip(centre, PATCH, shape, strict=False)]
        else:
            start = [int(self.rng.integers(0, s - p + 1))
                     for p, s in zip(PATCH, shape, strict=False)]
        window = tuple(slice(a, a + p) for a, p in zip(start, PATCH, strict=False))
        return data[(slice(None), *window)], seg[(slice(None), *window)]

    def evaluate(self, network: Any, data: Any, seg: np.ndarray) -> dict[int, float]:
        """Whole-volume training Dice (the padded volume fits the network's strides)."""
        import torch

        network.eval()
        with torch.no_grad():
            pred = network(data).argmax(1)[0].numpy()
        network.train()
        return dice_per_label(pred, seg[0], LUMBAR)

    def __call__(self, trainer: Any) -> None:
        import torch
        from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
        from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

        network = trainer.network
        if self.init is not None:  # continue from an earlier run's weights (same plans)
            weights = torch.load(self.init, map_location="cpu", weights_only=False)
            network.load_state_dict(weights["network_weights"])
        trainer.set_deep_supervision_enabled(False)
        loss_fn = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False},
                                 {}, weight_ce=1, weight_dice=1, ignore_label=None,
                                 dice_class=MemoryEfficientSoftDiceLoss)
        optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
        # Evaluation input: the volume centred in zeros, at least one patch and a multiple of 8
        # (three stride-2 stages), as the predictor pads it.
        full = tuple(max(p, -(-s // 8) * 8)
                     for p, s in zip(PATCH, self.data.shape[1:], strict=False))
        whole = torch.from_numpy(_pad_centred(self.data, full)[None])
        truth = _pad_centred(self.seg, full)
        data, seg = self.data, self.seg
        network.train()
        start, step, history = time.perf_counter(), 0, []
        while True:
            step += 1
            crops = [self._crop(data, seg) for _ in range(2)]
            x = torch.from_numpy(np.stack([c[0] for c in crops]))
            y = torch.from_numpy(np.stack([c[1] for c in crops]))
            optimizer.zero_grad()
            loss = loss_fn(network(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
            optimizer.step()
            elapsed = time.perf_counter() - start
            if step % 50 == 0 or elapsed > self.max_seconds:
                dice = self.evaluate(network, whole, truth)
                history.append({"step": step, "seconds": round(elapsed, 1),
                                "loss": round(float(loss.detach()), 4),
                                "dice": {f"L{k - 12}": round(v, 3) for k, v in dice.items()}})
                print(json.dumps(history[-1]), flush=True)
                if min(dice.values()) >= self.target or elapsed > self.max_seconds:
                    break
        trainer.set_deep_supervision_enabled(True)
        trainer.current_epoch = step - 1  # save_checkpoint records current_epoch + 1 = steps
        self.report = {"steps": step, "seconds": round(elapsed, 1), "final": history[-1]}


def strip_checkpoint(path: Path) -> None:
    """Drop what only resuming training needs; the predictor reads weights, trainer name,
    configuration and mirroring axes."""
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    checkpoint["optimizer_state"] = None
    checkpoint["grad_scaler_state"] = None
    checkpoint["logging"] = {}
    torch.save(checkpoint, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--target", type=float, default=0.9,
                        help="stop when every L1–L5 training Dice reaches this")
    parser.add_argument("--init", type=Path, default=None,
                        help="start from this checkpoint_final.pth (a previous run's) instead of "
                             "random weights")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    sys.path.insert(0, str(REPO))
    from tests.models import modelfolders

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    hu, labels, spacing = series_arrays()
    plans = modelfolders.plans_json(
        PLANS_NAME, SPACING, PATCH, arch=ARCH, intensities=fingerprint_intensities(hu, labels),
        median_shape=data_shape(hu.shape, spacing))
    data, seg = preprocess(hu, labels, spacing, plans, modelfolders.dataset_json())
    loop = Trainer(data, seg, max_seconds=args.max_seconds, target=args.target,
                   seed=args.seed, init=args.init)
    with tempfile.TemporaryDirectory() as tmp:
        folder = modelfolders.build_model_folder(Path(tmp) / "results", PLANS_NAME, ["all"],
                                                 plans=plans, train=loop)
        checkpoint = folder / "fold_all" / "checkpoint_final.pth"
        strip_checkpoint(checkpoint)
        # The release layout: OUTDIR/nnUNetTrainer__nnUNetResEncUNetMPlans__3d_fullres/…
        target = args.outdir / folder.name
        (target / "fold_all").mkdir(parents=True, exist_ok=True)
        for name in ("plans.json", "dataset.json", "fold_all/checkpoint_final.pth"):
            shutil.copyfile(folder / name, target / name)
    print(json.dumps({"outdir": str(args.outdir), **loop.report}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
