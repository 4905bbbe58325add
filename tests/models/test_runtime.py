"""The warm runtime, the pipeline contract and ``dicomnode process`` failure handling (real
nnU-Net, CPU)."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dicomnode.cli import main
from dicomnode.config import parse_config
from dicomnode.models.pipelines import (
    Pipeline,
    PipelineError,
    PipelineResult,
    RunProvenance,
    get_pipeline,
)
from dicomnode.models.pipelines.base import VolumeLike, labelmap_like
from dicomnode.models.registry import ModelNotInstalled, ModelStore, get_entry
from dicomnode.models.runtime import (
    DeviceError,
    InferenceSettings,
    ModelFolder,
    ModelLoadError,
    NnUNetRuntime,
    resolve_device,
)
from dicomnode.models.weights import install
from dicomnode.run.batch import find_cases, process_cases
from dicomnode.run.case import CaseRunner
from tests.models.test_faithfulness import ct_volume

SETTINGS = InferenceSettings()


def _array(shape: tuple[int, int, int] = (12, 20, 20)) -> np.ndarray:
    return np.random.default_rng(1).normal(200, 300, (1, *shape)).astype(np.float32)


def test_model_folder_picks_folds_and_checkpoint(model_folders: dict[str, Path],
                                                 tmp_path: Path) -> None:
    assert ModelFolder.open(model_folders["m"]).folds == ("all",)
    assert ModelFolder.open(model_folders["l"]).folds == (0, 1, 2, 3, 4)
    # TotalSpineSeg prefers checkpoint_best.pth and falls back to checkpoint_final.pth.
    folder = ModelFolder.open(model_folders["daext"], (0,),
                              ("checkpoint_best.pth", "checkpoint_final.pth"))
    assert folder.checkpoint == "checkpoint_final.pth"
    with pytest.raises(ModelLoadError, match="lack checkpoint_final.pth"):
        ModelFolder.open(model_folders["m"], (0,))
    with pytest.raises(ModelLoadError, match="dataset.json is missing"):
        ModelFolder.open(tmp_path)


def test_predictors_stay_warm_and_are_released(model_folders: dict[str, Path]) -> None:
    runtime = NnUNetRuntime("cpu", max_models=1)
    folder = ModelFolder.open(model_folders["m"])
    first = runtime.model(folder, SETTINGS)
    assert runtime.model(folder, SETTINGS) is first  # no reload
    assert runtime.loaded() == [folder]
    other = ModelFolder.open(model_folders["daext"])
    runtime.model(other, SETTINGS)
    assert runtime.loaded() == [other]  # max_models=1: the least recently used one left
    runtime.release()
    assert runtime.loaded() == []


def test_unknown_trainer_class_loads_without_touching_site_packages(
        model_folders: dict[str, Path]) -> None:
    import nnunetv2

    trainers = Path(nnunetv2.__path__[0]) / "training" / "nnUNetTrainer"
    before = sorted(p.name for p in trainers.rglob("*.py"))
    loaded = NnUNetRuntime("cpu").model(ModelFolder.open(model_folders["daext"]), SETTINGS)
    assert loaded.trainer_name == "nnUNetTrainerDAExtGPU"
    assert "not installed" in loaded.trainer_note
    assert sorted(p.name for p in trainers.rglob("*.py")) == before


def test_weights_that_do_not_fit_the_plans_are_refused(model_folders: dict[str, Path],
                                                       tmp_path: Path) -> None:
    folder = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    shutil.copytree(model_folders["m"], folder)
    plans = json.loads((folder / "plans.json").read_text())
    arch_kwargs = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    arch_kwargs["features_per_stage"] = [8, 16, 32]
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ModelLoadError, match="do not fit the network"):
        NnUNetRuntime("cpu").model(ModelFolder.open(folder), SETTINGS)


def test_concurrent_jobs_share_one_device_safely(model_folders: dict[str, Path]) -> None:
    runtime = NnUNetRuntime("cpu")
    folder = ModelFolder.open(model_folders["m"])
    image = _array()
    expected = runtime.predict(folder, SETTINGS, image, (2.0, 1.5, 1.5))
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(
        runtime.predict(folder, SETTINGS, image, (2.0, 1.5, 1.5)))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and all(np.array_equal(r, expected) for r in results)
    with pytest.raises(ModelLoadError, match="expects 1 channel"):
        runtime.predict(folder, SETTINGS, np.zeros((2, 8, 8, 8), np.float32), (1, 1, 1))


def test_device_resolution() -> None:
    import torch

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no usable CUDA GPU"):
            resolve_device("cuda:3")


def test_pipeline_result_is_on_the_volume_grid(model_folders: dict[str, Path],
                                               tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    pipeline = get_pipeline("vertebral-bodies-ct")(store, NnUNetRuntime("cpu"))
    with pytest.raises(ModelNotInstalled, match="dicomnode models pull vertebral-bodies-ct-m"):
        pipeline.run(type("V", (), {"image": ct_volume((10, 20, 20))})())
    install(get_entry("vertebral-bodies-ct-m"), store, [model_folders["m"]])
    # fractions: truncated to int16
    image = sitk.Cast(ct_volume((10, 20, 20)), sitk.sitkFloat32) + 0.7
    volume = type("V", (), {"image": image})()
    result = pipeline.run(volume)
    assert result.labelmap.GetSize() == image.GetSize()
    assert result.labelmap.GetDirection() == image.GetDirection()
    assert result.mapping.labels[13] == "body_L1"
    meta = result.metadata
    assert (meta.pipeline, meta.model, meta.weights_version) == (
        "vertebral-bodies-ct", "vertebral-bodies-ct-m", "2024-08-29")
    assert meta.settings["use_mirroring"] is False and meta.settings["folds"] == ["all"]
    assert meta.settings["tile_step_size"] == 0.5 and meta.settings["input_dtype"] == "int16"
    # Same result as feeding the int16-truncated image: the official cast.
    truncated = sitk.Cast(image, sitk.sitkInt16)
    again = pipeline.run(type("V", (), {"image": truncated})())
    assert np.array_equal(sitk.GetArrayFromImage(again.labelmap),
                          sitk.GetArrayFromImage(result.labelmap))
    with pytest.raises(PipelineError, match="3D greyscale"):
        pipeline.run(type("V", (), {"image": sitk.Image(8, 8, sitk.sitkInt16)})())
    with pytest.raises(PipelineError, match="runs vertebral-bodies-ct-m or vertebral-bodies-ct-l"):
        get_pipeline("vertebral-bodies-ct")(store, NnUNetRuntime("cpu"), "totalspineseg")


def test_process_reports_failed_cases_and_finishes_the_others(
        model_folders: dict[str, Path], config_file: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    install(get_entry("vertebral-bodies-ct-m"), ModelStore(config_file.parent / "models"),
            [model_folders["m"]])
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    sitk.WriteImage(ct_volume((10, 20, 20)), str(cohort / "good.nii.gz"))
    (cohort / "broken.nii.gz").write_bytes(b"not a NIfTI file")
    sitk.WriteImage(sitk.Image(6, 6, sitk.sitkInt16), str(cohort / "flat.nii.gz"))  # 2D
    (cohort / "notes.txt").write_text("ignored: neither DICOM nor NIfTI")
    out = tmp_path / "out"
    code = main(["process", str(cohort), "--pipeline", "vertebral-bodies-ct", "--out", str(out),
                 "--config", str(config_file)])
    assert code == 1
    captured = capsys.readouterr()
    assert "1 of 3 case(s)" in captured.out
    assert "FAILED broken:" in captured.err and "FAILED flat: PipelineError" in captured.err
    assert (out / "good" / "labels.nii.gz").is_file()
    summary = json.loads((out / "good" / "result.json").read_text())
    assert summary["pipeline"] == "vertebral-bodies-ct" and summary["mapping"] == "vertebral-bodies"


def test_process_without_installed_model_says_how_to_get_it(
        config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["process", str(tmp_path), "--pipeline", "vertebral-bodies-ct", "--out",
                 str(tmp_path / "o"), "--config", str(config_file)])
    assert code == 1 and "models pull vertebral-bodies-ct-m" in capsys.readouterr().err
    assert main(["process", str(tmp_path), "--pipeline", "nope", "--out", str(tmp_path / "o"),
                 "--config", str(config_file)]) == 1


class _BoxBodies(Pipeline):
    """Three box-shaped 'vertebral bodies' (L1–L3): a well-formed label map for the encoders.

    Random-weight nnU-Net output is speckle, which is no input for body-height measurements;
    this exercises ``process``'s DICOM wiring (load → pipeline → source grid → SEG/SR/preview).
    """

    name = "boxes"
    version = "1"
    models = ("vertebral-bodies-ct-m",)

    def run(self, volume: VolumeLike) -> PipelineResult:
        from converters.vocabulary import vertebral_bodies_ct

        array = np.zeros(sitk.GetArrayViewFromImage(volume.image).shape, np.uint8)
        for k, label in enumerate((13, 14, 15)):
            array[1 + 3 * k:3 + 3 * k, 4:14, 6:18] = label
        metadata = RunProvenance(self.name, self.version, self.model, "test", {})
        return PipelineResult(labelmap_like(array, volume.image), vertebral_bodies_ct(), metadata)


def test_process_dicom_folder_writes_seg_sr_preview_per_series(tmp_path: Path) -> None:
    import pydicom

    synthetic = pytest.importorskip("tests.synthetic")
    folder = tmp_path / "in"
    for i, name in enumerate(("first", "second")):
        series = synthetic.single_frame_series(name=name, shape=(10, 20, 24),
                                               spacing=(1.0, 1.0, 3.0), seed=i)
        synthetic.write_series(series, folder / name)
    (folder / "README").write_text("not DICOM")
    cases, skipped = find_cases(folder)
    assert len(cases) == 2 and not skipped
    runtime = NnUNetRuntime("cpu")
    pipeline = _BoxBodies(ModelStore(tmp_path / "models"), runtime)
    config = parse_config({})
    runner = CaseRunner(config.models, config.results, runtime=runtime)
    outcomes = process_cases(runner, cases, pipeline, tmp_path / "out", progress=False)
    assert all(o.ok for o in outcomes), [o.reason for o in outcomes]
    for outcome in outcomes:
        case = tmp_path / "out" / outcome.case.name
        modalities = {pydicom.dcmread(p).Modality for p in case.glob("*.dcm")}
        assert {"SEG", "SR"} <= modalities
        assert (case / "preview.png").is_file() and (case / "labels.nii.gz").is_file()
        assert json.loads((case / "result.json").read_text())["structures"] == [
            "body_L1", "body_L2", "body_L3"]


@pytest.mark.parametrize("results, seg_class, seg_syntax, modalities", [
    ({}, "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.1.2.1", {"SEG", "SR", "OT"}),
    ({"seg_type": "labelmap"}, "1.2.840.10008.5.1.4.1.1.66.7", "1.2.840.10008.1.2.5",
     {"SEG", "SR", "OT"}),
    ({"seg_type": "labelmap", "labelmap_compression": "none", "sr": False, "preview": False},
     "1.2.840.10008.5.1.4.1.1.66.7", "1.2.840.10008.1.2.1", {"SEG"}),
], ids=["binary", "labelmap-rle", "labelmap-plain-seg-only"])
def test_results_section_selects_what_the_case_runner_writes(
        tmp_path: Path, results: dict[str, object], seg_class: str, seg_syntax: str,
        modalities: set[str]) -> None:
    """``results.seg_type``, ``.labelmap_compression``, ``.sr`` and ``.preview`` reach the
    encoders through the one case runner (serve and process alike)."""
    import pydicom

    from dicomnode.run.batch import find_cases

    synthetic = pytest.importorskip("tests.synthetic")
    series = synthetic.single_frame_series(name="ct", shape=(10, 20, 24), spacing=(1.0, 1.0, 3.0))
    synthetic.write_series(series, tmp_path / "in")
    (case,), _ = find_cases(tmp_path / "in")
    runtime = NnUNetRuntime("cpu")
    config = parse_config({"results": results})
    runner = CaseRunner(config.models, config.results, runtime=runtime)
    summary = runner.run(case, _BoxBodies(ModelStore(tmp_path / "models"), runtime),
                         tmp_path / "out")
    objects = [pydicom.dcmread(p) for p in summary.outputs if p.suffix == ".dcm"]
    assert {ds.Modality for ds in objects} == modalities
    (seg,) = [ds for ds in objects if ds.Modality == "SEG"]
    assert (seg.SOPClassUID, seg.file_meta.TransferSyntaxUID) == (seg_class, seg_syntax)
    assert (tmp_path / "out" / "preview.png").exists() == ("OT" in modalities)


def test_every_results_key_reaches_the_encode_options() -> None:
    """Each ``results`` key of config.yaml lands in the field of ``EncodeOptions`` it names."""
    from dicomnode.run.case import encode_options

    results = parse_config({"results": {
        "seg_type": "labelmap", "labelmap_compression": "jpegls", "omit_empty_frames": False,
        "sr": False, "preview": False, "trabecular_erosion_mm": 1.5}}).results
    options = encode_options(results)
    assert (options.segmentation_type, options.labelmap_compression, options.omit_empty_frames,
            options.sr, options.preview, options.trabecular_erosion_mm) == (
        "LABELMAP", "JPEGLS", False, False, False, 1.5)
    defaults = encode_options(parse_config({}).results)
    assert (defaults.segmentation_type, defaults.labelmap_compression) == ("BINARY", "RLE")
