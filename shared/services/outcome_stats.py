"""Figures for the status page and metrics about what happened after a push: webhooks and receipts.

One grouped query per figure over every app (like :mod:`shared.services.stats`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.models import Delivery, DeliveryStatus, Notification, Platform, WebhookEndpoint, WebhookEvent

DAY = timedelta(days=1)


@dataclass(frozen=True)
class WebhookStatus:
    """An app's webhook endpoint: its URL's host, events per status, the last attempt and error."""

    url: str
    pending: int
    delivered: int
    failed: int
    last_attempt_at: datetime | None
    last_success_at: datetime | None
    last_error: str | None


@dataclass(frozen=True)
class ReceiptRates:
    """Web Push deliveries sent for notifications of the last day, and how many were displayed and clicked."""

    sent: int = 0
    displayed: int = 0
    clicked: int = 0

    @property
    def display_rate(self) -> float | None:
        return self.displayed / self.sent if self.sent else None

    @property
    def click_rate(self) -> float | None:
        return self.clicked / self.sent if self.sent else None


def webhook_status(session: Session) -> dict[uuid.UUID, WebhookStatus]:
    """Per app with an endpoint: two queries for all apps."""
    counts: dict[uuid.UUID, dict[str, int]] = {}
    for app_id, status, count in session.execute(
        select(WebhookEvent.app_id, WebhookEvent.status, func.count()).group_by(WebhookEvent.app_id, WebhookEvent.status)
    ):
        counts.setdefault(app_id, {})[status] = int(count)
    return {
        endpoint.app_id: WebhookStatus(
            url=endpoint.url, pending=counts.get(endpoint.app_id, {}).get("pending", 0),
            delivered=counts.get(endpoint.app_id, {}).get("delivered", 0),
            failed=counts.get(endpoint.app_id, {}).get("failed", 0),
            last_attempt_at=endpoint.last_attempt_at, last_success_at=endpoint.last_success_at,
            last_error=endpoint.last_error,
        )
        for endpoint in session.scalars(select(WebhookEndpoint))
    }


def receipt_rates(session: Session, now: datetime) -> dict[uuid.UUID, ReceiptRates]:
    """Per app: Web Push deliveries sent for notifications created in the last day, displayed, clicked."""
    rows = session.execute(
        select(Notification.app_id, func.count(), func.count(Delivery.displayed_at), func.count(Delivery.clicked_at))
        .join(Notification, Notification.id == Delivery.notification_id)
        .where(Notification.created_at >= now - DAY, Delivery.platform == Platform.WEB.value,
               Delivery.status == DeliveryStatus.SENT.value)
        .group_by(Notification.app_id)
    )
    return {app_id: ReceiptRates(int(sent), int(displayed), int(clicked)) for app_id, sent, displayed, clicked in rows}
