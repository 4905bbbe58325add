"""Structured logs: one JSON object a line, patient identifiers only when configured."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from dicomnode.config import LoggingConfig
from dicomnode.logs import configure_logging, log_event


def _logged(tmp_path: Path, include_phi: bool) -> dict[str, object]:
    log_file = tmp_path / f"phi-{include_phi}.log"
    configure_logging(LoggingConfig(file=log_file, include_phi=include_phi))
    logger = logging.getLogger("dicomnode.test")
    log_event(logger, "store.accepted", patient_name="Doe^Jane", patient_id="12345",
              sop_instance_uid="1.2.3")
    for handler in logging.getLogger("dicomnode").handlers:
        handler.flush()
    (line,) = log_file.read_text().splitlines()
    return dict(json.loads(line))


def test_patient_identifiers_are_dropped_unless_configured(tmp_path: Path) -> None:
    try:
        entry = _logged(tmp_path, include_phi=False)
        assert entry["event"] == "store.accepted" and entry["sop_instance_uid"] == "1.2.3"
        assert "patient_name" not in entry and "patient_id" not in entry
        assert _logged(tmp_path, include_phi=True)["patient_name"] == "Doe^Jane"
    finally:
        for name in ("dicomnode", "pynetdicom", "apscheduler"):
            logger = logging.getLogger(name)
            for handler in logger.handlers:
                handler.close()
            logger.handlers, logger.propagate = [], True
