"""encode_results on SPINEPS-style overlapping label maps and on an enhanced multi-frame MR."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

import converters
from converters.results import EncodeOptions, PipelineMetadata, encode_results
from converters.vocabulary import spineps_instances, spineps_subregions
from tests import synthetic
from tests.results.conftest import dciodvfy_errors
from tests.results.fixtures import synthetic_mr
from tests.results.test_sr import _groups, _items, _nums

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
    assert out[0].NumberOfFrames == int(np.count_nonzero(grid.array.reshape(len(grid.array), -1).any(axis=1)))
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
