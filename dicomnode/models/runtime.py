"""Warm nnU-Net inference: model folders loaded once, kept on the device, shared safely between
jobs.

A model folder is what nnU-Net writes after training and what the official releases ship::

    <trainer>__<plans>__<configuration>/
        dataset.json  plans.json
        fold_all/checkpoint_final.pth        (or fold_0 … fold_4, checkpoint_best.pth)

Loading follows ``nnUNetPredictor.initialize_from_trained_model_folder`` step for step (the
trainer name, configuration and mirroring axes come from the first fold's checkpoint; the network
is built by the trainer class from the plans), with one deliberate difference: **a trainer class
that is not installed** (TotalSpineSeg's ``nnUNetTrainerDAExtGPU`` lives in the AugLab package,
which TotalSpineSeg copies into site-packages at run time) is replaced by nnU-Net's base
``nnUNetTrainer``. For inference a trainer class only contributes
``build_network_architecture``; custom trainers that change augmentation, epochs or mirroring (all
of the seed models' trainers) build the same network from the plans, and the mirroring axes are
read from the checkpoint anyway. If a missing trainer did build a different network, loading its
weights fails with :class:`ModelLoadError` instead of predicting garbage.

:class:`NnUNetRuntime` is owned by the service (or by ``dicomnode process``); it is not a global.
It keeps one initialised ``nnUNetPredictor`` per (model folder, folds, checkpoint, settings,
device) and runs every prediction under a per-device lock, so one GPU serves several jobs one at
a time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch and nnunetv2 are imported when a model is loaded, not when this is
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

log = logging.getLogger(__name__)

Fold = int | str  # 0…4 or "all"


class ModelError(Exception):
    """Base of the errors raised about models (registry, weights, runtime)."""


class ModelLoadError(ModelError):
    """A model folder is incomplete or its weights do not fit the network its plans describe."""


class DeviceError(ModelError):
    """The configured inference device does not exist on this machine."""


@dataclass(frozen=True)
class InferenceSettings:
    """How nnU-Net runs a model; the defaults are what ``nnUNetv2_predict`` does except mirroring.

    Each pipeline passes the settings of its official pipeline (e.g. VertebralBodiesCT: step 0.5,
    Gaussian weighting, no mirroring). Precision is nnU-Net's own: fp16 autocast on CUDA, fp32 on
    CPU.
    """

    tile_step_size: float = 0.5
    use_gaussian: bool = True
    use_mirroring: bool = False
    #: Keep the sliding-window accumulation on the GPU (nnU-Net falls back to CPU when it runs out).
    perform_everything_on_device: bool = True
    #: TensorFloat-32 matmuls/convolutions on Ampere+ GPUs (SPINEPS's TPTBox turns this on).
    allow_tf32: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelFolder:
    """One trained nnU-Net model folder and which of its folds and checkpoint to use."""

    path: Path
    folds: tuple[Fold, ...]
    checkpoint: str = "checkpoint_final.pth"

    @classmethod
    def open(cls, path: Path | str, folds: Sequence[Fold] | None = None,
             checkpoints: Sequence[str] = ("checkpoint_final.pth",)) -> ModelFolder:
        """Check a model folder and pick its folds and checkpoint.

        ``folds`` None means every ``fold_N`` holding a checkpoint, else ``fold_all`` (what
        ``nnUNetv2_predict`` does when ``-f`` is omitted, plus the ``fold_all`` fallback that
        ResEnc M needs). ``checkpoints`` is an order of preference, e.g. TotalSpineSeg's
        ``("checkpoint_best.pth", "checkpoint_final.pth")``; the first that every fold has wins.
        """
        path = Path(path)
        for name in ("dataset.json", "plans.json"):
            if not (path / name).is_file():
                raise ModelLoadError(f"{path} is not an nnU-Net model folder: {name} is missing")
        if folds is None:
            numbered = sorted(int(p.name[5:]) for p in path.glob("fold_*")
                              if p.name[5:].isdigit()
                              and any((p / c).is_file() for c in checkpoints))
            folds = numbered or ["all"]
        folds = tuple(f if f == "all" else int(f) for f in folds)
        for checkpoint in checkpoints:
            if all((path / f"fold_{f}" / checkpoint).is_file() for f in folds):
                return cls(path, folds, checkpoint)
        wanted = " or ".join(checkpoints)
        raise ModelLoadError(f"{path}: fold(s) {', '.join(map(str, folds))} lack {wanted}")

    def describe(self) -> dict[str, Any]:
        """Trainer, plans and configuration as the folder name states them, for result metadata."""
        parts = self.path.name.split("__")
        trainer, plans, configuration = parts if len(parts) == 3 else ("", "", "")
        return {"folder": self.path.name, "trainer": trainer, "plans": plans,
                "configuration": configuration, "folds": list(self.folds),
                "checkpoint": self.checkpoint}


def resolve_device(spec: str) -> torch.device:
    """``auto`` → the first CUDA GPU if there is one, else CPU; ``cpu``; ``cuda`` / ``cuda:N``."""
    import torch

    if spec == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {spec!r} is configured but this machine has no usable "
                              "CUDA GPU")
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {spec!r} is configured but only {torch.cuda.device_count()} "
                              f"GPU(s) are visible")
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise DeviceError(f"device {spec!r} is not supported (use auto, cpu or cuda:N)")
    return device


def _trainer_class(trainer_name: str) -> tuple[type[nnUNetTrainer], str]:
    """The trainer class nnU-Net would use, or the base trainer when it is not installed.

    Returns the class and a note for the logs/metadata (empty when the named class was found).
    """
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    if trainer_name == "nnUNetTrainer":
        return nnUNetTrainer, ""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        return recursive_find_trainer_class_by_name(trainer_name), ""
    except (RuntimeError, AssertionError):
        note = (f"trainer {trainer_name} is not installed; the network is built from the plans by "
                f"nnUNetTrainer (the trainer class only matters for training)")
        log.info(note)
        return nnUNetTrainer, note


@dataclass
class LoadedModel:
    """An initialised predictor and what was learnt while loading it."""

    predictor: nnUNetPredictor
    folder: ModelFolder
    trainer_name: str
    configuration: str
    trainer_note: str = ""
    num_input_channels: int = 1

    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(self.predictor.configuration_manager.patch_size)

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(self.predictor.configuration_manager.spacing)


def load_model(folder: ModelFolder, settings: InferenceSettings,
               device: torch.device) -> LoadedModel:
    """Build an ``nnUNetPredictor`` for a model folder the way nnU-Net does, tolerating missing
    trainers."""
    import inspect

    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    try:
        dataset_json = json.loads((folder.path / "dataset.json").read_text(encoding="utf-8"))
        plans = json.loads((folder.path / "plans.json").read_text(encoding="utf-8"))
        plans_manager = PlansManager(plans)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{folder.path}: cannot read dataset.json/plans.json: {exc}") from exc

    parameters: list[dict[str, Any]] = []
    trainer_name = configuration = ""
    mirroring_axes = None
    for i, fold in enumerate(folder.folds):
        path = folder.path / f"fold_{fold}" / folder.checkpoint
        try:
            # weights_only=False as nnU-Net does: its checkpoints pickle init_args (plans, device).
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # a truncated download surfaces here as one of many pickle errors
            raise ModelLoadError(f"{path} cannot be read ({exc}); "
                                 "pull or install the model again") from exc
        if i == 0:
            trainer_name = checkpoint["trainer_name"]
            configuration = checkpoint["init_args"]["configuration"]
            mirroring_axes = checkpoint.get("inference_allowed_mirroring_axes")
        parameters.append(checkpoint["network_weights"])

    try:
        configuration_manager = plans_manager.get_configuration(configuration)
    except Exception as exc:
        raise ModelLoadError(f"{folder.path}: plans.json has no configuration "
                             f"{configuration!r}") from exc
    num_inputs = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    num_outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    trainer_class, note = _trainer_class(trainer_name)
    if "plans_manager" in inspect.signature(trainer_class.build_network_architecture).parameters:
        network = trainer_class.build_network_architecture(
            plans_manager, configuration_manager, num_inputs, num_outputs,
            enable_deep_supervision=False)
    else:  # trainers written for nnU-Net < 2.6
        network = trainer_class.build_network_architecture(
            configuration_manager.network_arch_class_name,
            configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import, num_inputs, num_outputs,
            enable_deep_supervision=False)
    try:
        network.load_state_dict(parameters[0])
    except RuntimeError as exc:
        raise ModelLoadError(f"{folder.path}: the weights do not fit the network built from "
                             f"plans.json{' (' + note + ')' if note else ''}: "
                             f"{str(exc).splitlines()[0]}") from exc

    predictor = nnUNetPredictor(
        tile_step_size=settings.tile_step_size, use_gaussian=settings.use_gaussian,
        use_mirroring=settings.use_mirroring,
        perform_everything_on_device=(settings.perform_everything_on_device
                                      and device.type == "cuda"),
        device=device, verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    if device.type == "cuda" and len(parameters) > 1:
        # nnU-Net loads each fold's weights into the network for every prediction; keeping them on
        # the GPU makes that a device-to-device copy instead of a host upload per fold and series.
        parameters = [{k: v.to(device) for k, v in p.items()} for p in parameters]
    predictor.manual_initialization(network, plans_manager, configuration_manager, parameters,
                                    dataset_json, trainer_name, mirroring_axes)
    predictor.network.to(device).eval()
    return LoadedModel(predictor, folder, trainer_name, configuration, note, num_inputs)


_CacheKey = tuple[str, tuple[Fold, ...], str, InferenceSettings, str]


class NnUNetRuntime:
    """Initialised nnU-Net predictors kept warm per (model, device), with one lock per device.

    ``max_models`` bounds how many predictors stay loaded (least recently used are released);
    ``threads`` (> 0) sets torch's CPU thread count once, when the first model is loaded.
    """

    @classmethod
    def from_config(cls, models: Any, device: str | None = None) -> NnUNetRuntime:
        """The runtime for the ``models`` section of ``config.yaml`` (``device`` overrides it)."""
        return cls(device or models.device, max_models=models.keep_warm, threads=models.threads)

    def __init__(self, device: str = "auto", max_models: int = 4, threads: int = 0):
        self.device_spec = device
        self.max_models = max(1, max_models)
        self.threads = threads
        self._models: OrderedDict[_CacheKey, LoadedModel] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._device_locks: dict[str, threading.Lock] = {}
        self._device: torch.device | None = None

    @property
    def device(self) -> torch.device:
        if self._device is None:
            self._device = resolve_device(self.device_spec)
            if self.threads > 0:
                import torch
                torch.set_num_threads(self.threads)
        return self._device

    def device_lock(self) -> threading.Lock:
        """The lock that serialises work on this runtime's device (shared by every model on it)."""
        with self._cache_lock:
            return self._device_locks.setdefault(str(self.device), threading.Lock())

    def model(self, folder: ModelFolder, settings: InferenceSettings) -> LoadedModel:
        """The warm predictor for a model folder, loading it on first use."""
        key: _CacheKey = (str(folder.path.resolve()), folder.folds, folder.checkpoint, settings,
                          str(self.device))
        with self._cache_lock:
            loaded = self._models.get(key)
            if loaded is not None:
                self._models.move_to_end(key)
                return loaded
        with self.device_lock():  # loading moves weights to the device: same lock as predicting
            with self._cache_lock:
                loaded = self._models.get(key)
            if loaded is None:
                loaded = load_model(folder, settings, self.device)
                with self._cache_lock:
                    self._models[key] = loaded
                    while len(self._models) > self.max_models:
                        self._models.popitem(last=False)
                self._empty_cache()
        return loaded

    def predict(self, folder: ModelFolder, settings: InferenceSettings, image: np.ndarray,
                spacing: Sequence[float], previous_stage: np.ndarray | None = None,
                return_probabilities: bool = False) -> Any:
        """Segment one image held in memory, as ``predict_single_npy_array`` does.

        ``image`` is (channels, z, y, x) in nnU-Net's (SimpleITK) axis order and ``spacing`` is
        (z, y, x) in mm. Returns the label array (z, y, x), or (labels, probabilities) when asked.

        The same three nnU-Net steps as ``predict_single_npy_array`` (preprocess, sliding-window
        logits, resample back and argmax), but only the middle one holds the device lock: another
        job's CPU-side preprocessing and export overlap with this one's network pass.
        """
        from nnunetv2.inference.data_iterators import PreprocessAdapterFromNpy
        from nnunetv2.inference.export_prediction import (
            convert_predicted_logits_to_segmentation_with_correct_shape,
        )

        loaded = self.model(folder, settings)
        if image.ndim != 4 or image.shape[0] != loaded.num_input_channels:
            raise ModelLoadError(f"{folder.path.name} expects {loaded.num_input_channels} "
                                 f"channel(s) of 3D data, got an array of shape {image.shape}")
        predictor = loaded.predictor
        preprocess = PreprocessAdapterFromNpy(
            [image], [previous_stage], [{"spacing": [float(s) for s in spacing]}], [None],
            predictor.plans_manager, predictor.dataset_json, predictor.configuration_manager,
            num_threads_in_multithreaded=1, verbose=False)
        case = next(preprocess)
        with self.device_lock(), _tf32(settings.allow_tf32, self.device):
            logits = predictor.predict_logits_from_preprocessed_data(case["data"]).cpu()
        return convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, predictor.plans_manager, predictor.configuration_manager,
            predictor.label_manager, case["data_properties"],
            return_probabilities=return_probabilities)

    def loaded(self) -> list[ModelFolder]:
        """The model folders currently warm."""
        with self._cache_lock:
            return [m.folder for m in self._models.values()]

    def release(self, folder: ModelFolder | None = None) -> None:
        """Drop warm predictors (all, or those of one folder) and return their GPU memory."""
        with self.device_lock(), self._cache_lock:
            for key in [k for k, m in self._models.items()
                        if folder is None or m.folder.path.resolve() == folder.path.resolve()]:
                del self._models[key]
        self._empty_cache()

    def _empty_cache(self) -> None:
        if self._device is not None and self._device.type == "cuda":
            import gc

            import torch
            gc.collect()  # predictors reference the networks; free them before emptying the cache
            with torch.cuda.device(self._device):
                torch.cuda.empty_cache()


@contextlib.contextmanager
def _tf32(enabled: bool, device: torch.device) -> Iterator[None]:
    """TF32 on for one prediction (held under the device lock), torch's flags restored after."""
    if not (enabled and device.type == "cuda"):
        yield
        return
    import torch

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
