"""Getting weights onto the node: pull from the official sources, install from a zip or folder,
verify.

* :func:`download` fetches one URL into a ``.part`` file and resumes it with an HTTP ``Range``
  request after an interruption; the finished file is checked against its SHA-256 when one is known.
* :func:`install` takes the official release files (zips or a folder, e.g. a Hugging Face snapshot
  copied onto a USB disk) into ``<models.path>/<name>/``. Everything is staged next to the target
  and moved into place only when every component was found, so a failed install never leaves a
  half-installed model behind.
* :func:`pull` = :func:`download` of every release file + :func:`install`.
* :func:`verify` loads each nnU-Net component on the configured device and segments a tiny volume.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from dicomnode.models.registry import MANIFEST, InstalledModel, ModelEntry, ModelStore
from dicomnode.models.runtime import InferenceSettings, ModelError, NnUNetRuntime

_CHUNK = 1 << 20


class SourceUnreachable(ModelError):
    """The download source could not be reached or refused the request."""


class ChecksumMismatch(ModelError):
    """A downloaded or installed file is not the one the registry names."""


class InstallError(ModelError):
    """The given zip or folder is not a release of the model."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str | None = None, *, timeout: float = 30.0,
             progress: bool = True, retries: int = 2) -> Path:
    """Download ``url`` to ``dest``, resuming a previous partial download; return ``dest``.

    The partial file is ``dest`` + ``.part``. A server that ignores ``Range`` restarts the file.
    A dropped connection is retried ``retries`` times, resuming each time. On a checksum mismatch
    the file is deleted (a retry starts from scratch) and :class:`ChecksumMismatch` is raised.
    """
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"User-Agent": "dicomnode"})
        if offset:
            request.add_header("Range", f"bytes={offset}-")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if offset and response.status != 206:  # Range ignored: start again
                    offset = 0
                length = response.headers.get("Content-Length")
                total = offset + int(length) if length is not None else None
                with part.open("ab" if offset else "wb") as out, tqdm(
                        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                        desc=dest.name, disable=not progress, leave=False) as bar:
                    while block := response.read(_CHUNK):
                        out.write(block)
                        bar.update(len(block))
                if total is not None and part.stat().st_size < total:
                    raise ConnectionError(f"connection closed after {part.stat().st_size} of "
                                          f"{total} bytes")
            break
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:  # nothing left to fetch: the part file is complete
                break
            raise SourceUnreachable(f"{url}: the server answered HTTP {exc.code} "
                                    f"{exc.reason}") from exc
        except (TimeoutError, urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            attempt += 1
            if attempt > retries:
                reason = getattr(exc, "reason", exc)
                raise SourceUnreachable(
                    f"cannot download {url}: {reason}. Check the network or proxy, or copy the "
                    f"file to this machine and use 'dicomnode models install'"
                    + (f" (the partial download {part} is kept and will be resumed)"
                       if part.exists() else "")) from exc
            time.sleep(min(1.0 * attempt, 5.0))
    if sha256 is not None:
        actual = sha256_of(part)
        if actual != sha256.lower():
            part.unlink()
            raise ChecksumMismatch(f"{url}: SHA-256 {actual} does not match the expected {sha256}; "
                                   f"the file was deleted, pull again")
    part.replace(dest)
    return dest


def pull(entry: ModelEntry, store: ModelStore, *, mirror: str = "", timeout: float = 30.0,
         progress: bool = True) -> InstalledModel:
    """Download an entry's release files (from ``mirror`` instead of the origin if given) and
    install."""
    folder = store.root / ".downloads" / entry.name
    paths = []
    for item in entry.downloads:
        url = f"{mirror.rstrip('/')}/{item.filename}" if mirror else item.url
        paths.append(download(url, folder / item.subdir / item.filename, item.sha256,
                              timeout=timeout, progress=progress))
    archives = [p for p in paths if p.suffix.lower() == ".zip"]
    # Record what was fetched, so a site can pin it (no seed source publishes checksums).
    checksums = {p.relative_to(folder).as_posix(): sha256_of(p) for p in paths}
    installed = install(entry, store, archives if archives else [folder], source="pull",
                        checksums=checksums)
    shutil.rmtree(folder, ignore_errors=True)
    return installed


def _extract(archive: Path, target: Path) -> None:
    """Extract a zip, refusing members that would land outside ``target``."""
    try:
        with zipfile.ZipFile(archive) as zf:
            root = target.resolve()
            for member in zf.namelist():
                if not (target / member).resolve().is_relative_to(root):
                    raise InstallError(f"{archive}: member {member!r} points outside the archive")
            zf.extractall(target)
    except zipfile.BadZipFile as exc:
        raise InstallError(f"{archive} is not a valid zip file ({exc}); download it again") from exc


def install(entry: ModelEntry, store: ModelStore, sources: Sequence[Path], *,
            source: str = "install", checksums: dict[str, str] | None = None) -> InstalledModel:
    """Install an entry from its release zips or from a folder holding the release layout.

    A zip is matched to the release file of the same name (else, for one-file releases, to that
    file) and extracted into its ``subdir``. A folder is copied as it is: for a one-part release it
    may be the model folder itself, a parent of it (a Hugging Face snapshot, an nnU-Net results
    folder) or hold the parts' sub-folders.
    """
    if not sources:
        raise InstallError("nothing to install: give a zip file or a folder")
    store.root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{entry.name}-", dir=store.root))
    try:
        checksums = dict(checksums or {})
        subdirs = {d.subdir for d in entry.downloads}
        # Releases in one part (a Hugging Face snapshot, one zip) go to their one subdir.
        single = next(iter(subdirs)) if len(subdirs) == 1 else None
        for path in map(Path, sources):
            if not path.exists():
                raise InstallError(f"{path} does not exist")
            if path.is_dir():
                # A folder that is itself a model folder is kept under its own name, as nnU-Net
                # needs.
                is_model_folder = ((path / "plans.json").is_file()
                                   or (path / "inference_config.json").is_file())
                inside = staging / (single or "")
                shutil.copytree(path, inside / path.name if is_model_folder else inside,
                                dirs_exist_ok=True)
                continue
            item = next((d for d in entry.downloads if d.filename == path.name), None)
            subdir = item.subdir if item is not None else single
            if subdir is None or path.suffix.lower() != ".zip":
                names = ", ".join(d.filename for d in entry.downloads)
                raise InstallError(f"{path.name} is not a release file of {entry.name} "
                                   f"(expected {names} or a folder)")
            checksums[path.name] = sha256_of(path)
            if item is not None and item.sha256 and checksums[path.name] != item.sha256.lower():
                raise ChecksumMismatch(f"{path}: SHA-256 {checksums[path.name]} does not match the "
                                       f"published {item.sha256}")
            _extract(path, staging / subdir)
        missing = [c.role for c in entry.components if c.locate(staging) is None]
        if missing:
            raise InstallError(f"{', '.join(map(str, sources))} does not hold the "
                               f"{', '.join(missing)} model folder(s) of {entry.name} in the "
                               "official release layout")
        manifest: dict[str, Any] = {
            "name": entry.name, "version": entry.version, "source": source,
            "installed_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "sha256": checksums,
            "size": sum(f.stat().st_size for f in staging.rglob("*") if f.is_file()),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        target = store.path_of(entry.name)
        old = target.with_name(f".old-{entry.name}-{staging.name}")
        if target.exists():
            target.replace(old)
        staging.replace(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    installed = store.find(entry.name)
    assert installed is not None
    return installed


@dataclass(frozen=True)
class VerifiedComponent:
    role: str
    folder: str
    trainer: str
    folds: list[Any]
    patch_size: tuple[int, ...]
    spacing: tuple[float, ...]
    labels_found: list[int]
    seconds: float
    note: str = ""


def verify(installed: InstalledModel, runtime: NnUNetRuntime,
           on_component: Callable[[VerifiedComponent], None] | None = None
           ) -> list[VerifiedComponent]:
    """Load every nnU-Net component and segment a tiny random volume with it.

    The volume is 1.5 patch sizes (at the model's own spacing), so the sliding window, the Gaussian
    blending and the resampling all run. Non-nnU-Net components (SPINEPS's instance U-Net) are
    only checked for presence here; their pipeline loads them.
    """
    results = []
    for component in installed.entry.components:
        if component.kind != "nnunet":
            installed.component(component.role)
            continue
        folder = installed.model_folder(component.role)
        start = time.perf_counter()
        loaded = runtime.model(folder, InferenceSettings())
        shape = tuple(int(s * 1.5) for s in loaded.patch_size)
        rng = np.random.default_rng(0)
        image = rng.normal(0, 100, size=(loaded.num_input_channels, *shape)).astype(np.float32)
        labels = runtime.predict(folder, InferenceSettings(), image, loaded.spacing)
        if labels.shape != shape:
            raise ModelError(f"{folder.path}: the prediction has shape {labels.shape}, "
                             f"expected {shape}")
        result = VerifiedComponent(component.role, folder.path.name, loaded.trainer_name,
                                   list(folder.folds), loaded.patch_size, loaded.spacing,
                                   sorted(int(v) for v in np.unique(labels)),
                                   round(time.perf_counter() - start, 2), loaded.trainer_note)
        results.append(result)
        if on_component:
            on_component(result)
    return results
