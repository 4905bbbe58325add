"""Preview: secondary captures pass dciodvfy; PNG shows both reformats with label colours."""

from __future__ import annotations

import numpy as np
from PIL import Image

from tests.results.conftest import dciodvfy_errors


def test_secondary_captures_validate(encoded, tmp_path):
    scs = encoded.binary[2:]
    assert [sc.ImageComments.split()[0] for sc in scs] == ["sagittal", "coronal"]
    for sc in scs:
        assert dciodvfy_errors(sc, tmp_path) == []
        assert sc.StudyInstanceUID == encoded.case.datasets[0].StudyInstanceUID
        assert sc.SamplesPerPixel == 3 and sc.Rows >= 64


def test_png_has_both_panels_and_label_colours(encoded):
    png = np.asarray(Image.open(encoded.png).convert("RGB"))
    sag, cor = (sc.pixel_array for sc in encoded.binary[2:])
    assert png.shape[1] == sag.shape[1] + cor.shape[1] + 8
    # overlay pixels are coloured (not grey) somewhere in each panel
    for panel in (sag, cor):
        spread = panel.max(axis=2).astype(int) - panel.min(axis=2)
        assert (spread > 30).any()
