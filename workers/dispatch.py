"""Enqueueing work: used by the API after a commit and by tasks for the next step.

Uses ``send_task`` by name so the API never imports task code.
"""

from __future__ import annotations

import uuid
from typing import Iterable, Sequence

from celery import Celery

from workers.celery_app import DELIVER_TASK, FANOUT_QUEUE, FANOUT_TASK, PLATFORM_QUEUES


class Dispatcher:
    def __init__(self, celery: Celery, chunk_size: int) -> None:
        self.celery = celery
        self.chunk_size = chunk_size

    def enqueue_fanout(self, notification_ids: Iterable[uuid.UUID]) -> None:
        for notification_id in notification_ids:
            self.celery.send_task(FANOUT_TASK, args=[str(notification_id)], queue=FANOUT_QUEUE)

    def enqueue_deliveries(self, platform: str, delivery_ids: Sequence[uuid.UUID]) -> None:
        """Deliveries go out in chunks: one task pushes many, which is most of the throughput."""
        queue = PLATFORM_QUEUES[platform]
        for start in range(0, len(delivery_ids), self.chunk_size):
            chunk = [str(delivery_id) for delivery_id in delivery_ids[start : start + self.chunk_size]]
            self.celery.send_task(DELIVER_TASK, args=[platform, chunk], queue=queue)
