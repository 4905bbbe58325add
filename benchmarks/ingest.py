"""Ingest rate: ``dicomnode serve`` against dcmtk's ``storescp``, same instances, same sender.

Generates ``--count`` CT instances (default 500) from the shared example CT (new UIDs, JPEG 2000
lossless pixel data as in the source) into a temporary folder, then for each fsync setting
sends them over loopback with one dcmtk ``storescu`` association to

(a) ``dicomnode serve`` (fresh spool and SQLite index; acknowledges only durable, indexed
    instances; ``storage.fsync`` on = the default, then off), and
(b) ``storescp +xa -od DIR`` writing the files to disk (no fsync; it has no such option),

and prints instances/s for each, the ratio, and the node's peak resident memory (VmHWM).
Both dcmtk tools run with ``TCP_NODELAY=1`` (dcmtk's switch to disable Nagle's algorithm;
without it storescp answers each C-STORE after a delayed ACK, ~20 instances/s).

    .venv/bin/python benchmarks/ingest.py [--count 500] [--repeat 1] [--json results.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
import yaml
from pydicom.uid import generate_uid

from tests.dcmtk import STORESCP, STORESCU

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CT = REPO.parent / "shared/data/totalsegmentator-ref/example_ct_dicom"
AE_TITLE = "DICOMNODE"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


@dataclass
class Run:
    """One transfer: instances sent, seconds, peak RSS of the receiver (bytes)."""

    instances: int
    seconds: float
    peak_rss: int

    @property
    def rate(self) -> float:
        return self.instances / self.seconds


def generate(folder: Path, count: int, source: Path) -> None:
    """``count`` CT instances of one new series, cycling over the example slices."""
    slices = []
    for path in sorted(source.iterdir()):
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID  # empty in the example data set
        slices.append(ds)
    study, series = generate_uid(), generate_uid()
    for i in range(count):
        ds = copy.deepcopy(slices[i % len(slices)])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study, series, i + 1
        ds.save_as(folder / f"{i:05d}.dcm", enforce_file_format=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"receiver exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port}")


def peak_rss(pid: int) -> int:
    """VmHWM: the most resident memory the process ever had, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def send(port: int, folder: Path, count: int) -> float:
    started = time.perf_counter()
    result = subprocess.run([STORESCU, "-xv", "+sd", "-aec", AE_TITLE, "127.0.0.1", str(port),
                             str(folder)], capture_output=True, text=True, env=DCMTK_ENV)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed: {result.stderr[-2000:]}")
    return seconds


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def run_node(folder: Path, count: int, work: Path, fsync: bool) -> Run:
    root = Path(tempfile.mkdtemp(dir=work, prefix="node-"))
    port = free_port()
    config = {"node": {"ae_title": AE_TITLE, "host": "127.0.0.1", "port": port},
              "storage": {"path": str(root / "var"), "fsync": fsync, "min_free": "100 MB"},
              "assembly": {"series_timeout": 600}, "logging": {"level": "WARNING"}}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    process = subprocess.Popen([sys.executable, "-m", "dicomnode.service", "serve", "--config",
                                str(root / "config.yaml")], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, process)
        seconds = send(port, folder, count)
        rss = peak_rss(process.pid)
    finally:
        stop(process)
    stored = len(list((root / "var" / "spool").glob("*/*/*.dcm")))
    if stored != count:
        raise RuntimeError(f"dicomnode stored {stored} of {count} instances")
    shutil.rmtree(root, ignore_errors=True)
    return Run(count, seconds, rss)


def run_storescp(folder: Path, count: int, work: Path) -> Run:
    out = Path(tempfile.mkdtemp(dir=work, prefix="storescp-"))
    port = free_port()
    process = subprocess.Popen([STORESCP, "+xa", "-od", str(out), str(port)],
                               env=DCMTK_ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, process)
        seconds = send(port, folder, count)
        rss = peak_rss(process.pid)
    finally:
        stop(process)
    stored = len(list(out.iterdir()))
    if stored != count:
        raise RuntimeError(f"storescp stored {stored} of {count} instances")
    shutil.rmtree(out, ignore_errors=True)
    return Run(count, seconds, rss)


def median_run(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500, help="instances to send (>= 500)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="transfers per receiver and setting; the median is reported")
    parser.add_argument("--source", type=Path, default=EXAMPLE_CT,
                        help="folder of CT slices to copy from")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)

    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        work = Path(tmp)
        folder = work / "instances"
        folder.mkdir()
        generate(folder, args.count, args.source)
        size = sum(p.stat().st_size for p in folder.iterdir())
        print(f"{args.count} CT instances, {size / 1e6:.1f} MB, one storescu association")
        reference_runs = []
        for fsync in (True, False):
            ours, reference = [], []
            for _ in range(args.repeat):  # interleaved so drift hits both alike
                ours.append(run_node(folder, args.count, work, fsync))
                reference.append(run_storescp(folder, args.count, work))
            node, scp = median_run(ours), median_run(reference)
            reference_runs.append(scp)
            label = "on" if fsync else "off"
            ratio = node.rate / scp.rate
            print(f"fsync {label:3}: dicomnode {node.rate:7.1f} inst/s   storescp "
                  f"{scp.rate:7.1f} inst/s   ratio {ratio:.2f}   dicomnode peak RSS "
                  f"{node.peak_rss / 2**20:.0f} MiB")
            results.append({"name": f"ingest_rate_fsync_{label}", "ours": round(node.rate, 1),
                            "reference": round(scp.rate, 1), "unit": "instances/s",
                            "ratio": round(ratio, 3)})
            results.append({"name": f"peak_rss_fsync_{label}",
                            "ours": round(node.peak_rss / 2**20, 1),
                            "reference": round(scp.peak_rss / 2**20, 1), "unit": "MiB",
                            "ratio": round(node.peak_rss / max(scp.peak_rss, 1), 3)})
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
