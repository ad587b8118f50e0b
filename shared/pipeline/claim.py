"""Step 2, claim: one statement claims a chunk and returns all an adapter needs (message, token).

The claim commits *before* anything is pushed, so a redelivered task finds the
deliveries claimed and never pushes them twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, case, func, literal, or_, select, update
from sqlalchemy.orm import Session

from shared.message import Message
from shared.models import App, Delivery, DeliveryStatus, Device, Notification
from shared.pipeline.status import refresh_statuses
from shared.pipeline.values import Claim, ClaimedDelivery

_MESSAGE_COLUMNS = [getattr(Notification, name) for name in Message.columns()]


DEVICE_OTHER_OWNER = "device registered by another user since fan-out: not pushed"


DEVICE_RE_REGISTERED = "device registered again since fan-out (re-enabled or moved between users): not pushed"


def claim_chunk(
    session: Session, delivery_ids: Sequence[uuid.UUID], now: datetime, lease_seconds: int, max_attempts: int
) -> Claim:
    """Atomically claim the open deliveries among ``delivery_ids`` with one statement.

    Claimable: pending; retrying whose ``next_attempt_at`` is due; sending whose
    lease ran out (its worker died). In the same UPDATE, deliveries that must not
    be pushed are closed instead: the notification expired (a ttl-0 one only once
    it was attempted), the device was disabled or unregistered after fan-out, the
    device is no longer what it was at fan-out (it now belongs to another user, or
    was registered again after being disabled: a message goes only to the person
    it was meant for), or the attempts are used up. Of two workers holding the
    same ids only one gets each delivery. On PostgreSQL the UPDATE also returns
    the message, token and credentials version; elsewhere (SQLite, for ``make
    run``) one SELECT follows.
    """
    token = uuid.uuid4()
    if not delivery_ids:
        return Claim(token, [])
    lease_cutoff = now - timedelta(seconds=lease_seconds)
    expired = and_(Notification.expires_at <= now, or_(Notification.ttl > 0, Delivery.attempts > 0))
    device_gone = Device.disabled_at.is_not(None)
    # A broadcast's delivery names its recipient; any other delivery is for its notification's user.
    other_owner = Device.user_id != func.coalesce(Delivery.user_id, Notification.user_id)
    re_registered = Delivery.device_generation != Device.generation
    exhausted = Delivery.attempts >= max_attempts
    pushable = and_(~expired, ~device_gone, ~other_owner, ~re_registered, ~exhausted)
    statement = (
        update(Delivery)
        .where(
            # One typed array parameter, not one coerced bind per id.
            Delivery.id.in_(bindparam("ids", list(delivery_ids), expanding=True, type_=Delivery.id.type)),
            or_(
                Delivery.status == DeliveryStatus.PENDING.value,
                and_(
                    Delivery.status == DeliveryStatus.RETRYING.value,
                    or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
                ),
                and_(Delivery.status == DeliveryStatus.SENDING.value, Delivery.claimed_at < lease_cutoff),
            ),
            Notification.id == Delivery.notification_id,
            Device.id == Delivery.device_id,
        )
        .values(
            status=case(
                (expired, DeliveryStatus.EXPIRED.value),
                (or_(device_gone, other_owner, re_registered), DeliveryStatus.REJECTED.value),
                (exhausted, DeliveryStatus.FAILED.value),
                else_=DeliveryStatus.SENDING.value,
            ),
            last_error=case(
                (expired, "ttl expired before delivery"),
                (device_gone, "device disabled before the push"),
                (other_owner, DEVICE_OTHER_OWNER),
                (re_registered, DEVICE_RE_REGISTERED),
                (exhausted, f"gave up: {max_attempts} attempts used"),
                else_=Delivery.last_error,
            ),
            attempts=case((pushable, Delivery.attempts + 1), else_=Delivery.attempts),
            claimed_at=case((pushable, now), else_=None),
            claim_token=case((pushable, literal(token, Delivery.claim_token.type)), else_=None),
            next_attempt_at=None,
            updated_at=now,
        )
    )
    base = (Delivery.id, Delivery.status, Delivery.device_id, Delivery.platform, Delivery.attempts,
            Delivery.notification_id, Notification.request_id)
    if session.get_bind().dialect.name == "postgresql":
        rows = session.execute(
            statement.returning(*base, Device.token, Device.token_hash, Notification.app_id,
                                Notification.notify_outcomes, App.updated_at.label("app_version"), *_MESSAGE_COLUMNS)
            .where(App.id == Notification.app_id)
        ).mappings().all()
    else:
        claimed = session.execute(statement.returning(Delivery.id)).scalars().all()
        rows = session.execute(
            select(*base, Device.token, Device.token_hash, Notification.app_id,
                   Notification.notify_outcomes, App.updated_at.label("app_version"), *_MESSAGE_COLUMNS)
            .join(Notification, Notification.id == Delivery.notification_id)
            .join(Device, Device.id == Delivery.device_id)
            .join(App, App.id == Notification.app_id)
            .where(Delivery.id.in_(claimed))
        ).mappings().all() if claimed else []
    deliveries, closed_notifications, versions = [], set(), {}
    for row in rows:
        if row["status"] != DeliveryStatus.SENDING.value:
            closed_notifications.add(row["notification_id"])
            continue
        versions[row["app_id"]] = row["app_version"]
        deliveries.append(
            ClaimedDelivery(
                delivery_id=row["id"], device_id=row["device_id"], token=row["token"], token_hash=row["token_hash"],
                platform=row["platform"], attempts=row["attempts"], notification_id=row["notification_id"],
                app_id=row["app_id"], message=Message.from_row(row), notify_outcomes=row["notify_outcomes"],
                request_id=row["request_id"],
            )
        )
    if closed_notifications:
        refresh_statuses(session, closed_notifications, now)
    return Claim(token, deliveries, versions, len(rows) - len(deliveries))
