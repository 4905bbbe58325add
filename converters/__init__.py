"""Pure conversions with no service state: DICOM series → volume, label map → SEG, SR, preview.

Nothing here imports :mod:`dicomnode`.
"""

# The volume loader pulls in SimpleITK and pydicom's decoders; import it on first use so
# that light users of converters (vocabulary, codes) stay light.
_VOLUME_EXPORTS = ("load_series", "to_source_grid", "from_source_grid", "Volume", "SourceGrid",
                   "VolumeError")


# Result encoders (highdicom): also loaded on first use.
_RESULT_EXPORTS = ("encode_results", "EncodeOptions", "PipelineMetadata")


def __getattr__(name: str) -> object:
    if name in _RESULT_EXPORTS:
        from . import results

        return getattr(results, name)
    if name in _VOLUME_EXPORTS:
        from . import volume

        return getattr(volume, name)
    raise AttributeError(f"module 'converters' has no attribute {name!r}")
