"""SR: validator, TID 1500 content OHIF needs, and values on shapes of known size."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from converters.results import EncodeOptions, PipelineMetadata, encode_results
from converters.vocabulary import vertebral_bodies_ct
from tests import synthetic
from tests.results.conftest import dciodvfy_errors
from tests.results.fixtures import sort_along_normal

# dciodvfy (20260927) only accepts Referenced Segment Number for SOP class 66.4; an SR that
# references a LABELMAP SEG (66.7), which is a Segmentation too, gets this one message.
LABELMAP_REFERENCE_MESSAGE = (
    "Shall not be present for Referenced SOP Class that is not segmentation")


def _items(node: Dataset):
    """Every content item below ``node``, depth first."""
    for item in node.get("ContentSequence", []):
        yield item
        yield from _items(item)


def _groups(sr: Dataset) -> list[Dataset]:
    return [i for i in _items(sr) if i.ConceptNameCodeSequence[0].CodeValue == "125007"]


def _nums(group: Dataset) -> list[tuple[str, float, str, Dataset]]:
    return [(i.ConceptNameCodeSequence[0].CodeValue, float(i.MeasuredValueSequence[0].NumericValue),
             i.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue, i)
            for i in _items(group) if i.ValueType == "NUM"]


def _modifier(item: Dataset) -> str | None:
    for sub in item.get("ContentSequence", []):
        for subsub in sub.get("ContentSequence", []):
            if subsub.ConceptNameCodeSequence[0].CodeValue == "106233006":  # Topographical modifier
                return subsub.ConceptCodeSequence[0].CodeValue
    return None


def test_dciodvfy_reports_no_error(encoded, tmp_path):
    assert dciodvfy_errors(encoded.binary[1], tmp_path) == []


def test_labelmap_reference_only_trips_the_known_validator_gap(encoded, tmp_path):
    errors = dciodvfy_errors(encoded.labelmap[1], tmp_path)
    assert all(LABELMAP_REFERENCE_MESSAGE in e for e in errors), errors


def test_report_structure_for_ohif(encoded):
    seg, sr = encoded.binary[0], encoded.binary[1]
    assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"  # Imaging Measurement Report
    library = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "111028"]
    images = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
              for i in _items(library[0]) if i.ValueType == "IMAGE"}
    groups = _groups(sr)
    # the library describes every source image the measurements reference (and is never
    # empty); the other IMAGE items reference the SEG
    sources = {ds.SOPInstanceUID for ds in encoded.case.datasets}
    referenced = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                  for g in groups for i in _items(g) if i.ValueType == "IMAGE"}
    assert images == (referenced & sources) | {encoded.case.datasets[0].SOPInstanceUID}
    # ... while the evidence lists every source image
    evidence = {ref.ReferencedSOPInstanceUID
                for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for ref in series.ReferencedSOPSequence}
    assert sources <= evidence
    seg_tracking = {d.SegmentNumber: d.TrackingUID for d in seg.SegmentSequence}
    assert len(groups) == len(seg_tracking)
    for group in groups:
        items = list(_items(group))
        uid = next(i.UID for i in items if i.ConceptNameCodeSequence[0].CodeValue == "112040")
        ref = next(i for i in items if i.ConceptNameCodeSequence[0].CodeValue == "121191")
        number = ref.ReferencedSOPSequence[0].ReferencedSegmentNumber
        assert ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert seg_tracking[number] == uid


def test_volume_and_intensity_match_the_label_map(encoded):
    case = encoded.case
    sr = encoded.binary[1]
    ds0 = case.datasets[0]
    step = np.subtract(case.datasets[1].ImagePositionPatient, ds0.ImagePositionPatient)
    voxel_ml = float(np.prod(ds0.PixelSpacing)) * float(np.linalg.norm(step)) / 1000
    structures = case.mapping.structures_present(case.labelmap)
    for s, group in zip(structures, _groups(sr), strict=True):
        values = [v for v, k in case.mapping.labels.items() if k == s.key]
        mask = np.isin(case.labelmap, values)
        nums = {(code, unit): value for code, value, unit, _ in _nums(group)}
        assert nums[("118565006", "mL")] == pytest.approx(mask.sum() * voxel_ml, rel=2e-3)
        unit = "[hnsf'U]" if ds0.Modality == "CT" else "[arb'U]"
        code = "112031" if ds0.Modality == "CT" else "110852"
        assert (code, unit) in nums


def _known_shapes() -> tuple[list[Dataset], np.ndarray, np.ndarray]:
    """An axial CT at 0.5 mm: a 20 × 30 × 40 mm box (x × y × z) labelled L2 body and, above
    it, a wedge labelled L1 body whose height falls from 25 mm posteriorly to 15 mm
    anteriorly over its 30 mm depth; a cylinder canal behind them (radius 5 mm)."""
    sp = 0.5
    nz, ny, nx = 150, 100, 60
    syn = synthetic.single_frame_series(name="known_shapes", shape=(nz, ny, nx),
                                        spacing=(sp, sp, sp), origin=(0.0, 0.0, 0.0))
    datasets = sort_along_normal(list(syn.datasets))
    labels = np.zeros((nz, ny, nx), np.uint8)
    labels[4:84, 10:70, 20:60] = 14  # L2 body: 80 slices = 40 mm, 60 rows = 30 mm, 40 cols = 20 mm
    for j in range(60):  # L1 wedge, rows 10..69, anterior (small y) shorter
        height = 15 + 10 * ((j + 0.5) * sp) / 30
        labels[90:90 + round(height / sp), 10 + j, 20:60] = 13
    hu = np.full(labels.shape, -100.0)
    hu[labels > 0] = 250.0
    return datasets, labels, hu


def test_known_shapes_end_to_end(tmp_path):
    datasets, labels, hu = _known_shapes()
    pipeline = PipelineMetadata("vertebral-bodies-ct", "Dataset_ResEncM", "v1")
    out = encode_results(datasets, labels, vertebral_bodies_ct(), pipeline,
                         EncodeOptions(preview=False), image=hu)
    sr = out[1]
    assert dciodvfy_errors(sr, tmp_path) == []
    l1, l2 = _groups(sr)  # vocabulary order: L1 body, L2 body
    n1, n2 = _nums(l1), _nums(l2)
    volume = next(v for c, v, u, _ in n2 if c == "118565006")
    assert volume == pytest.approx(24.0)
    heights = {_modifier(i): v for c, v, u, i in n2 if c == "121207"}
    assert heights == pytest.approx({"255549009": 40.0, "26216008": 40.0, "255551008": 40.0})
    wedge = {_modifier(i): v for c, v, u, i in n1 if c == "121207"}
    assert wedge["255549009"] == pytest.approx(16.0, abs=0.5)  # 10 % in from the front
    assert wedge["255551008"] == pytest.approx(24.0, abs=0.5)
    ratio = next(v for c, v, u, _ in n1 if c == "HLR")
    assert ratio == pytest.approx(1 - 16 / 24, abs=0.03)
    trabecular = [v for c, v, u, i in n1 if c == "112031" and len(i.get("ContentSequence", [])) >= 1
                  and any(s.ConceptCodeSequence[0].CodeValue == "TRAB"
                          for s in i.ContentSequence if "ConceptCodeSequence" in s)]
    assert trabecular == [pytest.approx(250.0)]
    mean_hu = [v for c, v, u, _ in n2 if c == "112031"]
    assert mean_hu[0] == pytest.approx(250.0)


def test_source_order_does_not_change_the_measurements():
    from tests.results.fixtures import synthetic_mr

    case = synthetic_mr()
    pipeline = PipelineMetadata("totalspineseg", "Dataset102", "r1")
    opts = EncodeOptions(preview=False)
    ordered = encode_results(case.datasets, case.labelmap, case.mapping, pipeline, opts)[1]
    perm = np.random.default_rng(0).permutation(len(case.datasets))
    shuffled = encode_results([case.datasets[i] for i in perm], case.labelmap[perm], case.mapping,
                              pipeline, opts)[1]
    values = lambda sr: [v for g in _groups(sr) for _, v, _, _ in _nums(g)]  # noqa: E731
    assert values(shuffled) == pytest.approx(values(ordered))


def test_whole_vertebra_heights_use_the_body_in_front_of_the_canal(encoded):
    if encoded.case.datasets[0].Modality != "MR":
        pytest.skip("the CT case has no canal label")
    groups = [g for g in _groups(encoded.binary[1])
              if any(i.ConceptNameCodeSequence[0].CodeValue == "121207" for i in _items(g))]
    assert len(groups) == 4 + 4  # L1-L4 bodies (from the vertebra labels) and 4 discs
    ds = encoded.case.datasets[0]
    if np.allclose(ds.ImageOrientationPatient, [0, 1, 0, 0, 0, -1]):  # true sagittal: exact
        vertebra = _nums(groups[0])
        heights = [v for c, v, _, _ in vertebra if c == "121207"]
        assert heights == pytest.approx([9 * 0.9] * 3)  # 9 body rows of 0.9 mm


def test_image_from_volume_equals_image_array(encoded):
    # binary: image=the loader's Volume; labelmap: image=the array on the source frames
    values = lambda sr: [v for g in _groups(sr) for _, v, _, _ in _nums(g)]  # noqa: E731
    assert values(encoded.binary[1]) == pytest.approx(values(encoded.labelmap[1]))
