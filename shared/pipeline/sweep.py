"""The safety net: release work whose enqueue was lost, whose worker died, or whose retry is due.

Run by the sweep and by the scheduler's retry tick; every release is bounded
per run and returns chunks to enqueue after the commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, literal, select, update
from sqlalchemy.orm import Session

from shared.models import Delivery, DeliveryStatus, Notification, NotificationStatus
from shared.pipeline.values import Chunk, chunked


def stale_queued_notifications(
    session: Session, now: datetime, older_than_seconds: int, limit: int = 1000, *, lost_before: datetime | None = None
) -> list[uuid.UUID]:
    """Notifications committed but never fanned out (their enqueue was lost)."""
    # The sweep passes its cutoff for the fan-out queue (shared/backlog.py: lost, not merely
    # waiting behind others); each notification returned is stamped, so it counts as enqueued
    # again from now and the next sweep leaves it alone while it waits in the queue.
    cutoff = lost_before if lost_before is not None else now - timedelta(seconds=older_than_seconds)
    ids = list(
        session.scalars(
            select(Notification.id)
            .where(
                Notification.status == NotificationStatus.QUEUED.value,
                Notification.fanned_out_at.is_(None),
                Notification.updated_at < cutoff,
            )
            .order_by(Notification.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    if ids:
        session.execute(update(Notification).where(Notification.id.in_(ids)).values(updated_at=now)
                        .execution_options(synchronize_session=False))
    return ids


# Deliveries released per kind and per run, in chunks: the sweep (per kind) and the retry tick
# never hold more than this many in memory or publish more than this many chunks at once;
# what is beyond it waits for the next run, oldest first.
RELEASE_CHUNKS_PER_RUN = 100


def release_limit(chunk_size: int) -> int:
    """Deliveries one run releases at most, per kind: :data:`RELEASE_CHUNKS_PER_RUN` chunks."""
    return chunk_size * RELEASE_CHUNKS_PER_RUN


def _release(session: Session, due: Any, oldest_first: Any, now: datetime, limit: int) -> list[Any]:
    """Make up to ``limit`` deliveries matching ``due`` pending again, oldest first; their (platform, app_id, id).

    One statement on PostgreSQL. Rows are picked with ``FOR UPDATE SKIP LOCKED``
    (a claim holding them is left to finish) in a materialized CTE, so the LIMIT
    is run once (see :func:`shared.services.scheduled.release_due`); the UPDATE
    re-checks ``due`` and returns each row's app from the joined notification.
    SQLite (``make run``) cannot return a joined column: one SELECT follows there.
    Touching ``updated_at`` marks them enqueued from now.
    """
    picked = (
        select(Delivery.id)
        .where(due)
        .order_by(oldest_first, Delivery.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("due")
        .prefix_with("MATERIALIZED")
    )
    statement = (
        update(Delivery)
        .where(Delivery.id == picked.c.id, due)
        .values(status=DeliveryStatus.PENDING.value, next_attempt_at=None, claimed_at=None, claim_token=None,
                updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if session.get_bind().dialect.name == "postgresql":
        return list(session.execute(
            statement.where(Notification.id == Delivery.notification_id)
            .returning(Delivery.platform, Notification.app_id, Delivery.id)
        ))
    rows = session.execute(statement.returning(Delivery.platform, Delivery.notification_id, Delivery.id)).all()
    if not rows:
        return []
    apps = dict(session.execute(
        select(Notification.id, Notification.app_id).where(Notification.id.in_({r[1] for r in rows}))
    ).all())
    return [(platform, apps[notification_id], delivery_id) for platform, notification_id, delivery_id in rows]


def _due_retries(now: datetime) -> Any:
    return and_(Delivery.status == DeliveryStatus.RETRYING.value, Delivery.next_attempt_at <= now)


def release_due_retries(session: Session, now: datetime, chunk_size: int, limit: int | None = None) -> list[Chunk]:
    """Make retries whose ``next_attempt_at`` has come pending; return them in chunks, to enqueue after commit.

    Run by the scheduler every PUSHQ_SCHEDULE_INTERVAL, so a retry goes out within
    about a second of its time rather than at the next sweep. Only ``retrying``
    rows are touched: a released retry is pending and never released again by this
    tick, however long it then waits in a deep queue. One statement (PostgreSQL), at most
    ``limit`` (default :func:`release_limit`) deliveries, the longest due first,
    along the (status, next_attempt_at) index.
    """
    limit = release_limit(chunk_size) if limit is None else limit
    return chunked(_release(session, _due_retries(now), Delivery.next_attempt_at, now, limit), chunk_size)


def release_due_deliveries(
    session: Session, now: datetime, stale_pending_seconds: int, lease_seconds: int, chunk_size: int,
    *, lost_before: Mapping[str, datetime] | None = None, limit: int | None = None,
) -> list[Chunk]:
    """Make due work pending again and return it in chunks, to be enqueued after commit.

    Due: retries whose time has come (normally released by :func:`release_due_retries`
    already; the sweep is the safety net), pending deliveries whose enqueue was lost
    (untouched for ``stale_pending_seconds``), and claims whose lease ran out
    (their worker died mid-send). Touching ``updated_at`` keeps the next sweep
    from enqueueing the same delivery again while it waits in the queue.
    ``lost_before`` (per platform, from the sweep's look at each queue: see
    shared/backlog.py) narrows "untouched" to "lost": a pending delivery still
    waiting its turn in a deep queue is left alone.

    Each kind releases at most ``limit`` deliveries per run (default
    :func:`release_limit`), the longest due first; the next sweep takes the rest.
    """
    limit = release_limit(chunk_size) if limit is None else limit
    stale_pending: Any = now - timedelta(seconds=stale_pending_seconds)
    if lost_before:
        stale_pending = case(
            *((Delivery.platform == platform, literal(cutoff, Delivery.updated_at.type))
              for platform, cutoff in sorted(lost_before.items())),
            else_=literal(stale_pending, Delivery.updated_at.type),
        )
    # One bounded statement per kind, each ordered by the time it became due.
    due_kinds = (
        (_due_retries(now), Delivery.next_attempt_at),
        (and_(Delivery.status == DeliveryStatus.PENDING.value, Delivery.updated_at < stale_pending),
         Delivery.updated_at),
        (and_(Delivery.status == DeliveryStatus.SENDING.value,
              Delivery.claimed_at < now - timedelta(seconds=lease_seconds)),
         Delivery.claimed_at),
    )
    return chunked([row for due, oldest_first in due_kinds for row in _release(session, due, oldest_first, now, limit)],
                   chunk_size)
