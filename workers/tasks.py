"""Celery tasks: thin wrappers that take ids, open one session per step, and call shared rules.

Every task is safe to run twice (late acks redeliver a task whose worker died):
fan-out is idempotent and each delivery is claimed atomically before it is pushed.
"""

from __future__ import annotations

import logging
import uuid

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from redis.exceptions import RedisError
from sqlalchemy.orm import Session

from broker.dispatch import Dispatcher
from broker.queues import (
    BROADCAST_STEP_TASK,
    DELIVER_TASK,
    DELIVER_WEBHOOKS_TASK,
    FANOUT_QUEUE,
    FANOUT_TASK,
    HOUSEKEEPING_TASK,
    PLATFORM_QUEUES,
    RELEASE_SCHEDULED_TASK,
    RELEASE_WEBHOOKS_TASK,
    SWEEP_TASK,
)
from shared import broadcast_fanout
from shared.backlog import lost_before, queued_deliveries, try_sweep_lock
from shared.clock import utcnow
from shared.db import after_commit, run_in_transaction, session_scope
from shared.observability.context import current_request_ids, set_request_ids
from shared.outcome_bus import publish_outcomes
from shared.outcomes import Outcome
from shared.pipeline.claim import claim_chunk
from shared.pipeline.fanout import fan_out
from shared.pipeline.record import record_outcomes
from shared.pipeline.sweep import release_due_deliveries, release_due_retries, stale_queued_notifications
from shared.pipeline.values import Chunk, ClaimedDelivery
from shared.services import housekeeping, idempotency, scheduled
from shared.webhook_outbox import WebhookPolicy, claim_due_batches, load_batch, record_attempt
from workers.adapters.base import ChunkInterrupted
from workers.metrics import record_chunk
from workers.queue_progress import probe_queues, publish_backlog, record_progress
from workers.runtime import WorkerRuntime, runtime
from workers.webhook_sender import post_batch

log = logging.getLogger(__name__)


@shared_task(name=FANOUT_TASK, bind=True)
def fanout(self: Task, notification_ids: list[str] | str, enqueued_at: float | None = None) -> None:
    """Fan out a batch of notifications (all of one request) and enqueue their delivery chunks.

    ``enqueued_at`` (the publish time) moves the fan-out queue's head for the sweep.
    """
    rt = runtime(self.app)
    ids = [uuid.UUID(i) for i in ([notification_ids] if isinstance(notification_ids, str) else notification_ids)]

    def work(session: Session) -> list[Chunk]:
        chunks = fan_out(session, ids, utcnow(), rt.adapters.keys(), rt.settings.delivery_chunk_size)
        # The chunks carry the request ids this fan-out's message carried (headers), for their log lines.
        after_commit(session, lambda: rt.dispatcher.enqueue_chunks(chunks, request_ids=current_request_ids()))
        return chunks

    chunks = run_in_transaction(rt.session_factory, work)
    log.info("fanned out %d notifications into %d chunks (%d deliveries)",
             len(ids), len(chunks), sum(len(c.delivery_ids) for c in chunks))
    record_progress(rt.redis, FANOUT_QUEUE, enqueued_at, 0)


@shared_task(name=BROADCAST_STEP_TASK, bind=True)
def broadcast_step(self: Task, broadcast_id: str, step_token: str, enqueued_at: float | None = None) -> None:
    """One page of a broadcast's fan-out: its deliveries and cursor in one commit, then its chunks and
    the next step (paced by the broadcast's rate) are enqueued; after the last page, the completion check."""
    rt = runtime(self.app)
    s = rt.settings
    bid, token = uuid.UUID(broadcast_id), uuid.UUID(step_token)

    def work(session: Session) -> broadcast_fanout.Step:
        step = broadcast_fanout.fan_out_step(session, bid, token, utcnow(), rt.adapters.keys(),
                                             s.broadcast_page_size, s.delivery_chunk_size)
        request_ids = current_request_ids()
        after_commit(session, lambda: rt.dispatcher.enqueue_chunks(step.chunks, request_ids=request_ids))
        if step.next_in_seconds is not None:
            after_commit(session, lambda: rt.dispatcher.enqueue_broadcast_step(
                bid, token, countdown=step.next_in_seconds or 0.0, request_ids=request_ids))
        return step

    step = run_in_transaction(rt.session_factory, work)
    if step.fanned_out:
        run_in_transaction(rt.session_factory,
                           lambda session: broadcast_fanout.complete_if_over(session, bid, utcnow()))
    if step.created or step.fanned_out:
        log.info("broadcast %s: %d deliveries in %d chunks%s", bid, step.created, len(step.chunks),
                 ", fanned out" if step.fanned_out else "")
    record_progress(rt.redis, FANOUT_QUEUE, enqueued_at, 0)


@shared_task(name=DELIVER_TASK, bind=True)
def deliver(self: Task, platform: str, delivery_ids: list[str], enqueued_at: float | None = None) -> None:
    """Claim a chunk, push it concurrently, write its outcomes: a handful of statements per chunk.

    ``enqueued_at`` (the publish time) moves the platform queue's head for the sweep.
    """
    rt = runtime(self.app)
    s = rt.settings
    adapter = rt.adapters[platform]
    ids = [uuid.UUID(i) for i in delivery_ids]
    claim = run_in_transaction(
        rt.session_factory, lambda session: claim_chunk(session, ids, utcnow(), s.claim_lease_seconds, s.max_attempts)
    )
    if claim.deliveries:  # log lines name the requests of what was claimed (a re-enqueued chunk may mix them)
        set_request_ids([d.request_id for d in claim.deliveries if d.request_id] or current_request_ids())
    if not claim.deliveries:
        log.info("nothing to deliver among %d %s deliveries (%d closed at claim)", len(ids), platform, claim.closed)
        record_chunk(platform, [], claim.closed, adapter)
        record_progress(rt.redis, PLATFORM_QUEUES[platform], enqueued_at, claim.closed)
        return
    # The claim is committed: a redelivered copy of this task cannot push these again.
    results: list[tuple[ClaimedDelivery, Outcome]] = []
    try:
        credentials = rt.credentials.get_many(claim.app_versions)
        for app_id, deliveries in claim.by_app().items():
            app = credentials.get(app_id)
            try:
                outcomes = (
                    adapter.send_many(app, deliveries) if app is not None
                    else [Outcome.rejected("app no longer exists")] * len(deliveries)
                )
            except ChunkInterrupted as interrupted:
                results.extend(_paired(deliveries, interrupted.partial))
                raise
            results.extend(_paired(deliveries, outcomes))
    except (ChunkInterrupted, SoftTimeLimitExceeded):
        # The soft time limit: the answers that came back are written; what was not pushed
        # or not answered is retried (the hard limit is one push deadline away).
        answered = {claimed.delivery_id for claimed, _ in results}
        unpushed = [d for d in claim.deliveries if d.delivery_id not in answered]
        results.extend((d, Outcome.retry("not pushed: the chunk reached its time limit")) for d in unpushed)
        log.warning("chunk of %d %s deliveries stopped at its time limit (%d not pushed)",
                    len(claim.deliveries), platform, len(unpushed))

    def write(session: Session) -> int:
        return record_outcomes(session, claim.token, results, utcnow(), rt.retry_policy)

    # The pushes happened: their outcomes must be written even if the database blips now,
    # or the soft time limit fires during the write (it fires once: the second write runs).
    try:
        written = run_in_transaction(rt.session_factory, write)
    except SoftTimeLimitExceeded:
        written = run_in_transaction(rt.session_factory, write)
    awaited = {d.notification_id for d in claim.deliveries if d.notify_outcomes}
    if awaited:
        try:
            publish_outcomes(rt.redis, awaited)
        except RedisError as exc:  # the outcomes are stored; a waiter still reads them at its deadline
            log.warning("could not announce outcomes of %d notifications: %s", len(awaited), type(exc).__name__)
    record_chunk(platform, results, claim.closed, adapter)  # counts per chunk, not per delivery
    log.info("delivered %d %s deliveries (%d written, %d closed at claim)", len(results), platform, written, claim.closed)
    record_progress(rt.redis, PLATFORM_QUEUES[platform], enqueued_at, written + claim.closed)


def _paired(deliveries: list[ClaimedDelivery], outcomes: list[Outcome]) -> list[tuple[ClaimedDelivery, Outcome]]:
    """Each delivery with its outcome; a delivery an adapter gave none for is retried, never left claimed."""
    if len(outcomes) != len(deliveries):
        log.error("adapter answered %d outcomes for %d deliveries", len(outcomes), len(deliveries))
    missing = Outcome.retry("the adapter gave no outcome")
    return [(delivery, outcomes[i] if i < len(outcomes) else missing) for i, delivery in enumerate(deliveries)]


@shared_task(name=SWEEP_TASK, bind=True)
def sweep(self: Task) -> None:
    """Re-enqueue what was lost (never what still waits in its queue) and retries that are due.

    Also measures the delivery backlog for the API's backpressure headers and drops expired
    idempotency keys. One sweep at a time: a second scheduler's sweep (two beats running by
    mistake) finds the lock taken and does nothing.
    """
    rt = runtime(self.app)
    s = rt.settings
    queues = probe_queues(self.app, [FANOUT_QUEUE, *PLATFORM_QUEUES.values()], rt.redis)
    with session_scope(rt.session_factory) as session:
        if not try_sweep_lock(session):
            log.info("another sweep is running; this one does nothing")
            return
        now = utcnow()
        lost = {platform: lost_before(now, s.sweep_after_seconds, queues.get(queue))
                for platform, queue in PLATFORM_QUEUES.items()}
        notifications = stale_queued_notifications(
            session, now, s.sweep_after_seconds, lost_before=lost_before(now, s.sweep_after_seconds, queues.get(FANOUT_QUEUE))
        )
        chunks = release_due_deliveries(session, now, s.sweep_after_seconds, s.claim_lease_seconds,
                                        s.delivery_chunk_size, lost_before=lost)
        idempotency.purge_expired(session, now, s.idempotency_ttl_seconds)
        broadcast_steps = broadcast_fanout.lost_steps(session, now, s.sweep_after_seconds)
        queued = queued_deliveries(session)
        after_commit(session, lambda: _enqueue_steps(rt.dispatcher, broadcast_steps))
        after_commit(session, lambda: rt.dispatcher.enqueue_fanout(notifications))
        after_commit(session, lambda: rt.dispatcher.enqueue_chunks(chunks))
    publish_backlog(rt.redis, queued)
    if notifications or chunks or broadcast_steps:
        log.info("sweep re-enqueued %d notifications, %d delivery chunks, %d broadcast steps",
                 len(notifications), len(chunks), len(broadcast_steps))


def _enqueue_steps(dispatcher: Dispatcher, steps: list[tuple[uuid.UUID, uuid.UUID]]) -> None:
    for broadcast_id, token in steps:
        dispatcher.enqueue_broadcast_step(broadcast_id, token)


@shared_task(name=RELEASE_SCHEDULED_TASK, bind=True)
def release_scheduled(self: Task) -> None:
    """The scheduler's tick (every PUSHQ_SCHEDULE_INTERVAL): release what waits in the database for its time.

    Scheduled sends whose send_at has come (one fan-out task per released batch) and retries whose
    next_attempt_at has come (one bounded statement, their chunks), each enqueued after its commit.
    One task for both, so the tick adds no message to the maintenance queue, where a busy worker
    would let ticks expire; the sweep stays the safety net for lost work.
    """
    rt = runtime(self.app)
    released = 0
    for _ in range(10):  # bounded per run; a backlog beyond 10 batches waits for the next tick
        def work(session: Session) -> list[uuid.UUID]:
            ids = scheduled.release_due(session, utcnow())
            after_commit(session, lambda: rt.dispatcher.enqueue_fanout(ids))
            return ids

        ids = run_in_transaction(rt.session_factory, work)
        released += len(ids)
        if len(ids) < scheduled.RELEASE_BATCH_SIZE:
            break
    if released:
        log.info("released %d scheduled notifications", released)

    def broadcasts(session: Session) -> list[tuple[uuid.UUID, uuid.UUID]]:
        steps = broadcast_fanout.release_due(session, utcnow())
        after_commit(session, lambda: _enqueue_steps(rt.dispatcher, steps))
        return steps

    started = run_in_transaction(rt.session_factory, broadcasts)
    if started:
        log.info("started %d scheduled broadcasts", len(started))

    def retries(session: Session) -> list[Chunk]:
        chunks = release_due_retries(session, utcnow(), rt.settings.delivery_chunk_size)
        after_commit(session, lambda: rt.dispatcher.enqueue_chunks(chunks))
        return chunks

    chunks = run_in_transaction(rt.session_factory, retries)
    if chunks:
        log.info("released %d due retries in %d chunks", sum(len(c.delivery_ids) for c in chunks), len(chunks))


@shared_task(name=HOUSEKEEPING_TASK, bind=True)
def housekeep(self: Task) -> None:
    """Delete old final notifications, disable idle devices, drop long-revoked clients: in bounded batches."""
    rt = runtime(self.app)
    s = rt.settings
    policy = housekeeping.HousekeepingPolicy(
        retention_days=s.retention_days, device_idle_days=s.device_idle_days,
        revoked_client_days=s.revoked_client_days, batch_size=s.housekeeping_batch_size,
        max_batches=s.housekeeping_max_batches,
    )
    report = housekeeping.run(rt.session_factory, utcnow(), policy)
    did_something = report.notifications_deleted or report.devices_disabled or report.clients_deleted
    log.log(logging.INFO if did_something else logging.DEBUG, "housekeeping: %d notifications deleted, %d devices disabled, %d revoked clients deleted",
             report.notifications_deleted, report.devices_disabled, report.clients_deleted)


def _webhook_policy(rt: WorkerRuntime) -> WebhookPolicy:
    s = rt.settings
    return WebhookPolicy(max_attempts=s.webhook_max_attempts, retry_base_seconds=s.webhook_retry_base_seconds,
                         retry_max_seconds=s.webhook_retry_max_seconds, batch_size=s.webhook_batch_size,
                         lease_seconds=s.webhook_lease_seconds)


@shared_task(name=RELEASE_WEBHOOKS_TASK, bind=True)
def release_webhooks(self: Task) -> None:
    """The scheduler's webhook tick: claim one batch per app with due events, one webhook task per batch.

    The claim commits before the enqueue, so the next tick leaves the batch alone
    while its task waits or runs; a lost task's claim runs out and is taken again.
    """
    rt = runtime(self.app)
    policy = _webhook_policy(rt)

    def work(session: Session) -> list[tuple[uuid.UUID, uuid.UUID]]:
        claims = claim_due_batches(session, utcnow(), policy)
        after_commit(session, lambda: rt.dispatcher.enqueue_webhooks(claims))
        return claims

    claims = run_in_transaction(rt.session_factory, work)
    if claims:
        log.info("released webhook batches for %d apps", len(claims))


@shared_task(name=DELIVER_WEBHOOKS_TASK, bind=True)
def deliver_webhooks(self: Task, app_id: str, claim_token: str) -> None:
    """POST one claimed batch to its app's endpoint and record the attempt (on the webhooks queue only)."""
    rt = runtime(self.app)
    s = rt.settings
    policy = _webhook_policy(rt)
    batch = run_in_transaction(rt.session_factory,
                               lambda session: load_batch(session, uuid.UUID(app_id), uuid.UUID(claim_token), utcnow()))
    if batch is None:
        return
    try:
        error = post_batch(batch, utcnow(), deadline=s.webhook_deadline_seconds,
                           allow_http_loopback=s.allow_http_endpoints)
    except SoftTimeLimitExceeded:
        error = "no answer before the webhook task's time limit"
    run_in_transaction(rt.session_factory, lambda session: record_attempt(session, batch, error, utcnow(), policy))
    if error is None:
        log.info("webhook: %d events delivered for app %s", len(batch.events), app_id)
    else:
        log.info("webhook: %d events not delivered for app %s: %s", len(batch.events), app_id, error)
