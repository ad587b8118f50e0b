"""Reading notifications and their delivery outcomes."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from shared.errors import InvalidPageCursor, NotificationNotFound
from shared.models import Notification
from shared.pagination import InvalidCursor, Page, newest_first_page


def get_notification(session: Session, app_id: uuid.UUID, notification_id: uuid.UUID) -> Notification:
    """The app's notification with its deliveries; another app's is "not found"."""
    notification = session.scalars(
        select(Notification)
        # A broadcast's message (no user) is read through its broadcast.
        .where(Notification.id == notification_id, Notification.app_id == app_id, Notification.user_id.is_not(None))
        .options(selectinload(Notification.deliveries))
    ).one_or_none()
    if notification is None:
        raise NotificationNotFound()
    return notification


def list_notifications(
    session: Session,
    app_id: uuid.UUID,
    *,
    limit: int,
    cursor: str | None = None,
    user_id: uuid.UUID | None = None,
    status: str | None = None,
) -> Page[Notification]:
    """The app's notifications, newest first, optionally for one user or in one status."""
    query = select(Notification).where(Notification.app_id == app_id, Notification.user_id.is_not(None))
    if user_id is not None:
        query = query.where(Notification.user_id == user_id)
    if status is not None:
        query = query.where(Notification.status == status)
    try:
        return newest_first_page(session, query, Notification.created_at, Notification.id, limit, cursor)
    except InvalidCursor:
        raise InvalidPageCursor() from None
