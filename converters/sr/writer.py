"""Findings + SEG → TID 1500 Measurement Report in a Comprehensive 3D SR (highdicom).

Per segment, in this order (OHIF 3.13.2's reading of each is in ``OHIF.md``):

1. TID 1410 "<label> centroid": a POINT (SCOORD) at the structure's centroid on the source
   image nearest to it, carrying what a reader wants next to the level: volume, mean
   intensity and, for vertebral bodies, the anterior / middle / posterior heights (discs:
   the disc height). OHIF's SR viewport draws it with those numbers as its text.
2. For vertebral bodies, TID 1501 "<label> heights": the three Heights, each inferred
   from its line (TID 300 INFERRED FROM a POLYLINE of 2 points): SCOORDs on the image whose
   slab holds the three lines (sagittal series), else SCOORD3Ds in the frame of reference
   (axial series). OHIF draws the three lines as one annotation, their values beside them.
3. TID 1410 "<label>": a POINT (SCOORD3D) at the exact centroid, no measurements. It has the
   SEG segment's Tracking UID, which it shares with 4., so that a viewer that merges groups
   by Tracking UID (OHIF) finds a graphic for the segment's measurements; without one, OHIF
   throws while loading the report and shows none of it.
4. TID 1411 Volumetric ROI group, referencing that SEG segment and carrying: volume (SCT
   118565006, mL), mean and SD of intensity (DCM 112031 Attenuation Coefficient in HU on CT,
   DCM 110852 MR signal intensity otherwise, derivation SCT 373098007 Mean / 386136009
   Standard Deviation), centroid (DCM 110901-110903 Image Position (Patient) X/Y/Z with
   method DCM 128138 Center of Mass). Spine measurements sit in the group of the structure
   they describe: body heights (DCM 121207 Height, finding site vertebral body with modifier
   Anterior / Central / Posterior) and height loss ratio (99DCMNODE HLR); disc height; the L1
   trabecular attenuation (method 99DCMNODE TRAB); the L3 centre (99DCMNODE L3POS,
   referencing the nearest source image); per level the canal's minimum area (SCT 42798000
   Area, derivation SCT 255605001 Minimum, finding site = level).

The values in 1. and 2. repeat those of 4. Every group has a Tracking Identifier and UID
(deterministic: derived from the source series, pipeline and structure like the SEG's) and
the report an Image Library, both of which OHIF dereferences. The library (TID 1600)
describes the images the report's content items reference: those of the SCOORDs and the L3
image, and the first source image (so that it is never empty). Listing every source image
made the report ~5000 content items for a 300-slice CT and its build 15× slower; the full
list of source images is in the evidence (Current Requested Procedure Evidence Sequence).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from ..instance import is_multiframe
from ..measurements.findings import Findings
from ..measurements.geometry import frame_planes
from ..measurements.spine import BodyHeights
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
from .placement import Frames, lines, point_in_space, point_on_image

MILLILITER = Code("mL", "UCUM", "milliliter")
MILLIMETER = codes.UCUM.Millimeter
SQUARE_MILLIMETER = codes.UCUM.SquareMillimeter
HOUNSFIELD = codes.UCUM.HounsfieldUnit
ARBITRARY = codes.UCUM.ArbitraryUnit
RATIO = codes.UCUM.Ratio
#: Where the body heights are taken (anterior, middle, posterior): finding site modifiers.
HEIGHT_SITES = (codes.SCT.Anterior, codes.SCT.Central, codes.SCT.Posterior)


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


def _num(name: Code, value: float, unit: Code, algorithm: hd.sr.AlgorithmIdentification,
         **kw: Any) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=round(float(value), 4), unit=unit,
                             algorithm_id=algorithm, **kw)


def _volume_and_mean(key: tuple[str, str], findings: Findings,
                     algorithm: hd.sr.AlgorithmIdentification, sd: bool = True
                     ) -> list[hd.sr.Measurement]:
    """Volume, mean intensity and (``sd``) its standard deviation."""
    st = findings.statistics[key]
    out = [_num(codes.SCT.Volume, st.volume_ml, MILLILITER, algorithm)]
    if st.mean is not None and st.sd is not None:
        name, unit = ((codes.DCM.AttenuationCoefficient, HOUNSFIELD) if findings.intensity_is_hu
                      else (codes.DCM.MRSignalIntensity, ARBITRARY))
        out.append(_num(name, st.mean, unit, algorithm, derivation=codes.SCT.Mean))
        if sd:
            out.append(_num(name, st.sd, unit, algorithm, derivation=codes.SCT.StandardDeviation))
    return out


def _body_heights(h: BodyHeights, algorithm: hd.sr.AlgorithmIdentification,
                  drawn: Sequence[hd.sr.CoordinatesForMeasurement
                                  | hd.sr.CoordinatesForMeasurement3D] | None = None
                  ) -> list[hd.sr.Measurement]:
    """The anterior, middle and posterior heights of a vertebral body, each inferred from
    its line in ``drawn`` when given."""
    coords = [None] * 3 if drawn is None else [[line] for line in drawn]
    return [_num(codes.DCM.Height, value, MILLIMETER, algorithm,
                 finding_sites=[hd.sr.FindingSite(VERTEBRAL_BODY, topographical_modifier=where)],
                 referenced_coordinates=line)
            for where, value, line in zip(
                HEIGHT_SITES, (h.anterior_mm, h.middle_mm, h.posterior_mm), coords, strict=True)]


def _disc_height(key: tuple[str, str], s: Structure, findings: Findings,
                 algorithm: hd.sr.AlgorithmIdentification) -> list[hd.sr.Measurement]:
    """The disc height of ``key``, if it is a disc."""
    if key not in findings.disc_heights:
        return []
    site = hd.sr.FindingSite(s.type, topographical_modifier=codes.SCT.Central)
    return [_num(codes.DCM.Height, findings.disc_heights[key], MILLIMETER, algorithm,
                 finding_sites=[site])]


def _measurements(
    layer: str, s: Structure, findings: Findings,
    frame_refs: Sequence[tuple[Dataset, int | None]],
    algorithm: hd.sr.AlgorithmIdentification,
) -> list[hd.sr.Measurement]:
    """The TID 1411 group's measurements."""
    key = (layer, s.key)
    st = findings.statistics[key]

    def num(name: Code, value: float, unit: Code, **kw: Any) -> hd.sr.Measurement:
        return _num(name, value, unit, algorithm, **kw)

    out = _volume_and_mean(key, findings, algorithm)
    for axis, value in zip(("X", "Y", "Z"), st.centroid, strict=True):
        out.append(num(getattr(codes.DCM, f"ImagePositionPatient{axis}"), value, MILLIMETER,
                       method=codes.DCM.CenterOfMass))
    h = findings.heights.get(key)
    if h is not None:
        out.extend(_body_heights(h, algorithm))
        out.append(num(private_code("HLR"), h.height_loss_ratio, RATIO))
    out.extend(_disc_height(key, s, findings, algorithm))
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


def _structure_groups(
    layer: str, seg: Dataset, number: int, s: Structure, findings: Findings,
    frames: Frames, frame_refs: Sequence[tuple[Dataset, int | None]],
    source: Dataset, pipeline: PipelineMetadata, algorithm: hd.sr.AlgorithmIdentification,
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
          | hd.sr.MeasurementsAndQualitativeEvaluations
          | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    """The groups of one segment, in the order of the module docstring."""
    key = (layer, s.key)
    centroid = findings.statistics[key].centroid
    frame_of_reference = str(source.FrameOfReferenceUID)
    sites = [hd.sr.FindingSite(s.anatomic_region)] if s.anatomic_region else None
    about: dict[str, Any] = dict(finding_type=s.type, finding_category=s.category,
                                 finding_sites=sites, algorithm_id=algorithm)

    def tracking(*what: str) -> hd.sr.TrackingIdentifier:
        if not what:  # the SEG segment's own
            return hd.sr.TrackingIdentifier(uid=tracking_uid(source, pipeline, layer, s.key),
                                            identifier=s.label)
        return hd.sr.TrackingIdentifier(
            uid=derived_uid(source, pipeline, "track", layer, s.key, *what),
            identifier=" ".join((s.label, *what)))

    h = findings.heights.get(key)
    shown = [*_volume_and_mean(key, findings, algorithm, sd=False),
             *(_body_heights(h, algorithm) if h is not None else ()),
             *_disc_height(key, s, findings, algorithm)]
    groups: list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
                 | hd.sr.MeasurementsAndQualitativeEvaluations
                 | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations] = [
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking("centroid"),
            referenced_region=point_on_image(frames, centroid),
            geometric_purpose=codes.DCM.CenterOfMass, measurements=shown, **about)]
    if h is not None and h.lines is not None:
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking("heights"),
            measurements=_body_heights(h, algorithm, lines(frames, h.lines, frame_of_reference)),
            **about))
    groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking(),
        referenced_region=point_in_space(centroid, frame_of_reference),
        geometric_purpose=codes.DCM.CenterOfMass, **about))
    groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking(),
        referenced_segment=_referenced_segment(seg, number, source),
        measurements=_measurements(layer, s, findings, frame_refs, algorithm), **about))
    return groups


#: Build the document around the finished content tree (:func:`_document`); False: hand the
#: whole tree to highdicom's constructor (tests compare the two).
FAST_DOCUMENT = True


def _referenced_uids(items: Iterable[Dataset]) -> Iterator[str]:
    for item in items:
        for ref in item.get("ReferencedSOPSequence", ()):
            yield ref.ReferencedSOPInstanceUID
        if "ContentSequence" in item:
            yield from _referenced_uids(item.ContentSequence)


def _document(evidence: Sequence[Dataset], content: hd.sr.MeasurementReport,
              **kwargs: Any) -> hd.sr.Comprehensive3DSR:
    """``hd.sr.Comprehensive3DSR(evidence, content, **kwargs)``, the same document, without
    highdicom's deep copy and three searches of the whole content tree (0.76 s of the 2.1 s
    that encoding takes for the 336-slice CT of benchmarks/e2e.py: 3000 content items).

    highdicom 0.28 builds the document from a copy of the root container and lists every
    ``evidence`` instance whatever the content references, so it is given the root without
    its children, which are then attached as they are (the report is built for this document
    alone). What its searches checked is checked here: every referenced instance is in the
    evidence. tests/results/test_sr.py compares the written document with highdicom's own.
    """
    root = content[0]  # the report's root container (a ContentItem)
    bare = Dataset()
    for element in root:
        if element.keyword != "ContentSequence":
            bare.add(element)
    bare.ContentSequence = []
    sr = hd.sr.Comprehensive3DSR(evidence=evidence, content=bare, **kwargs)
    missing = set(_referenced_uids(root.ContentSequence)) - {ds.SOPInstanceUID
                                                              for ds in evidence}
    if missing:
        raise ValueError("no evidence for the SOP instances that the content references: "
                         + ", ".join(sorted(missing)))
    sr.ContentSequence = root.ContentSequence
    sr._content = hd.sr.ContentSequence([cast(hd.sr.ContentItem, root)], is_root=True)
    return sr


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
    frames = Frames(frame_refs)
    groups = []
    for layer, seg, structures in segmentations:
        for number, s in enumerate(structures, start=1):
            groups.extend(_structure_groups(layer, seg, number, s, findings, frames, frame_refs,
                                            source, pipeline, algorithm))
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
    sr = (_document if FAST_DOCUMENT else hd.sr.Comprehensive3DSR)(
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
