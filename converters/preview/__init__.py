"""Preview: sagittal and coronal reformats with coloured labels, as Secondary Capture + PNG."""

from .render import Panel, render_panels, side_by_side
from .sc import build_secondary_captures

__all__ = ["Panel", "build_secondary_captures", "render_panels", "side_by_side"]
