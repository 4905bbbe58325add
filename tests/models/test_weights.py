"""Pull, install and verify against a loopback HTTP server and model folders built by the tests."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomnode.cli import main
from dicomnode.models.registry import MANIFEST, REGISTRY, Component, Download, ModelStore, get_entry
from dicomnode.models.runtime import NnUNetRuntime
from dicomnode.models.weights import (
    ChecksumMismatch,
    InstallError,
    SourceUnreachable,
    download,
    install,
    pull,
    verify,
)
from tests.models.modelfolders import zip_folder


class _Server(http.server.ThreadingHTTPServer):
    files: dict[str, bytes]
    #: Drop the connection after this many bytes of the next full (non-Range) response.
    cut_after: int | None = None
    ranges_seen: list[str]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        body = self.server.files.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        requested = self.headers.get("Range")
        if requested:
            self.server.ranges_seen.append(requested)
            start = int(requested.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_error(416, "Range Not Satisfiable")
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        cut = self.server.cut_after
        if cut is not None and not requested:
            self.server.cut_after = None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # mid-transfer network failure
            return
        self.wfile.write(body[start:])


@pytest.fixture
def server() -> Iterator[_Server]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.ranges_seen = {}, []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _url(server: _Server, name: str = "") -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/{name}"


def test_download_resumes_after_interruption(server: _Server, tmp_path: Path) -> None:
    body = bytes(range(256)) * 4000  # ~1 MB
    server.files["weights.zip"] = body
    server.cut_after = 300_000
    dest = tmp_path / "weights.zip"
    with pytest.raises(SourceUnreachable, match="partial download"):
        download(_url(server, "weights.zip"), dest, progress=False, retries=0)
    part = dest.with_name("weights.zip.part")
    assert 0 < part.stat().st_size < len(body)

    download(_url(server, "weights.zip"), dest, hashlib.sha256(body).hexdigest(), progress=False)
    assert dest.read_bytes() == body and not part.exists()
    assert server.ranges_seen == [f"bytes={300_000}-"]


def test_download_retries_and_resumes_within_one_call(server: _Server, tmp_path: Path) -> None:
    body = b"x" * 200_000
    server.files["a.bin"] = body
    server.cut_after = 1000
    download(_url(server, "a.bin"), tmp_path / "a.bin", progress=False, retries=1)
    assert (tmp_path / "a.bin").read_bytes() == body and server.ranges_seen == ["bytes=1000-"]


def test_checksum_mismatch_deletes_the_file(server: _Server, tmp_path: Path) -> None:
    server.files["w.zip"] = b"not the published weights"
    with pytest.raises(ChecksumMismatch, match="does not match"):
        download(_url(server, "w.zip"), tmp_path / "w.zip", "0" * 64, progress=False)
    assert not list(tmp_path.iterdir())


def test_unreachable_and_missing_sources_are_reported(server: _Server, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SourceUnreachable, match="cannot download .*models install"):
        download(f"http://127.0.0.1:{port}/x.zip", tmp_path / "x.zip", progress=False, retries=0)
    with pytest.raises(SourceUnreachable, match="HTTP 404"):
        download(_url(server, "missing.zip"), tmp_path / "m.zip", progress=False)


def _entry_from(model_folder: Path, server: _Server, archive: Path) -> object:
    """vertebral-bodies-ct-m as if its release were one zip with a known checksum."""
    data = archive.read_bytes()
    server.files[archive.name] = data
    entry = get_entry("vertebral-bodies-ct-m")
    return dataclasses.replace(entry, downloads=(
        Download(_url(server, archive.name), archive.name, sha256=hashlib.sha256(data).hexdigest(),
                 size=len(data)),))


def test_pull_installs_and_verify_runs(server: _Server, model_folders: dict[str, Path],
                                       tmp_path: Path) -> None:
    folder = model_folders["m"]
    archive = zip_folder(folder, tmp_path / "release.zip",
                         f"Dataset601_VertebralBodies/{folder.name}/")
    entry = _entry_from(folder, server, archive)
    store = ModelStore(tmp_path / "models")
    installed = pull(entry, store, progress=False)  # type: ignore[arg-type]
    assert store.find("vertebral-bodies-ct-m") is not None
    assert installed.manifest["sha256"] == {"release.zip": entry.downloads[0].sha256}  # type: ignore[attr-defined]
    assert not (store.root / ".downloads" / "vertebral-bodies-ct-m").exists()

    (result,) = verify(installed, NnUNetRuntime("cpu"))
    assert result.folds == ["all"] and result.trainer == "nnUNetTrainer"
    assert result.patch_size == (16, 32, 32) and len(result.labels_found) > 1


def test_cli_pull_from_mirror_list_and_verify(server: _Server, model_folders: dict[str, Path],
                                              config_file: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The Hugging Face file layout served by a local mirror, through the command line."""
    folder = model_folders["m"]
    for item in get_entry("vertebral-bodies-ct-m").downloads:
        server.files[item.filename] = (folder.parent / item.filename).read_bytes()
    assert main(["models", "pull", "vertebral-bodies-ct-m", "--mirror", _url(server),
                 "--config", str(config_file)]) == 0
    assert main(["models", "list", "--config", str(config_file)]) == 0
    listing = capsys.readouterr().out
    assert any(line.startswith("vertebral-bodies-ct-m") and " yes " in line
               for line in listing.splitlines())
    assert main(["models", "verify", "vertebral-bodies-ct-m", "--config", str(config_file)]) == 0
    assert "OK" in capsys.readouterr().out
    # Every pulled file's SHA-256 is recorded, so a site can pin what it fetched.
    installed = ModelStore(config_file.parent / "models").require("vertebral-bodies-ct-m")
    downloads = get_entry("vertebral-bodies-ct-m").downloads
    assert set(installed.manifest["sha256"]) == {d.filename for d in downloads}


def test_cli_pull_unreachable_exits_non_zero(config_file: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config_file.write_text(config_file.read_text() + "  download_timeout: 2\n")
    code = main(["models", "pull", "totalspineseg", "--mirror", f"http://127.0.0.1:{port}",
                 "--config", str(config_file)])
    assert code == 1
    assert "cannot download" in capsys.readouterr().err


def test_install_from_zip_and_from_folder(model_folders: dict[str, Path], tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    folder = model_folders["l"]
    archive = zip_folder(folder.parent.parent, tmp_path / "l.zip")  # nnUNet_results layout
    installed = install(get_entry("vertebral-bodies-ct-l"), store, [archive])
    assert installed.model_folder("bodies").folds == (0, 1, 2, 3, 4)
    assert len(installed.manifest["sha256"]["l.zip"]) == 64

    # A folder: the model folder itself (as copied off a Hugging Face snapshot) replaces it.
    again = install(get_entry("vertebral-bodies-ct-l"), store, [folder])
    assert again.model_folder("bodies").path.name == folder.name
    assert [p.name for p in store.root.iterdir()] == ["vertebral-bodies-ct-l"]  # no staging left


def test_install_rejects_what_is_not_the_release(model_folders: dict[str, Path],
                                                 tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    with pytest.raises(InstallError, match="official release layout"):  # M weights are not L
        install(get_entry("vertebral-bodies-ct-l"), store, [model_folders["m"]])
    bad = tmp_path / "broken.zip"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(InstallError, match="not a valid zip"):
        install(get_entry("vertebral-bodies-ct-m"), store, [bad])
    with pytest.raises(InstallError, match="not a release file"):
        install(get_entry("totalspineseg"), store, [bad])
    assert not any(store.root.iterdir())
    assert store.find("vertebral-bodies-ct-l") is None


def test_install_totalspineseg_release_zips(model_folders: dict[str, Path], tmp_path: Path) -> None:
    """Two zips named as the release names them; trainer nnUNetTrainerDAExtGPU, fold 0."""
    folder = model_folders["daext"]
    zips = []
    for step in (1, 2):
        name = f"Dataset10{step}_TotalSpineSeg_step{step}"
        zips.append(zip_folder(folder, tmp_path / f"{name}_r20251124.zip",
                               f"{name}/{folder.name}/"))
    store = ModelStore(tmp_path / "models")
    installed = install(get_entry("totalspineseg"), store, zips)
    step2 = installed.model_folder("step2")
    assert step2.folds == (0,) and step2.checkpoint == "checkpoint_final.pth"
    assert (store.root / "totalspineseg" / MANIFEST).is_file()


def test_registry_lists_every_seed_model() -> None:
    assert set(REGISTRY) == {"vertebral-bodies-ct-m", "vertebral-bodies-ct-l", "totalspineseg",
                             "spineps-t2w", "spineps-t1w"}
    for entry in REGISTRY.values():
        assert entry.downloads and all(d.url.startswith("https://") for d in entry.downloads)
        assert all(isinstance(c, Component) for c in entry.components)
    assert {c.role for c in REGISTRY["spineps-t2w"].components} == {"semantic", "instance"}
    assert REGISTRY["vertebral-bodies-ct-l"].components[0].folds == (0, 1, 2, 3, 4)
