"""Ingest rate: ``dicomnode serve`` against dcmtk's ``storescp``, same instances, same sender.

Generates ``--count`` CT instances (default 500) from the shared example CT (new UIDs, JPEG 2000
lossless pixel data as in the source) into a temporary folder, then for each fsync setting
sends them over loopback with one dcmtk ``storescu`` association to

(a) ``dicomnode serve`` (fresh spool and SQLite index; acknowledges only durable, indexed
    instances; ``storage.fsync`` on = the default, then off), and
(b) ``storescp +xa -od DIR`` writing the files to disk (no fsync; it has no such option),

and prints instances/s for each, the ratio, and the node's peak resident memory (VmHWM,
summed over the node and its receiver processes).
Then ``--associations`` (default 4) concurrent storescu associations, each sending its share
of the instances, to the node (``node.receiver_processes: auto``, and 1 for the gain of more
processes) and to ``storescp --fork`` (a process per association); the aggregate rate is
first C-STORE to last response. Then the operator console's cost: the node (fsync on)
with ``web.enabled`` off against the node with it on and a client that, as an open dashboard
does, polls the series and job lists and ``/metrics`` every 0.5 s during the transfer (runs
interleaved; ratio = on / off).
With ``--busy``: receiving while the node works. A trained VertebralBodiesCT-shaped test model
is installed and CT series (336 slices, as ``benchmarks/e2e.py``) are sent first, so a job
segments on the CPU (``models.device: cpu``) while the instances arrive; the ratio is that
rate over the same node's rate while idle (runs interleaved), with the share of the transfer
that a job was segmenting. ``--jobs-nice 0 10`` measures it once per value of ``jobs.nice``
(0: job threads at the receivers' priority).
Both dcmtk tools run with ``TCP_NODELAY=1`` (dcmtk's switch to disable Nagle's algorithm;
without it storescp answers each C-STORE after a delayed ACK, ~20 instances/s).

    .venv/bin/python benchmarks/ingest.py [--count 500] [--repeat 1] [--associations 4]
        [--busy [--jobs-nice 0 10]] [--skip-console] [--json results.json]
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

from dicomnode.config import JobsConfig  # noqa: E402
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


def wait_warmed_up(log: Path, process: subprocess.Popen[bytes], timeout: float = 300) -> None:
    """Until the node has done its start-up imports (log event ``node.warmed_up``): measure
    a node in service, not one importing torch on a core while the instances arrive."""
    deadline = time.monotonic() + timeout
    while b'"node.warmed_up"' not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the node did not warm up: {log.read_text()[-2000:]}")
        time.sleep(0.2)


def peak_rss(pid: int) -> int:
    """VmHWM (the most resident memory a process ever had, bytes) of the process plus that of
    each of its children (the node's receiver processes; storescp --fork's children are gone
    by then): an upper bound of the tree's peak."""
    import psutil

    total = 0
    try:
        tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return 0
    for member in tree:
        try:
            for line in Path(f"/proc/{member.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def send(port: int, folder: Path, count: int, associations: int = 1) -> float:
    """Send every file of ``folder`` with ``associations`` concurrent storescu processes
    (each its own slice of the sorted files); seconds until the last one ends."""
    files = sorted(folder.iterdir())
    shares = [files[i::associations] for i in range(associations)]
    started = time.perf_counter()
    senders = [subprocess.Popen([STORESCU, "-xv", "-aec", AE_TITLE, "127.0.0.1", str(port),
                                 *map(str, share)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env=DCMTK_ENV)
               for share in shares]
    errors = [sender.communicate()[1] for sender in senders]
    seconds = time.perf_counter() - started
    for sender, error in zip(senders, errors, strict=True):
        if sender.returncode != 0:
            raise RuntimeError(f"storescu failed: {error[-2000:]}")
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


def run_node(folder: Path, count: int, work: Path, fsync: bool, console: bool = False,
             associations: int = 1, processes: int | str = "auto") -> Run:
    """One transfer to a fresh node; with ``console`` its web server is on and polled."""
    root = Path(tempfile.mkdtemp(dir=work, prefix="node-"))
    port, web_port = free_port(), free_port()
    config = {"node": {"ae_title": AE_TITLE, "host": "127.0.0.1", "port": port,
                       "receiver_processes": processes},
              "storage": {"path": str(root / "var"), "fsync": fsync, "min_free": "100 MB"},
              "assembly": {"series_timeout": 600}, "logging": {"level": "INFO"},
              "web": {"enabled": console, "port": web_port}}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    log = root / "serve.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "dicomnode.service", "serve",
                                    "--config", str(root / "config.yaml")], cwd=REPO,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_listening(port, process)
        wait_warmed_up(log, process)
        if console:
            wait_listening(web_port, process)
            with ConsolePoller(web_port) as poller:
                seconds = send(port, folder, count, associations)
            if poller.requests == 0 or poller.errors:
                raise RuntimeError(f"the console answered {poller.requests} requests during "
                                   f"the transfer, errors: {poller.errors[:3]}")
        else:
            seconds = send(port, folder, count, associations)
        rss = peak_rss(process.pid)
    finally:
        stop(process)
    stored = len(list((root / "var" / "spool").glob("*/*/*.dcm")))
    if stored != count:
        raise RuntimeError(f"dicomnode stored {stored} of {count} instances")
    shutil.rmtree(root, ignore_errors=True)
    return Run(count, seconds, rss)


def run_storescp(folder: Path, count: int, work: Path, associations: int = 1) -> Run:
    """One transfer to dcmtk's storescp; with several associations ``--fork`` (a process per
    association, as it serves concurrent senders)."""
    out = Path(tempfile.mkdtemp(dir=work, prefix="storescp-"))
    port = free_port()
    fork = ["--fork"] if associations > 1 else []
    process = subprocess.Popen([STORESCP, *fork, "+xa", "-od", str(out), str(port)],
                               env=DCMTK_ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, process)
        seconds = send(port, folder, count, associations)
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


def row(name: str, ours: float, reference: float, unit: str) -> dict[str, object]:
    return {"name": name, "ours": round(ours, 1), "reference": round(reference, 1),
            "unit": unit, "ratio": round(ours / reference, 3) if reference else None}


#: Job states in which a job is waiting for or doing work.
ACTIVE_JOB_STATES = ("complete", "routed", "loading", "segmenting", "encoding", "dispatching")


class BusyNode:
    """A node with jobs on, the trained test model installed and CPU inference: job series
    (calling AE ``JOBS``, the only ones routed to the model) keep it segmenting while the
    measured instances (calling AE ``STORESCU``: not routed) arrive."""

    def __init__(self, work: Path, count: int, source: Path, nice: int):
        from benchmarks.e2e import build_model, new_uids
        from benchmarks.load_series import write_series
        from tests.models.train_small_model import CT
        from tests.service.conftest import RunningNode

        self.work, self.count, self.source = work, count, source
        self.new_uids = new_uids
        _model, store = build_model(work, "trained")
        self.job_series = work / f"job-series-nice{nice}"
        self.job_series.mkdir()
        write_series(self.job_series, 1.0, CT, 0.8, name="example_ct")  # 336 slices
        self.port = free_port()
        config = {"node": {"ae_title": AE_TITLE, "host": "127.0.0.1", "port": self.port},
                  "storage": {"path": "var", "min_free": "100 MB"},
                  "assembly": {"series_timeout": 1}, "logging": {"level": "INFO"},
                  "models": {"path": str(store), "device": "cpu"},
                  "routing": {"rules": [{"name": "jobs", "match": {"calling_ae_title": ["JOBS"]},
                                         "pipelines": ["vertebral-bodies-ct"],
                                         "destinations": []}]},
                  "dispatch": {"echo_interval": 0}, "jobs": {"nice": nice}}
        root = work / f"busy-node-nice{nice}"
        root.mkdir()
        self.node = RunningNode(root, config, self.port)
        self.runs = 0

    def __enter__(self) -> BusyNode:
        self.node.start()
        deadline = time.monotonic() + 300
        while '"node.warmed_up"' not in self.node.logs[-1].read_text():
            if time.monotonic() > deadline:
                raise TimeoutError("the node did not warm up in 5 minutes")
            time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        self.node.stop()

    def _states(self) -> list[str]:
        return [state for (state,) in self.node.query("select state from jobs")]

    def _fresh_instances(self) -> Path:
        self.runs += 1
        folder = self.work / f"instances-{self.node.root.name}-{self.runs}"
        folder.mkdir()
        generate(folder, self.count, self.source)
        return folder

    def transfer(self, busy: bool) -> tuple[Run, float]:
        """One transfer of new instances; with ``busy`` once a job segments. Returns the
        run and the share of it during which a job was segmenting."""
        from tests.service.conftest import storescu

        folder = self._fresh_instances()
        deadline = time.monotonic() + 900
        while any(s in ACTIVE_JOB_STATES for s in self._states()):  # idle: no job left
            if time.monotonic() > deadline:
                raise TimeoutError("the jobs did not finish in 15 minutes")
            time.sleep(0.5)
        if busy:
            for copy in range(2):  # two jobs, so that one still segments at the end
                series = self.new_uids(self.job_series,
                                       self.work / f"job-{self.node.root.name}-{self.runs}-{copy}")
                sent = storescu(self.port, series, calling="JOBS")
                if sent.returncode != 0:
                    raise RuntimeError(sent.stdout[-2000:])
            while "segmenting" not in self._states():
                if time.monotonic() > deadline:
                    raise TimeoutError("no job started segmenting")
                time.sleep(0.1)
        samples: list[bool] = []
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.1):
                samples.append("segmenting" in self._states())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        seconds = send(self.port, folder, self.count)
        done.set()
        sampler.join()
        assert self.node.process is not None
        if busy and "failed" in self._states():
            raise RuntimeError("a job failed: " + self.node.logs[-1].read_text()[-2000:])
        share = sum(samples) / len(samples) if samples else 0.0
        return Run(self.count, seconds, peak_rss(self.node.process.pid)), share


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500, help="instances to send (>= 500)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="transfers per receiver and setting; the median is reported")
    parser.add_argument("--associations", type=int, default=4,
                        help="concurrent associations of the parallel section (0: skip it)")
    parser.add_argument("--busy", action="store_true",
                        help="also measure receiving while a job segments on the CPU")
    parser.add_argument("--jobs-nice", type=int, nargs="+", default=[JobsConfig().nice],
                        help="jobs.nice of the busy node, one busy run each (e.g. 0 10: "
                             "without and with the default)")
    parser.add_argument("--skip-console", action="store_true",
                        help="skip the console on/off section")
    parser.add_argument("--skip-single", action="store_true",
                        help="skip the one-association section")
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
        print(f"{args.count} CT instances, {size / 1e6:.1f} MB")
        for fsync in (() if args.skip_single else (True, False)):
            ours, reference = [], []
            for _ in range(args.repeat):  # interleaved so drift hits both alike
                ours.append(run_node(folder, args.count, work, fsync))
                reference.append(run_storescp(folder, args.count, work))
            node, scp = median_run(ours), median_run(reference)
            label = "on" if fsync else "off"
            print(f"1 association, fsync {label:3}: dicomnode {node.rate:7.1f} inst/s   "
                  f"storescp {scp.rate:7.1f} inst/s   ratio {node.rate / scp.rate:.2f}   "
                  f"dicomnode peak RSS {node.peak_rss / 2**20:.0f} MiB")
            results.append(row(f"ingest_rate_fsync_{label}", node.rate, scp.rate,
                               "instances/s"))
            results.append(row(f"peak_rss_fsync_{label}", node.peak_rss / 2**20,
                               scp.peak_rss / 2**20, "MiB"))
        if args.associations > 0:
            n = args.associations
            ours, single, reference = [], [], []
            for _ in range(args.repeat):
                ours.append(run_node(folder, args.count, work, True, associations=n))
                single.append(run_node(folder, args.count, work, True, associations=n,
                                       processes=1))
                reference.append(run_storescp(folder, args.count, work, associations=n))
            node, one, scp = median_run(ours), median_run(single), median_run(reference)
            print(f"{n} associations, fsync on: dicomnode {node.rate:7.1f} inst/s "
                  f"(1 receiver process {one.rate:7.1f})   storescp --fork {scp.rate:7.1f} "
                  f"inst/s   ratio {node.rate / scp.rate:.2f}   peak RSS "
                  f"{node.peak_rss / 2**20:.0f} MiB")
            results.append(row(f"ingest_rate_{n}_associations", node.rate, scp.rate,
                               "instances/s"))
            results.append(row(f"ingest_rate_{n}_associations_vs_one_receiver_process",
                               node.rate, one.rate, "instances/s"))
            results.append(row(f"peak_rss_{n}_associations", node.peak_rss / 2**20,
                               scp.peak_rss / 2**20, "MiB"))
        if not args.skip_console:
            on, off = [], []
            for _ in range(args.repeat):
                off.append(run_node(folder, args.count, work, True, console=False))
                on.append(run_node(folder, args.count, work, True, console=True))
            with_console, without = median_run(on), median_run(off)
            print(f"console : on and polled {with_console.rate:7.1f} inst/s   off "
                  f"{without.rate:7.1f} inst/s   ratio {with_console.rate / without.rate:.2f}"
                  f"   peak RSS {with_console.peak_rss / 2**20:.0f} vs "
                  f"{without.peak_rss / 2**20:.0f} MiB")
            results.append(row("ingest_rate_console_on_vs_off", with_console.rate,
                               without.rate, "instances/s"))
        for nice in args.jobs_nice if args.busy else []:
            idle, busy, shares = [], [], []
            with BusyNode(work, args.count, args.source, nice) as node_:
                for _ in range(args.repeat):
                    idle.append(node_.transfer(busy=False)[0])
                    run, share = node_.transfer(busy=True)
                    busy.append(run)
                    shares.append(share)
            quiet, working = median_run(idle), median_run(busy)
            share = sorted(shares)[len(shares) // 2]
            print(f"busy, jobs.nice {nice:2d}: a job segmenting {working.rate:7.1f} inst/s   "
                  f"idle {quiet.rate:7.1f} inst/s   ratio {working.rate / quiet.rate:.2f}   "
                  f"a job segmented during {share:.0%} of the transfer")
            suffix = "" if nice == JobsConfig().nice else f"_nice{nice}"
            results.append(row(f"ingest_rate_busy_vs_idle{suffix}", working.rate, quiet.rate,
                               "instances/s"))
            results.append({"name": f"busy_share_of_transfer{suffix}", "ours": round(share, 3),
                            "reference": 1.0, "unit": "fraction", "ratio": round(share, 3)})
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
