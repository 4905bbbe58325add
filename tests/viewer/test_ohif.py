"""Every SEG and SR the node delivers opens in OHIF 3.13 through Orthanc's DICOMweb, in a real
browser: the segment list with labels and colours, the overlay on the right image at the right
place (pixels of a screenshot against the SEG's own geometry), no console error, no failed HTTP
request; for the SR, no error box and the measurements listed.

Screenshots of every step stay in the test's temporary folder (CI keeps them as artefacts).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dicomnode.viewer import ViewerStack
from tests.viewer.browser import Ohif, colour_mask
from tests.viewer.conftest import Case
from tests.viewer.expect import Expected, SliceLabels, has_background, segment_table, slice_labels

pytestmark = pytest.mark.slow

#: (case, SEG series description fragment): every SEG series the cases produce.
SEGS = [("ct-512", "SEG vertebral-bodies"), ("ct-odd", "SEG vertebral-bodies"),
        ("ct-labelmap", "labelmap"), ("mr-tss", "SEG spine"),
        ("mr-spineps", "vertebrae"), ("mr-spineps", "subregions")]
SRS = ["ct-512", "ct-odd", "ct-labelmap", "mr-tss", "mr-spineps"]


@pytest.fixture
def ohif(browser: Any, stack: ViewerStack, tmp_path: Path) -> Iterator[Ohif]:
    viewer = Ohif(browser, stack.url, tmp_path / "screenshots")
    try:
        yield viewer
    except Exception:
        viewer.screenshot("failure")
        raise
    finally:
        viewer.screenshot("last")
        viewer.close()


def _seg(case: Case, fragment: str) -> Any:
    matches = [ds for description, ds in case.segs.items() if fragment in description]
    assert len(matches) == 1, f"{case.name}: SEG series {sorted(case.segs)} vs {fragment!r}"
    return matches[0]


def _clean(ohif: Ohif) -> None:
    assert ohif.console_errors == [], ohif.console_errors
    assert ohif.failed_requests == [], ohif.failed_requests


def _sample(ohif: Ohif, where: SliceLabels, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The screenshot's colour at the centre of each pixel of the SEG's label image, and
    which of those centres lie inside the viewport (labels and colours, flattened)."""
    pixels, (left, top) = ohif.viewport_pixels(name)
    origin, down, right = ohif.world_to_screen([
        where.corner.tolist(), (where.corner + where.row_step).tolist(),
        (where.corner + where.col_step).tolist()])
    rows, cols = np.indices(where.labels.shape)
    screen = (origin[None, None] + rows[..., None] * (down - origin)
              + cols[..., None] * (right - origin)) - (left, top)
    x, y = np.rint(screen[..., 0]).astype(int), np.rint(screen[..., 1]).astype(int)
    inside = (x >= 0) & (y >= 0) & (x < pixels.shape[1]) & (y < pixels.shape[0])
    return where.labels[inside], pixels[y[inside], x[inside]]


def _is(colours: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 12) -> np.ndarray:
    return np.all(np.abs(colours.astype(int) - np.asarray(rgb)) <= tolerance, axis=-1)


def _assert_drawn_as_segmented(labels: np.ndarray, colours: np.ndarray,
                               expected: list[Expected], image: str) -> None:
    """At least 90 % of each segment's pixels show its colour; at most 5 % of unsegmented
    pixels show any segment's colour."""
    checked = 0
    for e in expected:
        mine = labels == e.number
        if mine.sum() >= 4:
            share = _is(colours[mine], e.rgb).mean()
            assert share >= 0.9, (image, e, share)
            checked += 1
    assert checked, f"no segment on {image}"
    unsegmented = labels == 0
    if unsegmented.any():
        painted = np.any([_is(colours[unsegmented], e.rgb, 4) for e in expected], axis=0)
        assert painted.mean() <= 0.05, (image, painted.mean())


@pytest.mark.parametrize(("name", "fragment"), SEGS, ids=[f"{c}-{f.split()[-1]}" for c, f in SEGS])
def test_seg_is_listed_and_drawn_where_it_is(ohif: Ohif, cases: dict[str, Case], name: str,
                                              fragment: str) -> None:
    case = cases[name]
    seg = _seg(case, fragment)
    expected = segment_table(seg)
    assert expected, "the SEG has no segment"
    ohif.open_study(case.study_uid)
    ohif.load("SEG", str(seg.SeriesDescription)[:20])
    ohif.wait_for_labelmap()
    # A LABELMAP SEG describes its background (pixel value 0) with a segment, as PS3.3
    # C.8.20.2.3.3 requires; OHIF lists that item first, by its number, drawn in black.
    background = [Expected(0, "Background", (0, 0, 0))] if has_background(seg) else []
    shown = ohif.wait_for_segments(len(background) + len(expected))
    ohif.screenshot("loaded")
    # every segment listed, in order, with its label and its colour
    assert [s.label for s in shown] == [e.label for e in background + expected]
    for s, e in zip(shown, background + expected, strict=True):
        assert np.abs(np.subtract(s.rgb, e.rgb)).max() <= 3, (s, e)

    # Drawn opaque (no outline, fill alpha 1), the overlay is exactly each segment's colour:
    # on the image with the most segments, the pixel at the centre of every SEG pixel shows
    # that pixel's segment, through the viewport's own camera. A one-pixel shift or the
    # neighbouring image's mask fails this by far (the random-weight masks are speckled).
    ohif.solid_segments()
    where = slice_labels(seg)
    busiest = max(where, key=lambda uid: len(np.unique(where[uid].labels)))
    ohif.go_to_sop(busiest)
    on = where[busiest]
    rows, cols = np.nonzero(on.labels > 0)
    centre = on.corner + rows.mean() * on.row_step + cols.mean() * on.col_step
    ohif.look_at(centre.tolist(), (on.row_step if np.linalg.norm(on.row_step) <
                                   np.linalg.norm(on.col_step) else on.col_step).tolist())
    labels, colours = _sample(ohif, on, "busiest-slice")
    _assert_drawn_as_segmented(labels, colours, expected, busiest)
    # and on the images of the SEG's middle and last frames (frames far into the Pixel Data:
    # a frame decoded from the wrong bit offset is drawn shifted or empty)
    frames = [str(item.DerivationImageSequence[0].SourceImageSequence[0]
                  .ReferencedSOPInstanceUID) for item in seg.PerFrameFunctionalGroupsSequence]
    for uid in dict.fromkeys(u for u in (frames[len(frames) // 2], frames[-1]) if u in where):
        ohif.go_to_sop(uid)
        labels, colours = _sample(ohif, where[uid], f"frame-{frames.index(uid)}")
        _assert_drawn_as_segmented(labels, colours, expected, uid)

    # an image the SEG does not cover shows none of its colours
    images = ohif.page.evaluate(
        "() => window.cornerstone.getEnabledElements()[0].viewport.getImageIds()")
    uncovered = [i for i, image_id in enumerate(images)
                 if not any(f"/instances/{uid}/" in image_id for uid in where)]
    if uncovered:
        ohif.go_to_slice(uncovered[len(uncovered) // 2])
        pixels, _ = ohif.viewport_pixels("uncovered-slice")
        for e in expected:
            assert colour_mask(pixels, e.rgb, tolerance=4).sum() < 4, e
    _clean(ohif)


@pytest.mark.parametrize("name", SRS)
def test_sr_opens_without_error_and_shows_its_measurements(ohif: Ohif, cases: dict[str, Case],
                                                           name: str) -> None:
    """OHIF draws the report in its SR viewport: one point per structure (on the image nearest
    its centroid) with its volume and mean intensity as text; no error box."""
    case = cases[name]
    assert case.sr is not None, f"{name}: no SR in Orthanc"
    points = centroid_groups(case.sr)
    assert points, "the SR has no measurement OHIF can place"
    ohif.open_study(case.study_uid)
    ohif.load("SR", hydrate=False)
    ohif.page.wait_for_function(
        f"() => window.cornerstoneTools.annotation.state.getAllAnnotations().length >= "
        f"{len(points)}", timeout=120_000)
    ohif.page.wait_for_timeout(2000)
    ohif.screenshot("sr-loaded")
    assert ohif.error_boxes() == []
    assert "Cannot read properties" not in ohif.body_text()
    shown = ohif.annotations()
    # one point per structure on an image (the stack viewport draws those; the SCOORD3D
    # anchors that give the TID 1411 groups a graphic have no image and are not drawn), each
    # with the volume and mean of its group
    by_text = [a for a in shown if a["image"] and any(line.startswith("Volume")
                                                      for line in a["labels"])]
    assert len(by_text) == len(points), (len(by_text), len(points))
    for annotation in by_text:
        assert annotation["graphicType"] == "POINT"
        assert any(re.match(r"(Attenuation Coefficient|MR signal intensity): -?\d", line)
                   for line in annotation["labels"]), annotation["labels"]
    # the viewport opens on an image with a measurement, and its text is on screen
    assert any(text.startswith("Volume") for text in ohif.svg_text())
    _clean(ohif)


def centroid_groups(sr: Any) -> list[Any]:
    """The report's TID 1410 groups whose graphic is an image POINT (what OHIF draws)."""
    groups = []
    for container in _walk(sr):
        if container.ValueType != "CONTAINER" or \
                container.ConceptNameCodeSequence[0].CodeValue != "125007":
            continue
        children = container.get("ContentSequence", [])
        if any(c.ValueType == "SCOORD" and c.GraphicType == "POINT" for c in children) and \
                any(c.ValueType == "NUM" for c in children):
            groups.append(container)
    return groups


def _walk(ds: Any) -> Iterator[Any]:
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _walk(item)
