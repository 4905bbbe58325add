"""Label map → DICOM SEG: our writer vs dcmqi's ``itkimage2segimage``.

The input: a synthetic axial CT series of 320 slices of 512 × 512 (0.7 × 0.7 × 1 mm,
uncompressed, written once to a temporary folder) and a spine-like label map on it with
24 vertebrae, 23 discs, spinal cord and canal (49 labels; TotalSpineSeg values). Both tools
write a BINARY SEG (Explicit VR Little Endian, without empty frames), then a LABELMAP SEG
(ours RLE Lossless, the node's default; dcmqi uncompressed), from the same label map and the
same source files; dcmqi reads the label map from NRRD and its metadata JSON (generated from
our vocabulary), we get the array and the source headers. Each figure is timed from reading
the source headers to the SEG file on disk, as wall and CPU (user + system) seconds:
"fresh process" runs ours in a new interpreter (imports included) like dcmqi; "warm
process" runs it again in the benchmark's own process after an untimed first call (a node
that has written a SEG before); dcmqi's figure is its process either way. The ``--runs``
runs interleave ours and dcmqi and report medians. Peak RSS is the fresh process's
high-water mark (ru_maxrss), imports included.

    .venv/bin/python benchmarks/encode_seg.py [--json PATH] [--keep DIR] [--runs N]
        [--highdicom-path]

``--highdicom-path`` times the writer's highdicom path instead of converters/seg/fast.py
(the figures before it). ``--json`` writes a list of {"name", "ours", "reference", "unit",
"ratio"}; ratio is ours / reference (below 1 is better for us).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.report import report  # noqa: E402

SHAPE = (320, 512, 512)  # slices, rows, columns
SPACING = (1.0, 0.7, 0.7)  # slice, row, column (mm)
PIPELINE_ARGS = ("totalspineseg", "Dataset102_TotalSpineSeg_step2", "r20241115")


def label_map():
    """TotalSpineSeg-style labels: alternating vertebra / disc slabs, cord inside canal."""
    import numpy as np

    from converters.vocabulary import totalspineseg

    nz, ny, nx = SHAPE
    labels = np.zeros(SHAPE, np.uint8)
    z, y, x = np.ogrid[:nz, :ny, :nx]
    mapping = totalspineseg()
    by_key = {k: v for v, k in mapping.labels.items()}
    levels = ([f"C{i}" for i in range(2, 8)] + [f"T{i}" for i in range(1, 13)]
              + [f"L{i}" for i in range(1, 6)])
    body = (np.abs(y - 230) < 45) & (np.abs(x - 256) < 40)
    top = 4
    for i, level in enumerate(levels):  # 23 levels × 13 slices = 299 slices
        labels[top:top + 10][np.broadcast_to(body, (10, ny, nx))] = by_key[f"vertebra_{level}"]
        lower = levels[i + 1] if i + 1 < len(levels) else "S1"
        disc = by_key[f"disc_{level}_{lower}"]
        labels[top + 10:top + 13][np.broadcast_to(body, (3, ny, nx))] = disc
        top += 13
    # 24th vertebra
    labels[top:top + 10][np.broadcast_to(body, (10, ny, nx))] = by_key["vertebra_C1"]
    canal = (y - 300) ** 2 + (x - 256) ** 2 < 14**2
    cord = (y - 300) ** 2 + (x - 256) ** 2 < 6**2
    labels[:, canal[0]] = by_key["spinal_canal"]
    labels[:, cord[0]] = by_key["spinal_cord"]
    return labels, mapping


def write_sources(folder: Path) -> None:
    import numpy as np

    from tests import synthetic

    rows, cols = SHAPE[1:]
    stored = np.full(SHAPE, 1000, np.int64)  # constant CT value; the encoders ignore pixels
    syn = synthetic.single_frame_series(
        name="encode_seg_bench", shape=SHAPE, spacing=(SPACING[2], SPACING[1], SPACING[0]),
        origin=(-180.0, -180.0, -400.0), stored=stored, window=None)
    for i, ds in enumerate(syn.datasets):
        ds.save_as(folder / f"{i:04d}.dcm", enforce_file_format=True)


def run_ours(sources: Path, out: Path, labels_path: Path, seg_type: str,
             highdicom_path: bool = False) -> None:
    """Read the source headers and the label map, write the SEG to ``out``."""
    import numpy as np
    import pydicom

    from converters.results import EncodeOptions, PipelineMetadata
    from converters.seg import build_segmentation, writer
    from converters.vocabulary import totalspineseg

    writer.FAST_PATH = not highdicom_path
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(sources.iterdir())]
    normal = np.cross(*np.reshape(datasets[0].ImageOrientationPatient, (2, 3)))
    datasets.sort(key=lambda d: float(normal @ np.asarray(d.ImagePositionPatient, float)))
    labels, mapping = np.load(labels_path), totalspineseg()
    built = build_segmentation(datasets, labels, mapping, PipelineMetadata(*PIPELINE_ARGS),
                               EncodeOptions(segmentation_type=seg_type))  # type: ignore[arg-type]
    assert built is not None
    built[0].save_as(out)


def dcmqi_inputs(folder: Path, sources: Path, labels=None, mapping=None,
                 spacing: tuple[float, float, float] = SPACING) -> tuple[Path, Path]:
    """NRRD label map and metadata JSON for itkimage2segimage, from the same labels
    (default: :func:`label_map` on the benchmark's grid; ``spacing`` slice, row, column mm;
    ``labels[0]`` is the source image lowest along the slice normal)."""
    import numpy as np
    import pydicom
    import SimpleITK as sitk

    if labels is None:
        labels, mapping = label_map()
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sources.iterdir()]
    normal = np.cross(*np.reshape(headers[0].ImageOrientationPatient, (2, 3)))
    first = min(headers, key=lambda d: float(normal @ np.asarray(d.ImagePositionPatient, float)))
    img = sitk.GetImageFromArray(labels)
    img.SetSpacing((spacing[2], spacing[1], spacing[0]))
    img.SetOrigin([float(v) for v in first.ImagePositionPatient])
    iop = np.asarray(first.ImageOrientationPatient, float)
    img.SetDirection(tuple(np.column_stack([iop[:3], iop[3:], np.cross(iop[:3], iop[3:])]).ravel()))
    nrrd = folder / "labels.nrrd"
    structures = mapping.structures_present(labels)
    relabelled = mapping.to_segment_numbers(labels, structures)
    img2 = sitk.GetImageFromArray(relabelled)
    img2.CopyInformation(img)
    sitk.WriteImage(img2, str(nrrd))

    def code(c):
        return {"CodeValue": c.value, "CodingSchemeDesignator": c.scheme_designator,
                "CodeMeaning": c.meaning}

    meta = {
        "ContentCreatorName": "dicomnode", "ClinicalTrialSeriesID": "1",
        "ClinicalTrialTimePointID": "1", "ClinicalTrialCoordinatingCenterName": "none",
        "SeriesDescription": "dcmqi SEG", "SeriesNumber": "300", "InstanceNumber": "1",
        "segmentAttributes": [[
            {"labelID": n, "SegmentLabel": s.label, "SegmentDescription": s.label,
             "SegmentAlgorithmType": "AUTOMATIC", "SegmentAlgorithmName": PIPELINE_ARGS[0],
             "SegmentedPropertyCategoryCodeSequence": code(s.category),
             "SegmentedPropertyTypeCodeSequence": code(s.type),
             "recommendedDisplayRGBValue": list(s.rgb)}
            for n, s in enumerate(structures, start=1)
        ]],
    }
    meta_path = folder / "meta.json"
    meta_path.write_text(json.dumps(meta))
    np.save(folder / "labels.npy", labels)
    return nrrd, meta_path


def measured(cmd: list[str]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (bytes) of ``cmd`` run in a
    fresh wrapper process."""
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
               "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
               "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
               "print(time.perf_counter() - t, u.ru_utime + u.ru_stime, u.ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], check=True, capture_output=True,
                         text=True, cwd=REPO).stdout.split()
    return float(out[0]), float(out[1]), int(out[2]) * 1024


def warm(sources: Path, out: Path, labels: Path, seg_type: str, highdicom_path: bool
         ) -> tuple[float, float]:
    """Wall and CPU seconds of :func:`run_ours` in this process (already warmed up)."""
    t, c = time.perf_counter(), time.process_time()
    run_ours(sources, out, labels, seg_type, highdicom_path)
    return time.perf_counter() - t, time.process_time() - c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument("--runs", type=int, default=5, help="interleaved runs (median)")
    parser.add_argument("--highdicom-path", action="store_true",
                        help="time the writer's highdicom path (the figures before fast.py)")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_ours(*(Path(p) for p in args.worker[:3]), args.worker[3], args.highdicom_path)
        return
    work = args.keep or Path(tempfile.mkdtemp(prefix="encode_seg_"))
    sources = work / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    if not any(sources.iterdir()):
        write_sources(sources)
    nrrd, meta = dcmqi_inputs(work, sources)
    for f in sorted(sources.iterdir()):  # warm the page cache for both sides
        f.read_bytes()
    tool = Path(sys.executable).parent / "itkimage2segimage"
    labels = work / "labels.npy"
    path_flag = ["--highdicom-path"] if args.highdicom_path else []
    # (our type, dcmqi type): ours LABELMAP is RLE-compressed (the node's default), dcmqi's
    # is uncompressed
    types = (("BINARY", "binary"), ("LABELMAP", "labelmap"))
    for ours_type, ref_type in types:  # warm-up of this process, untimed
        run_ours(sources, work / f"ours-{ref_type}.dcm", labels, ours_type, args.highdicom_path)
    figures: dict[str, dict[str, list[float]]] = {t: defaultdict(list) for t, _ in types}
    for _ in range(args.runs):  # ours and dcmqi interleaved: the machine's load hits both
        for ours_type, ref_type in types:
            f = figures[ours_type]
            ours_out, ref_out = work / f"ours-{ref_type}.dcm", work / f"dcmqi-{ref_type}.dcm"
            for key, value in zip(("fresh wall", "fresh cpu", "fresh rss"), measured(
                    [sys.executable, __file__, *path_flag, "--worker", str(sources),
                     str(ours_out), str(labels), ours_type]), strict=True):
                f[key].append(value)
            for key, value in zip(("dcmqi wall", "dcmqi cpu", "dcmqi rss"), measured(
                    [str(tool), "--inputImageList", str(nrrd), "--inputDICOMDirectory",
                     str(sources), "--outputDICOM", str(ref_out), "--inputMetadata", str(meta),
                     "--segmentationType", ref_type, "--skip", "1"]), strict=True):
                f[key].append(value)
            for key, value in zip(("warm wall", "warm cpu"), warm(
                    sources, ours_out, labels, ours_type, args.highdicom_path), strict=True):
                f[key].append(value)
    rows = []
    for ours_type, ref_type in types:
        f = {k: float(np.median(v)) for k, v in figures[ours_type].items()}
        what = f"{ours_type}, {SHAPE[0]}×{SHAPE[1]}², 49 labels"
        for process in ("fresh", "warm"):
            for clock, unit in (("wall", "s"), ("cpu", "s CPU")):
                rows.append({"name": f"SEG write {clock} time, {process} process ({what})",
                             "ours": round(f[f"{process} {clock}"], 3),
                             "reference": round(f[f"dcmqi {clock}"], 3), "unit": unit})
        rows += [
            {"name": f"SEG write peak RSS, fresh process ({ours_type})",
             "ours": round(f["fresh rss"] / 2**20, 1),
             "reference": round(f["dcmqi rss"] / 2**20, 1), "unit": "MiB"},
            {"name": f"SEG file size ({ours_type})",
             "ours": round(os.path.getsize(work / f"ours-{ref_type}.dcm") / 2**20, 2),
             "reference": round(os.path.getsize(work / f"dcmqi-{ref_type}.dcm") / 2**20, 2),
             "unit": "MiB"},
        ]
    report(rows, args.json, reference_label="dcmqi")


if __name__ == "__main__":
    main()
