"""Step 1, fan-out: a batch of notifications (a whole bulk request) becomes delivery rows in chunks.

Deliveries are grouped per platform and app, across notifications and users; the
database creates them (one INSERT ... SELECT), so no device row travels to Python.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, literal, or_, select, update
from sqlalchemy.orm import Session

from shared.db_upsert import dialect_insert
from shared.models import Delivery, DeliveryStatus, Device, Notification, NotificationStatus
from shared.pipeline.values import Chunk, chunked
from shared.services import webhooks


def fan_out(
    session: Session,
    notification_ids: Sequence[uuid.UUID],
    now: datetime,
    supported_platforms: Collection[str],
    chunk_size: int,
) -> list[Chunk]:
    """Create the deliveries of a batch of notifications; return the pending ones in chunks.

    Three statements for the whole batch: lock the notifications (in id order,
    so concurrent fan-outs cannot deadlock), insert a delivery for every active
    device of their users (joined in the database), set every status. Safe to run twice (a
    redelivered task): a notification already fanned out is not fanned out
    again, and its still-pending deliveries are returned so their enqueue is
    retried.
    """
    ids = sorted(set(notification_ids))
    if not ids:
        return []
    notifications = session.execute(
        select(Notification.id, Notification.app_id, Notification.user_id, Notification.platform,
               Notification.expires_at, Notification.ttl, Notification.fanned_out_at)
        # A scheduled send is fanned out only once the scheduler has released it (never before
        # its send_at), a cancelled one never, whatever task names it.
        .where(Notification.id.in_(ids),
               Notification.status.not_in([NotificationStatus.SCHEDULED.value, NotificationStatus.CANCELLED.value]))
        .order_by(Notification.id)
        .with_for_update()
    ).all()
    fresh = [n for n in notifications if n.fanned_out_at is None]
    done_before = [n.id for n in notifications if n.fanned_out_at is not None]

    pending: list[tuple[str, uuid.UUID, uuid.UUID]] = []
    status_of: dict[uuid.UUID, str] = {
        n.id: NotificationStatus.NO_DEVICES.value if _live(n.expires_at, n.ttl, now) else NotificationStatus.EXPIRED.value
        for n in fresh
    }
    if fresh:
        app_of = {n.id: n.app_id for n in fresh}
        # Devices are joined and deliveries created inside the database: one statement,
        # and no device row travels to Python. A notification whose ttl ran out while it
        # waited in pushq's queue gets its deliveries too, closed "expired" with the reason.
        for delivery_id, notification_id, platform, status in session.execute(
            _insert_deliveries(session, [n.id for n in fresh], now, supported_platforms)
        ):
            if status == DeliveryStatus.PENDING.value:
                status_of[notification_id] = NotificationStatus.SENDING.value
                pending.append((platform, app_of[notification_id], delivery_id))
            elif status_of[notification_id] == NotificationStatus.NO_DEVICES.value:
                status_of[notification_id] = NotificationStatus.FAILED.value  # only unsupported platforms
    if fresh:
        by_status: dict[str, list[uuid.UUID]] = defaultdict(list)
        for notification_id, status in status_of.items():
            by_status[status].append(notification_id)
        session.execute(
            update(Notification)
            .where(Notification.id.in_(list(status_of)))
            .values(
                status=case(*((Notification.id.in_(group), status) for status, group in by_status.items())),
                fanned_out_at=now,
                updated_at=now,
            )
        )
        final_at_fan_out = [(n.id, n.app_id, n.user_id, status_of[n.id]) for n in fresh
                            if status_of[n.id] != NotificationStatus.SENDING.value]
        if final_at_fan_out:  # no device, expired in the queue, or only unsupported platforms
            subscribed = webhooks.subscribed_apps(session, {app for _, app, _, _ in final_at_fan_out})
            webhooks.emit_notifications_completed(
                session, [n for n in final_at_fan_out if n[1] in subscribed], now)
    if done_before:  # a redelivered fan-out: enqueue again what still waits
        pending.extend(
            session.execute(
                select(Delivery.platform, Notification.app_id, Delivery.id)
                .join(Notification, Notification.id == Delivery.notification_id)
                .where(Delivery.notification_id.in_(done_before), Delivery.status == DeliveryStatus.PENDING.value)
                .order_by(Delivery.created_at)
            ).all()
        )
    return chunked(pending, chunk_size)


EXPIRED_IN_QUEUE = "ttl ran out in pushq's queue, before fan-out"


def _live(expires_at: datetime, ttl: int, now: datetime) -> bool:
    """Whether a notification may still be pushed at ``now``.

    A ttl of 0 means what it means to the vendors: deliver now or drop it. Its
    ``expires_at`` is its acceptance, so it is pushed once, as soon as a worker
    reaches it, with a TTL of 0, and never retried (:func:`outcome_values`).
    """
    return ttl == 0 or expires_at > now


def _insert_deliveries(
    session: Session, notification_ids: list[uuid.UUID], now: datetime, supported_platforms: Collection[str]
) -> Any:
    """INSERT ... SELECT one delivery per (notification, active device of its user), RETURNING them.

    Each delivery keeps the device's generation: it is pushed only while the device
    is still what it was now (see :func:`claim_chunk`).
    """
    supported = Device.platform.in_(sorted(supported_platforms))
    # The SQL form of _live(), with the same ``now``.
    expired = and_(Notification.ttl > 0, Notification.expires_at <= literal(now, Notification.expires_at.type))
    if session.get_bind().dialect.name == "postgresql":
        new_id: Any = func.gen_random_uuid()
    else:  # SQLite keeps UUIDs as 32 hex characters
        new_id = func.lower(func.hex(func.randomblob(16)))
    rows = (
        select(
            new_id,
            Notification.id,
            Device.id,
            Device.platform,
            Device.generation,
            case((expired, DeliveryStatus.EXPIRED.value), (supported, DeliveryStatus.PENDING.value),
                 else_=DeliveryStatus.UNSUPPORTED.value),
            case((expired, EXPIRED_IN_QUEUE), (supported, None), else_="platform not supported"),
            literal(0),
            literal(now, Delivery.created_at.type),
            literal(now, Delivery.updated_at.type),
        )
        .join(
            Device,
            and_(
                Device.app_id == Notification.app_id,
                Device.user_id == Notification.user_id,
                Device.disabled_at.is_(None),
                or_(Notification.platform.is_(None), Notification.platform == Device.platform),
            ),
        )
        .where(Notification.id.in_(notification_ids))
        .order_by(Notification.id, Device.created_at, Device.id)
    )
    columns = ["id", "notification_id", "device_id", "platform", "device_generation", "status", "last_error",
               "attempts", "created_at", "updated_at"]
    return (
        dialect_insert(session, Delivery)
        .from_select(columns, rows)
        .on_conflict_do_nothing(index_elements=["notification_id", "device_id"])
        .returning(Delivery.id, Delivery.notification_id, Delivery.platform, Delivery.status)
    )
