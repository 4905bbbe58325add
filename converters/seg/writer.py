"""Label map on the source grid + source images → DICOM Segmentation (highdicom)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGLSLossless, RLELossless

from ..instance import frame_count, frame_numbers, is_multiframe
from ..results.identity import (
    SEG_SERIES_OFFSET,
    derived_uid,
    instance_uid,
    series_description,
    series_number,
)
from ..results.metadata import EncodeOptions, PipelineMetadata
from ..vocabulary import LabelMapping, Structure, declare_scheme
from . import fast
from .framing import finish, holding_frames, misaligned_frames, plan_frames, poked

logger = logging.getLogger(__name__)

#: fast.py builds what highdicom would, where it applies (tests compare the two paths)
FAST_PATH = True

_LABELMAP_SYNTAX = {"RLE": RLELossless, "JPEGLS": JPEGLSLossless, "NONE": ExplicitVRLittleEndian}


def referenceable(source_images: Sequence[Dataset]) -> list[Dataset]:
    """The sources, with SOP Class / Instance UIDs taken from the file meta information where
    a de-identification tool blanked them (a SEG must reference them). Affected datasets are
    copied; the caller's objects are not modified."""
    out = []
    for ds in source_images:
        meta = getattr(ds, "file_meta", None)
        blank = [a for a in ("SOPClassUID", "SOPInstanceUID") if not str(ds.get(a, "") or "")]
        if blank and meta is not None:
            copied = Dataset()  # new element dict sharing the elements: no pixel data copy
            copied.update(ds)
            copied.file_meta = meta
            ds = copied
            for attr in blank:
                value = meta.get(f"MediaStorage{attr}", "")
                if value:
                    setattr(ds, attr, value)
        out.append(ds)
    return out


def check_source_images(source_images: Sequence[Dataset], labelmap: np.ndarray) -> None:
    """Raise ``ValueError`` naming the attribute when the sources cannot carry a SEG."""
    if labelmap.ndim != 3:
        raise ValueError(f"label map must be (frames, Rows, Columns), got shape {labelmap.shape}")
    n_frames = sum(len(frame_numbers(ds)) for ds in source_images)
    if n_frames != labelmap.shape[0]:
        raise ValueError(
            f"label map has {labelmap.shape[0]} frames but the source images have {n_frames}"
        )
    if len(source_images) > 1 and any(is_multiframe(ds) for ds in source_images):
        # highdicom takes the frames of one multi-frame image or single-frame images only
        raise ValueError(f"{len(source_images)} source images of which some are multi-frame "
                         "images: a SEG references either one multi-frame image or "
                         "single-frame images")
    for ds in source_images:
        for attr in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID",
                     "FrameOfReferenceUID"):
            if not str(ds.get(attr, "") or ""):
                raise ValueError(f"source image has an empty {attr}")
        if (ds.Rows, ds.Columns) != labelmap.shape[1:]:
            raise ValueError(
                f"source Rows/Columns {(ds.Rows, ds.Columns)} differ from the label map's "
                f"{labelmap.shape[1:]}"
            )


def tracking_uid(source: Dataset, pipeline: PipelineMetadata, layer: str, key: str) -> str:
    """Tracking UID of one structure, shared by its SEG segment and its SR group."""
    return derived_uid(source, pipeline, "track", layer, key)


def segment_descriptions(
    structures: Sequence[Structure], source: Dataset, pipeline: PipelineMetadata, layer: str
) -> list[hd.seg.SegmentDescription]:
    """Segment Sequence items, numbered 1..N in the order of ``structures``."""
    algorithm = hd.AlgorithmIdentificationSequence(
        name=pipeline.pipeline,
        family=codes.DCM.ArtificialIntelligence,
        version=pipeline.algorithm_version,
        parameters=dict(pipeline.parameters) or None,
    )
    out = []
    for number, s in enumerate(structures, start=1):
        desc = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=s.label,
            segmented_property_category=s.category,
            segmented_property_type=s.type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=tracking_uid(source, pipeline, layer, s.key),
            tracking_id=s.key,
            anatomic_regions=[s.anatomic_region] if s.anatomic_region else None,
            display_color=s.cielab,
        )
        if s.type_modifiers:
            # highdicom has no parameter for (0062,0011); laterality / superior-inferior.
            desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept.from_code(m) for m in s.type_modifiers
            ]
        out.append(desc)
    return out


def _highdicom_view(source_images: Sequence[Dataset]) -> list[Dataset]:
    """The sources as highdicom 0.28 reads a multi-frame source: Pixel Measures and Plane
    Orientation in the Shared Functional Groups, Plane Position in each item of the
    Per-frame Functional Groups. A multi-frame source that keeps the first two only per
    frame (equal for all frames), or has no Per-frame Functional Groups at all (every group
    shared: a one-frame Enhanced image), gets a header view arranged so; SOP identity and
    everything else are unchanged. Single-frame sources are passed through."""
    if len(source_images) != 1 or not is_multiframe(source_images[0]):
        return list(source_images)
    ds = source_images[0]
    shared = ds.SharedFunctionalGroupsSequence[0] if ds.get("SharedFunctionalGroupsSequence") \
        else Dataset()
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    missing = [k for k in ("PixelMeasuresSequence", "PlaneOrientationSequence") if k not in shared]
    if not missing and per_frame:
        return [ds]
    new_shared = Dataset()
    new_shared.update(shared)
    for keyword in missing:
        values = {repr(item[keyword].value[0]) for item in per_frame if keyword in item}
        if len(values) != 1:
            raise ValueError(f"{keyword} differs between frames of the multi-frame source "
                             "or is missing")
        setattr(new_shared, keyword, per_frame[0][keyword].value)
    if not per_frame:
        if "PlanePositionSequence" not in shared:
            raise ValueError("multi-frame source without Per-frame Functional Groups has no "
                             "shared PlanePositionSequence")
        # every frame at the shared position (one frame, in practice)
        for _ in range(frame_count(ds)):
            item = Dataset()
            item.PlanePositionSequence = shared.PlanePositionSequence
            per_frame.append(item)
    view = Dataset()
    view.update(ds)
    if hasattr(ds, "file_meta"):
        view.file_meta = ds.file_meta
    view.SharedFunctionalGroupsSequence = [new_shared]
    view.PerFrameFunctionalGroupsSequence = per_frame
    return [view]


def build_segmentation(
    source_images: Sequence[Dataset],
    labelmap: np.ndarray,
    mapping: LabelMapping,
    pipeline: PipelineMetadata,
    options: EncodeOptions = EncodeOptions(),
    layer_index: int = 0,
) -> tuple[hd.seg.Segmentation, list[Structure]] | None:
    """One SEG instance (its own series) for one label map.

    Args:
        source_images: the source image datasets, ordered like the frames of ``labelmap``
            (headers suffice; Pixel Data is not read). They become the Referenced Series
            Sequence and each frame's Derivation Image Sequence.
        labelmap: (frames, Rows, Columns) integer array on the source grid: ``labelmap[i]``
            covers ``source_images[i]`` pixel for pixel.
        mapping: what each label value means.
        pipeline: algorithm identification and UID seed.
        options: segmentation type, compression, ``omit_empty_frames``.
        layer_index: position of this label map among the run's label maps (series number).

    Returns:
        The SEG and its structures (segment ``i + 1`` is ``structures[i]``), or ``None``
        when no mapped structure is present.
    """
    labelmap = np.asarray(labelmap)
    source_images = referenceable(source_images)
    check_source_images(source_images, labelmap)
    seg_type = options.segmentation_type
    syntax = ExplicitVRLittleEndian if seg_type == "BINARY" else _LABELMAP_SYNTAX[
        options.labelmap_compression]
    binary = seg_type == "BINARY"
    if FAST_PATH and fast.applies(source_images, labelmap.shape, binary, syntax,
                                  len(mapping.labels)):
        # the labels fill a small box of the frames: relabel and scan that box only
        box = fast.crop_box(labelmap, labelmap.shape[2])
        if box is None:
            return None
        crop = labelmap[:, box[0]:box[1], box[2]:box[3]]
        structures = mapping.structures_present(crop)
        if not structures:
            return None
        built = fast.segmentation(
            source_images, mapping.to_segment_numbers(crop, structures), box,
            labelmap.shape, len(structures), binary, options.omit_empty_frames,
            _highdicom_arguments(source_images, structures, mapping, pipeline, options,
                                 layer_index, syntax))
        if built is not None:
            return _finished(built, binary), structures
    structures = mapping.structures_present(labelmap)
    if not structures:
        return None
    pixels = mapping.to_segment_numbers(labelmap, structures)
    # frames chosen and ordered so that native Pixel Data needs no pad byte and every BINARY
    # frame holding pixels starts on a byte (OHIF 3.13.2): framing.py
    plan = plan_frames(pixels, len(structures), binary, options.omit_empty_frames,
                       syntax.is_encapsulated)
    seg = hd.seg.Segmentation(
        source_images=_highdicom_view(source_images),
        pixel_array=poked(pixels, plan),
        omit_empty_frames=plan.omit_empty_frames,
        **_highdicom_arguments(source_images, structures, mapping, pipeline, options,
                               layer_index, syntax),
    )
    if finish(seg, plan, [(str(ds.SOPInstanceUID), number or 1)
                          for ds in source_images for number in frame_numbers(ds)]):
        # highdicom indexed the frames in its own order; from_dataset indexes them anew, in
        # place (copy=False), so that the returned object answers from the order written
        seg = hd.seg.Segmentation.from_dataset(seg, copy=False)
    if plan.pad:
        logger.warning("SEG %s: no empty (segment, source frame) frame can be added or left "
                       "out, so its %d-byte bit-packed Pixel Data keeps the pad byte, which "
                       "OHIF 3.13.2 rejects", seg.SOPInstanceUID, len(seg.PixelData) - 1)
    missing = misaligned_frames(seg) if plan.misaligned else []
    if missing:
        # framing.py: too few empty pairs for the fillers (dense segmentations)
        logger.warning("SEG %s: Rows × Columns = %d is not a multiple of 8 and there are too "
                       "few empty (segment, source frame) frames to put between the %d frames "
                       "that hold segment pixels, so %d of them start inside a byte, which "
                       "OHIF 3.13.2 (cornerstone's dicom-image-loader) draws empty",
                       seg.SOPInstanceUID, seg.Rows * seg.Columns,
                       len(holding_frames(seg)), len(missing))
    return _finished(seg, binary), structures


def _finished(seg: hd.seg.Segmentation, binary: bool) -> hd.seg.Segmentation:
    if not binary:
        _background_last(seg)
    declare_scheme(seg)
    return seg


def _highdicom_arguments(source_images: Sequence[Dataset], structures: Sequence[Structure],
                         mapping: LabelMapping, pipeline: PipelineMetadata,
                         options: EncodeOptions, layer_index: int, syntax: UID
                         ) -> dict[str, Any]:
    """highdicom Segmentation arguments other than the frames."""
    source = source_images[0]
    seg_type = options.segmentation_type
    kind = f"SEG {mapping.name}" + (" labelmap" if seg_type == "LABELMAP" else "")
    return dict(
        segmentation_type=seg_type,
        segment_descriptions=segment_descriptions(structures, source, pipeline, mapping.name),
        series_instance_uid=derived_uid(source, pipeline, "seg", mapping.name, seg_type),
        series_number=series_number(source, SEG_SERIES_OFFSET + layer_index),
        sop_instance_uid=instance_uid(source_images, pipeline, "seg", mapping.name, seg_type),
        instance_number=1,
        manufacturer=pipeline.manufacturer,
        manufacturer_model_name=pipeline.model_name,
        software_versions=pipeline.software_version,
        device_serial_number=pipeline.device_serial_number,
        content_description=f"{pipeline.pipeline} {pipeline.algorithm_version}"[:64],
        content_label="SPINE",
        series_description=series_description(pipeline, kind),
        transfer_syntax_uid=syntax,
    )


def _background_last(seg: hd.seg.Segmentation) -> None:
    """Move highdicom's LABELMAP background item (Segment Number = Pixel Padding Value 0) to
    the end of the Segment Sequence.

    It must stay: PS3.3 C.8.20.2.3.3 "For a Segmentation Type (0062,0001) of LABELMAP, every
    pixel value actually encoded in Pixel Data (7FE0,0010) is required to be described in an
    Item of Segment Sequence (0062,0002)", and 0 is encoded wherever nothing is segmented.
    Its place is free: "The Items of this Sequence are not required to be in any particular
    order" (Table C.8.20-2). OHIF 3.13.2 colours pixel value i with the i-th item (it builds
    its table as [none, *SegmentSequence]); with the background last, items 1..N are
    segments 1..N and every colour is right."""
    items = list(seg.SegmentSequence)
    padding = seg.get("PixelPaddingValue", 0)
    background = [i for i, d in enumerate(items) if d.SegmentNumber == padding]
    seg.SegmentSequence = [d for i, d in enumerate(items) if i not in background] + [
        items[i] for i in background]
