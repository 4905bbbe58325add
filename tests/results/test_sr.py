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


def _code(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue)


def _all_groups(sr: Dataset) -> list[Dataset]:
    """Every Measurement Group (DCM 125007) of the report."""
    return [i for i in _items(sr) if _code(i) == "125007"]


def _groups(sr: Dataset) -> list[Dataset]:
    """The TID 1411 groups: one per SEG segment, each with its Referenced Segment (121191)."""
    return [g for g in _all_groups(sr) if any(_code(i) == "121191" for i in g.ContentSequence)]


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
    # the library describes every source image the measurements and their SCOORDs reference
    # (and is never empty); the other IMAGE items reference the SEG
    sources = {ds.SOPInstanceUID for ds in encoded.case.datasets}
    referenced = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                  for g in _all_groups(sr) for i in _items(g) if i.ValueType == "IMAGE"}
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


# --- What OHIF 3.13.2 makes of the report (extensions/cornerstone-dicom-sr, read in its built
# bundle; see converters/sr/OHIF.md). Its SR viewport is a stack viewport: it draws an SCOORD
# on exactly the image the SCOORD references, never an SCOORD3D.

#: Graphic types OHIF's DICOMSRDisplayTool can draw (any other throws in its render loop).
OHIF_GRAPHIC_TYPES = {"POINT", "MULTIPOINT", "POLYLINE", "CIRCLE", "ELLIPSE"}
HEIGHT_SITES = {"255549009": "anterior", "26216008": "middle", "255551008": "posterior"}


def _ohif_measurements(sr: Dataset) -> list[list[Dataset]]:
    """OHIF's ``_getMeasurements``: the Measurement Groups of Imaging Measurements (126010)
    merged by Tracking Unique Identifier (112040), in order of first appearance; a later
    group adds its items but its UIDREF."""
    imaging = next(i for i in sr.ContentSequence if _code(i) == "126010")
    merged: dict[str, list[Dataset]] = {}
    for group in imaging.ContentSequence:
        if _code(group) != "125007":
            continue
        items = list(group.ContentSequence)
        uid = next(i.UID for i in items if _code(i) == "112040")  # OHIF: TypeError without
        if uid in merged:
            merged[uid].extend(i for i in items if _code(i) != "112040")
        else:
            merged[uid] = items
    return list(merged.values())


def _graphic(items: list[Dataset]) -> Dataset | None:
    """The item OHIF draws: the first SCOORD/SCOORD3D of the (merged) group's top level."""
    return next((i for i in items if i.ValueType in ("SCOORD", "SCOORD3D")), None)


def _ohif_text(items: list[Dataset]) -> list[str]:
    """The text box of a drawn measurement: 'concept meaning: value unit' per NUM (value to 2
    decimals, unit as its UCUM code), then the first finding site, at most 5 lines."""
    lines = []
    for i in items:
        if i.ValueType == "NUM" and "MeasuredValueSequence" in i:
            value = i.MeasuredValueSequence[0]
            lines.append(f"{i.ConceptNameCodeSequence[0].CodeMeaning}: "
                         f"{float(value.NumericValue):.2f} "
                         f"{value.MeasurementUnitsCodeSequence[0].CodeValue}")
    sites = [i for i in items if _code(i) == "363698007"
             and i.ConceptNameCodeSequence[0].CodingSchemeDesignator == "SCT"]
    if sites:
        lines.append(f"363698007: {sites[0].ConceptCodeSequence[0].CodeMeaning}")
    return lines[:5]


def _tracking(group: Dataset) -> tuple[str, str]:
    items = group.ContentSequence
    return (next(str(i.TextValue) for i in items if _code(i) == "112039"),
            next(str(i.UID) for i in items if _code(i) == "112040"))


def _by_identifier(sr: Dataset) -> dict[str, Dataset]:
    return {_tracking(g)[0]: g for g in _all_groups(sr)}


def _plane(ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """(position, row direction, column direction, row spacing, column spacing)."""
    iop = np.asarray(ds.ImageOrientationPatient, float)
    return (np.asarray(ds.ImagePositionPatient, float), iop[:3], iop[3:],
            float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1]))


def _to_patient(ds: Dataset, graphic_data) -> np.ndarray:
    """SCOORD (column, row) pairs, (0, 0) the outer corner of the first pixel → patient mm."""
    ipp, row_dir, col_dir, dr, dc = _plane(ds)
    cr = np.asarray(graphic_data, float).reshape(-1, 2)
    return ipp + np.outer(cr[:, 0] - 0.5, row_dir * dc) + np.outer(cr[:, 1] - 0.5, col_dir * dr)


def _normal(ds: Dataset) -> np.ndarray:
    _, row_dir, col_dir, _, _ = _plane(ds)
    return np.cross(row_dir, col_dir)


def _half_slab(datasets: list[Dataset]) -> float:
    normal = _normal(datasets[0])
    offsets = np.sort([normal @ np.asarray(d.ImagePositionPatient, float) for d in datasets])
    return float(np.median(np.diff(offsets))) / 2


def _inside_volume(datasets: list[Dataset], points: np.ndarray, margin: float = 1e-3) -> bool:
    """Every point lies within the source frames' extent (outer pixel borders, half a slab
    beyond the first and last plane), give or take ``margin`` mm."""
    ds0 = datasets[0]
    ipp, row_dir, col_dir, dr, dc = _plane(ds0)
    normal = _normal(ds0)
    offsets = [normal @ np.asarray(d.ImagePositionPatient, float) for d in datasets]
    slab = _half_slab(datasets)
    for p in points:
        d = p - ipp
        c, r, n = d @ row_dir / dc + 0.5, d @ col_dir / dr + 0.5, p @ normal
        if not (-margin / dc <= c <= ds0.Columns + margin / dc
                and -margin / dr <= r <= ds0.Rows + margin / dr
                and min(offsets) - slab - margin <= n <= max(offsets) + slab + margin):
            return False
    return True


def _half_extent_along_z(datasets: list[Dataset]) -> float:
    """Half a voxel's extent along the patient's z axis: how far a height line, which counts
    each voxel's whole extent, reaches past the voxel centres; past the volume when the
    structure touches the field of view on an oblique grid."""
    _, row_dir, col_dir, dr, dc = _plane(datasets[0])
    return float(abs(row_dir[2]) * dc + abs(col_dir[2]) * dr
                 + abs(_normal(datasets[0])[2]) * 2 * _half_slab(datasets)) / 2


def _centroid(group: Dataset) -> np.ndarray:
    """Image Position (Patient) X/Y/Z of a TID 1411 group (DCM 110901-110903)."""
    values = {c: v for c, v, _, _ in _nums(group)}
    return np.array([values["110901"], values["110902"], values["110903"]])


def _referenced_image(scoord: Dataset, datasets: list[Dataset]) -> Dataset:
    image = scoord.ContentSequence[0]  # OHIF reads ContentSequence[0].ReferencedSOPSequence
    assert image.ValueType == "IMAGE" and image.RelationshipType == "SELECTED FROM"
    uid = image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    return next(d for d in datasets if d.SOPInstanceUID == uid)


@pytest.mark.parametrize("kind", ["binary", "labelmap"])
def test_every_measurement_ohif_loads_can_be_placed(encoded, kind):
    """What OHIF's SR loader needs of each (merged) measurement group, or it throws: a
    Tracking Identifier and UID, a top-level SCOORD/SCOORD3D (without one a group has no
    coords, and _checkIfCanAddMeasurementsToDisplaySet reads coords[0].ReferencedSOPSequence:
    the TypeError seen in the viewer), an SCOORD's image as its first child, an SCOORD3D in
    the source's frame of reference, a drawable graphic type; and the first measurement on an
    image, which the SR viewport opens."""
    sr = getattr(encoded, kind)[1]
    datasets = encoded.case.datasets
    library = next(i for i in sr.ContentSequence if _code(i) == "111028")
    in_library = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                  for i in _items(library) if i.ValueType == "IMAGE"}
    measurements = _ohif_measurements(sr)
    assert measurements
    for items in measurements:
        assert any(_code(i) == "112039" and i.ValueType == "TEXT" for i in items)
        first_uidref = next(i for i in items if i.ValueType == "UIDREF")  # OHIF's find()
        assert _code(first_uidref) == "112040"
        coords = _ohif_coords(items)
        assert coords, [_code(i) for i in items]
        # drawn with the first coordinate's image (SCOORD) or none (SCOORD3D)
        assert len({c.ValueType for c in coords}) == 1
        if coords[0].ValueType == "SCOORD":
            assert len({_referenced_image(c, datasets).SOPInstanceUID for c in coords}) == 1
        for graphic in coords:
            assert graphic.GraphicType in OHIF_GRAPHIC_TYPES
            if graphic.ValueType == "SCOORD":
                image = _referenced_image(graphic, datasets)
                assert image.SOPInstanceUID in in_library
                cr = np.asarray(graphic.GraphicData, float).reshape(-1, 2)
                assert (cr >= 0).all() and (cr[:, 0] <= image.Columns).all() \
                    and (cr[:, 1] <= image.Rows).all()
            else:
                assert graphic.ReferencedFrameOfReferenceUID == datasets[0].FrameOfReferenceUID
                assert _inside_volume(datasets,
                                      np.asarray(graphic.GraphicData, float).reshape(-1, 3),
                                      _half_extent_along_z(datasets) + 1e-3)
    assert _graphic(measurements[0]).ValueType == "SCOORD"


def _ohif_coords(items: list[Dataset]) -> list[Dataset]:
    """What OHIF draws of a measurement: its top-level SCOORD/SCOORD3D (TID 1410 style), else
    the SCOORD/SCOORD3D each NUM is inferred from (a NUM with children but none of them
    is skipped, label and all: it must not occur)."""
    graphic = _graphic(items)
    if graphic is not None:
        return [graphic]
    coords = []
    for i in items:
        if i.ValueType == "NUM" and "ContentSequence" in i:
            found = [c for c in i.ContentSequence if c.ValueType in ("SCOORD", "SCOORD3D")]
            assert found, f"OHIF skips NUM {i.ConceptNameCodeSequence[0].CodeMeaning}"
            coords.append(found[0])
    return coords


def test_each_structure_has_a_centroid_point_on_its_nearest_image(encoded):
    """A TID 1410 POINT on the source image nearest the structure's centroid, at the
    centroid's place in that image, carrying the structure's volume and mean intensity."""
    sr, datasets = encoded.binary[1], encoded.case.datasets
    by_id = _by_identifier(sr)
    slab = _half_slab(datasets)
    normal = _normal(datasets[0])
    for group in _groups(sr):
        label, _ = _tracking(group)
        point = by_id[f"{label} centroid"]
        graphic = _graphic(list(point.ContentSequence))
        assert (graphic.ValueType, graphic.GraphicType) == ("SCOORD", "POINT")
        image = _referenced_image(graphic, datasets)
        on_image = _to_patient(image, graphic.GraphicData)[0]
        centroid = _centroid(group)
        distance = (centroid - on_image) @ normal
        assert abs(distance) <= slab + 1e-3  # the nearest image ...
        assert abs(distance - (centroid - np.asarray(image.ImagePositionPatient, float))
                   @ normal) < 1e-3  # ... on its plane ...
        np.testing.assert_allclose(on_image + distance * normal, centroid, atol=1e-3)  # ... there
        assert _inside_volume(datasets, on_image[None])
        volume = {c: v for c, v, _, _ in _nums(group)}
        mine = {c: v for c, v, _, _ in _nums(point)}
        assert mine["118565006"] == volume["118565006"]  # Volume
        intensity = "112031" if datasets[0].Modality == "CT" else "110852"
        means = [v for c, v, _, i in _nums(group)
                 if c == intensity and _derivation(i) == "373098007"]  # Mean
        assert [v for c, v, _, i in _nums(point) if c == intensity] == means


def _derivation(item: Dataset) -> str | None:
    for sub in item.get("ContentSequence", []):
        if _code(sub) == "121401":  # Derivation
            return str(sub.ConceptCodeSequence[0].CodeValue)
    return None


def test_each_segment_group_is_anchored_at_its_centroid_in_space(encoded):
    """The TID 1411 group keeps its SEG segment's Tracking UID and shares it with a TID 1410
    SCOORD3D POINT at the exact centroid: OHIF merges the two into one measurement that has
    a graphic (instead of throwing), and stacks never draw it."""
    sr, datasets = encoded.binary[1], encoded.case.datasets
    merged = {next(i.UID for i in items if _code(i) == "112040"): items
              for items in _ohif_measurements(sr)}
    for group in _groups(sr):
        _, uid = _tracking(group)
        graphic = _graphic(merged[uid])
        assert (graphic.ValueType, graphic.GraphicType) == ("SCOORD3D", "POINT")
        np.testing.assert_allclose(graphic.GraphicData, _centroid(group), atol=1e-3)
        assert graphic.ReferencedFrameOfReferenceUID == datasets[0].FrameOfReferenceUID
        sharing = [g for g in _all_groups(sr) if _tracking(g)[1] == uid]
        assert len(sharing) == 2 and not _nums(sharing[0])  # the anchor carries no numbers


def test_ohif_shows_volume_and_mean_next_to_each_centroid(encoded):
    sr = encoded.binary[1]
    ct = encoded.case.datasets[0].Modality == "CT"
    intensity = "Attenuation Coefficient" if ct else "MR signal intensity"
    unit = "[hnsf'U]" if ct else "[arb'U]"
    by_id = _by_identifier(sr)
    for group in _groups(sr):
        label, _ = _tracking(group)
        text = _ohif_text(list(by_id[f"{label} centroid"].ContentSequence))
        assert text[0].startswith("Volume: ") and text[0].endswith(" mL")
        assert text[1].startswith(f"{intensity}: ") and text[1].endswith(f" {unit}")
        heights = [v for c, v, _, i in _nums(group) if c == "121207"]
        assert [float(t.split(": ")[1].split()[0]) for t in text[2:2 + len(heights)]] \
            == pytest.approx(heights, abs=0.006)


def _height_lines(sr: Dataset, group: Dataset) -> dict[str, tuple[Dataset, float, Dataset]]:
    """where → (Height NUM of the heights group, value in the TID 1411 group, its line)."""
    label, _ = _tracking(group)
    wanted = {HEIGHT_SITES[str(_modifier(item))]: v for c, v, _, item in _nums(group)
              if c == "121207" and _site(item) == "3572006"}  # Height of the Vertebral body
    if not wanted:
        return {}
    heights = _by_identifier(sr)[f"{label} heights"]
    assert "ContentTemplateSequence" not in heights or \
        heights.ContentTemplateSequence[0].TemplateIdentifier == "1501"
    out = {}
    for c, _, _, item in _nums(heights):
        assert c == "121207" and _site(item) == "3572006"
        [line] = [i for i in item.ContentSequence if i.ValueType in ("SCOORD", "SCOORD3D")]
        assert line.RelationshipType == "INFERRED FROM"
        where = HEIGHT_SITES[str(_modifier(item))]
        out[where] = (item, wanted[where], line)
    assert set(out) == set(wanted)
    return out


def _site(item: Dataset) -> str | None:
    for sub in item.get("ContentSequence", []):
        if _code(sub) == "363698007":  # Finding Site
            return str(sub.ConceptCodeSequence[0].CodeValue)
    return None


def _line_points(graphic: Dataset, datasets: list[Dataset]) -> np.ndarray:
    if graphic.ValueType == "SCOORD3D":
        return np.asarray(graphic.GraphicData, float).reshape(-1, 3)
    return _to_patient(_referenced_image(graphic, datasets), graphic.GraphicData)


def test_body_heights_are_lines_on_the_image_they_lie_in(encoded):
    """The body heights of each vertebra of the MR cases (the CT example has no canal, so no
    heights) in a TID 1501 group of their own: each Height inferred from its line, a
    POLYLINE of 2 points as long as the height, inside the volume; SCOORDs on the one image
    whose slab holds all three lines (true sagittal: the mid-sagittal image), else SCOORD3Ds;
    OHIF shows the three values beside the three lines."""
    if encoded.case.datasets[0].Modality != "MR":
        pytest.skip("the CT example has no canal label, so no body heights")
    sr, datasets = encoded.binary[1], encoded.case.datasets
    sagittal = np.allclose(datasets[0].ImageOrientationPatient, [0, 1, 0, 0, 0, -1])
    by_id = _by_identifier(sr)
    found = 0
    for group in _groups(sr):
        lines = _height_lines(sr, group)
        if not lines:
            continue
        found += 1
        kinds = {line.ValueType for _, _, line in lines.values()}
        assert len(kinds) == 1 and (kinds == {"SCOORD"} or not sagittal)
        if kinds == {"SCOORD"}:
            assert len({_referenced_image(line, datasets).SOPInstanceUID
                        for _, _, line in lines.values()}) == 1
        for item, value, line in lines.values():
            height = float(item.MeasuredValueSequence[0].NumericValue)
            assert height == value
            assert line.GraphicType == "POLYLINE" and len(line.GraphicData) in (4, 6)
            points = _line_points(line, datasets)
            assert _inside_volume(datasets, points, _half_extent_along_z(datasets) + 1e-3)
            length = float(np.linalg.norm(points[1] - points[0]))
            if line.ValueType == "SCOORD" and not sagittal:
                assert length == pytest.approx(height, rel=0.02)  # projected onto the image
            else:
                assert length == pytest.approx(height, abs=1e-3)
        label, _ = _tracking(group)
        text = _ohif_text(list(by_id[f"{label} heights"].ContentSequence))
        assert text == [f"Height: {lines[w][1]:.2f} mm"
                        for w in ("anterior", "middle", "posterior")]
    assert found == 4  # L1-L4


def test_known_shapes_heights_are_vertical_lines_in_space(tmp_path):
    """On an axial CT the heights are perpendicular to every image: SCOORD3D lines, vertical,
    where the heights were taken (L2 box: z 1.75..41.75, 10 % / 50 % / 90 % of the depth)."""
    datasets, labels, hu = _known_shapes()
    pipeline = PipelineMetadata("vertebral-bodies-ct", "Dataset_ResEncM", "v1")
    sr = encode_results(datasets, labels, vertebral_bodies_ct(), pipeline,
                        EncodeOptions(preview=False), image=hu)[1]
    assert dciodvfy_errors(sr, tmp_path) == []
    l1, l2 = _groups(sr)
    lines = _height_lines(sr, l2)
    assert set(lines) == {"anterior", "middle", "posterior"}
    for where, y in (("anterior", 4.75 + 3), ("middle", 4.75 + 15), ("posterior", 34.75 - 3)):
        graphic = lines[where][2]
        assert graphic.ValueType == "SCOORD3D"
        (x0, y0, z0), (x1, y1, z1) = np.asarray(graphic.GraphicData, float).reshape(2, 3)
        assert (x0, y0) == pytest.approx((x1, y1)) and y0 == pytest.approx(y)
        assert x0 in (pytest.approx(19.5), pytest.approx(20.0))
        assert (z0, z1) == pytest.approx((1.75, 41.75))
    wedge = _height_lines(sr, l1)
    anterior = np.asarray(wedge["anterior"][2].GraphicData)
    assert anterior[5] - anterior[2] == pytest.approx(wedge["anterior"][1], abs=1e-3)
    # the heights are on the centroid points too: a stack viewer draws no SCOORD3D
    text = _ohif_text(list(_by_identifier(sr)["L2 vertebral body centroid"].ContentSequence))
    assert text[2:] == ["Height: 40.00 mm"] * 3


def test_tracking_uids_are_deterministic_and_distinct(encoded):
    """The same structures give the same Tracking UIDs (binary and LABELMAP reports, which
    derive them alike); within a report only a TID 1411 group and its anchor share one."""
    def uids(sr):
        return [_tracking(g) for g in _all_groups(sr)]
    assert uids(encoded.binary[1]) == uids(encoded.labelmap[1])
    pairs = uids(encoded.binary[1])
    segment_uids = {_tracking(g)[1] for g in _groups(encoded.binary[1])}
    counts = {uid: sum(u == uid for _, u in pairs) for _, uid in pairs}
    assert all(n == (2 if uid in segment_uids else 1) for uid, n in counts.items())
    assert len({text for text, _ in pairs}) == len(counts)


PIPELINE_CT = PipelineMetadata("vertebral-bodies-ct", "Dataset_ResEncM", "v1")
#: set anew by each build
_VOLATILE = {"InstanceCreationTime", "InstanceCreationDate", "ContentTime", "ContentDate",
             "ContributionDateTime"}


def _written(ds: Dataset) -> Dataset:
    import io

    import pydicom

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    read = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    for keyword in _VOLATILE:
        if keyword in read:
            del read[keyword]
    for item in read.get("ContributingEquipmentSequence", ()):
        item.pop("ContributionDateTime", None)
    return read


@pytest.mark.parametrize("name", ["ct", "mr_sagittal"])
def test_document_around_the_content_is_highdicoms_document(monkeypatch, name):
    """writer._document attaches the finished content tree to a document highdicom builds
    from its bare root; the written SR equals the one highdicom builds from the whole tree."""
    from converters.sr import writer
    from tests.results.conftest import CASES

    case = CASES[name]()
    built = {}
    for fast in (True, False):
        monkeypatch.setattr(writer, "FAST_DOCUMENT", fast)
        objects = encode_results(case.datasets, case.labelmap, case.mapping, PIPELINE_CT,
                                 EncodeOptions(preview=False), image=case.image)
        built[fast] = next(ds for ds in objects if ds.Modality == "SR")
    assert built[True].content == built[False].content
    assert _written(built[True]) == _written(built[False])


def test_document_needs_evidence_for_every_reference(monkeypatch):
    """The content references the SEG: without it in the evidence the document is refused
    (highdicom's constructor refuses it too)."""
    from converters.sr import writer

    real = writer._document

    def without_seg(evidence, content, **kwargs):
        return real([ds for ds in evidence if ds.Modality != "SEG"], content, **kwargs)

    monkeypatch.setattr(writer, "_document", without_seg)
    case = synthetic.axial_ct(shape=(6, 12, 12))
    labels = np.zeros((6, 12, 12), np.uint8)
    labels[1:4, 3:8, 3:8] = 1
    with pytest.raises(ValueError, match="no evidence for the SOP instances"):
        encode_results(case.datasets, labels, vertebral_bodies_ct(), PIPELINE_CT,
                       EncodeOptions(preview=False))
