"""End-to-end fixtures: a real Orthanc, a model store with a VertebralBodiesCT-shaped nnU-Net
(random weights, built with nnunetv2's own trainer), and a ``dicomnode serve`` routing CT to it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.orthanc import ORTHANC, Orthanc
from tests.service.conftest import AE_TITLE, RunningNode, ct_sources, example_ct_folder, free_port  # noqa: F401 - shared fixtures

if ORTHANC is None:
    pytest.skip("Orthanc (Debian 'orthanc') not installed", allow_module_level=True)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights folder with ``vertebral-bodies-ct-m`` installed by ``dicomnode models install``."""
    from tests.models.modelfolders import build_model_folder

    results = tmp_path_factory.mktemp("nnUNet_results")
    # Coarse target spacing: nnU-Net resamples every input to it, so this keeps CPU inference
    # to seconds whatever the input's resolution.
    folder = build_model_folder(results, "nnUNetResEncUNetMPlans", ["all"], seed=3,
                                spacing=(4.0, 3.0, 3.0))
    store = tmp_path_factory.mktemp("models")
    config = store / "config.yaml"
    config.write_text(f"models:\n  path: {store}\n")
    subprocess.run([sys.executable, "-m", "dicomnode.cli", "models", "install",
                    "vertebral-bodies-ct-m", str(folder), "--config", str(config)],
                   check=True, capture_output=True, text=True)
    return store


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path / "orthanc")
    server.start()
    yield server
    server.stop()


def node_config(port: int, orthanc: Orthanc, models: Path, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "node": {"ae_title": AE_TITLE, "host": "127.0.0.1", "port": port},
        "storage": {"path": "var", "min_free": "1 MB"},
        "assembly": {"series_timeout": 1.0},
        "web": {"port": free_port()},  # the console's default 8080 would be shared
        "logging": {"level": "INFO"},
        "models": {"path": str(models), "device": "cpu", "threads": 1},
        "jobs": {"workers": 2, "poll_interval": 0.2},
        "routing": {"rules": [{
            "name": "ct", "match": {"modality": ["CT"], "image_type_excludes": ["LOCALIZER"]},
            "pipelines": ["vertebral-bodies-ct"], "destinations": ["pacs"]}]},
        "destinations": {"pacs": {"type": "dicom", "ae_title": orthanc.ae_title,
                                  "host": "127.0.0.1", "port": orthanc.dicom_port}},
        "dispatch": {"max_attempts": 50, "initial_backoff": 0.5, "max_backoff": 1.0,
                     "echo_interval": 2},
        "retention": {"keep_done_hours": 0},
    }
    for section, values in overrides.items():
        config.setdefault(section, {}).update(values)
    return config


@pytest.fixture
def make_e2e_node(tmp_path: Path, model_store: Path) -> Iterator[Callable[..., RunningNode]]:
    nodes: list[RunningNode] = []

    def factory(orthanc: Orthanc, **overrides: Any) -> RunningNode:
        port = free_port()
        root = tmp_path / f"node{len(nodes)}"
        root.mkdir()
        node = RunningNode(root, node_config(port, orthanc, model_store, **overrides), port)
        nodes.append(node)
        node.start()
        return node

    yield factory
    for node in nodes:
        if node.process is not None and node.process.poll() is None:
            node.stop()


def jobs_in(node: RunningNode, *states: str) -> Callable[[dict[str, Any]], bool]:
    """A ``wait_for`` predicate: there are jobs and every one is in one of ``states``."""
    return lambda s: bool(s["jobs"]) and all(j["state"] in states for j in s["jobs"])


def wait_until(predicate: Callable[[], bool], timeout: float = 120, interval: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)


def orthanc_objects(orthanc: Orthanc) -> list[pydicom.Dataset]:
    """Every instance Orthanc holds, as parsed DICOM (read back through its REST API)."""
    import io
    import urllib.request

    out = []
    for instance in orthanc.get("/instances"):
        with urllib.request.urlopen(f"{orthanc.url}/instances/{instance}/file", timeout=30) as r:
            out.append(pydicom.dcmread(io.BytesIO(r.read())))
    return out
