"""Log format shared by every process: one line per event, timestamps in UTC."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from shared.observability.context import current_request_ids

LOG_FORMATS = ("text", "json")


class TextFormatter(logging.Formatter):
    """One line per event; ``request_ids=…`` appended when the event concerns requests (docs/operations.md)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
        self.converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = current_request_ids()
        if not ids:
            return line
        first, newline, rest = line.partition("\n")  # keep a traceback below the line it belongs to
        return f"{first} request_ids={','.join(ids)}{newline}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers: ts, level, logger, process, pid, message,
    request_ids (when any apply) and exc_info (a formatted traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "pid": record.process,
            "message": record.getMessage(),
        }
        ids = current_request_ids()
        if ids:
            event["request_ids"] = list(ids)
        if record.exc_info:
            event["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False, default=str)


def configure_logging(level: str = "INFO", log_format: str = "text") -> None:
    """Log to stderr in ``log_format`` (PUSHQ_LOG_FORMAT: ``text`` or ``json``) at ``level``."""
    formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # These log request paths and header values (device tokens, provider JWTs) at DEBUG:
    # keep them at INFO or quieter whatever the service's level.
    floor = max(logging.getLevelName(level.upper()), logging.INFO)
    for name in ("hpack", "h2", "urllib3", "httpcore", "httpx"):
        logging.getLogger(name).setLevel(floor)
