"""dcmtk's command-line tools by their own path.

pynetdicom installs its own ``storescu``, ``echoscu`` and ``storescp`` into ``.venv/bin``; with
the virtual environment first on PATH they shadow dcmtk's and answer dcmtk's options with their
usage message. Tests and benchmarks therefore never call dcmtk through PATH.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Where dcmtk's tools are (Debian's ``dcmtk`` package: /usr/bin).
DCMTK_BIN = Path(os.environ.get("DCMTK_BIN", "/usr/bin"))


def dcmtk_tool(name: str) -> str:
    """The path of dcmtk's ``name`` (``storescu``, ``storescp``, ``echoscu``, ``dcmdump``…)."""
    return str(DCMTK_BIN / name)


STORESCU = dcmtk_tool("storescu")
STORESCP = dcmtk_tool("storescp")
ECHOSCU = dcmtk_tool("echoscu")
