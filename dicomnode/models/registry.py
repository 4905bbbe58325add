"""The models the node can run: where their weights come from and how an installed copy is laid out.

Every seed model is an entry in :data:`REGISTRY`. An entry lists its **downloads** (official URLs;
sizes and SHA-256 checksums where they are published; none of the seed sources publishes a
checksum, so the checksum of what was pulled is recorded at install time and shown by
``dicomnode models list``) and its **components** (the model folders a pipeline loads, found by a
glob inside the installed copy, so the official release layouts install unchanged).

Installed copies live in ``<models.path>/<name>/``: zip archives are extracted into the download's
``subdir``, single files keep their path. A copy counts as installed when its manifest
(``dicomnode-model.json``, written last by ``install``) exists and every component is found.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from dicomnode.models.runtime import Fold, ModelError, ModelFolder

if TYPE_CHECKING:  # the configuration validates against this registry, so no runtime import
    from dicomnode.config import PipelineName

MANIFEST = "dicomnode-model.json"


class UnknownModel(ModelError):
    """A model name that is not in the registry."""

    def __init__(self, name: str):
        super().__init__(f"unknown model {name!r}; known models: {', '.join(REGISTRY)}")
        self.name = name


class ModelNotInstalled(ModelError):
    """A pipeline needs a model whose weights are not installed (or are incomplete)."""


@dataclass(frozen=True)
class Download:
    """One file of an official release."""

    url: str
    #: Where the file goes: a zip is extracted into ``subdir``; any other file is kept at
    #: ``subdir/filename`` (Hugging Face snapshots keep their repository paths).
    filename: str
    subdir: str = ""
    sha256: str | None = None
    size: int | None = None

    @property
    def is_archive(self) -> bool:
        return self.filename.lower().endswith(".zip")


@dataclass(frozen=True)
class Component:
    """A model folder inside an installed copy that a pipeline loads."""

    role: str
    #: Glob (relative to ``<copy>/<subdir>``) matching the model folder, or a marker file inside it.
    pattern: str
    subdir: str = ""
    kind: Literal["nnunet", "spineps-unet"] = "nnunet"
    folds: tuple[Fold, ...] | None = None
    checkpoints: tuple[str, ...] = ("checkpoint_final.pth",)

    def locate(self, root: Path) -> Path | None:
        """The folder of this component under an installed copy, or None when absent."""
        base = root / self.subdir
        if not base.is_dir():
            return None
        found = sorted({p if p.is_dir() else p.parent for p in base.glob(self.pattern)})
        if self.kind == "nnunet":
            found = [p for p in found
                     if (p / "plans.json").is_file() and (p / "dataset.json").is_file()]
        return found[0] if found else None


@dataclass(frozen=True)
class ModelEntry:
    """A model the node can run, as published by its authors."""

    name: str
    pipeline: PipelineName
    modality: str
    description: str
    version: str
    source: str
    license: str
    downloads: tuple[Download, ...]
    components: tuple[Component, ...]

    @property
    def size(self) -> int | None:
        sizes = [d.size for d in self.downloads]
        return None if None in sizes else sum(s for s in sizes if s is not None)


_HF = "https://huggingface.co/fhofmann/VertebralBodiesCT-ResEnc{variant}/resolve/main/"
_TSS = "https://github.com/neuropoly/totalspineseg/releases/download/r20251124/"
_SPINEPS = "https://github.com/Hendrik-code/spineps/releases/download/"


def _vertebral_bodies(variant: str, folds: tuple[Fold, ...]) -> ModelEntry:
    folder = f"nnUNetTrainer__nnUNetResEncUNet{variant}Plans__3d_fullres"
    files = ["dataset.json", "plans.json"] + [f"fold_{f}/checkpoint_final.pth" for f in folds]
    what = "one model trained on all data (fold_all)" if folds == ("all",) else "5-fold ensemble"
    return ModelEntry(
        name=f"vertebral-bodies-ct-{variant.lower()}",
        pipeline="vertebral-bodies-ct",
        modality="CT",
        description=f"VertebralBodiesCT nnU-Net ResEnc {variant}, {what}: vertebral bodies T1-L5, "
                    f"T13/L6, sacrum",
        version="2024-08-29",  # dataset.json "release"; the Hugging Face repository has no tags
        source=f"https://huggingface.co/fhofmann/VertebralBodiesCT-ResEnc{variant}",
        license="CC BY-SA 4.0, not for clinical use",
        downloads=tuple(Download(_HF.format(variant=variant) + f"{folder}/{f}", f"{folder}/{f}")
                        for f in files),
        components=(Component("bodies", f"**/{folder}", folds=folds),),
    )


def _spineps(contrast: str) -> ModelEntry:
    return ModelEntry(
        name=f"spineps-{contrast}",
        pipeline="spineps",
        modality="MR",
        description=f"SPINEPS sagittal {contrast.upper()} semantic nnU-Net (v1.0.9) and vertebra "
                    f"instance U-Net (v1.2.0)",
        version="v1.0.9+instance-v1.2.0",
        source="https://github.com/Hendrik-code/spineps",
        license="Apache-2.0 (code); weights as published by the SPINEPS authors",
        downloads=(Download(_SPINEPS + f"v1.0.9/{contrast}.zip", f"{contrast}.zip", "semantic"),
                   Download(_SPINEPS + "v1.2.0/instance.zip", "instance.zip", "instance")),
        # SPINEPS model folders carry inference_config.json; folds come from it (available_folds).
        components=(Component("semantic", "**/plans.json", "semantic",
                              checkpoints=("checkpoint_final.pth", "checkpoint_best.pth")),
                    Component("instance", "**/inference_config.json", "instance",
                              kind="spineps-unet")),
    )


def _totalspineseg_step(step: int) -> Component:
    # inference.py: <results>/<dataset>/*/fold_* with fold 0, checkpoint_best preferred.
    return Component(f"step{step}", f"**/Dataset10{step}_TotalSpineSeg_step{step}/*__*__*",
                     f"step{step}", folds=(0,),
                     checkpoints=("checkpoint_best.pth", "checkpoint_final.pth"))


REGISTRY: Mapping[str, ModelEntry] = MappingProxyType({e.name: e for e in (
    _vertebral_bodies("M", ("all",)),
    _vertebral_bodies("L", (0, 1, 2, 3, 4)),
    ModelEntry(
        name="totalspineseg",
        pipeline="totalspineseg",
        modality="MR, CT",
        description="TotalSpineSeg two-step nnU-Net (step 1: discs, cord, canal; step 2: vertebrae "
                    "and discs from the image plus the odd discs of step 1)",
        version="r20251124",
        source="https://github.com/neuropoly/totalspineseg",
        license="Apache-2.0 (code); weights as published by NeuroPoly",
        downloads=tuple(Download(_TSS + f"Dataset10{s}_TotalSpineSeg_step{s}_r20251124.zip",
                                 f"Dataset10{s}_TotalSpineSeg_step{s}_r20251124.zip", f"step{s}")
                        for s in (1, 2)),
        components=(_totalspineseg_step(1), _totalspineseg_step(2)),
    ),
    _spineps("t2w"),
    _spineps("t1w"),
)})


def get_entry(name: str) -> ModelEntry:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownModel(name) from None


@dataclass(frozen=True)
class InstalledModel:
    """An installed copy: where it is and what its manifest says."""

    entry: ModelEntry
    path: Path
    manifest: dict[str, Any]

    def component(self, role: str) -> Path:
        for component in self.entry.components:
            if component.role == role:
                found = component.locate(self.path)
                if found is None:
                    raise ModelNotInstalled(f"{self.entry.name}: the {role} model folder is "
                                            f"missing from {self.path}; install the model again")
                return found
        raise ModelNotInstalled(f"{self.entry.name} has no component {role!r}")

    def model_folder(self, role: str) -> ModelFolder:
        """The nnU-Net model folder of a component, with the entry's folds and checkpoints."""
        component = next(c for c in self.entry.components if c.role == role)
        return ModelFolder.open(self.component(role), component.folds, component.checkpoints)

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", self.entry.version))

    def is_warm(self, loaded: Collection[Path]) -> bool:
        """Whether every nnU-Net component is among ``loaded`` model folders (a runtime's
        ``loaded()``): a job of its pipeline then starts without loading it."""
        folders = [self.component(c.role).resolve() for c in self.entry.components
                   if c.kind == "nnunet"]
        resolved = {path.resolve() for path in loaded}
        return bool(folders) and all(folder in resolved for folder in folders)


class ModelStore:
    """The weights directory (config key ``models.path``)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def path_of(self, name: str) -> Path:
        return self.root / name

    def find(self, name: str) -> InstalledModel | None:
        """The installed copy of a model, or None when it is not (completely) installed."""
        entry = get_entry(name)
        path = self.path_of(name)
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if any(c.locate(path) is None for c in entry.components):
            return None
        return InstalledModel(entry, path, manifest)

    def require(self, name: str) -> InstalledModel:
        installed = self.find(name)
        if installed is None:
            raise ModelNotInstalled(
                f"model {name} is not installed in {self.root}; run 'dicomnode models pull {name}' "
                f"or, without internet access, 'dicomnode models install {name} PATH'")
        return installed


def model_rows(store: ModelStore, loaded: Collection[Path] = ()) -> list[dict[str, Any]]:
    """Every registry entry as ``dicomnode models list --json`` and ``GET /api/v1/models``
    show it: installed or not, version, size, and ``warm`` (among the ``loaded`` folders of a
    runtime: its next job starts without loading it)."""
    rows = []
    for entry in REGISTRY.values():
        installed = store.find(entry.name)
        rows.append({
            "name": entry.name, "pipeline": entry.pipeline, "modality": entry.modality,
            "installed": installed is not None,
            "version": installed.version if installed else entry.version,
            "path": str(installed.path) if installed else None,
            "size": installed.manifest.get("size") if installed else entry.size,
            "source": entry.source,
            "warm": installed is not None and installed.is_warm(loaded),
        })
    return rows
