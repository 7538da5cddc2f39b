"""Log output for ``serve`` and the WSGI entry: text lines, or one JSON object per line.

Pairing events (:meth:`stunturn_server.observe.Observer.pairing`) carry ``event`` and
``fields`` extras; the JSON formatter puts them at the top level, so a log pipeline
reads ``{"ts", "level", "logger", "event": "pair-matched", "key": <8 hex label>, ...}``
without parsing the message. Access keys never reach a log line.
"""

from __future__ import annotations

import json
import logging
import time

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """``{"ts": ISO-8601 UTC, "level", "logger", "message", "event"?, **fields}`` per record."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        entry = {"ts": ts, "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        event = getattr(record, "event", None)
        if event:
            entry["event"] = event
            for name, value in (getattr(record, "fields", None) or {}).items():
                entry.setdefault(name, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


def configure_logging(level: str = "INFO", log_format: str = "text") -> None:
    """Send the root logger's records to stderr as text lines or JSON lines (replaces handlers)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
