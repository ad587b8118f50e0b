"""Scheduled sends: notifications that wait in the database until their ``send_at``.

A send with a future ``send_at`` is stored ``scheduled`` and nothing is enqueued
(never a Celery ETA: Redis would redeliver a long-parked task after its
visibility timeout, and a cancelled send would still sit in the broker). The
scheduler's release task moves due ones to ``queued`` with one atomic UPDATE and
enqueues one fan-out task per released batch after the commit; from there they
take the ordinary path, including the sweep's re-enqueue if that enqueue is lost.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.errors import NotificationNotFound, ServiceError
from shared.models import Notification, NotificationStatus

# Notifications released per statement, and so per fan-out task: the API's largest request (a bulk of 500).
RELEASE_BATCH_SIZE = 500


class NotificationNotCancellable(ServiceError):
    status, code, message = 409, "notification_not_cancellable", "Notification is already being sent"


def release_due(session: Session, now: datetime, limit: int = RELEASE_BATCH_SIZE) -> list[uuid.UUID]:
    """Move up to ``limit`` scheduled notifications whose ``send_at`` has come to ``queued``; return their ids.

    One statement. Rows are picked with ``FOR UPDATE SKIP LOCKED`` and the
    UPDATE re-checks ``status = 'scheduled'``, so two schedulers running at once
    release each notification exactly once, and a concurrent cancel either wins
    (the release skips it) or finds it queued (409).
    """
    # A materialized CTE runs once: as an IN (subquery) PostgreSQL may rescan it per row, and a
    # rescan of LIMIT ... SKIP LOCKED can pick other rows, releasing more than ``limit``.
    due = (
        select(Notification.id)
        .where(Notification.status == NotificationStatus.SCHEDULED.value, Notification.send_at <= now)
        .order_by(Notification.send_at, Notification.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("due")
        .prefix_with("MATERIALIZED")
    )
    return list(
        session.scalars(
            update(Notification)
            .where(Notification.id == due.c.id, Notification.status == NotificationStatus.SCHEDULED.value)
            .values(status=NotificationStatus.QUEUED.value, updated_at=now)
            .returning(Notification.id)
            .execution_options(synchronize_session=False)
        )
    )


def cancel(session: Session, app_id: uuid.UUID, notification_id: uuid.UUID, now: datetime) -> str:
    """Cancel the app's scheduled notification; returns its status (``cancelled``).

    Cancelling twice answers the same. Once released (queued, sending or final)
    it can no longer be cancelled: :class:`NotificationNotCancellable`. Another
    app's notification is "not found". The daily quota it took is not given back.
    """
    cancelled = session.scalar(
        update(Notification)
        .where(Notification.id == notification_id, Notification.app_id == app_id,
               Notification.status == NotificationStatus.SCHEDULED.value)
        .values(status=NotificationStatus.CANCELLED.value, updated_at=now)
        .returning(Notification.id)
        .execution_options(synchronize_session=False)
    )
    if cancelled is not None:
        return NotificationStatus.CANCELLED.value
    status = session.scalar(
        select(Notification.status).where(Notification.id == notification_id, Notification.app_id == app_id)
    )
    if status is None:
        raise NotificationNotFound()
    if status == NotificationStatus.CANCELLED.value:
        return status
    raise NotificationNotCancellable()
