"""The node with warm models vs nnU-Net's own command line, same weights, same inputs.

Model: a random-weight VertebralBodiesCT-layout folder (ResEnc plans, ``fold_all``) built with
nnU-Net's own trainer by ``tests/models/modelfolders.py`` — the real weights cannot be downloaded
here; what is measured is the per-series overhead around the network (start-up, model load,
preprocessing, export), which a real model shares. Spacing 3 mm, patch 32×64×64.
Inputs: ``N`` crops (60 slices each, int16) of
``../shared/data/totalsegmentator-ref/example_ct.nii.gz`` (122×101×112 at 3 mm), written as NIfTI.

(a) per-series latency: ours = one series through the warm pipeline (``VertebralBodiesCT.run`` +
    writing ``labels.nii.gz``) in a process where the model is already loaded (median over the
    cases after the first); reference = ``nnUNetv2_predict_from_modelfolder -f all --disable_tta``
    started once per series, as a container-per-job integration does (median wall time).
(b) folder throughput: ``dicomnode process FOLDER --no-encode`` vs
    ``nnUNetv2_predict_from_modelfolder`` over the same folder, each one process start, cases
    per second.
(c) peak RSS of both (b) runs: the sum over the process tree (nnU-Net's worker processes
    included), sampled every 50 ms.

Ratios are ours / reference: below 1 is better for seconds and MiB, above 1 for cases/s.

    .venv/bin/python benchmarks/pipelines.py [--cases 5] [--device cpu] [--json PATH]
        [--pipeline vertebral-bodies-ct|totalspineseg|spineps|all]

``--pipeline totalspineseg|spineps|all`` adds the MR pipelines' rows (warm vs the official
``totalspineseg`` / SPINEPS runs; see ``benchmarks/pipelines_mr.py``).
"""

from __future__ import annotations

import argparse
import json
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

CT = SHARED_DATA / "totalsegmentator-ref" / "example_ct.nii.gz"
NNUNET = Path(sys.executable).with_name("nnUNetv2_predict_from_modelfolder")


def make_inputs(folder: Path, count: int) -> list[Path]:
    """``count`` overlapping 60-slice crops of the example CT, int16, nnU-Net file names."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(CT))
    depth = image.GetSize()[2]
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        start = (depth - 60) * i // max(count - 1, 1)
        crop = sitk.Cast(image[:, :, start:start + 60], sitk.sitkInt16)
        paths.append(folder / f"case{i:02d}_0000.nii.gz")
        sitk.WriteImage(crop, str(paths[-1]))
    return paths


def run_measured(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB, summed over the process tree) of a command."""
    import psutil

    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    root = psutil.Process(process.pid)
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {process.stderr.read().decode()[-2000:]}")
    return seconds, peak / 2**20


def warm_latency(models: Path, inputs: list[Path], device: str) -> list[float]:
    """In this process: load once, then time each case (the first warms the model up)."""
    import SimpleITK as sitk

    from dicomnode.models.pipelines import get_pipeline
    from dicomnode.models.registry import ModelStore
    from dicomnode.models.runtime import NnUNetRuntime
    from dicomnode.run.case import NiftiVolume

    pipeline = get_pipeline("vertebral-bodies-ct")(ModelStore(models), NnUNetRuntime(device))
    times = []
    with tempfile.TemporaryDirectory() as out:
        for path in inputs:
            start = time.perf_counter()
            result = pipeline.run(NiftiVolume(sitk.ReadImage(str(path))))
            sitk.WriteImage(result.labelmap, f"{out}/{path.name}", useCompression=True)
            times.append(time.perf_counter() - start)
    return times[1:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (both tools use it)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--pipeline", default="vertebral-bodies-ct",
                        choices=["vertebral-bodies-ct", "totalspineseg", "spineps", "all"],
                        help="the MR pipelines run benchmarks/pipelines_mr.py's measurements")
    parser.add_argument("--warm-only", nargs=2, metavar=("MODELS", "INPUTS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.warm_only:  # child process: keep the parent's memory out of the measurement
        inputs = sorted(Path(args.warm_only[1]).glob("*.nii.gz"))
        print(json.dumps(warm_latency(Path(args.warm_only[0]), inputs, args.device)))
        return 0

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.pipeline in ("vertebral-bodies-ct", "all"):
            rows += bench_vertebral_bodies(tmp / "vbct", args.cases, args.device)
        if args.pipeline in ("totalspineseg", "all"):
            from benchmarks.pipelines_mr import bench_totalspineseg
            rows += bench_totalspineseg(tmp, args.cases)
        if args.pipeline in ("spineps", "all"):
            from benchmarks.pipelines_mr import bench_spineps
            rows += bench_spineps(tmp, args.cases)
    report(rows, args.json)
    return 0


def bench_vertebral_bodies(tmp: Path, cases: int, device: str) -> list[dict]:
    """(a), (b), (c) for ``vertebral-bodies-ct`` in ``tmp`` (created)."""
    from dicomnode.models.registry import ModelStore, get_entry
    from dicomnode.models.weights import install
    from tests.models.modelfolders import build_model_folder

    tmp.mkdir(parents=True)
    folder = build_model_folder(tmp / "results", "nnUNetResEncUNetMPlans", ["all"],
                                spacing=(3.0, 3.0, 3.0), patch_size=(32, 64, 64))
    install(get_entry("vertebral-bodies-ct-m"), ModelStore(tmp / "models"), [folder])
    inputs = make_inputs(tmp / "inputs", cases)
    config = tmp / "config.yaml"
    config.write_text(f"models:\n  path: {tmp / 'models'}\n  device: {device}\n")
    nnunet = [str(NNUNET), "-m", str(folder), "-f", "all", "--disable_tta", "-device",
              "cuda" if device.startswith("cuda") else device]

    warm = subprocess.run([sys.executable, __file__, "--device", device, "--warm-only",
                           str(tmp / "models"), str(tmp / "inputs")],
                          capture_output=True, text=True, check=True)
    ours_latency = statistics.median(json.loads(warm.stdout.strip().splitlines()[-1]))
    single = []
    for i, path in enumerate(inputs[:2]):  # a fresh process per series
        one = tmp / f"single{i}"
        one.mkdir()
        (one / path.name).symlink_to(path)
        single.append(run_measured(nnunet + ["-i", str(one), "-o", str(tmp / f"single_out{i}")])[0])
    reference_latency = statistics.median(single)

    ours_s, ours_rss = run_measured(
        [sys.executable, "-m", "dicomnode.cli", "process", str(tmp / "inputs"), "--pipeline",
         "vertebral-bodies-ct", "--out", str(tmp / "ours"), "--no-encode", "--config", str(config)])
    ref_s, ref_rss = run_measured(nnunet + ["-i", str(tmp / "inputs"), "-o", str(tmp / "ref")])

    n = len(inputs)
    return [
        {"name": "per-series latency, warm model vs one nnUNetv2_predict per series",
         "ours": round(ours_latency, 3), "reference": round(reference_latency, 3), "unit": "s",
         "ratio": round(ours_latency / reference_latency, 3)},
        {"name": f"folder throughput ({n} cases), dicomnode process vs nnUNetv2_predict",
         "ours": round(n / ours_s, 4), "reference": round(n / ref_s, 4), "unit": "cases/s",
         "ratio": round(ref_s / ours_s, 3)},
        {"name": "peak RSS of the folder run (process tree)", "ours": round(ours_rss, 1),
         "reference": round(ref_rss, 1), "unit": "MiB", "ratio": round(ours_rss / ref_rss, 3)},
    ]


if __name__ == "__main__":
    sys.exit(main())
