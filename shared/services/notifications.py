"""Reading notifications and their delivery outcomes."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from shared.errors import NotificationNotFound
from shared.models import Notification


def get_notification(session: Session, app_id: uuid.UUID, notification_id: uuid.UUID) -> Notification:
    """The app's notification with its deliveries; another app's is "not found"."""
    notification = session.scalars(
        select(Notification)
        .where(Notification.id == notification_id, Notification.app_id == app_id)
        .options(selectinload(Notification.deliveries))
    ).one_or_none()
    if notification is None:
        raise NotificationNotFound()
    return notification
