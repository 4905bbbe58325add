"""The node's outputs as DICOM: run metadata, derived identity, and ``encode_results``."""

from .encode import encode_results
from .metadata import EncodeOptions, PipelineMetadata

__all__ = ["EncodeOptions", "PipelineMetadata", "encode_results"]
