"""Pure conversions with no service state: DICOM series → volume, label map → SEG, SR, preview.

Nothing here imports :mod:`dicomnode`.
"""
