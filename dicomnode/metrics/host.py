"""What the metrics read from the machine rather than the index: free disk, installed models,
GPU memory. Each reading is cheap (a statvfs, a manifest per registry entry, a few CUDA
queries) and needs none of the running node's objects.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dicomnode.models.registry import REGISTRY, ModelStore
from dicomnode.storage import StorageLayout, free_bytes

LOGGER = logging.getLogger("dicomnode.metrics")


def storage_free_bytes(layout: StorageLayout) -> int | None:
    """Free bytes on the file system the spool is on (what the receiver compares with
    ``storage.min_free``); the nearest existing folder above it before the node first ran.
    None when not even that can be read."""
    for folder in (layout.spool, *layout.spool.absolute().parents):
        if folder.is_dir():
            try:
                return free_bytes(folder)
            except OSError:
                return None
    return None


@dataclass(frozen=True)
class ModelState:
    name: str
    pipeline: str
    installed: bool
    warm: bool


def installed_models(models_path: Path, loaded: Iterable[Path] = ()) -> list[ModelState]:
    """Every registry entry, whether a complete copy is installed under ``models.path``, and
    whether it is warm (every nnU-Net folder of it among the ``loaded`` model folders)."""
    store, warm = ModelStore(models_path), set(loaded)
    states = []
    for entry in REGISTRY.values():
        installed = store.find(entry.name)
        states.append(ModelState(entry.name, entry.pipeline, installed is not None,
                                 installed is not None and installed.is_warm(warm)))
    return states


@dataclass(frozen=True)
class GpuMemory:
    """One CUDA device's memory. ``allocated``/``reserved``: this process's tensors and
    torch's caching allocator (0 in a process that never used CUDA). ``used``/``total``:
    the whole device, all processes; None where they cannot be read without creating a CUDA
    context in this process (which costs device memory)."""

    device: str
    allocated: int
    reserved: int
    used: int | None
    total: int | None


#: Where a GPU driver shows itself without loading anything: NVIDIA's kernel module, AMD's
#: ROCm device (torch.cuda runs on HIP there).
GPU_DRIVER_MARKERS = (Path("/proc/driver/nvidia/gpus"), Path("/dev/kfd"))


def torch_worth_importing(device: str) -> bool:
    """Whether reading GPU memory may import torch: not when ``models.device`` is ``cpu``
    or no GPU driver is loaded (torch costs seconds and hundreds of MB to import, for nothing
    there). A process that imported torch already is always asked."""
    if "torch" in sys.modules:
        return True
    if device == "cpu" or importlib.util.find_spec("torch") is None:
        return False
    return any(marker.exists() for marker in GPU_DRIVER_MARKERS)


def gpu_memory(device: str = "auto") -> list[GpuMemory]:
    """GPU memory per CUDA device; empty without torch or without a usable CUDA device.
    ``device`` is ``models.device`` (see :func:`torch_worth_importing`).

    torch is imported here, on first use, not when the metrics are imported. Nothing here
    initialises CUDA: ``is_available``/``device_count`` do not, the allocator statistics are
    zero until this process initialises CUDA itself, and the device-wide numbers come from
    NVML (when nvidia-ml-py is installed) or, once this process holds a CUDA context anyway
    (the serving process after inference on the GPU), from ``cudaMemGetInfo``.
    """
    if not torch_worth_importing(device):
        return []
    try:
        import torch

        cuda = torch.cuda
        if not cuda.is_available():
            return []
        count = cuda.device_count()
    except Exception as exc:  # noqa: BLE001 - a broken CUDA install must not fail a scrape
        LOGGER.debug("no CUDA device for the metrics: %s", exc)
        return []
    found = []
    for index in range(count):
        used: int | None = None
        total: int | None = None
        try:
            if cuda.is_initialized():
                free, total = cuda.mem_get_info(index)
                used = total - free
            else:
                used = int(cuda.device_memory_used(index))  # NVML: no context
        except Exception as exc:  # noqa: BLE001 - no NVML bindings, or a device gone
            LOGGER.debug("cuda:%d memory not readable: %s", index, exc)
        try:
            allocated, reserved = cuda.memory_allocated(index), cuda.memory_reserved(index)
        except Exception as exc:  # noqa: BLE001
            LOGGER.debug("cuda:%d allocator statistics not readable: %s", index, exc)
            allocated = reserved = 0
        found.append(GpuMemory(f"cuda:{index}", int(allocated), int(reserved), used, total))
    return found
