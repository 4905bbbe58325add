"""A real Orthanc PACS (Debian package) on loopback, for dispatch and end-to-end tests.

Orthanc stores what it receives by C-STORE or STOW-RS; tests read it back through its REST API.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicomnode.viewer import orthanc_config

ORTHANC = shutil.which("Orthanc")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Orthanc:
    """A running (or stopped) Orthanc; ``start``/``stop`` may be called repeatedly."""

    folder: Path
    ae_title: str = "ORTHANC"
    dicom_port: int = 0
    http_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    #: Peers Orthanc may send to (``POST /modalities/<name>/store``): name → (AE, host, port).
    modalities: dict[str, tuple[str, str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dicom_port = self.dicom_port or free_port()
        self.http_port = self.http_port or free_port()
        # the viewer stack's configuration (one definition of how Orthanc is run), on this
        # test's folder and ports, with the peers it may send to
        config = orthanc_config(storage=self.folder / "db", dicom_port=self.dicom_port,
                                http_port=self.http_port, ae_title=self.ae_title)
        config["Name"] = "dicomnode-test"
        config["DicomModalities"] = {name: list(peer) for name, peer in self.modalities.items()}
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "orthanc.json").write_text(json.dumps(config))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self, timeout: float = 30.0) -> None:
        assert ORTHANC, "Orthanc is not installed (Debian package 'orthanc')"
        with open(self.folder / "orthanc.log", "ab") as log:  # the child holds its own copy
            self.process = subprocess.Popen([ORTHANC, str(self.folder / "orthanc.json")],
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.get("/system")
                with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=1):
                    return
            except (OSError, urllib.error.URLError):
                if self.process.poll() is not None:
                    log_path = self.folder / "orthanc.log"
                    raise RuntimeError(f"Orthanc exited: see {log_path}") from None
                time.sleep(0.2)
        raise RuntimeError("Orthanc did not start in time")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.process = None

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def post(self, path: str, body: bytes | Any, timeout: float = 120) -> Any:
        """POST raw bytes (e.g. a DICOM file to ``/instances``) or a JSON body."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method="POST")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")

    def instances(self) -> list[dict[str, Any]]:
        """Every stored instance with its main DICOM tags (simplified)."""
        return [self.get(f"/instances/{i}/simplified-tags") for i in self.get("/instances")]

    def sop_instance_uids(self) -> list[str]:
        return [tags["SOPInstanceUID"] for tags in self.instances()]
