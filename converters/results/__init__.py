"""The node's outputs as DICOM: run metadata, derived identity, and ``encode_results``."""

from .metadata import EncodeOptions, PipelineMetadata

__all__ = ["EncodeOptions", "PipelineMetadata", "encode_results"]


def __getattr__(name: str) -> object:
    # encode_results pulls in scipy and Pillow; the SEG writer alone does not need them.
    if name == "encode_results":
        from .encode import encode_results

        return encode_results
    raise AttributeError(f"module 'converters.results' has no attribute {name!r}")
