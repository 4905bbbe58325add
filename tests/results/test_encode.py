"""encode_results on SPINEPS-style overlapping label maps and on an enhanced multi-frame MR."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset

import converters
from converters.results import EncodeOptions, PipelineMetadata, encode_results
from converters.vocabulary import spineps_instances, spineps_subregions
from tests import synthetic
from tests.results.conftest import dciodvfy_errors
from tests.results.fixtures import sort_along_normal, synthetic_mr
from tests.results.test_sr import _groups, _items, _nums

ROOT = Path(__file__).resolve().parents[2]
SPINEPS = PipelineMetadata("spineps", "T2w_semantic+instance", "v1.4.0")


def test_spineps_subregions_and_instances_become_two_series(tmp_path):
    case = synthetic_mr()
    tss = case.labelmap  # TotalSpineSeg values: 41-44 L1-L4, 92-95 discs, 2 canal
    semantic = np.zeros_like(tss)
    semantic[(tss >= 41) & (tss <= 44)] = 49  # corpus
    semantic[(tss >= 92) & (tss <= 95)] = 100  # disc
    semantic[tss == 2] = 61  # canal
    semantic[0][semantic[0] == 49] = 43  # one slice of "left costal process" (laterality code)
    instances = np.zeros_like(tss)
    vert = (tss >= 41) & (tss <= 44)
    instances[vert] = tss[vert] - 41 + 20  # 20..23 = L1..L4
    disc = (tss >= 92) & (tss <= 95)
    instances[disc] = tss[disc] - 92 + 120  # disc below L1..L4
    maps = [spineps_subregions(), spineps_instances(np.unique(instances))]
    out = encode_results(case.datasets, [semantic, instances], maps, SPINEPS, image=case.image)
    seg_sub, seg_inst, sr = out[0], out[1], out[2]
    assert seg_sub.SeriesInstanceUID != seg_inst.SeriesInstanceUID
    assert "subregions" in seg_sub.SeriesDescription and "vertebrae" in seg_inst.SeriesDescription
    labels = {d.SegmentLabel for d in seg_inst.SegmentSequence}
    assert {"L1 vertebra", "L4 vertebra", "L4/L5 disc"} <= labels
    for ds in out:
        assert dciodvfy_errors(ds, tmp_path) == [], ds.SOPClassUID.name
    # heights of instance vertebrae come from their overlap with the semantic corpus
    with_heights = [g for g in _groups(sr) if any(
        i.ConceptNameCodeSequence[0].CodeValue == "121207" for i in _items(g))]
    assert len(with_heights) >= 4
    refs = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for g in _groups(sr)
            for i in _items(g) if i.ConceptNameCodeSequence[0].CodeValue == "121191"}
    assert refs == {seg_sub.SOPInstanceUID, seg_inst.SOPInstanceUID}


def test_enhanced_multiframe_source(tmp_path):
    syn = synthetic.enhanced_mr()
    volume = converters.load_series(syn.datasets)
    values = sitk.GetArrayFromImage(volume.image)
    labels = np.where(values >= 1380, 100, 0).astype(np.uint8)  # discs + CSF, as "disc"
    grid = converters.to_source_grid(volume, labels)
    out = encode_results(grid, None, spineps_subregions(), SPINEPS, EncodeOptions())
    assert [ds.Modality for ds in out] == ["SEG", "SR", "OT", "OT"]
    carrying = grid.array.reshape(len(grid.array), -1).any(axis=1)
    assert out[0].NumberOfFrames == int(np.count_nonzero(carrying))
    for ds in out[:2]:
        assert dciodvfy_errors(ds, tmp_path) == []
    for item in out[0].PerFrameFunctionalGroupsSequence:
        src = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert src.ReferencedSOPInstanceUID == syn.datasets[0].SOPInstanceUID
        assert src.ReferencedFrameNumber >= 1


def test_nothing_mapped_gives_nothing():
    case = synthetic_mr()
    empty = np.zeros_like(case.labelmap)
    assert encode_results(case.datasets, empty, case.mapping, SPINEPS) == []
    with pytest.raises(ValueError, match="image shape"):
        encode_results(case.datasets, case.labelmap, case.mapping, SPINEPS, image=case.image[1:])
    with pytest.raises(ValueError, match="label mappings"):
        encode_results(case.datasets, [empty, empty], [case.mapping], SPINEPS)


@pytest.mark.parametrize("make", [synthetic.irregular_spacing, synthetic.axial_ct,
                                  synthetic.enhanced_mr],
                         ids=["resampled", "regular", "frames-shuffled"])
def test_intensities_from_the_volume_equal_those_of_the_source_pixels(make):
    """image=Volume (the node's path: no second decode) gives the SR the same numbers as
    decoding the source files, also when the loader resampled the series (irregular spacing:
    every source slice lies on a plane of the regular grid, so nearest-neighbour back onto the
    source frames is exact), whatever the file order, and when the frames of a multi-frame
    source are not in spatial order."""
    syn = synthetic.shuffled(make())
    volume = converters.load_series(syn.datasets)
    labels = np.zeros(sitk.GetArrayViewFromImage(volume.image).shape, np.uint8)
    labels[1:-1, 3:9, 4:12] = 13  # a box of "L1 vertebral body"
    labels[2:4, 5:7, 6:9] = 14
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(volume.image)
    grid = converters.to_source_grid(volume, image)
    mapping = converters.vocabulary.vertebral_bodies_ct()
    pipeline = PipelineMetadata("vertebral-bodies-ct", "ResEncM", "test")
    from_volume = encode_results(grid, None, mapping, pipeline, image=volume)
    if len(grid.datasets) > 1:  # single-frame files: decoded again by encode_results
        reference = None
    else:  # one multi-frame object: each frame's slice of the volume, found by its source
        values = sitk.GetArrayFromImage(volume.image)
        reference = np.stack([values[volume.sources.index(f)] for f in grid.frames])
    from_files = encode_results(grid.datasets, grid.array, mapping, pipeline, image=reference)
    numbers = [[value for _, value, _, _ in _nums(g)] for g in _groups(from_volume[1])]
    assert numbers == [[value for _, value, _, _ in _nums(g)] for g in _groups(from_files[1])]
    assert len(numbers) == 2 and all(numbers)
    np.testing.assert_array_equal(from_volume[2].pixel_array, from_files[2].pixel_array)


def _enhanced_ct_with_shared_groups_only() -> Dataset:
    """One frame of tests/synthetic.py's Enhanced CT as its own Enhanced CT instance with
    every functional group shared and no Per-frame Functional Groups Sequence (Number of
    Frames 1): a multi-frame image all the same."""
    src = synthetic.enhanced_ct().datasets[0]
    ds = copy.deepcopy(src)
    shared = ds.SharedFunctionalGroupsSequence[0]
    for element in src.PerFrameFunctionalGroupsSequence[0]:
        shared[element.tag] = copy.deepcopy(element)
    del ds.PerFrameFunctionalGroupsSequence
    ds.NumberOfFrames = 1
    size = ds.Rows * ds.Columns * 2
    ds.PixelData = src.PixelData[:size]
    return ds


def test_enhanced_image_with_shared_groups_only_is_referenced_by_frame_number(tmp_path):
    """The source grid, the SEG and the SR say alike that the source is a multi-frame image:
    every reference to it carries Referenced Frame Number 1. (Once, the grid did so because
    of the Shared Functional Groups, the SR did not because there were no Per-frame ones, and
    highdicom could not build the SEG; the loader read the frame as its first row.)"""
    ds = _enhanced_ct_with_shared_groups_only()
    volume = converters.load_series([ds], min_slices=1)
    stored = np.frombuffer(ds.PixelData, np.uint16).reshape(ds.Rows, ds.Columns)
    intercept = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0] \
        .RescaleIntercept
    np.testing.assert_array_equal(sitk.GetArrayFromImage(volume.image)[0], stored + intercept)
    labels = np.zeros(sitk.GetArrayViewFromImage(volume.image).shape, np.uint8)
    labels[0, 2:8, 3:9] = 15  # L3 vertebral body: the SR references its nearest image
    grid = converters.to_source_grid(volume, labels)
    assert [f.frame_number for f in grid.frames] == [1]
    pipeline = PipelineMetadata("vertebral-bodies-ct", "ResEncM", "test")
    out = encode_results(grid, None, converters.vocabulary.vertebral_bodies_ct(), pipeline,
                         image=volume)
    seg, sr = out[0], out[1]
    assert [d.Modality for d in out] == ["SEG", "SR", "OT", "OT"]
    for derived in (seg, sr):
        assert dciodvfy_errors(derived, tmp_path) == [], derived.Modality
    seg_refs = [(src.ReferencedSOPInstanceUID, src.ReferencedFrameNumber)
                for item in seg.PerFrameFunctionalGroupsSequence
                for src in item.DerivationImageSequence[0].SourceImageSequence]
    assert seg_refs == [(ds.SOPInstanceUID, 1)]
    l3 = [i for i in _items(sr) if i.ValueType == "NUM"
          and i.ConceptNameCodeSequence[0].CodeValue == "L3POS"]
    assert len(l3) == 1
    image_refs = [i.ReferencedSOPSequence[0] for i in _items(l3[0]) if i.ValueType == "IMAGE"]
    assert [(r.ReferencedSOPInstanceUID, r.ReferencedFrameNumber) for r in image_refs] == \
        [(ds.SOPInstanceUID, 1)]
    # the same from plain datasets and an array
    again = encode_results([ds], labels, converters.vocabulary.vertebral_bodies_ct(), pipeline,
                           EncodeOptions(preview=False))
    assert again[0].SOPInstanceUID == seg.SOPInstanceUID
    # every image reference (the L3 centre, the centroid points) names frame 1
    assert {int(i.ReferencedSOPSequence[0].ReferencedFrameNumber) for i in _items(again[1])
            if i.ValueType == "IMAGE" and "ReferencedFrameNumber" in i.ReferencedSOPSequence[0]} \
        == {1}


def _l1_ct() -> tuple[list[Dataset], np.ndarray, np.ndarray]:
    """A 1 mm axial CT with an L1 body (16 × 14 × 12 mm box) whose 2 mm cortex is brighter
    (600 HU) than its core (150 HU), and empty slices above and below it."""
    syn = synthetic.single_frame_series(name="options_l1", shape=(20, 24, 20),
                                        spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    datasets = sort_along_normal(list(syn.datasets))
    labels = np.zeros((20, 24, 20), np.uint8)
    labels[3:15, 4:18, 2:18] = 13  # body_L1
    hu = np.full(labels.shape, -100.0, np.float32)
    hu[labels > 0] = 600.0
    hu[5:13, 6:16, 4:16] = 150.0
    return datasets, labels, hu


def _trabecular(sr: Dataset) -> list[float]:
    return [v for g in _groups(sr) for c, v, _, item in _nums(g)
            if c == "112031" and any(s.ConceptCodeSequence[0].CodeValue == "TRAB"
                                     for s in item.get("ContentSequence", [])
                                     if "ConceptCodeSequence" in s)]


def test_every_encode_option_has_an_effect():
    """Each EncodeOptions field (the keys the node's configuration maps onto them) changes
    what encode_results writes."""
    datasets, labels, hu = _l1_ct()
    mapping = converters.vocabulary.vertebral_bodies_ct()
    pipeline = PipelineMetadata("vertebral-bodies-ct", "ResEncM", "options")

    def run(**options: object) -> list[Dataset]:
        return encode_results(datasets, labels, mapping, pipeline, EncodeOptions(**options),
                              image=hu)

    default = run()
    assert [d.Modality for d in default] == ["SEG", "SR", "OT", "OT"]
    # segmentation_type: Segmentation vs Label Map Segmentation Storage
    assert default[0].SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    labelmap = run(segmentation_type="LABELMAP", sr=False, preview=False)
    assert [d.SOPClassUID for d in labelmap] == ["1.2.840.10008.5.1.4.1.1.66.7"]
    # labelmap_compression: the LABELMAP SEG's transfer syntax
    syntaxes = {name: run(segmentation_type="LABELMAP", labelmap_compression=name, sr=False,
                          preview=False)[0].file_meta.TransferSyntaxUID
                for name in ("RLE", "JPEGLS", "NONE")}
    assert syntaxes == {"RLE": "1.2.840.10008.1.2.5", "JPEGLS": "1.2.840.10008.1.2.4.80",
                        "NONE": "1.2.840.10008.1.2.1"}
    # omit_empty_frames: 12 slices hold the body, 20 frames in all
    for kind in ("BINARY", "LABELMAP"):
        kept = run(segmentation_type=kind, sr=False, preview=False)[0]
        every = run(segmentation_type=kind, omit_empty_frames=False, sr=False, preview=False)[0]
        assert (kept.NumberOfFrames, every.NumberOfFrames) == (12, 20), kind
    # sr / preview: which objects are written
    assert [d.Modality for d in run(sr=False)] == ["SEG", "OT", "OT"]
    assert [d.Modality for d in run(preview=False)] == ["SEG", "SR"]
    assert [d.Modality for d in run(sr=False, preview=False)] == ["SEG"]
    # trabecular_erosion_mm: how much of the body's rim the L1 attenuation leaves out
    assert _trabecular(default[1]) == [pytest.approx(150.0)]  # 3 mm: the core only
    rim_included = _trabecular(run(trabecular_erosion_mm=0.0, preview=False)[1])
    assert len(rim_included) == 1 and rim_included[0] > 300.0
    assert _trabecular(run(trabecular_erosion_mm=20.0, preview=False)[1]) == []  # too small


def test_source_and_image_types_are_checked():
    """source: datasets or a SourceGrid; image: an array or a Volume (the Volume needs the
    SourceGrid); encoding datasets and arrays does not load the volume package (SimpleITK)."""
    datasets, labels, hu = _l1_ct()
    mapping = converters.vocabulary.vertebral_bodies_ct()
    pipeline = PipelineMetadata("vertebral-bodies-ct", "ResEncM", "types")
    options = EncodeOptions(preview=False)
    with pytest.raises(TypeError, match="image: a numpy array or a converters.Volume"):
        encode_results(datasets, labels, mapping, pipeline, options, image=hu.tolist())
    with pytest.raises(TypeError, match="source: a sequence of pydicom Datasets"):
        encode_results({"datasets": datasets}, labels, mapping, pipeline, options)
    with pytest.raises(ValueError, match="labelmap None"):
        encode_results(datasets, None, mapping, pipeline, options)
    volume = converters.load_series(datasets)
    with pytest.raises(ValueError, match="needs the source as a SourceGrid"):
        encode_results(datasets, labels, mapping, pipeline, options, image=volume)
    code = ("import sys, numpy as np; from tests.results.test_encode import _l1_ct; "
            "from converters.results import EncodeOptions, PipelineMetadata, encode_results; "
            "from converters.vocabulary import vertebral_bodies_ct; "
            "d, l, h = _l1_ct(); assert 'converters.volume' not in sys.modules; "
            "out = encode_results(d, l, vertebral_bodies_ct(), PipelineMetadata('p', 'm', 'w'), "
            "EncodeOptions(preview=False), image=h); "
            "print(len(out), 'converters.volume' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.stdout.split() == ["2", "False"], done.stderr


#: Elements that differ between two builds of the same objects: when each was built, and
#: highdicom's random Dimension Organization UID.
_PER_BUILD = ("ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime",
              "DateOfSecondaryCapture", "TimeOfSecondaryCapture", "ContributionDateTime",
              "DimensionOrganizationUID")


def _without_build_stamps(ds: Dataset) -> bytes:
    """The dataset as written, less :data:`_PER_BUILD` at any depth."""
    from io import BytesIO

    import pydicom

    def strip(item: Dataset) -> None:
        for keyword in _PER_BUILD:
            if keyword in item:
                delattr(item, keyword)
        for element in item:
            if element.VR == "SQ":
                for child in element.value:
                    strip(child)

    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    copied = pydicom.dcmread(BytesIO(buffer.getvalue()))
    strip(copied)
    buffer = BytesIO()
    copied.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_the_preview_rendered_on_a_second_thread_gives_the_serial_objects(tmp_path):
    """parallel=True (the node's default) renders the preview while the SR is built; every
    object, and the PNG, is byte for byte what one thread builds."""
    syn = synthetic.axial_ct()
    volume = converters.load_series(syn.datasets)
    labels = np.zeros(sitk.GetArrayViewFromImage(volume.image).shape, np.uint8)
    labels[1:-1, 3:9, 4:12] = 13
    labels[2:4, 5:7, 6:9] = 14
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(volume.image)
    grid = converters.to_source_grid(volume, image)
    mapping = converters.vocabulary.vertebral_bodies_ct()
    pipeline = PipelineMetadata("vertebral-bodies-ct", "ResEncM", "test")
    built = {}
    for parallel in (True, False):
        png = tmp_path / f"{parallel}.png"
        datasets = encode_results(grid, None, mapping, pipeline, image=volume, png_path=png,
                                  parallel=parallel)
        built[parallel] = ([str(ds.Modality) for ds in datasets],
                           [_without_build_stamps(ds) for ds in datasets], png.read_bytes())
    assert built[True][0] == ["SEG", "SR", "OT", "OT"]
    assert built[True] == built[False]
