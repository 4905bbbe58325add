"""The local viewer stack: an Orthanc PACS (the default destination ``pacs``) and OHIF in front
of it, so that a newcomer's first result has somewhere to go and something to be seen in.

* **Orthanc** (Debian package, DICOMweb plugin) stores what the node sends on its own storage
  under the stack's folder, on the ports ``config.yaml``'s ``pacs`` destination names.
* **nginx** serves OHIF's built ``dist/`` (npm ``@ohif/app``, pinned) and proxies ``/dicom-web``
  and ``/wado`` to that Orthanc, so the viewer and its data share one origin (no CORS; Orthanc
  has none).

The stack's folder holds everything it writes: ``orthanc.json``, ``nginx.conf``,
``app-config.js``, the Orthanc database, pid files and logs. ``dicomnode viewer`` renders and
runs it; the systemd units and the tests run the same rendered files.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The OHIF release the stack installs and the browser tests run against.
OHIF_PACKAGE = "@ohif/app@3.13.2"
ORTHANC_PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))


class ViewerStackError(RuntimeError):
    """The stack cannot be installed or started; the message says which part and why."""


def orthanc_config(*, storage: Path, dicom_port: int, http_port: int,
                   ae_title: str = "ORTHANC") -> dict[str, Any]:
    """Orthanc's configuration: loopback only, the DICOMweb plugin with full metadata (OHIF
    needs the SEG's sequences in ``/metadata``), and any SOP class accepted (Orthanc 1.10
    does not know Label Map Segmentation Storage)."""
    plugins = [str(d) for d in ORTHANC_PLUGIN_DIRS if (d / "libOrthancDicomWeb.so").exists()]
    return {
        "Name": "dicomnode-pacs", "StorageDirectory": str(storage),
        "IndexDirectory": str(storage), "DicomAet": ae_title,
        "DicomPort": dicom_port, "HttpPort": http_port,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomCheckCalledAet": True, "UnknownSopClassAccepted": True,
        "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True,
        "HttpServerEnabled": True, "StableAge": 1,
        "Plugins": plugins[:1],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True,
                     "WadoRoot": "/wado", "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
    }


def app_config_js() -> str:
    """OHIF's ``app-config.js``: one DICOMweb data source at this origin's ``/dicom-web``."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": "dicomnode's local Orthanc",
            "name": "orthanc",
            "qidoRoot": "/dicom-web", "wadoRoot": "/dicom-web", "wadoUriRoot": "/wado",
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors", "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True, "supportsFuzzyMatching": False,
            "supportsWildcard": True, "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
        },
    }
    config = {
        "routerBasename": "/",
        "showStudyList": True,
        "extensions": [], "modes": [], "customizationService": {},
        # The first-visit "investigational use" dialog would cover the viewport every time.
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "dicomweb",
        "dataSources": [source],
    }
    return ("// Written by `dicomnode viewer configure`; edits are overwritten.\n"
            f"window.config = {json.dumps(config, indent=2)};\n")


def _file_owner(path: Path) -> str:
    return pwd.getpwuid(path.stat().st_uid).pw_name


@dataclass(frozen=True)
class ViewerStack:
    """Orthanc + OHIF behind nginx, configured and run from one folder.

    Attributes:
        folder: where the rendered configuration, Orthanc's storage, pids and logs live.
        ohif_dist: OHIF's built ``dist/`` (``install_ohif`` puts it there).
        host: the address nginx listens on (Orthanc itself listens on loopback only).
        viewer_port: nginx's port: OHIF at ``http://host:viewer_port/``.
        dicom_port / http_port: Orthanc's DICOM and REST ports.
        ae_title: Orthanc's AE title (the ``pacs`` destination's ``ae_title``).
    """

    folder: Path
    ohif_dist: Path
    host: str = "127.0.0.1"
    viewer_port: int = 3000
    dicom_port: int = 4242
    http_port: int = 8042
    ae_title: str = "ORTHANC"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.viewer_port}"

    @property
    def orthanc_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def study_url(self, study_instance_uid: str) -> str:
        return f"{self.url}/viewer?StudyInstanceUIDs={study_instance_uid}"

    def path(self, name: str) -> Path:
        return self.folder / name

    def nginx_config(self) -> str:
        """nginx: OHIF's files (``index.html`` for the app's own routes), our
        ``app-config.js`` in place of the package's, Orthanc behind ``/dicom-web``/``/wado``."""
        folder = self.folder.resolve()
        dist = self.ohif_dist.resolve()
        # Workers read the dist: run them as its owner (a clone in a home directory may not be
        # traversable by www-data). Only a root master may switch user.
        user = f"user {_file_owner(dist)};\n" if os.geteuid() == 0 else ""
        upstream = f"http://127.0.0.1:{self.http_port}"
        # Host: Orthanc writes absolute BulkDataURIs from it; with its own address they would
        # point the browser at another origin, which Orthanc answers without CORS headers.
        proxy = (f"proxy_pass {upstream}; proxy_http_version 1.1; proxy_buffering off; "
                 "proxy_set_header Host $http_host; proxy_read_timeout 300s; "
                 "client_max_body_size 0;")
        return f"""# Written by `dicomnode viewer configure`; edits are overwritten.
{user}worker_processes 2;
pid {folder}/nginx.pid;
error_log {folder}/nginx-error.log warn;
daemon off;
events {{ worker_connections 256; }}
http {{
  include /etc/nginx/mime.types;
  access_log {folder}/nginx-access.log;
  client_body_temp_path {folder}/nginx-tmp/body;
  proxy_temp_path {folder}/nginx-tmp/proxy;
  fastcgi_temp_path {folder}/nginx-tmp/fastcgi;
  uwsgi_temp_path {folder}/nginx-tmp/uwsgi;
  scgi_temp_path {folder}/nginx-tmp/scgi;
  gzip on;
  gzip_types application/javascript text/css application/json application/dicom+json;
  server {{
    listen {self.host}:{self.viewer_port};
    root {dist};
    location = /app-config.js {{ alias {folder}/app-config.js; add_header Cache-Control no-store; }}
    location /dicom-web/ {{ {proxy} }}
    location /wado {{ {proxy} }}
    location / {{ try_files $uri $uri/ /index.html; }}
  }}
}}
"""

    def configure(self) -> None:
        """Write Orthanc's and nginx's configuration and OHIF's ``app-config.js``."""
        if not (self.ohif_dist / "index.html").exists():
            raise ViewerStackError(f"OHIF is not installed at {self.ohif_dist} "
                                   "(run `dicomnode viewer install`)")
        for sub in ("orthanc-storage", "nginx-tmp"):
            self.path(sub).mkdir(parents=True, exist_ok=True)
        config = orthanc_config(storage=self.path("orthanc-storage").resolve(),
                                dicom_port=self.dicom_port, http_port=self.http_port,
                                ae_title=self.ae_title)
        self.path("orthanc.json").write_text(json.dumps(config, indent=2))
        self.path("nginx.conf").write_text(self.nginx_config())
        self.path("app-config.js").write_text(app_config_js())

    # -- running it without a service manager (setup.sh, tests) ------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Configure, then start Orthanc and nginx in the background unless already running;
        return once both answer."""
        self.configure()
        orthanc = shutil.which("Orthanc")
        nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                         else None)
        if not orthanc or not nginx:
            raise ViewerStackError("the viewer stack needs the Debian packages orthanc, "
                                   "orthanc-dicomweb and nginx")
        if self._running("orthanc") is None:
            self._spawn("orthanc", [orthanc, str(self.path("orthanc.json").resolve())])
        if self._running("nginx") is None:
            self._spawn("nginx", [nginx, "-e", str(self.path("nginx-error.log").resolve()),
                                  "-c", str(self.path("nginx.conf").resolve())])
        self._wait(timeout)

    def stop(self) -> None:
        for name in ("nginx", "orthanc"):
            pid = self._running(name)
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and _alive(pid):
                    time.sleep(0.1)
            self.path(f"{name}.run.pid").unlink(missing_ok=True)

    def status(self) -> dict[str, int | None]:
        """The pid of each running part, ``None`` where it is not running."""
        return {name: self._running(name) for name in ("orthanc", "nginx")}

    def _spawn(self, name: str, argv: list[str]) -> None:
        with open(self.path(f"{name}.log"), "ab") as log:  # the child holds its own copy
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        self.path(f"{name}.run.pid").write_text(str(process.pid))

    def _running(self, name: str) -> int | None:
        try:
            pid = int(self.path(f"{name}.run.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        checks = {"Orthanc DICOMweb": f"{self.orthanc_url}/dicom-web/studies",
                  "OHIF (nginx)": f"{self.url}/app-config.js",
                  "Orthanc through nginx": f"{self.url}/dicom-web/studies"}
        for what, url in checks.items():
            while True:
                try:
                    with urllib.request.urlopen(url, timeout=5):
                        break
                except (OSError, urllib.error.URLError) as exc:
                    dead = [n for n, pid in self.status().items() if pid is None]
                    if dead or time.monotonic() > deadline:
                        logs = ", ".join(str(self.path(f"{n}.log")) for n in ("orthanc", "nginx"))
                        raise ViewerStackError(
                            f"{what} does not answer at {url} ({exc}); "
                            f"not running: {dead or 'none'}; see {logs}") from None
                    time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=5):
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of this process still "exists"; reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == 0


def install_ohif(dest: Path, package: str = OHIF_PACKAGE, npm: str = "npm") -> Path:
    """Put the built ``dist/`` of ``package`` at ``dest`` (``npm pack``: the package tarball
    only, checked against the registry's integrity hash, none of its build dependencies).
    A ``dest`` that already holds this version is kept."""
    marker = dest / ".ohif-package"
    if marker.exists() and marker.read_text().strip() == package:
        return dest
    if not shutil.which(npm):
        raise ViewerStackError("installing OHIF needs npm (Debian package npm)")
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run([npm, "pack", package, "--silent", "--pack-destination", tmp],
                                capture_output=True, text=True, cwd=tmp)
        tarballs = list(Path(tmp).glob("*.tgz"))
        if result.returncode or not tarballs:
            raise ViewerStackError(f"npm pack {package} failed: {result.stderr.strip()}")
        staging = Path(tmp) / "unpacked"
        with tarfile.open(tarballs[0]) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith("package/dist/")]
            archive.extractall(staging, members=members, filter="data")
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging / "package" / "dist"), dest)
    marker.write_text(package + "\n")
    return dest
