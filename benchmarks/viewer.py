"""OHIF: seconds from opening the viewer to the first image and to the SEG drawn, our SEG vs
dcmqi's ``itkimage2segimage`` SEG of the same label map, in one run.

The input: the aorta CT of ``benchmarks/load_series.py`` resampled to 334 axial slices of
454 rows × 376 columns (a matrix both writers' 1-bit frames fill whole bytes on) in a local
viewer stack (Orthanc + OHIF behind nginx, as ``dicomnode viewer start`` runs it, on
free ports), and a spine-like label map on it (bone above 250 HU in the spine's box, cut into
vertebra slabs of 30 mm). Both SEGs are BINARY without empty frames, in the same study. Each
measurement is a fresh browser page (Debian's Chromium, software WebGL): navigate to the study,
wait for the first image, double-click the SEG, accept hydration, wait until its segments are
listed and its labelmap is on the viewport.

    .venv/bin/python benchmarks/viewer.py [--json PATH] [--repeat N]

``--json`` writes a list of {"name", "ours", "reference", "unit", "ratio"}; ratio is
ours / reference (below 1 is better for us). Figures are medians over ``--repeat`` pages.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.encode_seg import PIPELINE_ARGS, dcmqi_inputs  # noqa: E402
from benchmarks.load_series import NIFTI  # noqa: E402
from benchmarks.report import report  # noqa: E402

SIZE = (376, 454, 334)  # columns, rows, slices


def write_ct(folder: Path) -> None:
    """The aorta CT resampled onto SIZE over its own extent, as a 12-bit CT series."""
    import numpy as np
    import SimpleITK as sitk

    from tests import synthetic

    image = sitk.DICOMOrient(sitk.ReadImage(str(NIFTI)), "LPS")
    spacing = [sp * (n - 1) / (m - 1) for sp, n, m in
               zip(image.GetSpacing(), image.GetSize(), SIZE, strict=True)]
    image = sitk.Resample(image, SIZE, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                          spacing, image.GetDirection(), -1024.0, sitk.sitkInt16)
    stored = np.clip(sitk.GetArrayFromImage(image).astype(np.int64) + 1024, 0, 4095)
    synthetic.write_series(synthetic.single_frame_series(
        name="viewer_bench_ct", shape=stored.shape, spacing=tuple(spacing),
        direction=np.asarray(image.GetDirection()).reshape(3, 3), origin=image.GetOrigin(),
        stored=stored), folder)


def spine_labels(datasets, slice_mm: float):  # type: ignore[no-untyped-def]
    """Vertebra slabs (T12, L1, …) of bone > 250 HU in the middle third of the image."""
    import numpy as np

    from converters.vocabulary import vertebral_bodies_ct

    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                   for ds in datasets])
    labels = np.zeros(hu.shape, np.uint8)
    nz, ny, nx = hu.shape
    box = (slice(None), slice(ny // 3, 2 * ny // 3), slice(nx // 3, 2 * nx // 3))
    bone = np.zeros(hu.shape, bool)
    bone[box] = hu[box] > 250
    mapping = vertebral_bodies_ct()
    values = sorted(mapping.labels)
    slab = int(30 / slice_mm)
    for i, z in enumerate(range(0, nz, slab)):
        labels[z:z + slab][bone[z:z + slab]] = values[i % len(values)]
    return labels, mapping


def post(url: str, data: bytes) -> None:
    request = urllib.request.Request(url, data=data, method="POST")
    urllib.request.urlopen(request, timeout=300).read()


def dataset_bytes(ds) -> bytes:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def time_page(browser, stack, study: str, description: str, count: int,  # type: ignore[no-untyped-def]
              artefacts: Path) -> tuple[float, float]:
    from tests.viewer.browser import Ohif

    page = Ohif(browser, stack.url, artefacts)
    try:
        first = page.open_study(study)
        page.load("SEG", description)
        page.wait_for_segments(count)
        drawn = page.wait_for_labelmap()
        page.screenshot(description.replace(" ", "_"))
        assert not page.console_errors, page.console_errors
        return first, drawn
    except Exception:
        page.screenshot(description.replace(" ", "_") + "-failed")
        print("console errors:", page.console_errors[:5], "failed requests:",
              page.failed_requests[:5], file=sys.stderr)
        raise
    finally:
        page.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args()

    import numpy as np
    import pydicom

    from converters.results import EncodeOptions, PipelineMetadata
    from converters.seg import build_segmentation
    from dicomnode.viewer import ViewerStack, install_ohif
    from tests.orthanc import free_port
    from tests.viewer.browser import chromium

    work = args.keep or Path(tempfile.mkdtemp(prefix="viewer_bench_"))
    sources = work / "ct"
    if not sources.exists():
        write_ct(sources)
    datasets = [pydicom.dcmread(p) for p in sources.iterdir()]
    normal = np.cross(*np.reshape(datasets[0].ImageOrientationPatient, (2, 3)))
    datasets.sort(key=lambda d: float(normal @ np.asarray(d.ImagePositionPatient, float)))
    slice_mm = float(np.linalg.norm(np.subtract(datasets[1].ImagePositionPatient,
                                                datasets[0].ImagePositionPatient)))
    labels, mapping = spine_labels(datasets, slice_mm)
    ours, _ = build_segmentation(datasets, labels, mapping, PipelineMetadata(*PIPELINE_ARGS),
                                 EncodeOptions(segmentation_type="BINARY"))
    ours.SeriesDescription = "ours BINARY"
    spacing = (slice_mm, *(float(v) for v in datasets[0].PixelSpacing))
    nrrd, meta = dcmqi_inputs(work, sources, labels, mapping, spacing)  # type: ignore[arg-type]
    ref_path = work / "dcmqi.dcm"
    subprocess.run([str(Path(sys.executable).parent / "itkimage2segimage"), "--inputImageList",
                    str(nrrd), "--inputDICOMDirectory", str(sources), "--outputDICOM",
                    str(ref_path), "--inputMetadata", str(meta), "--segmentationType", "binary",
                    "--skip", "1"], check=True, stdout=subprocess.DEVNULL)
    reference = pydicom.dcmread(ref_path)
    reference.SeriesDescription = "dcmqi BINARY"
    count = len(ours.SegmentSequence)
    assert len(reference.SegmentSequence) == count

    dist = REPO / "var" / "viewer" / "ohif"
    if not (dist / "index.html").exists():
        dist = install_ohif(work / "ohif")
    shutil.rmtree(work / "stack", ignore_errors=True)  # a kept folder: a fresh Orthanc
    stack = ViewerStack(folder=work / "stack", ohif_dist=dist, viewer_port=free_port(),
                        dicom_port=free_port(), http_port=free_port())
    stack.start()
    try:
        for ds in [*datasets, ours, reference]:
            post(f"{stack.orthanc_url}/instances", dataset_bytes(ds))
        study = str(datasets[0].StudyInstanceUID)
        times: dict[str, list[tuple[float, float]]] = {"ours": [], "dcmqi": []}
        with chromium() as browser:
            for _ in range(args.repeat):
                for side, description in (("ours", "ours BINARY"), ("dcmqi", "dcmqi BINARY")):
                    times[side].append(time_page(browser, stack, study, description, count,
                                                 work / "screenshots"))
    finally:
        stack.stop()

    def median(side: str, index: int) -> float:
        return statistics.median(t[index] for t in times[side])

    what = f"{len(datasets)}-slice CT {datasets[0].Rows}×{datasets[0].Columns}, {count} segments"
    rows = [
        {"name": f"open → first image ({what})", "ours": median("ours", 0),
         "reference": median("dcmqi", 0), "unit": "s"},
        {"name": f"open → SEG drawn ({what})", "ours": median("ours", 1),
         "reference": median("dcmqi", 1), "unit": "s"},
        {"name": "SEG file size", "ours": len(dataset_bytes(ours)) / 2**20,
         "reference": ref_path.stat().st_size / 2**20, "unit": "MiB"},
    ]
    report(rows, args.json, reference_label="dcmqi")


if __name__ == "__main__":
    main()
