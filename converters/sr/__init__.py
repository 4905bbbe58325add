"""TID 1500 measurement report (Comprehensive 3D SR) referencing the SEG segments."""

from .writer import build_report

__all__ = ["build_report"]
