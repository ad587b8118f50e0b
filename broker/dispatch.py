"""Enqueueing work: used by the API after a commit and by tasks for the next step.

Uses ``send_task`` by name so the API never imports task code. Celery keeps one
broker connection per process in its producer pool, so every enqueue reuses it.
Every task carries its publish time (``enqueued_at``): the workers record how far
each queue has got, so the sweep can tell lost work from work still waiting
(shared/backlog.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence

from celery import Celery

from broker.queues import (
    BROADCAST_STEP_TASK,
    DELIVER_TASK,
    DELIVER_WEBHOOKS_TASK,
    FANOUT_QUEUE,
    FANOUT_TASK,
    PLATFORM_QUEUES,
    WEBHOOKS_QUEUE,
)
from shared.observability.context import task_headers
from shared.pipeline.values import Chunk


def now_timestamp() -> float:
    """The publish time dispatchers stamp on tasks (POSIX seconds)."""
    return time.time()


class Dispatcher:
    def __init__(self, celery: Celery) -> None:
        self.celery = celery

    def enqueue_fanout(self, notification_ids: Sequence[uuid.UUID], request_ids: Sequence[str] = ()) -> None:
        """One fan-out task for all of a request's notifications (a whole bulk is fanned out at once).

        ``request_ids`` travel in the message headers, for the workers' log lines.
        """
        if notification_ids:
            self.celery.send_task(FANOUT_TASK, args=[[str(i) for i in notification_ids]], headers=task_headers(request_ids),
                                  kwargs={"enqueued_at": now_timestamp()}, queue=FANOUT_QUEUE)

    def enqueue_chunks(self, chunks: Iterable[Chunk], request_ids: Sequence[str] = ()) -> None:
        """One deliver task per chunk (one platform and app, up to PUSHQ_DELIVERY_CHUNK_SIZE deliveries)."""
        for chunk in chunks:
            self.celery.send_task(
                DELIVER_TASK, args=[chunk.platform, [str(i) for i in chunk.delivery_ids]], headers=task_headers(request_ids),
                kwargs={"enqueued_at": now_timestamp()}, queue=PLATFORM_QUEUES[chunk.platform],
            )

    def enqueue_webhooks(self, claims: Iterable[tuple[uuid.UUID, uuid.UUID]]) -> None:
        """One webhook task per claimed batch (app id, claim token), on the webhooks queue."""
        for app_id, claim_token in claims:
            self.celery.send_task(DELIVER_WEBHOOKS_TASK, args=[str(app_id), str(claim_token)], queue=WEBHOOKS_QUEUE)

    def enqueue_broadcast_step(self, broadcast_id: uuid.UUID, step_token: uuid.UUID, *, countdown: float = 0.0,
                               request_ids: Sequence[str] = ()) -> None:
        """The next page of a broadcast's fan-out; ``countdown`` (seconds, short: a rate's time slice) paces it."""
        self.celery.send_task(
            BROADCAST_STEP_TASK, args=[str(broadcast_id), str(step_token)], headers=task_headers(request_ids),
            kwargs={"enqueued_at": now_timestamp()}, queue=FANOUT_QUEUE, countdown=countdown or None,
        )
