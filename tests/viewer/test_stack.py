"""``dicomnode viewer``: the local Orthanc + OHIF that the setup leaves running, started and
stopped through the CLI on free ports; what it serves; what it refuses."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from dicomnode.viewer import app_config_js
from tests import synthetic
from tests.dcmtk import ECHOSCU
from tests.orthanc import free_port


def _viewer(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicomnode.cli", "viewer", *args,
                           "--config", str(config)], capture_output=True, text=True, timeout=120)


def _config(tmp_path: Path, host: str = "127.0.0.1") -> tuple[Path, int]:
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "storage": {"path": str(tmp_path / "var")},
        "destinations": {"pacs": {"type": "dicom", "ae_title": "LOCALPACS", "host": host,
                                  "port": port}},
    }))
    return path, port


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read()


def test_start_serves_ohif_and_plays_the_pacs_destination(tmp_path: Path,
                                                          ohif_dist: Path) -> None:
    config, dicom_port = _config(tmp_path)
    web, rest = free_port(), free_port()
    common = ("--ohif-dist", str(ohif_dist), "--port", str(web),
              "--orthanc-http-port", str(rest))
    started = _viewer(config, "start", *common)
    try:
        assert started.returncode == 0, started.stderr
        status = _viewer(config, "status", *common)
        assert status.returncode == 0, status.stdout + status.stderr
        assert all(json.loads(status.stdout)["pids"].values())
        # the stack lives under the storage path
        assert (tmp_path / "var" / "viewer" / "orthanc.json").exists()
        # OHIF's app, its own routes, our app-config.js in place of the package's
        assert b"<!doctype html>" in _get(f"http://127.0.0.1:{web}/")[1].lower()
        assert b"<!doctype html>" in _get(f"http://127.0.0.1:{web}/viewer?x=1")[1].lower()
        assert _get(f"http://127.0.0.1:{web}/app-config.js")[1].decode() == app_config_js()
        # Orthanc's DICOMweb through the same origin, bulk data links included (Orthanc
        # writes them from the Host header: its own address would be another origin)
        assert json.loads(_get(f"http://127.0.0.1:{web}/dicom-web/studies")[1]) == []
        ds = synthetic.axial_ct().datasets[0]
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        request = urllib.request.Request(f"http://127.0.0.1:{rest}/instances",
                                         data=buffer.getvalue(), method="POST")
        urllib.request.urlopen(request, timeout=30).read()
        metadata = json.loads(_get(
            f"http://127.0.0.1:{web}/dicom-web/studies/{ds.StudyInstanceUID}/series/"
            f"{ds.SeriesInstanceUID}/metadata")[1])
        links = [v["BulkDataURI"] for item in metadata for v in item.values()
                 if isinstance(v, dict) and "BulkDataURI" in v]
        assert links and all(link.startswith(f"http://127.0.0.1:{web}/dicom-web/")
                             for link in links), links
        # the destination's AE title and port answer C-ECHO
        echo = subprocess.run([ECHOSCU, "-aec", "LOCALPACS", "127.0.0.1", str(dicom_port)],
                              capture_output=True, text=True, timeout=30)
        assert echo.returncode == 0, echo.stdout + echo.stderr
        # a second start is a no-op: the running parts are kept
        again = _viewer(config, "start", *common)
        assert again.returncode == 0, again.stderr
        assert json.loads(_viewer(config, "status", *common).stdout)["pids"] == \
            json.loads(status.stdout)["pids"]
    finally:
        stopped = _viewer(config, "stop", *common)
    assert stopped.returncode == 0, stopped.stderr
    after = _viewer(config, "status", *common)
    assert after.returncode == 3
    assert not any(json.loads(after.stdout)["pids"].values())


@pytest.mark.parametrize("host", ["10.1.2.3", "pacs.example.org"])
def test_a_remote_pacs_destination_is_not_played(tmp_path: Path, host: str) -> None:
    config, _ = _config(tmp_path, host)
    result = _viewer(config, "start")
    assert result.returncode == 1
    assert f"destinations.pacs is at {host}" in result.stderr
    assert "--no-viewer" in result.stderr


def test_missing_ohif_is_named(tmp_path: Path) -> None:
    config, _ = _config(tmp_path)
    result = _viewer(config, "configure", "--ohif-dist", str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert "OHIF is not installed" in result.stderr and "dicomnode viewer install" in result.stderr
