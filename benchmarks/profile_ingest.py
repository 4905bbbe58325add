"""Where one association's ingest time goes: ``dicomnode serve`` sampled by py-spy.

Generates ``--count`` CT instances as ``benchmarks/ingest.py`` does, starts a fresh node
(``storage.fsync`` on unless ``--no-fsync``), attaches ``py-spy record --idle --threads`` to it
and sends the instances with one dcmtk ``storescu`` association, as the ingest benchmark does
(started as soon as the node listens; ``--subprocesses``: the receiver may run in processes of
its own). Then it reads py-spy's raw (collapsed-stack) output and
prints, for the association's two pynetdicom threads,

* the *association thread* (it runs the C-STORE handler between two messages): each group's
  share of its wall-clock samples, and the top functions by own (leaf) and cumulative share;
* the *DUL thread* (reads, decodes and sends PDUs): the same groups.

A sample is put in the group of its innermost frame that belongs to one (pydicom frames go to
their caller's): pynetdicom PDU/DIMSE decoding, pynetdicom polling (the reactors'
``time.sleep`` loops and waits: no work, only latency), dataset inspection, file write +
fsync, index (SQLAlchemy/SQLite), logging, other. ``--idle`` keeps samples of threads that
wait (an fsync, a sleep), so shares are of wall-clock time, not CPU.

    .venv/bin/python benchmarks/profile_ingest.py [--count 500] [--rate 250] [--no-fsync]
                                                  [--raw PATH] [--json PATH]

``--raw`` keeps py-spy's flame data (``flamegraph.pl PATH > out.svg`` draws it). ``--json``
writes a list of {"name", "ours", "reference", "unit", "ratio"}: each group's share of each
thread's samples in % (reference 100, the thread's total), and the instances/s under the
profiler (reference: the same transfer unprofiled, run first, unless ``--no-baseline``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.ingest import (  # noqa: E402
    AE_TITLE,
    DCMTK_ENV,
    EXAMPLE_CT,
    free_port,
    generate,
    wait_listening,
)
from tests.dcmtk import STORESCU  # noqa: E402

PY_SPY = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")

#: Groups, in report order.
DECODING = "pynetdicom PDU/DIMSE decoding"
POLLING = "pynetdicom polling (sleep/wait)"
INSPECTION = "dataset inspection"
WRITE = "file write + fsync"
INDEX = "index (SQLAlchemy/SQLite)"
LOGGING = "logging"
OTHER = "other"
GROUPS = (DECODING, POLLING, INSPECTION, WRITE, INDEX, LOGGING, OTHER)

#: py-spy's raw frame: ``function (path:line)``; the path is relative to sys.path.
_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>.*?)(?::(?P<line>\d+))?\)$")
#: A thread waiting: the frames that block (their C callee, a sleep or a lock, is not shown).
_WAITS = ("Condition.wait", "Event.wait", "Queue.get", "_PollLikeSelector.select")
#: The reactors' own loop frames: as a leaf they are in time.sleep(0.001) (or between calls).
_REACTOR_LOOPS = ("DULServiceProvider.run_reactor", "Association._run_reactor")


def _path_group(path: str) -> str | None:
    if path.startswith("logging/") or path == "dicomnode/logs.py":
        return LOGGING
    if path.startswith(("sqlalchemy/", "sqlite3/", "dicomnode/store/")):
        return INDEX
    if path.startswith("dicomnode/storage/"):
        return WRITE
    if path in ("dicomnode/receiver/dataset.py", "dicomnode/grouping.py") or path.startswith(
            "converters/"):
        return INSPECTION
    if path.startswith("pynetdicom/"):
        return DECODING
    if path.startswith("dicomnode/"):
        return OTHER  # the handler's own code (scp.py: file meta, locks, status)
    return None  # pydicom, the standard library...: their caller's group


def classify(frames: list[str]) -> str:
    """The group of one sample, ``frames`` root first."""
    leaf = frames[-1].split(" (", 1)[0]
    if leaf in _REACTOR_LOOPS or (leaf in _WAITS and any("pynetdicom/" in f for f in frames)):
        return POLLING
    for frame in reversed(frames):
        match = _FRAME.match(frame)
        group = _path_group(match["path"]) if match else None
        if group is not None:
            return group
    return OTHER


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    return f"{match['function']} ({match['path']})" if match else frame


@dataclass
class ThreadProfile:
    """The samples of one thread: per group; per function (not line) own and cumulative."""

    samples: int = 0
    groups: Counter[str] = field(default_factory=Counter)
    own: Counter[str] = field(default_factory=Counter)
    cumulative: Counter[str] = field(default_factory=Counter)

    def add(self, frames: list[str], count: int) -> None:
        self.samples += count
        self.groups[classify(frames)] += count
        self.own[_short(frames[-1])] += count
        for function in {_short(frame) for frame in frames}:  # once per sample
            self.cumulative[function] += count

    def share(self, count: int) -> float:
        return 100.0 * count / self.samples if self.samples else 0.0


def parse_raw(lines: Iterable[str]) -> dict[str, ThreadProfile]:
    """The association (``assoc``) and DUL (``dul``) threads' profiles from py-spy raw lines
    (``thread (tid): name;frame;...;frame count``)."""
    threads = {"assoc": ThreadProfile(), "dul": ThreadProfile()}
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        # --subprocesses and --threads put "process PID:CMDLINE" (which may hold ';') and
        # "thread (TID): NAME" first.
        first = next((i for i, f in enumerate(frames) if f.startswith("thread (")), -1)
        frames = frames[first + 1:]
        names = {frame.split(" (", 1)[0] for frame in frames}
        if "Association._run_reactor" in names or "Association.run" in names:
            threads["assoc"].add(frames, int(count))
        elif "DULServiceProvider.run_reactor" in names:
            threads["dul"].add(frames, int(count))
    return threads


def start_node(root: Path, fsync: bool) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = {"node": {"ae_title": AE_TITLE, "host": "127.0.0.1", "port": port},
              "storage": {"path": str(root / "var"), "fsync": fsync, "min_free": "100 MB"},
              "assembly": {"series_timeout": 600}, "logging": {"level": "WARNING"},
              "web": {"enabled": False, "port": free_port()}}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    process = subprocess.Popen([sys.executable, "-m", "dicomnode.service", "serve", "--config",
                                str(root / "config.yaml")], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port, process)
    return process, port


def send(port: int, folder: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run([STORESCU, "-xv", "+sd", "-aec", AE_TITLE, "127.0.0.1", str(port),
                             str(folder)], capture_output=True, text=True, env=DCMTK_ENV)
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed: {result.stderr[-2000:]}")
    return time.perf_counter() - started


def stop_node(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def transfer(folder: Path, work: Path, fsync: bool, raw: Path | None, rate: int) -> float:
    """One transfer to a fresh node, sampled into ``raw`` when given; its seconds."""
    root = Path(tempfile.mkdtemp(dir=work, prefix="node-"))
    process, port = start_node(root, fsync)
    spy = None
    try:
        if raw is not None:
            assert PY_SPY is not None
            spy = subprocess.Popen([PY_SPY, "record", "--pid", str(process.pid), "--rate",
                                    str(rate), "--idle", "--threads", "--subprocesses",
                                    "--nonblocking",
                                    "--format", "raw", "--output", str(raw)],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert spy.stdout is not None
            for line in spy.stdout:  # attached once it says so
                if "Sampling process" in line:
                    break
            else:
                raise RuntimeError(f"py-spy exited with {spy.wait()}")
        seconds = send(port, folder)
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
            spy.communicate(timeout=60)
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
        stop_node(process)
        shutil.rmtree(root, ignore_errors=True)
    return seconds


def report(name: str, profile: ThreadProfile, top: int) -> None:
    print(f"\n{name}: {profile.samples} samples")
    for group in GROUPS:
        print(f"  {profile.share(profile.groups[group]):5.1f} %  {group}")
    print(f"  top {top} by own share:")
    for frame, count in profile.own.most_common(top):
        print(f"    {profile.share(count):5.1f} %  {frame}")
    print(f"  top {top} by cumulative share:")
    for frame, count in profile.cumulative.most_common(top):
        print(f"    {profile.share(count):5.1f} %  {frame}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500, help="instances to send")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--no-fsync", dest="fsync", action="store_false",
                        help="storage.fsync off (default on)")
    parser.add_argument("--source", type=Path, default=EXAMPLE_CT,
                        help="folder of CT slices to copy from")
    parser.add_argument("--top", type=int, default=15, help="functions listed per thread")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="skip the unprofiled transfer")
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw flame data here")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    if PY_SPY is None:
        parser.error("py-spy is not installed (.venv/bin/pip install py-spy)")
    if os.geteuid() != 0 and Path("/proc/sys/kernel/yama/ptrace_scope").read_text().strip() != "0":
        print("warning: py-spy needs ptrace rights (root or kernel.yama.ptrace_scope=0)",
              file=sys.stderr)

    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="profile-ingest-") as tmp:
        work = Path(tmp)
        folder = work / "instances"
        folder.mkdir()
        generate(folder, args.count, args.source)
        raw = args.raw or work / "raw.txt"
        baseline = transfer(folder, work, args.fsync, None, args.rate) if args.baseline else None
        seconds = transfer(folder, work, args.fsync, raw, args.rate)
        threads = parse_raw(raw.read_text().splitlines())
    rate = args.count / seconds
    print(f"{args.count} instances, one association, fsync {'on' if args.fsync else 'off'}: "
          f"{rate:.1f} inst/s under py-spy ({args.rate} Hz)"
          + (f", {args.count / baseline:.1f} inst/s without" if baseline else ""))
    report("association thread (C-STORE handler)", threads["assoc"], args.top)
    report("DUL thread (PDU read/decode/send)", threads["dul"], args.top)

    if baseline:
        rows.append({"name": "profiled_rate_vs_unprofiled", "ours": round(rate, 1),
                     "reference": round(args.count / baseline, 1), "unit": "instances/s",
                     "ratio": round(baseline / seconds, 3)})
    for key, profile in threads.items():
        for group in GROUPS:
            share = round(profile.share(profile.groups[group]), 1)
            slug = re.sub(r"[^a-z0-9]+", "_", group.lower()).strip("_")
            rows.append({"name": f"{key}_thread_{slug}", "ours": share, "reference": 100,
                         "unit": "%", "ratio": round(share / 100, 3)})
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
