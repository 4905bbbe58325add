"""Ingest rate: ``dicomnode serve`` against dcmtk's ``storescp``, same instances, same sender.

Generates ``--count`` CT instances (default 500) from the shared example CT (new UIDs, JPEG 2000
lossless pixel data as in the source) into a temporary folder, then for each fsync setting
sends them over loopback with one dcmtk ``storescu`` association to

(a) ``dicomnode serve`` (fresh spool and SQLite index; acknowledges only durable, indexed
    instances; ``storage.fsync`` on = the default, then off), and
(b) ``storescp +xa -od DIR`` writing the files to disk (no fsync; it has no such option),

and prints instances/s for each, the ratio, and the node's peak resident memory (VmHWM).
Then the operator console's cost: the node (fsync on) with ``web.enabled`` off against the node
with it on and a client that, as an open dashboard does, polls the series and job lists and
``/metrics`` every 0.5 s during the transfer (runs interleaved; ratio = on / off).
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
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pydicom
import yaml
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.dcmtk import STORESCP, STORESCU  # noqa: E402

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


class ConsolePoller:
    """What an open dashboard does: GET the lists and the metrics every ``interval`` s."""

    PATHS = ("/api/v1/series?limit=50", "/api/v1/jobs?limit=50", "/metrics")

    def __init__(self, port: int, interval: float = 0.5):
        self.base = f"http://127.0.0.1:{port}"
        self.interval = interval
        self.requests = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for path in self.PATHS:
                try:
                    with urllib.request.urlopen(self.base + path, timeout=30) as response:
                        response.read()
                except OSError as exc:
                    self.errors.append(f"{path}: {exc}")
                self.requests += 1

    def __enter__(self) -> ConsolePoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_node(folder: Path, count: int, work: Path, fsync: bool, console: bool = False) -> Run:
    """One transfer to a fresh node; with ``console`` its web server is on and polled."""
    root = Path(tempfile.mkdtemp(dir=work, prefix="node-"))
    port, web_port = free_port(), free_port()
    config = {"node": {"ae_title": AE_TITLE, "host": "127.0.0.1", "port": port},
              "storage": {"path": str(root / "var"), "fsync": fsync, "min_free": "100 MB"},
              "assembly": {"series_timeout": 600}, "logging": {"level": "WARNING"},
              "web": {"enabled": console, "port": web_port}}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    process = subprocess.Popen([sys.executable, "-m", "dicomnode.service", "serve", "--config",
                                str(root / "config.yaml")], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, process)
        if console:
            wait_listening(web_port, process)
            with ConsolePoller(web_port) as poller:
                seconds = send(port, folder, count)
            if poller.requests == 0 or poller.errors:
                raise RuntimeError(f"the console answered {poller.requests} requests during "
                                   f"the transfer, errors: {poller.errors[:3]}")
        else:
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
        on, off = [], []
        for _ in range(args.repeat):
            off.append(run_node(folder, args.count, work, True, console=False))
            on.append(run_node(folder, args.count, work, True, console=True))
        with_console, without = median_run(on), median_run(off)
        ratio = with_console.rate / without.rate
        print(f"console : on and polled {with_console.rate:7.1f} inst/s   off "
              f"{without.rate:7.1f} inst/s   ratio {ratio:.2f}   peak RSS "
              f"{with_console.peak_rss / 2**20:.0f} vs {without.peak_rss / 2**20:.0f} MiB")
        results.append({"name": "ingest_rate_console_on_vs_off",
                        "ours": round(with_console.rate, 1), "reference": round(without.rate, 1),
                        "unit": "instances/s", "ratio": round(ratio, 3)})
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
