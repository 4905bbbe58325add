"""Findings + SEG → TID 1500 Measurement Report in a Comprehensive 3D SR (highdicom).

One TID 1411 Volumetric ROI group per segment, referencing that SEG segment and carrying:
volume (SCT 118565006, mL), mean and SD of intensity (DCM 112031 Attenuation Coefficient in
HU on CT, DCM 110852 MR signal intensity otherwise, derivation SCT 373098007 Mean /
386136009 Standard Deviation), centroid (DCM 110901-110903 Image Position (Patient) X/Y/Z
with method DCM 128138 Center of Mass). Spine measurements sit in the group of the structure
they describe: body heights (DCM 121207 Height, finding site vertebral body with modifier
Anterior / Central / Posterior) and height loss ratio (99DCMNODE HLR); disc height; the L1
trabecular attenuation (method 99DCMNODE TRAB); the L3 centre (99DCMNODE L3POS, referencing
the nearest source image); per level the canal's minimum area (SCT 42798000 Area, derivation
SCT 255605001 Minimum, finding site = level).

Every group has a Tracking Identifier (the SEG segment's Tracking UID) and the report an
Image Library, both of which OHIF dereferences. The library (TID 1600) describes the images
the report's content items reference: the L3 image and the first source image (so that it is
never empty; segments reference their source series, not images). Listing every source image
made the report ~5000 content items for a 300-slice CT and its build 15× slower; the full list
of source images is in the evidence (Current Requested Procedure Evidence Sequence).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from ..instance import is_multiframe
from ..measurements.findings import Findings
from ..measurements.geometry import frame_planes
from ..results.identity import (
    SR_SERIES_OFFSET,
    derived_uid,
    instance_uid,
    series_description,
    series_number,
)
from ..results.metadata import PipelineMetadata
from ..seg.writer import tracking_uid
from ..vocabulary import Structure, declare_scheme, level_code, private_code
from ..vocabulary.table import VERTEBRAL_BODY

MILLILITER = Code("mL", "UCUM", "milliliter")
MILLIMETER = codes.UCUM.Millimeter
SQUARE_MILLIMETER = codes.UCUM.SquareMillimeter
HOUNSFIELD = codes.UCUM.HounsfieldUnit
ARBITRARY = codes.UCUM.ArbitraryUnit
RATIO = codes.UCUM.Ratio


def _library_entry(ds: Dataset) -> Dataset:
    """The dataset as highdicom's Image Library (TID 1601/1604) reads it: for a multi-frame
    image, a header view with the first frame's Pixel Spacing / orientation / position at the
    top level, where the single-frame descriptors live."""
    if not is_multiframe(ds) or "PixelSpacing" in ds:
        return ds
    ipp, iop, spacing = frame_planes([ds])[0]
    view = Dataset()
    view.update(ds)
    view.PixelSpacing = list(spacing)
    view.ImageOrientationPatient = [float(v) for v in iop]
    view.ImagePositionPatient = [float(v) for v in ipp]
    if "SliceThickness" not in view:
        view.SliceThickness = _first_frame_measures(ds).get("SliceThickness")
    return view


def _first_frame_measures(ds: Dataset) -> Dataset:
    """The Pixel Measures item of frame 1 (per-frame, else shared), empty if there is none."""
    for groups in (ds.get("PerFrameFunctionalGroupsSequence"),
                   ds.get("SharedFunctionalGroupsSequence")):
        if groups:
            measures = groups[0].get("PixelMeasuresSequence")
            if measures:
                item: Dataset = measures[0]
                return item
    return Dataset()


def _library_images(source_images: Sequence[Dataset],
                    groups: Sequence[Iterable[Dataset]]) -> list[Dataset]:
    """The first source image, then every other source image an IMAGE item references."""
    referenced = {
        str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for group in groups for item in _image_items(group)
    }
    first = source_images[0]
    return [first, *(ds for ds in source_images[1:] if str(ds.SOPInstanceUID) in referenced)]


def _image_items(items: Iterable[Dataset]) -> Iterator[Dataset]:
    for item in items:
        if item.ValueType == "IMAGE":
            yield item
        yield from _image_items(item.get("ContentSequence", []))


def _referenced_segment(seg: Dataset, number: int, source: Dataset) -> hd.sr.ReferencedSegment:
    # TID 1411 allows the segment's source as a series or as every source image; the series
    # form keeps the report small (highdicom's from_segmentation lists one item per frame the
    # segment covers, for every segment) and works alike for BINARY and LABELMAP SEGs.
    return hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
        segment_number=number,
        source_series=hd.sr.SourceSeriesForSegmentation(source.SeriesInstanceUID),
    )


def _measurements(
    layer: str, s: Structure, findings: Findings,
    frame_refs: Sequence[tuple[Dataset, int | None]],
    algorithm: hd.sr.AlgorithmIdentification,
) -> list[hd.sr.Measurement]:
    key = (layer, s.key)
    st = findings.statistics[key]

    def num(name: Code, value: float, unit: Code, **kw: Any) -> hd.sr.Measurement:
        return hd.sr.Measurement(name=name, value=round(float(value), 4), unit=unit,
                                 algorithm_id=algorithm, **kw)

    out = [num(codes.SCT.Volume, st.volume_ml, MILLILITER)]
    if st.mean is not None and st.sd is not None:
        name, unit = ((codes.DCM.AttenuationCoefficient, HOUNSFIELD) if findings.intensity_is_hu
                      else (codes.DCM.MRSignalIntensity, ARBITRARY))
        out.append(num(name, st.mean, unit, derivation=codes.SCT.Mean))
        out.append(num(name, st.sd, unit, derivation=codes.SCT.StandardDeviation))
    for axis, value in zip(("X", "Y", "Z"), st.centroid, strict=True):
        out.append(num(getattr(codes.DCM, f"ImagePositionPatient{axis}"), value, MILLIMETER,
                       method=codes.DCM.CenterOfMass))
    if key in findings.heights:
        h = findings.heights[key]
        for where, value in ((codes.SCT.Anterior, h.anterior_mm), (codes.SCT.Central, h.middle_mm),
                             (codes.SCT.Posterior, h.posterior_mm)):
            site = hd.sr.FindingSite(VERTEBRAL_BODY, topographical_modifier=where)
            out.append(num(codes.DCM.Height, value, MILLIMETER, finding_sites=[site]))
        out.append(num(private_code("HLR"), h.height_loss_ratio, RATIO))
    if key in findings.disc_heights:
        out.append(num(codes.DCM.Height, findings.disc_heights[key], MILLIMETER,
                       finding_sites=[hd.sr.FindingSite(
                           s.type, topographical_modifier=codes.SCT.Central)]))
    if findings.trabecular_l1 and findings.trabecular_l1[:2] == key:
        out.append(num(codes.DCM.AttenuationCoefficient, findings.trabecular_l1[2], HOUNSFIELD,
                       derivation=codes.SCT.Mean, method=private_code("TRAB")))
    if findings.l3_centre and findings.l3_centre[:2] == key:
        ds, frame_number = frame_refs[findings.l3_centre[3]]
        image = hd.sr.SourceImageForMeasurement.from_source_image(
            ds, referenced_frame_numbers=[frame_number] if frame_number else None)
        out.append(num(private_code("L3POS"), findings.l3_centre[2], MILLIMETER,
                       referenced_images=[image]))
    if findings.canal_key == key:
        for level, area in findings.canal_min_area.items():
            out.append(num(codes.SCT.Area, area, SQUARE_MILLIMETER, derivation=codes.SCT.Minimum,
                           finding_sites=[hd.sr.FindingSite(level_code(level))]))
    return out


def build_report(
    source_images: Sequence[Dataset],
    segmentations: Sequence[tuple[str, Dataset, Sequence[Structure]]],
    findings: Findings,
    pipeline: PipelineMetadata,
    frame_refs: Sequence[tuple[Dataset, int | None]] | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The measurement report.

    Args:
        source_images: the source image datasets (Image Library and evidence).
        segmentations: (layer name, SEG dataset, structures in segment order) per SEG.
        findings: the measurements (see :func:`converters.measurements.findings.measure`).
        pipeline: algorithm identification; UID seed.
        frame_refs: (dataset, frame number or None) of each frame in the order the findings
            index frames (sorted along the normal); default: one frame per source image.
    """
    if frame_refs is None:
        frame_refs = [(ds, None) for ds in source_images]
    source = source_images[0]
    algorithm = hd.sr.AlgorithmIdentification(name=pipeline.pipeline,
                                              version=pipeline.algorithm_version)
    groups = []
    for layer, seg, structures in segmentations:
        for number, s in enumerate(structures, start=1):
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=tracking_uid(source, pipeline, layer, s.key), identifier=s.label),
                referenced_segment=_referenced_segment(seg, number, source),
                finding_type=s.type,
                finding_category=s.category,
                finding_sites=[hd.sr.FindingSite(s.anatomic_region)] if s.anatomic_region else None,
                algorithm_id=algorithm,
                measurements=_measurements(layer, s, findings, frame_refs, algorithm),
            ))
    observer = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=derived_uid(source, pipeline, "device"), name=pipeline.pipeline,
                manufacturer_name=pipeline.manufacturer, model_name=pipeline.model_name),
        )
    )
    procedure = (codes.LN.CTUnspecifiedBodyRegion if source.Modality == "CT"
                 else codes.LN.MRIUnspecifiedBodyRegion)
    report = hd.sr.MeasurementReport(
        observation_context=observer,
        procedure_reported=procedure,
        imaging_measurements=groups,
        referenced_images=[_library_entry(ds) for ds in _library_images(source_images, groups)],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*source_images, *(seg for _, seg, _ in segmentations)],
        content=report,
        # The referenced SEG class (BINARY/LABELMAP) is part of the identity: a different
        # output must not replace this one.
        series_instance_uid=derived_uid(source, pipeline, "sr", segmentations[0][1].SOPClassUID),
        series_number=series_number(source, SR_SERIES_OFFSET),
        sop_instance_uid=instance_uid(source_images, pipeline, "sr",
                                      segmentations[0][1].SOPClassUID),
        instance_number=1,
        manufacturer=pipeline.manufacturer,
        series_description=series_description(pipeline, "Spine measurements"),
    )
    declare_scheme(sr)
    return sr
