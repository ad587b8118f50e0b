"""Step 4, status refresh: a notification's status from its deliveries', two statements for any number."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import case, exists, func, select, update
from sqlalchemy.orm import Session, aliased

from shared.broadcast_status import complete_broadcasts
from shared.models import Delivery, DeliveryStatus, Notification, NotificationStatus
from shared.services import webhooks
from shared.statuses import OPEN


def _status_from_deliveries() -> Any:
    """The SQL form of :func:`shared.statuses.aggregate_status`, correlated to the notification being updated."""
    d = aliased(Delivery)

    def count_of(*statuses: str) -> Any:
        return func.sum(case((d.status.in_(statuses), 1), else_=0))

    total, sent = func.count(), count_of(DeliveryStatus.SENT.value)
    return (
        select(
            case(
                (count_of(*OPEN) > 0, NotificationStatus.SENDING.value),
                (sent == total, NotificationStatus.DELIVERED.value),
                (sent > 0, NotificationStatus.PARTIALLY_DELIVERED.value),
                (count_of(DeliveryStatus.EXPIRED.value) == total, NotificationStatus.EXPIRED.value),
                else_=NotificationStatus.FAILED.value,
            )
        )
        .where(d.notification_id == Notification.id)
        .scalar_subquery()
    )


def refresh_statuses(
    session: Session, notification_ids: Collection[uuid.UUID], now: datetime, *, truncated: Collection[uuid.UUID] = ()
) -> None:
    """Recompute notification statuses from their deliveries: two statements for any number.

    The notification rows are locked first (in id order, so concurrent workers
    cannot deadlock); the UPDATE that follows runs on a snapshot taken after the
    lock, so it counts every committed outcome of a concurrent worker and the
    last writer always writes the final status. Notifications without
    deliveries keep the status fan-out gave them. Broadcasts among them whose
    last delivery just closed complete (:mod:`shared.broadcast_status`).
    """
    ids = sorted(set(notification_ids))
    if not ids:
        return
    locked = session.execute(
        select(Notification.id, Notification.status, Notification.user_id).where(Notification.id.in_(ids))
        .order_by(Notification.id).with_for_update()
    ).all()
    before: dict[uuid.UUID, str] = {notification_id: status for notification_id, status, _ in locked}
    # A broadcast's message (no user) has no status of its own to recount per chunk (its deliveries
    # may be 100,000): it is checked for completion instead, under the same lock.
    broadcasts = [notification_id for notification_id, _, user_id in locked if user_id is None]
    values: dict[str, Any] = {"status": _status_from_deliveries(), "updated_at": now}
    if truncated:
        values["truncated"] = case((Notification.id.in_(sorted(truncated)), True), else_=Notification.truncated)
    after = session.execute(
        update(Notification)
        .where(Notification.id.in_(ids), Notification.user_id.is_not(None),
               exists().where(Delivery.notification_id == Notification.id))
        .values(**values)
        .returning(Notification.id, Notification.app_id, Notification.user_id, Notification.status,
                   webhooks.has_webhook(Notification.app_id))
        .execution_options(synchronize_session=False)
    ).all()
    # Final now and not before: notification.completed, once, for apps with a webhook (no statement otherwise).
    completed = [(row[0], row[1], row[2], row[3]) for row in after
                 if row[4] and row[3] in FINAL_STATUSES and before.get(row[0]) not in FINAL_STATUSES]
    webhooks.emit_notifications_completed(session, completed, now)
    complete_broadcasts(session, broadcasts, now)


FINAL_STATUSES = frozenset(status.value for status in NotificationStatus) - {
    NotificationStatus.QUEUED.value, NotificationStatus.SENDING.value, NotificationStatus.SCHEDULED.value,
    NotificationStatus.CANCELLED.value,
}
