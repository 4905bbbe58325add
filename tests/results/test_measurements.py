"""Measurement maths on synthetic shapes whose answers are known analytically."""

import numpy as np
import pytest

from converters.measurements import (
    Grid,
    axial_areas,
    body_heights,
    disc_height,
    minimum_area_per_level,
    region_statistics,
    trabecular_attenuation,
)


def _box(shape_mm, spacing=0.5, pad=4):
    """A box of ``shape_mm`` (z, y, x) in an array with ``pad`` empty voxels around it."""
    n = [round(s / spacing) for s in shape_mm]
    mask = np.zeros([k + 2 * pad for k in n], bool)
    mask[pad:pad + n[0], pad:pad + n[1], pad:pad + n[2]] = True
    return mask


def test_box_volume_is_24_ml_and_intensity_stats():
    grid = Grid.from_spacing((0.5, 0.5, 0.5))
    mask = _box((40, 30, 20))  # 40 mm high (z), 30 mm deep (y), 20 mm wide (x)
    image = np.where(mask, 200.0, -1000.0)
    image[mask] += np.tile([-10.0, 10.0], mask.sum() // 2)
    stats = region_statistics(mask, grid, image)
    assert stats.volume_ml == pytest.approx(24.0)
    assert stats.mean == pytest.approx(200.0)
    assert stats.sd == pytest.approx(10.0, rel=1e-4)
    # patient (x, y, z) of the centre: pad 2 mm + half the box side - half a voxel
    assert stats.centroid == pytest.approx((2 + 10 - 0.25, 2 + 15 - 0.25, 2 + 20 - 0.25))


def test_box_heights_are_equal_and_ratio_zero():
    grid = Grid.from_spacing((0.5, 0.5, 0.5))
    h = body_heights(_box((40, 30, 20)), grid)
    assert (h.anterior_mm, h.middle_mm, h.posterior_mm) == pytest.approx((40, 40, 40))
    assert h.height_loss_ratio == pytest.approx(0.0)


def test_wedge_body_has_known_heights_and_ratio():
    # Depth 30 mm along y (anterior = small y), height 25 mm posteriorly falling linearly
    # to 15 mm at the anterior border: an anterior wedge fracture.
    sp = 0.5
    grid = Grid.from_spacing((sp, sp, sp))
    ny, nz, nx = 60, 50, 40
    mask = np.zeros((nz + 4, ny + 4, nx + 4), bool)
    for j in range(ny):
        y_centre = (j + 0.5) * sp  # distance of the voxel centre from the anterior border
        height = 15 + 10 * y_centre / 30
        mask[2:2 + round(height / sp), 2 + j, 2:2 + nx] = True
    h = body_heights(mask, grid)
    expected = [15 + 10 * f for f in (0.1, 0.5, 0.9)]
    assert [h.anterior_mm, h.middle_mm, h.posterior_mm] == pytest.approx(expected, abs=sp)
    assert h.height_loss_ratio == pytest.approx(1 - 16 / 24, abs=0.02)


def test_heights_on_anisotropic_grid():
    grid = Grid.from_spacing((2.0, 0.75, 0.75))
    mask = np.zeros((20, 60, 60), bool)
    mask[3:15, 10:50, 10:50] = True  # 12 slices × 2 mm = 24 mm
    assert disc_height(mask, grid) == pytest.approx(24.0)


def test_cylinder_cross_section_and_minimum_per_level():
    sp = 0.25
    grid = Grid.from_spacing((1.0, sp, sp))
    yy, xx = np.mgrid[:120, :120]
    radius = lambda r: ((yy - 59.5) * sp) ** 2 + ((xx - 59.5) * sp) ** 2 <= r * r  # noqa: E731
    canal = np.zeros((40, 120, 120), bool)
    canal[:20] = radius(7.0)
    canal[20:] = radius(5.0)
    _, areas = axial_areas(canal, grid)
    assert areas[0] == pytest.approx(np.pi * 49, rel=0.01)
    upper = np.zeros_like(canal)
    upper[:18] = True
    lower = np.zeros_like(canal)
    lower[22:] = True
    mins = minimum_area_per_level(canal, {"L1": upper, "L2": lower}, grid)
    assert mins["L1"] == pytest.approx(np.pi * 49, rel=0.01)
    assert mins["L2"] == pytest.approx(np.pi * 25, rel=0.01)


def test_trabecular_attenuation_excludes_cortex():
    grid = Grid.from_spacing((1.0, 1.0, 1.0))
    mask = _box((20, 20, 20), spacing=1.0)
    image = np.full(mask.shape, 600.0)  # cortex
    # voxel centres more than 3 mm below the surface: 3.5 mm deep and beyond, the central 14³
    inner = _box((14, 14, 14), spacing=1.0, pad=7)
    image[inner] = 150.0
    mean, n = trabecular_attenuation(mask, grid, image, erosion_mm=3.0)
    assert mean == pytest.approx(150.0)
    assert n == 14**3


@pytest.mark.parametrize("at_edge", [False, True])
def test_trabecular_attenuation_equals_the_whole_volume_transform(at_edge):
    """The transform runs on the body's bounding box only; on an irregular body with
    anisotropic voxels (and one touching the array's edge) that changes nothing."""
    from scipy import ndimage

    rng = np.random.default_rng(7)
    grid = Grid.from_spacing((2.5, 0.7, 0.9))
    z, y, x = np.ogrid[:40, :90, :80]
    body = ((z - 20) * 2.5 / 40) ** 2 + ((y - 45) * 0.7 / 25) ** 2 + ((x - 40) * 0.9 / 30) ** 2 < 1
    # solid inside, a ragged outer shell two voxels thick
    mask = ndimage.binary_erosion(body, iterations=2) | (body & (rng.random(body.shape) > 0.5))
    if at_edge:
        mask[:3] = True
    image = rng.normal(100, 30, mask.shape)
    depth = ndimage.distance_transform_edt(mask, sampling=grid.spacing) - grid.spacing.min() / 2
    core = depth > 3.0
    mean, n = trabecular_attenuation(mask, grid, image, erosion_mm=3.0)
    assert n == int(core.sum()) > 0
    assert mean == pytest.approx(float(image[core].mean()), rel=1e-12)


def test_oblique_grid_volume_is_invariant():
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    a = np.eye(4)
    a[:3, :3] = np.array([[0, c, -s], [0, s, c], [1, 0, 0]]).T @ np.diag([0.5, 0.5, 0.5])
    mask = _box((40, 30, 20))
    assert region_statistics(mask, Grid(a)).volume_ml == pytest.approx(24.0)


@pytest.mark.parametrize("spacing, origin_x", [(3.3091, 247.6533), (2.544552, 137.6979),
                                               (2.311412, 261.0435), (0.7, 0.0)])
def test_body_two_columns_wide_keeps_its_mid_sagittal_slab(spacing, origin_x):
    # An even number of columns puts the median exactly half a voxel from each middle column;
    # rounding used to leave the slab empty for these real-world-like origins (a node run
    # on 3.9 mm pixels failed with "empty mask: no heights").
    grid = Grid.from_spacing((2.0, spacing, spacing), origin=(origin_x, -12.3, 45.6))
    mask = np.zeros((12, 10, 6), bool)
    mask[2:10, 2:8, 2:4] = True  # 8 slices × 2 mm high, two columns wide in x
    assert body_heights(mask, grid).middle_mm == pytest.approx(16.0)


def test_body_in_two_parts_still_has_heights():
    # A mask in two parts far apart (a noisy prediction) puts the median between them.
    grid = Grid.from_spacing((2.0, 1.0, 1.0), origin=(12.5, 0.0, 0.0))
    mask = np.zeros((12, 10, 30), bool)
    mask[2:10, 2:8, 2:4] = True
    mask[2:10, 2:8, 26:28] = True  # as big as the first: the median falls in the gap
    heights = body_heights(mask, grid)
    assert heights.middle_mm == pytest.approx(16.0)


def test_findings_on_bounding_boxes_equal_whole_map_measurements():
    """``measure`` works on each structure's bounding box; on an oblique grid, with a body
    touching the array's edge and a disc, the numbers equal whole-map measurements."""
    from converters.measurements.findings import Layer, measure
    from converters.vocabulary import LabelMapping

    mapping = LabelMapping("vb", {13: "body_L1", 14: "body_L2", 90: "disc_L1_L2"})
    labels = np.zeros((60, 70, 50), np.uint8)
    labels[0:18, 20:50, 10:40] = 13   # touches the first frame
    labels[22:40, 22:52, 12:42] = 14
    labels[18:22, 24:48, 14:38] = 90
    rng = np.random.default_rng(3)
    image = rng.normal(200, 40, labels.shape)
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[0, 0, 1.2], [c * 0.8, -s * 0.8, 0], [s * 0.7, c * 0.7, 0]])
    affine[:3, 3] = (-40, 12, 300)
    grid = Grid(affine)
    structures = mapping.structures_present(labels)
    found = measure([Layer(mapping, labels, structures)], grid, image, "CT")
    for st in structures:
        whole = labels == {"body_L1": 13, "body_L2": 14, "disc_L1_L2": 90}[st.key]
        expected = region_statistics(whole, grid, image)
        got = found.statistics[("vb", st.key)]
        assert got.voxel_count == expected.voxel_count
        assert got.centroid == pytest.approx(expected.centroid, abs=1e-9)
        assert got.mean == pytest.approx(expected.mean, rel=1e-12)
        if st.kind == "body":
            got_h, expected_h = found.heights[("vb", st.key)], body_heights(whole, grid)
            assert (got_h.anterior_mm, got_h.middle_mm, got_h.posterior_mm) == pytest.approx(
                (expected_h.anterior_mm, expected_h.middle_mm, expected_h.posterior_mm))
        else:
            assert found.disc_heights[("vb", st.key)] == pytest.approx(disc_height(whole, grid))


def test_height_lines_are_vertical_segments_where_the_heights_were_taken():
    """Each height comes with its line: (lower, upper) end points in patient mm, vertical
    (LPS z), as long as the height, in the mid-sagittal slab at the column it was taken."""
    grid = Grid.from_spacing((0.5, 0.5, 0.5))
    # voxel centres from 2 mm; outer borders z 1.75..41.75, y 1.75..31.75, x 1.75..21.75
    h = body_heights(_box((40, 30, 20)), grid)
    assert h.lines is not None
    for (low, high), height, y in zip(h.lines, (h.anterior_mm, h.middle_mm, h.posterior_mm),
                                      (1.75 + 3, 1.75 + 15, 31.75 - 3), strict=True):
        assert low[2] == pytest.approx(1.75) and high[2] == pytest.approx(41.75)
        assert high[2] - low[2] == pytest.approx(height)
        assert low[:2] == pytest.approx(high[:2])  # vertical
        assert low[1] == pytest.approx(y)  # 10 % of the depth in from the front / back
        assert low[0] in (pytest.approx(11.5), pytest.approx(12.0))  # voxel column mid-width


def test_wedge_height_lines_follow_the_wedge():
    sp = 0.5
    grid = Grid.from_spacing((sp, sp, sp))
    mask = np.zeros((54, 64, 44), bool)
    for j in range(60):
        mask[2:2 + round((15 + 10 * (j + 0.5) * sp / 30) / sp), 2 + j, 2:42] = True
    h = body_heights(mask, grid)
    assert h.lines is not None
    lengths = [high[2] - low[2] for low, high in h.lines]
    assert lengths == pytest.approx([h.anterior_mm, h.middle_mm, h.posterior_mm])
    assert all(low[2] == pytest.approx(0.75) for low, _ in h.lines)  # flat lower endplate
