"""When a broadcast is over: its counts per delivery status, and the moment it completes.

A broadcast completes when its fan-out has paged through the whole audience and
none of its deliveries is open any more. Whoever may have closed the last one
checks: the worker recording a chunk's outcomes (or closing deliveries at claim)
and the fan-out step that finished paging. Both hold the lock on the broadcast's
message row (``notifications``, taken by :func:`shared.pipeline.status.refresh_statuses`
or :func:`lock_message`) while they check, so of two transactions closing the
last deliveries at once the second sees the first's commit: a broadcast always
completes, once.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from shared.models import Broadcast, BroadcastStatus, Delivery, Notification
from shared.services import webhooks
from shared.statuses import OPEN, aggregate_status


@dataclass(frozen=True)
class CompletedBroadcast:
    broadcast_id: uuid.UUID
    app_id: uuid.UUID
    counts: dict[str, int]
    finished_at: datetime


def delivery_counts(session: Session, notification_id: uuid.UUID) -> dict[str, int]:
    """A broadcast's deliveries per status: one GROUP BY along the (notification_id, device_id) index."""
    rows = session.execute(
        select(Delivery.status, func.count()).where(Delivery.notification_id == notification_id).group_by(Delivery.status)
    ).all()
    return {status: int(count) for status, count in rows}


def lock_message(session: Session, notification_id: uuid.UUID) -> None:
    """Take the lock completion checks serialize on (the broadcast's message row)."""
    session.execute(select(Notification.id).where(Notification.id == notification_id).with_for_update())


def complete_broadcasts(session: Session, notification_ids: Collection[uuid.UUID], now: datetime) -> list[CompletedBroadcast]:
    """Complete the broadcasts (by their message ids, locked by the caller) that are over; return them.

    One statement finds those fanned out without an open delivery (the check stops
    at the first open delivery it meets); each one found is counted once, its counts
    frozen, its message given the notification status its counts make.
    """
    if not notification_ids:
        return []
    still_open = exists().where(Delivery.notification_id == Broadcast.notification_id, Delivery.status.in_(OPEN))
    over = session.execute(
        select(Broadcast.id, Broadcast.app_id, Broadcast.notification_id)
        .where(Broadcast.notification_id.in_(sorted(notification_ids)),
               Broadcast.status == BroadcastStatus.SENDING.value,
               Broadcast.fanned_out_at.is_not(None), ~still_open)
    ).all()
    completed = []
    for broadcast_id, app_id, notification_id in over:
        counts = delivery_counts(session, notification_id)
        session.execute(update(Broadcast).where(Broadcast.id == broadcast_id).values(
            status=BroadcastStatus.COMPLETED.value, finished_at=now, final_counts=counts, next_step_at=None,
            step_token=None, updated_at=now))
        session.execute(update(Notification).where(Notification.id == notification_id).values(
            status=aggregate_status(counts), updated_at=now))
        completed.append(CompletedBroadcast(broadcast_id, app_id, counts, now))
    announce_completed(session, completed)
    return completed


def announce_completed(session: Session, completed: list[CompletedBroadcast]) -> None:
    """``broadcast.completed`` (its counts) for apps with an outcome webhook, in the completing transaction:
    the event commits with the completion or not at all."""
    webhooks.emit_events(session, [
        (done.app_id, webhooks.BROADCAST_COMPLETED, {
            "broadcast_id": str(done.broadcast_id), "status": BroadcastStatus.COMPLETED.value,
            "completed_at": done.finished_at.isoformat(), "counts": done.counts,
        })
        for done in completed
    ], completed[0].finished_at if completed else None)
