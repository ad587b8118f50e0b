"""The accept path's outbox: committed notifications that wait for fan-out, and the signal that wakes the pump.

Publishing a Celery fan-out task from every send was the API's largest cost after
its SQL (a kombu message built, serialised and pushed per request). Instead the
notification row itself is the outbox entry: ``queued`` and not yet fanned out
(``fanned_out_at`` NULL). After its commit the API pushes one tiny signal to Redis
(:func:`signal`); the pump in the fan-out workers (``workers/outbox_pump.py``)
waits on it, claims what waits (``FOR UPDATE SKIP LOCKED``, so several pumps
share the work and none waits on another) and fans it out in the same
transaction, many requests at once. A lost signal (Redis away at that moment, an
API killed after its commit) costs at most one polling interval; the scheduler's
sweep stays the last net. Nothing here needs a session-level PostgreSQL feature
(no LISTEN/NOTIFY, advisory locks, prepared statements): it runs through
PgBouncer in transaction pooling.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.clock import utcnow
from shared.models import Notification, NotificationStatus
from shared.pipeline.fanout import fan_out
from shared.pipeline.values import Chunk
from shared.vendor_payloads import PLATFORMS

SIGNAL_KEY = "pushq:outbox:signal"
# Notifications one pump transaction claims and fans out at most (the next round takes the rest at once).
PUMP_BATCH = 500
# How long the pump waits for a signal before it looks anyway (the safety net for a lost signal).
POLL_SECONDS = 1.0


def signal(client: redis.Redis) -> None:
    """Wake a pump: one round trip; the list never holds more than one signal."""
    pipeline = client.pipeline(transaction=False)
    pipeline.lpush(SIGNAL_KEY, 1)
    pipeline.ltrim(SIGNAL_KEY, 0, 0)
    pipeline.execute()


def signaller(client: redis.Redis) -> Callable[[Sequence[uuid.UUID]], None]:
    """The API's after-commit "enqueue": the ids are already in the outbox (their rows), only the wake-up is sent."""
    return lambda _ids: signal(client)


def wait_for_signal(client: redis.Redis, timeout_seconds: float = POLL_SECONDS) -> bool:
    """Block until a signal arrives (True) or ``timeout_seconds`` pass (False); signals meanwhile are absorbed."""
    woken = client.blpop([SIGNAL_KEY], timeout=timeout_seconds) is not None
    if woken:
        client.delete(SIGNAL_KEY)  # before the claim: a commit after this point signals again
    return woken


def claim_waiting(session: Session, limit: int = PUMP_BATCH) -> list[tuple[uuid.UUID, str | None]]:
    """Lock up to ``limit`` committed notifications still waiting for fan-out, oldest first; skip others' locks.

    Returns (id, the accepting request's X-Request-Id) pairs.
    """
    return [(row.id, row.request_id) for row in session.execute(
        select(Notification.id, Notification.request_id)
        .where(Notification.status == NotificationStatus.QUEUED.value, Notification.fanned_out_at.is_(None))
        .order_by(Notification.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )]


@dataclass(frozen=True)
class Pumped:
    """One pump transaction: how many notifications it fanned out, their chunks, their requests' ids."""

    taken: int
    chunks: list[Chunk]
    request_ids: tuple[str, ...]


def pump_once(session: Session, chunk_size: int, limit: int = PUMP_BATCH) -> Pumped:
    """Claim and fan out one batch in the caller's transaction; the chunks are the caller's to enqueue after commit.

    Safe to run twice and next to a fan-out task for the same rows: ``fan_out``
    skips what is already fanned out, and the claim skips what another holds.
    """
    claimed = claim_waiting(session, limit)
    if not claimed:
        return Pumped(0, [], ())
    chunks = fan_out(session, [notification_id for notification_id, _ in claimed], utcnow(), PLATFORMS, chunk_size)
    return Pumped(len(claimed), chunks, tuple(dict.fromkeys(r for _, r in claimed if r)))
