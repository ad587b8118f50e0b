"""The delivery pipeline's rules: fan-out, claiming, recording outcomes, status.

Plain functions over a session so they can be tested without Celery. The worker
tasks call them in this order, each step in its own transaction:

1. :func:`fan_out` turns a notification into one delivery row per active device.
2. :func:`claim_deliveries` atomically marks deliveries ``sending`` (with a lease)
   and commits *before* anything is pushed, so a redelivered task finds them
   claimed and never pushes twice.
3. the vendor adapter sends; :func:`record_outcomes` writes what happened and
   refreshes each notification's aggregate status.
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Collection, Iterable, Sequence

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from shared.db_upsert import insert_ignore
from shared.models import (
    OPEN_DELIVERY_STATUSES,
    Delivery,
    DeliveryStatus,
    Device,
    Notification,
    NotificationStatus,
)
from shared.outcomes import Outcome, OutcomeKind

OPEN = [status.value for status in OPEN_DELIVERY_STATUSES]


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_seconds: float = 2.0
    max_seconds: float = 600.0

    def delay(self, attempts: int, retry_after: float | None, rng: random.Random | None = None) -> float:
        """Exponential backoff with full jitter, capped; ``retry_after`` is a floor."""
        ceiling = min(self.max_seconds, self.base_seconds * (2 ** max(attempts - 1, 0)))
        jittered = (rng or random).uniform(0, ceiling)
        return max(jittered, retry_after or 0.0)


def fan_out(
    session: Session, notification_id: uuid.UUID, now: datetime, supported_platforms: Collection[str]
) -> dict[str, list[uuid.UUID]]:
    """Create the notification's deliveries; return the pending ones per platform.

    Safe to run twice (a redelivered task): the notification row is locked, the
    insert skips existing (notification, device) pairs, and a second run returns
    the deliveries still pending so their enqueue is retried.
    """
    notification = session.get(Notification, notification_id, with_for_update=True)
    if notification is None:
        return {}
    if notification.fanned_out_at is None:
        if notification.expires_at <= now:
            notification.status = NotificationStatus.EXPIRED.value
            notification.fanned_out_at = now
            return {}
        query = select(Device.id, Device.platform).where(
            Device.app_id == notification.app_id,
            Device.user_id == notification.user_id,
            Device.disabled_at.is_(None),
        )
        if notification.platform is not None:
            query = query.where(Device.platform == notification.platform)
        devices = session.execute(query).all()
        notification.fanned_out_at = now
        if not devices:
            notification.status = NotificationStatus.NO_DEVICES.value
            return {}
        rows = [
            {
                "id": uuid.uuid4(),
                "notification_id": notification.id,
                "device_id": device_id,
                "platform": platform,
                "status": (
                    DeliveryStatus.PENDING.value
                    if platform in supported_platforms
                    else DeliveryStatus.UNSUPPORTED.value
                ),
                "last_error": None if platform in supported_platforms else f"platform {platform} not supported yet",
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
            }
            for device_id, platform in devices
        ]
        session.execute(insert_ignore(session, Delivery, rows, ["notification_id", "device_id"]))
        notification.status = NotificationStatus.SENDING.value
        refresh_statuses(session, [notification.id], now)
    return pending_by_platform(session, [notification.id])


def pending_by_platform(session: Session, notification_ids: Sequence[uuid.UUID]) -> dict[str, list[uuid.UUID]]:
    rows = session.execute(
        select(Delivery.platform, Delivery.id)
        .where(Delivery.notification_id.in_(notification_ids), Delivery.status == DeliveryStatus.PENDING.value)
        .order_by(Delivery.created_at)
    ).all()
    groups: dict[str, list[uuid.UUID]] = defaultdict(list)
    for platform, delivery_id in rows:
        groups[platform].append(delivery_id)
    return dict(groups)


@dataclass(frozen=True)
class ClaimedDelivery:
    """What an adapter needs to push one delivery; plain data, detached from the session."""

    delivery_id: uuid.UUID
    device_id: uuid.UUID
    token_hash: str
    token: str
    platform: str
    attempts: int
    notification_id: uuid.UUID
    app_id: uuid.UUID
    title: str
    body: str
    data: dict[str, Any]
    expires_at: datetime
    priority: str = "normal"
    collapse_key: str | None = None
    badge: int | None = None
    sound: str | None = None
    url: str | None = None

    def remaining_ttl(self, now: datetime) -> int:
        return max(int((self.expires_at - now).total_seconds()), 0)


def claim_deliveries(
    session: Session, delivery_ids: Sequence[uuid.UUID], now: datetime, lease_seconds: int
) -> list[ClaimedDelivery]:
    """Atomically claim the open deliveries among ``delivery_ids``.

    Claimable: pending, retrying, or sending with an expired lease (its worker
    died). One UPDATE ... RETURNING decides, so of two workers holding the same
    ids only one gets each delivery. Deliveries whose notification has expired
    are closed as ``expired`` instead of being claimed.
    """
    if not delivery_ids:
        return []
    lease_cutoff = now - timedelta(seconds=lease_seconds)
    claimable = and_(
        Delivery.id.in_(delivery_ids),
        or_(
            Delivery.status.in_([DeliveryStatus.PENDING.value, DeliveryStatus.RETRYING.value]),
            and_(Delivery.status == DeliveryStatus.SENDING.value, Delivery.claimed_at < lease_cutoff),
        ),
    )
    expired_ids = list(
        session.scalars(
            update(Delivery)
            .where(
                claimable,
                # Correlated: probes each claimed delivery's notification by primary key.
                exists().where(Notification.id == Delivery.notification_id, Notification.expires_at <= now),
            )
            .values(status=DeliveryStatus.EXPIRED.value, last_error="ttl expired before delivery", updated_at=now)
            .returning(Delivery.notification_id)
        )
    )
    claimed_ids = list(
        session.scalars(
            update(Delivery)
            .where(claimable)
            .values(
                status=DeliveryStatus.SENDING.value,
                claimed_at=now,
                attempts=Delivery.attempts + 1,
                updated_at=now,
            )
            .returning(Delivery.id)
        )
    )
    if expired_ids:
        refresh_statuses(session, expired_ids, now)
    if not claimed_ids:
        return []
    rows = session.execute(
        select(
            Delivery.id,
            Delivery.device_id,
            Device.token_hash,
            Device.token,
            Delivery.platform,
            Delivery.attempts,
            Notification.id,
            Notification.app_id,
            Notification.title,
            Notification.body,
            Notification.data,
            Notification.expires_at,
            Notification.priority,
            Notification.collapse_key,
            Notification.badge,
            Notification.sound,
            Notification.url,
        )
        .join(Device, Device.id == Delivery.device_id)
        .join(Notification, Notification.id == Delivery.notification_id)
        .where(Delivery.id.in_(claimed_ids))
    ).all()
    return [ClaimedDelivery(*row) for row in rows]


def record_outcomes(
    session: Session,
    results: Iterable[tuple[ClaimedDelivery, Outcome]],
    now: datetime,
    policy: RetryPolicy,
) -> None:
    """Write each attempt's outcome, disable dead devices, refresh notification statuses."""
    touched: set[uuid.UUID] = set()
    truncated: set[uuid.UUID] = set()
    for claimed, outcome in results:
        touched.add(claimed.notification_id)
        if outcome.truncated:
            truncated.add(claimed.notification_id)
        values: dict[str, Any] = {"updated_at": now, "claimed_at": None, "next_attempt_at": None}
        if outcome.kind is OutcomeKind.SENT:
            values.update(
                status=DeliveryStatus.SENT.value,
                vendor_message_id=outcome.vendor_message_id,
                sent_at=now,
                last_error=None,
            )
        elif outcome.kind is OutcomeKind.DEAD_TOKEN:
            values.update(status=DeliveryStatus.DEAD_TOKEN.value, last_error=outcome.reason)
            disable_device(session, claimed.device_id, claimed.token_hash, outcome.reason or "dead token", now)
        elif outcome.kind is OutcomeKind.REJECTED:
            values.update(status=DeliveryStatus.REJECTED.value, last_error=outcome.reason)
        elif claimed.attempts >= policy.max_attempts:
            values.update(
                status=DeliveryStatus.FAILED.value,
                last_error=f"gave up after {claimed.attempts} attempts: {outcome.reason}",
            )
        else:
            due = now + timedelta(seconds=policy.delay(claimed.attempts, outcome.retry_after))
            if due >= claimed.expires_at:
                values.update(status=DeliveryStatus.EXPIRED.value, last_error=f"ttl expires before retry: {outcome.reason}")
            else:
                values.update(status=DeliveryStatus.RETRYING.value, last_error=outcome.reason, next_attempt_at=due)
        session.execute(
            update(Delivery)
            .where(Delivery.id == claimed.delivery_id, Delivery.status == DeliveryStatus.SENDING.value)
            .values(**values)
        )
    if truncated:
        session.execute(update(Notification).where(Notification.id.in_(truncated)).values(truncated=True))
    refresh_statuses(session, sorted(touched), now)


def disable_device(session: Session, device_id: uuid.UUID, token_hash: str, reason: str, now: datetime) -> bool:
    """Disable a device whose token the vendor declared dead.

    Conditional on the token still being the one that failed: if the device was
    re-registered meanwhile with a new token, the fresh registration stands.
    """
    result = session.execute(
        update(Device)
        .where(Device.id == device_id, Device.token_hash == token_hash, Device.disabled_at.is_(None))
        .values(disabled_at=now, disabled_reason=reason)
    )
    return bool(result.rowcount)


def aggregate_status(counts: dict[str, int]) -> str:
    """A notification's status from its deliveries' status counts."""
    total = sum(counts.values())
    if total == 0:
        return NotificationStatus.NO_DEVICES.value
    if any(counts.get(status, 0) for status in OPEN):
        return NotificationStatus.SENDING.value
    sent = counts.get(DeliveryStatus.SENT.value, 0)
    if sent == total:
        return NotificationStatus.DELIVERED.value
    if sent:
        return NotificationStatus.PARTIALLY_DELIVERED.value
    if counts.get(DeliveryStatus.EXPIRED.value, 0) == total:
        return NotificationStatus.EXPIRED.value
    return NotificationStatus.FAILED.value


def refresh_statuses(session: Session, notification_ids: Sequence[uuid.UUID], now: datetime) -> None:
    """Recompute notification statuses from their deliveries.

    The notification rows are locked (in id order, so concurrent workers cannot
    deadlock) before counting, so the count sees every committed outcome of a
    concurrent worker and the last writer always writes the final status.
    """
    ids = sorted(set(notification_ids))
    if not ids:
        return
    session.execute(select(Notification.id).where(Notification.id.in_(ids)).order_by(Notification.id).with_for_update())
    counts: dict[uuid.UUID, dict[str, int]] = {notification_id: {} for notification_id in ids}
    for notification_id, status, count in session.execute(
        select(Delivery.notification_id, Delivery.status, func.count())
        .where(Delivery.notification_id.in_(ids))
        .group_by(Delivery.notification_id, Delivery.status)
    ):
        counts[notification_id][status] = count
    for notification_id, by_status in counts.items():
        if not by_status:
            continue  # not fanned out yet, or no devices: fan_out sets those
        session.execute(
            update(Notification)
            .where(Notification.id == notification_id)
            .values(status=aggregate_status(by_status), updated_at=now)
        )


def stale_queued_notifications(session: Session, now: datetime, older_than_seconds: int, limit: int = 1000) -> list[uuid.UUID]:
    """Notifications committed but never fanned out (their enqueue was lost)."""
    cutoff = now - timedelta(seconds=older_than_seconds)
    return list(
        session.scalars(
            select(Notification.id)
            .where(
                Notification.status == NotificationStatus.QUEUED.value,
                Notification.fanned_out_at.is_(None),
                Notification.created_at < cutoff,
            )
            .order_by(Notification.created_at)
            .limit(limit)
        )
    )


def release_due_deliveries(
    session: Session, now: datetime, stale_pending_seconds: int, lease_seconds: int
) -> dict[str, list[uuid.UUID]]:
    """Make due work pending again and return it per platform, to be enqueued after commit.

    Due: retries whose time has come, pending deliveries whose enqueue was lost
    (untouched for ``stale_pending_seconds``), and claims whose lease ran out
    (their worker died mid-send). Touching ``updated_at`` keeps the next sweep
    from enqueueing the same delivery again while it waits in the queue.
    """
    # One statement per kind, each served by the (status, next_attempt_at) index's status prefix.
    due_kinds = (
        and_(Delivery.status == DeliveryStatus.RETRYING.value, Delivery.next_attempt_at <= now),
        and_(
            Delivery.status == DeliveryStatus.PENDING.value,
            Delivery.updated_at < now - timedelta(seconds=stale_pending_seconds),
        ),
        and_(
            Delivery.status == DeliveryStatus.SENDING.value,
            Delivery.claimed_at < now - timedelta(seconds=lease_seconds),
        ),
    )
    rows = [
        row
        for due in due_kinds
        for row in session.execute(
            update(Delivery)
            .where(due)
            .values(status=DeliveryStatus.PENDING.value, next_attempt_at=None, claimed_at=None, updated_at=now)
            .returning(Delivery.platform, Delivery.id)
        )
    ]
    groups: dict[str, list[uuid.UUID]] = defaultdict(list)
    for platform, delivery_id in rows:
        groups[platform].append(delivery_id)
    return dict(groups)
