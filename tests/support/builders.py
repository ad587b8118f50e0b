"""Rows tests put straight into the database (bypassing the API) to set up a past state."""

from __future__ import annotations

import uuid
from datetime import timedelta

from shared.clock import utcnow
from shared.models import Delivery, Device, Notification


def add_device(session, app_id, user_id, *, last_seen_days_ago: float = 0) -> Device:
    device = Device(app_id=app_id, user_id=user_id, platform="web", token=f"token-{uuid.uuid4()}",
                    token_hash=uuid.uuid4().hex, last_seen_at=utcnow() - timedelta(days=last_seen_days_ago))
    session.add(device)
    session.flush()
    return device


def add_notification(session, app_id, user_id, status: str, age_days: float, devices=()) -> uuid.UUID:
    created = utcnow() - timedelta(days=age_days)
    notification = Notification(app_id=app_id, user_id=user_id, title="t", body="b", data={}, ttl=60,
                                expires_at=created + timedelta(seconds=60), status=status, created_at=created,
                                updated_at=created)
    session.add(notification)
    session.flush()
    for device in devices:
        session.add(Delivery(notification_id=notification.id, device_id=device.id, platform="web", status="sent"))
    session.flush()
    return notification.id
