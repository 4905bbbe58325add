"""Fixtures for the receive-and-hold tests: test instances and a real running ``serve`` process.

Instances are generated from the shared example CT (``totalsegmentator-ref/example_ct_dicom``)
with pydicom: new UIDs, pixel data kept as it is (JPEG 2000 lossless), so nothing binary is
committed. The node under test is a ``dicomnode serve`` subprocess on a free loopback port,
driven with dcmtk's ``storescu``/``echoscu``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.dcmtk import ECHOSCU, STORESCU
from tests.shared_data import EXAMPLE_CT_DICOM

EXAMPLE_CT = EXAMPLE_CT_DICOM

AE_TITLE = "DICOMNODE"


@functools.lru_cache(maxsize=1)
def _cli() -> tuple[str, ...]:
    """The ``dicomnode`` command; falls back to the service entry when the full CLI cannot
    be imported (other stages' modules missing)."""
    try:
        importlib.import_module("dicomnode.cli").build_parser()
        return (sys.executable, "-m", "dicomnode.cli")
    except Exception:  # noqa: BLE001 - any import problem elsewhere
        return (sys.executable, "-m", "dicomnode.service")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- test instances ---------------------------------------------------------------------------

def example_ct() -> list[Dataset]:
    """The 20 example CT slices as sent by their archive: SOP Class/Instance UID copied from
    the file meta into the data set (they are empty there, and dcmtk's storescu needs them);
    Study and Series Instance UID stay empty as in the original."""
    slices = []
    for path in sorted(EXAMPLE_CT.iterdir()):
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        slices.append(ds)
    return slices


def write_ct_series(folder: Path, count: int, *, study_uid: str | None = None,
                    series_uid: str | None = None, sources: list[Dataset] | None = None
                    ) -> dict[str, str]:
    """Write ``count`` CT instances of one new series; return {file name: SOP Instance UID}."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sources or example_ct()
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    written = {}
    for i in range(count):
        ds = copy.deepcopy(sources[i % len(sources)])
        uid = generate_uid()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SeriesNumber, ds.InstanceNumber = 2, i + 1
        name = f"ct{i:05d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
        written[name] = uid
    return written


def write_non_image(folder: Path, sop_class: str, modality: str) -> str:
    """A minimal non-image instance (SR, PR or KO) of its own series; returns its UID."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 900, 1
    ds.PatientID, ds.PatientName = "TEST-NON-IMAGE", "Test^NonImage"
    ds.ContentDate, ds.ContentTime = "20260101", "120000"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(folder / f"{modality}.dcm", enforce_file_format=True)
    return str(ds.SOPInstanceUID)


def write_short_pixel_data(path: Path) -> str:
    """A native (uncompressed) CT whose Pixel Data holds far fewer bytes than its
    Rows × Columns × 16 bits announce: a cut-off image that must not be indexed as good."""
    ds = example_ct()[0]
    uid = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = b"\x00\x01" * 500
    ds["PixelData"].VR = "OW"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return str(uid)


# --- dcmtk peers ------------------------------------------------------------------------------

def storescu(port: int, *paths: Path, calling: str = "STORESCU", called: str = AE_TITLE,
             extra: tuple[str, ...] = (), timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Send files/folders with dcmtk storescu (proposing JPEG 2000 as the files are); its log
    (stderr) is merged into ``stdout``."""
    command = [STORESCU, "-v", "-xv", "+sd", "+r", "-aet", calling, "-aec", called, *extra,
               "127.0.0.1", str(port), *map(str, paths)]
    return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


def echoscu(port: int, calling: str = "ECHOSCU", called: str = AE_TITLE
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ECHOSCU, "-v", "-aet", calling, "-aec", called, "127.0.0.1",
                           str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=60)


def acknowledged_files(storescu_log: str) -> list[str]:
    """Files storescu -v reports as answered with Success, in order."""
    acked, current = [], None
    for line in storescu_log.splitlines():
        if line.startswith("I: Sending file: "):
            current = line[len("I: Sending file: "):].strip()
        elif line.startswith("I: Received Store Response (Success)") and current:
            acked.append(current)
            current = None
    return acked


# --- the node under test ----------------------------------------------------------------------

@dataclass
class RunningNode:
    """A ``dicomnode serve`` subprocess and the configuration it runs with."""

    root: Path
    config: dict[str, Any]
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def spool(self) -> Path:
        return self.root / "var" / "spool"

    def start(self, timeout: float = 60) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config))
        log = self.root / f"serve-{len(self.logs)}.log"
        self.logs.append(log)
        with open(log, "wb") as handle:
            self.process = subprocess.Popen([*_cli(), "serve", "--config", str(self.config_path)],
                                            stdout=handle, stderr=subprocess.STDOUT,
                                            cwd=self.root)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited: {log.read_text()}")
            try:  # the listener opens last, once recovery and timers are done
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"serve did not listen: {log.read_text()}")

    def stop(self) -> int:
        """SIGTERM and wait: the graceful shutdown path."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=90)  # a loaded CI machine stops slowly
        finally:
            if self.process.poll() is None:
                self.process.kill()

    def kill9(self) -> None:
        """kill -9 of serve, and wait until its receiver processes, which the kernel kills
        with it (PR_SET_PDEATHSIG), are gone too: until then they still hold the port, and a
        restart's readiness probe would connect to them (as systemd waits for the cgroup)."""
        import psutil

        assert self.process is not None
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            children = []
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        _gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"receiver processes outlived serve: {[p.pid for p in alive]}"

    def status(self) -> dict[str, Any]:
        result = subprocess.run([*_cli(), "status", "--json", "--config", str(self.config_path)],
                                capture_output=True, text=True, timeout=60, cwd=self.root)
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    @property
    def database_url(self) -> str:
        """The index's SQLAlchemy URL (storage.database_url, or the default SQLite file)."""
        return (self.config.get("storage", {}).get("database_url")
                or f"sqlite:///{self.root / 'var' / 'dicomnode.sqlite3'}")

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Read (or, to model a lost commit, change) the index directly."""
        from sqlalchemy import create_engine, text

        engine = create_engine(self.database_url)
        try:
            with engine.begin() as conn:
                result = conn.execute(text(sql))
                return [tuple(row) for row in result] if result.returns_rows else []
        finally:
            engine.dispose()

    def quick_status(self) -> dict[str, Any]:
        """The same report as ``status --json``, computed in this process (fast, for polling)."""
        from dicomnode.service.status import collect_status
        from dicomnode.store import make_engine

        engine = make_engine(self.database_url)
        try:
            return collect_status(engine)
        finally:
            engine.dispose()

    def wait_for(self, predicate: Any, timeout: float = 60, interval: float = 0.3
                 ) -> dict[str, Any]:
        """Poll the status until ``predicate(status)`` holds; return that status."""
        deadline = time.monotonic() + timeout
        status = self.quick_status()
        while not predicate(status):
            if time.monotonic() > deadline:
                raise TimeoutError(json.dumps(status, indent=1)[:4000])
            time.sleep(interval)
            status = self.quick_status()
        return status


@contextlib.contextmanager
def running_nodes(tmp_path: Path) -> Iterator[Callable[[dict[str, Any], int], RunningNode]]:
    """``launch(config, port)`` starts a node in its own folder under ``tmp_path``; every node
    still running is stopped (SIGTERM) on exit. Shared by the fixtures that need nodes."""
    nodes: list[RunningNode] = []

    def launch(config: dict[str, Any], port: int) -> RunningNode:
        root = tmp_path / f"node{len(nodes)}"
        root.mkdir()
        node = RunningNode(root, config, port)
        nodes.append(node)
        node.start()
        return node

    try:
        yield launch
    finally:
        for node in nodes:
            if node.process is not None and node.process.poll() is None:
                node.stop()


def base_config(port: int, **overrides: dict[str, Any]) -> dict[str, Any]:
    """A test configuration on loopback ``port`` with a short series timeout."""
    config: dict[str, Any] = {
        "node": {"ae_title": AE_TITLE, "host": "127.0.0.1", "port": port},
        "storage": {"path": "var", "min_free": "1 MB"},
        "assembly": {"series_timeout": 1.5},
        # The operator console on a port of its own (its default 8080 would be shared).
        "web": {"port": free_port()},
        "logging": {"level": "INFO"},
        # Receive and hold only: complete series stay jobs in state ``complete``.
        "jobs": {"enabled": False},
    }
    for section, values in overrides.items():
        config.setdefault(section, {}).update(values)
    return config


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Callable[..., RunningNode]]:
    """Factory: ``make_node(**section_overrides)`` starts a node; all are stopped at teardown."""
    with running_nodes(tmp_path) as launch:
        def factory(**overrides: dict[str, Any]) -> RunningNode:
            port = free_port()
            return launch(base_config(port, **overrides), port)

        yield factory


@pytest.fixture(scope="session")
def ct_sources() -> list[Dataset]:
    return example_ct()


@pytest.fixture(scope="session")
def example_ct_folder(tmp_path_factory: pytest.TempPathFactory, ct_sources: list[Dataset]
                      ) -> Path:
    """The 20 example slices, sendable by storescu (see :func:`example_ct`)."""
    folder = tmp_path_factory.mktemp("example_ct")
    for ds in ct_sources:
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return folder
