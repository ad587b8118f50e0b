"""Broadcasts as the API sees them: accept, read, list, cancel, per-recipient results.

Accepting costs a constant number of statements whatever the audience: the
audience is counted with one indexed COUNT (the quota needs it), the message is
stored once (a notification without a user), the broadcast row is inserted and
its first fan-out step enqueued after the commit (:mod:`shared.broadcast_fanout`
does the paging in the workers).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import distinct, func, select, update
from sqlalchemy.orm import Session

from shared.broadcast_fanout import segment_condition
from shared.broadcast_status import delivery_counts
from shared.clock import utcnow
from shared.db import after_commit, after_rollback
from shared.errors import InvalidPageCursor, ServiceError
from shared.guards import QuotaDecision, QuotaExceeded, QuotaPolicy
from shared.models import (
    App,
    Broadcast,
    BroadcastStatus,
    Delivery,
    DeliveryStatus,
    Device,
    Enrollment,
    Notification,
    NotificationStatus,
    UserTag,
)
from shared.option_rules import needs_critical_entitlement
from shared.pagination import InvalidCursor, Page, keyset_page, newest_first_page
from shared.services.sends import SendRequest, check_payload, check_send_at, targets
from shared.services.tags import check_tags

MAX_RATE_PER_MINUTE = 1_000_000
NO_USER = uuid.UUID(int=0)  # the message fields of a broadcast travel in a SendRequest without a recipient

EnqueueStep = Callable[[uuid.UUID, uuid.UUID], None]


class BroadcastNotFound(ServiceError):
    status, code, message = 404, "broadcast_not_found", "Broadcast not found"


class BroadcastNotCancellable(ServiceError):
    status, code, message = 409, "broadcast_not_cancellable", "Broadcast already completed"


class BroadcastOverQuota(QuotaExceeded):
    """The audience is larger than what is left of the day's quota: refused whole, before anything is stored."""


@dataclass(frozen=True)
class Audience:
    tags_all: tuple[str, ...] = ()
    tags_any: tuple[str, ...] = ()
    platforms: tuple[str, ...] = ()  # empty: every platform


@dataclass(frozen=True)
class AcceptedBroadcast:
    broadcast: Broadcast
    quota: QuotaDecision | None = None


def audience_size(session: Session, app_id: uuid.UUID, audience: Audience) -> int:
    """Users in the audience now: one COUNT, along the enrollments' primary key or the tags' (app_id, tag) index."""
    if not audience.tags_all and not audience.tags_any:
        query = select(func.count()).select_from(Enrollment).where(Enrollment.app_id == app_id)
    elif not audience.tags_all:
        query = select(func.count(distinct(UserTag.user_id))).where(
            UserTag.app_id == app_id, UserTag.tag.in_(sorted(audience.tags_any)))
    else:
        members = (select(UserTag.user_id)
                   .where(UserTag.app_id == app_id, UserTag.tag.in_(sorted(audience.tags_all)),
                          segment_condition(app_id, UserTag.user_id, None, audience.tags_any))
                   .group_by(UserTag.user_id).having(func.count() == len(set(audience.tags_all))).subquery())
        query = select(func.count()).select_from(members)
    return int(session.scalar(query) or 0)


def create_broadcast(
    session: Session, app_id: uuid.UUID, content: SendRequest, audience: Audience, *,
    rate_per_minute: int | None, default_ttl: int, enqueue_step: EnqueueStep, quota: QuotaPolicy | None = None,
    request_id: str | None = None,
) -> AcceptedBroadcast:
    """Store a broadcast and enqueue its first fan-out step once committed (or wait for its send_at).

    The quota rule: a broadcast takes its audience size (users in the audience when
    accepted) from the day's quota, all at once; larger than what is left, it is
    refused with :class:`BroadcastOverQuota` and nothing is stored.
    """
    now = utcnow()
    check_send_at(content, now)
    targeted = audience.platforms or targets(content)
    critical_allowed = needs_critical_entitlement(content.options, targeted) and bool(
        session.scalar(select(App.apns_critical_alerts).where(App.id == app_id)))
    check_payload(content, now, default_ttl, critical_allowed, platforms=targeted)
    audience = Audience(tuple(check_tags(audience.tags_all, "tags_all")), tuple(check_tags(audience.tags_any, "tags_any")),
                        tuple(dict.fromkeys(audience.platforms)))
    size = audience_size(session, app_id, audience)
    decision = None
    if quota is not None and size:
        own_limit = session.scalar(select(App.daily_quota).where(App.id == app_id))
        limit = own_limit if own_limit is not None else quota.default_limit
        try:
            decision = quota.counter.reserve(app_id, size, limit, now)
        except QuotaExceeded as refused:
            left = int(refused.headers.get("X-Quota-Remaining", "0"))
            raise BroadcastOverQuota(
                headers=refused.headers, audience_size=size, quota_limit=limit, quota_remaining=left) from None
        after_rollback(session, lambda: quota.counter.refund(app_id, size, now))
    scheduled = content.scheduled(now)
    message = content.message(now, default_ttl)
    notification_id = uuid.uuid4()
    session.add(Notification(
        id=notification_id, app_id=app_id, user_id=None, request_id=request_id, created_at=now, updated_at=now,
        status=NotificationStatus.SENDING.value, fanned_out_at=now, **message.as_row()))
    session.flush()
    broadcast = Broadcast(
        id=uuid.uuid4(), app_id=app_id, notification_id=notification_id, tags_all=list(audience.tags_all) or None,
        tags_any=list(audience.tags_any) or None, platforms=list(audience.platforms) or None,
        rate_per_minute=rate_per_minute, audience_size=size, request_id=request_id, send_at=content.send_at,
        status=(BroadcastStatus.SCHEDULED if scheduled else BroadcastStatus.SENDING).value,
        started_at=None if scheduled else now, next_step_at=content.send_at if scheduled else now,
        step_token=None if scheduled else uuid.uuid4(), deliveries_created=0, created_at=now, updated_at=now)
    session.add(broadcast)
    session.flush()
    if not scheduled:
        broadcast_id, token = broadcast.id, broadcast.step_token
        assert token is not None
        after_commit(session, lambda: enqueue_step(broadcast_id, token))
    return AcceptedBroadcast(broadcast, decision)


def get_broadcast(session: Session, app_id: uuid.UUID, broadcast_id: uuid.UUID) -> Broadcast:
    broadcast = session.scalars(
        select(Broadcast).where(Broadcast.id == broadcast_id, Broadcast.app_id == app_id)).one_or_none()
    if broadcast is None:
        raise BroadcastNotFound()
    return broadcast


def describe(session: Session, broadcast: Broadcast) -> dict[str, Any]:
    """A broadcast with its message and its deliveries counted per status (frozen once completed)."""
    message = session.get_one(Notification, broadcast.notification_id)
    counts = broadcast.final_counts if broadcast.final_counts is not None else delivery_counts(session, broadcast.notification_id)
    return {
        "id": broadcast.id, "status": broadcast.status, "title": message.title, "body": message.body,
        "audience": {"tags_all": broadcast.tags_all or [], "tags_any": broadcast.tags_any or [],
                     "platforms": broadcast.platforms or []},
        "rate_per_minute": broadcast.rate_per_minute, "audience_size": broadcast.audience_size,
        "deliveries_created": broadcast.deliveries_created,
        "counts": {status.value: int(counts.get(status.value, 0)) for status in DeliveryStatus},
        "created_at": broadcast.created_at, "send_at": broadcast.send_at, "started_at": broadcast.started_at,
        "fanned_out_at": broadcast.fanned_out_at, "finished_at": broadcast.finished_at,
        "expires_at": message.expires_at,
    }


def list_broadcasts(session: Session, app_id: uuid.UUID, *, limit: int, cursor: str | None = None,
                    status: str | None = None) -> Page[Broadcast]:
    query = select(Broadcast).where(Broadcast.app_id == app_id)
    if status is not None:
        query = query.where(Broadcast.status == status)
    try:
        return newest_first_page(session, query, Broadcast.created_at, Broadcast.id, limit, cursor)
    except InvalidCursor:
        raise InvalidPageCursor() from None


def cancel(session: Session, app_id: uuid.UUID, broadcast_id: uuid.UUID, now: datetime) -> str:
    """Stop a broadcast: no further page, and every delivery not yet pushed closed ``cancelled``.

    Locks the broadcast row, which every fan-out step takes too: no page commits
    after the cancel, and the UPDATE sees every page committed before it. A delivery
    a worker has already claimed finishes its push. Cancelling twice answers the
    same; a completed broadcast cannot be cancelled (409). The quota is not given back.
    """
    broadcast = session.scalars(
        select(Broadcast).where(Broadcast.id == broadcast_id, Broadcast.app_id == app_id).with_for_update()
    ).one_or_none()
    if broadcast is None:
        raise BroadcastNotFound()
    if broadcast.status == BroadcastStatus.COMPLETED.value:
        raise BroadcastNotCancellable()
    if broadcast.status != BroadcastStatus.CANCELLED.value:
        broadcast.status, broadcast.finished_at = BroadcastStatus.CANCELLED.value, now
        broadcast.step_token = broadcast.next_step_at = None
        broadcast.updated_at = now
        session.execute(
            update(Delivery)
            .where(Delivery.notification_id == broadcast.notification_id,
                   Delivery.status.in_([DeliveryStatus.PENDING.value, DeliveryStatus.RETRYING.value]))
            .values(status=DeliveryStatus.CANCELLED.value, last_error="broadcast cancelled before the push",
                    next_attempt_at=None, updated_at=now)
            .execution_options(synchronize_session=False))
        session.execute(update(Notification).where(Notification.id == broadcast.notification_id)
                        .values(status=NotificationStatus.CANCELLED.value, updated_at=now))
    return BroadcastStatus.CANCELLED.value


def recipients(session: Session, app_id: uuid.UUID, broadcast_id: uuid.UUID, *, limit: int,
               after: uuid.UUID | None = None, user_id: uuid.UUID | None = None, device_id: uuid.UUID | None = None,
               statuses: Sequence[str] = ()) -> Page[Delivery]:
    """A broadcast's deliveries (one per recipient device), by device id; for one user, one device, some statuses.

    A user's results are found through the user's devices (their index) and then the
    (notification_id, device_id) index, and only where the delivery was for that user.
    """
    broadcast = get_broadcast(session, app_id, broadcast_id)
    query = select(Delivery).where(Delivery.notification_id == broadcast.notification_id)
    if user_id is not None:
        query = query.where(Delivery.user_id == user_id, Delivery.device_id.in_(
            select(Device.id).where(Device.app_id == app_id, Device.user_id == user_id)))
    if device_id is not None:
        query = query.where(Delivery.device_id == device_id)
    if statuses:
        query = query.where(Delivery.status.in_(list(statuses)))
    return keyset_page(session, query, Delivery.device_id, limit, after)
