"""Telling lost work from work that is merely waiting its turn, and how long the wait is.

Accepted work (a queued notification, a pending delivery) is enqueued right
after the transaction that made it so, and that transaction stamps the row's
``updated_at``. Work can then be lost in four ways: the publish failed (broker
down at that moment), the broker restarted without keeping its queues (Redis
without persistence), a worker died holding the task unacknowledged (Redis
hands it back only after its visibility timeout), or a process died between
commit and publish. The scheduler's sweep re-enqueues such work; it must not
re-enqueue work that is still in the queue behind others, or a deep queue
would grow with copies of itself at every sweep.

So the sweep asks the broker about each queue (:class:`QueueState`) and
:func:`lost_before` turns that into a cutoff: pending work stamped before it is
lost. Work is only ever considered lost once it is older than
``PUSHQ_SWEEP_AFTER_SECONDS``, and then only if one of these holds:

* the queue is empty: nothing is waiting in it, so pending work is not there;
* the broker started after the work was enqueued (a Redis restart wiped it);
* the queue has moved past it: workers have started tasks published after
  the work was stamped (the *head*, recorded by the workers), so FIFO order
  says its own task should have run.

When the broker cannot be asked, the sweep falls back to the age alone.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import redis
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from shared.models import Delivery, DeliveryStatus

# A task is published a moment after its row is stamped (the commit, then the
# publish); ordering by the head tolerates this much lag, and clock skew.
HEAD_GRACE_SECONDS = 5.0

# Redis keys (in REDIS_URL, next to quotas): the queue heads and the drain counter.
HEAD_KEY = "pushq:queue-head:{queue}"
DRAINED_KEY = "pushq:drained"
BACKLOG_KEY = "pushq:backlog"

# pg_try_advisory_xact_lock key of the sweep ("pushq sweep" as a number).
_SWEEP_LOCK_KEY = 0x7075736871_7377


def from_timestamp(value: float | None) -> datetime | None:
    """A UTC datetime from POSIX seconds (None stays None)."""
    return None if value is None else datetime.fromtimestamp(value, UTC)


@dataclass(frozen=True)
class QueueState:
    """What the broker says about one queue at sweep time; None where it could not say."""

    depth: int | None  # ready messages (not counting those held by workers)
    broker_started_at: datetime | None = None  # Redis: when this incarnation began (its queues are newer)
    head: datetime | None = None  # the newest publish time among tasks workers ran from this queue


def lost_before(now: datetime, sweep_after_seconds: float, state: QueueState | None) -> datetime:
    """Pending work of this queue stamped before the returned time is lost and must be enqueued again."""
    quiet = now - timedelta(seconds=sweep_after_seconds)
    if state is None or state.depth is None or state.depth == 0:
        # Unknown (fall back to age alone) or empty (nothing waits in it): old enough is lost.
        return quiet
    cutoff = datetime.min.replace(tzinfo=UTC)
    if state.broker_started_at is not None:
        cutoff = max(cutoff, state.broker_started_at)
    if state.head is not None:
        cutoff = max(cutoff, state.head - timedelta(seconds=HEAD_GRACE_SECONDS))
    return min(quiet, cutoff)


@dataclass(frozen=True)
class Backlog:
    """The delivery backlog as the last sweep measured it, for backpressure answers."""

    queued: int  # pending deliveries (waiting for a worker)
    drained_per_second: float | None  # deliveries finished per second since the previous sweep
    measured_at: float  # POSIX seconds
    drained_total: int = 0  # the workers' counter at measurement, to compute the next rate

    def expected_delay(self) -> int | None:
        """Seconds until newly accepted work is likely picked up; None when nothing is draining."""
        if self.queued <= 0:
            return 0
        if not self.drained_per_second:
            return None
        return math.ceil(self.queued / self.drained_per_second)

    def headers(self, threshold: int) -> dict[str, str]:
        """``X-Queue-Backlog`` and ``X-Queue-Delay`` (seconds) when more than ``threshold`` deliveries wait."""
        if self.queued <= threshold:
            return {}
        headers = {"X-Queue-Backlog": str(self.queued)}
        delay = self.expected_delay()
        headers["X-Queue-Delay"] = str(delay) if delay is not None else "unknown"
        return headers

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def loads(cls, raw: bytes | str | None) -> Backlog | None:
        if not raw:
            return None
        try:
            return cls(**json.loads(raw))
        except (TypeError, ValueError):
            return None


def measure_backlog(queued: int, drained_total: int, now: float, previous: Backlog | None) -> Backlog:
    """This sweep's backlog, the drain rate taken over the time since the previous measurement."""
    rate = None
    if previous is not None and now > previous.measured_at and drained_total >= previous.drained_total:
        rate = (drained_total - previous.drained_total) / (now - previous.measured_at)
        if rate == 0 and previous.drained_per_second:
            rate = previous.drained_per_second  # no chunk finished in this interval (long chunks): keep the last rate
    return Backlog(queued=queued, drained_per_second=rate, measured_at=now, drained_total=drained_total)


def queued_deliveries(session: Session) -> int:
    """Deliveries waiting for a worker (pending), counted on the status index."""
    return session.scalar(select(func.count()).where(Delivery.status == DeliveryStatus.PENDING.value)) or 0


def try_sweep_lock(session: Session) -> bool:
    """Take the sweep's lock for this transaction; False when another sweep holds it.

    Two schedulers running at once (an operator's mistake) would otherwise sweep
    concurrently: harmless for correctness (claims decide who pushes), but
    twice the statements and lock waits. PostgreSQL only; elsewhere always True.
    """
    if session.get_bind().dialect.name != "postgresql":
        return True
    return bool(session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": _SWEEP_LOCK_KEY}))


class BackpressureReader:
    """The backpressure headers, read from Redis at most once per ``max_age_seconds`` per process.

    The backlog is measured by the sweep every ``PUSHQ_SWEEP_INTERVAL``; reading it on
    every send was a Redis round trip per request for a value that changes twice a minute.
    """

    def __init__(self, client: redis.Redis, threshold: int, max_age_seconds: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._client, self._threshold, self._max_age, self._clock = client, threshold, max_age_seconds, clock
        self._headers: dict[str, str] = {}
        self._read_at: float | None = None

    def headers(self) -> dict[str, str]:
        now = self._clock()
        if self._read_at is None or now - self._read_at >= self._max_age:
            self._headers, self._read_at = backpressure_headers(self._client, self._threshold), now
        return dict(self._headers)


def backpressure_headers(client: redis.Redis, threshold: int) -> dict[str, str]:
    """The headers a send answer carries while the backlog is deep (none when Redis cannot say)."""
    try:
        backlog = Backlog.loads(client.get(BACKLOG_KEY))
    except redis.RedisError:
        return {}
    return backlog.headers(threshold) if backlog is not None else {}
