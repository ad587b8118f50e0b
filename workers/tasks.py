"""Celery tasks: thin wrappers that take ids, open one session each, and call shared rules.

Every task is safe to run twice (late acks redeliver a task whose worker died):
fan-out is idempotent and each delivery is claimed atomically before it is pushed.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict

from celery import shared_task
from sqlalchemy import select

from shared.db import after_commit, run_in_transaction, session_scope
from shared.delivery import (
    claim_deliveries,
    fan_out,
    record_outcomes,
    release_due_deliveries,
    stale_queued_notifications,
)
from shared.models import App, utcnow
from shared.services import idempotency
from workers.adapters.base import AppCredentials
from workers.celery_app import DELIVER_TASK, FANOUT_TASK, SWEEP_TASK
from workers.runtime import runtime

log = logging.getLogger(__name__)


@shared_task(name=FANOUT_TASK, bind=True)
def fanout(self, notification_id: str) -> None:
    rt = runtime(self.app)
    with session_scope(rt.session_factory) as session:
        groups = fan_out(session, uuid.UUID(notification_id), utcnow(), rt.adapters.keys())
        for platform, delivery_ids in groups.items():
            after_commit(session, lambda p=platform, ids=delivery_ids: rt.dispatcher.enqueue_deliveries(p, ids))
    log.info("fanned out notification %s: %s", notification_id, {p: len(ids) for p, ids in groups.items()})


@shared_task(name=DELIVER_TASK, bind=True)
def deliver(self, platform: str, delivery_ids: list[str]) -> None:
    rt = runtime(self.app)
    adapter = rt.adapters[platform]
    with session_scope(rt.session_factory) as session:
        claimed = claim_deliveries(session, [uuid.UUID(i) for i in delivery_ids], utcnow(), rt.settings.claim_lease_seconds)
        apps = {
            app.id: AppCredentials.from_model(app)
            for app in session.scalars(select(App).where(App.id.in_({c.app_id for c in claimed})))
        }
    # The claim is committed: a redelivered copy of this task cannot push these again.
    by_app = defaultdict(list)
    for delivery in claimed:
        by_app[delivery.app_id].append(delivery)
    results = []
    now = utcnow()
    for app_id, deliveries in by_app.items():
        results.extend(zip(deliveries, adapter.send_many(apps[app_id], deliveries, now)))
    # The pushes happened: their outcomes must be written even if the database blips now.
    run_in_transaction(rt.session_factory, lambda session: record_outcomes(session, results, utcnow(), rt.retry_policy))
    log.info("delivered %d/%d %s deliveries", len(claimed), len(delivery_ids), platform)


@shared_task(name=SWEEP_TASK, bind=True)
def sweep(self) -> None:
    """Re-enqueue what was accepted but never picked up and retries that are due; drop expired idempotency keys."""
    rt = runtime(self.app)
    s = rt.settings
    with session_scope(rt.session_factory) as session:
        now = utcnow()
        notifications = stale_queued_notifications(session, now, s.sweep_after_seconds)
        groups = release_due_deliveries(session, now, s.sweep_after_seconds, s.claim_lease_seconds)
        idempotency.purge_expired(session, now, s.idempotency_ttl_seconds)
        after_commit(session, lambda: rt.dispatcher.enqueue_fanout(notifications))
        for platform, delivery_ids in groups.items():
            after_commit(session, lambda p=platform, ids=delivery_ids: rt.dispatcher.enqueue_deliveries(p, ids))
    if notifications or groups:
        log.info("sweep re-enqueued %d notifications, %s deliveries", len(notifications), {p: len(i) for p, i in groups.items()})
