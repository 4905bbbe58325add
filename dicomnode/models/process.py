"""``dicomnode process``: run a pipeline over a folder of DICOM files or a NIfTI file, offline.

Each series (or NIfTI file) is a *case*. A case writes ``<out>/<case>/``:

* ``labels.nii.gz`` — the label map on the volume grid (the pipeline's label values);
* the SEG, SR and preview objects from ``converters.encode_results`` (``*.dcm``, ``preview.png``),
  for DICOM input only: a NIfTI file has no source instances to reference;
* ``result.json`` — pipeline metadata and the structures found.

A case that fails is reported with its reason and the others still run; the command's exit status
is then non-zero. One :class:`~dicomnode.models.runtime.NnUNetRuntime` serves every case, so the
model is loaded once.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

from dicomnode.models.pipelines.base import Pipeline, PipelineResult

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class Case:
    """One input volume: a DICOM series (its files) or a NIfTI file."""

    name: str
    kind: Literal["dicom", "nifti"]
    paths: tuple[Path, ...]


@dataclass
class CaseOutcome:
    case: Case
    ok: bool
    reason: str = ""
    outputs: list[Path] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class NiftiVolume:
    """A NIfTI file read with SimpleITK (what nnU-Net's SimpleITKIO reads), for pipelines."""

    image: Any
    metadata: dict[str, Any] = field(default_factory=dict)


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "case"


def find_cases(source: Path) -> tuple[list[Case], list[CaseOutcome]]:
    """Cases under ``source``; files that are neither DICOM nor NIfTI are skipped.

    DICOM files are grouped by Series Instance UID (the loader then splits or rejects stacks).
    Returns the cases and the failures found while reading headers.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    if source.is_file():
        if is_nifti(source):
            return [Case(_safe(source.name.split(".nii")[0]), "nifti", (source,))], []
        files: Iterable[Path] = [source]
    elif source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file())
    else:
        raise FileNotFoundError(f"{source} does not exist")

    series: dict[str, list[Path]] = defaultdict(list)
    cases: list[Case] = []
    failures: list[CaseOutcome] = []
    for path in files:
        if is_nifti(path):
            cases.append(Case(_safe(path.name.split(".nii")[0]), "nifti", (path,)))
            continue
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True,
                                     specific_tags=["SeriesInstanceUID"])
        except (InvalidDicomError, OSError, ValueError):
            continue  # DICOMDIR readers, thumbnails, notes…: not images
        uid = str(header.get("SeriesInstanceUID", "") or "")
        if not uid:
            failures.append(CaseOutcome(Case(_safe(path.name), "dicom", (path,)), False,
                                        f"{path}: no Series Instance UID"))
            continue
        series[uid].append(path)
    cases.extend(Case(_safe(uid), "dicom", tuple(paths)) for uid, paths in series.items())
    return cases, failures


def _load(case: Case) -> Any:
    if case.kind == "nifti":
        import SimpleITK as sitk
        return NiftiVolume(sitk.ReadImage(str(case.paths[0])))
    import converters
    return converters.load_series(list(case.paths))


def write_result(case_dir: Path, volume: Any, result: PipelineResult, encode: bool) -> list[Path]:
    import numpy as np
    import SimpleITK as sitk

    case_dir.mkdir(parents=True, exist_ok=True)
    outputs = [case_dir / "labels.nii.gz"]
    sitk.WriteImage(result.labelmap, str(outputs[0]), useCompression=True)
    if encode:
        outputs += encode_outputs(case_dir, volume, result)
    array = sitk.GetArrayViewFromImage(result.labelmap)
    summary = {
        **result.metadata.as_dict(),
        "mapping": result.mapping.name,
        "structures": [s.key for s in result.mapping.structures_present(np.asarray(array))],
        "outputs": [p.name for p in outputs],
    }
    (case_dir / "result.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return outputs + [case_dir / "result.json"]


def encode_outputs(case_dir: Path, volume: Any, result: PipelineResult) -> list[Path]:
    """SEG, SR and preview of a DICOM case: label map → source frames → ``converters.encode_results``."""
    import converters

    # A pipeline with overlapping label maps (SPINEPS: instances and subregions) returns them all
    # in ``result.all``; each becomes its own SEG series.
    parts = getattr(result, "all", (result,))
    grids = [converters.to_source_grid(volume, part.labelmap) for part in parts]
    labels = None if len(parts) == 1 else [grid.array for grid in grids]
    mappings = result.mapping if len(parts) == 1 else [part.mapping for part in parts]
    png = case_dir / "preview.png"
    # image=volume: intensities (HU on CT) come from the volume already in memory, mapped
    # onto the source frames, rather than from decoding the files again.
    datasets = converters.encode_results(grids[0], labels, mappings, result.metadata.for_encoders(),
                                         image=volume, png_path=png)
    paths = [png] if png.exists() else []
    for index, dataset in enumerate(datasets):
        kind = _safe(str(getattr(dataset, "Modality", "OBJ")))
        path = case_dir / f"{index:02d}_{kind}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _run_case(case: Case, pipeline: Pipeline, out: Path, encode: bool) -> CaseOutcome:
    start = time.perf_counter()
    try:
        volume = _load(case)
        result = pipeline.run(volume)
        outputs = write_result(out / case.name, volume, result, encode and case.kind == "dicom")
        return CaseOutcome(case, True, outputs=outputs, seconds=time.perf_counter() - start)
    except Exception as exc:  # one bad series must not stop a cohort run; reported per case
        return CaseOutcome(case, False, f"{type(exc).__name__}: {exc}",
                           seconds=time.perf_counter() - start)


def process_cases(cases: list[Case], pipeline: Pipeline, out: Path, *, encode: bool = True,
                  progress: bool = True, workers: int = 2) -> list[CaseOutcome]:
    """Run ``pipeline`` on each case, writing its outputs under ``out``; never stops at a failure.

    ``workers`` cases are in flight at once: while one is on the device (the runtime's lock lets
    one network pass run at a time), the next is read, decoded and preprocessed, and the previous
    one resampled back and encoded. Outcomes come back in the order of ``cases``.
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="case") as pool, \
            tqdm(total=len(cases), desc=pipeline.name, unit="case", disable=not progress) as bar:
        futures = {pool.submit(_run_case, case, pipeline, out, encode): i for i, case in enumerate(cases)}
        outcomes: list[CaseOutcome | None] = [None] * len(cases)
        for future in as_completed(futures):
            outcomes[futures[future]] = future.result()
            bar.update()
    return [o for o in outcomes if o is not None]
