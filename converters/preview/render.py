"""Sagittal and coronal reformats with coloured labels and level names (Pillow)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from ..measurements.geometry import AP, LR, SI, Grid
from ..vocabulary import Structure

#: Output pixel size bounds (mm) and panel size bound (pixels).
MIN_PIXEL_MM = 0.25
MAX_PANEL_PX = 768
MIN_PANEL_PX = 256  # short fields of view are magnified up to this height
MARGIN_MM = 50.0  # context kept around the labelled structures
ALPHA = 0.45


@dataclass(frozen=True)
class Panel:
    """One reformat: ``rgb`` (H, W, 3) uint8; ``orientation`` the DICOM Patient
    Orientation (0020,0020) of its rows and columns; ``pixel_mm`` its pixel size."""

    name: str
    rgb: np.ndarray
    orientation: tuple[str, str]
    pixel_mm: float


def _window(values: np.ndarray, modality: str) -> np.ndarray:
    if modality == "CT":
        low, high = 400 - 900, 400 + 900  # bone-friendly window: level 400, width 1800 HU
    else:
        low, high = np.percentile(values, [1, 99.5]) if values.size else (0, 1)
    scaled = (values.astype(np.float64) - low) / max(high - low, 1e-6)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def _sample(grid: Grid, volume: np.ndarray, points: np.ndarray, order: int,
            outside: float = 0, dtype: type | None = None) -> np.ndarray:
    """Values of ``volume`` at patient ``points`` (..., 3) as ``dtype`` (default: the
    volume's); ``outside`` beyond the grid."""
    inv = np.linalg.inv(grid.affine)
    idx = points @ inv[:3, :3].T + inv[:3, 3]
    coords = np.moveaxis(idx, -1, 0)
    values: np.ndarray = ndimage.map_coordinates(volume, coords, output=dtype or volume.dtype,
                                                 order=order, mode="constant", cval=outside)
    return values


def render_panels(
    grid: Grid,
    image: np.ndarray,
    labels: np.ndarray,
    structures: Sequence[Structure],
    modality: str,
) -> list[Panel]:
    """Sagittal and coronal planes through the labelled structures' centre.

    ``labels`` holds segment numbers (``structures[i]`` is value ``i + 1``) on the grid of
    ``image`` (modality values, e.g. HU).
    """
    shape = np.array(image.shape)
    corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)], float)
    box = grid.to_patient(corners)
    lo, hi = box.min(axis=0), box.max(axis=0)
    labelled = grid.points(labels > 0)
    centre = labelled.mean(axis=0) if len(labelled) else (lo + hi) / 2
    pixel = max(float(grid.spacing[1:].min()), float((hi - lo).max()) / MAX_PANEL_PX)
    pixel = max(MIN_PIXEL_MM, min(pixel, float(SI @ (hi - lo)) / MIN_PANEL_PX))
    background = float(image.min()) if image.size else 0.0
    panels = []
    # (name, horizontal axis and its DICOM letter, fixed axis): vertical is always S → I.
    for name, horiz, letter, fixed in (("sagittal", AP, "P", LR), ("coronal", LR, "L", AP)):
        h_lo, h_hi = float(horiz @ lo), float(horiz @ hi)
        if len(labelled):  # keep the spine and some context, not the whole body width
            h_lo = max(h_lo, float((labelled @ horiz).min()) - MARGIN_MM)
            h_hi = min(h_hi, float((labelled @ horiz).max()) + MARGIN_MM)
        v_lo, v_hi = float(SI @ lo), float(SI @ hi)
        hs = np.arange(h_lo, h_hi + 1e-6, pixel)
        vs = np.arange(v_hi, v_lo - 1e-6, -pixel)  # superior at the top
        pts = (centre @ fixed) * fixed + hs[None, :, None] * horiz + vs[:, None, None] * SI
        # interpolated in float whatever the image's dtype (int16 HU from the volume)
        grey = _window(_sample(grid, image, pts, 1, background, np.float32), modality)
        lab = _sample(grid, labels, pts, 0).astype(int)
        rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float64)
        palette = np.array([(0, 0, 0), *(s.rgb for s in structures)], float)
        on = lab > 0
        rgb[on] = (1 - ALPHA) * rgb[on] + ALPHA * palette[lab[on]]
        out = Image.fromarray(rgb.astype(np.uint8))
        _annotate(out, lab, structures)
        panels.append(Panel(name, np.asarray(out), (letter, "F"), pixel))
    return panels


def _annotate(img: Image.Image, lab: np.ndarray, structures: Sequence[Structure]) -> None:
    """Write each vertebra's / body's level name to the right of its centre in the plane."""
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for number, s in enumerate(structures, start=1):
        if s.kind not in ("vertebra", "body", "sacrum") or not (lab == number).any():
            continue
        rows, cols = np.nonzero(lab == number)
        text = s.level or s.label
        width = draw.textlength(text, font=font)
        # right of the structure, or inside the panel's right edge when it reaches it
        x = int(min(cols.max() + 3, img.width - width - 2))
        y = int(rows.mean()) - 5
        draw.text((x + 1, y + 1), text, fill=(0, 0, 0), font=font)
        draw.text((x, y), text, fill=tuple(s.rgb), font=font)


def side_by_side(panels: Sequence[Panel]) -> Image.Image:
    """All panels next to each other on black (the PNG preview)."""
    height = max(p.rgb.shape[0] for p in panels)
    width = sum(p.rgb.shape[1] for p in panels) + 8 * (len(panels) - 1)
    canvas = Image.new("RGB", (width, height))
    x = 0
    for p in panels:
        canvas.paste(Image.fromarray(p.rgb), (x, 0))
        x += p.rgb.shape[1] + 8
    return canvas
