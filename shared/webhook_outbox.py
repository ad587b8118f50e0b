"""Delivering the webhook outbox: claim due events per app, record each attempt, back off, give up.

Plain functions over a session (the worker tasks call them, each in its own
transaction). The scheduler's tick claims one batch per app that has due events
and enqueues one task per batch; the claim is committed before the task runs, so
neither a second tick nor a redelivered task sends the batch again while the
claim's lease runs. A worker that dies leaves the claim to run out; the batch is
due again then (at least once: the receiver de-duplicates on the event id).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, or_, select, update
from sqlalchemy.orm import Session

from shared.db import rows_affected
from shared.models import WebhookEndpoint, WebhookEvent, WebhookEventStatus
from shared.outcomes import MAX_REASON_CHARS, clean_text

# Apps whose batch one tick claims at most; the next tick takes the others.
APPS_PER_TICK = 200


@dataclass(frozen=True)
class WebhookPolicy:
    """PUSHQ_WEBHOOK_*: attempts, backoff, batch size, and the claim's lease (longer than a task may run)."""

    max_attempts: int
    retry_base_seconds: float
    retry_max_seconds: float
    batch_size: int
    lease_seconds: float

    def delay(self, attempts: int) -> timedelta:
        """Full jitter: a random wait up to base * 2^(attempts-1), capped."""
        ceiling = min(self.retry_max_seconds, self.retry_base_seconds * 2 ** max(attempts - 1, 0))
        return timedelta(seconds=random.uniform(0, ceiling))


@dataclass(frozen=True)
class OutboxEvent:
    id: uuid.UUID
    event_type: str
    payload: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class WebhookBatch:
    """A claimed batch: the events (oldest first), where they go and the secrets that sign them."""

    app_id: uuid.UUID
    claim_token: uuid.UUID
    url: str
    secrets: tuple[str, ...]  # the current secret, then the previous one while it still signs
    events: tuple[OutboxEvent, ...]


def _due(now: datetime, lease_seconds: float) -> Any:
    return and_(
        WebhookEvent.status == WebhookEventStatus.PENDING.value,
        WebhookEvent.next_attempt_at <= now,
        or_(WebhookEvent.claimed_at.is_(None), WebhookEvent.claimed_at < now - timedelta(seconds=lease_seconds)),
    )


def claim_due_batches(session: Session, now: datetime, policy: WebhookPolicy) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Claim, per app with due events (at most :data:`APPS_PER_TICK`), its oldest ``batch_size``; (app, claim)."""
    apps = list(session.scalars(
        select(WebhookEvent.app_id).where(_due(now, policy.lease_seconds)).distinct().limit(APPS_PER_TICK)
    ))
    claims: list[tuple[uuid.UUID, uuid.UUID]] = []
    locking = session.get_bind().dialect.name == "postgresql"
    for app_id in apps:
        query = (select(WebhookEvent.id).where(WebhookEvent.app_id == app_id, _due(now, policy.lease_seconds))
                 .order_by(WebhookEvent.created_at).limit(policy.batch_size))
        if locking:  # two schedulers by mistake: the second skips what the first holds
            query = query.with_for_update(skip_locked=True)
        ids = list(session.scalars(query))
        if not ids:
            continue
        token = uuid.uuid4()
        session.execute(update(WebhookEvent).where(WebhookEvent.id.in_(ids))
                        .values(claim_token=token, claimed_at=now).execution_options(synchronize_session=False))
        claims.append((app_id, token))
    return claims


def load_batch(session: Session, app_id: uuid.UUID, claim_token: uuid.UUID, now: datetime) -> WebhookBatch | None:
    """The events still held by ``claim_token`` and the app's endpoint; None if nothing is left to send."""
    endpoint = session.get(WebhookEndpoint, app_id)
    events = session.execute(
        select(WebhookEvent.id, WebhookEvent.event_type, WebhookEvent.payload, WebhookEvent.created_at)
        .where(WebhookEvent.claim_token == claim_token, WebhookEvent.status == WebhookEventStatus.PENDING.value)
        .order_by(WebhookEvent.created_at)
    ).all()
    if endpoint is None or not events:
        return None
    secrets = [endpoint.secret]
    if endpoint.previous_secret and endpoint.previous_secret_expires_at and endpoint.previous_secret_expires_at > now:
        secrets.append(endpoint.previous_secret)
    return WebhookBatch(app_id, claim_token, endpoint.url, tuple(secrets),
                        tuple(OutboxEvent(row.id, row.event_type, row.payload, row.created_at) for row in events))


def record_attempt(
    session: Session, batch: WebhookBatch, error: str | None, now: datetime, policy: WebhookPolicy
) -> int:
    """Write one POST's result for the batch (``error`` None: delivered); only under the batch's claim.

    A failure moves each event's next attempt by the backoff, or gives it up
    (``failed``) after ``max_attempts``. The endpoint keeps the last attempt,
    the last success and the last error for the API and the status page.
    """
    ids = [event.id for event in batch.events]
    held = and_(WebhookEvent.id.in_(ids), WebhookEvent.claim_token == batch.claim_token,
                WebhookEvent.status == WebhookEventStatus.PENDING.value)
    reason = clean_text(error, MAX_REASON_CHARS) if error is not None else None
    if reason is None:
        values: dict[str, Any] = {"status": WebhookEventStatus.DELIVERED.value, "delivered_at": now}
    else:
        # One backoff for the batch (its events were sent together and failed together).
        attempts = session.scalar(select(WebhookEvent.attempts).where(held).limit(1)) or 0
        values = {
            "status": case((WebhookEvent.attempts + 1 >= policy.max_attempts, WebhookEventStatus.FAILED.value),
                           else_=WebhookEventStatus.PENDING.value),
            "next_attempt_at": now + policy.delay(attempts + 1), "last_error": reason,
        }
    written = rows_affected(session.execute(
        update(WebhookEvent).where(held)
        .values(attempts=WebhookEvent.attempts + 1, last_attempt_at=now, claim_token=None, claimed_at=None, **values)
        .execution_options(synchronize_session=False)
    ))
    endpoint_values: dict[str, Any] = {"last_attempt_at": now}
    if reason is None:
        endpoint_values.update(last_success_at=now, last_error=None)
    else:
        # Batches of one app can be answered in one order and written in another: a failure whose attempt
        # began before the endpoint's last success is history, not the endpoint's state.
        endpoint_values["last_error"] = case(
            (and_(WebhookEndpoint.last_success_at.is_not(None), WebhookEndpoint.last_success_at > now),
             WebhookEndpoint.last_error),
            else_=reason)
    session.execute(update(WebhookEndpoint).where(WebhookEndpoint.app_id == batch.app_id).values(**endpoint_values)
                    .execution_options(synchronize_session=False))
    return written

