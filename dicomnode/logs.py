"""Structured logs: one JSON object a line, one line per event.

Code logs with :func:`log_event` (an event name plus fields). Patient names and IDs are only
written when ``logging.include_phi`` is true: fields named in :data:`PHI_FIELDS` are dropped by
the handler's filter otherwise, so a call site cannot leak them by accident.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from dicomnode.config import LoggingConfig

#: Field names holding protected health information.
PHI_FIELDS = frozenset({"patient_name", "patient_id", "patient_birth_date", "accession_number"})

_FIELDS_ATTR = "dicomnode_fields"


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO,
              **fields: Any) -> None:
    """Log ``event`` (a short dotted name, e.g. ``store.accepted``) with structured fields."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={_FIELDS_ATTR: fields})


class _PhiFilter(logging.Filter):
    def __init__(self, include_phi: bool):
        super().__init__()
        self.include_phi = include_phi

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record, _FIELDS_ATTR, None)
        if fields and not self.include_phi:
            setattr(record, _FIELDS_ATTR,
                    {k: v for k, v in fields.items() if k not in PHI_FIELDS})
        return True


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "event", ...fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        entry.update(getattr(record, _FIELDS_ATTR, None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time level event key=value ...`` for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, _FIELDS_ATTR, None) or {}
        text = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{self.formatTime(record)} {record.levelname} {record.getMessage()} {text}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line.rstrip()


def configure_logging(config: LoggingConfig) -> None:
    """Send the ``dicomnode`` and ``pynetdicom`` loggers to stderr (and ``config.file``)."""
    formatter: logging.Formatter = (JsonFormatter() if config.format == "json"
                                    else TextFormatter())
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if config.file is not None:
        config.file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(config.file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(_PhiFilter(config.include_phi))
    for name, level in (("dicomnode", config.level), ("pynetdicom", "WARNING"),
                        ("apscheduler", "WARNING")):
        logger = logging.getLogger(name)
        logger.handlers = list(handlers)
        logger.setLevel(level)
        logger.propagate = False
