"""Operators' reads and repairs across apps (the admin CLI): no caller app scopes them.

The API's own reads (``shared.services.notifications``, ``devices``) are scoped
to the calling app; these are for whoever runs ``pushq`` against the database.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session, selectinload

from shared.errors import NotificationNotFound, ServiceError
from shared.models import Delivery, DeliveryStatus, Device, Notification
from shared.pipeline.status import refresh_statuses
from shared.pipeline.values import Chunk, chunked

# Deliveries a re-drive sends again: attempts used up, or out of time before the TTL ended
# (a retry that would have come after it). Rejected and dead-token ones are the vendor's final word.
REDRIVABLE = (DeliveryStatus.FAILED.value, DeliveryStatus.EXPIRED.value)


class NotificationExpired(ServiceError):
    status, code, message = 409, "notification_expired", "Notification has expired; nothing can be sent again"


def notification_with_deliveries(session: Session, notification_id: uuid.UUID) -> Notification:
    """Any app's notification with its deliveries."""
    notification = session.scalars(
        select(Notification).where(Notification.id == notification_id).options(selectinload(Notification.deliveries))
    ).one_or_none()
    if notification is None:
        raise NotificationNotFound()
    return notification


def redrive(session: Session, notification_id: uuid.UUID, now: datetime, chunk_size: int) -> list[Chunk]:
    """Make the notification's failed and expired deliveries pending again; return them in chunks.

    The caller enqueues the chunks after the commit. Refused once the
    notification's TTL has run out (the vendors would drop it anyway). The
    deliveries start over with fresh attempts; one whose device was disabled
    meanwhile is closed by its claim, never pushed.
    """
    notification = session.execute(
        select(Notification.id, Notification.app_id, Notification.expires_at)
        .where(Notification.id == notification_id)
        .with_for_update()
    ).one_or_none()
    if notification is None:
        raise NotificationNotFound()
    if notification.expires_at <= now:
        raise NotificationExpired()
    rows = session.execute(
        update(Delivery)
        .where(Delivery.notification_id == notification_id, Delivery.status.in_(REDRIVABLE))
        .values(status=DeliveryStatus.PENDING.value, attempts=0, next_attempt_at=None, claimed_at=None,
                claim_token=None, updated_at=now)
        .returning(Delivery.platform, Delivery.id)
        .execution_options(synchronize_session=False)
    ).all()
    if rows:
        refresh_statuses(session, [notification_id], now)
    return chunked(((platform, notification.app_id, delivery_id) for platform, delivery_id in rows), chunk_size)


def user_devices(session: Session, user_id: uuid.UUID, app_id: uuid.UUID | None = None) -> list[Device]:
    """Every device of a user (in every app, or in ``app_id``), newest first, disabled ones included."""
    query = select(Device).where(Device.user_id == user_id)
    if app_id is not None:
        query = query.where(Device.app_id == app_id)
    return list(session.scalars(query.order_by(Device.created_at.desc(), Device.id)))
