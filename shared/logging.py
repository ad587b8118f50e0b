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
    # These log request paths and header values (device tokens, provider JWTs) at DEBUG:
    # keep them at INFO or quieter whatever the service's level.
    floor = max(logging.getLevelName(level.upper()), logging.INFO)
    for name in ("hpack", "h2", "urllib3", "httpcore", "httpx"):
        logging.getLogger(name).setLevel(floor)
