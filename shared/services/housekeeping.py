"""Housekeeping: bounded deletes and updates the scheduler runs so tables do not grow without end.

Each job works in batches of ``batch_size`` rows, one statement per batch and
each batch in its own short transaction (see :func:`run`), so it never holds
many locks or a long transaction next to live traffic; a run does at most
``max_batches`` batches per job and the next run carries on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.db import rows_affected, run_in_transaction
from shared.models import Device, Notification, NotificationStatus, OAuthClient, WebhookEvent, WebhookEventStatus

log = logging.getLogger(__name__)

# Only notifications nothing can happen to any more are deleted: never one that is scheduled,
# queued or still sending (its deliveries go with it, by the foreign key's ON DELETE CASCADE).
FINAL_STATUSES = tuple(
    status.value for status in (
        NotificationStatus.DELIVERED, NotificationStatus.PARTIALLY_DELIVERED, NotificationStatus.FAILED,
        NotificationStatus.EXPIRED, NotificationStatus.NO_DEVICES, NotificationStatus.CANCELLED,
    )
)
IDLE_REASON = "idle: not seen for {days} days"


@dataclass(frozen=True)
class HousekeepingPolicy:
    """The housekeeping settings; a period of 0 days turns its job off."""

    retention_days: int = 30  # PUSHQ_RETENTION_DAYS
    device_idle_days: int = 270  # PUSHQ_DEVICE_IDLE_DAYS
    revoked_client_days: int = 30  # PUSHQ_REVOKED_CLIENT_DAYS
    batch_size: int = 1000  # PUSHQ_HOUSEKEEPING_BATCH_SIZE
    max_batches: int = 20  # PUSHQ_HOUSEKEEPING_MAX_BATCHES


@dataclass
class HousekeepingReport:
    notifications_deleted: int = 0
    devices_disabled: int = 0
    clients_deleted: int = 0
    webhook_events_deleted: int = 0
    batches: dict[str, int] = field(default_factory=dict)


def delete_old_notifications(session: Session, now: datetime, older_than_days: int, batch_size: int) -> int:
    """Delete one batch of final notifications created more than ``older_than_days`` ago (with their deliveries)."""
    cutoff = now - timedelta(days=older_than_days)
    batch = (
        select(Notification.id)
        .where(Notification.status.in_(FINAL_STATUSES), Notification.created_at < cutoff)
        .limit(batch_size)
    )
    result = session.execute(
        delete(Notification).where(Notification.id.in_(batch)).execution_options(synchronize_session=False)
    )
    return rows_affected(result)


def disable_idle_devices(session: Session, now: datetime, idle_days: int, batch_size: int) -> int:
    """Disable one batch of active devices not registered again (``last_seen_at``) for ``idle_days``.

    Push tokens go stale without anyone saying so (FCM drops tokens idle for 270
    days); a disabled device is no longer fanned out to and comes back when its
    app registers it again.
    """
    cutoff = now - timedelta(days=idle_days)
    batch = select(Device.id).where(Device.disabled_at.is_(None), Device.last_seen_at < cutoff).limit(batch_size)
    result = session.execute(
        update(Device)
        .where(Device.id.in_(batch), Device.disabled_at.is_(None))
        .values(disabled_at=now, disabled_reason=IDLE_REASON.format(days=idle_days))
        .execution_options(synchronize_session=False)
    )
    return rows_affected(result)


def delete_revoked_clients(session: Session, now: datetime, revoked_days: int, batch_size: int) -> int:
    """Delete one batch of OAuth clients revoked more than ``revoked_days`` ago.

    Settings make sure that is longer than a token's lifetime, so no token of
    theirs can still be valid: the revocation list the API reloads stays small.
    """
    cutoff = now - timedelta(days=revoked_days)
    batch = select(OAuthClient.client_id).where(OAuthClient.revoked_at < cutoff).limit(batch_size)
    result = session.execute(
        delete(OAuthClient).where(OAuthClient.client_id.in_(batch)).execution_options(synchronize_session=False)
    )
    return rows_affected(result)


def delete_old_webhook_events(session: Session, now: datetime, older_than_days: int, batch_size: int) -> int:
    """Delete one batch of webhook events delivered or given up more than ``older_than_days`` ago (pending stay)."""
    cutoff = now - timedelta(days=older_than_days)
    batch = (select(WebhookEvent.id)
             .where(WebhookEvent.status != WebhookEventStatus.PENDING.value, WebhookEvent.created_at < cutoff)
             .limit(batch_size))
    return rows_affected(session.execute(
        delete(WebhookEvent).where(WebhookEvent.id.in_(batch)).execution_options(synchronize_session=False)))


def in_batches(
    session_factory: sessionmaker[Session], job: Callable[[Session], int], batch_size: int, max_batches: int | None
) -> tuple[int, int]:
    """Run ``job`` (one batch per call) in its own transaction until a batch is short or ``max_batches`` ran.

    Returns (rows, batches). ``max_batches`` None: until done (the CLI's purge).
    """
    total = batches = 0
    while max_batches is None or batches < max_batches:
        count = run_in_transaction(session_factory, job)
        total, batches = total + count, batches + 1
        if count < batch_size:
            break
    return total, batches


def run(session_factory: sessionmaker[Session], now: datetime, policy: HousekeepingPolicy) -> HousekeepingReport:
    """One housekeeping run: every job whose period is set, each bounded by ``policy.max_batches``."""
    report = HousekeepingReport()
    size, limit = policy.batch_size, policy.max_batches
    if policy.retention_days > 0:
        report.notifications_deleted, report.batches["notifications"] = in_batches(
            session_factory, lambda s: delete_old_notifications(s, now, policy.retention_days, size), size, limit)
        report.webhook_events_deleted, report.batches["webhook_events"] = in_batches(
            session_factory, lambda s: delete_old_webhook_events(s, now, policy.retention_days, size), size, limit)
    if policy.device_idle_days > 0:
        report.devices_disabled, report.batches["devices"] = in_batches(
            session_factory, lambda s: disable_idle_devices(s, now, policy.device_idle_days, size), size, limit)
    if policy.revoked_client_days > 0:
        report.clients_deleted, report.batches["clients"] = in_batches(
            session_factory, lambda s: delete_revoked_clients(s, now, policy.revoked_client_days, size), size, limit)
    return report
