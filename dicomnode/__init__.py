"""dicomnode: a DICOM node that segments the spine.

The service's stages each have a module: ``receiver`` (C-STORE SCP and spool), ``store``
(database), ``assembler`` (series completion), ``models`` (registry, runtime, pipelines).
Pure conversions (DICOM ↔ volume, SEG, SR, preview) live in the sibling package ``converters``.
"""

__version__ = "0.1.0"
