"""The pipeline's plain value types: what a step hands the next, detached from any session.

A :class:`Chunk` is what fan-out and the sweep enqueue, a :class:`Claim` of
:class:`ClaimedDelivery` rows is what a claim hands the adapters (which import
only this module), a :class:`RetryPolicy` is how outcomes schedule retries.
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from shared.message import Message
from shared.outcomes import clamp_delay


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_seconds: float = 2.0
    max_seconds: float = 600.0

    def delay(self, attempts: int, retry_after: float | None, rng: random.Random | None = None) -> float:
        """Exponential backoff with full jitter, capped; ``retry_after`` is a floor."""
        ceiling = min(self.max_seconds, self.base_seconds * (2 ** min(max(attempts - 1, 0), 64)))
        jittered = (rng or random).uniform(0, ceiling)
        return max(jittered, clamp_delay(retry_after) or 0.0)


@dataclass(frozen=True)
class Chunk:
    """Deliveries of one platform and one app, pushed by one task."""

    platform: str
    delivery_ids: list[uuid.UUID]


def chunked(rows: Iterable[tuple[str, uuid.UUID, uuid.UUID]], size: int) -> list[Chunk]:
    """Group (platform, app_id, delivery_id) rows into chunks of at most ``size`` per platform and app."""
    groups: dict[tuple[str, uuid.UUID], list[uuid.UUID]] = defaultdict(list)
    for platform, app_id, delivery_id in rows:
        groups[(platform, app_id)].append(delivery_id)
    return [
        Chunk(platform, ids[start : start + size])
        for (platform, _), ids in groups.items()
        for start in range(0, len(ids), size)
    ]


@dataclass(frozen=True)
class ClaimedDelivery:
    """What an adapter needs to push one delivery; plain data, detached from the session."""

    delivery_id: uuid.UUID
    device_id: uuid.UUID
    token: str
    token_hash: str
    platform: str
    attempts: int
    notification_id: uuid.UUID
    app_id: uuid.UUID
    message: Message
    notify_outcomes: bool = False  # a caller waits for this notification's first outcomes
    request_id: str | None = None  # the X-Request-Id that created the notification, for log lines


@dataclass(frozen=True)
class Claim:
    """The deliveries one task holds, under one claim token."""

    token: uuid.UUID
    deliveries: list[ClaimedDelivery]
    # Each app's credentials version (apps.updated_at), for the workers' credential cache.
    app_versions: dict[uuid.UUID, datetime] = field(default_factory=dict)
    closed: int = 0  # deliveries closed at claim time (expired, device gone, attempts exhausted)

    def by_app(self) -> dict[uuid.UUID, list[ClaimedDelivery]]:
        groups: dict[uuid.UUID, list[ClaimedDelivery]] = defaultdict(list)
        for delivery in self.deliveries:
            groups[delivery.app_id].append(delivery)
        return dict(groups)
