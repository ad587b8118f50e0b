"""A broadcast's fan-out: keyset pages over its audience's devices, paced, resumable.

Each step (one worker task) locks the broadcast row, selects the next page of
active devices of the audience after the stored cursor ``(user_id, device_id)``,
inserts their deliveries (``ON CONFLICT DO NOTHING`` on (notification, device):
the last guard against a repeat), moves the cursor past the page and commits
both together. A worker killed mid-step leaves the previous commit: its
successor pages on from there, so nobody is skipped or served twice. Memory is
one page whatever the audience.

Pacing: with a rate of R deliveries per minute, delivery k is due k * 60 / R
seconds after the first; a step releases the deliveries due by now (a late step
catches up at most one second's worth, so no window ever sees a burst) and the
next step is due when the next delivery is (:func:`paced`). Each step task carries the
broadcast's ``step_token``; a step with another token (a copy the sweep replaced)
does nothing, so one chain of steps runs per broadcast.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, literal, select, tuple_, update
from sqlalchemy.orm import Session, aliased

from shared.broadcast_status import CompletedBroadcast, complete_broadcasts, lock_message
from shared.db_upsert import dialect_insert
from shared.models import Broadcast, BroadcastStatus, Delivery, DeliveryStatus, Device, Enrollment, UserTag
from shared.pipeline.values import Chunk, chunked


@dataclass(frozen=True)
class Step:
    """What one fan-out step did, and when the next one is due (None: no next step)."""

    chunks: list[Chunk]
    created: int = 0
    next_in_seconds: float | None = None
    fanned_out: bool = False  # the audience is exhausted: check for completion

    @property
    def delivery_count(self) -> int:
        return sum(len(chunk.delivery_ids) for chunk in self.chunks)


def segment_condition(app_id: uuid.UUID, user_id: Any, tags_all: Collection[str] | None,
                      tags_any: Collection[str] | None) -> Any:
    """SQL: the user ``user_id`` (a column) is in the segment (every tag of ``tags_all``, one of ``tags_any``)."""
    tag = aliased(UserTag)  # the caller's query may itself be over user_tags
    conditions = []
    if tags_all:
        matching = (select(func.count()).select_from(tag)
                    .where(tag.app_id == app_id, tag.user_id == user_id, tag.tag.in_(sorted(tags_all)))
                    .scalar_subquery())
        conditions.append(matching == len(set(tags_all)))
    if tags_any:
        conditions.append(exists().where(tag.app_id == app_id, tag.user_id == user_id, tag.tag.in_(sorted(tags_any))))
    return and_(*conditions) if conditions else literal(True)


# A step that runs late releases at most this much of the rate's backlog at once: the rate
# holds over any window (a slow queue never turns into a burst of everything owed).
CATCH_UP_SECONDS = 1.0


def paced(broadcast: Broadcast, now: datetime) -> tuple[int | None, datetime]:
    """Deliveries the rate lets this step release (None: no rate), and the due time they count from.

    ``next_step_at`` is when the next delivery is due (delivery k of a rate R is due
    k * 60 / R seconds after the first); a step releases every delivery due by now,
    counting from at most :data:`CATCH_UP_SECONDS` ago.
    """
    rate = broadcast.rate_per_minute
    due = broadcast.next_step_at or now
    if not rate:
        return None, due
    due = max(due, now - timedelta(seconds=CATCH_UP_SECONDS))
    if due > now:
        return 0, due
    return math.floor((now - due).total_seconds() * rate / 60) + 1, due


def fan_out_step(
    session: Session, broadcast_id: uuid.UUID, step_token: uuid.UUID, now: datetime,
    supported_platforms: Collection[str], page_size: int, chunk_size: int,
) -> Step:
    """Create the next page of a broadcast's deliveries; returns them in chunks, to enqueue after commit."""
    broadcast = session.scalars(select(Broadcast).where(Broadcast.id == broadcast_id).with_for_update()).one_or_none()
    if (broadcast is None or broadcast.status != BroadcastStatus.SENDING.value or broadcast.step_token != step_token
            or broadcast.fanned_out_at is not None):
        return Step([])
    allowed, due = paced(broadcast, now)
    limit = page_size if allowed is None else min(page_size, allowed)
    if limit == 0:
        return Step([], next_in_seconds=(due - now).total_seconds())
    page = session.execute(_page(broadcast, supported_platforms, limit)).all()
    inserted: list[Any] = []
    if page:
        rows = [{"id": uuid.uuid4(), "notification_id": broadcast.notification_id, "device_id": device_id,
                 "user_id": user_id, "platform": platform, "device_generation": generation,
                 "status": DeliveryStatus.PENDING.value, "attempts": 0, "created_at": now, "updated_at": now}
                for user_id, device_id, platform, generation in page]
        inserted = list(session.execute(
            dialect_insert(session, Delivery).values(rows)
            .on_conflict_do_nothing(index_elements=["notification_id", "device_id"])
            .returning(Delivery.platform, Delivery.id)
        ))
        broadcast.cursor_user_id, broadcast.cursor_device_id = page[-1][0], page[-1][1]
        broadcast.deliveries_created += len(inserted)
    broadcast.updated_at = now
    chunks = chunked(((platform, broadcast.app_id, delivery_id) for platform, delivery_id in inserted), chunk_size)
    if len(page) < limit:
        broadcast.fanned_out_at, broadcast.next_step_at = now, None
        return Step(chunks, len(inserted), fanned_out=True)
    if broadcast.rate_per_minute:
        broadcast.next_step_at = due + timedelta(seconds=len(page) * 60 / broadcast.rate_per_minute)
    else:
        broadcast.next_step_at = now
    return Step(chunks, len(inserted), next_in_seconds=max((broadcast.next_step_at - now).total_seconds(), 0.0))


def _page(broadcast: Broadcast, supported_platforms: Collection[str], limit: int) -> Any:
    """The next ``limit`` active devices of the audience after the cursor, in (user_id, device_id) order."""
    platforms = sorted(set(broadcast.platforms or supported_platforms) & set(supported_platforms))
    query = (
        select(Device.user_id, Device.id, Device.platform, Device.generation)
        .where(Device.app_id == broadcast.app_id, Device.disabled_at.is_(None), Device.platform.in_(platforms),
               exists().where(Enrollment.app_id == broadcast.app_id, Enrollment.user_id == Device.user_id),
               segment_condition(broadcast.app_id, Device.user_id, broadcast.tags_all, broadcast.tags_any))
        .order_by(Device.user_id, Device.id)
        .limit(limit)
    )
    if broadcast.cursor_user_id is not None:
        query = query.where(tuple_(Device.user_id, Device.id) > tuple_(
            literal(broadcast.cursor_user_id, Device.user_id.type), literal(broadcast.cursor_device_id, Device.id.type)))
    return query


def complete_if_over(session: Session, broadcast_id: uuid.UUID, now: datetime) -> list[CompletedBroadcast]:
    """After the last page (its own transaction): complete the broadcast if no delivery is open."""
    notification_id = session.scalar(select(Broadcast.notification_id).where(Broadcast.id == broadcast_id))
    if notification_id is None:
        return []
    lock_message(session, notification_id)
    return complete_broadcasts(session, [notification_id], now)


def release_due(session: Session, now: datetime, limit: int = 100) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Start scheduled broadcasts whose send_at has come; their (id, step token), to enqueue after commit.

    Rows are picked ``FOR UPDATE SKIP LOCKED``, so two schedulers start each broadcast once.
    """
    due = _pick(session, and_(Broadcast.status == BroadcastStatus.SCHEDULED.value, Broadcast.send_at <= now),
                Broadcast.send_at, limit)
    return _new_steps(session, due, now, status=BroadcastStatus.SENDING.value, started_at=now)


def lost_steps(session: Session, now: datetime, older_than_seconds: float, limit: int = 100) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Broadcasts whose next step is overdue by ``older_than_seconds`` (its task was lost, or its worker
    killed): a fresh step token each, to enqueue after commit; a late copy of the old chain then does nothing."""
    overdue = and_(Broadcast.status == BroadcastStatus.SENDING.value, Broadcast.fanned_out_at.is_(None),
                   Broadcast.next_step_at < now - timedelta(seconds=older_than_seconds))
    return _new_steps(session, _pick(session, overdue, Broadcast.next_step_at, limit), now)


def _pick(session: Session, condition: Any, oldest_first: Any, limit: int) -> list[uuid.UUID]:
    return list(session.scalars(
        select(Broadcast.id).where(condition).order_by(oldest_first, Broadcast.id).limit(limit)
        .with_for_update(skip_locked=True)
    ))


def _new_steps(session: Session, broadcast_ids: list[uuid.UUID], now: datetime, **values: Any) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Give each broadcast a new step token, due now (bounded by the caller's limit)."""
    steps = [(broadcast_id, uuid.uuid4()) for broadcast_id in broadcast_ids]
    for broadcast_id, token in steps:
        session.execute(update(Broadcast).where(Broadcast.id == broadcast_id)
                        .values(step_token=token, next_step_at=now, updated_at=now, **values)
                        .execution_options(synchronize_session=False))
    return steps
