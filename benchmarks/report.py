"""The output every benchmark shares: one printed line per figure and the ``--json`` file.

A row is ``{"name", "ours", "reference", "unit", "ratio"}``; ``ratio`` is filled in as
ours / reference when the benchmark has not set it (some set reference / ours for rates).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def report(rows: list[dict[str, Any]], json_path: Path | None,
           reference_label: str = "reference") -> None:
    """Print ``rows`` aligned and, if ``json_path`` is given, write them there as JSON."""
    for row in rows:
        if row.get("ratio") is None and row["reference"]:
            row["ratio"] = round(row["ours"] / row["reference"], 3)
    width = max((len(row["name"]) for row in rows), default=0)
    for row in rows:
        ratio = f"{row['ratio']:.3f}" if isinstance(row.get("ratio"), float) else row.get("ratio")
        print(f"{row['name']:<{width}}  ours {row['ours']:>10.4g} {row['unit']:<7} "
              f"{reference_label} {row['reference']:>10.4g}  ratio {ratio}")
    if json_path is not None:
        json_path.write_text(json.dumps(rows, indent=2) + "\n")
