"""The Celery application, built from the same Settings object as the API.

Here, not in workers/, because the API and the CLI publish through it too.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.entity import Queue

from broker.queues import (
    ALL_QUEUES,
    DELIVER_TASK,
    DELIVER_WEBHOOKS_TASK,
    FANOUT_QUEUE,
    HOUSEKEEPING_TASK,
    MAINTENANCE_QUEUE,
    RELEASE_SCHEDULED_TASK,
    RELEASE_WEBHOOKS_TASK,
    SWEEP_TASK,
    WEBHOOKS_QUEUE,
)
from shared.config import Settings


def is_amqp(url: str | None) -> bool:
    """Whether a broker URL names RabbitMQ (AMQP 0-9-1)."""
    return url is not None and url.split("://", 1)[0] in {"amqp", "amqps", "pyamqp"}


def queue_options(broker_url: str) -> dict[str, Any]:
    """RabbitMQ: durable quorum queues (replicated, kept on disk, survive a broker restart)."""
    if is_amqp(broker_url):
        return {"durable": True, "queue_arguments": {"x-queue-type": "quorum"}}
    return {}


def transport_options(broker_url: str) -> dict[str, Any]:
    """RabbitMQ: publisher confirms (a publish returns once the broker has the message).
    Redis: never park long waits in the broker (it redelivers ETA tasks after the
    visibility timeout): retries and schedules live in the database."""
    if is_amqp(broker_url):
        return {"confirm_publish": True}
    return {"visibility_timeout": 3600}


def make_celery(settings: Settings) -> Celery:
    """A Celery app for ``settings``; importing this module builds nothing."""
    if not settings.redis_url:
        raise ValueError("REDIS_URL is not set (pushq run starts an embedded Redis when it is missing)")
    broker_url = settings.broker_url or settings.redis_url
    app = Celery("pushq", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_queues=[Queue(name, **queue_options(broker_url)) for name in ALL_QUEUES],
        task_default_queue=FANOUT_QUEUE,
        task_routes={
            **{name: {"queue": MAINTENANCE_QUEUE}
               for name in (SWEEP_TASK, RELEASE_SCHEDULED_TASK, HOUSEKEEPING_TASK, RELEASE_WEBHOOKS_TASK)},
            DELIVER_WEBHOOKS_TASK: {"queue": WEBHOOKS_QUEUE},
        },
        # A chunk's worst case (pushes bounded by the push deadline) stays under these, and
        # the claim lease is longer than the hard limit (Settings.validate), so no live
        # worker's deliveries are ever claimed by another.
        task_annotations={
            DELIVER_TASK: dict(zip(("soft_time_limit", "time_limit"), settings.deliver_time_limits)),
            DELIVER_WEBHOOKS_TASK: dict(zip(("soft_time_limit", "time_limit"), settings.webhook_time_limits)),
        },
        # A task is acknowledged only after it ran, and re-queued if its worker
        # died, so a SIGKILLed worker loses nothing; the tasks are safe to run twice.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options=transport_options(broker_url),
        broker_connection_retry_on_startup=True,
        # Workers ride out a broker outage (a restart, a failover) however long: they keep
        # reconnecting instead of exiting after Celery's default 100 attempts.
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        broker_connection_timeout=4,
        # The API publishes after its commit; with the broker away it gives up quickly (the
        # request is answered, the work is stored) and the sweep enqueues it later.
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
        worker_hijack_root_logger=False,
        beat_schedule={
            "sweep": {"task": SWEEP_TASK, "schedule": settings.sweep_interval_seconds, "options": {"expires": settings.sweep_interval_seconds * 2}},
            # Scheduled sends and retries wait in the database; this tick releases the due ones (never a
            # Celery ETA), so a retry goes out about a second after its next_attempt_at.
            "release-scheduled": {"task": RELEASE_SCHEDULED_TASK, "schedule": settings.schedule_interval_seconds,
                                  "options": {"expires": max(settings.schedule_interval_seconds * 2, 2.0)}},
            # Due webhook events: claimed per app and handed to the webhooks queue.
            "release-webhooks": {"task": RELEASE_WEBHOOKS_TASK, "schedule": settings.webhook_interval_seconds,
                                 "options": {"expires": max(settings.webhook_interval_seconds * 2, 2.0)}},
            "housekeeping": {"task": HOUSEKEEPING_TASK, "schedule": settings.housekeeping_interval_seconds,
                             "options": {"expires": settings.housekeeping_interval_seconds}},
        },
        timezone="UTC",
        enable_utc=True,
    )
    app.pushq_settings = settings  # read by workers.runtime
    return app
