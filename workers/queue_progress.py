"""What the workers ask the broker and tell Redis, so the sweep can tell lost work from waiting work.

* :func:`probe_queues` asks the broker how many messages each queue holds
  (Redis: ``LLEN``; RabbitMQ: a passive declare) and, for Redis, when the
  server started (a restart without persistence wipes every queue).
* :func:`record_progress` is called by every task: it moves the queue's *head*
  (the newest publish time among tasks run from it) forward and counts the
  deliveries finished, in one Redis round trip.

See :mod:`shared.backlog` for the rule that uses them.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

import redis
from celery import Celery

from broker.celery_app import is_amqp
from shared.backlog import BACKLOG_KEY, DRAINED_KEY, HEAD_KEY, Backlog, QueueState, from_timestamp, measure_backlog

log = logging.getLogger(__name__)

# Celery's Redis transport keeps a queue's prioritised messages in sibling lists.
_REDIS_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")

# Move the head forward only (tasks finish out of order), count finished deliveries.
_RECORD = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) end
if tonumber(ARGV[2]) > 0 then redis.call('INCRBY', KEYS[2], ARGV[2]) end
return 1
"""


def record_progress(client: redis.Redis, queue: str, enqueued_at: float | None, finished: int) -> None:
    """Tell the sweep this queue has reached a task published at ``enqueued_at``; never fails the task."""
    if enqueued_at is None and not finished:
        return
    try:
        client.eval(_RECORD, 2, HEAD_KEY.format(queue=queue), DRAINED_KEY, enqueued_at or 0, finished)
    except redis.RedisError as exc:  # progress is advice for the sweep; the work itself is done
        log.warning("could not record queue progress for %s: %s", queue, type(exc).__name__)


def queue_heads(client: redis.Redis, queues: list[str]) -> dict[str, datetime | None]:
    """The recorded head of each queue (None when unknown)."""
    try:
        values = client.mget([HEAD_KEY.format(queue=queue) for queue in queues])
    except redis.RedisError:
        return dict.fromkeys(queues)
    return {queue: from_timestamp(float(value)) if value else None for queue, value in zip(queues, values)}


def probe_queues(celery: Celery, queues: list[str], guards: redis.Redis, timeout: float = 3.0) -> dict[str, QueueState]:
    """Ask the broker about ``queues``; a queue it could not answer for is left out (unknown)."""
    heads = queue_heads(guards, queues)
    try:
        if is_amqp(celery.conf.broker_url):
            depths, started = _amqp_depths(celery, queues, timeout), None
        else:
            depths, started = _redis_depths(celery.conf.broker_url, queues, timeout)
    except Exception as exc:
        log.warning("could not ask the broker about its queues: %s", exc)
        return {}
    return {queue: QueueState(depth, started, heads.get(queue)) for queue, depth in depths.items()}


def _redis_depths(url: str, queues: list[str], timeout: float) -> tuple[dict[str, int], datetime]:
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        pipe = client.pipeline(transaction=False)
        for queue in queues:
            for suffix in _REDIS_PRIORITY_SUFFIXES:
                pipe.llen(queue + suffix)
        pipe.info("server")
        *lengths, info = pipe.execute()
    finally:
        client.close()
    n = len(_REDIS_PRIORITY_SUFFIXES)
    depths = {queue: sum(lengths[i * n : (i + 1) * n]) for i, queue in enumerate(queues)}
    started = datetime.now(UTC) - timedelta(seconds=int(info["uptime_in_seconds"]) + 1)
    return depths, started


def _amqp_depths(celery: Celery, queues: list[str], timeout: float) -> dict[str, int]:
    depths: dict[str, int] = {}
    with celery.connection_for_read() as connection:
        connection.ensure_connection(max_retries=1, timeout=timeout)
        for queue in queues:
            channel = connection.channel()
            try:
                _, count, _ = channel.queue_declare(queue=queue, passive=True)
                depths[queue] = count
            except Exception:
                pass
            finally:
                try:
                    channel.close()
                except Exception:
                    pass
    return depths


def publish_backlog(client: redis.Redis, queued: int, ttl_seconds: int = 300) -> Backlog | None:
    """Store this sweep's backlog (queued deliveries, drain rate) for the API's backpressure headers."""
    try:
        previous_raw, drained = client.mget(BACKLOG_KEY, DRAINED_KEY)
        backlog = measure_backlog(queued, int(drained or 0), time.time(), Backlog.loads(previous_raw))
        client.set(BACKLOG_KEY, backlog.dumps(), ex=ttl_seconds)
        return backlog
    except redis.RedisError as exc:
        log.warning("could not store the backlog: %s", type(exc).__name__)
        return None

