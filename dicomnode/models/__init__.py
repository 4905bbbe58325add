"""Models: the registry of seed models, their weights, the warm nnU-Net runtime and the pipelines.

Importing this package is cheap: torch and nnunetv2 load when a model does.
"""

from dicomnode.models.registry import REGISTRY, ModelEntry, ModelNotInstalled, ModelStore, get_entry
from dicomnode.models.runtime import (
    DeviceError,
    InferenceSettings,
    ModelError,
    ModelFolder,
    ModelLoadError,
    NnUNetRuntime,
)

__all__ = ["REGISTRY", "DeviceError", "InferenceSettings", "ModelEntry", "ModelError",
           "ModelFolder", "ModelLoadError", "ModelNotInstalled", "ModelStore", "NnUNetRuntime",
           "get_entry"]
