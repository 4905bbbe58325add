"""Series → volume: our loader vs SimpleITK's ImageSeriesReader (GDCM) vs dcm2niix.

The series: ``../shared/data/totalsegmentator-ref/aorta_report/example_ct.nii.gz`` (CTA,
233×167×191 at 1.5 mm) resampled along z to 0.9 mm (318 slices, so the series has ≥ 300)
and written as an uncompressed single-frame CT series (12-bit, rescale −1024) in shuffled
file order. Each tool runs once, in its own process, on a warm page cache (the files are
read once beforehand), and includes everything from file names to a volume in memory:
sorting included; dcm2niix also writes its NIfTI (uncompressed, to a tmpfs-backed folder
when there is one). Peak RSS is the process's own high-water mark (ru_maxrss), imports
included (VmHWM of the process; ru_maxrss for dcm2niix).

    .venv/bin/python benchmarks/load_series.py [--series DIR] [--json PATH] [--repeat N]

CPU time (user + system, all threads) is reported too: on a shared machine it varies less
than wall time.

``--json`` writes a list of {"name", "ours", "reference", "unit", "ratio"}; ratio is
ours / reference (below 1 is better for us).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.report import report  # noqa: E402
from tests.shared_data import SHARED_DATA  # noqa: E402

NIFTI = SHARED_DATA / "totalsegmentator-ref" / "aorta_report" / "example_ct.nii.gz"


def write_series(folder: Path, slice_mm: float = 0.9, source: Path = NIFTI,
                 pixel_mm: float | None = None, name: str = "aorta_ct") -> int:
    """Write ``source`` (a CT in HU) resampled to ``slice_mm`` slices (and ``pixel_mm`` pixels,
    when given) into ``folder`` as an uncompressed single-frame CT series (12-bit, rescale
    −1024) in shuffled file order; returns the slice count."""
    import numpy as np
    import SimpleITK as sitk

    sys.path.insert(0, str(REPO))
    from tests import synthetic

    image = sitk.DICOMOrient(sitk.ReadImage(str(source)), "LPS")
    size = list(image.GetSize())
    spacing = list(image.GetSpacing())
    for axis, mm in ((0, pixel_mm), (1, pixel_mm), (2, slice_mm)):
        if mm:
            size[axis] = int((size[axis] - 1) * spacing[axis] / mm) + 1
            spacing[axis] = mm
    image = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                          spacing, image.GetDirection(), -1024.0, sitk.sitkInt16)
    hu = sitk.GetArrayFromImage(image)
    stored = np.clip(hu.astype(np.int64) + 1024, 0, 4095)
    syn = synthetic.single_frame_series(
        name=name, shape=stored.shape, spacing=tuple(spacing),
        direction=np.asarray(image.GetDirection()).reshape(3, 3), origin=image.GetOrigin(),
        stored=stored)
    synthetic.write_series(synthetic.shuffled(syn), folder)
    return stored.shape[0]


def run_one(tool: str, folder: Path) -> dict[str, float]:
    """Load ``folder`` with ``tool`` in this process; seconds (imports excluded) and peak
    RSS (MiB, imports included)."""
    if tool == "ours":
        sys.path.insert(0, str(REPO))
        from converters import load_series

        _ = load_series.__call__  # the import is lazy: resolve it before the clock starts
        from converters import volume  # noqa: F401
    elif tool == "simpleitk":
        import SimpleITK as sitk
    start, cpu_start = time.perf_counter(), time.process_time()
    if tool == "ours":
        files = sorted(str(p) for p in folder.iterdir())
        volume = load_series(files)
        size = volume.image.GetSize()
    elif tool == "simpleitk":
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        size = reader.Execute().GetSize()
    elif tool == "dcm2niix":
        exe = shutil.which("dcm2niix") or str(Path(sys.executable).with_name("dcm2niix"))
        out = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        subprocess.run([exe, "-z", "n", "-b", "n", "-o", out, str(folder)], check=True,
                       capture_output=True)
        shutil.rmtree(out)
        size = ()
    else:
        raise ValueError(tool)
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu_start  # all threads of this process
    if tool == "dcm2niix":
        # Its launcher (this process) is a bare interpreter, so the high-water mark that
        # Linux carries over fork/exec is small next to dcm2niix's own.
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        rss, cpu = usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime
    else:
        rss = _own_peak_mib()
    return {"seconds": seconds, "cpu_seconds": cpu, "rss_mib": rss, "size": list(size)}


def _own_peak_mib() -> float:
    """VmHWM: this process's own peak RSS. ru_maxrss would include the parent's peak at
    fork time (Linux keeps it across exec), i.e. the series this script just wrote."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(tool: str, folder: Path) -> dict[str, float]:
    """Run ``tool`` in a fresh interpreter so peak RSS is its own."""
    done = subprocess.run([sys.executable, __file__, "--one", tool, "--series", str(folder)],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=Path, help="a DICOM series folder (default: build one)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per tool, median reported (the machine may be shared)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.series)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.series or Path(tmp) / "series"
        if args.series is None:
            print(f"writing {write_series(folder)} slices from {NIFTI.name} …", flush=True)
        for path in folder.iterdir():  # warm the page cache for every tool alike
            path.read_bytes()
        runs: dict[str, list[dict[str, float]]] = {"ours": [], "simpleitk": [], "dcm2niix": []}
        for _ in range(args.repeat):  # interleaved, so load changes hit every tool alike
            for tool, done in runs.items():
                done.append(measure(tool, folder))
        results = {tool: {key: statistics.median(r[key] for r in done) if key != "size"
                          else done[0][key] for key in done[0]} for tool, done in runs.items()}
    rows = []
    for ref in ("simpleitk", "dcm2niix"):
        label = "SimpleITK ImageSeriesReader" if ref == "simpleitk" else "dcm2niix"
        for key, unit, what in (("seconds", "s", "wall time"), ("cpu_seconds", "s", "CPU time"),
                                ("rss_mib", "MiB", "peak RSS")):
            ours, theirs = results["ours"][key], results[ref][key]
            rows.append({"name": f"{what} vs {label}", "ours": round(ours, 4),
                         "reference": round(theirs, 4), "unit": unit,
                         "ratio": round(ours / theirs, 3)})
    report(rows, None)
    print(f"volume size: ours {results['ours']['size']}, SimpleITK {results['simpleitk']['size']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
