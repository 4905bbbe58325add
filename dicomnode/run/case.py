"""Run one case: a group of instances (or a NIfTI file) → load → segment → encode → write.

The one path from images to results, used by the node's workers (:mod:`dicomnode.run.worker`)
and by ``dicomnode process`` (:mod:`dicomnode.run.batch`). A case writes into its folder:

* ``labels.nii.gz`` — the label map on the volume grid (the pipeline's label values);
* the SEG, SR and preview objects (``NN_<Modality>.dcm``, ``preview.png``), for DICOM input
  only: a NIfTI file has no source instances to reference;
* ``result.json`` — :meth:`CaseSummary.as_json`, for people (the node never reads it back).

One :class:`CaseRunner` keeps each pipeline and the model runtime warm for every case.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dicomnode.config import ModelsConfig, ResultsConfig

if TYPE_CHECKING:
    import SimpleITK as sitk

    from converters.results import EncodeOptions
    from converters.volume import Volume
    from dicomnode.models.pipelines import Pipeline, PipelineResult
    from dicomnode.models.runtime import NnUNetRuntime

NIFTI_SUFFIXES = (".nii", ".nii.gz")


class CaseStep(StrEnum):
    """Where a run is; the values are the job states of the same name."""

    SEGMENTING = "segmenting"
    ENCODING = "encoding"


OnStep = Callable[[CaseStep], None]


@dataclass(frozen=True)
class Case:
    """One input: the files of one series (or one NIfTI file), and the Study/Series Instance
    UIDs the node lists the series under. Those differ from the files' own only when the
    files lack them (``dicomnode.grouping`` derives them); the results then reference the
    derived ones."""

    name: str
    kind: Literal["dicom", "nifti"]
    paths: tuple[Path, ...]
    study_instance_uid: str = ""
    series_instance_uid: str = ""


@dataclass(frozen=True)
class CaseSummary:
    """What a run produced, for the job record and ``process``'s report."""

    provenance: dict[str, Any]
    mapping: str
    structures: tuple[str, ...]
    outputs: tuple[Path, ...] = field(default_factory=tuple)

    def as_json(self) -> dict[str, Any]:
        return {**self.provenance, "mapping": self.mapping, "structures": list(self.structures),
                "outputs": [p.name for p in self.outputs]}


@dataclass
class NiftiVolume:
    """A NIfTI file read with SimpleITK (what nnU-Net's SimpleITKIO reads), for pipelines."""

    image: sitk.Image


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def safe_name(text: str) -> str:
    """A case or file name made of letters, digits, ``.``, ``_`` and ``-`` only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "case"


#: ``results.labelmap_compression`` → the encoders' name of it.
_COMPRESSION: dict[str, Literal["RLE", "JPEGLS", "NONE"]] = {
    "rle": "RLE", "jpegls": "JPEGLS", "none": "NONE"}


def encode_options(results: ResultsConfig) -> EncodeOptions:
    """The encoders' options from the ``results`` section of the configuration."""
    from converters.results import EncodeOptions

    seg_type: Literal["BINARY", "LABELMAP"] = (
        "LABELMAP" if results.seg_type == "labelmap" else "BINARY")
    return EncodeOptions(segmentation_type=seg_type,
                         labelmap_compression=_COMPRESSION[results.labelmap_compression],
                         omit_empty_frames=results.omit_empty_frames, sr=results.sr,
                         preview=results.preview,
                         trabecular_erosion_mm=results.trabecular_erosion_mm)


def fingerprint(case: Case) -> tuple[object, ...] | None:
    """What a case's volume depends on: its UIDs and each file's path, inode, size and
    modification time (a spool file is replaced by a rename, never rewritten in place), in
    the case's order. None when a file is gone."""
    try:
        files = tuple((str(p), st.st_ino, st.st_size, st.st_mtime_ns)
                      for p, st in ((p, p.stat()) for p in case.paths))
    except OSError:
        return None
    return (case.kind, case.study_instance_uid, case.series_instance_uid, files)


#: Seconds a job waits for the load ahead of its own series before it loads the files itself.
PREFETCH_WAIT = 300.0


@dataclass
class _Loaded:
    key: tuple[object, ...]
    done: threading.Event = field(default_factory=threading.Event)
    volume: Volume | NiftiVolume | None = None


class VolumeCache:
    """The one volume loaded ahead of its job (:meth:`CaseRunner.prefetch`), handed to the
    job whose case has the same :func:`fingerprint`, once. Any other case, a late instance
    included (one more file), misses and loads from the files. A job whose series is being
    loaded ahead waits for that load rather than reading the same files a second time, and
    only one thread loads a series ahead."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entry: _Loaded | None = None

    def begin(self, key: tuple[object, ...]) -> bool:
        """Mark the case of ``key`` as being loaded; False if it is (or was) already."""
        with self._lock:
            if self._entry is not None and self._entry.key == key:
                return False
            self._entry = _Loaded(key)
            return True

    def put(self, key: tuple[object, ...], volume: Volume | NiftiVolume | None) -> None:
        """Keep ``volume`` for the case of ``key``; None: its files did not load (not tried
        again while they stay the same)."""
        with self._lock:
            entry = self._entry
            if entry is None or entry.key != key:
                entry = self._entry = _Loaded(key)
            entry.volume = volume
            entry.done.set()

    def has(self, key: tuple[object, ...]) -> bool:
        """Whether the case of ``key`` was loaded (or is being loaded or was tried)."""
        with self._lock:
            return self._entry is not None and self._entry.key == key

    def take(self, case: Case, wait: float = PREFETCH_WAIT) -> Volume | NiftiVolume | None:
        """The cached volume if it is ``case``'s (it then leaves the cache; a load still in
        progress is waited for, up to ``wait`` seconds), else None. A volume of the same
        series from other files (a late instance came) is dropped; one of another series
        stays for its own job."""
        key = fingerprint(case)
        series = (case.kind, case.study_instance_uid, case.series_instance_uid)
        with self._lock:
            entry = self._entry
            if entry is None or (entry.key[:3] != series and entry.key != key):
                return None
            if entry.key != key or key is None:
                self._entry = None  # stale: the series has changed since
                return None
        if not entry.done.wait(wait):
            return None
        with self._lock:
            if self._entry is entry:
                self._entry = None
        return entry.volume  # None: it failed to load before; the job says why


class CaseRunner:
    """Runs cases with warm pipelines. Thread-safe: pipelines are built once under a lock and
    the runtime serialises network passes per device, so several cases can be in flight."""

    def __init__(self, models: ModelsConfig, results: ResultsConfig, *,
                 runtime: NnUNetRuntime | None = None, device: str | None = None):
        self.models = models
        self.results = results
        self.device = device
        self._runtime = runtime
        self._pipelines: dict[tuple[str, str | None], Pipeline] = {}
        self._lock = threading.Lock()
        self.volumes = VolumeCache()

    @property
    def runtime(self) -> NnUNetRuntime:
        from dicomnode.models.runtime import NnUNetRuntime

        with self._lock:
            if self._runtime is None:
                self._runtime = NnUNetRuntime.from_config(self.models, self.device)
            return self._runtime

    def warm_folders(self) -> list[Path]:
        """The model folders loaded in this process now (none before the first job: asking
        does not start the runtime)."""
        with self._lock:
            runtime = self._runtime
        return [folder.path for folder in runtime.loaded()] if runtime is not None else []

    def pipeline(self, name: str, model: str | None = None) -> Pipeline:
        """The pipeline ``name`` (running ``model``, else the configured or default one)."""
        from dicomnode.models.pipelines import create_pipeline

        runtime = self.runtime
        with self._lock:
            key = (name, model)
            if key not in self._pipelines:
                self._pipelines[key] = create_pipeline(name, self.models, runtime, model)
            return self._pipelines[key]

    def run_pipeline(self, pipeline: str, case: Case, out: Path,
                     on_step: OnStep | None = None) -> CaseSummary:
        """:meth:`run` with the warm pipeline named ``pipeline`` (its configured model)."""
        runner = self.pipeline(pipeline)
        runner.store.require(runner.model)  # a missing model fails before reading pixels
        return self.run(case, runner, out, on_step=on_step)

    def run(self, case: Case, pipeline: Pipeline, out: Path, *, encode: bool = True,
            on_step: OnStep | None = None) -> CaseSummary:
        """Segment ``case`` with ``pipeline`` and write its results into ``out``."""
        import numpy as np
        import SimpleITK as sitk

        volume = self.volumes.take(case) or load(case)
        if on_step:
            on_step(CaseStep.SEGMENTING)
        result = pipeline.run(volume)
        if on_step:
            on_step(CaseStep.ENCODING)
        out.mkdir(parents=True, exist_ok=True)
        outputs = [out / "labels.nii.gz"]
        sitk.WriteImage(result.labelmap, str(outputs[0]), useCompression=True)
        if encode and case.kind == "dicom":
            outputs += encode_outputs(out, volume, result, encode_options(self.results))
        array = np.asarray(sitk.GetArrayViewFromImage(result.labelmap))
        summary = CaseSummary(
            provenance=result.metadata.as_dict(), mapping=result.mapping.name,
            structures=tuple(s.key for s in result.mapping.structures_present(array)),
            outputs=(*outputs, out / "result.json"))
        (out / "result.json").write_text(json.dumps(summary.as_json(), indent=2, default=str),
                                         encoding="utf-8")
        return summary

    def prefetch(self, case: Case) -> bool:
        """Load ``case``'s volume now, for the job that will run it (a series that has been
        quiet for a while but is not complete yet): the job then starts segmenting without
        reading its files. True if it was loaded (False: cached already, or unreadable; the
        job will say why)."""
        key = fingerprint(case)
        if key is None or not self.volumes.begin(key):
            return False
        volume: Volume | NiftiVolume | None = None
        try:
            volume = load(case)
        except Exception:  # noqa: BLE001 - the job loads it again and records the reason
            pass
        finally:
            self.volumes.put(key, volume)  # also wakes a job waiting for it
        return volume is not None

    def warm_up_steps(self) -> list[Callable[[], None]]:
        """The imports and table loads the first job would otherwise pay for (a second or two
        for the encoders on a small machine, several for torch and nnU-Net), as separate steps
        the node runs between associations (:meth:`dicomnode.service.node.Node._warm_up`)."""

        def encoders() -> None:
            import converters.volume  # noqa: F401 - SimpleITK, the pixel decoders

            # highdicom reads its IOD and module tables (JSON) on the first SEG it builds,
            # ~1 s on a small machine: build a throw-away one now rather than in the first job.
            from dicomnode.run.warm_up import encode_tiny_series

            encode_tiny_series(encode_options(self.results))

        def runtime() -> None:
            self.runtime.device  # noqa: B018 - resolving it imports torch (and initialises CUDA)

        def nnunet() -> None:
            import nnunetv2.inference.predict_from_raw_data  # noqa: F401

            # what loading the first model imports (matplotlib, seaborn: ~1 s)
            import nnunetv2.training.nnUNetTrainer.nnUNetTrainer  # noqa: F401

        return [encoders, runtime, nnunet]


def load(case: Case) -> Volume | NiftiVolume:
    """The case's volume. DICOM datasets without Study/Series Instance UIDs get the case's,
    so the SEG and SR reference the series as the node lists it."""
    if case.kind == "nifti":
        import SimpleITK as sitk

        return NiftiVolume(sitk.ReadImage(str(case.paths[0])))
    from converters.volume import load_series

    volume = load_series(list(case.paths))
    for dataset in volume.datasets:
        if not dataset.get("StudyInstanceUID") and case.study_instance_uid:
            dataset.StudyInstanceUID = case.study_instance_uid
        if not dataset.get("SeriesInstanceUID") and case.series_instance_uid:
            dataset.SeriesInstanceUID = case.series_instance_uid
    return volume


def encode_outputs(out: Path, volume: Volume | NiftiVolume, result: PipelineResult,
                   options: EncodeOptions) -> list[Path]:
    """SEG(s), SR and preview of a DICOM case: label map(s) → source frames → encoders."""
    from converters.results.encode import encode_results
    from converters.volume import Volume, to_source_grid

    if not isinstance(volume, Volume):
        raise TypeError("only a DICOM volume has source instances to encode against")
    parts = result.all  # SPINEPS: instances and subregions, each its own SEG series
    grids = [to_source_grid(volume, part.labelmap) for part in parts]
    labels = None if len(parts) == 1 else [grid.array for grid in grids]
    mappings = result.mapping if len(parts) == 1 else [part.mapping for part in parts]
    png = out / "preview.png"
    # image=volume: intensities (HU on CT) come from the volume already in memory, mapped
    # onto the source frames, rather than from decoding the files again.
    datasets = encode_results(grids[0], labels, mappings, result.metadata.for_encoders(),
                              options, image=volume, png_path=png)
    paths = [png] if png.exists() else []
    for index, dataset in enumerate(datasets):
        path = out / f"{index:02d}_{safe_name(str(dataset.get('Modality', 'OBJ')))}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
