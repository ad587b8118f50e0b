"""Receipt gauges per app: Web Push deliveries sent in the last day, and the share displayed and clicked.

Read from the database (one grouped query, :func:`shared.services.outcome_stats.receipt_rates`) at most
once per PUSHQ_METRICS_REFRESH_SECONDS per process, like the queue gauges: scrapes cannot become load.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from shared.clock import utcnow
from shared.db import session_scope
from shared.services.outcome_stats import ReceiptRates, receipt_rates

log = logging.getLogger(__name__)


class ReceiptCollector:
    def __init__(self, session_factory: sessionmaker[Session], refresh_seconds: float = 15.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.session_factory = session_factory
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._reading: dict[uuid.UUID, ReceiptRates] | None = None
        self._read_at = 0.0

    def reading(self) -> dict[uuid.UUID, ReceiptRates]:
        with self._lock:
            if self._reading is None or self.clock() - self._read_at >= self.refresh_seconds:
                try:
                    with session_scope(self.session_factory) as session:
                        self._reading = receipt_rates(session, utcnow())
                except Exception as exc:
                    log.warning("metrics: cannot read receipt rates: %s", type(exc).__name__)
                    self._reading = {}
                self._read_at = self.clock()
            return self._reading

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        sent = GaugeMetricFamily("pushq_receipt_webpush_sent", "Web Push deliveries sent for notifications of the "
                                 "last day, by app (the base of the display and click rates).", labels=["app_id"])
        displayed = GaugeMetricFamily("pushq_receipt_display_rate", "Share of those that pushq's service worker "
                                      "reported displayed, by app.", labels=["app_id"])
        clicked = GaugeMetricFamily("pushq_receipt_click_rate", "Share of those whose notification was clicked, "
                                    "by app.", labels=["app_id"])
        for app_id, rates in self.reading().items():
            sent.add_metric([str(app_id)], rates.sent)
            displayed.add_metric([str(app_id)], rates.display_rate or 0.0)
            clicked.add_metric([str(app_id)], rates.click_rate or 0.0)
        yield sent
        yield displayed
        yield clicked
