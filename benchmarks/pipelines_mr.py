"""The MR pipelines with warm models vs the official commands, same weights, same inputs.

Models: the release-layout test models of ``tests/models_mr`` (TotalSpineSeg: both steps,
hand-set intensity-band nnU-Nets, 1 mm, patch 64³; SPINEPS: banded semantic nnU-Net + SPINEPS's
own 3D U-Net instance checkpoint, random weights, 64×64×32 cut-outs). The real weights cannot be
downloaded here; what is measured is everything around the networks (start-up, model loading,
file hand-offs between steps, pre/post-processing), which real models share, plus tiny networks.

Inputs: TotalSpineSeg — ``N`` copies of the lumbar phantom (int16, 1 mm, 32×40×110) in different
orientations; SPINEPS — ``N`` copies of the shared TPTBox T2w sample (68×52×67 at 1.5 mm).

(a) per-series latency: ours = one series through the warm pipeline in a process where the models
    are loaded (median over the cases after the first); reference = the official command started
    once per series (``totalspineseg`` via ``inference()``, see tests/models_mr/official.py;
    for SPINEPS the one-call API ``spineps.segment`` in a fresh interpreter, because
    ``spineps sample`` fails in its snapshot step on these tiny test masks), median over 2 series.
(b) folder throughput: ``dicomnode process FOLDER --no-encode`` vs the official command over the
    same folder (``totalspineseg FOLDER``; for SPINEPS, whose ``dataset`` mode needs a BIDS tree,
    ``spineps.segment`` once per file, in sequence), cases per second.
(c) peak RSS of the (b) runs, summed over the process tree.

The official TotalSpineSeg runs with one torch thread and one worker process (with its CLI defaults,
``os.cpu_count()`` threads and forked pools, it deadlocked on this machine) and keeps only the label
outputs (no previews, soft masks or level files), which favours it.
Ratios are ours / reference for seconds and MiB (below 1 is better), reference / ours for cases/s.

    .venv/bin/python benchmarks/pipelines_mr.py [--cases 3] [--pipeline both] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.pipelines import run_measured  # noqa: E402
from benchmarks.report import report  # noqa: E402
from tests.shared_data import SHARED_DATA  # noqa: E402

SAMPLE = SHARED_DATA / "tptbox-spine-samples" / "sample_mri" / "sub-mri_label-6_T2w.nii.gz"
ORIENTATIONS = ("RAS", "PIR", "LPS", "ASL", "IPR")
_MARK = "warm latencies: "


def tss_inputs(folder: Path, count: int) -> None:
    import nibabel as nib
    import numpy as np

    from tests.models_mr.tss_models import lumbar_phantom

    folder.mkdir(parents=True)
    ras = nib.Nifti1Image(lumbar_phantom(), np.eye(4))
    for i in range(count):
        codes = ORIENTATIONS[i % len(ORIENTATIONS)]
        image = ras.as_reoriented(nib.orientations.ornt_transform(
            nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(codes)))
        image.set_data_dtype(np.int16)
        nib.save(image, folder / f"case{i:02d}.nii.gz")


def spineps_inputs(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        shutil.copy(SAMPLE, folder / f"sub-case{i:02d}_T2w.nii.gz")


def warm_latency(pipeline: str, models: Path, inputs: Path) -> list[float]:
    """In this process: build the pipeline once, then time each case (the first warms it up)."""
    import SimpleITK as sitk

    from dicomnode.models.pipelines import get_pipeline
    from dicomnode.models.registry import ModelStore
    from dicomnode.models.runtime import NnUNetRuntime
    from dicomnode.run.case import NiftiVolume

    runner = get_pipeline(pipeline)(ModelStore(models), NnUNetRuntime("cpu"))
    times = []
    with tempfile.TemporaryDirectory() as out:
        for path in sorted(inputs.glob("*.nii.gz")):
            start = time.perf_counter()
            result = runner.run(NiftiVolume(sitk.ReadImage(str(path))))
            sitk.WriteImage(result.labelmap, f"{out}/{path.name}", useCompression=True)
            times.append(time.perf_counter() - start)
    return times[1:]


def _ours(pipeline: str, models: Path, inputs: Path, tmp: Path) -> tuple[float, float, float]:
    warm = subprocess.run([sys.executable, __file__, "--warm-only", pipeline, str(models),
                           str(inputs)], capture_output=True, text=True, check=True)
    # SPINEPS prints a citation box on exit: take our marked line, not the last one
    line = next(x for x in warm.stdout.splitlines() if x.startswith(_MARK))
    latency = statistics.median(json.loads(line[len(_MARK):]))
    config = tmp / f"{pipeline}.yaml"
    config.write_text(f"models:\n  path: {models}\n  device: cpu\n")
    seconds, rss = run_measured([sys.executable, "-m", "dicomnode.cli", "process", str(inputs),
                                 "--pipeline", pipeline, "--out", str(tmp / f"ours-{pipeline}"),
                                 "--no-encode", "--config", str(config)])
    return latency, seconds, rss


def bench_totalspineseg(tmp: Path, count: int) -> list[dict]:
    from dicomnode.models.registry import REGISTRY, ModelStore
    from dicomnode.models.weights import install
    from tests.models_mr import official, tss_models

    data = tss_models.build_release(tmp / "tss-data")
    install(REGISTRY["totalspineseg"], ModelStore(tmp / "models"),
            tss_models.release_zips(data, tmp / "zips"))
    inputs = tmp / "tss-inputs"
    tss_inputs(inputs, count)
    latency, ours_s, ours_rss = _ours("totalspineseg", tmp / "models", inputs, tmp)
    def reference(source: Path, out: Path) -> tuple[float, float]:
        # One torch thread and one worker: with the CLI defaults (cpu_count() threads, forked
        # worker pools) the official run deadlocked here (the reason for its --no-stalling flag).
        argv, env = official.totalspineseg_command(source, out, data, threads=1, workers=1)
        os.environ["nnUNet_extTrainer"] = env["nnUNet_extTrainer"]
        return run_measured(argv)

    single = [reference(path, tmp / f"tss-single{i}")[0]
              for i, path in enumerate(sorted(inputs.glob("*.nii.gz"))[:2])]
    ref_s, ref_rss = reference(inputs, tmp / "tss-folder")
    return _rows("totalspineseg", "totalspineseg (inference())", count, latency,
                 statistics.median(single), ours_s, ref_s, ours_rss, ref_rss)


def bench_spineps(tmp: Path, count: int) -> list[dict]:
    from dicomnode.models.registry import REGISTRY, ModelStore
    from dicomnode.models.weights import install
    from tests.models_mr import spineps_models

    release = spineps_models.build_release(tmp / "spineps-release")
    install(REGISTRY["spineps-t2w"], ModelStore(tmp / "models"), [release])
    inputs = tmp / "spineps-inputs"
    spineps_inputs(inputs, count)
    latency, ours_s, ours_rss = _ours("spineps", tmp / "models", inputs, tmp)
    installed = ModelStore(tmp / "models").require("spineps-t2w")

    def reference(path: Path) -> tuple[float, float]:
        # The official API in a fresh interpreter per series. (``spineps sample`` itself stops in
        # its snapshot step on these tiny test masks: TPTBox's savgol_filter needs more vertebrae.)
        code = ("import sys, spineps; r = spineps.segment(sys.argv[1], model_semantic=sys.argv[2], "
                "model_instance=sys.argv[3], model_labeling=None, use_cpu=True, "
                "output_in_memory=True); sys.exit(0 if r.success else 1)")
        return run_measured([sys.executable, "-c", code, str(path),
                             str(installed.component("semantic")),
                             str(installed.component("instance"))])

    files = sorted(inputs.glob("*.nii.gz"))
    runs = [reference(path) for path in files]
    single = [s for s, _ in runs[:2]]
    return _rows("spineps", "spineps.segment()", count, latency, statistics.median(single),
                 ours_s, sum(s for s, _ in runs), ours_rss, max(r for _, r in runs))


def _rows(pipeline: str, command: str, n: int, latency: float, ref_latency: float, ours_s: float,
          ref_s: float, ours_rss: float, ref_rss: float) -> list[dict]:
    return [
        {"name": f"{pipeline}: per-series latency, warm models vs one `{command}` per series",
         "ours": round(latency, 3), "reference": round(ref_latency, 3), "unit": "s",
         "ratio": round(latency / ref_latency, 3)},
        {"name": f"{pipeline}: folder throughput ({n} cases), dicomnode process vs {command}",
         "ours": round(n / ours_s, 4), "reference": round(n / ref_s, 4), "unit": "cases/s",
         "ratio": round(ref_s / ours_s, 3)},
        {"name": f"{pipeline}: peak RSS of the folder run (process tree)",
         "ours": round(ours_rss, 1), "reference": round(ref_rss, 1), "unit": "MiB",
         "ratio": round(ours_rss / ref_rss, 3)},
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--pipeline", choices=["both", "totalspineseg", "spineps"], default="both")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--warm-only", nargs=3, metavar=("PIPELINE", "MODELS", "INPUTS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warm_only:  # child process: keep the parent's memory out of the measurement
        name, models, inputs = args.warm_only
        print(_MARK + json.dumps(warm_latency(name, Path(models), Path(inputs))), flush=True)
        return 0
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.pipeline in ("both", "totalspineseg"):
            rows += bench_totalspineseg(tmp, args.cases)
        if args.pipeline in ("both", "spineps"):
            rows += bench_spineps(tmp, args.cases)
    report(rows, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
