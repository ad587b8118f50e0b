"""Log format shared by every process: one line per event, timestamps in UTC."""

from __future__ import annotations

import logging
import time


def configure_logging(level: str = "INFO") -> None:
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
    formatter.converter = time.gmtime
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
