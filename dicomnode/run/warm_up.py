"""A throw-away encode that loads every lazily loaded table of the encoders before the first
job needs them."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from converters.results import EncodeOptions


def encode_tiny_series(options: EncodeOptions) -> None:
    """SEG, SR and preview of a 2-slice, 8 × 8 synthetic CT with one labelled voxel block:
    every lazily loaded table of the encoders (highdicom, pydicom codes, Pillow's font) is
    loaded once it returns. Nothing is written."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    from converters.results import PipelineMetadata
    from converters.results.encode import encode_results
    from converters.vocabulary import vertebral_bodies_ct

    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    sources = []
    for k in range(2):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.PatientName, ds.StudyID = "CT", "WARMUP", "Warm^Up", "1"
        ds.SeriesNumber, ds.InstanceNumber, ds.AccessionNumber = 1, k + 1, ""
        ds.StudyDate, ds.StudyTime = "20260101", "000000"
        ds.PatientSex, ds.PatientBirthDate = "O", ""
        ds.ReferringPhysicianName, ds.Manufacturer = "", "dicomnode"
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 2.0 * k], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1, 1], 2
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        sources.append(ds)
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[:, 2:6, 2:6] = 13  # L1 body: the L1 and L3 measurements run too
    image = np.full(labels.shape, 200.0, np.float32)
    encode_results(sources, labels, vertebral_bodies_ct(),
                   PipelineMetadata("warm-up", "warm-up", "0"), options, image=image)
